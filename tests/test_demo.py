"""The README's main command, at smoke-test size: `hubtools demo --quick` on the tiny model."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from conftest import ROOT


def test_demo_runs_the_whole_loop_on_its_own_hub(tmp_path, tiny_model_dir):
    env = {k: v for k, v in os.environ.items() if k not in ("HF_ENDPOINT", "HF_HUB_CACHE", "HF_TOKEN")}
    out = subprocess.run([sys.executable, "-m", "hubtools.cli", "demo", "--quick", "--model", str(tiny_model_dir),
                          "--workdir", str(tmp_path)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    for stage in ("[1/6] local hub", "[3/6] dataset", "[4/6] GRPO", "[5/6] eval", "[6/6] downstream"):
        assert stage in out.stdout
    assert "| step-1 |" in out.stdout and "| step-2 |" in out.stdout
    assert "/demo/smollm2-factuality-grpo/tree/step-2" in out.stdout
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert set(results) == {"step-1", "step-2"}
    assert (tmp_path / "hub" / "hub.sqlite3").exists()
