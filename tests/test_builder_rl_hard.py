"""rl_hard builder: the selection rule, the writer's reply schema and its retry, recipe and row
validation, judge failures counted, and a real build (tiny random model behind `transformers serve`
as policy, judge and rubric writer; local hub) through the command line.

The tiny model's replies are gibberish: the writer's replies never validate (so reference rubrics
are used), its policy samples have no answer block (scored 0 without the judge), and its judge
replies never parse. The packaged SmolLM2 was measured here as judge and policy and left out: on
this CPU a 16-token judge reply took 5-20 s and parsed 1 time in 6, and as policy it wrote no
`<answer>` block, so every sample scores 0 and no row varies.
"""

from __future__ import annotations

import json
import statistics
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import yaml

from dataset_builders import common
from dataset_builders import rl_hard as rb
from dataset_builders.registry import get_builder
from hubtools.cli import main
from hubtools.generation import serve_transformers
from hubtools.judge import Judge
from hubtools.tasks import RL_HARD

SAMPLE = [json.loads(line) for line in rb.DEFAULT_RECIPE.parent.joinpath("../data/rl_hard_sample.jsonl")
          .read_text().splitlines()]
ALL_COLUMNS = {k: k for k in ("question", "reasoning", "tool_output", "reference_answer", "positive_rubrics",
                              "negative_rubrics")}
VALID = {"positive_rubrics": [{"title": "Names Tbilisi", "description": "Gives Tbilisi as the country's capital."}],
         "negative_rubrics": [{"title": "Only Atlanta", "description": "Gives Atlanta as the only capital."}]}


@pytest.fixture(scope="module")
def tiny_server(tiny_model_dir):
    with serve_transformers(tiny_model_dir) as url:
        yield url


def _write_jsonl(path, rows: list) -> str:
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return str(path)


def _served(model: str, url: str, max_tokens: int, cache_dir: str | None = None) -> dict:
    return {"model": model, "base_url": url, "max_tokens": max_tokens, "concurrency": 4, "cache_dir": cache_dir}


# ------------------------------------------------------------------------------------ pure parts


def _scored(rid: str, scores: list[float]) -> dict:
    return {"id": rid, "mean_score": statistics.fmean(scores), "score_std": statistics.pstdev(scores)}


def test_selection_keeps_the_lowest_means_among_varied_rows():
    rows = [_scored("always-0", [0, 0, 0, 0]), _scored("always-1", [1, 1, 1, 1]), _scored("low", [0, 0, 0, 0.4]),
            _scored("mid", [0.2, 0.8, 0.2, 0.8]), _scored("mid-narrow", [0.4, 0.6, 0.4, 0.6]),
            _scored("high", [1, 1, 1, 0.6])]
    assert [r["id"] for r in rb.select_rows(rows, 3)] == ["low", "mid", "mid-narrow"]  # equal means: wider spread first
    assert [r["id"] for r in rb.select_rows(rows, None)] == ["low", "mid", "mid-narrow", "high"]
    assert [r["id"] for r in rb.select_rows(rows, 3, "lowest_mean")] == ["always-0", "low", "mid"]
    assert [r["id"] for r in rb.select_rows(list(reversed(rows)), 3)] == ["low", "mid", "mid-narrow"]
    with pytest.raises(ValueError, match="rule"):
        rb.select_rows(rows, 3, "hardest")
    assert rb.score_stats([None, 0.25, 0.75]) == {"mean_score": 0.5, "score_std": 0.25, "scored": 2, "unscored": 1}
    assert rb.score_stats([None, None]) is None  # the row is dropped and counted
    # the test split is fixed: the same seed gives the same split
    test_ids = [[r["id"] for r in common.split_train_test(rows, 0.5, seed)[1]] for seed in (7, 7, *range(5))]
    assert test_ids[0] == test_ids[1] and len(test_ids[0]) == 3 and len({tuple(t) for t in test_ids}) > 1


@pytest.mark.parametrize("reply, error", [
    ("I cannot write rubrics.", "Invalid JSON"),
    ('{"positive_rubrics": [{"title": "A", "description": "a"}]}', "negative_rubrics: Field required"),
    ('{"positive_rubrics": [], "negative_rubrics": [{"title": "B", "description": "b"}]}',
     "positive_rubrics: List should have at least 1 item"),
    (json.dumps({"positive_rubrics": [{"title": f"P{i}", "description": "p"} for i in range(6)],
                 "negative_rubrics": [{"title": "N", "description": "n"}]}), "at most 5 items"),
    ('{"positive_rubrics": [{"title": "A", "description": ""}], "negative_rubrics": [{"title": "B", "description": "b"}]}',
     r"positive_rubrics\.0\.description: String should have at least 1 character"),
    ('{"positive_rubrics": [{"title": "A", "description": "a"}], "negative_rubrics": [{"title": "a", "description": "b"}]}',
     "every rubric title must differ"),
    (f"Here you go:\n{json.dumps(VALID)}", "Invalid JSON"),  # prose around the object
])
def test_writer_replies_are_validated_strictly(reply, error):
    with pytest.raises(ValueError, match=error):
        rb.parse_written(reply)


