"""Factuality evaluation: the breakdown arithmetic, and results written into a published revision's card."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from huggingface_hub import HfApi, ModelCard, hf_hub_download

from conftest import ROOT
from hubtools.cli import main
from hubtools.eval_factuality import CATEGORIES, category, evaluate_revisions, load_prompts, prompt_sweep, score
from hubtools.generation import serve_transformers
from hubtools.publish import publish_checkpoint
from hubtools.scoring import Grade
from model_cards import load_run_info

C, I, N = Grade.CORRECT, Grade.INCORRECT, Grade.NOT_ATTEMPTED


@pytest.mark.parametrize("grades, expected", [
    ([C, C, C], "All Correct"), ([C, I, N], "Partial Correct"), ([N, N, N], "All NotAttempt"),
    ([I, N, I], "Partial NotAttempt"), ([I, I, I], "All Attempt and Wrong"),
])
def test_category(grades, expected):
    assert category(grades) == expected


def test_score_breakdown_and_simpleqa_aggregates():
    s = score([[C, C], [C, I], [N, N], [I, N], [I, I]])
    assert s.breakdown == {name: 20.0 for name in CATEGORIES}
    assert (s.correct, s.not_attempted, s.hallucination_rate) == (0.3, 0.3, 0.4)
    assert s.accuracy_given_attempted == pytest.approx(0.3 / 0.7, abs=1e-4)
    assert s.f1 == pytest.approx(2 * 0.3 * (0.3 / 0.7) / (0.3 + 0.3 / 0.7), abs=1e-4)
    with pytest.raises(ValueError):
        score([])


@pytest.fixture(scope="module")
def eval_dataset(hub):
    from datasets import Dataset, DatasetDict
    rows = [dict(id=f"e-{i}", question=q, answers=a, answerable=True)
            for i, (q, a) in enumerate([("Capital of France?", ["Paris"]), ("2+2?", ["4"]), ("Red planet?", ["Mars"])])]
    DatasetDict(test=Dataset.from_list(rows)).push_to_hub("tests/eval-questions")
    return "tests/eval-questions"


def test_eval_writes_results_into_the_revision_card(tmp_path, tiny_model_dir, eval_dataset, repo_name):
    info = load_run_info(ROOT / "examples" / "grpo_step_card.yaml")
    publish_checkpoint(tiny_model_dir, repo_name, "step-1", card_info=info)
    publish_checkpoint(tiny_model_dir, repo_name, "step-2", card_info=info)
    results = evaluate_revisions(repo_name, ["step-1", "step-2"], eval_dataset, k=2, max_new_tokens=6,
                                 generator={"backend": "transformers"}, output_dir=tmp_path / "out")
    assert set(results) == {"step-1", "step-2"}
    for s in results.values():
        assert s.questions == 3 and s.k == 2 and sum(s.breakdown.values()) == pytest.approx(100, abs=0.05)
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved["step-1"]["breakdown"] == results["step-1"].breakdown
    assert (tmp_path / "out" / "breakdown.png").read_bytes()[:4] == b"\x89PNG"

    card = ModelCard.load(hf_hub_download(repo_name, "README.md", revision="step-1"))
    metrics = {r.metric_type: r.metric_value for r in card.data.eval_results}
    assert metrics["correct"] == results["step-1"].correct and "all_attempt_and_wrong" in metrics
    assert "## Evaluation: factuality" in card.text
    assert "Known notes" in card.text and card.data.base_model == info["base_model"]  # nothing wiped
    assert "eval_factuality.png" in HfApi().list_repo_files(repo_name, revision="step-1")

    # A second evaluation replaces its own section and metrics instead of stacking copies.
    evaluate_revisions(repo_name, ["step-1"], eval_dataset, k=2, max_new_tokens=6,
                       generator={"backend": "transformers"}, output_dir=tmp_path / "out2")
    card = ModelCard.load(hf_hub_download(repo_name, "README.md", revision="step-1"))
    assert card.text.count("## Evaluation: factuality") == 1
    assert [r.metric_type for r in card.data.eval_results].count("correct") == 1


def test_prompt_sweep_plots_the_frontier(tmp_path, tiny_model_dir, eval_dataset):
    prompts_file = tmp_path / "prompts.yaml"
    prompts_file.write_text("cautious: Say \\\\boxed{Unknown} unless certain.\nbold: Always answer in \\\\boxed{}.\n")
    prompts = load_prompts(prompts_file)
    results = prompt_sweep(str(tiny_model_dir), prompts, eval_dataset, k=2, max_new_tokens=6,
                           generator={"backend": "transformers"}, output_dir=tmp_path)
    assert set(results) == {"cautious", "bold"}
    assert (tmp_path / "frontier.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="bad.yaml: expected a mapping"):
        bad = tmp_path / "bad.yaml"
        bad.write_text("- just a string\n")
        load_prompts(bad)


def _has_eval(repo: str, revision: str) -> bool:
    return "## Evaluation: factuality" in ModelCard.load(hf_hub_download(repo, "README.md", revision=revision)).text


@pytest.fixture
def two_steps(tiny_model_dir, repo_name):
    info = load_run_info(ROOT / "examples" / "grpo_step_card.yaml")
    for rev in ("step-1", "step-2"):
        publish_checkpoint(tiny_model_dir, repo_name, rev, card_info=info)
    return repo_name


def _eval(repo_arg: str, dataset: str, out, *urls: str, extra=()) -> int:
    flags = [f for url in urls for f in ("--base-url", url)]
    return main(["eval", "factuality", "--model", repo_arg, "--dataset", dataset, "--k", "2", "--max-new-tokens", "4",
                 "--output-dir", str(out), *flags, *extra])


@pytest.mark.timeout(300)
def test_eval_through_a_server_evaluates_each_revision_by_name(tmp_path, two_steps, eval_dataset, capsys):
    with serve_transformers() as url:  # not pinned: loads `REPO@step-N` from the hub by name
        assert _eval(two_steps, eval_dataset, tmp_path, url, url, extra=["--revisions", "step-1,step-2"]) == 0
    saved = json.loads((tmp_path / "results.json").read_text())
    assert set(saved) == {"step-1", "step-2"}
    assert _has_eval(two_steps, "step-1") and _has_eval(two_steps, "step-2")


@pytest.mark.timeout(300)
def test_eval_through_a_server_that_does_not_serve_the_revision_refuses(tmp_path, tiny_model_dir, two_steps,
                                                                        eval_dataset, capsys):
    with serve_transformers(tiny_model_dir) as url:  # pinned to another model (a local folder)
        assert _eval(f"{two_steps}@step-1", eval_dataset, tmp_path, url) == 2
    err = capsys.readouterr().err
    assert f"request for model '{two_steps}@step-1' failed: Error code: 400" in err and "--served-model-name" in err
    assert not _has_eval(two_steps, "step-1") and not (tmp_path / "results.json").exists()
    assert _eval(f"{two_steps}@step-1", eval_dataset, tmp_path, url, extra=["--revisions", "step-2"]) == 2
    assert "names a revision" in capsys.readouterr().err


class NameIgnoringServer:
    """FAKE of a server that answers any requested model with its own (TGI, llama.cpp do): no real
    server here behaves so, and eval must refuse its samples rather than write them into a card."""

    def __init__(self, served_as: str):
        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                body = json.dumps({"id": "x", "object": "chat.completion", "created": 0, "model": served_as,
                                   "choices": [{"index": 0, "finish_reason": "stop",
                                                "message": {"role": "assistant", "content": "\\boxed{Paris}"}}]})
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body.encode())

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def test_eval_refuses_a_server_that_answers_as_another_model(tmp_path, two_steps, eval_dataset, capsys):
    fake = NameIgnoringServer("some/other-model")
    try:
        assert _eval(f"{two_steps}@step-2", eval_dataset, tmp_path, fake.url) == 2
    finally:
        fake.close()
    assert f"answered as model 'some/other-model' when asked for '{two_steps}@step-2'" in capsys.readouterr().err
    assert not _has_eval(two_steps, "step-2") and not (tmp_path / "results.json").exists()
