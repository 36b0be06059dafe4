"""Factuality evaluation: the breakdown arithmetic, results written into a published revision's card,
and `--grader judge` (the judge a real `transformers serve`; a scripted judge only for valid labels,
which the tiny random model never writes)."""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from huggingface_hub import HfApi, ModelCard, hf_hub_download

from conftest import ROOT
from hubtools.cli import main
from hubtools.eval.factuality import (CATEGORIES, category, evaluate_revisions, grade_samples, load_prompts,
                                      markdown_table, prompt_sweep, score, write_card_results)
from hubtools.generation import serve_transformers
from hubtools.judge import Judge
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


class ScriptedServer:
    """FAKE OpenAI-shaped chat server: `answer(model asked for, prompt)` gives (model it answers as,
    reply). For what no real server here does: answer as another model than the one asked for (TGI
    and llama.cpp do), or write valid grader labels (the tiny random model writes gibberish)."""

    def __init__(self, answer):
        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                request = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
                served_as, reply = answer(request["model"], request["messages"][-1]["content"])
                body = json.dumps({"id": "x", "object": "chat.completion", "created": 0, "model": served_as,
                                   "choices": [{"index": 0, "finish_reason": "stop",
                                                "message": {"role": "assistant", "content": reply}}]})
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
    fake = ScriptedServer(lambda model, prompt: ("some/other-model", "\\boxed{Paris}"))
    try:
        assert _eval(f"{two_steps}@step-2", eval_dataset, tmp_path, fake.url) == 2
    finally:
        fake.close()
    assert f"answered as model 'some/other-model' when asked for '{two_steps}@step-2'" in capsys.readouterr().err
    assert not _has_eval(two_steps, "step-2") and not (tmp_path / "results.json").exists()



# ------------------------------------------------------------------------------------ --grader judge

FRANCE = {"question": "Capital of France?", "answers": ["Paris"], "answerable": True}
FUTURE = {"question": "Who will win the 2090 World Cup?", "answers": [], "answerable": False}
BEOWULF = {"question": "Who wrote Beowulf?", "answers": ["Unknown"], "answerable": True}  # the gold is "Unknown"


def test_score_leaves_ungraded_samples_out_of_every_rate():
    c, i, n = Grade.CORRECT, Grade.INCORRECT, Grade.NOT_ATTEMPTED
    s = score([[c, None], [None, None], [n, i]], grader="judge:m")
    assert (s.questions, s.k, s.ungraded, s.grader) == (3, 2, 3, "judge:m")
    assert s.breakdown["All Correct"] == 50.0 and s.breakdown["Partial NotAttempt"] == 50.0  # of the 2 graded
    assert (s.correct, s.not_attempted, s.hallucination_rate) == (0.3333, 0.3333, 0.3333)  # of the 3 graded
    assert score([[c, i]]).grader == "rules" and score([[c, i]]).ungraded == 0
    with pytest.raises(ValueError, match="judge:m graded none of the 4 samples"):
        score([[None, None], [None, None]], grader="judge:m")


@pytest.mark.timeout(120)
def test_judge_grades_final_answers_and_counts_what_it_cannot_parse(served, tmp_path):
    """The real tiny judge writes gibberish: every sample it is asked about is ungraded (None), never
    scored. It is asked only about attempted final answers: no box, an empty box and the abstentions
    the rules recognize are graded without it."""
    base_url, model = served
    judge = Judge(model, base_url, temperature=1.0, max_tokens=12, cache_dir=tmp_path)  # sampled: real gibberish
    samples = [["<think>France... Paris.</think> \\boxed{Paris}", "\\boxed{Unknown}", "Paris, surely", "\\boxed{ }",
                "\\boxed{I don't know}"],
               ["\\boxed{Unknown}", "\\boxed{Brazil}"],
               ["\\boxed{Unknown}"]]
    grades = grade_samples([FRANCE, FUTURE, BEOWULF], samples, judge)
    N, I = Grade.NOT_ATTEMPTED, Grade.INCORRECT
    assert grades == [[None, N, I, I, N], [N, None], [N]]
    assert judge.stats("grade_answer") == {"calls": 2, "cache_hits": 0, "parse_failures": 2, "errors": 0}
    s = score(grades, grader="judge:" + model)
    assert s.ungraded == 2 and (s.not_attempted, s.hallucination_rate) == (0.6667, 0.3333)  # of the 6 graded
    table = markdown_table({"step-1": s}).splitlines()
    assert table[0].endswith("| Ungraded |") and table[2].endswith("| 2 |")
    assert "Ungraded" not in markdown_table({"step-1": score([[I]])})


JUDGE_VERDICTS = {"Paris": "CORRECT", "Lyon": "INCORRECT", "Lost to history": "NOT_ATTEMPTED",
                  "the city of light": "**Correct**", "Marseille": "CORRECT, I think", "Brazil": "CORRECT",
                  "Unknown": "CORRECT"}  # a naive judge: the last one would score an abstention right


