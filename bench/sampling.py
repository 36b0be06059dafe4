"""Benchmark: k-way sampling in one `generate` call per prompt batch vs one call per sample.

On SmolLM2-135M-Instruct (the packaged model), the same prompts and params through the same
TransformersGenerator: batched (n=k, num_return_sequences=k) against a loop of n=1 calls. Prints
both timings and the speed-up from one run (target ≥ 5×).

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
    "What is the capital of France?", "Who wrote the play Hamlet?", "In which year did Neil Armstrong walk on the Moon?",
    "What is the highest mountain on Earth?", "Which river is the longest in Africa?",
    "Who painted the Mona Lisa?", "What is the chemical symbol for gold?", "How many continents are there?",
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="2 prompts instead of 8")
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--batch-size", type=int, default=32, help="sequences per generate call (batched mode)")
    args = ap.parse_args()

    prompts = [[{"role": "user", "content": q}] for q in QUESTIONS[:2 if args.quick else 8]]
    params = SamplingParams(n=args.k, max_new_tokens=args.max_new_tokens, temperature=1.0, top_p=1.0)
    gen = TransformersGenerator(str(smollm2_path()), batch_size=args.batch_size)
    print(f"SmolLM2-135M-Instruct, {len(prompts)} prompts × k={args.k}, max_new_tokens={args.max_new_tokens}, "
          f"torch threads={torch.get_num_threads()}")
    gen.generate(prompts[:1], dataclasses.replace(params, n=1, max_new_tokens=4))  # warm-up

    t0 = time.perf_counter()
    batched = gen.generate(prompts, params, desc="batched")
    t_batched = time.perf_counter() - t0

    one = dataclasses.replace(params, n=1)
    t0 = time.perf_counter()
    looped = [[gen.generate([p], one)[0][0] for _ in range(args.k)] for p in prompts]
    t_loop = time.perf_counter() - t0

    n = len(prompts) * args.k
    assert all(len(s) == args.k for s in batched + looped)
    print(f"batched k-way   : {t_batched:7.1f} s  ({n / t_batched:5.2f} samples/s, batch_size={args.batch_size})")
    print(f"per-sample loop : {t_loop:7.1f} s  ({n / t_loop:5.2f} samples/s)")
    print(f"speed-up        : {t_loop / t_batched:7.1f}×  (target ≥ 5×)")
    print(f"example sample  : {batched[0][0][:100]!r}")


if __name__ == "__main__":
    main()
