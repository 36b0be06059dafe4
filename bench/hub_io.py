"""Benchmark: a large file up to and down from the local hub vs a plain copy on the same disk.

Prints, from one run, throughput as a ratio of a durable plain copy (copy + fsync; the hub fsyncs
what it stores) for:
  * the hub's own transfer: one streaming LFS PUT (the server receives, sha256-verifies, fsyncs)
    and one streaming GET written to a file (+ fsync);
  * the whole huggingface_hub path: `HfApi.upload_file` (the client hashes the file first, as the
    LFS protocol requires) and `hf_hub_download` into an empty cache;
the physical limit — the server's PUT rate as a share of this machine's sha256 speed, measured in the
same run (every upload byte must be hashed once to be verified) — and the hub server's peak RSS.
Targets: peak RSS < 200 MiB; PUT ≥ 0.5 of sha256 speed; transfer ratios no lower than before.

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

from hubtools.hubenv import free_port, stop_process



def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM")


def durable_copy(src: Path, dst: Path) -> None:
    """Read and write 1 MiB at a time, then fsync: bytes through user space, as from a socket.
    (`shutil.copyfile` uses copy_file_range, which the filesystem may satisfy without moving data.)"""
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        while chunk := fin.read(1 << 20):
            fout.write(chunk)
        fout.flush()
        os.fsync(fout.fileno())


def raw_put(url: str, src: Path) -> None:
    """Stream `src` to a pre-signed upload URL, as the LFS client does."""
    import http.client
    from urllib.parse import urlsplit
    u = urlsplit(url)
    conn = http.client.HTTPConnection(u.hostname, u.port, blocksize=1 << 20)
    with open(src, "rb") as f:
        conn.request("PUT", f"{u.path}?{u.query}", body=f, headers={"Content-Length": str(src.stat().st_size)})
    resp = conn.getresponse()
    resp.read()
    assert resp.status == 200, resp.status


def raw_get(url: str, dst: Path) -> None:
    from urllib.request import urlopen
    with urlopen(url) as r, open(dst, "wb") as f:
        shutil.copyfileobj(r, f, 1 << 20)
        os.fsync(f.fileno())


def timed(fn, *args) -> float:
    t = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t


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

        copies = []
        for _ in range(3):  # the page cache makes single copies noisy: take the median
            copies.append(timed(durable_copy, src, work / "copy.bin"))
            (work / "copy.bin").unlink()
        copy_s = sorted(copies)[1]

        for _ in range(300):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
                break
            except OSError:
                time.sleep(0.05)
        import hashlib
        import json
        from urllib.request import Request, urlopen

        from huggingface_hub import HfApi, hf_hub_download
        api = HfApi()
        api.create_repo("bench/raw")
        api.create_repo("bench/big")
        raw_src = work / "raw-src.bin"  # other bytes than `src`: the hub would dedupe a second upload
        shutil.copyfile(src, raw_src)
        with open(raw_src, "r+b") as f:
            f.write(os.urandom(1 << 20))
        digest = hashlib.sha256()
        with open(raw_src, "rb") as f:
            while chunk := f.read(1 << 24):
                digest.update(chunk)
        batch = {"operation": "upload", "transfers": ["basic"],
                 "objects": [{"oid": digest.hexdigest(), "size": size}]}
        req = Request(f"{os.environ['HF_ENDPOINT']}/bench/raw.git/info/lfs/objects/batch",
                      data=json.dumps(batch).encode(), headers={"Authorization": "Bearer bench",
                                                                "Content-Type": "application/json"})
        href = json.load(urlopen(req))["objects"][0]["actions"]["upload"]["href"]
        put_s = timed(raw_put, href, raw_src)
        raw_src.unlink()

        up_s = timed(lambda: api.upload_file(path_or_fileobj=str(src), path_in_repo="big.bin", repo_id="bench/big"))
        get_s = timed(raw_get, f"{os.environ['HF_ENDPOINT']}/bench/big/resolve/main/big.bin", work / "raw.bin")
        (work / "raw.bin").unlink()
        t = time.perf_counter()
        out = hf_hub_download("bench/big", "big.bin")
        down_s = time.perf_counter() - t
        assert os.path.getsize(out) == size
        rss = peak_rss_mib(server.pid)
        sha_s = timed(lambda: hashlib.file_digest(open(src, "rb"), "sha256"))
    finally:
        stop_process(server)
        shutil.rmtree(work, ignore_errors=True)

    mib = size / (1 << 20)
    print(f"file: {mib:.0f} MiB")
    print(f"plain copy (read/write + fsync): {copy_s:6.2f} s  {mib / copy_s:6.0f} MiB/s  (median of "
          f"{', '.join(f'{c:.2f}' for c in copies)} s)")
    print(f"sha256 of the file:             {sha_s:6.2f} s  {mib / sha_s:6.0f} MiB/s  (an upload is verified, so ≤ this)")
    for name, secs in (("hub PUT (stream, verify)", put_s), ("hub GET (stream to file)", get_s),
                       ("HfApi.upload_file", up_s), ("hf_hub_download", down_s)):
        print(f"{name:31s} {secs:6.2f} s  {mib / secs:6.0f} MiB/s  ratio {copy_s / secs:.2f} of copy")
    print(f"hub PUT rate / sha256 rate:     {sha_s / put_s:.2f} (target ≥ 0.5)")
    print(f"server peak RSS: {rss:.0f} MiB (target < 200)")


if __name__ == "__main__":
    main()
