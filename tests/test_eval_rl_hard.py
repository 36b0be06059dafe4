"""`hubtools eval rl_hard`: the training rewards score each revision's answers; results go into its card."""

from __future__ import annotations

import json

from huggingface_hub import ModelCard, hf_hub_download

from hubtools.eval import rl_hard
from test_rubric_rewards import BUILT, GOOD, QUESTION, TALL, TOOLS, FixedScores, answer

ROW = {"prompt": [{"role": "user", "content": QUESTION}], "tool_output": TOOLS,
       "positive_rubrics": [{"title": "States the height", "description": "330 metres."}],
       "negative_rubrics": [{"title": "Names the wrong builder", "description": "Anyone but Eiffel's company."}]}


def test_scores_come_from_the_training_rewards():
    verdicts = {"States the height": 1.0, "Names the wrong builder": 0.0, "Citation Discipline": 1.0,
                "Off-Query Padding": 0.5, "Wrong-Entity Confabulation": None,  # one unparsable reply
                (TALL, ("S1",)): 1.0, (BUILT, ("S2",)): 1.0}
    bad = answer(f"<snippet id=S9>{TALL}</snippet>")  # cites an id the tool output lacks
    verdicts[(TALL, ("S9",))] = 1.0
    s = rl_hard.score_answers(FixedScores(verdicts), [ROW], [[GOOD, bad]])
    assert (s.rows, s.k) == (1, 2)
    assert s.positive_satisfied == 1.0 and s.negative_avoided == 0.75  # (1 - 0) and (1 - 0.5), per answer
    assert s.judge_parse_failures == 2  # Wrong-Entity Confabulation, once per answer
    assert s.format_valid == 0.5 and s.citation_f1 < 1.0 and s.citation_precision < 1.0
    assert set(s.metrics()) == {"rubric_score", "positive_satisfied", "negative_avoided", "citation_precision",
                                "citation_recall", "citation_f1", "format_valid"}
    assert "| step-1 | " in rl_hard.markdown_table({"step-1": s})


def test_eval_writes_each_revision_card(api, repo_name, tiny_model_dir, tmp_path):
    """Real path: a published revision generates, a real `transformers serve` judges (the tiny random
    model's replies do not parse: counted, never scored), the card gets model-index and a section."""
    from datasets import Dataset, DatasetDict

    from hubtools.generation import serve_transformers
    from hubtools.judge import Judge
    from hubtools.publish import publish_checkpoint
    publish_checkpoint(tiny_model_dir, repo_name, "step-1", card_info={"title": "tiny"})
    ds_repo = repo_name + "-data"
    DatasetDict(test=Dataset.from_list([ROW, ROW])).push_to_hub(ds_repo)
    with serve_transformers(tiny_model_dir) as url:
        judge = Judge(str(tiny_model_dir), url, temperature=1.0, max_tokens=8)
        results = rl_hard.evaluate_revisions(repo_name, ["step-1"], ds_repo, judge, k=1, max_new_tokens=8,
                                             generator={"backend": "transformers"}, output_dir=tmp_path)
    s = results["step-1"]
    assert s.format_valid == 0.0 and s.judge_parse_failures >= 0
    assert json.loads((tmp_path / "results.json").read_text())["step-1"]["rows"] == 2
    card = ModelCard.load(hf_hub_download(repo_name, "README.md", revision="step-1"))
    metrics = {r.metric_type: r.metric_value for r in card.data.eval_results}
    assert metrics["format_valid"] == 0.0
    assert "## Evaluation: rl_hard" in card.text and "eval_rl_hard.png" in card.text
    assert "tiny" in card.text  # the rest of the card is kept
