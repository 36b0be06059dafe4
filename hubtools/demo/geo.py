"""`hubtools demo geo`: the GEO loop offline on a CPU, in about 7 minutes.

local hub → `transformers serve` of the packaged SmolLM2-135M-Instruct as the simulated generative engine
and key-point judge → `build-dataset geo` on the first 8 bundled queries (dataset_builders/recipes/geo_demo.yaml:
SmolLM2 rewrites each train query's target with Cite Sources and Statistics Addition, the engine answers
over the original and the rewritten sources, the judge checks key points, the study's filter) → SFT of
SmolLM2 (train/recipes/geo_demo_sft.yaml; full weights, not the study's LoRA: the recipe says why) → GRPO
from the published SFT revision with the `geo` reward against the served engine (train/recipes/geo_demo.yaml), publishing
`step-1` and `step-2` with their cards → `hubtools eval geo` of the base model, the SFT revision and both
steps on the test split (the study's table of settings; results into the cards) →
`from_pretrained(repo, revision="step-2")` rewriting a test source.

What the figures mean: SmolLM2-135M as engine cites, but mostly the first results it is shown (it copies
result [1], sometimes [2]), so a target further down stays at 0 before and after; as key-point judge it
writes prose instead of the JSON list, so no rewrite has its key points judged and the filter keeps none.
SFT then trains on the rl split's unrewritten sources (the format and length of a rewrite the reward can
score, not a GEO gain), and the table shows the loop working. With a real engine: `--judge-base-url` /
`--judge-model`.
"""

from __future__ import annotations

import contextlib

from hubtools.demo.common import ROOT, Stages, finish, launch, local_hub, workdir

DATASET_REPO = "demo/geo-rewrites"
SFT_REPO = "demo/smollm2-geo-sft"
MODEL_REPO = "demo/smollm2-geo-grpo"
DATA_RECIPE = ROOT / "dataset_builders" / "recipes" / "geo_demo.yaml"
SFT_RECIPE = ROOT / "train" / "recipes" / "geo_demo_sft.yaml"
GRPO_RECIPE = ROOT / "train" / "recipes" / "geo_demo.yaml"
QUICK = {"queries": 4, "tokens": 16, "steps": 2}  # --quick: every stage at smoke-test size


def sft_split(stats: dict) -> tuple[str, str]:
    """(the split SFT trains on, why): the build's kept rewrites when there are any, else the rl split's
    identity rows (the source as its own rewrite)."""
    if stats["train"]:
        return "train", f"the {stats['train']} rewrite(s) the filter kept"
    outcomes = ", ".join(f"{why}: {n}" for why, n in stats["filter"].items())
    return "rl", (f"the filter kept no rewrite ({outcomes}), so SFT trains on the rl split's {stats['rl']} "
                  "unrewritten sources: it teaches the form of a rewrite the reward can score (the text alone, "
                  "about as long as the source), not a GEO gain")


def meaning(results: dict, packaged_engine: bool) -> str:
    """What the eval table shows, from its figures; `packaged_engine`: the engine is the packaged SmolLM2."""
    cited = any(s.score_before or s.score_after for s in results.values())
    rows = next(iter(results.values())).rows
    if not cited:
        if all(s.rewrites == sum(s.not_shown.values()) for s in results.values()):
            why = "no rewrite was shown to it"
        elif all(s.uncited == 1.0 for s in results.values()):
            why = "it cited no source at all"
        else:
            why = "it cited other sources, never the rewritten one" + (
                ": a 135M engine cites the first results it is shown" if packaged_engine else "")
        return (f"the engine cited none of the rewritten sources in any setting (score 0 before and after; {why}): "
                "the table shows the loop working — rewrites generated, shown to the engine, scored as the reward "
                "scores them, written into the cards — not a GEO gain. An engine that never cites the rewritten "
                "source pays every rewrite 0, which leaves GRPO's groups no spread to learn from; what can differ "
                "offline is how many rewrites were not shown (empty or outside the length bounds)")
    return (f"{rows} test row(s) × k=1 after 2 GRPO steps: differences between settings are within the noise; "
            "the table shows the loop working, not a GEO gain")


