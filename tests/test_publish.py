"""Publishing checkpoints as step revisions, synchronously and through the async queue."""

from __future__ import annotations

import os
import shutil
import threading
import time
from pathlib import Path

import pytest
from huggingface_hub import HfApi, ModelCard, hf_hub_download

from conftest import HUB_TOKEN, ROOT
from faults import FlakySlowProxy
from hubtools.publish import AsyncPublisher, PublishError, RevisionExistsError, publish_checkpoint
from model_cards import load_run_info

RUN_INFO = load_run_info(ROOT / "examples" / "grpo_step_card.yaml")


def make_checkpoint(root: Path, step: int) -> Path:
    folder = root / f"checkpoint-{step}"
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(bytes([step % 256]) * 4096)
    (folder / "config.json").write_text(f'{{"step": {step}}}')
    (folder / "optimizer.pt").write_bytes(b"optimizer state")
    (folder / "rng_state.pth").write_bytes(b"rng")
    (folder / "trainer_state.json").write_text("{}")
    return folder


def branches(api: HfApi, repo: str) -> dict[str, str]:
    return {b.name: b.target_commit for b in api.list_repo_refs(repo).branches}


def tree(api: HfApi, repo: str, revision: str) -> dict[str, str]:
    """path → git blob id: two revisions with equal trees hold the same files."""
    return {f.path: f.blob_id for f in api.list_repo_tree(repo, revision=revision, recursive=True)}


def test_publish_checkpoint_with_card_without_optimizer(api, repo_name, tmp_path):
    result = publish_checkpoint(make_checkpoint(tmp_path, 50), repo_name, "step-50", card_info=RUN_INFO)
    files = set(api.list_repo_files(repo_name, revision="step-50"))
    assert {"model.safetensors", "config.json", "trainer_state.json", "README.md"} <= files
    assert not {"optimizer.pt", "rng_state.pth"} & files
    card = ModelCard.load(hf_hub_download(repo_name, "README.md", revision="step-50"))
    assert card.data.base_model == RUN_INFO["base_model"]
    assert "50" in card.text and 'revision="step-50"' in card.text.replace("'", '"')
    assert branches(api, repo_name)["latest"] == result.commit_oid

    publish_checkpoint(make_checkpoint(tmp_path / "b", 60), repo_name, "step-60", include_optimizer=True)
    assert "optimizer.pt" in api.list_repo_files(repo_name, revision="step-60")
    assert tree(api, repo_name, "latest") == tree(api, repo_name, "step-60")


def test_overwrite_is_refused_unless_asked(api, repo_name, tmp_path):
    publish_checkpoint(make_checkpoint(tmp_path / "a", 2), repo_name, "step-2")
    with pytest.raises(RevisionExistsError, match="step-2"):
        publish_checkpoint(make_checkpoint(tmp_path / "b", 2), repo_name, "step-2")
    replacement = tmp_path / "c"
    replacement.mkdir()
    (replacement / "config.json").write_text('{"step": "replaced"}')
    publish_checkpoint(replacement, repo_name, "step-2", overwrite=True)
    assert set(api.list_repo_files(repo_name, revision="step-2")) == {".gitattributes", "config.json"}


def test_latest_only_moves_forward(api, repo_name, tmp_path):
    publish_checkpoint(make_checkpoint(tmp_path, 4), repo_name, "step-4")
    publish_checkpoint(make_checkpoint(tmp_path, 2), repo_name, "step-2")
    refs = branches(api, repo_name)
    assert refs["latest"] == refs["step-4"]
    assert open(hf_hub_download(repo_name, "config.json", revision="latest")).read() == '{"step": 4}'


def test_async_publisher_under_slow_hub_keeps_every_checkpoint_in_order(hub, repo_name, tmp_path):
    proxy = FlakySlowProxy(hub.url, delay=0.05)
    try:
        api = HfApi(endpoint=proxy.url, token=HUB_TOKEN)
        with AsyncPublisher(repo_name, api=api, retry_delay=0.01) as pub:
            for step in (1, 2, 3, 4, 5):
                folder = make_checkpoint(tmp_path, step)
                pub.submit(folder, f"step-{step}", card_info=RUN_INFO)
                shutil.rmtree(folder)  # the trainer rotates checkpoints: the queue must not care
            assert pub.pending > 0  # submit returned before the slow uploads finished
        assert [r.revision for r in pub.results] == [f"step-{s}" for s in (1, 2, 3, 4, 5)]
    finally:
        proxy.close()
    direct = HfApi(endpoint=hub.url, token=HUB_TOKEN)
    for step in (1, 2, 3, 4, 5):
        path = hf_hub_download(repo_name, "config.json", revision=f"step-{step}")
        assert open(path).read() == f'{{"step": {step}}}'
    assert tree(direct, repo_name, "latest") == tree(direct, repo_name, "step-5")


