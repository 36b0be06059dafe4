"""`hubtools demo rl_hard`: the refiner loop offline on a CPU, in about ten minutes.

local hub → `transformers serve` of the packaged SmolLM2-135M-Instruct as judge and rubric writer → a
small policy (a tiny random Qwen3 with a tokenizer fitted to the bundled refiner texts) fine-tuned on
the reference answers of the first bundled rows, so that it writes the `<answer>`/`<snippet id=…>`
format (train/recipes/rl_hard_demo_sft.yaml; the refiner run's base model was SFT'd on refiner data
too) → `build-dataset rl_hard` on the other rows: rubrics written (and validated) by the served model,
the SFT policy sampled k times per row, every answer judged with the rubric reward, the hardest rows
kept → GRPO from the published SFT revision with rubric + citation + format rewards
(train/recipes/rl_hard_demo.yaml), publishing `step-1` and `step-2` with their cards → eval of the SFT
model and both steps on the held-out rows, into the cards → `from_pretrained(repo, revision="step-2")`.

The judge is what a CPU can serve offline: SmolLM2-135M rarely replies in the judge's strict format,
so most of its replies are counted as unparsable (never scored), and the figures show the loop
working, not a trained refiner. With a real judge: `--judge-base-url` / `--judge-model`.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

from hubtools.demo.common import ROOT, Stages, finish, launch, local_hub, workdir

SFT_REPO = "demo/tiny-refiner-sft"
DATASET_REPO = "demo/refiner-rl-hard"
MODEL_REPO = "demo/tiny-refiner-grpo"
SFT_RECIPE = ROOT / "train" / "recipes" / "rl_hard_demo_sft.yaml"
GRPO_RECIPE = ROOT / "train" / "recipes" / "rl_hard_demo.yaml"
SFT_ROWS = 24  # the first bundled rows teach the format; the others are built, trained on and held out


def small_policy(out: Path, texts: list[str]) -> Path:
    """A tiny random Qwen3 whose tokenizer is fitted to the refiner texts (few tokens per prompt)."""
    from hubtools.tiny_model import build_tiny_model
    return build_tiny_model(out, hidden_size=128, layers=4, corpus=tuple(texts), vocab_size=4096,
                            max_positions=2048)


def run(path: str | None = None, quick: bool = False, serve: bool = False, judge_model: str | None = None,
        judge_base_url: list[str] | None = None) -> dict:
    """Run the loop; `quick` shrinks every stage (the tests); `serve` keeps the hub up at the end.
    Without `judge_base_url`, the packaged SmolLM2 is served here as judge and rubric writer."""
    work = workdir(path, "rl_hard")
    stage = Stages(7)
    stage("local hub")
    endpoint = local_hub(work)  # before the HF libraries are imported: they read HF_ENDPOINT once

    import yaml
    from datasets import Dataset, DatasetDict

    from dataset_builders import rl_hard
    from hubtools.eval import rl_hard as rl_eval
    from hubtools.models import resolve_model

    with contextlib.ExitStack() as stack:
        stage("judge and rubric writer: `transformers serve` of the packaged SmolLM2-135M-Instruct"
              if not judge_base_url else f"judge: {judge_model} at {', '.join(judge_base_url)}")
        if not judge_base_url:
            from hubtools.generation import serve_transformers
            judge_model = resolve_model("smollm2")
            judge_base_url = [stack.enter_context(serve_transformers(judge_model))]
        print(f"judge: {judge_model} at {judge_base_url}")

        stage(f"small policy: a tiny Qwen3, fine-tuned on the reference answers of {SFT_ROWS} bundled rows "
              f"to learn the answer format; published as {SFT_REPO}")
        recipe = rl_hard.load_recipe(rl_hard.DEFAULT_RECIPE)
        by_source, skipped = rl_hard.load_sources(recipe)
        if skipped:
            raise RuntimeError(f"the bundled refiner sample has bad rows: {dict(skipped)}")
        rows = by_source["sample"]
        bundled = Path(recipe["sources"][0]["path"]).read_text(encoding="utf-8").splitlines()
        policy = small_policy(work / "policy-init", [json.dumps(json.loads(line)) for line in bundled])
        sft_rows = rows[:SFT_ROWS][:8] if quick else rows[:SFT_ROWS]
        DatasetDict(train=Dataset.from_list([{"prompt": r["prompt"], "reference_answer": r["reference_answer"]}
                                             for r in sft_rows])).save_to_disk(work / "sft-data")
        sft_steps = 2 if quick else yaml.safe_load(SFT_RECIPE.read_text())["max_steps"]
        launch("sft.py", SFT_RECIPE, "--model_name_or_path", str(policy), "--dataset_name", str(work / "sft-data"),
               "--publish_repo", SFT_REPO, "--output_dir", str(work / "sft"),
               *(("--max_steps", "2", "--save_steps", "2") if quick else ()))
        sft_revision = f"step-{sft_steps}"

        stage(f"dataset: rubrics for the other {len(rows) - SFT_ROWS} rows, the SFT policy sampled k times per "
              f"row, each answer judged with the rubric reward, the hardest rows kept; published as {DATASET_REPO}")
        rl_rows = work / "rl_rows.jsonl"
        rl_rows.write_text("\n".join(bundled[SFT_ROWS:]) + "\n", encoding="utf-8")
        recipe["sources"][0]["path"] = str(rl_rows)
        served = {"model": judge_model, "base_url": judge_base_url, "concurrency": 2,
                  "cache_dir": str(work / "judge-cache"), "timeout": 300}
        recipe["judge"] = recipe["judge"] | served | {"max_tokens": 8}
        recipe["rubric_writer"] = recipe["rubric_writer"] | served | {"max_tokens": 24 if quick else 48}
        recipe["prefer_reference_rubrics"] = False  # the writer is asked; its failures fall back to the reference
        recipe["test_size"] = 2 if quick else 4
        recipe["select"]["rule"] = "lowest_mean"
        recipe["generator"] = {"backend": "transformers", "model": SFT_REPO, "revision": sft_revision, "batch_size": 16}
        rl_hard.build(recipe, push_to_hub=DATASET_REPO, k=2, n=6 if quick else 12,
                      max_new_tokens=16 if quick else 128)

        stage(f"GRPO from {SFT_REPO}@{sft_revision}: rubric + citation + format rewards, judged by the served "
              f"model; every saved step published to {MODEL_REPO} as its own revision")
        train = yaml.safe_load(GRPO_RECIPE.read_text())
        length = 16 if quick else train["max_completion_length"]
        launch("grpo.py", GRPO_RECIPE, "--model_name_or_path", SFT_REPO, "--model_revision", sft_revision,
               "--base_model_description", "the demo's small policy after SFT on bundled refiner answers",
               "--dataset_name", DATASET_REPO, "--publish_repo", MODEL_REPO, "--output_dir", str(work / "grpo"),
               "--judge_model", judge_model, "--judge_base_url", *judge_base_url,
               "--judge_cache_dir", str(work / "judge-cache"), "--judge_max_tokens", "8",
               "--max_completion_length", str(length))
        revisions = [f"step-{s}" for s in range(train["save_steps"], train["max_steps"] + 1, train["save_steps"])]

        stage(f"eval on the held-out rows: the SFT model, {', '.join(revisions)} (results into their cards)")
        from hubtools.judge import Judge
        judge = Judge(judge_model, judge_base_url, concurrency=2, max_tokens=8, cache_dir=work / "judge-cache")
        ev = dict(split="test", k=1 if quick else 4, max_new_tokens=length, generator={"backend": "transformers"})
        results = {f"SFT ({sft_revision})": rl_eval.evaluate_revisions(
            SFT_REPO, [sft_revision], DATASET_REPO, judge, write_cards=False, output_dir=str(work / "eval" / "sft"),
            **ev)[sft_revision]}
        results |= rl_eval.evaluate_revisions(MODEL_REPO, revisions, DATASET_REPO, judge,
                                              output_dir=str(work / "eval"), **ev)
        print(rl_eval.markdown_table(results))
        print(f"judge calls: {judge.stats()}")

    stage(f"downstream: from_pretrained({MODEL_REPO!r}, revision={revisions[-1]!r})")
    from transformers import AutoModelForCausalLM, AutoTokenizer
    tok = AutoTokenizer.from_pretrained(MODEL_REPO, revision=revisions[-1])
    lm = AutoModelForCausalLM.from_pretrained(MODEL_REPO, revision=revisions[-1])
    row = rows[-1]
    inputs = tok.apply_chat_template(row["prompt"], add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = lm.generate(**inputs, max_new_tokens=length, do_sample=False)
    print(row["question"], "→", tok.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip())

    print(f"\nwall time: {stage.elapsed() / 60:.1f} min")
    finish(endpoint, work, DATASET_REPO, {SFT_REPO: [sft_revision], MODEL_REPO: revisions},
           [f"eval     {work / 'eval'}/results.json, rubric_eval.png"], serve)
    return {"endpoint": endpoint, "results": results, "workdir": str(work)}
