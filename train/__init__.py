"""GRPO training: entry point, rewards, publishing callback, recipes."""
