"""`hubtools hub serve`: the subset of the Hugging Face Hub HTTP API that huggingface_hub,
transformers and datasets use, served from a `Store`, plus read-only web pages.

Why Starlette on uvicorn: HTTP framing (Content-Length, chunked bodies, keep-alive, pipelining),
Range requests and header validation belong to a well-kept server, not to us; Starlette adds
routing and responses and still hands an upload's body over as a stream, which an LFS PUT needs to
hash and write once without buffering. FastAPI's extras (OpenAPI, dependency injection) are not
needed here. Request bodies are validated into pydantic models (pydantic comes with the serving
stack) and a bad body, field or header answers 400 naming it. Our code is Hub semantics; the
limits a network service needs are below: header size and header-read timeout (`_HubProtocol`),
body size caps, an idle timeout on every body read, and a global budget for bytes held in memory.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import socket
import threading
import time
from pathlib import Path
from typing import Any, AsyncIterator, Literal
from urllib.parse import quote, unquote, urlsplit

import uvicorn
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from hubtools.localhub.store import HubError, Repo, Store, check_oid, check_path, git_blob_sha1, lfs_pointer

log = logging.getLogger("hubtools.hub")
USER = "local"
_TYPES = {"models": "model", "datasets": "dataset", "spaces": "space"}

JSON_LIMIT = 2 << 20             # a JSON request body (preupload, LFS batch, paths-info, …)
COMMIT_LINE_LIMIT = 16 << 20     # one ndjson commit line (an inline base64 file)
UPLOAD_BATCH = 8 << 20           # an LFS body is hashed and written in batches of this many bytes
MEMORY_BUDGET = 128 << 20        # bytes of request bodies held in memory, all requests together
ANONYMOUS_BUDGET = 16 << 20      # of which requests without a valid token (a hub with a token) may hold
BODY_IDLE_TIMEOUT = 60.0         # seconds a body may stall between two reads
HEADER_TIMEOUT = 30.0            # seconds to send a request's line and headers
HEADER_LIMIT = 64 << 10          # bytes of request line + headers
HEADER_COUNT = 100               # header lines per request
PIPELINE_LIMIT = 16              # requests a client may queue on one connection before it is closed
PATHS_INFO_LIMIT = 1000          # paths per paths-info request
TREE_PAGE = 1000                 # entries per tree listing page (the rest via a Link: rel="next" header)
COMMIT_OPS_LIMIT = 25_000        # operations in one commit
MAX_CONNECTIONS = 256
LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}


# -- request models: what a client may send -------------------------------------------------
class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


class CreateRepo(_Body):
    name: str = Field(min_length=1, max_length=96)
    organization: str | None = Field(default=None, max_length=96)
    type: Literal["model", "dataset", "space"] = "model"
    private: bool | None = None
    visibility: Literal["public", "private"] | None = None


class DeleteRepo(_Body):
    name: str
    organization: str | None = None
    type: Literal["model", "dataset", "space"] = "model"


class Settings(_Body):
    private: bool | None = None
    visibility: Literal["public", "private"] | None = None


class CreateBranch(_Body):
    startingPoint: str | None = None


class CreateTag(_Body):
    tag: str = Field(min_length=1)
    message: str | None = None


class PreuploadFile(_Body):
    path: str
    sample: str | None = None
    size: int | None = None


class Preupload(_Body):
    files: list[PreuploadFile] = Field(default_factory=list, max_length=10_000)


class LfsObject(_Body):
    oid: str = Field(pattern=r"^[0-9a-f]{64}$")
    size: int = Field(ge=0)


class LfsBatch(_Body):
    operation: Literal["upload"]
    objects: list[LfsObject] = Field(max_length=10_000)


class PathsInfo(_Body):
    paths: list[str] | str = Field(default_factory=list)


class CommitLine(_Body):
    key: Literal["header", "file", "lfsFile", "deletedFile", "deletedFolder"]
    value: dict[str, Any]


class CommitHeader(_Body):
    summary: str = Field(default="", max_length=4096)
    description: str = Field(default="", max_length=65536)
    parentCommit: str | None = None


class InlineFile(_Body):
    path: str
    content: str
    encoding: Literal["base64", "utf-8"] = "utf-8"


class LfsFile(_Body):
    path: str
    oid: str = Field(pattern=r"^[0-9a-f]{64}$")


class DeletedPath(_Body):
    path: str


def _validated(model: type[BaseModel], data: Any, where: str = "body") -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        field = ".".join(str(p) for p in err["loc"]) or "(root)"
        raise HubError(400, f"Invalid {where}: {field}: {err['msg']}") from None


# -- the hub --------------------------------------------------------------------------------
class _Budget:
    """Bytes of request bodies held in memory by all requests together. Over budget answers 503
    (clients retry it) instead of waiting: nothing can deadlock on it, and RAM stays bounded."""

    def __init__(self, total: int):
        self.free = total
        self.lock = threading.Lock()

    def take(self, n: int) -> None:
        with self.lock:
            if n > self.free:
                raise HubError(503, "The hub is busy (memory budget for request bodies in use); retry")
            self.free -= n

    def give(self, n: int) -> None:
        with self.lock:
            self.free += n


class Hub:
    """Hub semantics over a `Store`: auth, repo access, upload links."""

    def __init__(self, root: str | os.PathLike, token: str | None = None, body_timeout: float = BODY_IDLE_TIMEOUT):
        self.store = Store(root)
        self.token = token.encode() if token else None
        self.body_timeout = body_timeout
        self.budget = _Budget(MEMORY_BUDGET)
        self.anonymous_budget = _Budget(ANONYMOUS_BUDGET)  # readers without a token cannot starve the writers
        # Upload links are pre-signed (clients PUT them without auth headers, as with S3).
        self.signing_key = (token or "").encode() + secrets.token_bytes(16)

    def authorized(self, request: Request) -> bool:
        if self.token is None:
            return True
        raw = dict(request.scope["headers"]).get(b"authorization", b"")
        return hmac.compare_digest(raw.removeprefix(b"Bearer ").strip(), self.token)

    def require_write(self, request: Request) -> None:
        if not self.authorized(request):
            raise HubError(401, "Invalid or missing token: this hub requires a write token "
                                "(set HF_TOKEN to the token the hub was started with)")

    def can_read(self, request: Request, repo: Repo) -> bool:
        return not repo.private or self.authorized(request)

    def repo(self, request: Request, write: bool = False) -> Repo:
        p = request.path_params
        repo_type = _TYPES.get(p.get("t", "models"))
        if repo_type is None:
            raise HubError(404, f"Unknown repo type {p['t']!r}")
        if write:
            self.require_write(request)
        repo_id = f"{p['ns']}/{p['name']}"
        try:
            r = self.store.get_repo(repo_type, repo_id)
        except HubError:
            if not self.authorized(request):  # as on the Hub: a private repo and no repo look alike
                raise HubError(401, f"Repository not found: {repo_id}", "RepoNotFound") from None
            raise
        if not self.can_read(request, r):
            raise HubError(401, f"Repository not found: {r.repo_id}", "RepoNotFound")
        return r

    def sign(self, repo_type: str, repo_id: str, oid: str, size: int, expires: int) -> str:
        msg = f"{repo_type}/{repo_id}/{oid}/{size}/{expires}".encode()
        return hmac.new(self.signing_key, msg, hashlib.sha256).hexdigest()


def _hub(request: Request) -> Hub:
    return request.app.state.hub


def param(request: Request, key: str) -> str:
    """A path parameter, decoded: routing saw `/` and `%` still quoted (see `_Guard`)."""
    return unquote(request.path_params[key])


def _rev(request: Request) -> str:
    return param(request, "rev")


def _base_url(request: Request) -> str:
    return str(request.base_url).rstrip("/")


def _prefix(repo: Repo) -> str:
    return "" if repo.type == "model" else f"{repo.type}s/"


# -- bodies ---------------------------------------------------------------------------------
async def _chunks(request: Request, whole: bool = False) -> AsyncIterator[bytes]:
    """The request body as it arrives; a stall longer than the hub's body timeout answers 408, and
    with `whole` (small bodies held in memory) so does a body not complete within that time — a
    client dripping a byte a second must not hold a connection and its buffer for ever.

    One `asyncio.timeout` for the whole body, armed only while waiting for the client (a
    `wait_for` per chunk would cost a task per 64 KiB)."""
    timeout, loop = _hub(request).body_timeout, asyncio.get_running_loop()
    end = loop.time() + timeout if whole else float("inf")
    stream = request.stream().__aiter__()
    try:
        async with asyncio.timeout(None) as deadline:
            while True:
                deadline.reschedule(min(loop.time() + timeout, end))
                try:
                    chunk = await stream.__anext__()
                except StopAsyncIteration:
                    return
                deadline.reschedule(None)
                if chunk:
                    yield chunk
    except TimeoutError:
        raise HubError(408, f"Request body stalled for {timeout:g} s") from None


async def _read_body(request: Request, limit: int = JSON_LIMIT) -> bytes:
    declared = request.headers.get("content-length")
    if declared and re.fullmatch(r"[0-9]{1,18}", declared) and int(declared) > limit:
        raise HubError(413, f"Request body of {declared} bytes is over the {limit}-byte limit for this route")
    hub, buf = _hub(request), bytearray()
    budget = hub.budget if hub.authorized(request) else hub.anonymous_budget
    try:
        async for chunk in _chunks(request, whole=True):
            if len(buf) + len(chunk) > limit:
                raise HubError(413, f"Request body is over the {limit}-byte limit for this route")
            budget.take(len(chunk))
            buf += chunk
        return bytes(buf)
    finally:
        budget.give(len(buf))


def parse_json(raw: bytes, where: str = "request body") -> Any:
    """JSON from a client: anything unparsable, too deep, a number over Python's digit limit or a
    string holding a lone surrogate (it cannot be stored as UTF-8) is a 400 naming `where`."""
    try:
        data = json.loads(raw)
        json.dumps(data, ensure_ascii=False).encode("utf-8")
    except (ValueError, UnicodeError, RecursionError) as e:  # JSONDecodeError is a ValueError
        raise HubError(400, f"Invalid {where}: not valid JSON ({type(e).__name__}: {str(e)[:200]})") from None
    return data


async def _json(request: Request, model: type[BaseModel], limit: int = JSON_LIMIT) -> Any:
    return _validated(model, parse_json(await _read_body(request, limit) or b"{}"))


# -- errors ---------------------------------------------------------------------------------
_UNSAFE_HEADER = re.compile(r"[\x00-\x1f\x7f]")


def header_safe(text: str, limit: int = 500) -> str:
    """A header value from any text: non-ASCII escaped, control characters (CR, LF, …) removed."""
    return _UNSAFE_HEADER.sub(" ", text.encode("ascii", "backslashreplace").decode("ascii"))[:limit]


def _error_response(request: Request, status: int, message: str, code: str | None = None,
                    extra: dict | None = None) -> Response:
    headers = {"X-Error-Message": header_safe(message)}  # Connection: close, if the body is unread: _Guard
    if code:
        headers["X-Error-Code"] = code
    return JSONResponse({**(extra or {}), "error": message}, status_code=status, headers=headers)


async def _on_hub_error(request: Request, exc: HubError) -> Response:
    return _error_response(request, exc.status, exc.message, exc.code)


async def _on_http_exception(request: Request, exc: HTTPException) -> Response:
    return _error_response(request, exc.status_code, str(exc.detail))


async def _on_disconnect(request: Request, exc: ClientDisconnect) -> Response:
    return _error_response(request, 400, "Client disconnected mid-request")


# -- repos ----------------------------------------------------------------------------------
async def create_repo(request: Request) -> Response:
    hub = _hub(request)
    hub.require_write(request)
    body = await _json(request, CreateRepo)
    if not body.organization:
        raise HubError(400, f"Repo id must be namespaced ('user/{body.name}'): this hub has no default user")
    private = body.visibility == "private" if body.visibility else bool(body.private)
    repo_id = f"{body.organization}/{body.name}"
    prefix = "" if body.type == "model" else f"{body.type}s/"
    answer = {"url": f"{_base_url(request)}/{prefix}{repo_id}", "name": repo_id}
    try:
        await run_in_threadpool(hub.store.create_repo, body.type, repo_id, private, USER)
    except HubError as e:
        if e.status != 409:
            raise
        # Like the Hub, a conflict still carries the url (clients with exist_ok read it).
        return _error_response(request, 409, e.message, extra=answer)
    return JSONResponse(answer)


async def delete_repo(request: Request) -> Response:
    hub = _hub(request)
    hub.require_write(request)
    body = await _json(request, DeleteRepo)
    repo_id = f"{body.organization}/{body.name}"
    await run_in_threadpool(lambda: hub.store.delete_repo(hub.store.get_repo(body.type, repo_id)))
    return JSONResponse({})


async def settings(request: Request) -> Response:
    hub = _hub(request)
    r = hub.repo(request, write=True)
    body = await _json(request, Settings)
    if body.visibility or body.private is not None:
        await run_in_threadpool(hub.store.set_private, r, body.visibility == "private" if body.visibility
                                else bool(body.private))
    return JSONResponse({})


async def whoami(request: Request) -> Response:
    if not _hub(request).authorized(request):
        raise HubError(401, "Invalid user token")
    return JSONResponse({"type": "user", "name": USER, "fullname": USER, "orgs": [],
                         "auth": {"type": "access_token", "accessToken": {"role": "write", "displayName": "local"}}})


async def validate_yaml(request: Request) -> Response:
    """Nothing to validate here: the body is drained (clients send it without a token), never kept."""
    seen = 0
    async for chunk in _chunks(request, whole=True):
        seen += len(chunk)
        if seen > JSON_LIMIT:
            raise HubError(413, f"Request body is over the {JSON_LIMIT}-byte limit for this route")
    return JSONResponse({"errors": [], "warnings": []})


def _list_repos(hub: Hub, request: Request, repo_type: str) -> list[dict]:
    search = request.query_params.get("search") or request.query_params.get("author") or ""
    return [{"id": r.repo_id, "private": r.private, "createdAt": r.created_at, "sha": hub.store.resolve(r, "main")}
            for r in hub.store.list_repos(repo_type) if hub.can_read(request, r) and search in r.repo_id]


async def list_repos(request: Request) -> Response:
    repo_type = _TYPES.get(request.path_params["t"])
    if repo_type is None:
        raise HubError(404, f"Unknown repo type {request.path_params['t']!r}")
    return JSONResponse(await run_in_threadpool(_list_repos, _hub(request), request, repo_type))


def _repo_info(hub: Hub, request: Request, rev: str) -> dict:
    store = hub.store
    r = hub.repo(request)
    oid = store.resolve(r, rev)
    files = store.files(oid)
    blobs = request.query_params.get("blobs", "false").lower() == "true"
    siblings = []
    for f in files.values():
        s = {"rfilename": f.path}
        if blobs:
            s.update(size=f.size, blobId=f.oid)
            if f.lfs:
                s["lfs"] = {"sha256": f.sha256, "size": f.size, "pointerSize": len(lfs_pointer(f.sha256, f.size))}
        siblings.append(s)
    card = store.read_card(files.get("README.md"))[0]
    tags = card.get("tags")
    return {"_id": f"{r.pk}", "id": r.repo_id, "modelId": r.repo_id, "author": r.repo_id.split("/")[0],
            "sha": oid, "lastModified": store.commit_info(oid)["date"], "createdAt": r.created_at,
            "private": r.private, "disabled": False, "gated": False, "downloads": 0, "likes": 0,
            "tags": [str(t) for t in tags] if isinstance(tags, list) else [],
            "library_name": card.get("library_name"), "pipeline_tag": card.get("pipeline_tag"),
            "cardData": card, "siblings": siblings, "usedStorage": sum(f.size for f in files.values())}


async def repo_info(request: Request) -> Response:
    rev = _rev(request) if "rev" in request.path_params else "main"
    return JSONResponse(await run_in_threadpool(_repo_info, _hub(request), request, rev))


# -- refs and history -----------------------------------------------------------------------
async def create_branch(request: Request) -> Response:
    hub = _hub(request)
    r = hub.repo(request, write=True)
    body = await _json(request, CreateBranch)
    await run_in_threadpool(hub.store.create_ref, r, "branch", _rev(request), body.startingPoint or "main")
    return JSONResponse({})


async def delete_branch(request: Request) -> Response:
    hub = _hub(request)
    await run_in_threadpool(hub.store.delete_ref, hub.repo(request, write=True), "branch", _rev(request))
    return JSONResponse({})


async def create_tag(request: Request) -> Response:
    hub = _hub(request)
    r = hub.repo(request, write=True)
    body = await _json(request, CreateTag)
    await run_in_threadpool(hub.store.create_ref, r, "tag", body.tag, _rev(request))
    return JSONResponse({})


async def delete_tag(request: Request) -> Response:
    hub = _hub(request)
    await run_in_threadpool(hub.store.delete_ref, hub.repo(request, write=True), "tag", _rev(request))
    return JSONResponse({})


async def refs(request: Request) -> Response:
    hub = _hub(request)
    all_refs = await run_in_threadpool(hub.store.refs, hub.repo(request))
    return JSONResponse({
        "branches": [{"name": n, "ref": f"refs/heads/{n}", "targetCommit": o} for n, o in all_refs["branch"].items()],
        "tags": [{"name": n, "ref": f"refs/tags/{n}", "targetCommit": o} for n, o in all_refs["tag"].items()],
        "converts": [], "pullRequests": [],
    })


def _commits(hub: Hub, request: Request, rev: str) -> list[dict]:
    history = hub.store.history(hub.store.resolve(hub.repo(request), rev))
    return [{"id": c["oid"], "title": c["title"], "message": c["message"], "date": c["date"],
             "authors": [{"user": c["author"], "avatar": None}]} for c in history]


async def commits(request: Request) -> Response:
    return JSONResponse(await run_in_threadpool(_commits, _hub(request), request, _rev(request)))


# -- trees ----------------------------------------------------------------------------------
def tree_entries(files: dict, path: str, recursive: bool) -> list[dict]:
    """Files and directories under `path` (one level, or all with `recursive`), as the Hub lists them."""
    prefix = path.strip("/") + "/" if path.strip("/") else ""
    out, dirs = [], {}
    for f in files.values():
        if not f.path.startswith(prefix):
            continue
        parts = f.path[len(prefix):].split("/")
        for depth in range(1, len(parts) if recursive else min(len(parts), 2)):
            dirs.setdefault(prefix + "/".join(parts[:depth]), hashlib.sha1()).update(f.oid.encode())
        if recursive or len(parts) == 1:
            out.append(f.tree_json())
    out += [{"type": "directory", "oid": h.hexdigest(), "path": d} for d, h in dirs.items()]
    return sorted(out, key=lambda e: e["path"])


def _tree(hub: Hub, request: Request, rev: str, path: str) -> list[dict]:
    files = hub.store.files(hub.store.resolve(hub.repo(request), rev))
    entries = tree_entries(files, path, request.query_params.get("recursive", "false").lower() == "true")
    if path.strip("/") and not entries:
        raise HubError(404, f"Entry not found: {path}", "EntryNotFound")
    return entries


async def tree(request: Request) -> Response:
    """Pages of TREE_PAGE entries, the next one named in a `Link: <…>; rel="next"` header, as on the
    Hub (huggingface_hub follows it): one response never holds a 100k-file listing."""
    path = param(request, "path") if "path" in request.path_params else ""
    cursor = request.query_params.get("cursor", "0")
    if not re.fullmatch(r"[0-9]{1,12}", cursor):
        raise HubError(400, "Invalid query: cursor must be a non-negative integer")
    entries = await run_in_threadpool(_tree, _hub(request), request, _rev(request), path)
    start = int(cursor)
    headers = {}
    if start + TREE_PAGE < len(entries):
        headers["Link"] = f'<{request.url.include_query_params(cursor=start + TREE_PAGE)}>; rel="next"'
    return JSONResponse(entries[start:start + TREE_PAGE], headers=headers)


def _paths_info(hub: Hub, r: Repo, rev: str, paths: list[str]) -> list[dict]:
    files = hub.store.files(hub.store.resolve(r, rev))
    dirs: dict[str, list[str]] = {}  # every directory → the oids below it, built once
    for path, f in files.items():
        parts = path.split("/")
        for depth in range(1, len(parts)):
            dirs.setdefault("/".join(parts[:depth]), []).append(f.oid)
    out = []
    for p in dict.fromkeys(p.strip("/") for p in paths):
        if p in files:
            out.append(files[p].tree_json())
        elif p in dirs:
            out.append({"type": "directory", "oid": hashlib.sha1("".join(dirs[p]).encode()).hexdigest(), "path": p})
    return out


async def paths_info(request: Request) -> Response:
    hub = _hub(request)
    r = hub.repo(request)  # before reading a body: an unknown or unreadable repo costs nothing
    limit = PATHS_INFO_LIMIT * 1100
    if request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
        from urllib.parse import parse_qs  # huggingface_hub sends the paths as a form
        paths = parse_qs((await _read_body(request, limit)).decode("utf-8", "replace")).get("paths", [])
    else:
        paths = (await _json(request, PathsInfo, limit)).paths
    paths = [paths] if isinstance(paths, str) else paths
    if len(paths) > PATHS_INFO_LIMIT:
        raise HubError(400, f"Invalid body: paths: at most {PATHS_INFO_LIMIT} per request")
    return JSONResponse(await run_in_threadpool(_paths_info, hub, r, _rev(request), paths))


# -- uploads --------------------------------------------------------------------------------
def _preupload(hub: Hub, r: Repo, rev: str, body: Preupload) -> dict:
    try:
        head = hub.store.resolve(r, rev)
    except HubError:  # a branch the commit will create
        head = None
    current = hub.store.files(head) if head else {}
    files = []
    for f in body.files:
        existing = current.get(f.path)
        # Always LFS: datasets deletes its temporary parquet files between preupload and commit.
        files.append({"path": f.path, "uploadMode": "lfs", "shouldIgnore": False,
                      "oid": existing.sha256 if existing and existing.lfs else None})
    return {"files": files, "commitOid": head}


async def preupload(request: Request) -> Response:
    hub = _hub(request)
    r = hub.repo(request, write=True)
    body = await _json(request, Preupload)
    return JSONResponse(await run_in_threadpool(_preupload, hub, r, _rev(request), body))


async def lfs_batch(request: Request) -> Response:
    hub = _hub(request)
    name = request.path_params["name"]
    if not name.endswith(".git"):
        raise HubError(404, f"No route for {request.url.path}")
    request.path_params["name"] = name.removesuffix(".git")
    r = hub.repo(request, write=True)
    body = await _json(request, LfsBatch)
    t = request.path_params.get("t", "models")
    expires = int(time.time()) + 3600
    objects = []
    for obj in body.objects:
        entry = {"oid": obj.oid, "size": obj.size, "authenticated": True}
        if not await run_in_threadpool(hub.store.has_blob, obj.oid):
            sig = hub.sign(t, r.repo_id, obj.oid, obj.size, expires)
            href = (f"{_base_url(request)}/_lfs/{t}/{quote(r.repo_id)}/{obj.oid}"
                    f"?expires={expires}&size={obj.size}&sig={sig}")
            entry["actions"] = {"upload": {"href": href, "expires_at": "", "header": {}}}
        objects.append(entry)
    return JSONResponse({"transfer": "basic", "objects": objects, "hash_algo": "sha256"},
                        headers={"Content-Type": "application/vnd.git-lfs+json"})


async def lfs_upload(request: Request) -> Response:
    """Stream the body to a temp file: hashed and written once, in UPLOAD_BATCH batches on a worker
    thread while the next batch arrives; at most two batches are in memory."""
    hub, p, q = _hub(request), request.path_params, request.query_params
    oid = check_oid(p["oid"])
    if p["t"] not in _TYPES:
        raise HubError(404, f"Unknown repo type {p['t']!r}")
    try:
        expires, size = int(q.get("expires", "")), int(q.get("size", ""))
    except ValueError:
        raise HubError(400, "Upload link: 'expires' and 'size' must be integers") from None
    sig = q.get("sig", "")
    good = hub.sign(p["t"], f"{p['ns']}/{p['name']}", oid, size, expires)
    if expires < time.time() or not hmac.compare_digest(sig.encode("ascii", "replace"), good.encode()):
        raise HubError(403, "Upload link is invalid or expired; request a new one from the LFS batch API")
    hub.budget.take(2 * UPLOAD_BATCH)
    writer = await run_in_threadpool(hub.store.blob_writer)
    pending: asyncio.Future | None = None
    try:
        batch, batch_bytes, total = [], 0, 0
        async for chunk in _chunks(request):
            total += len(chunk)
            if total > size:
                raise HubError(400, f"Upload is longer than the {size} bytes this link was issued for")
            batch.append(chunk)
            batch_bytes += len(chunk)
            if batch_bytes >= UPLOAD_BATCH:
                if pending is not None:
                    await pending
                pending = asyncio.ensure_future(run_in_threadpool(writer.write, batch))
                batch, batch_bytes = [], 0
        if pending is not None:
            await pending
        pending = None
        await run_in_threadpool(writer.write, batch)
        await run_in_threadpool(writer.finish, oid, size)
    finally:
        if pending is not None:  # an error mid-upload: let the write in flight end before closing its file
            await asyncio.gather(pending, return_exceptions=True)
        await run_in_threadpool(writer.abort)
        hub.budget.give(2 * UPLOAD_BATCH)
    return JSONResponse({})


class _CommitParser:
    """Applies ndjson commit lines as they arrive; inline files go straight to blobs."""

    def __init__(self, hub: Hub):
        self.hub = hub
        self.header = CommitHeader()
        self.put: dict[str, tuple] = {}
        self.delete: list[str] = []
        self.delete_folders: list[str] = []
        self.n = 0

    async def line(self, raw: bytes) -> None:
        self.n += 1
        if self.n > COMMIT_OPS_LIMIT:  # blank lines count: each costs a parse step too
            raise HubError(413, f"A commit holds at most {COMMIT_OPS_LIMIT} lines")
        if not raw.strip():
            return
        where = f"commit line {self.n}"
        item = _validated(CommitLine, parse_json(raw, where), where)
        if item.key == "header":
            self.header = _validated(CommitHeader, item.value, f"{where} (header)")
        elif item.key == "file":
            f = _validated(InlineFile, item.value, f"{where} (file)")
            check_path(f.path)
            try:
                content = base64.b64decode(f.content, validate=True) if f.encoding == "base64" \
                    else f.content.encode()
            except binascii.Error as e:
                raise HubError(400, f"Invalid {where} (file {f.path!r}): content is not valid base64 ({e})") from None
            sha, size = await run_in_threadpool(self.hub.store.write_blob, [content])
            self.put[f.path] = (sha, size, False, git_blob_sha1(content))
        elif item.key == "lfsFile":
            f = _validated(LfsFile, item.value, f"{where} (lfsFile)")
            check_path(f.path)
            path = self.hub.store.blob_path(f.oid)
            try:
                size = (await run_in_threadpool(os.stat, path)).st_size
            except FileNotFoundError:
                raise HubError(400, f"LFS file {f.path!r} was not uploaded (oid {f.oid})") from None
            self.put[f.path] = (f.oid, size, True, git_blob_sha1(lfs_pointer(f.oid, size)))
        else:
            path = _validated(DeletedPath, item.value, f"{where} ({item.key})").path
            if item.key == "deletedFile" or path.strip("/"):
                check_path(path.strip("/") if item.key == "deletedFolder" else path)
            (self.delete if item.key == "deletedFile" else self.delete_folders).append(path)


async def commit(request: Request) -> Response:
    hub = _hub(request)
    r = hub.repo(request, write=True)
    if request.query_params.get("create_pr", "0") in ("1", "true", "True"):
        raise HubError(400, "Pull requests are not supported by the local hub")
    parser, buf, scanned = _CommitParser(hub), bytearray(), 0
    held = 0
    try:
        async for chunk in _chunks(request):
            hub.budget.take(len(chunk))
            held += len(chunk)
            buf += chunk
            while (nl := buf.find(b"\n", scanned)) >= 0:
                await parser.line(bytes(buf[:nl]))
                del buf[:nl + 1]  # bytearray drops its head in O(1): no quadratic copying
                scanned = 0
            scanned = len(buf)
            if len(buf) > COMMIT_LINE_LIMIT:
                raise HubError(413, f"Commit line {parser.n + 1} is over {COMMIT_LINE_LIMIT} bytes; "
                                    "upload large files through LFS")
            hub.budget.give(held - len(buf))
            held = len(buf)
        await parser.line(bytes(buf))
    finally:
        hub.budget.give(held)
    h = parser.header
    oid = await run_in_threadpool(
        hub.store.commit, r, _rev(request), h.summary or "Upload files", h.description, USER,
        put=parser.put, delete=parser.delete, delete_folders=parser.delete_folders, parent_commit=h.parentCommit)
    return JSONResponse({"commitUrl": f"{_base_url(request)}/{_prefix(r)}{r.repo_id}/commit/{oid}",
                         "commitOid": oid, "pullRequestUrl": None})


# -- downloads ------------------------------------------------------------------------------
class _BlobResponse(FileResponse):
    chunk_size = 1 << 20  # Starlette's 64 KiB costs a thread hop per 64 KiB


def _resolve_file(hub: Hub, request: Request):
    store, r = hub.store, hub.repo(request)
    rev, path = _rev(request), param(request, "path")
    oid = store.resolve(r, rev)
    f = store.files(oid).get(path)
    if f is None:
        raise HubError(404, f"Entry not found: {path} at {rev}", "EntryNotFound")
    return oid, f


_RANGE = re.compile(r"^bytes=[ \t]*([0-9]{0,18}-[0-9]{0,18})([ \t]*,[ \t]*[0-9]{0,18}-[0-9]{0,18})*[ \t]*$")


def _range_is_valid(value: str) -> bool:
    if not _RANGE.match(value):
        return False
    for spec in value.split("=", 1)[1].split(","):
        first, last = (x.strip() for x in spec.split("-"))
        if (not first and not last) or (first and last and int(first) > int(last)):
            return False
    return True


async def resolve(request: Request) -> Response:
    """A file at a revision; Range and HEAD handled by Starlette's FileResponse. A Range header
    that is not valid is ignored (RFC 9110): the whole file, 200."""
    hub = _hub(request)
    oid, f = await run_in_threadpool(_resolve_file, hub, request)
    rng = request.headers.get("range")
    if rng is not None and not _range_is_valid(rng):
        request.scope["headers"] = [(k, v) for k, v in request.scope["headers"] if k != b"range"]
    headers = {"X-Repo-Commit": oid, "ETag": f'"{f.sha256 if f.lfs else f.oid}"', "X-Content-Type-Options": "nosniff"}
    if f.lfs:
        headers.update({"X-Linked-Etag": f'"{f.sha256}"', "X-Linked-Size": str(f.size)})
    return _BlobResponse(hub.store.blob_path(f.sha256), headers=headers, media_type="application/octet-stream")


# -- the app --------------------------------------------------------------------------------
_R = "/{ns}/{name}"
_API = "/api/{t}" + _R


def api_routes() -> list[Route]:
    return [
        Route("/api/repos/create", create_repo, methods=["POST"]),
        Route("/api/repos/delete", delete_repo, methods=["DELETE"]),
        Route("/api/whoami-v2", whoami, methods=["GET"]),
        Route("/api/validate-yaml", validate_yaml, methods=["POST"]),
        Route("/api/{t}", list_repos, methods=["GET"]),
        Route(_API, repo_info, methods=["GET"]),
        Route(_API + "/revision/{rev}", repo_info, methods=["GET"]),
        Route(_API + "/settings", settings, methods=["PUT"]),
        Route(_API + "/preupload/{rev}", preupload, methods=["POST"]),
        Route(_API + "/commit/{rev}", commit, methods=["POST"]),
        Route(_API + "/branch/{rev}", create_branch, methods=["POST"]),
        Route(_API + "/branch/{rev}", delete_branch, methods=["DELETE"]),
        Route(_API + "/tag/{rev}", create_tag, methods=["POST"]),
        Route(_API + "/tag/{rev}", delete_tag, methods=["DELETE"]),
        Route(_API + "/refs", refs, methods=["GET"]),
        Route(_API + "/commits/{rev}", commits, methods=["GET"]),
        Route(_API + "/tree/{rev}", tree, methods=["GET"]),
        Route(_API + "/tree/{rev}/{path:path}", tree, methods=["GET"]),
        Route(_API + "/paths-info/{rev}", paths_info, methods=["POST"]),
        Route(_R + "/info/lfs/objects/batch", lfs_batch, methods=["POST"]),
        Route("/{t}" + _R + "/info/lfs/objects/batch", lfs_batch, methods=["POST"]),
        Route("/_lfs/{t}" + _R + "/{oid}", lfs_upload, methods=["PUT"]),
        Route(_R + "/resolve/{rev}/{path:path}", resolve, methods=["GET", "HEAD"]),
        Route("/{t}" + _R + "/resolve/{rev}/{path:path}", resolve, methods=["GET", "HEAD"]),
    ]


class _Guard:
    """Checks before routing.

    * Host: a hub bound to loopback answers only to loopback names (a web page that rebinds its
      own domain to 127.0.0.1 gets nothing); `allowed_hosts` names others.
    * Cross-site writes: a browser sends `Origin` (and `Sec-Fetch-Site`) on every cross-site POST;
      the HF clients send neither. A write whose Origin is not this host is refused, so a web page
      cannot commit to an open (token-less) hub on the user's machine.
    * Paths: routing sees the path decoded except `%2F` and `%25`, so a revision quoted into one
      segment (`refs%2Fpr%2F1`, or one holding a literal `%2F`) stays one; handlers decode params.
    """

    def __init__(self, app, allowed_hosts: set[str] | None):
        self.app, self.allowed_hosts = app, allowed_hosts

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        host = headers.get(b"host", b"").decode("latin-1")
        try:
            hostname = urlsplit("//" + host).hostname or ""
        except ValueError:
            hostname = ""
        refusal = None
        if self.allowed_hosts is not None and hostname not in self.allowed_hosts:
            refusal = f"Host {host[:100]!r} is not served here (allowed: {sorted(self.allowed_hosts)})"
        elif scope["method"] not in ("GET", "HEAD", "OPTIONS"):
            origin = headers.get(b"origin", b"").decode("latin-1")
            site = headers.get(b"sec-fetch-site", b"").decode("latin-1").lower()
            if (origin and origin != "null" and urlsplit(origin).netloc != host) or origin == "null" \
                    or site in ("cross-site", "same-site"):
                refusal = "Cross-site write refused: requests from web pages may only read this hub"
        if refusal:
            response = JSONResponse({"error": refusal}, 403, headers={"X-Error-Message": header_safe(refusal),
                                                                       "Connection": "close"})
            return await response(scope, receive, send)
        if headers.get(b"content-length", b"0") not in (b"", b"0") or b"transfer-encoding" in headers:
            receive, send = _close_unless_body_read(receive, send)
        raw = scope.get("raw_path") or b""
        if b"%" in raw:
            parts = re.split(rb"(%2[fF]|%25)", raw)
            scope = dict(scope, path="".join(p.decode("latin-1").upper() if i % 2 else unquote(p.decode("latin-1"))
                                             for i, p in enumerate(parts)))
        await self.app(scope, receive, send)


def _close_unless_body_read(receive, send):
    """Wrap a request's receive/send so that an answer sent before the whole body arrived says
    `Connection: close`: uvicorn would otherwise keep reading (and discarding) a body the app never
    asked for, byte by byte, and the connection would never free its slot."""
    done = False

    async def counting_receive():
        nonlocal done
        message = await receive()
        if message["type"] == "http.request" and not message.get("more_body", False):
            done = True
        return message

    async def closing_send(message):
        if message["type"] == "http.response.start" and not done:
            headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"connection"]
            message = {**message, "headers": headers + [(b"connection", b"close")]}
        await send(message)

    return counting_receive, closing_send


def create_app(root: str | os.PathLike, token: str | None = None, body_timeout: float = BODY_IDLE_TIMEOUT,
               allowed_hosts: set[str] | None = None) -> Starlette:
    """The hub as an ASGI app; `allowed_hosts` (lower-case names) limits the Host header, None allows any."""
    from hubtools.localhub.pages import page_routes
    hub = Hub(root, token, body_timeout)
    app = Starlette(routes=api_routes() + page_routes(hub.store, hub.can_read), exception_handlers={
        HubError: _on_hub_error, HTTPException: _on_http_exception, ClientDisconnect: _on_disconnect})
    app.state.hub = hub
    app.add_middleware(_Guard, allowed_hosts=allowed_hosts)
    for line in hub.store.startup_report:
        log.warning("store check: %s", line)
    return app


class _HubProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the two limits it lacks: request line + headers must
    arrive within HEADER_TIMEOUT seconds and fit in HEADER_LIMIT bytes (a slow or endless header
    would otherwise hold a connection or grow memory)."""

    header_timeout = HEADER_TIMEOUT
    write_timeout = BODY_IDLE_TIMEOUT  # a client that stops reading our answer stalls like one that stops sending
    _header_timer: asyncio.TimerHandle | None = None
    _write_timer: asyncio.TimerHandle | None = None
    _header_bytes = _header_count = 0

    def _arm(self) -> None:
        self._disarm()
        self._header_bytes = self._header_count = 0
        self._header_timer = self.loop.call_later(self.header_timeout, self._header_timeout)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_timeout(self) -> None:
        self._header_timer = None
        if not self.transport.is_closing():
            self.send_408()

    def send_408(self) -> None:
        msg = b"Request headers not received in time"
        self.transport.write(b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain\r\n"
                             b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(msg), msg))
        self.transport.close()

    def _count(self, n: int) -> None:
        self._header_bytes += n
        if self._header_bytes > HEADER_LIMIT:
            raise ValueError("request line and headers too large")  # the parser answers 400 and closes

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc) -> None:
        self._disarm()
        if self._write_timer is not None:
            self._write_timer.cancel()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm()

    def on_url(self, url: bytes) -> None:
        self._count(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value) + 4)
        self._header_count += 1
        if self._header_count > HEADER_COUNT:
            raise ValueError("too many headers")
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()
        if len(self.pipeline) > PIPELINE_LIMIT:  # queued requests cost memory: a client must read its answers
            self.transport.close()

    def on_response_complete(self) -> None:
        super().on_response_complete()  # uvicorn resumes reading here, even with requests still queued
        if self.pipeline:
            self.flow.pause_reading()

    # A client that stops reading our answer would hold its connection (and a graceful shutdown) forever.
    def pause_writing(self) -> None:
        super().pause_writing()
        if self._write_timer is None:
            self._write_timer = self.loop.call_later(self.write_timeout, self.transport.abort)  # close() would wait for the unread bytes

    def resume_writing(self) -> None:
        if self._write_timer is not None:
            self._write_timer.cancel()
            self._write_timer = None
        super().resume_writing()


