"""GRPO learns what its reward asks: broken reward wiring or advantages fail here.

The real path — `accelerate launch train/grpo.py`, the demo recipe, a reward from the registry, real
TRL — on the packaged SmolLM2-135M-Instruct with `boxed_format`: it boxes ~3 % of its answers at
first, enough spread in a group of 8 to learn from, and in 10 steps at the demo's learning rate the
rewarded run boxes about half. A tiny random model never writes `\\boxed{}` (0 of 512 samples), so it
cannot stand in.

A rising reward alone does not prove the reward is wired right: measured, shuffling the rewards
within each group (so they no longer belong to their completions) still took SmolLM2 from 17 % to
46 % boxed, as any large update nudges it toward its system prompt's boxed example. So the same run
is repeated with the reward negated: it must box much less than the rewarded run, which a reward
that does not follow the completions (or a flipped advantage) cannot achieve; learning_rate 0 fails
the first check.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from statistics import mean

import pytest

from conftest import ROOT

STEPS, WINDOW, MARGIN = 10, 3, 0.3  # boxed share: mean over the first/last 3 steps, differences ≥ 0.3


def questions_dataset(path):
    """The bundled questions with the factuality recipe's system prompt, as the trainer reads them."""
    from datasets import Dataset, DatasetDict

    from dataset_builders import factuality
    recipe = factuality.load_recipe(factuality.DEFAULT_RECIPE)
    by_source, _ = factuality.load_sources(recipe)
    rows = [{"id": q.id, "question": q.question, "answers": list(q.answers), "answerable": q.answerable,
             "prompt": factuality.make_prompt(recipe["system_prompt"], q.question)}
            for q in factuality.mix_evenly(by_source, 6, 0)]
    DatasetDict(train=Dataset.from_list(rows)).save_to_disk(str(path))
    return path


def boxed_per_step(out, data, weight: float) -> list[float]:
    """Train with `weight` × boxed_format; the share of boxed samples at each step."""
    from hubtools.models import resolve_model
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", "train/accelerate/cpu.yaml",
           "train/grpo.py", "--config", "train/recipes/factuality_demo.yaml",
           "--model_name_or_path", resolve_model("smollm2"), "--dataset_name", str(data), "--output_dir", str(out),
           "--publish_repo", "", "--reward_funcs", "boxed_format", "--reward_weights", str(weight),
           "--max_steps", str(STEPS), "--save_steps", str(STEPS), "--save_only_model", "true"]
    run = subprocess.run(cmd, cwd=ROOT, env=dict(os.environ, HF_HUB_OFFLINE="1"), capture_output=True, text=True,
                         timeout=900)  # a quiet 2-core CPU takes ~2 min; loaded machines much longer
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-5000:]
    state = json.loads((out / f"checkpoint-{STEPS}" / "trainer_state.json").read_text())
    boxed = [e["reward"] / weight for e in state["log_history"] if "reward" in e]
    assert len(boxed) == STEPS
    return boxed


@pytest.mark.timeout(2000)  # two training runs
def test_grpo_learns_to_box_when_rewarded_and_not_when_penalized(tmp_path):
    data = questions_dataset(tmp_path / "data")
    up = boxed_per_step(tmp_path / "up", data, 1.0)
    assert mean(up[-WINDOW:]) - mean(up[:WINDOW]) >= MARGIN, f"rewarded run, boxed share per step: {up}"
    down = boxed_per_step(tmp_path / "down", data, -1.0)
    assert mean(up[-WINDOW:]) - mean(down[-WINDOW:]) >= MARGIN, f"boxed per step, rewarded {up}, penalized {down}"
