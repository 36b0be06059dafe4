"""Reward functions by name, as recipes refer to them."""

from __future__ import annotations

from train.rewards.factuality import boxed_format, caution, fact, fact_caution, staged

REWARDS = {"fact_caution": fact_caution, "fact": fact, "caution": caution, "boxed_format": boxed_format}


def get_reward(name: str):
    try:
        return REWARDS[name]
    except KeyError:
        raise ValueError(f"unknown reward {name!r} (recipe field reward_funcs / reward_schedule); "
                         f"known: {sorted(REWARDS)}") from None


def build_rewards(reward_funcs: list[str] | None = None, reward_schedule: list[dict] | None = None) -> list:
    """Recipe → TRL reward functions: a list of names, or a schedule of {reward, until_step} stages."""
    if reward_schedule:
        if reward_funcs:
            raise ValueError("set either reward_funcs or reward_schedule in the recipe, not both")
        for i, stage in enumerate(reward_schedule):
            if "reward" not in stage:
                raise ValueError(f"reward_schedule[{i}] needs a 'reward' name")
        return [staged([(get_reward(s["reward"]), s.get("until_step")) for s in reward_schedule])]
    if not reward_funcs:
        raise ValueError("the recipe names no reward: set reward_funcs (e.g. [fact_caution])")
    return [get_reward(n) for n in reward_funcs]
