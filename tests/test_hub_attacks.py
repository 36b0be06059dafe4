"""The local hub against a hostile client: every attack found on the old server, as a regression test
against the real server process. Raw sockets where a well-behaved client could not send the bytes."""

from __future__ import annotations

import hashlib
import json
import socket
import sqlite3
import time
from pathlib import Path
from urllib.parse import quote, urlsplit

import pytest
from huggingface_hub import HfApi, hf_hub_download
from huggingface_hub.errors import HfHubHTTPError, RevisionNotFoundError

from conftest import HUB_TOKEN, HubProcess
from hubtools.hubenv import free_port

AUTH = f"Authorization: Bearer {HUB_TOKEN}\r\n"


def _raw(port: int, data: bytes, timeout: float = 10.0, read_all: bool = True) -> bytes:
    """Send raw bytes; return everything the server answers until it closes (or the timeout)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        out = b""
        try:
            while chunk := s.recv(65536):
                out += chunk
                if not read_all:
                    break
        except socket.timeout:
            pass
        return out


def _status(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


def _request(method: str, path: str, body: bytes = b"", headers: str = AUTH, close: bool = True) -> bytes:
    conn = "Connection: close\r\n" if close else ""
    return (f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{headers}{conn}Content-Length: {len(body)}\r\n\r\n").encode() + body


def _commit(port: int, repo: str, lines: list, rev: str = "main") -> bytes:
    body = b"\n".join(l if isinstance(l, bytes) else json.dumps(l).encode() for l in lines)
    return _raw(port, _request("POST", f"/api/models/{repo}/commit/{rev}", body,
                               AUTH + "Content-Type: application/x-ndjson\r\n"))


def _server_holds(port: int, client_port: int) -> bool:
    """Whether the server side (local `port`) of the connection from `client_port` is still
    ESTABLISHED, i.e. held open by the server process (/proc/net/tcp)."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, remote, state = line.split()[1:4]
        if int(local.rsplit(":", 1)[1], 16) == port and int(remote.rsplit(":", 1)[1], 16) == client_port:
            return state == "01"
    return False


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


@pytest.fixture
def repo(api, repo_name):
    api.create_repo(repo_name)
    api.upload_file(path_or_fileobj=b"v1", path_in_repo="w.txt", repo_id=repo_name)
    return repo_name


def test_oid_is_never_a_path(hub, repo, api):
    header = {"key": "header", "value": {"summary": "steal"}}
    for oid in ("/etc/hostname", "../../../../etc/hostname", "A" * 64, "0" * 63, "g" * 64):
        answer = _commit(hub.port, repo, [header, {"key": "lfsFile", "value": {"path": "x.bin", "oid": oid}}])
        assert _status(answer) == 400, answer[:300]
        assert b"oid" in answer
    assert "x.bin" not in api.list_repo_files(repo)
    batch = json.dumps({"operation": "upload", "objects": [{"oid": "../../etc/hostname", "size": 1}]}).encode()
    answer = _raw(hub.port, _request("POST", f"/{repo}.git/info/lfs/objects/batch", batch))
    assert _status(answer) == 400 and b"oid" in answer
    answer = _raw(hub.port, _request("PUT", f"/_lfs/models/{repo}/..%2F..%2Fetc%2Fhostname?expires=1&size=1&sig=x", b"x"))
    assert _status(answer) == 400 and b"oid" in answer


def test_sha_named_branch_is_refused_and_sha_means_the_commit(hub, repo, api):
    first = api.list_repo_refs(repo).branches[0].target_commit
    api.upload_file(path_or_fileobj=b"v2", path_in_repo="w.txt", repo_id=repo)
    with pytest.raises(HfHubHTTPError) as e:
        api.create_branch(repo, branch=first, revision="main")
    assert e.value.response.status_code == 400 and "commit sha" in e.value.response.headers["X-Error-Message"]
    assert open(hf_hub_download(repo, "w.txt", revision=first)).read() == "v1"
    for bad in ("a..b", "x.lock", "-/.hidden", "with space", "refs/heads/x", "a\\b", "@"):
        with pytest.raises(HfHubHTTPError) as e:
            api.create_branch(repo, branch=bad)
        assert e.value.response.status_code == 400, bad


def test_negative_content_length_is_answered_at_once(hub, repo):
    for framing in ("Content-Length: -1\r\n", "Transfer-Encoding: chunked\r\n"):
        body = b"" if "Length" in framing else b"-5\r\nabc\r\n"
        t = time.time()
        answer = _raw(hub.port, (f"POST /api/models/{repo}/commit/main HTTP/1.1\r\nHost: 127.0.0.1\r\n{AUTH}{framing}\r\n"
                                 ).encode() + body, timeout=5)
        assert time.time() - t < 3, "the server waited for a body instead of refusing the framing"
        assert _status(answer) == 400, answer[:200]


