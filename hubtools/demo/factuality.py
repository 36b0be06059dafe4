"""`hubtools demo factuality` (the default demo): the whole factuality loop on embedded defaults, offline, on a CPU.

local hub → just-hard-enough dataset from the bundled questions (sampled from the packaged
SmolLM2-135M-Instruct) → GRPO with train/recipes/factuality_demo.yaml, publishing `step-N` revisions
with cards → eval table: the base model, each revision (written into its card), and the last one
again with another sampling seed, whose difference is the eval's noise; a verdict names what moved
from the base model beyond that noise → `from_pretrained(repo, revision=…)`.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

from hubtools.demo.common import Stages, finish, local_hub, workdir

DATASET_REPO = "demo/factuality-just-hard-enough"
MODEL_REPO = "demo/smollm2-factuality-grpo"
ROOT = Path(__file__).resolve().parents[2]
DEMO_RECIPE = ROOT / "train" / "recipes" / "factuality_demo.yaml"


def _points(s) -> dict[str, tuple[float, float]]:
    """Metric → (value, resolution) in points: the breakdown counts questions, the rest samples."""
    per_question, per_sample = 100 / s.questions, 100 / (s.questions * s.k)
    return {**{name: (v, per_question) for name, v in s.breakdown.items()},
            **{name: (100 * v, per_sample) for name, v in (("Boxed", s.boxed or 0.0), ("Correct", s.correct),
                                                          ("Not attempted", s.not_attempted),
                                                          ("Hallucination rate", s.hallucination_rate))}}


def compare(base, last, again) -> tuple[dict[str, float], dict[str, tuple[float, float]]]:
    """The noise per metric — |difference| between two evals of `last` with different sampling seeds — and
    the metrics that moved from `base` to `last` by more than that noise and than one question or sample
    (so a metric whose two seeds happen to agree does not count a single sample as a move)."""
    before, after, after_again = _points(base), _points(last), _points(again)
    noise = {name: round(abs(after[name][0] - after_again[name][0]), 2) for name in after}
    moved = {name: (before[name][0], value) for name, (value, resolution) in after.items()
             if abs(value - before[name][0]) > max(noise[name], resolution)}
    return noise, moved


def verdict(last: str, moved: dict[str, tuple[float, float]]) -> str:
    """One line: what moved from the base model to `last` (before → after), and what that means."""
    if not moved:
        return f"nothing moved beyond the noise between the base model and {last}"
    ups = [what for name, what in (("Correct", "more correct answers"), ("Not attempted", "more abstentions"),
                                   ("Boxed", "the answer format")) if name in moved and moved[name][1] > moved[name][0]]
    return (f"base model → {last}, beyond the noise: "
            + "; ".join(f"{name} {x:.1f} → {y:.1f}" for name, (x, y) in moved.items())
            + (f" (it learned {', '.join(ups)})" if ups else ""))


def run(path: str | None = None, model: str = "smollm2", quick: bool = False, serve: bool = False) -> dict:
    """Run the loop; `quick` shrinks every stage (used by the tests with a tiny model); `serve` keeps
    the in-process hub up at the end for the browser."""
    work = workdir(path, "factuality")
    stage = Stages(6)
    stage("local hub")
    endpoint = local_hub(work)

    stage("base model")
    from hubtools.models import resolve_model
    model_path = resolve_model(model)
    print(f"model: {model_path}")

    stage("dataset: sample the model k times per bundled question, keep the just-hard-enough ones")
    from dataset_builders import factuality
    recipe = factuality.load_recipe(factuality.DEFAULT_RECIPE)
    size = dict(per_source=2, k=4, n=6, max_new_tokens=8) if quick else dict(per_source=8, k=4, n=32,
                                                                               max_new_tokens=32)
    recipe = factuality.apply_overrides(recipe, model=model_path, backend="transformers", **size)
    recipe["test_size"] = 2 if quick else 12
    factuality.build(recipe, push_to_hub=DATASET_REPO)

    stage("GRPO: train and publish every saved step as its own revision")
    import yaml
    train_sizes = {"max_steps": 2, "save_steps": 1, "max_completion_length": 8} if quick else {}
    train = {**yaml.safe_load(DEMO_RECIPE.read_text()), **train_sizes}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
           str(ROOT / "train" / "accelerate" / "cpu.yaml"), str(ROOT / "train" / "grpo.py"),
           "--config", str(DEMO_RECIPE), "--model_name_or_path", model_path, "--dataset_name", DATASET_REPO,
           "--publish_repo", MODEL_REPO, "--output_dir", str(work / "run"),
           *(flag for key, value in train_sizes.items() for flag in (f"--{key}", str(value)))]
    subprocess.run(cmd, check=True, cwd=ROOT)
    revisions = [f"step-{s}" for s in range(train["save_steps"], train["max_steps"] + 1, train["save_steps"])]
    last, length = revisions[-1], train["max_completion_length"]

    stage(f"eval on the held-out questions: the base model, {', '.join(revisions)} (results go into their "
          f"cards), and {last} again with another sampling seed (the noise)")
    from hubtools.eval.factuality import evaluate_revisions, grade_model, load_eval_rows, markdown_table, score
    from hubtools.generation import make_generator
    ev = dict(k=2 if quick else 8, max_new_tokens=length, generator={"backend": "transformers", "batch_size": 32})
    rows = load_eval_rows(DATASET_REPO, "test")
    base = score(*grade_model(make_generator({**ev["generator"], "model": model_path}), rows, ev["k"], None,
                              length, 1.0, 0, desc=f"eval base (k={ev['k']})"))
    results = evaluate_revisions(MODEL_REPO, revisions, DATASET_REPO, **ev, output_dir=work / "eval")
    again = evaluate_revisions(MODEL_REPO, [last], DATASET_REPO, **ev, seed=1, write_cards=False,
                               output_dir=work / "eval" / "seed-1")[last]
    table = {"base model": base, **results, f"{last} (seed 1)": again}
    noise, moved = compare(base, results[last], again)
    print(markdown_table(table))
    print("\nnoise (|" + last + " − " + last + " seed 1|, points): "
          + ", ".join(f"{name} {v:.1f}" for name, v in noise.items()))
    print("verdict: " + verdict(last, moved))
    (work / "eval" / "demo.json").write_text(json.dumps(
        {"table": {name: asdict(s) for name, s in table.items()}, "noise": noise,
         "moved": {name: list(v) for name, v in moved.items()}}, indent=2))

    stage(f"downstream: from_pretrained({MODEL_REPO!r}, revision={last!r})")
    from transformers import AutoModelForCausalLM, AutoTokenizer
    tok = AutoTokenizer.from_pretrained(MODEL_REPO, revision=last)
    lm = AutoModelForCausalLM.from_pretrained(MODEL_REPO, revision=last)
    question = "What is the capital of France?"
    messages = [{"role": "system", "content": recipe["system_prompt"]}, {"role": "user", "content": question}]
    inputs = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = lm.generate(**inputs, max_new_tokens=length, do_sample=False)
    print(question, "→", tok.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip())

    finish(endpoint, work, DATASET_REPO, {MODEL_REPO: revisions},
           [f"eval     {work / 'eval'}/demo.json (table, noise, what moved), results.json, breakdown.png"], serve)
    return {"endpoint": endpoint, "results": table, "noise": noise, "moved": moved, "workdir": str(work)}