class HubServer:
    """The hub on uvicorn, on a socket bound at construction (port 0 → the OS picks one)."""

    def __init__(self, root: str | os.PathLike, host: str = "127.0.0.1", port: int = 0, token: str | None = None,
                 header_timeout: float = HEADER_TIMEOUT, body_timeout: float = BODY_IDLE_TIMEOUT,
                 allowed_hosts: list[str] | None = None):
        """Bound to a loopback address, the hub answers only loopback Host names (plus `allowed_hosts`);
        bound elsewhere, any Host unless `allowed_hosts` is given."""
        if allowed_hosts or host in LOOPBACK_HOSTS:
            named = {urlsplit("//" + h).hostname or h.lower() for h in allowed_hosts or []}  # "hub:7860" → "hub"
            allowed = named | (LOOPBACK_HOSTS if host in LOOPBACK_HOSTS else set())
        else:
            allowed = None
        self.app = create_app(root, token, body_timeout, allowed)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port))
        self.host, self.port = host, self.sock.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(
            self.app, http=type("HubProtocol", (_HubProtocol,), {"header_timeout": header_timeout, "write_timeout": body_timeout}), loop="uvloop",
            lifespan="off", access_log=False, log_level="warning",
            limit_concurrency=MAX_CONNECTIONS, timeout_keep_alive=30, timeout_graceful_shutdown=10,
            server_header=False))

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def serve_forever(self) -> None:
        self.server.run(sockets=[self.sock])

    def start_thread(self) -> "HubServer":
        """Serve from a daemon thread (the demo's in-process hub); returns once it accepts connections."""
        threading.Thread(target=self.serve_forever, name="local-hub", daemon=True).start()
        deadline = time.time() + 30
        while not self.server.started:
            if time.time() > deadline:
                raise RuntimeError("the local hub did not start in 30 s")
            time.sleep(0.02)
        return self


def serve(root: str | os.PathLike, host: str = "127.0.0.1", port: int = 7860, token: str | None = None,
          header_timeout: float = HEADER_TIMEOUT, body_timeout: float = BODY_IDLE_TIMEOUT,
          allowed_hosts: list[str] | None = None) -> None:
    server = HubServer(root, host, port, token, header_timeout, body_timeout, allowed_hosts)
    print(f"hubtools hub serving {Path(root).resolve()} at {server.url} "
          f"({'token required for writes' if token else 'open: no token set'})", flush=True)
    server.serve_forever()
