"""Publishing checkpoints to the Hub, one revision (branch) per saved step, each with its own card.

Why not Trainer's `hub_strategy`: it pushes to one revision only and skips a save while the
previous push is still running. Here every checkpoint becomes branch `step-N` in one atomic
commit (weights + card), transient Hub failures are retried with backoff, and `AsyncPublisher`
queues checkpoints for a background process so training never waits and no checkpoint is dropped.
"""

from __future__ import annotations

import collections
import fcntl
import fnmatch
import itertools
import logging
import os
import pickle
import queue
import random
import re
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, TypeVar

from huggingface_hub import CommitOperationAdd, CommitOperationCopy, CommitOperationDelete, HfApi
from huggingface_hub.errors import HfHubHTTPError
from huggingface_hub.hf_api import RepoFile

log = logging.getLogger("hubtools.publish")
T = TypeVar("T")

# Trainer/DeepSpeed state that a downstream user never needs; left out unless asked for.
TRAINING_STATE_PATTERNS = ("optimizer.pt", "optimizer.bin", "scheduler.pt", "scaler.pt", "rng_state*.pth",
                           "global_step*/*", "*/optimizer.pt", "latest")
# What a training run's output folder holds besides the model: never published with it.
RUN_ARTIFACT_PATTERNS = ("checkpoint-*/*", "runs/*", "resume-*/*")
LATEST_BRANCH = "latest"
_STEP_RE = re.compile(r"^step-(\d+)$")


class RevisionExistsError(RuntimeError):
    """The revision is already published and overwriting was not asked for."""


class PublishError(RuntimeError):
    """One or more queued publications failed after all retries."""


@dataclass(frozen=True)
class PublishResult:
    repo_id: str
    revision: str
    commit_oid: str
    url: str


# -- retries --------------------------------------------------------------------------------
def is_transient(exc: BaseException) -> bool:
    """5xx, 429 and dropped connections are worth retrying; 4xx (bad request, auth, conflict) are not."""
    if isinstance(exc, HfHubHTTPError) and exc.response is not None:
        return exc.response.status_code >= 500 or exc.response.status_code == 429
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return True
    name = type(exc).__name__
    return name in {"ConnectError", "ReadError", "WriteError", "RemoteProtocolError", "ReadTimeout",
                    "ConnectTimeout", "WriteTimeout", "PoolTimeout"}


def with_retries(fn: Callable[[], T], *, what: str, attempts: int = 6, base_delay: float = 1.0,
                 max_delay: float = 30.0) -> T:
    """Call `fn`, retrying transient failures with exponential backoff and jitter."""
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except Exception as exc:
            if attempt == attempts or not is_transient(exc):
                raise
            delay = min(max_delay, base_delay * 2 ** (attempt - 1)) * (0.5 + random.random() / 2)
            log.warning("%s failed (%s: %s); retry %d/%d in %.1fs", what, type(exc).__name__,
                        str(exc).splitlines()[0][:200], attempt, attempts - 1, delay)
            time.sleep(delay)
    raise AssertionError("unreachable")


# -- one checkpoint -------------------------------------------------------------------------
def checkpoint_files(folder: str | os.PathLike, include_optimizer: bool = False) -> dict[str, Path]:
    """Files of a checkpoint folder to publish, keyed by their path in the repo."""
    root = Path(folder)
    if not root.is_dir():
        raise FileNotFoundError(f"Checkpoint folder not found: {root}")
    out = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        if rel.startswith(".") or "/." in rel or any(fnmatch.fnmatch(rel, p) for p in RUN_ARTIFACT_PATTERNS):
            continue
        if not include_optimizer and any(fnmatch.fnmatch(rel, pat) for pat in TRAINING_STATE_PATTERNS):
            continue
        out[rel] = path
    if not out:
        raise ValueError(f"Checkpoint folder {root} has nothing to publish")
    return out


def step_of(revision: str) -> int | None:
    m = _STEP_RE.match(revision)
    return int(m.group(1)) if m else None


