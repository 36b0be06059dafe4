"""The local hub against the real clients: huggingface_hub, transformers, datasets."""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
import time

import pytest
from huggingface_hub import HfApi, ModelCard, hf_hub_download, snapshot_download
from huggingface_hub.errors import (
    EntryNotFoundError, HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError,
)

from conftest import HUB_TOKEN, HubProcess
from hubtools.hubenv import free_port


def _write_folder(tmp_path, big_mb: int = 11):
    folder = tmp_path / "ckpt"
    (folder / "sub").mkdir(parents=True)
    (folder / "config.json").write_text('{"a": 1}')
    (folder / "sub" / "notes.txt").write_text("hello hub")
    big = os.urandom(big_mb << 20)
    (folder / "model.safetensors").write_bytes(big)
    return folder, big


def test_repo_lifecycle_upload_refs_and_downloads(api, repo_name, tmp_path):
    url = api.create_repo(repo_name)
    assert url.repo_id == repo_name
    assert api.repo_exists(repo_name) and not api.repo_exists(repo_name + "-nope")
    with pytest.raises(HfHubHTTPError) as e:
        api.create_repo(repo_name)
    assert e.value.response.status_code == 409
    api.create_repo(repo_name, exist_ok=True)

    folder, big = _write_folder(tmp_path)
    first = api.upload_folder(repo_id=repo_name, folder_path=folder, commit_message="weights v1")
    api.create_branch(repo_name, branch="step-1")
    api.create_tag(repo_name, tag="v1", tag_message="first")
    (folder / "config.json").write_text('{"a": 2}')
    second = api.upload_file(path_or_fileobj=str(folder / "config.json"), path_in_repo="config.json",
                             repo_id=repo_name, commit_message="bump config")

    refs = api.list_repo_refs(repo_name)
    branches = {b.name: b.target_commit for b in refs.branches}
    assert branches == {"main": second.oid, "step-1": first.oid}
    assert {t.name: t.target_commit for t in refs.tags} == {"v1": first.oid}
    titles = [c.title for c in api.list_repo_commits(repo_name)]
    assert titles == ["bump config", "weights v1", "initial commit"]

    # The same file at branch, tag, sha and main.
    for rev, expected in (("step-1", '{"a": 1}'), ("v1", '{"a": 1}'), (first.oid, '{"a": 1}'),
                          ("main", '{"a": 2}')):
        assert open(hf_hub_download(repo_name, "config.json", revision=rev)).read() == expected
    snap = snapshot_download(repo_name, revision="v1")
    assert open(os.path.join(snap, "model.safetensors"), "rb").read() == big
    assert open(os.path.join(snap, "sub", "notes.txt")).read() == "hello hub"

    info = api.model_info(repo_name, revision="step-1", files_metadata=True)
    sizes = {s.rfilename: s.size for s in info.siblings}
    assert sizes["model.safetensors"] == len(big) and info.sha == first.oid
    lfs = next(s.lfs for s in info.siblings if s.rfilename == "model.safetensors")
    import hashlib
    assert lfs.sha256 == hashlib.sha256(big).hexdigest()


def test_hub_error_codes_map_to_client_exceptions(api, repo_name):
    api.create_repo(repo_name)
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download(repo_name + "-missing", "x.txt")
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download(repo_name, ".gitattributes", revision="no-such-branch")
    with pytest.raises(EntryNotFoundError):
        hf_hub_download(repo_name, "missing.txt")
    with pytest.raises(RevisionNotFoundError):
        api.create_branch(repo_name, branch="x", revision="0" * 40)


def test_range_requests(api, repo_name, hub):
    from urllib.request import Request, urlopen
    api.create_repo(repo_name)
    api.upload_file(path_or_fileobj=b"0123456789", path_in_repo="digits.txt", repo_id=repo_name)
    url = f"{hub.url}/{repo_name}/resolve/main/digits.txt"
    with urlopen(Request(url, headers={"Range": "bytes=2-5"})) as r:
        assert r.status == 206 and r.read() == b"2345"
        assert r.headers["Content-Range"] == "bytes 2-5/10"
    with urlopen(Request(url, headers={"Range": "bytes=-3"})) as r:
        assert r.read() == b"789"


