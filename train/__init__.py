"""GRPO training: entry point, rewards, publishing callback, recipes."""

import hubtools  # noqa: F401,E402  (Xet off for a local endpoint, before any HF import)
