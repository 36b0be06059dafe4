"""`hubtools hub mirror`: copy repos between two Hub endpoints with their history, branches and tags.

Why replay commits instead of copying a snapshot: step revisions share history with `main`, tags
point into it, and a mirror should let `from_pretrained(repo, revision="step-50")` and the commit
log read the same on both sides. Every replayed commit records its source in a
`Mirrored-from: <sha>` trailer, so a re-run maps what was already copied and only sends what is new.
Commit ids differ between hubs (the destination computes its own); everything else matches.
"""

from __future__ import annotations

import re
import shutil
import tempfile

from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi
from huggingface_hub.hf_api import RepoFile

from hubtools.publish import with_retries

_TRAILER = re.compile(r"^Mirrored-from: ([0-9a-f]{40})$", re.M)


def mirror(src: str, dst: str, repos: list[str] | None = None, repo_type: str = "model",
           src_token: str | None = None, dst_token: str | None = None) -> list[str]:
    """Mirror `repos` (default: every repo of `repo_type` on `src`) from `src` to `dst`; returns a report."""
    s, d = HfApi(endpoint=src, token=src_token), HfApi(endpoint=dst, token=dst_token)
    if not repos:
        listing = s.list_models() if repo_type == "model" else s.list_datasets()
        repos = [r.id for r in listing]
    cache = tempfile.mkdtemp(prefix="hubtools-mirror-")
    try:
        return [line for repo in repos for line in _RepoMirror(s, d, repo, repo_type, cache).run()]
    finally:
        shutil.rmtree(cache, ignore_errors=True)


class _RepoMirror:
    def __init__(self, s: HfApi, d: HfApi, repo: str, repo_type: str, cache: str):
        self.s, self.d, self.repo, self.t, self.cache = s, d, repo, repo_type, cache
        self.mapping: dict[str, str] = {}  # source commit → destination commit
        self.report: list[str] = []

    def run(self) -> list[str]:
        kw = dict(repo_type=self.t)
        private = self.s.repo_info(self.repo, **kw).private
        with_retries(lambda: self.d.create_repo(self.repo, private=private, exist_ok=True, **kw),
                     what=f"create {self.repo}")
        self._learn_mapping()
        src_refs = self.s.list_repo_refs(self.repo, **kw)
        branches = sorted(src_refs.branches, key=lambda b: b.name != "main")
        for branch in branches:
            self._mirror_branch(branch.name)
        dst_tags = {t.name for t in self.d.list_repo_refs(self.repo, **kw).tags}
        for tag in src_refs.tags:
            if tag.name in dst_tags:
                continue
            target = self.mapping.get(tag.target_commit)
            if target is None:
                self.report.append(f"{self.repo}: tag {tag.name} skipped: its commit is on no branch")
                continue
            self.d.create_tag(self.repo, tag=tag.name, revision=target, **kw)
            self.report.append(f"{self.repo}: tag {tag.name} created")
        return self.report or [f"{self.repo}: up to date"]

    def _learn_mapping(self) -> None:
        kw = dict(repo_type=self.t)
        for branch in self.d.list_repo_refs(self.repo, **kw).branches:
            for c in self.d.list_repo_commits(self.repo, revision=branch.name, **kw):
                m = _TRAILER.search(c.message or "")
                if m:
                    self.mapping[m.group(1)] = c.commit_id
        # Both hubs create a repo with an initial commit of their own: map root to root.
        src_root = self.s.list_repo_commits(self.repo, **kw)[-1].commit_id
        self.mapping.setdefault(src_root, self.d.list_repo_commits(self.repo, **kw)[-1].commit_id)

    def _mirror_branch(self, branch: str) -> None:
        kw = dict(repo_type=self.t)
        history = [c for c in reversed(self.s.list_repo_commits(self.repo, revision=branch, **kw))]
        base = max(i for i, c in enumerate(history) if c.commit_id in self.mapping)
        dst_branches = {b.name: b.target_commit for b in self.d.list_repo_refs(self.repo, **kw).branches}
        base_dst = self.mapping[history[base].commit_id]
        if dst_branches.get(branch) != base_dst:
            if branch in dst_branches:
                if dst_branches[branch] not in self.mapping.values():  # someone committed on the destination
                    self.report.append(f"{self.repo}: branch {branch} skipped: the destination has commits the "
                                       "source lacks; refusing to rewrite it")
                    return
                self.d.delete_branch(self.repo, branch=branch, **kw)  # a moved branch (e.g. `latest`)
            self.d.create_branch(self.repo, branch=branch, revision=base_dst, **kw)
        todo = history[base + 1:]
        for prev, commit in zip(history[base:], todo):
            self._replay(branch, prev.commit_id, commit)
        if todo or dst_branches.get(branch) != base_dst:
            self.report.append(f"{self.repo}: branch {branch} ← {len(todo)} commit(s)")

    def _tree(self, sha: str) -> dict[str, RepoFile]:
        return {f.path: f for f in self.s.list_repo_tree(self.repo, revision=sha, recursive=True, repo_type=self.t)
                if isinstance(f, RepoFile)}

    def _replay(self, branch: str, parent_sha: str, commit) -> None:
        before, after = self._tree(parent_sha), self._tree(commit.commit_id)
        ops: list = []
        for path, f in after.items():
            if path in before and before[path].blob_id == f.blob_id:
                continue
            local = self.s.hf_hub_download(self.repo, path, revision=commit.commit_id, repo_type=self.t,
                                           cache_dir=self.cache)
            ops.append(CommitOperationAdd(path_in_repo=path, path_or_fileobj=local))
        ops += [CommitOperationDelete(path) for path in before if path not in after]
        message = f"{commit.message or ''}\n\nMirrored-from: {commit.commit_id}".lstrip()
        parent_dst = self.mapping[parent_sha]

        def push() -> str:
            # An empty source commit maps onto the destination's parent (the Hub skips empty commits).
            return self.d.create_commit(self.repo, operations=ops, commit_message=commit.title or "mirror",
                                        commit_description=message, revision=branch, parent_commit=parent_dst,
                                        repo_type=self.t).oid

        self.mapping[commit.commit_id] = with_retries(push, what=f"replay {commit.commit_id[:8]} of {self.repo}")