def publish_checkpoint(folder: str | os.PathLike, repo_id: str, revision: str, *,
                       card_info: dict | None = None, include_optimizer: bool = False,
                       overwrite: bool = False, move_latest: bool = True, private: bool = False,
                       commit_message: str | None = None,
                       extra_files: dict[str, bytes | Callable[[], bytes | None]] | None = None,
                       api: HfApi | None = None, retry_delay: float = 1.0) -> PublishResult:
    """Publish `folder` to `repo_id` at branch `revision` in one commit, with a model card.

    The branch is created if missing; an existing one (`main` included) is refused unless
    `overwrite`, in which case files absent from `folder` are deleted in the same commit. A branch
    holding nothing but `.gitattributes` (a fresh repo's `main`) does not count as published.
    `extra_files` (path → bytes, or a callable making them, so that e.g. a plot is drawn in the
    publisher's process) are added alongside. With `move_latest`, branch `latest` follows when this
    is the highest `step-N` published so far (see `advance_latest`).
    """
    api = api or HfApi()
    files = checkpoint_files(folder, include_optimizer)
    retry = lambda fn, what: with_retries(fn, what=f"{what} ({repo_id}@{revision})", base_delay=retry_delay)  # noqa: E731

    retry(lambda: api.create_repo(repo_id, private=private, exist_ok=True), "create repo")
    refs = retry(lambda: api.list_repo_refs(repo_id), "list refs")
    if revision in {t.name for t in refs.tags}:
        raise RevisionExistsError(f"{revision!r} is a tag in {repo_id}; publish to a branch name instead")
    if not overwrite and revision in {b.name for b in refs.branches} and \
            set(retry(lambda: api.list_repo_files(repo_id, revision=revision), "list files")) - {".gitattributes"}:
        raise RevisionExistsError(f"{repo_id} already has revision {revision!r}; pass overwrite=True "
                                  "(CLI: --overwrite) to replace it")

    ops: list = [CommitOperationAdd(path_in_repo=rel, path_or_fileobj=str(p)) for rel, p in files.items()]
    for rel, data in (extra_files or {}).items():
        data = data() if callable(data) else data
        if data is not None:
            ops.append(CommitOperationAdd(path_in_repo=rel, path_or_fileobj=data))
    if card_info is not None:
        from model_cards import render_model_card
        info = {"loading": {"kind": "full"}, **card_info, "repo_id": repo_id, "revision": revision}
        if step_of(revision) is not None:
            info.setdefault("step", step_of(revision))
        ops.append(CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=str(render_model_card(info)).encode()))

    def commit() -> str:
        api.create_branch(repo_id, branch=revision, exist_ok=True)
        new_paths = {op.path_in_repo for op in ops}
        stale = [f for f in api.list_repo_files(repo_id, revision=revision)
                 if f not in new_paths and f != ".gitattributes"]
        info = api.create_commit(repo_id, operations=ops + [CommitOperationDelete(f) for f in stale],
                                 commit_message=commit_message or f"Publish {revision}", revision=revision)
        return info.oid

    oid = retry(commit, "commit")
    if move_latest:
        retry(lambda: advance_latest(api, repo_id, revision), "move latest")
    endpoint = api.endpoint.rstrip("/")
    return PublishResult(repo_id, revision, oid, f"{endpoint}/{repo_id}/tree/{revision}")


def advance_latest(api: HfApi, repo_id: str, revision: str, attempts: int = 5) -> bool:
    """Make branch `latest` hold exactly the files of `revision` if that is the highest `step-N`.

    Why a commit and not delete + recreate: the Hub cannot move a branch, and a deleted `latest`
    fails every `from_pretrained(revision="latest")` in that window. The commit copies files from
    the step's commit (LFS files by oid, nothing re-uploaded) and deletes what the step lacks. It is
    made on top of the `latest` head read together with the step branches (`parent_commit`), so a
    concurrent writer makes it fail and be recomputed: `latest` never moves backwards.
    Returns whether `latest` changed.
    """
    if step_of(revision) is None:
        return False
    for attempt in range(1, attempts + 1):
        heads = {b.name: b.target_commit for b in api.list_repo_refs(repo_id).branches}
        if revision not in heads or step_of(revision) < max(s for s in map(step_of, heads) if s is not None):
            return False
        source, current = heads[revision], heads.get(LATEST_BRANCH)
        try:
            if current is None:
                api.create_branch(repo_id, branch=LATEST_BRANCH, revision=source)
                return True
            want, have = _blob_ids(api, repo_id, source), _blob_ids(api, repo_id, current)
            ops = [CommitOperationCopy(src_path_in_repo=p, path_in_repo=p, src_revision=source)
                   for p, oid in want.items() if have.get(p) != oid]
            ops += [CommitOperationDelete(path_in_repo=p) for p in have.keys() - want.keys()]
            if not ops:
                return False
            api.create_commit(repo_id, operations=ops, revision=LATEST_BRANCH, parent_commit=current,
                              commit_message=f"Move {LATEST_BRANCH} to {revision} ({source[:12]})")
            return True
        except HfHubHTTPError as exc:  # 409/412: `latest` was created or moved meanwhile; look again
            if attempt == attempts or exc.response is None or exc.response.status_code not in (409, 412):
                raise
    raise AssertionError("unreachable")


