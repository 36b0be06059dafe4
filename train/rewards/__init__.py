"""Reward functions built from the recipe, as open-r1's `get_reward_funcs(script_args)` does.

Each name maps to a factory taking the script arguments, so a reward that needs configuration (a
judge endpoint, a weight of its own) is built from the recipe; the function it returns keeps the
name, which is what TRL's logs (`rewards/{name}/mean`) and the cards show. Each also logs its wall
time per step as `reward_seconds/{name}`, to set against TRL's `step_time`.
"""

from __future__ import annotations

import functools
import inspect
import time
from typing import Callable

from train.rewards.factuality import boxed_format, caution, fact, fact_caution, staged

RewardFn = Callable[..., list]


def shared_judge(args):
    """The one judge client of this process, shared by the judge-backed rewards (built on first use)."""
    from hubtools.judge import Judge
    if not getattr(args, "judge_model", None) or not getattr(args, "judge_base_url", None):
        raise ValueError("the judge-backed rewards (rubric, citation, geo, keypoint) need a judge: set judge_model "
                         "and judge_base_url (one or more OpenAI-compatible endpoints) in the recipe")
    key = (args.judge_model, tuple(args.judge_base_url), args.judge_concurrency, args.judge_cache_dir,
           args.judge_max_tokens, args.judge_processes)
    if key not in _JUDGES:
        _JUDGES[key] = Judge(args.judge_model, list(args.judge_base_url), concurrency=args.judge_concurrency,
                             cache_dir=args.judge_cache_dir, max_tokens=args.judge_max_tokens,
                             processes=args.judge_processes)
    return _JUDGES[key]


_JUDGES: dict[tuple, object] = {}


def _rubric(args) -> RewardFn:
    from train.rewards.rubric import make_rubric_reward, static_rubrics
    positive, negative = static_rubrics(args.static_rubrics)
    return make_rubric_reward(shared_judge(args), instance_rubrics_only=args.instance_rubrics_only,
                              static_positive=positive, static_negative=negative)


def _citation(args) -> RewardFn:
    from train.rewards.rubric import make_citation_reward
    return make_citation_reward(shared_judge(args))


def _format(args) -> RewardFn:
    from train.rewards.rubric import format_reward
    return format_reward


def _geo(args) -> RewardFn:
    """The GEO reward; its engine is the judge model (one served model answers as the engine and judges)."""
    from hubtools.geo_engine import Engine
    from train.rewards.geo import make_geo_reward, parse_weights
    return make_geo_reward(Engine(shared_judge(args)), weights=parse_weights(args.geo_weights),
                           length_ratio=args.geo_length_ratio)


def _keypoint(args) -> RewardFn:
    from train.rewards.geo import make_keypoint_reward
    return make_keypoint_reward(shared_judge(args))


REWARDS: dict[str, Callable[[object], RewardFn]] = {
    "fact_caution": lambda args: fact_caution,
    "fact": lambda args: fact,
    "caution": lambda args: caution,
    "boxed_format": lambda args: boxed_format,
    "rubric": _rubric,
    "citation": _citation,
    "format": _format,
    "geo": _geo,
    "keypoint": _keypoint,
}


def get_reward(name: str, script_args=None) -> RewardFn:
    try:
        factory = REWARDS[name]
    except KeyError:
        raise ValueError(f"unknown reward {name!r} (recipe field reward_funcs / reward_schedule); "
                         f"known: {sorted(REWARDS)}") from None
    return factory(script_args)


def parse_schedule(text: str) -> list[dict]:
    """'fact:100,caution' → [{reward: fact, until_step: 100}, {reward: caution, until_step: None}]."""
    stages = []
    for part in text.split(","):
        name, _, until = part.strip().partition(":")
        try:
            stages.append({"reward": name, "until_step": int(until) if until else None})
        except ValueError:
            raise ValueError(f"reward_schedule: bad stage {part!r}; expected name:until_step") from None
    return stages


def timed(reward: RewardFn) -> RewardFn:
    """`reward`, logging its wall time per call as `reward_seconds/{name}` through TRL's `log_metric`
    (averaged per logged step), so a run shows what its rewards cost: TRL runs sync rewards one after
    another and gathers the async ones, so the reward phase takes about the sync times plus the
    longest async one."""
    name = reward.__name__

    def log(kwargs: dict, start: float) -> None:
        if (log_metric := kwargs.get("log_metric")) is not None:
            log_metric(f"reward_seconds/{name}", time.perf_counter() - start)

    if inspect.iscoroutinefunction(reward):
        @functools.wraps(reward)
        async def timed_reward(*args, **kwargs):
            start = time.perf_counter()
            try:
                return await reward(*args, **kwargs)
            finally:
                log(kwargs, start)
    else:
        @functools.wraps(reward)
        def timed_reward(*args, **kwargs):
            start = time.perf_counter()
            try:
                return reward(*args, **kwargs)
            finally:
                log(kwargs, start)
    return timed_reward


def get_reward_funcs(script_args) -> list[RewardFn]:
    """The recipe's rewards: `reward_funcs` (summed with TRL's `reward_weights`), or `reward_schedule`
    (one after another, e.g. 'fact:100,caution')."""
    names, schedule = getattr(script_args, "reward_funcs", None), getattr(script_args, "reward_schedule", None)
    if schedule:
        if names:
            raise ValueError("set either reward_funcs or reward_schedule in the recipe, not both")
        return [timed(staged([(get_reward(s["reward"], script_args), s["until_step"])
                              for s in parse_schedule(schedule)]))]
    if not names:
        raise ValueError("the recipe names no reward: set reward_funcs (e.g. [fact_caution])")
    return [timed(get_reward(n, script_args)) for n in names]
