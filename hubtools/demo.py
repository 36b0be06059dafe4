"""`hubtools demo`: the whole factuality loop on embedded defaults, offline, on a CPU.

local hub → just-hard-enough dataset from the bundled questions (sampled from the packaged
SmolLM2-135M-Instruct) → a few GRPO steps publishing `step-N` revisions with cards → eval table of
the published revisions (written into their cards) → `from_pretrained(repo, revision=…)`.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DATASET_REPO = "demo/factuality-just-hard-enough"
MODEL_REPO = "demo/smollm2-factuality-grpo"
ROOT = Path(__file__).resolve().parents[1]



def start_local_hub(root: Path) -> str:
    """Serve a local hub from `root` on a background thread; returns its URL."""
    from hubtools.localhub.server import HubServer
    return HubServer(root, port=0).start_thread().url  # the OS picks a free port


class _Stages:
    def __init__(self, total: int):
        self.total, self.n, self.t0 = total, 0, time.time()

    def __call__(self, text: str) -> None:
        self.n += 1
        print(f"\n[{self.n}/{self.total}] {text}  (t={time.time() - self.t0:.0f}s)", flush=True)


def run(workdir: str | None = None, model: str = "smollm2", quick: bool = False, serve: bool = False) -> dict:
    """Run the loop; `quick` shrinks every stage (used by the tests with a tiny model); `serve` keeps
    the in-process hub up at the end for the browser."""
    work = Path(workdir or tempfile.mkdtemp(prefix="hubtools-demo-"))
    work.mkdir(parents=True, exist_ok=True)
    stage = _Stages(6)
    stage("local hub")
    if not os.environ.get("HF_ENDPOINT"):
        from hubtools.hubenv import configure_for_endpoint
        configure_for_endpoint(start_local_hub(work / "hub"))
    endpoint = os.environ["HF_ENDPOINT"]
    os.environ.setdefault("HF_HUB_CACHE", str(work / "hf-cache"))
    print(f"hub: {endpoint} (data in {work / 'hub'})")

    stage("base model")
    from hubtools.models import resolve_model
    model_path = resolve_model(model)
    print(f"model: {model_path}")

    stage("dataset: sample the model k times per bundled question, keep the just-hard-enough ones")
    from dataset_builders import factuality
    recipe = factuality.load_recipe(factuality.DEFAULT_RECIPE)
    size = dict(per_source=2, k=4, n=6, max_new_tokens=8) if quick else dict(per_source=16, k=8, n=16,
                                                                                max_new_tokens=64)
    recipe = factuality.apply_overrides(recipe, model=model_path, backend="transformers", **size)
    recipe["test_size"] = 2 if quick else 6
    factuality.build(recipe, push_to_hub=DATASET_REPO)

    stage("GRPO: train and publish every saved step as its own revision")
    steps = ["--max_steps", "2", "--save_steps", "1", "--max_completion_length", "8"] if quick else \
        ["--max_steps", "4", "--save_steps", "2", "--max_completion_length", "64"]
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
           str(ROOT / "train" / "accelerate" / "cpu.yaml"), str(ROOT / "train" / "grpo.py"),
           "--config", str(ROOT / "train" / "recipes" / "factuality.yaml"), "--model_name_or_path", model_path,
           "--dataset_name", DATASET_REPO, "--publish_repo", MODEL_REPO, "--output_dir", str(work / "run"), *steps]
    subprocess.run(cmd, check=True, cwd=ROOT)
    revisions = ["step-1", "step-2"] if quick else ["step-2", "step-4"]

    stage(f"eval: {', '.join(revisions)} on the held-out questions (results go into their cards)")
    from hubtools.eval_factuality import evaluate_revisions, markdown_table
    results = evaluate_revisions(MODEL_REPO, revisions, DATASET_REPO, split="test", k=2 if quick else 4,
                                 max_new_tokens=8 if quick else 64,
                                 generator={"backend": "transformers", "batch_size": 32},
                                 output_dir=work / "eval")
    print(markdown_table(results))

    stage(f"downstream: from_pretrained({MODEL_REPO!r}, revision={revisions[0]!r})")
    from transformers import AutoModelForCausalLM, AutoTokenizer
    tok = AutoTokenizer.from_pretrained(MODEL_REPO, revision=revisions[0])
    lm = AutoModelForCausalLM.from_pretrained(MODEL_REPO, revision=revisions[0])
    question = [{"role": "user", "content": "What is the capital of France? Answer in \\boxed{}."}]
    inputs = tok.apply_chat_template(question, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = lm.generate(**inputs, max_new_tokens=8 if quick else 48, do_sample=False)
    print("answer:", tok.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip())

    print(f"\nPublished on {endpoint} (open in a browser):")
    print(f"  dataset  {endpoint}/datasets/{DATASET_REPO}")
    print(f"  run      {endpoint}/{MODEL_REPO}/run   (every step-N: training reward and eval results)")
    for rev in revisions + ["latest", "main"]:
        print(f"  model    {endpoint}/{MODEL_REPO}/tree/{rev}")
    print(f"  eval     {work / 'eval'}/results.json, breakdown.png")
    if serve:
        print("Serving until Ctrl-C.", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
    else:
        print(f"Browse again later: hubtools hub serve --root {work / 'hub'}  (or run the demo with --serve)")
    return {"endpoint": endpoint, "results": results, "workdir": str(work)}
