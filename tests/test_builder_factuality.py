"""Factuality builder: selection of the just-hard-enough questions, row validation and even mixing,
and a real build (tiny random model, local hub) through the command-line entry point."""

from __future__ import annotations

import argparse
import importlib.util
import json
import random

import pytest
import yaml

from dataset_builders import factuality as fb
from dataset_builders.registry import get_builder
from hubtools.cli import main
from hubtools.generation import OpenAIGenerator, make_generator, serve_transformers
from hubtools.scoring import Grade
from hubtools.tasks import FACTUALITY

C, I, N = Grade.CORRECT, Grade.INCORRECT, Grade.NOT_ATTEMPTED


def _rows(grades_by_id: dict[str, list[Grade]], source="s") -> list[dict]:
    return [{"id": qid, "source": source, **fb.question_stats(g)} for qid, g in grades_by_id.items()]


def test_selection_prefers_varied_questions_with_deterministic_ties():
    rows = _rows({"always-right": [C] * 4, "never-right": [I] * 4, "always-abstains": [N] * 4,
                  "half": [C, C, I, I], "half-abstaining": [C, N, C, N], "quarter": [C, I, I, I],
                  "three-quarters": [C, C, I, C]})
    assert fb.question_stats([C, C, I, C]) == {"pass_rate": 0.75, "not_attempted_rate": 0.0, "variance": 0.1875}
    # unanswerable: abstaining is the pass
    assert fb.question_stats([N, I, I, I], answerable=False) == {"pass_rate": 0.25, "not_attempted_rate": 0.25,
                                                                 "variance": 0.1875}
    expected = ["half", "half-abstaining", "quarter", "three-quarters"]  # p(1-p); fewer not-attempts; id
    for seed in range(5):
        random.Random(seed).shuffle(rows)
        assert [r["id"] for r in fb.select_questions(rows, 4)] == expected
    # 3/10 and 7/10 correct spread equally and must tie exactly (float p*(1-p) would not)
    tie = _rows({"b": [C] * 7 + [I] * 3, "a": [C] * 3 + [I] * 7})
    assert [r["id"] for r in fb.select_questions(tie, 2)] == ["a", "b"]
    bounded = fb.select_questions(rows, None, min_pass_rate=0.5, max_pass_rate=0.9)
    assert [r["id"] for r in bounded] == ["half", "half-abstaining", "three-quarters"]


def test_balanced_rule_takes_evenly_across_sources():
    rows = (_rows({"a-1": [C, I], "a-2": [C, I], "a-3": [C, I]}, source="a")
            + _rows({"b-1": [C, C, C, I], "b-2": [C] * 4}, source="b"))
    assert [r["id"] for r in fb.select_questions(rows, 2)] == ["a-1", "a-2"]
    assert [r["id"] for r in fb.select_questions(rows, 2, "balanced")] == ["a-1", "b-1"]
    with pytest.raises(ValueError, match="rule"):
        fb.select_questions(rows, 2, "hardest")


def _write_jsonl(path, rows: list) -> None:
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")


def _sources(tmp_path) -> list[dict]:
    _write_jsonl(tmp_path / "bad.jsonl", [
        {"q": "Capital of France?", "answers": '["Paris"]'},
        {"q": "   ", "answers": '["Rome"]'},                       # row 1: empty question
        {"q": "Capital of Italy?", "answers": '["Rome"'},          # row 2: unparsable answers
        {"answers": '["Oslo"]'},                                    # row 3: no question
        "{not json",                                                # row 4: not JSON
        {"q": "Capital of Spain?", "answers": '["Madrid", "Madrid", " "]'},
    ])
    _write_jsonl(tmp_path / "selfaware.jsonl", [
        {"question": f"Question {i}?", "answer": None if i % 2 else [f"A{i}"], "answerable": not i % 2}
        for i in range(5)])
    return [{"name": "bad", "path": str(tmp_path / "bad.jsonl"),
             "columns": {"question": "q", "answers": "answers", "answer_format": "json_list"}},
            {"name": "selfaware", "path": str(tmp_path / "selfaware.jsonl"),
             "columns": {"question": "question", "answers": "answer", "answerable": "answerable"}}]