def test_transient_503s_are_retried(hub, repo_name, tmp_path):
    proxy = FlakySlowProxy(hub.url, fail_first=2, fail_path=r"/commit/")
    try:
        api = HfApi(endpoint=proxy.url, token=HUB_TOKEN)
        publish_checkpoint(make_checkpoint(tmp_path, 7), repo_name, "step-7", api=api, retry_delay=0.01)
        assert len(proxy.failed) == 2
    finally:
        proxy.close()
    assert "step-7" in branches(HfApi(endpoint=hub.url, token=HUB_TOKEN), repo_name)


def test_async_publisher_reports_failures_and_keeps_going(api, repo_name, tmp_path):
    publish_checkpoint(make_checkpoint(tmp_path / "pre", 1), repo_name, "step-1")
    pub = AsyncPublisher(repo_name, retry_delay=0.01)
    pub.submit(make_checkpoint(tmp_path / "a", 1), "step-1")  # already published: refused
    pub.submit(make_checkpoint(tmp_path / "b", 2), "step-2")
    with pytest.raises(PublishError, match="step-1"):
        pub.close()
    assert "step-2" in branches(api, repo_name)


@pytest.mark.timeout(120)
def test_submit_after_the_worker_died_raises_instead_of_hanging(repo_name, tmp_path):
    pub = AsyncPublisher(repo_name)
    pub._proc.kill()
    pub._proc.join()
    with pytest.raises(PublishError, match="not running"):
        pub.submit(make_checkpoint(tmp_path, 1), "step-1")
    pub.close()


def test_cli_publish_then_refused_overwrite_is_one_line(repo_name, tmp_path):
    import subprocess
    import sys
    folder = make_checkpoint(tmp_path, 3)
    cmd = [sys.executable, "-m", "hubtools.cli", "publish", str(folder), "--repo", repo_name, "--revision", "step-3",
           "--card-info", str(ROOT / "examples" / "grpo_step_card.yaml")]
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert first.returncode == 0 and f"{repo_name}/tree/step-3" in first.stdout, first.stderr[-2000:]
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert again.returncode == 2 and "Traceback" not in again.stderr
    assert "already has revision 'step-3'" in again.stderr


def test_main_is_refused_without_overwrite_once_it_holds_a_publication(api, repo_name, tmp_path):
    publish_checkpoint(make_checkpoint(tmp_path, 1), repo_name, "main")  # a fresh main has only .gitattributes
    with pytest.raises(RevisionExistsError, match="'main'"):
        publish_checkpoint(make_checkpoint(tmp_path, 2), repo_name, "main")
    publish_checkpoint(make_checkpoint(tmp_path, 3), repo_name, "main", overwrite=True)
    assert open(hf_hub_download(repo_name, "config.json", revision="main")).read() == '{"step": 3}'


@pytest.mark.timeout(120)
def test_latest_is_never_absent_while_it_moves(api, repo_name, tmp_path):
    publish_checkpoint(make_checkpoint(tmp_path, 1), repo_name, "step-1")
    errors, reads, stop = [], [], threading.Event()

    def reader():
        while not stop.is_set():
            try:
                hf_hub_download(repo_name, "config.json", revision="latest", cache_dir=tmp_path / "cache")
                reads.append(1)
            except Exception as exc:  # RevisionNotFoundError while `latest` is re-created, in the old way
                errors.append(exc)

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for step in (2, 3, 4, 5, 6):
            folder = make_checkpoint(tmp_path, step)
            (folder / f"only-in-{step}.txt").write_text("x")  # each move also deletes a file from `latest`
            publish_checkpoint(folder, repo_name, f"step-{step}")
    finally:
        stop.set()
        thread.join()
    assert not errors, errors[:3]
    assert len(reads) > 10
    assert tree(api, repo_name, "latest") == tree(api, repo_name, "step-6")
    assert open(hf_hub_download(repo_name, "config.json", revision="latest")).read() == '{"step": 6}'