def test_oversized_bodies_are_refused_with_memory_flat(hub, repo):
    pid = hub.proc.pid
    before = _rss_mib(pid)
    # Declared too big: refused before a byte of body is read, and the connection closes.
    answer = _raw(hub.port, (f"POST /api/models/{repo}/preupload/main HTTP/1.1\r\nHost: 127.0.0.1\r\n{AUTH}"
                             f"Content-Type: application/json\r\nContent-Length: {200 << 20}\r\n\r\n").encode())
    assert _status(answer) == 413 and b"connection: close" in answer.lower()
    # Chunked, never ending: cut off at the JSON limit.
    with socket.create_connection(("127.0.0.1", hub.port), timeout=10) as s:
        s.sendall((f"POST /api/models/{repo}/preupload/main HTTP/1.1\r\nHost: 127.0.0.1\r\n{AUTH}"
                   "Transfer-Encoding: chunked\r\n\r\n").encode())
        chunk = b"%x\r\n%s\r\n" % (1 << 20, b"[" * (1 << 20))
        try:
            for _ in range(64):
                s.sendall(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass
        assert _status(s.recv(65536)) == 413
    # One commit line of 200 MiB without a newline: refused at the line limit, not buffered.
    with socket.create_connection(("127.0.0.1", hub.port), timeout=10) as s:
        s.sendall((f"POST /api/models/{repo}/commit/main HTTP/1.1\r\nHost: 127.0.0.1\r\n{AUTH}"
                   f"Content-Length: {200 << 20}\r\n\r\n").encode())
        block = b'{"key":"file","value":{"path":"a","content":"' + b"A" * (1 << 20)
        sent = 0
        try:
            while sent < 200 << 20:
                s.sendall(block)
                sent += len(block)
        except (BrokenPipeError, ConnectionResetError):
            pass
        assert _status(s.recv(65536)) == 413
        assert sent < 100 << 20, "the server kept reading a body it had already refused"
    assert _rss_mib(pid) - before < 100


def test_no_desync_after_an_error_mid_body(hub, repo, api):
    api.create_branch(repo, branch="keep-me")
    smuggled = _request("DELETE", f"/api/models/{repo}/branch/keep-me", close=False)
    body = b"not json at all\n" + smuggled
    with socket.create_connection(("127.0.0.1", hub.port), timeout=5) as s:
        s.sendall(_request("POST", f"/api/models/{repo}/commit/main", body, close=False))
        time.sleep(1.0)
        answer = b""
        try:
            while chunk := s.recv(65536):
                answer += chunk
        except socket.timeout:
            pass
    assert answer.count(b"HTTP/1.1") == 1 and _status(answer) == 400
    assert "keep-me" in {b.name for b in api.list_repo_refs(repo).branches}


def test_error_headers_are_always_valid(hub, repo):
    answer = _raw(hub.port, _request("GET", f"/{repo}/resolve/main/{quote('☃-missing.bin')}", headers=""))
    assert _status(answer) == 404
    head = answer.split(b"\r\n\r\n")[0].decode("ascii")  # raises if any header is not ASCII
    assert "\\u2603-missing.bin" in head and "EntryNotFound" in head
    injected = quote("a\r\nX-Injected: 1")
    answer = _raw(hub.port, _request("GET", f"/api/models/{repo}/revision/{injected}", headers=""))
    assert _status(answer) == 404
    assert b"\r\nX-Injected" not in answer.split(b"\r\n\r\n")[0]


@pytest.mark.parametrize("case", ["list-line", "bad-base64", "nul-path", "backslash-path", "long-path",
                                  "unknown-key", "no-path"])
def test_malformed_commit_lines_answer_400(hub, repo, api, case):
    header = {"key": "header", "value": {"summary": case}}
    line = {
        "list-line": [1, 2, 3],
        "bad-base64": {"key": "file", "value": {"path": "a.txt", "encoding": "base64", "content": "!!not base64!!"}},
        "nul-path": {"key": "file", "value": {"path": "a\x00b.txt", "content": "x"}},
        "backslash-path": {"key": "file", "value": {"path": "a\\..\\b.txt", "content": "x"}},
        "long-path": {"key": "file", "value": {"path": "/".join(["d" * 200] * 80), "content": "x"}},
        "unknown-key": {"key": "symlink", "value": {"path": "a"}},
        "no-path": {"key": "deletedFile", "value": {}},
    }[case]
    answer = _commit(hub.port, repo, [header, line])
    assert _status(answer) == 400, answer[:300]
    assert b"X-Error-Message" in answer or b"x-error-message" in answer
    assert [c.title for c in api.list_repo_commits(repo)][0] != case


def test_bad_headers_and_query_values_answer_4xx(hub, repo):
    answer = _raw(hub.port, "GET /api/whoami-v2 HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer tökén\r\n"
                            "Connection: close\r\n\r\n".encode("utf-8"))
    assert _status(answer) == 401
    answer = _raw(hub.port, _request("PUT", f"/_lfs/models/{repo}/{'a' * 64}?expires=soon&size=1&sig=x", b"x"))
    assert _status(answer) == 400 and b"expires" in answer
    for path in (f"/api/models/{repo}/branch/a%00b", f"/api/models/{repo}/branch/a%5Cb"):
        assert _status(_raw(hub.port, _request("POST", path, b"{}"))) == 400
    answer = _raw(hub.port, _request("POST", f"/api/models/{repo}/preupload/main", b'{"files": "nope"}'))
    assert _status(answer) == 400 and b"files" in answer


def test_upload_link_is_bound_to_oid_and_size(hub, repo):
    data = b"real content"
    oid = hashlib.sha256(data).hexdigest()
    batch = json.dumps({"operation": "upload", "objects": [{"oid": oid, "size": len(data)}]}).encode()
    answer = _raw(hub.port, _request("POST", f"/{repo}.git/info/lfs/objects/batch", batch))
    href = json.loads(answer.split(b"\r\n\r\n", 1)[1])["objects"][0]["actions"]["upload"]["href"]
    u = urlsplit(href)
    path = f"{u.path[1:]}?{u.query}"
    # Other bytes than the oid promised: refused, nothing stored.
    answer = _raw(hub.port, _request("PUT", "/" + path, b"evil content", headers=""))
    assert _status(answer) == 400 and b"sha256" in answer
    # More bytes than the link was signed for.
    assert _status(_raw(hub.port, _request("PUT", "/" + path, data + b"x" * 100, headers=""))) == 400
    assert _status(_raw(hub.port, _request("PUT", "/" + path.replace(f"size={len(data)}", "size=999"), data,
                                           headers=""))) == 403
    assert _status(_raw(hub.port, _request("PUT", "/" + path, data, headers=""))) == 200


def test_stalled_clients_time_out(tmp_path):
    h = HubProcess(tmp_path / "slow-hub", free_port(), HUB_TOKEN,
                   args=("--header-timeout", "1", "--body-timeout", "1")).start()
    try:
        HfApi(endpoint=h.url, token=HUB_TOKEN).create_repo("slow/repo")
        t = time.time()
        answer = _raw(h.port, b"GET /api/models HTTP/1.1\r\nHost: 127.0.0.1\r\n", timeout=10)  # headers never end
        assert _status(answer) == 408 and time.time() - t < 5
        t = time.time()
        answer = _raw(h.port, (f"POST /api/models/slow/repo/commit/main HTTP/1.1\r\nHost: 127.0.0.1\r\n{AUTH}"
                               "Content-Length: 1000\r\n\r\n{").encode(), timeout=10)
        assert _status(answer) == 408 and time.time() - t < 5
        # A body dripped faster than the idle timeout still has to arrive within it, whole.
        with socket.create_connection(("127.0.0.1", h.port), timeout=10) as s:
            s.sendall(b"POST /api/validate-yaml HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100\r\n\r\n")
            t = time.time()
            try:
                for _ in range(40):
                    s.sendall(b"x")
                    time.sleep(0.25)
            except (BrokenPipeError, ConnectionResetError):
                pass
            assert _status(s.recv(65536)) == 408 and time.time() - t < 5
        # A body the route never reads: answered, then the connection closes (no byte-by-byte drain).
        with socket.create_connection(("127.0.0.1", h.port), timeout=10) as s:
            s.sendall(b"GET /api/models HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1000000000\r\n\r\nx")
            answer = s.recv(65536)
            assert _status(answer) == 200 and b"connection: close" in answer.lower()
        # A client that stops reading a large answer is cut off after the timeout, freeing its slot.
        api = HfApi(endpoint=h.url, token=HUB_TOKEN)
        api.upload_file(path_or_fileobj=b"\0" * (32 << 20), path_in_repo="big.bin", repo_id="slow/repo")
        with socket.create_connection(("127.0.0.1", h.port), timeout=2) as s:
            s.sendall(b"GET /slow/repo/resolve/main/big.bin HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            time.sleep(3.5)  # read nothing while the server's buffers fill
            # The server let go of the connection (the kernel may still hold its unsent bytes).
            assert not _server_holds(h.port, s.getsockname()[1]), "the stalled download still holds its connection"
        assert not any((tmp_path / "slow-hub" / "tmp").iterdir())
    finally:
        h.stop()


def test_half_made_store_is_repaired_at_start(tmp_path):
    """An older version could be killed between creating a repo and its first commit."""
    h = HubProcess(tmp_path / "old-hub", free_port(), HUB_TOKEN).start()
    api = HfApi(endpoint=h.url, token=HUB_TOKEN)
    api.create_repo("old/good")
    h.stop()
    with sqlite3.connect(tmp_path / "old-hub" / "hub.sqlite3") as db:
        db.execute("INSERT INTO repos(type, repo_id, private, created_at) VALUES('model', 'old/half', 0, '2026-01-01T00:00:00.000Z')")
    h.start()
    try:
        assert {m.id for m in api.list_models()} >= {"old/good", "old/half"}
        assert [b.name for b in api.list_repo_refs("old/half").branches] == ["main"]
        assert api.list_repo_files("old/half") == [".gitattributes"]
    finally:
        h.stop()


def test_revision_with_a_slash_is_one_segment(hub, repo, api):
    api.create_branch(repo, branch="exp/lr-1e-5")
    api.upload_file(path_or_fileobj=b"exp", path_in_repo="w.txt", repo_id=repo, revision="exp/lr-1e-5")
    assert open(hf_hub_download(repo, "w.txt", revision="exp/lr-1e-5")).read() == "exp"
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download(repo, "w.txt", revision="exp/nope")


# -- found by a second review of the new server ------------------------------------------------
def test_pipelined_requests_never_read_cannot_grow_memory(hub):
    pid = hub.proc.pid
    before = _rss_mib(pid)
    data = b"GET /api/models/nope/nope HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n" * 20000
    with socket.create_connection(("127.0.0.1", hub.port), timeout=5) as s:
        s.setblocking(False)
        sent, deadline = 0, time.time() + 5
        while time.time() < deadline and sent < 30 * len(data):
            try:
                sent += s.send(data[sent % len(data):])
            except BlockingIOError:
                time.sleep(0.05)
            except (BrokenPipeError, ConnectionResetError):
                break
    assert _rss_mib(pid) - before < 60
    assert _status(_raw(hub.port, _request("GET", "/api/models", headers=""))) == 200


def test_web_pages_cannot_write_and_foreign_hosts_get_nothing(hub, repo, api):
    for extra in ("Origin: http://evil.example\r\n", "Origin: null\r\n", "Sec-Fetch-Site: cross-site\r\n"):
        body = json.dumps({"key": "header", "value": {"summary": "pwned"}}).encode()
        answer = _raw(hub.port, _request("POST", f"/api/models/{repo}/commit/main", body,
                                         AUTH + extra + "Content-Type: text/plain\r\n"))
        assert _status(answer) == 403, extra
    same = (f"POST /api/models/{repo}/branch/from-same-origin HTTP/1.1\r\nHost: 127.0.0.1:{hub.port}\r\n{AUTH}"
            f"Origin: http://127.0.0.1:{hub.port}\r\nConnection: close\r\nContent-Length: 2\r\n\r\n{{}}")
    assert _status(_raw(hub.port, same.encode())) == 200  # a same-origin write is not refused
    answer = _raw(hub.port, b"GET /api/models HTTP/1.1\r\nHost: rebind.evil.example\r\nConnection: close\r\n\r\n")
    assert _status(answer) == 403
    assert [c.title for c in api.list_repo_commits(repo)][0] != "pwned"


def test_header_count_is_limited(hub):
    answer = _raw(hub.port, b"GET /api/models HTTP/1.1\r\nHost: 127.0.0.1\r\n" + b"a:\r\n" * 500 + b"\r\n")
    assert _status(answer) == 400


@pytest.mark.parametrize("body", [b'{"paths": ' + b"1" * 5000 + b"}", b"[" * 100000 + b"]" * 100000,
                                  b'{"paths": ["\\ud800"]}', b'{"tag": "\\ud800"}'],
                         ids=["huge-int", "deep-nesting", "surrogate-path", "surrogate-tag"])
def test_hostile_json_answers_400(hub, repo, body):
    for path in (f"/api/models/{repo}/paths-info/main", f"/api/models/{repo}/tag/main"):
        answer = _raw(hub.port, _request("POST", path, body, AUTH + "Content-Type: application/json\r\n"))
        assert _status(answer) == 400, (path, answer[:200])


def test_paths_info_is_bounded(hub, repo):
    many = json.dumps({"paths": [f"p{i}" for i in range(5000)]}).encode()
    assert _status(_raw(hub.port, _request("POST", f"/api/models/{repo}/paths-info/main", many))) in (400, 413)
    # An unknown repo is refused before a byte of body is read.
    answer = _raw(hub.port, (f"POST /api/models/no/such-repo/paths-info/main HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                             f"Content-Length: {1 << 20}\r\n\r\n").encode(), timeout=5)
    assert _status(answer) in (401, 404)


def test_card_metadata_is_always_json(hub, api, repo_name):
    api.create_repo(repo_name)
    api.upload_file(path_or_fileobj=b"---\nlicense: mit\ndate: 2024-01-01\nscore: .nan\n---\n# card\n",
                    path_in_repo="README.md", repo_id=repo_name)
    data = api.model_info(repo_name).card_data
    assert data["date"] == "2024-01-01" and data["license"] == "mit"
    bomb = "---\nl0: &l0 [1,1,1,1,1,1,1,1,1,1]\n" + "".join(
        f"l{i}: &l{i} [{','.join([f'*l{i - 1}'] * 10)}]\n" for i in range(1, 8)) + "---\n# bomb\n"
    api.upload_file(path_or_fileobj=bomb.encode(), path_in_repo="README.md", repo_id=repo_name)
    t = time.time()
    assert api.model_info(repo_name).card_data in (None, {}) and time.time() - t < 5


def test_tree_listing_is_paginated(hub, api, repo_name):
    api.create_repo(repo_name)
    data = b"same bytes"
    api.upload_file(path_or_fileobj=data, path_in_repo="seed.bin", repo_id=repo_name)
    oid = hashlib.sha256(data).hexdigest()
    lines = [{"key": "header", "value": {"summary": "many files"}}] + [
        {"key": "lfsFile", "value": {"path": f"d/f{i:05d}.bin", "oid": oid}} for i in range(2500)]
    assert _status(_commit(hub.port, repo_name, lines)) == 200
    answer = _raw(hub.port, _request("GET", f"/api/models/{repo_name}/tree/main/d", headers=""))
    assert _status(answer) == 200 and b'rel="next"' in answer.lower() or b"rel=\"next\"" in answer
    assert len(json.loads(answer.split(b"\r\n\r\n", 1)[1])) == 1000
    assert len(api.list_repo_files(repo_name)) == 2502  # the client follows the Link header


def test_anonymous_cannot_tell_private_from_missing(hub, api, repo_name):
    api.create_repo(repo_name, private=True)
    anon = [_status(_raw(hub.port, _request("GET", f"/api/models/{r}", headers="")))
            for r in (repo_name, repo_name + "-missing")]
    assert anon == [401, 401]


def test_ref_names_git_refuses_and_percent_names(hub, repo, api):
    sha = api.list_repo_refs(repo).branches[0].target_commit
    for bad in (sha.upper(), "HEAD", "-x"):
        with pytest.raises(HfHubHTTPError) as e:
            api.create_branch(repo, branch=bad)
        assert e.value.response.status_code == 400, bad
    api.create_branch(repo, branch="x/y")
    api.create_branch(repo, branch="x%2Fy")  # a literal %2F is its own branch, not x/y
    api.upload_file(path_or_fileobj=b"pct", path_in_repo="w.txt", repo_id=repo, revision="x%2Fy")
    assert open(hf_hub_download(repo, "w.txt", revision="x/y")).read() == "v1"
    assert open(hf_hub_download(repo, "w.txt", revision="x%2Fy")).read() == "pct"


def test_invalid_range_is_ignored(hub, repo):
    for rng in ("items=0-1", "bytes=4-2", "", "bytes=1-" + "9" * 5000, "bytes=" + "1" * 5000 + "-"):
        answer = _raw(hub.port, _request("GET", f"/{repo}/resolve/main/w.txt", headers=f"Range: {rng}\r\n"))
        assert _status(answer) == 200 and answer.endswith(b"v1"), rng
    answer = _raw(hub.port, _request("GET", f"/{repo}/resolve/main/w.txt", headers="Range: bytes=1-1\r\n"))
    assert _status(answer) == 206 and answer.endswith(b"1")


def test_tree_cursor_is_validated(hub, repo):
    for cursor in ("%C2%B2", "9" * 5000, "-1"):
        answer = _raw(hub.port, _request("GET", f"/api/models/{repo}/tree/main?cursor={cursor}", headers=""))
        assert _status(answer) == 400, cursor
