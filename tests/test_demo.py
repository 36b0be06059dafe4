"""The README's demos at smoke-test size: `hubtools demo --quick` (factuality) on the tiny model, and
`hubtools demo rl_hard --quick` / `hubtools demo geo --quick` with the tiny model served as judge/engine."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys

from conftest import ROOT, HubProcess

from hubtools.hubenv import free_port


def run_demo(tmp_path, *args: str) -> str:
    """`hubtools demo ARGS --quick` in its own workdir, on its own hub (none from the environment): stdout."""
    env = {k: v for k, v in os.environ.items() if k not in ("HF_ENDPOINT", "HF_HUB_CACHE", "HF_TOKEN")}
    out = subprocess.run([sys.executable, "-m", "hubtools.cli", "demo", *args, "--quick", "--workdir", str(tmp_path)],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out.stdout


@contextlib.contextmanager
def demo_hub(tmp_path):
    """The demo's hub folder served again, after the demo: (HfApi on it, read(repo, revision) of a card)."""
    from huggingface_hub import HfApi, hf_hub_download
    hub = HubProcess(tmp_path / "hub", free_port(), None).start()
    try:
        yield HfApi(endpoint=hub.url), lambda repo, rev: open(hf_hub_download(
            repo, "README.md", revision=rev, endpoint=hub.url, cache_dir=tmp_path / "dl")).read()
    finally:
        hub.kill()


def test_demo_runs_the_whole_loop_on_its_own_hub(tmp_path, tiny_model_dir):
    stdout = run_demo(tmp_path, "--model", str(tiny_model_dir))
    for stage in ("[1/6] local hub", "[3/6] dataset", "[4/6] GRPO", "[5/6] eval", "[6/6] downstream"):
        assert stage in stdout
    for row in ("| base model |", "| step-1 |", "| step-2 |", "| step-2 (seed 1) |"):
        assert row in stdout
    assert "noise (|step-2 − step-2 seed 1|, points): " in stdout and "\nverdict: " in stdout
    assert "/demo/smollm2-factuality-grpo/tree/step-2" in stdout
    assert set(json.loads((tmp_path / "eval" / "results.json").read_text())) == {"step-1", "step-2"}
    demo = json.loads((tmp_path / "eval" / "demo.json").read_text())
    assert list(demo["table"]) == ["base model", "step-1", "step-2", "step-2 (seed 1)"]
    assert set(demo["noise"]) >= {"Boxed", "Correct", "Not attempted", "All Attempt and Wrong"}
    assert (tmp_path / "hub" / "hub.sqlite3").exists()


def test_verdict_counts_a_move_only_beyond_the_seed_noise_and_one_sample():
    from hubtools.demo.factuality import compare, verdict
    from hubtools.eval.factuality import score
    from hubtools.scoring import Grade
    c, i, n = Grade.CORRECT, Grade.INCORRECT, Grade.NOT_ATTEMPTED
    base = score([[i, i, i, i]] * 5, [[False, False, False, True]] * 5)
    last = score([[i, i, i, n]] * 4 + [[c, i, i, i]], [[True, True, True, True]] * 5)
    again = score([[i, i, i, i]] * 4 + [[n, i, i, n]], [[True, True, False, True]] * 5)
    noise, moved = compare(base, last, again)
    assert noise["Boxed"] == 25.0 and noise["Not attempted"] == 10.0 and noise["Correct"] == 5.0
    assert moved == {"Partial NotAttempt": (0.0, 80.0), "All Attempt and Wrong": (100.0, 0.0),
                     "Boxed": (25.0, 100.0), "Not attempted": (0.0, 20.0), "Hallucination rate": (100.0, 75.0)}
    assert "Correct" not in moved  # 0 → 5 points: one sample of 20, not beyond the eval's resolution
    assert verdict("step-4", moved).endswith("(it learned more abstentions, the answer format)")
    assert verdict("step-4", {}) == "nothing moved beyond the noise between the base model and step-4"