def run(path: str | None = None, quick: bool = False, serve: bool = False, judge_model: str | None = None,
        judge_base_url: list[str] | None = None) -> dict:
    """Run the loop; `quick` shrinks every stage (the tests); `serve` keeps the hub up at the end.
    Without `judge_base_url`, the packaged SmolLM2 is served here as engine and key-point judge."""
    work = workdir(path, "geo")
    stage = Stages(7)
    stage("local hub")
    endpoint = local_hub(work)  # before the HF libraries are imported: they read HF_ENDPOINT once

    import yaml

    from dataset_builders import geo
    from hubtools.eval import geo as geo_eval
    from hubtools.geo_engine import Engine
    from hubtools.judge import Judge
    from hubtools.models import resolve_model

    policy = resolve_model("smollm2")
    with contextlib.ExitStack() as stack:
        stage("engine and key-point judge: `transformers serve` of the packaged SmolLM2-135M-Instruct"
              if not judge_base_url else f"engine and judge: {judge_model} at {', '.join(judge_base_url)}")
        if not judge_base_url:
            from hubtools.generation import serve_transformers
            judge_model = policy
            judge_base_url = [stack.enter_context(serve_transformers(judge_model))]
        print(f"engine and judge: {judge_model} at {judge_base_url}")

        recipe = geo.load_recipe(DATA_RECIPE)
        served = {"model": judge_model, "base_url": judge_base_url, "cache_dir": str(work / "judge-cache")}
        if quick:
            recipe["sources"][0]["limit"] = QUICK["queries"]
            recipe["test_rows"] = {"start": QUICK["queries"] - 1, "end": QUICK["queries"]}
            recipe["sampling"]["max_new_tokens"] = served["max_tokens"] = QUICK["tokens"]
        recipe["engine"] |= served
        recipe["judge"] |= served
        t = recipe["test_rows"]
        stage(f"dataset: the first {recipe['sources'][0]['limit']} bundled queries (test: {t['start']}..{t['end'] - 1}), "
              f"each train target rewritten by SmolLM2 with {', '.join(geo.METHODS[m].name for m in recipe['methods'])}, "
              f"the engine's answers and the key points measured, the study's filter; published as {DATASET_REPO}")
        dd, stats = geo.build(recipe, push_to_hub=DATASET_REPO)
        split, why = sft_split(stats)
        print(f"SFT data: {why}")

        sft_steps = QUICK["steps"] if quick else yaml.safe_load(SFT_RECIPE.read_text())["max_steps"]
        sft_revision = f"step-{sft_steps}"
        stage(f"SFT of SmolLM2-135M-Instruct: {sft_steps} steps on the {split} split; published as "
              f"{SFT_REPO}@{sft_revision}")
        launch("sft.py", SFT_RECIPE, "--model_name_or_path", "smollm2", "--dataset_name", DATASET_REPO,
               "--dataset_train_split", split, "--publish_repo", SFT_REPO, "--output_dir", str(work / "sft"),
               *(("--max_steps", str(sft_steps), "--save_steps", str(sft_steps)) if quick else ()))

        train = yaml.safe_load(GRPO_RECIPE.read_text())
        steps = QUICK["steps"] if quick else train["max_steps"]
        length = QUICK["tokens"] if quick else train["max_completion_length"]
        engine_tokens = recipe["engine"]["max_tokens"]  # as the build's: the rl rows' "before" came from it
        stage(f"GRPO from {SFT_REPO}@{sft_revision}: geo reward (the served engine), {steps} steps of 2 prompts × "
              f"{train['num_generations']} completions; every step published to {MODEL_REPO} as its own revision")
        launch("grpo.py", GRPO_RECIPE, "--model_name_or_path", SFT_REPO, "--model_revision", sft_revision,
               "--base_model_description", f"SmolLM2-135M-Instruct after SFT on the {split} split of {DATASET_REPO}",
               "--dataset_name", DATASET_REPO, "--publish_repo", MODEL_REPO, "--output_dir", str(work / "grpo"),
               "--judge_model", judge_model, "--judge_base_url", *judge_base_url,
               "--judge_cache_dir", str(work / "judge-cache"), "--judge_max_tokens", str(engine_tokens),
               "--max_completion_length", str(length), "--max_steps", str(steps))
        revisions = [f"step-{s}" for s in range(train["save_steps"], steps + 1, train["save_steps"])]

        settings = {"base instruct": (policy, None), f"SFT-{sft_steps}": (SFT_REPO, sft_revision),
                    **{f"RL-{rev.removeprefix('step-')}": (MODEL_REPO, rev) for rev in revisions}}
        stage(f"eval on the test split: {', '.join(settings)} (results into the SFT and GRPO cards)")
        engine = Engine(Judge(judge_model, judge_base_url, concurrency=2, max_tokens=engine_tokens,
                              cache_dir=work / "judge-cache"))
        results = geo_eval.evaluate_settings(
            settings, DATASET_REPO, engine, split="test", k=1, max_new_tokens=length,
            generator={"backend": "transformers"}, output_dir=work / "eval",
            write_cards={label: rev for label, (repo, rev) in settings.items() if repo != policy})
        print(geo_eval.markdown_table(results))
        print(f"engine calls: {engine.judge.stats('geo_engine')}")
        print(f"what the figures mean: {meaning(results, packaged_engine=judge_model == policy)}")

    last = revisions[-1]
    stage(f"downstream: from_pretrained({MODEL_REPO!r}, revision={last!r}) rewrites a test source")
    from transformers import AutoModelForCausalLM, AutoTokenizer
    tok = AutoTokenizer.from_pretrained(MODEL_REPO, revision=last)
    lm = AutoModelForCausalLM.from_pretrained(MODEL_REPO, revision=last)
    row = dd["test"][0]
    inputs = tok.apply_chat_template(row["prompt"], add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = lm.generate(**inputs, max_new_tokens=length, do_sample=False)
    print(f"query: {row['query']}\nsource {row['target_index'] + 1}: {row['rewrite']}\nrewritten: "
          + tok.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip())

    print(f"\nwall time: {stage.elapsed() / 60:.1f} min")
    finish(endpoint, work, DATASET_REPO, {SFT_REPO: [sft_revision], MODEL_REPO: revisions},
           [f"eval     {work / 'eval'}/results.json, geo_eval.png"], serve)
    return {"endpoint": endpoint, "results": results, "workdir": str(work)}
