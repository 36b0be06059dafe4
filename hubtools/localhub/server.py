"""`hubtools hub serve`: the subset of the Hugging Face Hub HTTP API that huggingface_hub,
transformers and datasets use, served from a `Store`.

Why the standard library's threaded HTTP server: bodies are read and written in fixed-size
chunks straight from/to the socket (uploads hash-and-spool to disk, downloads use `sendfile`),
so memory stays flat for multi-GB files, and there is no framework between the client's bytes
and the store.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, quote, unquote, urlsplit

import yaml

from hubtools.localhub.store import (
    CHUNK, HubError, Repo, Store, git_blob_sha1, lfs_pointer,
)

log = logging.getLogger("hubtools.hub")
USER = "local"
_T = r"(?P<t>models|datasets|spaces)"
_REPO = r"(?P<repo>[^/]+/[^/]+)"
_PREFIX = r"(?:/(?P<p>datasets|spaces))?"
# (method, regex over the raw path, handler name); segments are unquoted after matching.
_ROUTES = [
    ("POST", r"/api/repos/create", "create_repo"),
    ("DELETE", r"/api/repos/delete", "delete_repo"),
    ("GET", r"/api/whoami-v2", "whoami"),
    ("POST", r"/api/validate-yaml", "validate_yaml"),
    ("GET", r"/api/" + _T, "list_repos"),
    ("GET", rf"/api/{_T}/{_REPO}(?:/revision/(?P<rev>[^/]+))?", "repo_info"),
    ("PUT", rf"/api/{_T}/{_REPO}/settings", "settings"),
    ("POST", rf"/api/{_T}/{_REPO}/preupload/(?P<rev>[^/]+)", "preupload"),
    ("POST", rf"/api/{_T}/{_REPO}/commit/(?P<rev>[^/]+)", "commit"),
    ("POST", rf"/api/{_T}/{_REPO}/branch/(?P<name>[^/]+)", "create_branch"),
    ("DELETE", rf"/api/{_T}/{_REPO}/branch/(?P<name>[^/]+)", "delete_branch"),
    ("POST", rf"/api/{_T}/{_REPO}/tag/(?P<rev>[^/]+)", "create_tag"),
    ("DELETE", rf"/api/{_T}/{_REPO}/tag/(?P<name>[^/]+)", "delete_tag"),
    ("GET", rf"/api/{_T}/{_REPO}/refs", "refs"),
    ("GET", rf"/api/{_T}/{_REPO}/commits/(?P<rev>[^/]+)", "commits"),
    ("GET", rf"/api/{_T}/{_REPO}/tree/(?P<rev>[^/]+)(?:/(?P<path>.*))?", "tree"),
    ("POST", rf"/api/{_T}/{_REPO}/paths-info/(?P<rev>[^/]+)", "paths_info"),
    ("POST", rf"{_PREFIX}/{_REPO}\.git/info/lfs/objects/batch", "lfs_batch"),
    ("PUT", rf"/_lfs/{_T}/{_REPO}/(?P<oid>[0-9a-f]{{64}})", "lfs_upload"),
    ("GET", rf"{_PREFIX}/{_REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)", "resolve"),
    ("HEAD", rf"{_PREFIX}/{_REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)", "resolve"),
]
_COMPILED = [(m, re.compile(f"^{rx}/?$"), name) for m, rx, name in _ROUTES]
_SINGULAR = {"models": "model", "datasets": "dataset", "spaces": "space", None: "model"}


class HubServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, root: str | os.PathLike, host: str = "127.0.0.1", port: int = 0,
                 token: str | None = None):
        self.store = Store(root)
        self.token = token or None
        # Upload links are pre-signed (clients PUT them without auth headers, as with S3).
        self.signing_key = (token or "").encode() + secrets.token_bytes(16)
        super().__init__((host, port), _Handler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"

    def sign(self, repo_type: str, repo_id: str, oid: str, expires: int) -> str:
        msg = f"{repo_type}/{repo_id}/{oid}/{expires}".encode()
        return hmac.new(self.signing_key, msg, hashlib.sha256).hexdigest()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in separate writes: avoid 40 ms delayed-ACK stalls
    server: HubServer

    # -- dispatch ---------------------------------------------------------------------------
    def do_GET(self): self._dispatch("GET")
    def do_HEAD(self): self._dispatch("HEAD")
    def do_POST(self): self._dispatch("POST")
    def do_PUT(self): self._dispatch("PUT")
    def do_DELETE(self): self._dispatch("DELETE")

    def log_message(self, fmt, *args):  # route the stdlib's access log through logging
        log.debug("%s " + fmt, self.address_string(), *args)

    def _dispatch(self, method: str) -> None:
        url = urlsplit(self.path)
        self.query = parse_qs(url.query)
        self._body_read = self._headers_sent = False
        try:
            for m, rx, name in _COMPILED:
                match = rx.match(url.path)
                if match and m == method:
                    args = {k: unquote(v) for k, v in match.groupdict().items() if v is not None}
                    getattr(self, "h_" + name)(**args)
                    break
            else:
                raise HubError(404, f"No route for {method} {url.path}")
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
        except Exception as e:
            if self._headers_sent:  # mid-body: a second response would garble the stream; cut it short
                log.exception("error after headers for %s %s", method, self.path)
                self.close_connection = True
            elif isinstance(e, HubError):
                self._error(e)
            else:  # a bug must answer 500, not hang the client
                log.exception("error handling %s %s", method, self.path)
                self._error(HubError(500, f"Internal error: {type(e).__name__}: {e}"))

    # -- helpers ----------------------------------------------------------------------------
    def _error(self, e: HubError) -> None:
        headers = {"X-Error-Message": e.message.replace("\n", " ")[:500]}
        has_body = int(self.headers.get("Content-Length") or 0) or "Transfer-Encoding" in self.headers
        if has_body and not self._body_read:  # unread request body: this connection cannot be reused
            self.close_connection = True
            headers["Connection"] = "close"
        if e.code:
            headers["X-Error-Code"] = e.code
        self._json({"error": e.message}, status=e.status, headers=headers)

    def _json(self, obj, status: int = 200, headers: dict | None = None) -> None:
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _body_stream(self):
        """The request body as a stream of chunks (Content-Length or chunked encoding)."""
        self._body_read = True
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return
                remaining = size
                while remaining:
                    chunk = self.rfile.read(min(CHUNK, remaining))
                    if not chunk:
                        raise HubError(400, "Connection closed mid-upload")
                    remaining -= len(chunk)
                    yield chunk
                self.rfile.readline()
        else:
            remaining = int(self.headers.get("Content-Length") or 0)
            while remaining:
                chunk = self.rfile.read(min(CHUNK, remaining))
                if not chunk:
                    raise HubError(400, "Connection closed mid-upload")
                remaining -= len(chunk)
                yield chunk

    def _body(self, limit: int = 64 << 20) -> bytes:
        buf = bytearray()
        for chunk in self._body_stream():
            buf += chunk
            if len(buf) > limit:
                raise HubError(413, f"Request body over {limit} bytes; upload large files through LFS")
        return bytes(buf)

    def _json_body(self) -> dict:
        raw = self._body()
        if self.headers.get("Content-Type", "").startswith("application/x-www-form-urlencoded"):
            return {k: v for k, v in parse_qs(raw.decode()).items()}
        try:
            return json.loads(raw or b"{}")
        except json.JSONDecodeError as e:
            raise HubError(400, f"Request body is not JSON: {e}")

    def _authorized(self) -> bool:
        if self.server.token is None:
            return True
        auth = self.headers.get("Authorization", "")
        return hmac.compare_digest(auth.removeprefix("Bearer ").strip(), self.server.token)

    def _require_write(self) -> None:
        if not self._authorized():
            raise HubError(401, "Invalid or missing token: this hub requires a write token "
                                "(set HF_TOKEN to the token the hub was started with)")

    def _repo(self, t: str | None, repo: str, write: bool = False) -> Repo:
        if write:
            self._require_write()
        r = self.server.store.get_repo(_SINGULAR[t], repo)
        if r.private and not self._authorized():
            raise HubError(401, f"Repository not found: {repo}", "RepoNotFound")
        return r

    # -- repos ------------------------------------------------------------------------------
    def h_create_repo(self):
        self._require_write()
        body = self._json_body()
        name, org = body.get("name"), body.get("organization")
        if not org:
            raise HubError(400, f"Repo id must be namespaced ('user/{name}'): this hub has no default user")
        private = body.get("visibility") == "private" if "visibility" in body else bool(body.get("private"))
        repo_type = body.get("type") or "model"
        repo_id = f"{org}/{name}"
        prefix = "" if repo_type == "model" else f"{repo_type}s/"
        answer = {"url": f"{self.server.url}/{prefix}{repo_id}", "name": repo_id}
        try:
            self.server.store.create_repo(repo_type, repo_id, private, USER)
        except HubError as e:
            if e.status != 409:
                raise
            # Like the Hub, a conflict still carries the url (clients with exist_ok read it).
            return self._json({**answer, "error": e.message}, status=409, headers={"X-Error-Message": e.message})
        self._json(answer)

    def h_delete_repo(self):
        self._require_write()
        body = self._json_body()
        repo_id = f"{body.get('organization')}/{body.get('name')}"
        self.server.store.delete_repo(self.server.store.get_repo(body.get("type") or "model", repo_id))
        self._json({})

    def h_settings(self, t, repo):
        r = self._repo(t, repo, write=True)
        body = self._json_body()
        if "visibility" in body or "private" in body:
            self.server.store.set_private(r, body.get("visibility") == "private" if "visibility" in body
                                          else bool(body["private"]))
        self._json({})

    def h_whoami(self):
        if self.server.token is not None and not self._authorized():
            raise HubError(401, "Invalid user token")
        self._json({"type": "user", "name": USER, "fullname": USER, "orgs": [],
                    "auth": {"type": "access_token", "accessToken": {"role": "write", "displayName": "local"}}})

    def h_validate_yaml(self):
        self._body()
        self._json({"errors": [], "warnings": []})

    def h_list_repos(self, t):
        store, authorized = self.server.store, self._authorized()
        search = (self.query.get("search") or self.query.get("author") or [""])[0]
        out = []
        for r in store.list_repos(_SINGULAR[t]):
            if (r.private and not authorized) or search not in r.repo_id:
                continue
            out.append({"id": r.repo_id, "private": r.private, "createdAt": r.created_at,
                        "sha": store.resolve(r, "main")})
        self._json(out)

    def h_repo_info(self, t, repo, rev="main"):
        r = self._repo(t, repo)
        store = self.server.store
        oid = store.resolve(r, rev)
        files = store.files(oid)
        blobs = self.query.get("blobs", ["false"])[0].lower() == "true"
        siblings = []
        for f in files.values():
            s = {"rfilename": f.path}
            if blobs:
                s.update(size=f.size, blobId=f.oid)
                if f.lfs:
                    s["lfs"] = {"sha256": f.sha256, "size": f.size,
                                "pointerSize": len(lfs_pointer(f.sha256, f.size))}
            siblings.append(s)
        card = _card_data(store, files.get("README.md"))
        info = store.commit_info(oid)
        self._json({"_id": f"{r.pk}", "id": r.repo_id, "modelId": r.repo_id, "author": r.repo_id.split("/")[0],
                    "sha": oid, "lastModified": info["date"], "createdAt": r.created_at, "private": r.private,
                    "disabled": False, "gated": False, "downloads": 0, "likes": 0,
                    "tags": list(card.get("tags") or []) if isinstance(card.get("tags"), list) else [],
                    "library_name": card.get("library_name"), "pipeline_tag": card.get("pipeline_tag"),
                    "cardData": card, "siblings": siblings, "usedStorage": sum(f.size for f in files.values())})

    # -- refs and history -------------------------------------------------------------------
    def h_create_branch(self, t, repo, name):
        r = self._repo(t, repo, write=True)
        start = self._json_body().get("startingPoint") or "main"
        self.server.store.create_ref(r, "branch", name, start)
        self._json({})

    def h_delete_branch(self, t, repo, name):
        self.server.store.delete_ref(self._repo(t, repo, write=True), "branch", name)
        self._json({})

    def h_create_tag(self, t, repo, rev):
        r = self._repo(t, repo, write=True)
        body = self._json_body()
        if not body.get("tag"):
            raise HubError(400, "Missing 'tag' in request body")
        self.server.store.create_ref(r, "tag", body["tag"], rev)
        self._json({})

    def h_delete_tag(self, t, repo, name):
        self.server.store.delete_ref(self._repo(t, repo, write=True), "tag", name)
        self._json({})

    def h_refs(self, t, repo):
        refs = self.server.store.refs(self._repo(t, repo))
        self._json({
            "branches": [{"name": n, "ref": f"refs/heads/{n}", "targetCommit": o} for n, o in refs["branch"].items()],
            "tags": [{"name": n, "ref": f"refs/tags/{n}", "targetCommit": o} for n, o in refs["tag"].items()],
            "converts": [], "pullRequests": [],
        })

    def h_commits(self, t, repo, rev):
        store = self.server.store
        history = store.history(store.resolve(self._repo(t, repo), rev))
        self._json([{"id": c["oid"], "title": c["title"], "message": c["message"], "date": c["date"],
                     "authors": [{"user": c["author"], "avatar": None}]} for c in history])

    # -- trees ------------------------------------------------------------------------------
    def _tree_entries(self, files, path: str, recursive: bool) -> list[dict]:
        prefix = path.strip("/") + "/" if path.strip("/") else ""
        out, dirs = [], {}
        for f in files.values():
            if not f.path.startswith(prefix):
                continue
            rest = f.path[len(prefix):]
            parts = rest.split("/")
            for depth in range(1, len(parts)):
                if not recursive and depth > 1:
                    break
                d = prefix + "/".join(parts[:depth])
                dirs.setdefault(d, hashlib.sha1()).update(f.oid.encode())
            if recursive or len(parts) == 1:
                out.append(f.tree_json())
        out += [{"type": "directory", "oid": h.hexdigest(), "path": d} for d, h in dirs.items()]
        return sorted(out, key=lambda e: e["path"])

    def h_tree(self, t, repo, rev, path=""):
        store = self.server.store
        files = store.files(store.resolve(self._repo(t, repo), rev))
        recursive = self.query.get("recursive", ["false"])[0].lower() == "true"
        entries = self._tree_entries(files, path, recursive)
        if path.strip("/") and not entries:
            raise HubError(404, f"Entry not found: {path}", "EntryNotFound")
        self._json(entries)

    def h_paths_info(self, t, repo, rev):
        store = self.server.store
        files = store.files(store.resolve(self._repo(t, repo), rev))
        body = self._json_body()
        paths = body.get("paths") or []
        out = []
        for p in [paths] if isinstance(paths, str) else paths:
            p = p.strip("/")
            if p in files:
                out.append(files[p].tree_json())
            elif any(k.startswith(p + "/") for k in files):
                h = hashlib.sha1("".join(f.oid for k, f in files.items() if k.startswith(p + "/")).encode())
                out.append({"type": "directory", "oid": h.hexdigest(), "path": p})
        self._json(out)

    # -- uploads ----------------------------------------------------------------------------
    def h_preupload(self, t, repo, rev):
        r = self._repo(t, repo, write=True)
        store = self.server.store
        try:
            head = store.resolve(r, rev)
        except HubError:  # a branch the commit will create
            head = None
        current = store.files(head) if head else {}
        body = self._json_body()
        files = []
        for f in body.get("files", []):
            existing = current.get(f["path"])
            # Always LFS: datasets deletes its temporary parquet files between preupload and commit.
            files.append({"path": f["path"], "uploadMode": "lfs", "shouldIgnore": False,
                          "oid": existing.sha256 if existing and existing.lfs else None})
        self._json({"files": files, "commitOid": head})

    def h_lfs_batch(self, repo, p=None):
        t = p or "models"
        r = self._repo(t, repo, write=True)
        body = self._json_body()
        if body.get("operation") != "upload":
            raise HubError(400, "Only the 'upload' LFS operation is supported")
        expires = int(time.time()) + 3600
        objects = []
        for obj in body.get("objects", []):
            oid, size = obj["oid"], obj["size"]
            entry = {"oid": oid, "size": size, "authenticated": True}
            if not self.server.store.has_blob(oid):
                sig = self.server.sign(t, r.repo_id, oid, expires)
                href = (f"{self.server.url}/_lfs/{t}/{quote(r.repo_id)}/{oid}"
                        f"?expires={expires}&size={size}&sig={sig}")
                entry["actions"] = {"upload": {"href": href, "expires_at": "", "header": {}}}
            objects.append(entry)
        self._json({"transfer": "basic", "objects": objects, "hash_algo": "sha256"},
                   headers={"Content-Type": "application/vnd.git-lfs+json"})

    def h_lfs_upload(self, t, repo, oid):
        q = {k: v[0] for k, v in self.query.items()}
        expires = int(q.get("expires", "0"))
        if expires < time.time() or not hmac.compare_digest(
                q.get("sig", ""), self.server.sign(t, repo, oid, expires)):
            raise HubError(403, "Upload link is invalid or expired; request a new one from the LFS batch API")
        length = self.headers.get("Content-Length")
        self.server.store.write_blob(self._body_stream(), int(length) if length else None, expected_sha256=oid)
        self._json({})

    def h_commit(self, t, repo, rev):
        r = self._repo(t, repo, write=True)
        store = self.server.store
        if self.query.get("create_pr", ["0"])[0] in ("1", "true", "True"):
            raise HubError(400, "Pull requests are not supported by the local hub")
        header, put, delete, delete_folders = {}, {}, [], []
        pending = b""
        for chunk in self._body_stream():  # ndjson, parsed line by line: inline files stream to blobs
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for line in lines:
                self._commit_line(line, header, put, delete, delete_folders)
        self._commit_line(pending, header, put, delete, delete_folders)
        oid = store.commit(r, rev, header.get("summary") or "Upload files", header.get("description") or "",
                           USER, put=put, delete=delete, delete_folders=delete_folders,
                           parent_commit=header.get("parentCommit"))
        prefix = "" if t == "models" else f"{t}/"
        self._json({"commitUrl": f"{self.server.url}/{prefix}{r.repo_id}/commit/{oid}",
                    "commitOid": oid, "pullRequestUrl": None})

    def _commit_line(self, line: bytes, header, put, delete, delete_folders) -> None:
        if not line.strip():
            return
        item = json.loads(line)
        key, value = item.get("key"), item.get("value") or {}
        if key == "header":
            header.update(value)
        elif key == "file":
            data = base64.b64decode(value["content"]) if value.get("encoding") == "base64" else \
                value["content"].encode()
            sha, size = self.server.store.write_blob([data])
            put[value["path"]] = (sha, size, False, git_blob_sha1(data))
        elif key == "lfsFile":
            sha = value["oid"]
            if not self.server.store.has_blob(sha):
                raise HubError(400, f"LFS file {value['path']!r} was not uploaded (oid {sha})")
            size = os.path.getsize(self.server.store.blob_path(sha))
            put[value["path"]] = (sha, size, True, git_blob_sha1(lfs_pointer(sha, size)))
        elif key == "deletedFile":
            delete.append(value["path"])
        elif key == "deletedFolder":
            delete_folders.append(value["path"])
        else:
            raise HubError(400, f"Unknown commit operation {key!r}")

    # -- downloads --------------------------------------------------------------------------
    def h_resolve(self, repo, rev, path, p=None):
        store = self.server.store
        r = self._repo(p or "models", repo)
        oid = store.resolve(r, rev)
        f = store.files(oid).get(path)
        if f is None:
            raise HubError(404, f"Entry not found: {path} at {rev}", "EntryNotFound")
        start, end, status = 0, f.size - 1, 200
        rng = self.headers.get("Range")
        if rng and f.size:
            m = re.match(r"bytes=(\d*)-(\d*)$", rng.strip())
            if not m or (not m.group(1) and not m.group(2)):
                raise HubError(416, f"Unsupported Range header {rng!r}")
            if m.group(1):
                start = int(m.group(1))
                end = min(int(m.group(2)), f.size - 1) if m.group(2) else f.size - 1
            else:
                start = max(f.size - int(m.group(2)), 0)
            if start > end:
                raise HubError(416, f"Range {rng!r} outside a {f.size}-byte file")
            status = 206
        length = max(end - start + 1, 0)
        self.send_response(status)
        self.send_header("Content-Length", str(length))
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("X-Repo-Commit", oid)
        self.send_header("ETag", f'"{f.sha256 if f.lfs else f.oid}"')
        if f.lfs:
            self.send_header("X-Linked-Etag", f'"{f.sha256}"')
            self.send_header("X-Linked-Size", str(f.size))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{f.size}")
        self.end_headers()
        self._headers_sent = True
        if self.command == "HEAD" or not length:
            return
        self.wfile.flush()
        with open(store.blob_path(f.sha256), "rb") as fh:
            self.connection.sendfile(fh, start, length)


def _card_data(store: Store, readme) -> dict:
    """The YAML block at the top of README.md, as the Hub exposes it in `cardData`."""
    if readme is None or readme.size > 1 << 20:
        return {}
    text = store.blob_path(readme.sha256).read_text(encoding="utf-8", errors="replace")
    m = re.match(r"^---\s*\n(.*?)\n---\s*(\n|$)", text, re.S)
    if not m:
        return {}
    try:
        data = yaml.safe_load(m.group(1))
    except yaml.YAMLError:
        return {}
    return data if isinstance(data, dict) else {}


def serve(root: str | os.PathLike, host: str = "127.0.0.1", port: int = 7860, token: str | None = None) -> None:
    server = HubServer(root, host, port, token)
    print(f"hubtools hub serving {Path(root).resolve()} at {server.url} "
          f"({'token required for writes' if token else 'open: no token set'})", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
