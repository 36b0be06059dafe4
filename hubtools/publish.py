"""Publishing checkpoints to the Hub, one revision (branch) per saved step, each with its own card.

Why not Trainer's `hub_strategy`: it pushes to one revision only and skips a save while the
previous push is still running. Here every checkpoint becomes branch `step-N` in one atomic
commit (weights + card), transient Hub failures are retried with backoff, and `AsyncPublisher`
queues checkpoints on a background thread so training never waits and no checkpoint is dropped.
"""

from __future__ import annotations

import fnmatch
import itertools
import logging
import os
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

from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi
from huggingface_hub.errors import HfHubHTTPError

log = logging.getLogger("hubtools.publish")
T = TypeVar("T")

# Trainer/DeepSpeed state that a downstream user never needs; left out unless asked for.
TRAINING_STATE_PATTERNS = ("optimizer.pt", "optimizer.bin", "scheduler.pt", "scaler.pt", "rng_state*.pth",
                           "global_step*/*", "*/optimizer.pt", "latest")
# What a training run's output folder holds besides the model: never published with it.
RUN_ARTIFACT_PATTERNS = ("checkpoint-*/*", "runs/*", "resume-*/*", "*-merged/*")
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

    The branch is created if missing; an existing one is refused unless `overwrite`, in which case
    files absent from `folder` are deleted in the same commit. `extra_files` (path → bytes, or a
    callable making them, so that e.g. a plot is drawn on the publisher's thread) are added alongside. With `move_latest`, branch `latest` is moved here when
    this is the highest `step-N` published so far.
    """
    api = api or HfApi()
    files = checkpoint_files(folder, include_optimizer)
    retry = lambda fn, what: with_retries(fn, what=f"{what} ({repo_id}@{revision})", base_delay=retry_delay)  # noqa: E731

    retry(lambda: api.create_repo(repo_id, private=private, exist_ok=True), "create repo")
    refs = retry(lambda: api.list_repo_refs(repo_id), "list refs")
    if revision in {b.name for b in refs.branches} and not overwrite and revision != "main":
        raise RevisionExistsError(f"{repo_id} already has revision {revision!r}; pass overwrite=True "
                                  "(CLI: --overwrite) to replace it")
    if revision in {t.name for t in refs.tags}:
        raise RevisionExistsError(f"{revision!r} is a tag in {repo_id}; publish to a branch name instead")

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
    if move_latest and step_of(revision) is not None:
        retry(lambda: _move_latest(api, repo_id, revision), "move latest")
    endpoint = api.endpoint.rstrip("/")
    return PublishResult(repo_id, revision, oid, f"{endpoint}/{repo_id}/tree/{revision}")


def _move_latest(api: HfApi, repo_id: str, revision: str) -> None:
    """Point branch `latest` at `revision` if it is the highest step-N branch."""
    branches = api.list_repo_refs(repo_id).branches
    steps = [s for s in (step_of(b.name) for b in branches) if s is not None]
    if step_of(revision) < max(steps):
        return
    target = next(b.target_commit for b in branches if b.name == revision)
    current = next((b.target_commit for b in branches if b.name == LATEST_BRANCH), None)
    if current == target:
        return
    if current is not None:  # the Hub cannot move a branch: `latest` is briefly absent here
        api.delete_branch(repo_id, branch=LATEST_BRANCH)
    api.create_branch(repo_id, branch=LATEST_BRANCH, revision=target, exist_ok=True)


# -- many checkpoints, in the background ----------------------------------------------------
@dataclass
class _Job:
    staged: Path
    revision: str
    kwargs: dict


def _publisher_process(jobs, done, repo_id: str, endpoint: str | None, token: str | None, private: bool,
                       retry_delay: float) -> None:
    """The worker: publishes jobs in order until it gets None; reports ("ok"|"error", revision, payload)."""
    try:
        os.nice(19)  # the training loop wins the CPU whenever both want it
    except OSError:
        pass
    api = HfApi(endpoint=endpoint, token=token)
    while (job := jobs.get()) is not None:
        try:
            result = publish_checkpoint(job.staged, repo_id, job.revision, api=api, include_optimizer=True,
                                        private=private, retry_delay=retry_delay, **job.kwargs)
            done.put(("ok", job.revision, result))
        except Exception as exc:
            done.put(("error", job.revision, f"{type(exc).__name__}: {exc}"))
        finally:
            shutil.rmtree(job.staged, ignore_errors=True)


class AsyncPublisher:
    """Publish checkpoints from a background process, in submission order, never dropping one.

    Why a process, not a thread: uploading, hashing and rendering cards hold the GIL often enough
    to slow a Python training loop; a separate, low-priority process does not. `submit` only
    hard-links (or copies) the checkpoint's files into a staging folder — so the trainer may rotate
    its checkpoint right away — and queues it. Failures (after retries) are kept in `failures` and
    raised by `flush()`; later checkpoints still go out.
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
        self._submitted = self._finished = 0
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
               move_latest: bool = True) -> None:
        """Queue `folder` for `revision`. Callables in `extra_files` must be picklable (e.g. a partial)."""
        if not self._proc.is_alive():
            raise PublishError(f"the publisher process for {self.repo_id} is not running "
                               f"(exit code {self._proc.exitcode}); {revision} was not queued")
        staged = self._staging / f"{next(self._counter):05d}-{revision}"
        for rel, src in checkpoint_files(folder, self.include_optimizer).items():
            dst = staged / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(src, dst)
            except OSError:
                shutil.copy2(src, dst)
        with self._cond:
            self._submitted += 1
        self._jobs.put(_Job(staged, revision, dict(card_info=card_info, extra_files=extra_files,
                                                   overwrite=overwrite, move_latest=move_latest)))

    @property
    def pending(self) -> int:
        with self._cond:
            return self._submitted - self._finished

    def _listen(self) -> None:
        while True:
            try:
                status, revision, payload = self._done.get(timeout=1.0)
            except queue.Empty:
                if self._proc.is_alive():
                    continue
                with self._cond:  # the worker died: whatever it still held is lost, say so
                    lost = self._submitted - self._finished
                    self.failures += [("?", f"publisher process exited with code {self._proc.exitcode}")] * lost
                    self._finished = self._submitted
                    self._cond.notify_all()
                return
            if status == "ok":
                self.results.append(payload)
                log.info("published %s", payload.url)
                if self.on_published:
                    self.on_published(payload)
            else:
                log.error("publishing %s@%s failed: %s", self.repo_id, revision, payload)
                self.failures.append((revision, payload))
            with self._cond:
                self._finished += 1
                self._cond.notify_all()

    def flush(self) -> list[PublishResult]:
        """Wait until every submitted checkpoint is published; raise if any failed."""
        with self._cond:
            self._cond.wait_for(lambda: self._finished >= self._submitted)
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
            shutil.rmtree(self._staging, ignore_errors=True)

    def __enter__(self) -> "AsyncPublisher":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
