"""The local hub's storage: SQLite metadata plus content-addressed blobs.

Why this shape: a commit must be all-or-nothing. Blob bytes are written first (to a temp file,
fsynced, then renamed to their sha256), and only then does one SQLite transaction insert the
commit, its file list and move the branch. A crash before that transaction leaves at most an
unreferenced blob; a crash inside it is rolled back by SQLite. Readers never see a partial revision.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import sqlite3
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import yaml

REPO_TYPES = ("model", "dataset", "space")
_SHA_RE = re.compile(r"^[0-9a-f]{40}$")
_SHA_LIKE_RE = re.compile(r"^[0-9a-fA-F]{40}$")
_OID_RE = re.compile(r"^[0-9a-f]{64}$")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
# Namespaces that are routes of the server (API, uploads, web pages), never a user's.
RESERVED_NAMESPACES = {"api", "datasets", "spaces", "models", "_lfs", "static"}
MAX_PATH_BYTES, MAX_PATH_DEPTH, MAX_REF_BYTES = 1024, 32, 255
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
CARD_LIMIT = 1 << 20  # bytes of a README.md read for its metadata and page; the rest is cut off
FRONT_MATTER_LIMIT = 256 << 10  # bytes of YAML parsed for a card's metadata; beyond it, no metadata
_FRONT_RE = re.compile(r"^---[ \t]*\r?\n(.*?)\r?\n---[ \t]*(?:\r?\n|$)", re.S)
GITATTRIBUTES = (
    b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n*.bin filter=lfs diff=lfs merge=lfs -text\n"
    b"*.gguf filter=lfs diff=lfs merge=lfs -text\n*.parquet filter=lfs diff=lfs merge=lfs -text\n"
    b"*.png filter=lfs diff=lfs merge=lfs -text\n"
)


class HubError(Exception):
    """An error the server turns into an HTTP answer with the Hub's `X-Error-Code`."""

    def __init__(self, status: int, message: str, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.code = status, message, code


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(sha256: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())


@dataclass(frozen=True)
class Repo:
    pk: int
    type: str
    repo_id: str
    private: bool
    created_at: str


@dataclass(frozen=True)
class FileEntry:
    path: str
    sha256: str
    size: int
    lfs: bool
    oid: str  # git blob id: of the content (regular file) or of the LFS pointer

    def tree_json(self) -> dict:
        out = {"type": "file", "oid": self.oid, "size": self.size, "path": self.path}
        if self.lfs:
            out["lfs"] = {"oid": self.sha256, "size": self.size, "pointerSize": len(lfs_pointer(self.sha256, self.size))}
        return out


_SCHEMA = """
CREATE TABLE IF NOT EXISTS repos(pk INTEGER PRIMARY KEY, type TEXT NOT NULL, repo_id TEXT NOT NULL,
    private INTEGER NOT NULL, created_at TEXT NOT NULL, UNIQUE(type, repo_id));
CREATE TABLE IF NOT EXISTS commits(oid TEXT PRIMARY KEY, repo INTEGER NOT NULL, parent TEXT,
    title TEXT NOT NULL, message TEXT NOT NULL, author TEXT NOT NULL, date TEXT NOT NULL, seq INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS files(commit_oid TEXT NOT NULL, path TEXT NOT NULL, sha256 TEXT NOT NULL,
    size INTEGER NOT NULL, lfs INTEGER NOT NULL, oid TEXT NOT NULL, PRIMARY KEY(commit_oid, path));
CREATE TABLE IF NOT EXISTS refs(repo INTEGER NOT NULL, kind TEXT NOT NULL, name TEXT NOT NULL,
    commit_oid TEXT NOT NULL, PRIMARY KEY(repo, kind, name));
"""


class Store:
    """Repos, commits, refs and blobs under one root directory."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.blob_dir = self.root / "blobs"
        self.tmp_dir = self.root / "tmp"
        self.blob_dir.mkdir(parents=True, exist_ok=True)
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        for leftover in self.tmp_dir.iterdir():  # partial uploads of a killed server
            leftover.unlink(missing_ok=True)
        self._local = threading.local()
        self._db().executescript(_SCHEMA)
        self.startup_report = self.check_integrity()

    # -- plumbing ---------------------------------------------------------------------------
    def _db(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.root / "hub.sqlite3", timeout=60, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            self._local.db = db
        return db

    class _Tx:
        def __init__(self, db: sqlite3.Connection):
            self.db = db

        def __enter__(self) -> sqlite3.Connection:
            self.db.execute("BEGIN IMMEDIATE")
            return self.db

        def __exit__(self, exc_type, *_):
            self.db.execute("ROLLBACK" if exc_type else "COMMIT")

    def _tx(self) -> "Store._Tx":
        return Store._Tx(self._db())

    # -- blobs ------------------------------------------------------------------------------
    def blob_path(self, sha256: str) -> Path:
        """The file of a blob. Only a 64-hex oid names one: client data never becomes another path."""
        return self.blob_dir / check_oid(sha256)[:2] / sha256

    def has_blob(self, sha256: str) -> bool:
        return self.blob_path(sha256).exists()

    def read_card(self, readme: FileEntry | None) -> tuple[dict, str]:
        """(YAML front matter, markdown body) of a README.md, reading at most CARD_LIMIT bytes.

        The metadata is what the Hub exposes as `cardData`, so it must always be JSON: YAML that
        is invalid, too deep, over FRONT_MATTER_LIMIT or uses aliases (a 400-byte alias bomb
        expands to gigabytes) gives {}; dates become ISO strings, NaN/inf None, sets lists.
        Parsed once per blob (cards are content-addressed, so the cache never goes stale)."""
        return _read_card(self.blob_path(readme.sha256)) if readme is not None else ({}, "")

    def blob_writer(self) -> "BlobWriter":
        return BlobWriter(self)

    def write_blob(self, chunks: Iterable[bytes], expected_sha256: str | None = None) -> tuple[str, int]:
        """Store bytes given as chunks; returns (sha256, size)."""
        writer = self.blob_writer()
        try:
            writer.write(list(chunks))
            return writer.finish(expected_sha256)
        finally:
            writer.abort()

    # -- repos ------------------------------------------------------------------------------
    def create_repo(self, repo_type: str, repo_id: str, private: bool, author: str) -> Repo:
        if repo_type not in REPO_TYPES:
            raise HubError(400, f"Unknown repo type {repo_type!r}; expected one of {REPO_TYPES}")
        parts = repo_id.split("/")
        if len(parts) != 2 or not all(_NAME_RE.match(p) for p in parts):
            raise HubError(400, f"Invalid repo id {repo_id!r}: expected 'namespace/name' "
                                "(letters, digits, '.', '_', '-')")
        if parts[0].lower() in RESERVED_NAMESPACES:
            raise HubError(400, f"Invalid repo id {repo_id!r}: namespace {parts[0]!r} is reserved")
        sha, size = self.write_blob([GITATTRIBUTES])
        with self._tx() as db:  # the repo and its first commit on `main`: all or nothing
            if db.execute("SELECT 1 FROM repos WHERE type=? AND repo_id=?", (repo_type, repo_id)).fetchone():
                raise HubError(409, f"You already created this {repo_type} repo: {repo_id}")
            pk = db.execute("INSERT INTO repos(type, repo_id, private, created_at) VALUES(?,?,?,?)",
                            (repo_type, repo_id, int(private), now_iso())).lastrowid
            self._initial_commit(db, pk, author, sha, size)
        return self.get_repo(repo_type, repo_id)

    def _initial_commit(self, db: sqlite3.Connection, pk: int, author: str, sha: str, size: int) -> None:
        entry = FileEntry(".gitattributes", sha, size, False, git_blob_sha1(GITATTRIBUTES))
        self._write_commit(db, pk, "main", None, "initial commit", "", author, {entry.path: entry})

    def check_integrity(self) -> list[str]:
        """Repair what an older version could leave half-made; report what cannot be repaired.

        Old versions created a repo and its first commit in two transactions: a kill between them
        left a repo without `main`, which broke every listing. Such a repo (no commits) gets its
        initial commit now. Refs named like a commit sha are reported (they would shadow nothing
        now: a 40-hex revision always resolves to a commit).
        """
        report = []
        sha, size = self.write_blob([GITATTRIBUTES])
        with self._tx() as db:
            for pk, repo_type, repo_id in db.execute(
                    "SELECT pk, type, repo_id FROM repos WHERE pk NOT IN "
                    "(SELECT repo FROM refs WHERE kind='branch' AND name='main')").fetchall():
                if db.execute("SELECT 1 FROM commits WHERE repo=?", (pk,)).fetchone():
                    report.append(f"{repo_type} {repo_id}: has commits but no 'main' branch (left as is)")
                else:
                    self._initial_commit(db, pk, "local", sha, size)
                    report.append(f"{repo_type} {repo_id}: had no 'main' branch; repaired with an initial commit")
            for repo_id, kind, name in db.execute(
                    "SELECT repos.repo_id, refs.kind, refs.name FROM refs JOIN repos ON repos.pk = refs.repo"
                    ).fetchall():
                try:
                    check_ref_name(name, kind)
                except HubError as e:
                    report.append(f"{repo_id}: {e.message} (kept; it can still be deleted)")
        return report

    def get_repo(self, repo_type: str, repo_id: str) -> Repo:
        row = self._db().execute("SELECT pk, type, repo_id, private, created_at FROM repos "
                                 "WHERE type=? AND repo_id=?", (repo_type, repo_id)).fetchone()
        if row is None:
            raise HubError(404, f"Repository not found: {repo_id}", "RepoNotFound")
        return Repo(row[0], row[1], row[2], bool(row[3]), row[4])

    def list_repos(self, repo_type: str) -> list[Repo]:
        rows = self._db().execute("SELECT pk, type, repo_id, private, created_at FROM repos WHERE type=? "
                                  "ORDER BY repo_id", (repo_type,)).fetchall()
        return [Repo(r[0], r[1], r[2], bool(r[3]), r[4]) for r in rows]

    def delete_repo(self, repo: Repo) -> None:
        with self._tx() as db:
            oids = [r[0] for r in db.execute("SELECT oid FROM commits WHERE repo=?", (repo.pk,))]
            db.executemany("DELETE FROM files WHERE commit_oid=?", [(o,) for o in oids])
            db.execute("DELETE FROM commits WHERE repo=?", (repo.pk,))
            db.execute("DELETE FROM refs WHERE repo=?", (repo.pk,))
            db.execute("DELETE FROM repos WHERE pk=?", (repo.pk,))

    def set_private(self, repo: Repo, private: bool) -> None:
        with self._tx() as db:
            db.execute("UPDATE repos SET private=? WHERE pk=?", (int(private), repo.pk))

    # -- refs and commits -------------------------------------------------------------------
    def refs(self, repo: Repo) -> dict[str, dict[str, str]]:
        out: dict[str, dict[str, str]] = {"branch": {}, "tag": {}}
        for kind, name, oid in self._db().execute(
                "SELECT kind, name, commit_oid FROM refs WHERE repo=? ORDER BY name", (repo.pk,)):
            out[kind][name] = oid
        return out

    def resolve(self, repo: Repo, revision: str) -> str:
        """Full commit sha, branch or tag (also as refs/heads/…, refs/tags/…) → commit oid.

        A 40-hex revision is only ever a commit: a download pinned to a sha cannot be swapped by a
        ref of the same name (such refs are refused at creation)."""
        db = self._db()
        if _SHA_RE.match(revision):
            if db.execute("SELECT 1 FROM commits WHERE oid=? AND repo=?", (revision, repo.pk)).fetchone():
                return revision
            raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        for kind, name in (("branch", revision), ("tag", revision),
                           ("branch", revision.removeprefix("refs/heads/")),
                           ("tag", revision.removeprefix("refs/tags/"))):
            row = db.execute("SELECT commit_oid FROM refs WHERE repo=? AND kind=? AND name=?",
                             (repo.pk, kind, name)).fetchone()
            if row:
                return row[0]
        raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")

    def create_ref(self, repo: Repo, kind: str, name: str, revision: str) -> None:
        check_ref_name(name, kind)
        with self._tx() as db:
            oid = self.resolve(repo, revision)
            if db.execute("SELECT 1 FROM refs WHERE repo=? AND kind=? AND name=?", (repo.pk, kind, name)).fetchone():
                raise HubError(409, f"{kind.capitalize()} {name!r} already exists in {repo.repo_id}")
            db.execute("INSERT INTO refs VALUES(?,?,?,?)", (repo.pk, kind, name, oid))

    def delete_ref(self, repo: Repo, kind: str, name: str) -> None:
        if kind == "branch" and name == "main":
            raise HubError(403, "Cannot delete the main branch")
        with self._tx() as db:
            if not db.execute("DELETE FROM refs WHERE repo=? AND kind=? AND name=?", (repo.pk, kind, name)).rowcount:
                raise HubError(404, f"{kind.capitalize()} {name!r} not found", "RevisionNotFound")

    def files(self, commit_oid: str) -> dict[str, FileEntry]:
        rows = self._db().execute("SELECT path, sha256, size, lfs, oid FROM files WHERE commit_oid=? "
                                  "ORDER BY path", (commit_oid,))
        return {r[0]: FileEntry(r[0], r[1], r[2], bool(r[3]), r[4]) for r in rows}

    def commit_info(self, commit_oid: str) -> dict:
        row = self._db().execute("SELECT oid, parent, title, message, author, date FROM commits WHERE oid=?",
                                 (commit_oid,)).fetchone()
        return dict(zip(("oid", "parent", "title", "message", "author", "date"), row))

    def history(self, commit_oid: str) -> list[dict]:
        out, oid = [], commit_oid
        while oid:
            info = self.commit_info(oid)
            out.append(info)
            oid = info["parent"]
        return out

    def commit(self, repo: Repo, branch: str, title: str, message: str, author: str, *,
               put: dict[str, tuple[str, int, bool, str]] | None = None, delete: Iterable[str] = (),
               delete_folders: Iterable[str] = (), parent_commit: str | None = None) -> str:
        """Apply one commit atomically to `branch`. `put` maps path → (sha256, size, lfs, git oid);
        every blob must already be stored."""
        put = put or {}
        for path, (sha, *_rest) in put.items():
            check_path(path)
            if not self.has_blob(sha):
                raise HubError(400, f"File {path!r}: content sha256 {sha} was never uploaded")
        check_ref_name(branch, "branch")
        with self._tx() as db:
            row = db.execute("SELECT commit_oid FROM refs WHERE repo=? AND kind='branch' AND name=?",
                             (repo.pk, branch)).fetchone()
            if row is None and db.execute("SELECT 1 FROM commits WHERE repo=?", (repo.pk,)).fetchone():
                raise HubError(404, f"Invalid rev id: {branch} (commits go to an existing branch)",
                               "RevisionNotFound")
            parent = row[0] if row else None
            if parent_commit and parent_commit != parent:
                raise HubError(412, f"A commit has happened since {parent_commit}; {branch} is now at {parent}")
            tree = self.files(parent) if parent else {}
            for path in delete:
                if tree.pop(path, None) is None:
                    raise HubError(404, f"Cannot delete {path[:200]!r}: no such file in {branch}", "EntryNotFound")
            for folder in delete_folders:
                prefix = folder.rstrip("/") + "/"
                for path in [p for p in tree if p.startswith(prefix)]:
                    del tree[path]
            for path, (sha, size, lfs, oid) in put.items():
                tree[path] = FileEntry(path, sha, size, lfs, oid)
            return self._write_commit(db, repo.pk, branch, parent, title, message, author, tree)

    @staticmethod
    def _write_commit(db: sqlite3.Connection, repo_pk: int, branch: str, parent: str | None, title: str,
                      message: str, author: str, tree: dict[str, FileEntry]) -> str:
        """Insert a commit with its full tree and point `branch` at it (inside the caller's transaction)."""
        date = now_iso()
        seq = db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM commits").fetchone()[0]
        oid = hashlib.sha1(json.dumps([repo_pk, parent, title, message, date, seq,
                                       sorted((p, e.sha256) for p, e in tree.items())]).encode()).hexdigest()
        db.execute("INSERT INTO commits VALUES(?,?,?,?,?,?,?,?)",
                   (oid, repo_pk, parent, title, message, author, date, seq))
        db.executemany("INSERT INTO files VALUES(?,?,?,?,?,?)",
                       [(oid, e.path, e.sha256, e.size, int(e.lfs), e.oid) for e in tree.values()])
        db.execute("INSERT OR REPLACE INTO refs VALUES(?, 'branch', ?, ?)", (repo_pk, branch, oid))
        return oid


class _NoAliasLoader(yaml.SafeLoader):
    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            raise yaml.YAMLError("aliases are not allowed in card metadata")
        return super().compose_node(parent, index)


def _json_safe(value, depth: int = 0):
    if depth > 64:
        raise ValueError("card metadata nested too deep")
    if isinstance(value, dict):
        return {str(k): _json_safe(v, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_json_safe(v, depth + 1) for v in value]
    if isinstance(value, float) and (value != value or value in (float("inf"), float("-inf"))):
        return None
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return None  # bytes and other tagged types have no JSON form


@functools.lru_cache(maxsize=512)
def _read_card(path: Path) -> tuple[dict, str]:
    with open(path, "rb") as fh:
        text = fh.read(CARD_LIMIT).decode("utf-8", errors="replace")
    m = _FRONT_RE.match(text)
    if not m:
        return {}, text
    meta = {}
    if len(m.group(1)) <= FRONT_MATTER_LIMIT:
        try:
            parsed = yaml.load(m.group(1), Loader=_NoAliasLoader)  # noqa: S506 (a SafeLoader)
            meta = _json_safe(parsed) if isinstance(parsed, dict) else {}
        except (yaml.YAMLError, ValueError, RecursionError):
            meta = {}
    return meta, text[m.end():]


class BlobWriter:
    """One upload on its way into the blob store: hashed and written once, in the chunks it came in.

    `write` takes a list of chunks (one `writev`, no joining copy) and may run on a worker thread
    while the next chunks arrive; `finish` fsyncs, checks the sha256 and renames the temp file to
    its content address, then fsyncs the directory so the rename survives a crash.
    """

    def __init__(self, store: Store):
        self.store = store
        self.digest = hashlib.sha256()
        self.size = 0
        self.fd, self.tmp = tempfile.mkstemp(dir=store.tmp_dir)

    def write(self, chunks: list[bytes]) -> None:
        for chunk in chunks:
            self.digest.update(chunk)
        views = [memoryview(c) for c in chunks if c]
        while views:
            n = os.writev(self.fd, views)
            self.size += n
            while views and n >= len(views[0]):
                n -= len(views.pop(0))
            if views and n:
                views[0] = views[0][n:]

    def finish(self, expected_sha256: str | None = None, expected_size: int | None = None) -> tuple[str, int]:
        if expected_size is not None and self.size != expected_size:
            raise HubError(400, f"Upload truncated: got {self.size} of {expected_size} bytes")
        sha = self.digest.hexdigest()
        if expected_sha256 and sha != expected_sha256:
            raise HubError(400, f"Uploaded content has sha256 {sha}, expected {expected_sha256}")
        os.fsync(self.fd)
        os.close(self.fd)
        self.fd = None
        dest = self.store.blob_path(sha)
        dest.parent.mkdir(exist_ok=True)
        os.replace(self.tmp, dest)
        _fsync_dir(dest.parent)
        return sha, self.size

    def abort(self) -> None:
        """Drop the temp file unless `finish` moved it into place (safe to call twice)."""
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        if os.path.exists(self.tmp):
            os.unlink(self.tmp)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def check_oid(oid: str) -> str:
    if not isinstance(oid, str) or not _OID_RE.match(oid):
        raise HubError(400, f"Invalid oid {str(oid)[:80]!r}: expected a sha256 as 64 lowercase hex characters")
    return oid


def check_path(path: str) -> None:
    """A file path in a repo: relative, '/'-separated, no empty/'.'/'..' parts, no control
    characters or backslashes, at most MAX_PATH_BYTES bytes and MAX_PATH_DEPTH levels."""
    parts = path.split("/") if isinstance(path, str) else []
    if (not parts or path.startswith("/") or any(p in ("", ".", "..") for p in parts) or parts[0] == ".git"
            or _CONTROL.search(path) or "\\" in path):
        raise HubError(400, f"Invalid file path {str(path)[:200]!r}: relative, '/'-separated, no empty, '.' "
                            "or '..' parts, no control characters or backslashes")
    if len(path.encode()) > MAX_PATH_BYTES or len(parts) > MAX_PATH_DEPTH:
        raise HubError(400, f"File path too long: at most {MAX_PATH_BYTES} bytes and {MAX_PATH_DEPTH} levels")


def check_ref_name(name: str, kind: str = "branch") -> None:
    """git's ref-name rules (check-ref-format), plus: not a 40-hex commit sha, at most MAX_REF_BYTES."""
    bad = None
    if not isinstance(name, str) or not name:
        bad = "it is empty"
    elif _SHA_LIKE_RE.match(name):
        bad = "it looks like a commit sha (a 40-hex revision always means that commit)"
    elif name == "HEAD" or name.startswith("-"):
        bad = "it is 'HEAD' or starts with '-'"
    elif len(name.encode()) > MAX_REF_BYTES:
        bad = f"it is over {MAX_REF_BYTES} bytes"
    elif name.startswith("refs/"):
        bad = "it starts with 'refs/'"
    elif _CONTROL.search(name) or any(c in name for c in " ~^:?*[\\"):
        bad = "it contains a control character, space or one of ~^:?*[\\"
    elif ".." in name or "@{" in name or name == "@" or "//" in name:
        bad = "it contains '..', '@{' or '//', or is '@'"
    elif name.startswith("/") or name.endswith(("/", ".")):
        bad = "it starts with '/' or ends with '/' or '.'"
    elif any(part.startswith(".") or part.endswith(".lock") for part in name.split("/")):
        bad = "a component starts with '.' or ends with '.lock'"
    if bad:
        raise HubError(400, f"Invalid {kind} name {str(name)[:100]!r}: {bad}")
