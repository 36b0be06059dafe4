"""Benchmark: a large file up to and down from the local hub vs a plain copy on the same disk.

Prints, from one run: the plain copy's throughput, upload (HfApi.upload_file, LFS path) and download
(hf_hub_download into an empty cache) throughput as ratios of it, and the hub server's peak RSS.
Targets (issue 2): peak RSS < 200 MiB, each ratio ≥ 0.5.

    .venv/bin/python bench/hub_io.py [--size-mib 1024]
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size-mib", type=int, default=1024)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="hubtools-bench-", dir=os.environ.get("BENCH_DIR")))
    port = free_port()
    os.environ.update(HF_ENDPOINT=f"http://127.0.0.1:{port}", HF_HUB_DISABLE_XET="1", HF_TOKEN="bench",
                      HF_HUB_CACHE=str(work / "cache"), HF_HUB_DISABLE_PROGRESS_BARS="1")
    server = subprocess.Popen([sys.executable, "-m", "hubtools.cli", "hub", "serve", "--root", str(work / "hub"),
                               "--port", str(port)], env={**os.environ, "HUBTOOLS_HUB_TOKEN": "bench"},
                              stdout=subprocess.DEVNULL)
    try:
        src = work / "big.bin"
        block = os.urandom(1 << 20)
        with open(src, "wb") as f:
            for _ in range(args.size_mib):
                f.write(block)
        size = src.stat().st_size

        t = time.perf_counter()
        shutil.copyfile(src, work / "copy.bin")
        copy_s = time.perf_counter() - t
        (work / "copy.bin").unlink()

        for _ in range(300):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
                break
            except OSError:
                time.sleep(0.05)
        from huggingface_hub import HfApi, hf_hub_download
        api = HfApi()
        api.create_repo("bench/big")
        t = time.perf_counter()
        api.upload_file(path_or_fileobj=str(src), path_in_repo="big.bin", repo_id="bench/big")
        up_s = time.perf_counter() - t
        t = time.perf_counter()
        out = hf_hub_download("bench/big", "big.bin")
        down_s = time.perf_counter() - t
        assert os.path.getsize(out) == size
        rss = peak_rss_mib(server.pid)
    finally:
        server.terminate()
        server.wait()
        shutil.rmtree(work, ignore_errors=True)

    mib = size / (1 << 20)
    print(f"file: {mib:.0f} MiB")
    print(f"plain copy:  {copy_s:6.2f} s  {mib / copy_s:8.0f} MiB/s")
    print(f"upload:      {up_s:6.2f} s  {mib / up_s:8.0f} MiB/s  ratio {copy_s / up_s:.2f} of copy")
    print(f"download:    {down_s:6.2f} s  {mib / down_s:8.0f} MiB/s  ratio {copy_s / down_s:.2f} of copy")
    print(f"server peak RSS: {rss:.0f} MiB (target < 200)")


if __name__ == "__main__":
    main()
