"""FAKE for faults we cannot cause with the real hub: a small HTTP proxy in front of it that
answers 503 to the first N matching requests and/or delays every request (a slow Hub)."""

from __future__ import annotations

import http.client
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit


class FlakySlowProxy:
    def __init__(self, upstream: str, *, fail_first: int = 0, fail_path: str = r".*", delay: float = 0.0):
        self.upstream = urlsplit(upstream)
        self.fail_left, self.fail_rx, self.delay = fail_first, re.compile(fail_path), delay
        self.failed: list[str] = []
        self.lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _forward(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                time.sleep(proxy.delay)
                with proxy.lock:
                    fail = proxy.fail_left > 0 and proxy.fail_rx.search(self.path)
                    if fail:
                        proxy.fail_left -= 1
                        proxy.failed.append(f"{self.command} {self.path}")
                if fail:
                    self.send_response(503)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                conn = http.client.HTTPConnection(proxy.upstream.hostname, proxy.upstream.port, timeout=120)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "transfer-encoding")}
                path = self.path.replace(proxy.url, f"http://{proxy.upstream.netloc}")
                conn.request(self.command, path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in ("content-length", "transfer-encoding", "connection"):
                        # upload links point at the upstream: route them through the proxy too
                        self.send_header(k, v)
                data = data.replace(f"http://{proxy.upstream.netloc}".encode(), proxy.url.encode())
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                conn.close()

            do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _forward

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()