def test_judge_labels_map_to_grades():
    """The judge's labels through the real client and strict parser. An attempt on an unanswerable
    question is never correct; \\boxed{Unknown} is an abstention even when the gold is "Unknown" (the
    judge is never asked, so a naive one cannot score it)."""
    asked = []

    def judge_reply(model, prompt):
        response = re.search(r"<response>\n(.*)\n</response>", prompt, re.S)[1]
        asked.append(response)
        return model, JUDGE_VERDICTS[response]

    fake = ScriptedServer(judge_reply)
    try:
        judge = Judge("scripted-judge", fake.url, max_retries=0)
        grades = grade_samples([FRANCE, FUTURE, BEOWULF], [
            ["\\boxed{Paris}", "\\boxed{Lyon}", "\\boxed{Lost to history}", "\\boxed{the city of light}",
             "\\boxed{Marseille}"],
            ["\\boxed{Brazil}", "\\boxed{Unknown}"],
            ["\\boxed{Unknown}", "<think>The author is unknown.</think>\\boxed{unknown}"]], judge)
    finally:
        fake.close()
    C, I, N = Grade.CORRECT, Grade.INCORRECT, Grade.NOT_ATTEMPTED
    assert grades == [[C, I, N, C, None], [I, N], [N, N]]
    assert sorted(asked) == sorted(["Paris", "Lyon", "Lost to history", "the city of light", "Marseille", "Brazil"])
    assert judge.stats("grade_answer")["parse_failures"] == 1


def test_judge_graded_results_go_beside_rule_graded_ones_in_the_card(hub, repo_name):
    c, i, n = Grade.CORRECT, Grade.INCORRECT, Grade.NOT_ATTEMPTED
    HfApi().create_repo(repo_name)
    rules, judged = score([[c, i], [n, n]]), score([[c, None], [i, None]], grader="judge:me/judge")
    write_card_results(repo_name, "main", rules, "me/qa", "test", plot=b"\x89PNG rules")
    write_card_results(repo_name, "main", judged, "me/qa", "test", plot=b"\x89PNG judge")
    write_card_results(repo_name, "main", judged, "me/qa", "test")  # again: replaces its own, keeps the other
    card = ModelCard.load(hf_hub_download(repo_name, "README.md"))
    metrics = {(r.metric_name, r.metric_config): r.metric_value for r in card.data.eval_results}
    assert metrics[("correct", "rules")] == 0.25 and metrics[("correct (judge:me/judge)", "judge:me/judge")] == 0.5
    assert len(metrics) == len(card.data.eval_results) == 2 * 10
    assert card.text.count("## Evaluation: factuality\n") == 1
    assert card.text.count("## Evaluation: factuality (judge:me/judge)") == 1
    assert "graded by the LLM judge `me/judge`" in card.text and "2 of 4 samples the judge could not grade" in card.text
    files = HfApi().list_repo_files(repo_name)
    assert "eval_factuality.png" in files and "eval_factuality-judge_me_judge.png" in files


def _judge_flags(url: str, model: str) -> list[str]:
    return ["--grader", "judge", "--judge-model", model, "--judge-base-url", url, "--backend", "transformers"]


@pytest.mark.timeout(300)
def test_eval_with_the_judge_records_the_grader(served, tmp_path, two_steps, eval_dataset, capsys):
    url, model = served
    assert _eval(f"{two_steps}@step-1", eval_dataset, tmp_path / "judge", extra=_judge_flags(url, model)) == 0
    out = capsys.readouterr().out
    assert "| Ungraded |" in out
    saved = json.loads((tmp_path / "judge" / "results.json").read_text())["step-1"]
    # the tiny policy never writes a final answer: every sample INCORRECT by the format rule, the judge not asked
    grader = "judge:tiny-model"  # the judge's local folder by name: no path of this machine in results or cards
    assert saved["grader"] == grader and saved["ungraded"] == 0 and saved["hallucination_rate"] == 1.0
    card = ModelCard.load(hf_hub_download(two_steps, "README.md", revision="step-1"))
    assert {r.metric_config for r in card.data.eval_results} == {grader}
    assert f"## Evaluation: factuality ({grader})" in card.text and "(Ungraded)" in card.text


def test_judge_flags_are_checked_before_any_work(tmp_path, eval_dataset, capsys):
    assert _eval("tests/nothing", eval_dataset, tmp_path, extra=["--grader", "judge", "--judge-model", "m"]) == 2
    assert "--grader judge needs --judge-base-url" in capsys.readouterr().err
    assert _eval("tests/nothing", eval_dataset, tmp_path, extra=["--judge-model", "m"]) == 2
    assert "--judge-model: used only with --grader judge (the grader is rules)" in capsys.readouterr().err
    assert not (tmp_path / "results.json").exists()