def test_geo_meaning_names_why_the_rewritten_source_was_never_cited():
    from hubtools.demo.geo import meaning
    from hubtools.eval.geo import GeoScores
    zero = {"word": 0.0, "word_position": 0.0, "position": 0.0}

    def table(uncited: float, empty: int = 0) -> dict:
        return {"RL-2": GeoScores(rows=2, k=1, rewrites=2, before=zero, after=zero, gain_pct=dict.fromkeys(zero),
                                  score_before=0.0, score_after=0.0, improved=0.0, uncited=uncited,
                                  not_shown={"empty": empty, "length": 0, "injection": 0}, engine_failures=0,
                                  weights={"word": 1.0})}
    assert "no rewrite was shown to it" in meaning(table(0.0, empty=2), packaged_engine=True)
    assert "it cited no source at all" in meaning(table(1.0), packaged_engine=True)
    assert "a 135M engine cites the first results" in meaning(table(0.0), packaged_engine=True)
    other = meaning(table(0.0), packaged_engine=False)  # a served engine of the user's: no claim about its size
    assert "it cited other sources, never the rewritten one)" in other and "135M" not in other


def test_rl_hard_demo_runs_the_whole_loop(tmp_path, served):
    """SFT of the small policy → rubric dataset → 2 GRPO step revisions → eval into their cards → from_pretrained."""
    base_url, judge_model = served
    stdout = run_demo(tmp_path, "rl_hard", "--judge-model", judge_model, "--judge-base-url", base_url)
    stages = ("[1/7] local hub", "[2/7] judge", "[3/7] small policy", "[4/7] dataset", "[5/7] GRPO", "[6/7] eval",
              "[7/7] downstream")
    assert all(s in stdout for s in stages), stdout[-3000:]
    for row in ("| SFT (step-2) |", "| step-1 |", "| step-2 |"):
        assert row in stdout
    assert "/demo/tiny-refiner-grpo/tree/step-2" in stdout and "/datasets/demo/refiner-rl-hard" in stdout
    assert set(json.loads((tmp_path / "eval" / "results.json").read_text())) == {"step-1", "step-2"}
    with demo_hub(tmp_path) as (api, card):
        branches = {b.name for b in api.list_repo_refs("demo/tiny-refiner-grpo").branches}
        step_card = card("demo/tiny-refiner-grpo", "step-2")
    assert {"step-1", "step-2", "latest", "main"} <= branches
    assert "demo/tiny-refiner-sft" in step_card and "step-2" in step_card  # the base revision
    assert "rubric" in step_card  # the rewards
    assert "format_valid" in step_card  # the eval's results, in the card's model-index


def test_geo_demo_runs_the_whole_loop(tmp_path, served):
    """GEO build → SFT → 2 GRPO step revisions with the geo reward → eval of base, SFT and both
    steps into their cards → from_pretrained."""
    base_url, engine_model = served
    stdout = run_demo(tmp_path, "geo", "--judge-model", engine_model, "--judge-base-url", base_url)
    stages = ("[1/7] local hub", "[2/7] engine and judge", "[3/7] dataset", "[4/7] SFT", "[5/7] GRPO", "[6/7] eval",
              "[7/7] downstream")
    assert all(s in stdout for s in stages), stdout[-3000:]
    # the tiny engine cites nothing: no rewrite gains, the filter keeps none, and the demo says what it does instead
    assert "SFT data: the filter kept no rewrite" in stdout and "on the rl split" in stdout
    for row in ("| base instruct |", "| SFT-2 |", "| RL-1 |", "| RL-2 |"):
        assert row in stdout
    assert "what the figures mean: the engine cited none" in stdout and "not a GEO gain" in stdout
    assert "/demo/smollm2-geo-grpo/tree/step-2" in stdout and "/datasets/demo/geo-rewrites" in stdout
    assert "\nwall time: " in stdout
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert {"base instruct", "SFT-2", "RL-1", "RL-2"} <= set(results) and results["split"] == "test"
    with demo_hub(tmp_path) as (api, card):
        branches = {b.name for b in api.list_repo_refs("demo/smollm2-geo-grpo").branches}
        sft_branches = {b.name for b in api.list_repo_refs("demo/smollm2-geo-sft").branches}
        splits = {f.split("/")[1] for f in api.list_repo_files("demo/geo-rewrites", repo_type="dataset")
                  if f.startswith("data/")}
        step_card, sft_card = card("demo/smollm2-geo-grpo", "step-2"), card("demo/smollm2-geo-sft", "step-2")
    assert {"step-1", "step-2", "latest", "main"} <= branches and {"step-2", "main"} <= sft_branches
    assert not any(s.startswith("train") for s in splits) and any(s.startswith("rl") for s in splits)
    assert "demo/smollm2-geo-sft" in step_card and "at revision `step-2`" in step_card  # the base revision
    assert "`geo`" in step_card  # the reward
    for c in (step_card, sft_card):  # the eval's results, in each card's model-index
        assert "word_position_after" in c and "engine:" in c
