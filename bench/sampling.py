"""Benchmark: k-way sampling in one `generate` call per prompt batch vs one call per sample.

On SmolLM2-135M-Instruct (the packaged model), the same prompts and params through the same
TransformersGenerator: batched (n=k, num_return_sequences=k) against a loop of n=1 calls. Prints
both timings and the speed-up from one run (target ≥ 5×). Wall time and this process's CPU time are
both reported: the machine may be shared, and CPU time is the ratio that contention distorts least.

    .venv/bin/python bench/sampling.py [--quick] [--k 8] [--max-new-tokens 48] [--batch-size 32]
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import torch

from hubtools.generation import SamplingParams, TransformersGenerator
from hubtools.models import smollm2_path

QUESTIONS = [
    "What is the capital of France?", "Who wrote the play Hamlet?",
    "In which year did Neil Armstrong walk on the Moon?",
    "What is the highest mountain on Earth?", "Which river is the longest in Africa?",
    "Who painted the Mona Lisa?", "What is the chemical symbol for gold?", "How many continents are there?",
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="4 prompts (one batch of 32 sequences) instead of 8")
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--batch-size", type=int, default=32, help="sequences per generate call (batched mode)")
    args = ap.parse_args()

    prompts = [[{"role": "user", "content": q}] for q in QUESTIONS[:4 if args.quick else 8]]
    params = SamplingParams(n=args.k, max_new_tokens=args.max_new_tokens, temperature=1.0, top_p=1.0)
    gen = TransformersGenerator(str(smollm2_path()), batch_size=args.batch_size)
    print(f"SmolLM2-135M-Instruct, {len(prompts)} prompts × k={args.k}, max_new_tokens={args.max_new_tokens}, "
          f"torch threads={torch.get_num_threads()}")
    gen.generate(prompts[:1], dataclasses.replace(params, n=1, max_new_tokens=4))  # warm-up

    wall, cpu = time.perf_counter(), time.process_time()
    batched = gen.generate(prompts, params, desc="batched")
    wall_batched, cpu_batched = time.perf_counter() - wall, time.process_time() - cpu

    one = dataclasses.replace(params, n=1)
    wall, cpu = time.perf_counter(), time.process_time()
    looped = [[gen.generate([p], one)[0][0] for _ in range(args.k)] for p in prompts]
    wall_loop, cpu_loop = time.perf_counter() - wall, time.process_time() - cpu

    n = len(prompts) * args.k
    assert all(len(s) == args.k for s in batched + looped)
    print(f"batched k-way   : wall {wall_batched:6.1f} s  cpu {cpu_batched:6.1f} s  "
          f"({n / wall_batched:5.2f} samples/s, batch_size={args.batch_size})")
    print(f"per-sample loop : wall {wall_loop:6.1f} s  cpu {cpu_loop:6.1f} s  ({n / wall_loop:5.2f} samples/s)")
    print(f"speed-up        : wall {wall_loop / wall_batched:5.1f}×  cpu {cpu_loop / cpu_batched:5.1f}×  "
          "(target ≥ 5×)")
    print(f"example sample  : {batched[0][0][:100]!r}")


if __name__ == "__main__":
    main()
