"""Benchmark: judge throughput against OpenAI-shaped servers with a fixed 100 ms latency.

The load target is the latency server of bench/latency_server.py, started by this script in its own
process (a bare ASGI app on uvicorn that answers every chat completion with {"score": 2} after
`await asyncio.sleep(latency)`), so the figures measure the judge client: bounded concurrency, load
balancing, cache writes, parsing. From one run it prints:
- a serial loop (30 calls), and 64 in flight on one server with the client in the calling process
  (`Judge(processes=1)`, the default), with that client's CPU per call;
- 64 in flight on one server with `--processes` client processes (`Judge(processes=N)`), as a ratio of
  the limit 64 / latency (640 req/s; target ≥ 90 %) and of the serial loop (target ≥ 50×);
- two servers behind two base URLs (64 in flight each) vs one, same client (target ≥ 1.8×).
Every call is a distinct prompt. Those are measured without the on-disk cache; a last line repeats
the one-server run with the cache on (a temp dir), to show what writing it costs. One event loop's
HTTP client tops out at a few hundred calls/s, so the targets need client processes, and cores for
them and the two servers.

    .venv/bin/python bench/judge.py [--calls 1000] [--serial 30] [--concurrency 64] [--latency 0.1] [--processes 8]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import tempfile
import time

from hubtools.judge import Judge
from latency_server import latency_server


def rows(tag: str, n: int) -> list[dict]:
    return [{"question": f"{tag} question {i}?", "response": f"Answer {i}.", "rubric": "Answers the question."}
            for i in range(n)]


async def timed(judge: Judge, batch: list[dict], *, serial: bool = False) -> float:
    """Calls/s over `batch`, after a warm-up that opens every connection the run will use (one round of
    as many calls as the judge keeps in flight), so connection setup is not counted as throughput."""
    warm = 1 if serial else judge.concurrency * len(judge.base_urls)
    await asyncio.gather(*(judge.score("rubric_score", **row) for row in rows(f"warm-up {serial}", warm)))
    wall = time.perf_counter()
    if serial:
        scores = [await judge.score("rubric_score", **row) for row in batch]
    else:
        scores = await asyncio.gather(*(judge.score("rubric_score", **row) for row in batch))
    rate = len(batch) / (time.perf_counter() - wall)
    assert scores == [1.0] * len(batch) and judge.stats()["errors"] == 0, judge.stats()
    await judge.aclose()
    judge.close()
    return rate


async def bench(args, urls: list[str], cache: str) -> None:
    def judge(servers: list[str], concurrency: int, cache_dir: str | None = None, processes: int = 1) -> Judge:
        return Judge("bench-judge", servers, concurrency=concurrency, cache_dir=cache_dir, processes=processes)

    limit, p = args.concurrency / args.latency, args.processes
    cpu = time.process_time()
    serial = await timed(judge(urls[:1], 1), rows("serial", args.serial), serial=True)
    one_here = await timed(judge(urls[:1], args.concurrency), rows("one", args.calls))
    cpu_per_call = (time.process_time() - cpu) / (args.serial + args.calls + 2)
    one = await timed(judge(urls[:1], args.concurrency, processes=p), rows("one-p", args.calls))
    two = await timed(judge(urls, args.concurrency, processes=p), rows("two", args.calls))
    cached = await timed(judge(urls[:1], args.concurrency, cache, processes=p), rows("cached", args.calls))
    print(f"latency {args.latency * 1000:.0f} ms per request, {args.calls} calls per concurrent run; the client "
          f"in the calling process spends {cpu_per_call * 1000:.2f} ms of CPU per call")
    print(f"serial loop ({args.serial} calls)                  : {serial:7.1f} calls/s")
    print(f"one server, {args.concurrency} in flight, client here     : {one_here:7.1f} calls/s = "
          f"{one_here / limit:6.1%} of the limit {limit:.0f}/s = {one_here / serial:5.1f}× the serial loop")
    print(f"one server, {args.concurrency} in flight, {p} client processes: {one:7.1f} calls/s = {one / limit:6.1%} "
          f"of the limit (target ≥ 90 %) = {one / serial:5.1f}× the serial loop (target ≥ 50×)")
    print(f"two servers, {args.concurrency} in flight each, {p} processes: {two:7.1f} calls/s = {two / one:5.2f}× one "
          "server (target ≥ 1.8×)")
    print(f"one server, cache on, {p} processes       : {cached:7.1f} calls/s = {cached / limit:6.1%} of the limit")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=1000)
    ap.add_argument("--serial", type=int, default=30)
    ap.add_argument("--concurrency", type=int, default=64, help="requests in flight per server")
    ap.add_argument("--latency", type=float, default=0.1, help="seconds each server waits before answering")
    ap.add_argument("--processes", type=int, default=8, help="judge client processes (Judge(processes=N); default 8)")
    args = ap.parse_args()
    with contextlib.ExitStack() as servers, tempfile.TemporaryDirectory(prefix="bench-judge-") as cache:
        urls = [servers.enter_context(latency_server(args.latency)) for _ in range(2)]
        asyncio.run(bench(args, urls, cache))


if __name__ == "__main__":
    main()