def test_writer_reply_formats_accepted():
    expected = ([{"title": "Names Tbilisi", "description": "Gives Tbilisi as the country's capital.", "weight": 1.0}],
                [{"title": "Only Atlanta", "description": "Gives Atlanta as the only capital.", "weight": 1.0}])
    for reply in (json.dumps(VALID), f"```json\n{json.dumps(VALID)}\n```", f"<think>a {{</think>\n{json.dumps(VALID)}"):
        assert rb.parse_written(reply) == expected


def test_recipe_errors_name_the_key_and_the_default_recipe_loads():
    recipe = rb.load_recipe(rb.DEFAULT_RECIPE)
    assert recipe["static_rubrics"] == list(RL_HARD.static_rubrics) and recipe["judge"]["base_url"]
    by_source, skipped = rb.load_sources(recipe)
    assert len(by_source["sample"]) == 40 and not skipped
    row = by_source["sample"][0]
    assert row["prompt"][0] == {"role": "system", "content": RL_HARD.system_prompt}
    assert all(f"<{tag}>\n{row[tag]}\n</{tag}>" in row["prompt"][1]["content"]
               for tag in ("question", "reasoning", "tool_output"))
    bad = {
        "judge.base_url is required: .* no judge runs inside the builder": {"judge": {"base_url": None}},
        "rubric_writer.model is required": {"rubric_writer": {"model": ""}},
        r"static_rubrics: unknown title\(s\) \['Citation Disciplin'\]": {"static_rubrics": ["Citation Disciplin"]},
        r"unknown key\(s\) \['base_urls'\] in judge": {"judge": {"base_urls": ["http://x/v1"]}},
        "select.rule must be one of": {"select": {"rule": "hardest"}},
        "judge.timeout must be > 0": {"judge": {"timeout": 0}},
        r"sources\[0\].columns.reasoning is required": {
            "sources": [{"name": "x", "path": "x.jsonl", "columns": {"question": "q", "tool_output": "t"}}]},
    }
    for message, change in bad.items():
        broken = json.loads(json.dumps(recipe))
        for key, value in change.items():
            broken[key] = broken[key] | value if isinstance(value, dict) else value
        with pytest.raises(ValueError, match=message):
            rb.complete_recipe(broken)
    no_judge = {k: v for k, v in recipe.items() if k != "judge"}
    with pytest.raises(ValueError, match="judge.model is required"):
        rb.complete_recipe(no_judge)
    with pytest.raises(ValueError, match="unknown dataset builder 'nope'; known: factuality, geo, rl_hard"):
        get_builder("nope")
    assert get_builder("rl_hard") is rb


def test_bad_rows_are_counted_by_reason_or_an_error_naming_source_row_field(tmp_path):
    good = {k: SAMPLE[0][k] for k in ALL_COLUMNS}
    path = _write_jsonl(tmp_path / "rows.jsonl", [
        good,
        good | {"question": "  "},                                        # 1: empty question
        {k: v for k, v in good.items() if k != "reasoning"},              # 2: no reasoning
        good | {"tool_output": "Atlanta is the capital. [S1]"},           # 3: no snippet ids
        "{not json",                                                      # 4
        good | {"positive_rubrics": [{"title": "No description"}]},       # 5: invalid reference rubrics
        good | {"question": ["a", "list"]},                               # 6: question not text
        good | {"negative_rubrics": json.dumps(good["negative_rubrics"]), "reference_answer": None},  # fine
    ])
    recipe = rb.load_recipe(rb.DEFAULT_RECIPE) | {"sources": [{"name": "mine", "path": path, "columns": ALL_COLUMNS}]}
    by_source, skipped = rb.load_sources(recipe)
    assert dict(skipped) == {"mine: missing question": 1, "mine: missing reasoning": 1,
                             "mine: no snippet ids in tool_output": 1, "mine: invalid JSON": 1,
                             "mine: invalid positive_rubrics": 1, "mine: question is not text": 1}
    assert [r["id"] for r in by_source["mine"]] == ["mine-0", "mine-7"]
    last = by_source["mine"][1]
    assert last["reference_answer"] is None and last["reference_rubrics"] == by_source["mine"][0]["reference_rubrics"]
    assert last["reference_rubrics"][1][0] | {"weight": 1.0} == last["reference_rubrics"][1][0]
    with pytest.raises(ValueError, match=r"source 'mine' \(.*rows\.jsonl\) row 1: field 'question' \(column 'question'\)"):
        rb.load_sources(recipe | {"strict": True})
    recipe["sources"][0]["limit"] = 1
    assert not rb.load_sources(recipe | {"strict": True})[1]


