"""Shared fixtures: a real local hub server process and a tiny random model.

The HF clients read HF_ENDPOINT / HF_HUB_DISABLE_XET at import, so the endpoint is fixed here,
before any test module imports huggingface_hub, transformers or datasets.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from hubtools.hubenv import free_port, stop_process



HUB_PORT = free_port()
HUB_TOKEN = "test-write-token"
_TMP = Path(tempfile.mkdtemp(prefix="hubtools-tests-"))
os.environ.update({
    "HF_ENDPOINT": f"http://127.0.0.1:{HUB_PORT}",
    "HF_HUB_DISABLE_XET": "1",
    "HF_TOKEN": HUB_TOKEN,
    "HF_HOME": str(_TMP / "hf_home"),
    "HF_HUB_CACHE": str(_TMP / "hf_home" / "hub"),
    "HF_DATASETS_CACHE": str(_TMP / "hf_home" / "datasets"),
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "TOKENIZERS_PARALLELISM": "false",
})
os.environ.pop("HF_HUB_OFFLINE", None)
ROOT = Path(__file__).resolve().parents[1]


class HubProcess:
    """`hubtools hub serve` in a subprocess on a fixed loopback port; can be killed and restarted."""

    def __init__(self, root: Path, port: int, token: str | None, args: tuple[str, ...] = ()):
        self.root, self.port, self.token, self.args = root, port, token, args
        self.url = f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> "HubProcess":
        env = dict(os.environ)
        env.pop("HUBTOOLS_HUB_TOKEN", None)
        if self.token:
            env["HUBTOOLS_HUB_TOKEN"] = self.token
        self.proc = subprocess.Popen([sys.executable, "-m", "hubtools.cli", "hub", "serve", "--root",
                                      str(self.root), "--port", str(self.port), *self.args], env=env, cwd=ROOT,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"hub exited: {self.proc.stderr.read().decode()}")
                time.sleep(0.05)
        raise RuntimeError("hub did not start in 30 s")

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            stop_process(self.proc)


@pytest.fixture(scope="session")
def hub():
    h = HubProcess(_TMP / "hub", HUB_PORT, HUB_TOKEN).start()
    yield h
    h.stop()


@pytest.fixture
def api(hub):
    from huggingface_hub import HfApi
    return HfApi(endpoint=hub.url, token=HUB_TOKEN)


@pytest.fixture
def repo_name(request):
    """A fresh repo id per test."""
    return f"tests/{request.node.name.replace('[', '-').replace(']', '')[:60]}-{time.time_ns() % 10**9}"


@pytest.fixture(scope="session")
def tiny_model_dir():
    from hubtools.tiny_model import build_tiny_model
    return build_tiny_model(_TMP / "tiny-model")


@pytest.fixture(scope="session")
def served(tiny_model_dir):
    """(base_url, model name) of one real `transformers serve` of the tiny model, shared by the tests."""
    from hubtools.generation import serve_transformers
    with serve_transformers(tiny_model_dir) as base_url:
        yield base_url, str(tiny_model_dir)


@pytest.fixture
def other_hub(tmp_path):
    """A second, independent hub (for mirror tests and crash tests)."""
    h = HubProcess(tmp_path / "hub2", free_port(), HUB_TOKEN).start()
    yield h
    h.stop()
