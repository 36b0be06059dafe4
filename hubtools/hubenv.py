"""Environment set-up that must happen before huggingface_hub is imported.

huggingface_hub reads `HF_ENDPOINT` and `HF_HUB_DISABLE_XET` at import time, and forces Xet uploads
whenever `hf_xet` is installed. The local hub speaks plain LFS only, so for a loopback endpoint we
switch Xet off here; `hubtools/__init__.py` calls this first thing, so users never need to know.
"""

from __future__ import annotations

import os
import socket
import subprocess
from urllib.parse import urlsplit

LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1", "0.0.0.0"}


def is_local_endpoint(endpoint: str | None) -> bool:
    return bool(endpoint) and (urlsplit(endpoint).hostname or "") in LOCAL_HOSTS


def configure_for_endpoint(endpoint: str | None = None) -> None:
    """Point the HF clients at `endpoint` (or keep `HF_ENDPOINT`); disable Xet for a local hub."""
    if endpoint:
        os.environ["HF_ENDPOINT"] = endpoint.rstrip("/")
    if is_local_endpoint(os.environ.get("HF_ENDPOINT")):
        os.environ.setdefault("HF_HUB_DISABLE_XET", "1")


def free_port() -> int:
    """A loopback port nobody listens on now, for a server started in a subprocess."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_process(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    """End a server we started: SIGTERM, then SIGKILL if it has not exited within `timeout` seconds."""
    proc.terminate()
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
