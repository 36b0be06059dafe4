"""The local hub's web pages, seen by a real headless browser against `hubtools hub serve`.

Repos are made with the real clients (HfApi, ModelCard.push_to_hub, datasets.push_to_hub), so the
pages are checked on exactly what training and publishing write.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import urllib.error
import urllib.request
from html.parser import HTMLParser

import pytest

from conftest import HUB_TOKEN

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
          "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """`browser(url, *flags)` → chromium's stdout; `--dump-dom` unless flags say otherwise."""
    if CHROMIUM is None:
        if os.environ.get("HUBTOOLS_REQUIRE_BROWSER"):
            pytest.fail("chromium is not installed but HUBTOOLS_REQUIRE_BROWSER is set")
        pytest.skip("chromium is not installed")
    profile = tmp_path_factory.mktemp("chromium-profile")

    def run(url: str, *flags: str) -> str:
        cmd = [CHROMIUM, *_FLAGS, f"--user-data-dir={profile}", *(flags or ["--dump-dom"]), url]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=True).stdout
    return run


def screenshot(browser, url: str, path) -> None:
    browser(url, f"--screenshot={path}", "--window-size=1280,1600")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def http_get(url: str, token: str | None = None) -> tuple[int, str, str]:
    """(status, content type, body) without following the browser: for status codes and auth."""
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.headers["Content-Type"], r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers["Content-Type"], e.read().decode()


class _Table(HTMLParser):
    """The body rows of the table with a given id, as lists of cell texts."""

    def __init__(self, table_id: str):
        super().__init__()
        self.table_id, self.inside, self.in_body, self.rows = table_id, False, False, []

    def handle_starttag(self, tag, attrs):
        if tag == "table" and dict(attrs).get("id") == self.table_id:
            self.inside = True
        elif self.inside and tag == "tbody":
            self.in_body = True
        elif self.in_body and tag == "tr":
            self.rows.append([])
        elif self.in_body and tag == "td":
            self.rows[-1].append("")

    def handle_endtag(self, tag):
        if tag == "table":
            self.inside = self.in_body = False

    def handle_data(self, data):
        if self.in_body and self.rows and self.rows[-1]:
            self.rows[-1][-1] += data.strip()


def table_rows(dom: str, table_id: str) -> list[list[str]]:
    parser = _Table(table_id)
    parser.feed(dom)
    return parser.rows


def test_card_rendered_and_sanitized(hub, api, repo_name, browser, tmp_path):
    api.create_repo(repo_name)
    card = ("---\nlicense: apache-2.0\ntags: [grpo, tiny]\n---\n# Tiny GRPO policy\n\n"
            "| metric | value |\n|---|---:|\n| reward | 0.5 |\n\n"
            "<script>document.title='pwned'</script>\n\n<img src=x onerror=alert(1)>\n\n"
            "[link](javascript:alert(1)) <a href=\"javascript:alert(2)\">raw</a> [site](https://example.org)\n\n"
            "![reward curve](reward_curve.png)\n")
    api.upload_file(path_or_fileobj=card.encode(), path_in_repo="README.md", repo_id=repo_name)

    dom = browser(f"{hub.url}/{repo_name}")
    title = re.search(r"<title>(.*?)</title>", dom, re.S).group(1)
    assert "pwned" not in title and repo_name in title
    card_html = re.search(r'id="card"[^>]*>(.*?)</section>', dom, re.S).group(1)
    assert "<h1>Tiny GRPO policy</h1>" in card_html
    assert "<table>" in card_html and '<td style="text-align:right">0.5</td>' in card_html
    assert "<script" not in card_html.lower() and "onerror" not in dom.lower()
    assert not re.search(r"""href\s*=\s*["']?\s*javascript:""", dom, re.I)
    assert '<a href="https://example.org" rel="noopener noreferrer">site</a>' in card_html
    assert f'src="/{repo_name}/resolve/main/reward_curve.png"' in card_html
    assert "---" not in card_html and "apache-2.0" in dom and "grpo, tiny" in dom  # front matter → metadata table

    readme_url = f"/{repo_name}/resolve/main/README.md"
    assert f'href="{readme_url}"' in dom
    assert http_get(hub.url + readme_url)[2] == card
    assert f'href="/{repo_name}/tree/main"' in dom and f'href="/{repo_name}/run"' not in dom  # no step-N branch
    screenshot(browser, f"{hub.url}/{repo_name}", tmp_path / "repo.png")


def test_run_view(hub, api, repo_name, browser, tmp_path):
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    api.create_repo(repo_name)
    results = {1: (0.125, 20.0, 0.31), 2: (0.25, 35.5, 0.42), 3: (0.5, 51.0, 0.55)}
    for step in (2, 3, 1):  # created out of order: the view sorts by N
        reward, accuracy, f1 = results[step]
        api.create_branch(repo_name, branch=f"step-{step}")
        data = ModelCardData(model_name="tiny-grpo", training_reward=reward, training_step=step, eval_results=[
            EvalResult(task_type="text-generation", dataset_type="gsm8k", dataset_name="GSM8K",
                       metric_type="accuracy", metric_name="accuracy", metric_value=accuracy),
            EvalResult(task_type="question-answering", dataset_type="simpleqa", dataset_name="SimpleQA",
                       metric_type="f1", metric_name="f1", metric_value=f1)])
        ModelCard(f"---\n{data.to_yaml()}\n---\n# Step {step}\n").push_to_hub(repo_name, revision=f"step-{step}")

    dom = browser(f"{hub.url}/{repo_name}/run")
    assert table_rows(dom, "run-table") == [[str(s), str(r), f"{a:g}", str(f)] for s, (r, a, f) in results.items()]
    for step in results:
        assert f'href="/{repo_name}/tree/step-{step}"' in dom
    svg = re.search(r'<svg id="run-plot".*?</svg>', dom, re.S).group(0)
    lines = re.findall(r'<polyline[^>]*points="([^"]*)"', svg)
    assert len(lines) == 3 and all(len(points.split()) == 3 for points in lines)
    assert "training reward" in svg and "accuracy · GSM8K" in svg and "f1 · SimpleQA" in svg
    screenshot(browser, f"{hub.url}/{repo_name}/run", tmp_path / "run.png")

    step_page = browser(f"{hub.url}/{repo_name}/tree/step-2")
    assert "<h1>Step 2</h1>" in step_page and f'href="/{repo_name}/run"' in step_page
    assert f'href="/{repo_name}/resolve/step-2/README.md"' in step_page