def test_bad_rows_are_counted_or_an_error_and_sources_mix_evenly(tmp_path, capsys):
    recipe = {"sources": _sources(tmp_path), "per_source": 4}
    by_source, skipped = fb.load_sources(recipe)
    assert dict(skipped) == {"bad: missing question": 2, "bad: unparsable answers": 1, "bad: invalid JSON": 1}
    assert [(q.id, q.answers) for q in by_source["bad"]] == [("bad-0", ["Paris"]), ("bad-5", ["Madrid"])]
    unanswerable = [q for q in by_source["selfaware"] if not q.answerable]
    assert len(by_source["selfaware"]) == 5 and len(unanswerable) == 2
    assert all(q.answers == [] for q in unanswerable)

    mixed = fb.mix_evenly(by_source, 4, seed=0)
    assert [q.source for q in mixed].count("bad") == [q.source for q in mixed].count("selfaware") == 2
    assert "bad (2 usable rows)" in capsys.readouterr().out
    assert [q.id for q in fb.mix_evenly(by_source, 4, seed=0)] == [q.id for q in mixed]

    with pytest.raises(ValueError, match=r"source 'bad' \(.*bad\.jsonl\) row 1: field 'question' \(column 'q'\)"):
        fb.load_sources(recipe | {"strict": True})
    recipe["sources"][0]["limit"] = 1  # rows 0 only from `bad`; now the unparsable cell is in `selfaware`
    (tmp_path / "selfaware.jsonl").write_text('{"question": "Q?", "answer": "x", "answerable": "yes"}\n')
    with pytest.raises(ValueError, match=r"source 'selfaware' .* row 0: field 'answerable' \(column 'answerable'\)"):
        fb.load_sources(recipe | {"strict": True})


