"""The local hub's storage: SQLite metadata plus content-addressed blobs.

Why this shape: a commit must be all-or-nothing. Blob bytes are written first (to a temp file,
fsynced, then renamed to their sha256), and only then does one SQLite transaction insert the
commit, its file list and move the branch. A crash before that transaction leaves at most an
unreferenced blob; a crash inside it is rolled back by SQLite. Readers never see a partial revision.
"""

from __future__ import annotations

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
from typing import BinaryIO, Iterable

CHUNK = 1 << 20
REPO_TYPES = ("model", "dataset", "space")
_SHA_RE = re.compile(r"^[0-9a-f]{40}$")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
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
        return self.blob_dir / sha256[:2] / sha256

    def has_blob(self, sha256: str) -> bool:
        return self.blob_path(sha256).exists()

    def write_blob(self, stream: BinaryIO | Iterable[bytes], length: int | None = None,
                   expected_sha256: str | None = None) -> tuple[str, int]:
        """Stream bytes into the blob store; returns (sha256, size). Never holds the whole file."""
        digest = hashlib.sha256()
        size = 0
        fd, tmp = tempfile.mkstemp(dir=self.tmp_dir)
        try:
            with os.fdopen(fd, "wb") as out:
                for chunk in _chunks(stream, length):
                    digest.update(chunk)
                    out.write(chunk)
                    size += len(chunk)
                out.flush()
                os.fsync(out.fileno())
            if length is not None and size != length:
                raise HubError(400, f"Upload truncated: got {size} of {length} bytes")
            sha = digest.hexdigest()
            if expected_sha256 and sha != expected_sha256:
                raise HubError(400, f"Uploaded content has sha256 {sha}, expected {expected_sha256}")
            dest = self.blob_path(sha)
            dest.parent.mkdir(exist_ok=True)
            os.replace(tmp, dest)
            return sha, size
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    # -- repos ------------------------------------------------------------------------------
    def create_repo(self, repo_type: str, repo_id: str, private: bool, author: str) -> Repo:
        if repo_type not in REPO_TYPES:
            raise HubError(400, f"Unknown repo type {repo_type!r}; expected one of {REPO_TYPES}")
        parts = repo_id.split("/")
        if len(parts) != 2 or not all(_NAME_RE.match(p) for p in parts):
            raise HubError(400, f"Invalid repo id {repo_id!r}: expected 'namespace/name' "
                                "(letters, digits, '.', '_', '-')")
        with self._tx() as db:
            if db.execute("SELECT 1 FROM repos WHERE type=? AND repo_id=?", (repo_type, repo_id)).fetchone():
                raise HubError(409, f"You already created this {repo_type} repo: {repo_id}")
            created = now_iso()
            db.execute("INSERT INTO repos(type, repo_id, private, created_at) VALUES(?,?,?,?)",
                       (repo_type, repo_id, int(private), created))
        sha, size = self.write_blob([GITATTRIBUTES])
        self.commit(self.get_repo(repo_type, repo_id), "main", "initial commit", "", author,
                    put={".gitattributes": (sha, size, False, git_blob_sha1(GITATTRIBUTES))})
        return self.get_repo(repo_type, repo_id)

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
        """Branch, tag (also as refs/heads/…, refs/tags/…) or full commit sha → commit oid."""
        db = self._db()
        for kind, name in (("branch", revision), ("tag", revision),
                           ("branch", revision.removeprefix("refs/heads/")),
                           ("tag", revision.removeprefix("refs/tags/"))):
            row = db.execute("SELECT commit_oid FROM refs WHERE repo=? AND kind=? AND name=?",
                             (repo.pk, kind, name)).fetchone()
            if row:
                return row[0]
        if _SHA_RE.match(revision) and db.execute("SELECT 1 FROM commits WHERE oid=? AND repo=?",
                                                  (revision, repo.pk)).fetchone():
            return revision
        raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")

    def create_ref(self, repo: Repo, kind: str, name: str, revision: str) -> None:
        if not name or name.startswith("refs/") or ".." in name or name.endswith("/"):
            raise HubError(400, f"Invalid {kind} name {name!r}")
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
            if not self.has_blob(sha):
                raise HubError(400, f"File {path!r}: content sha256 {sha} was never uploaded")
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
                    raise HubError(404, f"Cannot delete {path!r}: no such file in {branch}", "EntryNotFound")
            for folder in delete_folders:
                prefix = folder.rstrip("/") + "/"
                for path in [p for p in tree if p.startswith(prefix)]:
                    del tree[path]
            for path, (sha, size, lfs, oid) in put.items():
                _check_path(path)
                tree[path] = FileEntry(path, sha, size, lfs, oid)
            date = now_iso()
            seq = db.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM commits").fetchone()[0]
            oid = hashlib.sha1(json.dumps([repo.pk, parent, title, message, date, seq,
                                           sorted((p, e.sha256) for p, e in tree.items())]).encode()).hexdigest()
            db.execute("INSERT INTO commits VALUES(?,?,?,?,?,?,?,?)",
                       (oid, repo.pk, parent, title, message, author, date, seq))
            db.executemany("INSERT INTO files VALUES(?,?,?,?,?,?)",
                           [(oid, e.path, e.sha256, e.size, int(e.lfs), e.oid) for e in tree.values()])
            db.execute("INSERT OR REPLACE INTO refs VALUES(?, 'branch', ?, ?)", (repo.pk, branch, oid))
        return oid


def _check_path(path: str) -> None:
    parts = path.split("/")
    if not path or path.startswith("/") or any(p in ("", ".", "..") for p in parts) or parts[0] == ".git":
        raise HubError(400, f"Invalid file path {path!r}")


def _chunks(stream: BinaryIO | Iterable[bytes], length: int | None) -> Iterable[bytes]:
    if hasattr(stream, "read"):
        remaining = length
        while remaining is None or remaining > 0:
            chunk = stream.read(CHUNK if remaining is None else min(CHUNK, remaining))
            if not chunk:
                return
            if remaining is not None:
                remaining -= len(chunk)
            yield chunk
    else:
        yield from stream