def test_run_view_of_an_sft_run_shows_its_loss(hub, api, repo_name, browser, tmp_path):
    """An SFT run's step cards carry training_loss, not training_reward: the view shows and plots the loss."""
    from huggingface_hub import ModelCard, ModelCardData

    api.create_repo(repo_name)
    losses = {1: 2.5, 2: 1.75}
    for step, loss in losses.items():
        api.create_branch(repo_name, branch=f"step-{step}")
        data = ModelCardData(model_name="tiny-sft", training_loss=loss, training_step=step)
        ModelCard(f"---\n{data.to_yaml()}\n---\n# Step {step}\n").push_to_hub(repo_name, revision=f"step-{step}")
    dom = browser(f"{hub.url}/{repo_name}/run")
    assert "<th class=\"num\">Training loss</th>" in dom and "Training reward" not in dom
    assert table_rows(dom, "run-table") == [[str(s), str(loss)] for s, loss in losses.items()]
    svg = re.search(r'<svg id="run-plot".*?</svg>', dom, re.S).group(0)
    assert "training loss (right axis)" in svg and len(re.findall(r"<polyline", svg)) == 1
    screenshot(browser, f"{hub.url}/{repo_name}/run", tmp_path / "run.png")


def test_dataset_preview(hub, repo_name, browser):
    from datasets import Dataset

    Dataset.from_dict({"prompt": ["What is 2+2?", "<b>bold</b> & co"], "answer": ["4", "x"]}).push_to_hub(
        repo_name, config_name="arith")
    Dataset.from_dict({"question": [f"question {i}" for i in range(25)], "id": list(range(25))}).push_to_hub(
        repo_name, config_name="mixed", split="test")

    dom = browser(f"{hub.url}/datasets/{repo_name}")
    assert "Preview: arith / train" in dom and "Preview: mixed / test" in dom
    assert "<td>What is 2+2?</td>" in dom and "<td>&lt;b&gt;bold&lt;/b&gt; &amp; co</td>" in dom
    assert "<td>question 9</td>" in dom and "question 10" not in dom  # the first 10 rows only
    assert f'href="/datasets/{repo_name}/resolve/main/mixed/test-00000-of-00001.parquet"' in dom


def test_private_repo_invisible_without_token(hub, api, repo_name):
    public, private = repo_name + "-pub", repo_name + "-priv"
    api.create_repo(public)
    api.create_repo(private, private=True)
    api.upload_file(path_or_fileobj=b"# secret card\n", path_in_repo="README.md", repo_id=private)

    status, content_type, home = http_get(hub.url + "/")
    assert status == 200 and content_type == "text/html; charset=utf-8"
    assert f'href="/{public}"' in home and private not in home
    missing = http_get(f"{hub.url}/nobody/no-such-repo")
    for path in ("", "/tree/main", "/run"):
        status, _, body = http_get(f"{hub.url}/{private}{path}")
        assert status == 404 and body == missing[2]  # exactly what a missing repo gives
    status, _, body = http_get(f"{hub.url}/{private}", token=HUB_TOKEN)
    assert status == 200 and "secret card" in body
    assert private in http_get(hub.url + "/", token=HUB_TOKEN)[2]


def test_unknown_repo_or_revision_is_404(hub, api, repo_name):
    api.create_repo(repo_name)
    for path in (f"/nobody/{repo_name.split('/')[1]}", f"/datasets/{repo_name}", f"/{repo_name}/tree/no-such-branch",
                 f"/{repo_name}/tree/refs%2Fpr%2F9", f"/{repo_name}/tree/{'0' * 40}", "/nobody/nothing/run"):
        status, content_type, body = http_get(hub.url + path)
        assert (status, content_type) == (404, "text/html; charset=utf-8"), path
        assert "<title>404" in body


def test_revision_with_slash(hub, api, repo_name):
    api.create_repo(repo_name)
    api.create_branch(repo_name, branch="exp/lr-1e-5")
    _, _, page = http_get(f"{hub.url}/{repo_name}")
    assert f'href="/{repo_name}/tree/exp%2Flr-1e-5"' in page
    status, _, page = http_get(f"{hub.url}/{repo_name}/tree/exp%2Flr-1e-5")
    assert status == 200 and f'href="/{repo_name}/resolve/exp%2Flr-1e-5/.gitattributes"' in page
    assert http_get(f"{hub.url}/{repo_name}/resolve/exp%2Flr-1e-5/.gitattributes")[0] == 200
