"""A loopback OpenAI-shaped chat-completions server with a fixed latency, shared by the benchmarks of the
judge client (bench/judge.py, bench/geo_reward.py).

A bare ASGI app on uvicorn, in a process of its own, answers every request after `await
asyncio.sleep(latency)`, so the figures measure the client: concurrency, load balancing, caching,
parsing. The reply is fixed (`default`), or chosen by the prompt: the first (substring, reply) of
`rules` whose substring the request's last message contains (the body is parsed only when there are
rules).

    with latency_server(0.1) as url:                                   # every reply '{"score": 2}'
        Judge("bench-judge", url)
    with latency_server(1.0, rules=[("List the key points", '{"keypoints": ["..."]}')], default="... [1].") as url:
        ...
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence

from hubtools.hubenv import free_port, stop_process

SCORE = '{"score": 2}'


def _reply(content: str) -> bytes:
    return json.dumps({"id": "bench", "object": "chat.completion", "created": 0, "model": "bench",
                       "choices": [{"index": 0, "finish_reason": "stop",
                                    "message": {"role": "assistant", "content": content}}]}).encode()


def serve(port: int, latency: float, rules: Sequence[tuple[str, str]], default: str) -> None:
    """The server (runs in the child process)."""
    import uvicorn

    replies = [(needle, _reply(content)) for needle, content in rules]
    fallback = _reply(default)

    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            if replies:
                body += message.get("body", b"")
            if not message.get("more_body"):
                break
        reply = fallback
        if replies:
            prompt = json.loads(body)["messages"][-1]["content"]
            reply = next((r for needle, r in replies if needle in prompt), fallback)
        await asyncio.sleep(latency)
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(reply)).encode())]})
        await send({"type": "http.response.body", "body": reply})

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


@contextlib.contextmanager
def latency_server(latency: float, *, rules: Sequence[tuple[str, str]] = (), default: str = SCORE) -> Iterator[str]:
    """Start the server in a child process; yields its base URL (`http://127.0.0.1:PORT/v1`), stops it after."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, __file__, "--port", str(port), "--latency", str(latency),
                             "--rules", json.dumps(list(rules)), "--default", default])
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"latency server on port {port} did not start") from None
                time.sleep(0.05)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        stop_process(proc)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description="the latency server's process (started by latency_server())")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--latency", type=float, required=True)
    ap.add_argument("--rules", default="[]", help="JSON list of [substring, reply]")
    ap.add_argument("--default", default=SCORE)
    a = ap.parse_args()
    serve(a.port, a.latency, [tuple(r) for r in json.loads(a.rules)], a.default)