def _blob_ids(api: HfApi, repo_id: str, revision: str) -> dict[str, str]:
    return {f.path: f.blob_id for f in api.list_repo_tree(repo_id, revision=revision, recursive=True)
            if isinstance(f, RepoFile)}


# -- many checkpoints, in the background ----------------------------------------------------
_FICLONE = 0x40049409  # linux/fs.h: share the source's extents copy-on-write


def snapshot_copy(src: Path, dst: Path) -> None:
    """Copy `src` to `dst` so that a later in-place rewrite of `src` cannot change `dst`.

    Not a hard link: `safetensors.save_file` truncates and rewrites the same inode, which would change
    a checkpoint while it is uploaded. Cheapest first: a reflink (instant and free of extra space on
    btrfs/XFS), then in-kernel `copy_file_range`, then a chunked copy.
    """
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        try:
            fcntl.ioctl(fout.fileno(), _FICLONE, fin.fileno())
            return
        except OSError:
            pass
        try:
            while os.copy_file_range(fin.fileno(), fout.fileno(), 1 << 30):
                pass
            return
        except (OSError, AttributeError):  # AttributeError: no copy_file_range on this OS
            fin.seek(0)
            fout.seek(0)
            fout.truncate()
        shutil.copyfileobj(fin, fout, 1 << 20)


@dataclass
class _Job:
    staged: Path
    revision: str
    kwargs: dict
    transform: Callable[[Path, Path], None] | None = None


def _publisher_process(jobs, done, repo_id: str, endpoint: str | None, token: str | None, private: bool,
                       retry_delay: float) -> None:
    """The worker: publishes pickled `_Job`s in order until it gets None; reports ("ok"|"error", revision, payload)."""
    try:
        os.nice(19)  # the training loop wins the CPU whenever both want it
    except OSError:
        pass
    api = HfApi(endpoint=endpoint, token=token)
    while (data := jobs.get()) is not None:
        job = pickle.loads(data)
        out = job.staged.with_name(job.staged.name + ".out")
        try:
            folder = job.staged
            if job.transform is not None:
                out.mkdir()
                job.transform(job.staged, out)
                folder = out
            result = publish_checkpoint(folder, repo_id, job.revision, api=api, include_optimizer=True,
                                        private=private, retry_delay=retry_delay, **job.kwargs)
            done.put(("ok", job.revision, result))
        except Exception as exc:
            done.put(("error", job.revision, f"{type(exc).__name__}: {exc}"))
        finally:
            shutil.rmtree(job.staged, ignore_errors=True)
            shutil.rmtree(out, ignore_errors=True)


