"""Benchmark: GRPO wall time with per-step publishing to the local hub vs without, in one run.

Both runs train the same tiny model for the same steps with a checkpoint at every `--save-steps`;
the publishing run also sends each checkpoint to branch step-N through the async publisher.
Runs alternate (plain, publishing, plain, …); prints every train_runtime, the ratio of the fastest of
each (target ≤ 1.03), and the end-to-end wall
time including the final flush of the publish queue.

    .venv/bin/python bench/train_publish.py [--steps 40] [--save-steps 2] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from hubtools.hubenv import free_port, stop_process

ROOT = Path(__file__).resolve().parents[1]
_RUN = """
import json, sys
from train.grpo import main
print("METRICS" + json.dumps(main(sys.argv[1:])))
"""



def run(argv: list[str], env: dict) -> tuple[float, float]:
    t = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", _RUN, *argv], cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if out.returncode:
        sys.exit(out.stderr[-4000:])
    metrics = json.loads(next(l[7:] for l in out.stdout.splitlines() if l.startswith("METRICS")))
    return metrics["train_runtime"], wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--repeats", type=int, default=2, help="runs of each, interleaved; the fastest counts")
    ap.add_argument("--save-steps", type=int, default=2)
    ap.add_argument("--hidden", type=int, default=256, help="tiny Qwen3 hidden size (default 256)")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--completion-length", type=int, default=64)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="hubtools-bench-train-"))
    port = free_port()
    env = dict(os.environ, HF_ENDPOINT=f"http://127.0.0.1:{port}", HF_HUB_DISABLE_XET="1", HF_TOKEN="bench",
               HF_HOME=str(work / "hf"), HF_HUB_DISABLE_PROGRESS_BARS="1", HUBTOOLS_HUB_TOKEN="bench")
    hub = subprocess.Popen([sys.executable, "-m", "hubtools.cli", "hub", "serve", "--root", str(work / "hub"),
                            "--port", str(port)], env=env, stdout=subprocess.DEVNULL)
    try:
        prep = ("import sys; from hubtools.tiny_model import build_tiny_model; build_tiny_model(sys.argv[1], hidden_size=int(sys.argv[3]), layers=int(sys.argv[4]))\n"
                "from datasets import Dataset, DatasetDict\n"
                "qs=[('Capital of France?',['Paris']),('2+2?',['4']),('Red planet?',['Mars']),('Hamlet author?',['Shakespeare'])]\n"
                "rows=[dict(id=str(i),question=q,answers=a,answerable=True,prompt=[{'role':'user','content':q}]) for i,(q,a) in enumerate(qs)]\n"
                "DatasetDict(train=Dataset.from_list(rows)).save_to_disk(sys.argv[2])\n")
        subprocess.run([sys.executable, "-c", prep, str(work / "model"), str(work / "data"), str(args.hidden),
                        str(args.layers)], env=env, check=True,
                       capture_output=True)
        common = ["--config", "train/recipes/factuality.yaml", "--model_name_or_path", str(work / "model"),
                  "--dataset_name", str(work / "data"), "--max_steps", str(args.steps),
                  "--save_steps", str(args.save_steps), "--save_total_limit", "100", "--max_completion_length", str(args.completion_length)]
        plain, published = [], []
        for i in range(args.repeats):  # interleaved, so drifting machine load hits both alike
            plain.append(run(common + ["--output_dir", str(work / f"plain{i}"), "--publish_repo", ""], env))
            published.append(run(common + ["--output_dir", str(work / f"pub{i}"), "--publish_repo", f"bench/run{i}"],
                                 env))
    finally:
        stop_process(hub)
    saves = args.steps // args.save_steps
    print(f"{args.steps} GRPO steps of a Qwen3 (hidden {args.hidden}, {args.layers} layers), a checkpoint every "
          f"{args.save_steps} steps ({saves} saves), {args.repeats} interleaved runs each")
    for name, runs in (("without publishing", plain), ("with publishing", published)):
        print(f"{name:19s} train_runtime " + ", ".join(f"{r[0]:.2f}" for r in runs) + " s; process wall "
              + ", ".join(f"{r[1]:.2f}" for r in runs) + " s (with publishing: includes the final flush)")
    best_plain, best_pub = min(r[0] for r in plain), min(r[0] for r in published)
    print(f"train_runtime ratio (fastest of each): {best_pub / best_plain:.3f} (target ≤ 1.03)")


if __name__ == "__main__":
    main()
