"""`hubtools demo`: the whole publishing loop on embedded defaults, offline.

Starts a local hub (unless HF_ENDPOINT names one), builds a tiny model, publishes it at two step
revisions with their model cards, and loads each back with `from_pretrained(repo, revision=…)`.
"""

from __future__ import annotations

import os
import socket
import tempfile
import threading
from pathlib import Path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_local_hub(root: Path) -> str:
    """Serve a local hub from `root` on a background thread; returns its URL."""
    from hubtools.localhub.server import HubServer
    server = HubServer(root, port=_free_port())
    threading.Thread(target=server.serve_forever, name="local-hub", daemon=True).start()
    return server.url


def run(workdir: str | None = None, repo_id: str = "demo/tiny-grpo") -> None:
    work = Path(workdir or tempfile.mkdtemp(prefix="hubtools-demo-"))
    work.mkdir(parents=True, exist_ok=True)
    if not os.environ.get("HF_ENDPOINT"):
        url = start_local_hub(work / "hub")
        from hubtools.hubenv import configure_for_endpoint
        configure_for_endpoint(url)
        print(f"local hub at {url} (data in {work / 'hub'})")
    os.environ.setdefault("HF_HUB_CACHE", str(work / "hf-cache"))

    import torch
    from transformers import AutoModelForCausalLM

    from hubtools.publish import publish_checkpoint
    from hubtools.tiny_model import build_tiny_model

    base = build_tiny_model(work / "base")
    model = AutoModelForCausalLM.from_pretrained(base)
    card_info = {
        "summary": "a tiny random Qwen3 (demo)", "base_model": "hubtools/tiny-random-qwen3", "license": "apache-2.0",
        "library_name": "transformers", "pipeline_tag": "text-generation", "tags": ["grpo", "demo"],
        "algorithm": "GRPO (demo: weights perturbed, not trained)",
        "notes": ["Demo checkpoint built offline by `hubtools demo`; its weights are random."],
    }
    sums = {}
    for step in (1, 2):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.01 * torch.randn_like(p))
        folder = work / "checkpoints" / f"checkpoint-{step}"
        model.save_pretrained(folder)
        sums[step] = float(sum(p.sum() for p in model.parameters()))
        result = publish_checkpoint(folder, repo_id, f"step-{step}", card_info=card_info)
        print(f"published step-{step}: {result.url}")

    for step, expected in sums.items():
        loaded = AutoModelForCausalLM.from_pretrained(repo_id, revision=f"step-{step}")
        got = float(sum(p.sum() for p in loaded.parameters()))
        assert abs(got - expected) < 1e-3 * max(1.0, abs(expected)), (step, got, expected)
        print(f"from_pretrained({repo_id!r}, revision='step-{step}') OK (param sum {got:.4f})")