def test_parquet_file_and_dataset_folder_sources(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq
    from datasets import Dataset, DatasetDict

    rows = [{"question": "Q1?", "answer": {"aliases": ["One", "1"]}}, {"question": "Q2?", "answer": {"aliases": []}}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "t.parquet")
    DatasetDict(validation=Dataset.from_list(rows)).save_to_disk(str(tmp_path / "folder"))
    columns = {"question": "question", "answers": "answer.aliases", "answer_format": "list"}
    by_source, skipped = fb.load_sources({"sources": [
        {"name": "pq", "path": str(tmp_path / "t.parquet"), "columns": columns},
        {"name": "disk", "path": str(tmp_path / "folder"), "split": "validation", "columns": columns}]})
    assert [(q.id, q.answers) for q in by_source["pq"]] == [("pq-0", ["One", "1"])] == \
        [(q.id.replace("disk", "pq"), q.answers) for q in by_source["disk"]]
    assert dict(skipped) == {"pq: missing answers": 1, "disk: missing answers": 1}
    with pytest.raises(FileNotFoundError, match="source 'gone'"):
        fb.load_sources({"sources": [{"name": "gone", "path": str(tmp_path / "gone.jsonl"), "columns": columns}]})


def test_recipe_checks_and_default_recipe_loads(tmp_path):
    recipe = fb.load_recipe(fb.DEFAULT_RECIPE)
    assert recipe["k"] == 16 and recipe["sampling"]["temperature"] == 1.0
    assert "\\boxed{Unknown}" in recipe["system_prompt"] and "Example:" in recipe["system_prompt"]
    by_source, skipped = fb.load_sources(recipe)
    assert {name: len(qs) for name, qs in by_source.items()} == {"simpleqa": 80, "popqa": 80, "selfaware": 80,
                                                                 "triviaqa": 80}
    assert not skipped and sum(not q.answerable for q in by_source["selfaware"]) == 40
    urls = ["http://127.0.0.1:1/v1", "http://127.0.0.1:2/v1"]
    served = make_generator(fb.apply_overrides(recipe, base_url=urls, model="some-model", n=3)["generator"])
    assert isinstance(served, OpenAIGenerator) and served.base_urls == urls
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['sampels'\]"):
        fb.complete_recipe(recipe | {"sampels": 3})
    with pytest.raises(ValueError, match="select.rule"):
        fb.complete_recipe(recipe | {"select": {"rule": "hardest"}})
    with pytest.raises(ValueError, match=r"sources\[0\].columns.answers is required"):
        fb.complete_recipe({"sources": [{"name": "x", "path": "x.jsonl", "columns": {"question": "q"}}]})
    with pytest.raises(ValueError, match="unknown dataset builder 'nope'; known: factuality"):
        get_builder("nope")
    assert get_builder("factuality") is fb


def test_build_pushes_dataset_histogram_and_card(tmp_path, hub, tiny_model_dir, repo_name, capsys):
    from datasets import Dataset, DatasetDict, load_dataset, load_from_disk
    from huggingface_hub import DatasetCard, HfApi, hf_hub_download

    popqa_repo = f"{repo_name}-popqa"
    DatasetDict(train=Dataset.from_list([
        {"question": f"Who is person {i}?", "possible_answers": json.dumps([f"Name {i}", f"N{i}"])}
        for i in range(4)])).push_to_hub(popqa_repo)
    sources = _sources(tmp_path)
    sources[0]["path"] = "bad.jsonl"  # relative to the recipe's folder
    sources.append({"name": "popqa", "path": popqa_repo,
                    "columns": {"question": "question", "answers": "possible_answers", "answer_format": "json_list"}})
    recipe_file = tmp_path / "recipe.yaml"
    recipe_file.write_text(json.dumps({"sources": sources, "sampling": {"temperature": 1.0},
                                       "select": {"rule": "variance"}, "test_size": 1, "license": "apache-2.0"}))
    parser = argparse.ArgumentParser()
    fb.add_arguments(parser)
    args = parser.parse_args(["--recipe", str(recipe_file), "--push-to-hub", repo_name, "--output-dir",
                              str(tmp_path / "out"), "--k", "4", "--n", "5", "--per-source", "3", "--model",
                              str(tiny_model_dir), "--backend", "transformers", "--max-new-tokens", "16"])
    assert fb.run(args) == 0
    assert f"/datasets/{repo_name}" in capsys.readouterr().out

    train = load_dataset(repo_name, split="train")
    test = load_dataset(repo_name, split="test")
    assert (len(train), len(test)) == (4, 1)
    assert set(train.features) == {"id", "source", "question", "answers", "answerable", "prompt", "pass_rate",
                                   "not_attempted_rate", "variance"}
    for row in list(train) + list(test):
        assert row["id"].startswith(row["source"] + "-") and row["source"] in {"bad", "selfaware", "popqa"}
        assert [m["role"] for m in row["prompt"]] == ["system", "user"]
        assert [m["content"] for m in row["prompt"]] == [FACTUALITY.system_prompt, row["question"]]
        assert row["answerable"] == bool(row["answers"])
        assert 0 <= row["pass_rate"] <= 1
        assert row["variance"] == pytest.approx(row["pass_rate"] * (1 - row["pass_rate"]))

    api = HfApi()
    assert fb.HIST_FILE in api.list_repo_files(repo_name, repo_type="dataset")
    assert api.dataset_info(repo_name).card_data.to_dict()["configs"]
    card = DatasetCard.load(hf_hub_download(repo_name, "README.md", repo_type="dataset"))
    assert card.data.configs and card.data.dataset_info and card.data.license == "apache-2.0"
    for fact in ["## Sources", "| bad |", "| selfaware |", "| popqa |", "| bad: unparsable answers | 1 |",
                 "| bad: missing question | 2 |", f"![Pass rate over the k samples, before vs after selection]"
                 f"({fb.HIST_FILE})", "- `k`: `4`", "| questions | 6 | 5 |",
                 f"hubtools build-dataset factuality --recipe path/to/recipe.yaml --push-to-hub {repo_name}"]:
        assert fact in card.text, fact
    assert str(tmp_path) not in card.text  # the reproduction command names no path of this machine

    local = load_from_disk(str(tmp_path / "out"))
    assert local["train"]["id"] == train["id"]
    assert (tmp_path / "out" / fb.HIST_FILE).read_bytes()[:4] == b"\x89PNG"
    assert "| popqa |" in (tmp_path / "out" / "README.md").read_text()


TINY = ["--k", "2", "--n", "2", "--per-source", "1", "--max-new-tokens", "8"]


@pytest.mark.timeout(300)
def test_build_with_the_default_recipe_through_two_servers(tmp_path, tiny_model_dir, capsys):
    from datasets import load_from_disk

    out = tmp_path / "out"
    with serve_transformers(tiny_model_dir) as url:  # the same server twice: the recipe's batch_size is ignored
        assert main(["build-dataset", "factuality", "--output-dir", str(out), "--model", str(tiny_model_dir),
                     "--base-url", url, "--base-url", url, *TINY]) == 0
    dd = load_from_disk(str(out))
    assert (len(dd["train"]), len(dd["test"])) == (1, 1)
    assert "openai" in capsys.readouterr().out
    readme = (out / "README.md").read_text()
    assert f"--base-url {url} --base-url {url}" in readme and "- `backend`: `openai`" in readme


def test_vllm_and_a_misspelled_option_fail_with_clear_errors(tmp_path, capsys):
    out = ["--output-dir", str(tmp_path / "out"), *TINY]
    if importlib.util.find_spec("vllm") is None:  # the default recipe is fine for vllm: only vllm is missing
        assert main(["build-dataset", "factuality", "--backend", "vllm", *out]) == 2
        err = capsys.readouterr().err
        assert "backend 'vllm': the vllm package is not installed" in err and "batch_size" not in err
    recipe = fb.load_recipe(fb.DEFAULT_RECIPE)  # its source paths made absolute
    recipe["generator"]["batchsize"] = recipe["generator"].pop("batch_size")
    (tmp_path / "typo.yaml").write_text(yaml.safe_dump(recipe))
    assert main(["build-dataset", "factuality", "--recipe", str(tmp_path / "typo.yaml"), "--backend", "transformers",
                 *out]) == 2
    assert "['batchsize'] not option(s) of backend 'transformers'" in capsys.readouterr().err