class AsyncPublisher:
    """Publish checkpoints from a background process, in submission order, never dropping one.

    Why a process, not a thread: uploading, hashing and rendering cards hold the GIL often enough
    to slow a Python training loop; a separate, low-priority process does not. `submit` only
    snapshots the checkpoint's files into a staging folder (`snapshot_copy`) — so the trainer may
    rewrite or rotate its checkpoint right away — and queues it. Failures (after retries) are kept
    in `failures` as (revision, reason) and raised by `flush()`; later checkpoints still go out.

    Why `flush` cannot hang: the revisions not yet reported are kept in FIFO order (the worker
    publishes in order), and a results-listener thread fails all of them, by name, once the worker
    has died or the listener itself stops for any reason; from then on `submit` refuses. Both sides
    change that state under one lock, so no job can slip in unaccounted.
    """

    def __init__(self, repo_id: str, *, api: HfApi | None = None, include_optimizer: bool = False,
                 private: bool = False, retry_delay: float = 1.0,
                 on_published: Callable[[PublishResult], None] | None = None):
        import multiprocessing
        api = api or HfApi()
        self.repo_id, self.include_optimizer, self.on_published = repo_id, include_optimizer, on_published
        self.results: list[PublishResult] = []
        self.failures: list[tuple[str, str]] = []
        self._staging = Path(tempfile.mkdtemp(prefix="hubtools-publish-"))
        self._counter = itertools.count()
        self._outstanding: collections.deque[str] = collections.deque()  # submitted, not yet reported
        self._dead: str | None = None  # why no more results will come, once that is so
        self._cond = threading.Condition()
        ctx = multiprocessing.get_context("spawn")
        self._jobs, self._done = ctx.Queue(), ctx.Queue()
        self._proc = ctx.Process(target=_publisher_process, name="hubtools-publisher", daemon=True,
                                 args=(self._jobs, self._done, repo_id, api.endpoint, api.token, private, retry_delay))
        self._proc.start()
        self._listener = threading.Thread(target=self._listen, name="hubtools-publisher-results", daemon=True)
        self._listener.start()

    def submit(self, folder: str | os.PathLike, revision: str, card_info: dict | None = None,
               extra_files: dict[str, bytes | Callable[[], bytes | None]] | None = None, overwrite: bool = False,
               move_latest: bool = True, transform: Callable[[Path, Path], None] | None = None) -> None:
        """Queue a snapshot of `folder` for `revision`.

        `transform(staged, out)`, if given, runs in the worker and writes the folder to publish into
        `out` (e.g. LoRA adapters merged into their base model), so the caller does not wait for it.
        It and callables in `extra_files` must be picklable (a module-level function or a partial).
        """
        staged = self._staging / f"{next(self._counter):05d}-{revision}"
        for rel, src in checkpoint_files(folder, self.include_optimizer).items():
            (staged / rel).parent.mkdir(parents=True, exist_ok=True)
            snapshot_copy(src, staged / rel)
        # pickled here: the queue's feeder thread would only print an unpicklable job, and lose it
        data = pickle.dumps(_Job(staged, revision, dict(card_info=card_info, extra_files=extra_files,
                                                        overwrite=overwrite, move_latest=move_latest), transform))
        with self._cond:  # the listener fails outstanding jobs under this lock: ours is either counted or refused
            dead = self._dead or (None if self._proc.is_alive() else self._exit_reason())
            if dead:
                shutil.rmtree(staged, ignore_errors=True)
                raise PublishError(f"the publisher for {self.repo_id} is not running ({dead}); "
                                   f"{revision} was not queued")
            self._outstanding.append(revision)
            self._jobs.put(data)

    @property
    def pending(self) -> int:
        with self._cond:
            return len(self._outstanding)

    def _listen(self) -> None:
        """Relay the worker's reports; once they end, for whatever reason, fail what is still outstanding."""
        try:
            reason = self._relay()
        except BaseException as exc:  # the listener itself broke: flush must not wait for it
            log.exception("publisher results listener for %s failed", self.repo_id)
            reason = f"the results listener failed: {type(exc).__name__}: {exc}"
        with self._cond:  # whatever the worker still held is lost: say which, and stop accepting work
            self._dead = reason
            self.failures += [(rev, reason) for rev in self._outstanding]
            self._outstanding.clear()
            self._cond.notify_all()

    def _relay(self) -> str:
        """Record each report until the worker is gone; returns why no more will come."""
        while True:
            alive = self._proc.is_alive()  # read before waiting: a dead worker's last reports are queued by then
            try:
                status, revision, payload = self._done.get(timeout=0.5)
            except queue.Empty:
                if not alive:
                    return self._exit_reason()
                continue
            self._record(status, revision, payload)

    def _exit_reason(self) -> str:
        return f"publisher process exited with code {self._proc.exitcode}"

    def _record(self, status: str, revision: str, payload) -> None:
        failure = None
        if status == "ok":
            log.info("published %s", payload.url)
            if self.on_published:
                try:
                    self.on_published(payload)
                except Exception as exc:  # the caller's bug: report it, keep counting
                    log.exception("on_published for %s@%s failed", self.repo_id, revision)
                    failure = f"on_published callback failed: {type(exc).__name__}: {exc}"
        else:
            log.error("publishing %s@%s failed: %s", self.repo_id, revision, payload)
            failure = payload
        with self._cond:
            self._outstanding.popleft()
            if status == "ok":
                self.results.append(payload)
            if failure is not None:
                self.failures.append((revision, failure))
            self._cond.notify_all()

    def flush(self) -> list[PublishResult]:
        """Wait until every submitted checkpoint is published or failed; raise if any failed."""
        with self._cond:
            self._cond.wait_for(lambda: not self._outstanding)
        if self.failures:
            lines = "; ".join(f"{rev}: {err}" for rev, err in self.failures)
            raise PublishError(f"{len(self.failures)} checkpoint(s) failed to publish to {self.repo_id}: {lines}")
        return list(self.results)

    def close(self) -> list[PublishResult]:
        try:
            return self.flush()
        finally:
            self._jobs.put(None)
            self._proc.join(30)
            if self._proc.is_alive():
                self._proc.kill()
            shutil.rmtree(self._staging, ignore_errors=True)

    def __enter__(self) -> "AsyncPublisher":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