# ------------------------------------------------------------------------------------ the rubric writer


class FakeWriter:
    """FAKE OpenAI-shaped chat server for the writer's retry path: per question (found in the prompt),
    it answers the scripted replies in turn and records every prompt it got."""

    def __init__(self, script: dict[str, list[str]]):
        self.script, self.prompts = {q: list(replies) for q, replies in script.items()}, []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                prompt = body["messages"][-1]["content"]
                fake.prompts.append(prompt)
                question = next(q for q in fake.script if q in prompt)
                data = json.dumps({"id": "fake", "object": "chat.completion", "created": 0, "model": body["model"],
                                   "choices": [{"index": 0, "finish_reason": "stop", "message": {
                                       "role": "assistant", "content": fake.script[question].pop(0)}}]}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/v1"

    def __enter__(self):
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def _rows(n: int, *, reference: bool) -> list[dict]:
    """Parsed rows from the bundled sample; without `reference`, their reference rubrics are dropped."""
    rows = [rb.parse_row(dict(r), ALL_COLUMNS, "s", i) for i, r in enumerate(SAMPLE[:n])]
    for r in rows:
        r["reference_rubrics"] = r["reference_rubrics"] if reference else ([], [])
    return rows


def test_writer_retries_once_with_the_error_shown_then_falls_back_or_skips():
    fixed, fallback, skipped, fresh = _rows(4, reference=False)
    fallback["reference_rubrics"] = _rows(2, reference=True)[1]["reference_rubrics"]
    preferred = _rows(5, reference=True)[4]
    script = {fixed["question"]: ["not json", json.dumps(VALID)],
              fallback["question"]: ["not json", '{"positive_rubrics": []}'],
              skipped["question"]: ["{}", "{}"], fresh["question"]: [json.dumps(VALID)], preferred["question"]: []}
    with FakeWriter(script) as fake:
        writer = Judge("writer", fake.url)
        counts = rb.attach_rubrics(writer, [fixed, fallback, skipped], prefer_reference=False)
        assert dict(+counts) == {"writer: valid after retry": 1, "writer: invalid after retry": 2,
                                 "reference rubrics used (writer failed)": 1}
        assert len(fake.prompts) == 6
        counts = rb.attach_rubrics(writer, [preferred, fresh], prefer_reference=True)
        assert dict(+counts) == {"reference rubrics preferred": 1, "writer: valid": 1}
        assert len(fake.prompts) == 7  # only the row without reference rubrics was asked
    assert [r["rubric_source"] for r in (fixed, fallback, skipped, preferred, fresh)] == [
        "generated", "reference", None, "reference", "generated"]
    assert fixed["positive_rubrics"][0]["title"] == "Names Tbilisi"
    assert (fallback["positive_rubrics"], fallback["negative_rubrics"]) == fallback["reference_rubrics"]
    assert (preferred["positive_rubrics"], preferred["negative_rubrics"]) == preferred["reference_rubrics"]
    assert skipped["positive_rubrics"] == skipped["negative_rubrics"] == []
    retry = next(p for p in fake.prompts if fixed["question"] in p and "<previous_reply>" in p)
    assert "<previous_reply>\nnot json\n</previous_reply>" in retry and "The problem: reply: Invalid JSON" in retry
    first = next(p for p in fake.prompts if fixed["question"] in p and "<previous_reply>" not in p)
    assert fixed["tool_output"] in first and "<reference_answer>" in first


# ------------------------------------------------------------------------------------ against transformers serve


def test_judge_failures_leave_samples_unscored_and_no_answer_scores_zero(tiny_server, tiny_model_dir):
    rows = _rows(2, reference=True)
    for r in rows:
        r["positive_rubrics"], r["negative_rubrics"] = r["reference_rubrics"]
    judge = Judge(str(tiny_model_dir), tiny_server, max_tokens=8, concurrency=4)
    samples = [[rows[0]["reference_answer"], "no answer block here"], [rows[1]["reference_answer"]]]
    static = ["Off-Query Padding"]
    results = rb.score_samples(judge, static, rows, samples)
    assert results == [([None, 0.0], 1), ([None], 0)]  # the tiny judge's gibberish never parses
    assert [rb.score_stats(scores) for scores, _ in results] == [
        {"mean_score": 0.0, "score_std": 0.0, "scored": 1, "unscored": 1}, None]
    calls = sum(len(r["positive_rubrics"]) + len(r["negative_rubrics"]) + len(static) for r in rows)
    assert judge.stats("rubric") == {"calls": calls, "cache_hits": 0, "parse_failures": calls, "errors": 0}


@pytest.mark.timeout(240)
def test_build_end_to_end_counts_publishes_card_and_loads_back(tmp_path, hub, tiny_server, tiny_model_dir,
                                                               repo_name, capsys):
    from datasets import load_dataset, load_from_disk
    from huggingface_hub import DatasetCard, HfApi, hf_hub_download

    model = str(tiny_model_dir)
    good = [{k: r[k] for k in ALL_COLUMNS} for r in SAMPLE[:4]]
    _write_jsonl(tmp_path / "rows.jsonl", [
        *good, good[0] | {"tool_output": "no ids here"}, good[1] | {"reasoning": None}, "{oops",
        {k: v for k, v in good[2].items() if not k.endswith("_rubrics")},  # the writer fails: skipped
    ])
    recipe = {"sources": [{"name": "mine", "path": "rows.jsonl", "columns": ALL_COLUMNS}],
              "rubric_writer": _served("nobody", "http://127.0.0.1:9/v1", 16, "cache/writer"),  # set by flags below
              "judge": _served(model, tiny_server, 8), "generator": {"backend": "openai", "cache_dir": "cache/policy"},
              "select": {"rule": "lowest_mean"}, "test_size": 1, "license": "apache-2.0"}
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    flags = ["build-dataset", "rl_hard", "--recipe", str(tmp_path / "recipe.yaml"), "--model", model,
             "--base-url", tiny_server, "--writer-model", model, "--writer-base-url", tiny_server, "--k", "2",
             "--n", "3", "--max-new-tokens", "8"]
    assert main([*flags, "--push-to-hub", repo_name, "--output-dir", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "writer: invalid after retry': 5" in out and f"/datasets/{repo_name}" in out

    train, test = load_dataset(repo_name, split="train"), load_dataset(repo_name, split="test")
    assert (len(train), len(test)) == (2, 1)
    assert set(train.features) == set(rb.features())
    for row in list(train) + list(test):
        assert row["source"] == "mine" and row["rubric_source"] == "reference"
        assert row["prompt"] == rb.make_prompt(row["question"], row["reasoning"], row["tool_output"])
        assert row["positive_rubrics"] and all(r["weight"] == 1.0 for r in row["positive_rubrics"])
        assert (row["mean_score"], row["score_std"]) == (0.0, 0.0)  # gibberish has no answer block
    assert load_from_disk(str(tmp_path / "out"))["train"]["id"] == train["id"]

    assert rb.HIST_FILE in HfApi().list_repo_files(repo_name, repo_type="dataset")
    card = DatasetCard.load(hf_hub_download(repo_name, "README.md", repo_type="dataset"))
    assert card.data.configs and card.data.license == "apache-2.0"
    for fact in ["| mine |", "| mine: no snippet ids in tool_output | 1 |", "| mine: missing reasoning | 1 |",
                 "| mine: invalid JSON | 1 |", "| mine: no rubrics (writer failed, no reference rubrics) | 1 |",
                 "| writer: invalid after retry | 5 |", "| reference rubrics used (writer failed) | 4 |",
                 "| calls | 10 | 0 |", "| rows | 4 | 3 |", "| samples without an answer (0, judge not asked) | 8 | 6 |",
                 "| rubric sets from the reference | 4 | 3 |", "- `policy`: `tiny-model`", "- `judge`: `tiny-model`",
                 "rubric writer: hubtools/prompts/rubric_writer.j2; judge: hubtools/prompts/rubric_score.j2",
                 "- `static rubrics`: `['Citation Discipline', 'Off-Query Padding', 'Wrong-Entity Confabulation']`",
                 f"({rb.HIST_FILE})", f"--writer-base-url {tiny_server} --k 2 --n 3 --max-new-tokens 8"]:
        assert fact in card.text, fact

    # the default rule keeps only rows whose scores vary: none here, said so; every reply comes from the caches
    recipe.pop("select")
    (tmp_path / "default_rule.yaml").write_text(yaml.safe_dump(recipe))
    flags[3] = str(tmp_path / "default_rule.yaml")
    assert main([*flags, "--output-dir", str(tmp_path / "out2"), "--judge-base-url", tiny_server]) == 2
    out, err = capsys.readouterr()
    assert "no row selected: rule 'lowest_mean_varied' keeps rows whose k scores vary" in err
    assert "writer {'calls': 10, 'cache_hits': 10," in out
