"""Benchmark: the GEO reward's engine calls for one GRPO step, through the judge client, vs a serial loop.

The engine is the latency server of bench/latency_server.py (every answer after --latency seconds, 1 s by
default: what a hosted engine takes to write an answer over five sources), so the figures measure how the
reward schedules its calls. A step is --prompts prompts × --generations completions (the GEO recipe's 2 × 8),
each a distinct rewrite of its prompt's target source; the rows carry no `original_visibility`, so the
reward asks each prompt's "before" itself. The rewards are built as train/grpo.py builds them
(`train.rewards.get_reward` from the GRPO script arguments; --concurrency requests in flight per server)
and called as TRL calls async rewards (gathered on one event loop). From one run it prints:
- the `geo` reward on a first step (every rewrite and every "before" in one gather) and on the next step
  (the befores kept: only the rewrites are asked);
- `geo` with the `keypoint` reward beside it (key points of each original listed once, then one label
  per key point and rewrite): what the key-point term adds to a step;
- a serial loop over the first step's calls, one after another (the study's single-threaded engine
  calls), and the naive per-completion loop that asks before and after for every completion, each as a
  ratio of the reward's first step (target ≥ 20×; the ratio to the serial loop cannot exceed the calls
  per step, prompts × (generations + 1)).

    .venv/bin/python bench/geo_reward.py [--prompts 2] [--generations 8] [--latency 1.0] [--concurrency 64]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

from latency_server import latency_server

SOURCES = ["Sunlight scatters off the molecules of the air, and blue light scatters the most of all colours.",
           "The sky looks blue because of Rayleigh scattering of sunlight by nitrogen and oxygen molecules.",
           "Sunsets look red because their light crosses much more air at dusk than at noon.",
           "At high altitude the sky looks darker, as there is less air above to scatter the light.",
           "Ocean water is blue for another reason: it absorbs red light more than blue light."]
ANSWER = ("Sunlight is scattered by the molecules of the air, blue light most of all [1][2]. Sunsets are red "
          "because their light crosses more air [3]. Higher up, the sky is darker [4].")
KEYPOINTS = json.dumps({"keypoints": ["The sky looks blue.", "Rayleigh scattering causes it.",
                                      "Nitrogen and oxygen molecules scatter sunlight."]})
RULES = [("List the key points", KEYPOINTS), ("Does the text below support the statement?", "SUPPORTED")]


def step(prompts: int, generations: int, tag: str) -> dict:
    """TRL's reward columns for one step: every row repeated `generations` times, one rewrite each."""
    rows = [(f"Why is the sky blue? ({tag} prompt {p})", p % len(SOURCES)) for p in range(prompts)]
    return {"completions": [f"<think>Make it more citable.</think>{SOURCES[t]} This is rewrite {g} of {tag}."
                            for _, t in rows for g in range(generations)],
            "query": [q for q, _ in rows for _ in range(generations)],
            "sources": [SOURCES] * (prompts * generations),
            "target_index": [t for _, t in rows for _ in range(generations)]}


async def timed(*calls) -> float:
    wall = time.perf_counter()
    results = await asyncio.gather(*calls)
    for rewards in results:
        assert None not in rewards, rewards
    return time.perf_counter() - wall


async def bench(args, url: str) -> None:
    from hubtools.geo_engine import Engine
    from train.grpo import ScriptArguments
    from train.rewards import get_reward, shared_judge

    script = ScriptArguments(judge_model="bench-engine", judge_base_url=[url], judge_concurrency=args.concurrency)
    geo, keypoint = get_reward("geo", script), get_reward("keypoint", script)
    geo_judge = shared_judge(script)  # the judge client the rewards share (the engine is the judge model)
    engine = Engine(geo_judge)
    await engine.answer("warm-up", SOURCES)  # opens the connections

    first = step(args.prompts, args.generations, "first")
    t_first = await timed(geo(**first))
    t_next = await timed(geo(**step(args.prompts, args.generations, "first") | {
        "completions": [c.replace("rewrite", "next rewrite") for c in first["completions"]]}))
    both = step(args.prompts, args.generations, "both")
    t_both = await timed(geo(**both), keypoint(**both))

    serial_rows = ([(q, SOURCES) for q in dict.fromkeys(first["query"])]
                   + [(q, [*SOURCES[:t], c.split("</think>")[1], *SOURCES[t + 1:]])
                      for q, t, c in zip(first["query"], first["target_index"], first["completions"])])
    wall = time.perf_counter()
    for row in serial_rows:
        assert await engine.answer(*row) is not None
    t_serial = time.perf_counter() - wall
    wall = time.perf_counter()
    for q, t, c in zip(first["query"], first["target_index"], first["completions"]):
        assert await engine.answer(q, SOURCES) is not None
        assert await engine.answer(q, [*SOURCES[:t], c.split("</think>")[1], *SOURCES[t + 1:]]) is not None
    t_naive = time.perf_counter() - wall
    await geo_judge.aclose()
    assert geo_judge.stats()["errors"] == 0 and geo_judge.stats()["parse_failures"] == 0, geo_judge.stats()

    n = args.prompts * args.generations

    def line(label: str, seconds: float, note: str = "") -> None:
        print(f"{label:<62}: {seconds:6.2f} s{note}")
    print(f"engine latency {args.latency * 1000:.0f} ms per answer; a step = {args.prompts} prompts × "
          f"{args.generations} completions; {args.concurrency} requests in flight per server")
    line(f"geo reward, first step ({n} rewrites + {args.prompts} befores, one gather)", t_first)
    line(f"geo reward, next step (befores kept: {n} calls)", t_next)
    line("geo + keypoint rewards, gathered as TRL does (first step)", t_both,
         f" (the key-point term adds {t_both - t_first:.2f} s: key points listed, then labels)")
    line(f"serial loop over the first step's {len(serial_rows)} calls", t_serial,
         f" = {t_serial / t_first:5.1f}× the reward (ceiling {len(serial_rows)}×: the calls per step)")
    line(f"naive loop, before + after per completion ({2 * n} calls)", t_naive,
         f" = {t_naive / t_first:5.1f}× the reward (target ≥ 20×)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", type=int, default=2, help="prompts per step")
    ap.add_argument("--generations", type=int, default=8, help="completions per prompt")
    ap.add_argument("--latency", type=float, default=1.0, help="seconds the engine takes per answer")
    ap.add_argument("--concurrency", type=int, default=64, help="engine requests in flight per server")
    args = ap.parse_args()
    with latency_server(args.latency, rules=RULES, default=ANSWER) as url:
        asyncio.run(bench(args, url))


if __name__ == "__main__":
    main()