def test_token_and_private_repos(hub, repo_name):
    anon = HfApi(endpoint=hub.url, token=False)
    wrong = HfApi(endpoint=hub.url, token="not-the-token")
    owner = HfApi(endpoint=hub.url, token=HUB_TOKEN)
    for client in (anon, wrong):
        with pytest.raises(HfHubHTTPError) as e:
            client.create_repo(repo_name)
        assert e.value.response.status_code == 401
    owner.create_repo(repo_name, private=True)
    owner.upload_file(path_or_fileobj=b"secret weights", path_in_repo="w.bin", repo_id=repo_name)
    with pytest.raises(RepositoryNotFoundError):
        anon.model_info(repo_name)
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download(repo_name, "w.bin", token=False, cache_dir=str(hub.root.parent / "anon-cache"))
    assert repo_name not in [m.id for m in anon.list_models()]
    assert owner.model_info(repo_name).private
    assert open(hf_hub_download(repo_name, "w.bin", token=HUB_TOKEN), "rb").read() == b"secret weights"
    with pytest.raises(HfHubHTTPError) as e:
        wrong.upload_file(path_or_fileobj=b"x", path_in_repo="x", repo_id=repo_name)
    assert e.value.response.status_code in (401, 404)


def test_model_push_to_hub_revision_then_from_pretrained_in_fresh_process(api, repo_name, tiny_model_dir, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    api.create_repo(repo_name)
    api.create_branch(repo_name, branch="step-2")
    model.push_to_hub(repo_name, revision="step-2")
    tok.push_to_hub(repo_name, revision="step-2")
    expected = float(next(model.parameters()).detach().flatten()[:5].sum())
    code = (
        "import sys; from transformers import AutoModelForCausalLM, AutoTokenizer\n"
        f"m = AutoModelForCausalLM.from_pretrained({repo_name!r}, revision='step-2')\n"
        f"t = AutoTokenizer.from_pretrained({repo_name!r}, revision='step-2')\n"
        "print(float(next(m.parameters()).flatten()[:5].sum()), len(t))\n"
    )
    env = dict(os.environ, HF_HUB_CACHE=str(tmp_path / "empty-cache"), HF_HOME=str(tmp_path / "home"))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    value, vocab = out.stdout.split()[-2:]
    assert abs(float(value) - expected) < 1e-6 and int(vocab) == len(tok)
    assert not (tmp_path / "empty-cache").exists() or any((tmp_path / "empty-cache").iterdir())


def test_dataset_push_to_hub_and_load_dataset(api, repo_name):
    from datasets import Dataset, DatasetDict, load_dataset
    dd = DatasetDict({"train": Dataset.from_dict({"q": ["a", "b", "c"], "n": [1, 2, 3]}),
                      "test": Dataset.from_dict({"q": ["z"], "n": [9]})})
    dd.push_to_hub(repo_name, config_name="mixed")
    Dataset.from_dict({"q": ["only"], "n": [0]}).push_to_hub(repo_name, config_name="other", split="train")
    train = load_dataset(repo_name, "mixed", split="train")
    assert train["q"] == ["a", "b", "c"] and train["n"] == [1, 2, 3]
    assert load_dataset(repo_name, "mixed", split="test")["q"] == ["z"]
    assert load_dataset(repo_name, "other", split="train")["q"] == ["only"]
    card = api.dataset_info(repo_name).card_data
    assert {c["config_name"] for c in card["configs"]} == {"mixed", "other"}


def test_model_card_push_and_load(api, repo_name):
    api.create_repo(repo_name)
    card = ModelCard("---\nlicense: apache-2.0\ntags: [grpo]\n---\n# Hello card\n")
    card.push_to_hub(repo_name)
    loaded = ModelCard.load(repo_name)
    assert loaded.data.license == "apache-2.0" and loaded.data.tags == ["grpo"]
    assert "# Hello card" in loaded.text
    assert api.model_info(repo_name).card_data["tags"] == ["grpo"]


def test_killed_mid_commit_leaves_previous_revision_intact(tmp_path):
    hub = HubProcess(tmp_path / "crash-hub", free_port(), HUB_TOKEN).start()
    try:
        api = HfApi(endpoint=hub.url, token=HUB_TOKEN)
        api.create_repo("crash/repo")
        good = api.upload_file(path_or_fileobj=b"v1", path_in_repo="w.txt", repo_id="crash/repo").oid
        # Send half a commit by hand: header and one file line, then the server dies.
        lines = [json.dumps({"key": "header", "value": {"summary": "half"}}),
                 json.dumps({"key": "file", "value": {"path": "w.txt", "encoding": "base64",
                                                      "content": base64.b64encode(b"v2").decode()}})]
        body = ("\n".join(lines) + "\n").encode()
        sock = socket.create_connection(("127.0.0.1", hub.port))
        sock.sendall((f"POST /api/models/crash/repo/commit/main HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                      f"Authorization: Bearer {HUB_TOKEN}\r\nContent-Type: application/x-ndjson\r\n"
                      f"Content-Length: {len(body) + 10_000}\r\n\r\n").encode() + body)
        time.sleep(0.5)
        hub.kill()
        sock.close()
        hub.start()
        assert api.model_info("crash/repo").sha == good
        assert [c.title for c in api.list_repo_commits("crash/repo")][0] != "half"
        path = hf_hub_download("crash/repo", "w.txt", cache_dir=str(tmp_path / "cache"), endpoint=hub.url)
        assert open(path, "rb").read() == b"v1"
        assert not any((tmp_path / "crash-hub" / "tmp").iterdir())
    finally:
        hub.stop()


def test_mirror_copies_history_branches_tags_and_cards(api, hub, other_hub, repo_name, tmp_path):
    from hubtools.mirror import mirror
    api.create_repo(repo_name)
    api.upload_file(path_or_fileobj=b"---\nlicense: mit\n---\n# card v1\n", path_in_repo="README.md",
                    repo_id=repo_name, commit_message="card")
    api.upload_file(path_or_fileobj=os.urandom(1 << 20), path_in_repo="model.safetensors",
                    repo_id=repo_name, commit_message="weights")
    api.create_branch(repo_name, branch="step-1")
    api.upload_file(path_or_fileobj=b"step one only", path_in_repo="extra.txt", repo_id=repo_name,
                    revision="step-1", commit_message="step-1 extra")
    api.create_tag(repo_name, tag="v0", revision="main")

    report = mirror(hub.url, other_hub.url, repos=[repo_name], src_token=HUB_TOKEN, dst_token=HUB_TOKEN)
    assert any("tag v0" in line for line in report)
    dst = HfApi(endpoint=other_hub.url, token=HUB_TOKEN)
    for rev in ("main", "step-1", "v0"):
        src_files = {f.path: f.blob_id for f in api.list_repo_tree(repo_name, revision=rev, recursive=True)}
        dst_files = {f.path: f.blob_id for f in dst.list_repo_tree(repo_name, revision=rev, recursive=True)}
        assert src_files == dst_files, rev
    assert [c.title for c in dst.list_repo_commits(repo_name, revision="step-1")] == \
        [c.title for c in api.list_repo_commits(repo_name, revision="step-1")]
    assert dst.model_info(repo_name).card_data["license"] == "mit"

    # A re-run copies only what is new.
    api.upload_file(path_or_fileobj=b"late", path_in_repo="late.txt", repo_id=repo_name, commit_message="late")
    report = mirror(hub.url, other_hub.url, repos=[repo_name], src_token=HUB_TOKEN, dst_token=HUB_TOKEN)
    assert report == [f"{repo_name}: branch main ← 1 commit(s)"]
    assert len(dst.list_repo_commits(repo_name)) == len(api.list_repo_commits(repo_name))
    assert mirror(hub.url, other_hub.url, repos=[repo_name], src_token=HUB_TOKEN,
                  dst_token=HUB_TOKEN) == [f"{repo_name}: up to date"]

    # A commit made on the destination (e.g. eval results) is never rewritten by a later mirror.
    dst.upload_file(path_or_fileobj=b"eval", path_in_repo="eval.txt", repo_id=repo_name, revision="step-1")
    api.upload_file(path_or_fileobj=b"more", path_in_repo="more.txt", repo_id=repo_name, revision="step-1")
    report = mirror(hub.url, other_hub.url, repos=[repo_name], src_token=HUB_TOKEN, dst_token=HUB_TOKEN)
    assert any("branch step-1 skipped" in line for line in report)
    assert "eval.txt" in dst.list_repo_files(repo_name, revision="step-1")