def test_eval_results_on_the_newest_step_move_latest(api, repo_name, tmp_path):
    from hubtools.eval.factuality import score, write_card_results
    from hubtools.scoring import Grade
    info = {k: v for k, v in RUN_INFO.items() if k != "step"}  # the step comes from the revision
    for step in (1, 2):
        publish_checkpoint(make_checkpoint(tmp_path, step), repo_name, f"step-{step}", card_info=info)
    scores = score([[Grade.CORRECT, Grade.NOT_ATTEMPTED]])
    before = tree(api, repo_name, "latest")
    write_card_results(repo_name, "step-1", scores, "tests/qa", "test")  # not the newest step: latest stays
    assert tree(api, repo_name, "latest") == before
    write_card_results(repo_name, "step-2", scores, "tests/qa", "test")
    assert tree(api, repo_name, "latest") == tree(api, repo_name, "step-2") != before
    card = ModelCard.load(hf_hub_download(repo_name, "README.md", revision="latest"))
    assert card.data.training_step == 2 and {r.metric_type for r in card.data.eval_results} >= {"f1"}


@pytest.mark.timeout(120)
def test_a_raising_listener_is_reported_by_revision_and_counting_goes_on(api, repo_name, tmp_path):
    def on_published(result):
        if result.revision == "step-1":
            raise RuntimeError("listener boom")

    pub = AsyncPublisher(repo_name, retry_delay=0.01, on_published=on_published)
    pub.submit(make_checkpoint(tmp_path, 1), "step-1")
    pub.submit(make_checkpoint(tmp_path, 2), "step-2")
    with pytest.raises(PublishError, match="step-1: on_published callback failed: RuntimeError: listener boom"):
        pub.close()
    assert [r.revision for r in pub.results] == ["step-1", "step-2"]
    assert [rev for rev, _ in pub.failures] == ["step-1"]


@pytest.mark.timeout(120)
def test_a_killed_worker_fails_each_queued_revision_by_name(hub, repo_name, tmp_path):
    proxy = FlakySlowProxy(hub.url, delay=0.5)  # slow enough that every job is still queued
    try:
        pub = AsyncPublisher(repo_name, api=HfApi(endpoint=proxy.url, token=HUB_TOKEN), retry_delay=0.01)
        for step in (1, 2, 3):
            pub.submit(make_checkpoint(tmp_path, step), f"step-{step}")
        pub._proc.kill()
        started = time.monotonic()
        with pytest.raises(PublishError) as err:
            pub.flush()
        assert time.monotonic() - started < 10
        assert pub.failures == [(f"step-{s}", "publisher process exited with code -9") for s in (1, 2, 3)]
        assert all(f"step-{s}: publisher process exited with code -9" in str(err.value) for s in (1, 2, 3))
        with pytest.raises(PublishError, match="not running.*step-4 was not queued"):
            pub.submit(make_checkpoint(tmp_path, 4), "step-4")
        with pytest.raises(PublishError):
            pub.close()
    finally:
        proxy.close()


@pytest.mark.timeout(120)
def test_staging_is_a_snapshot_not_a_link(hub, repo_name, tmp_path):
    proxy = FlakySlowProxy(hub.url, delay=0.2)  # the worker uploads long after the rewrite below
    try:
        with AsyncPublisher(repo_name, api=HfApi(endpoint=proxy.url, token=HUB_TOKEN), retry_delay=0.01) as pub:
            folder = make_checkpoint(tmp_path, 1)
            weights = folder / "model.safetensors"
            original, inode = weights.read_bytes(), os.stat(weights).st_ino
            pub.submit(folder, "step-1")
            with open(weights, "r+b") as f:  # what safetensors' save_file does: truncate, rewrite, same inode
                f.truncate(0)
                f.write(b"rewritten after submit" * 100)
            assert os.stat(weights).st_ino == inode and pub.pending == 1
    finally:
        proxy.close()
    assert open(hf_hub_download(repo_name, "model.safetensors", revision="step-1"), "rb").read() == original
