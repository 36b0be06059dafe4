"""Rubric, citation and format rewards: the arithmetic on hand-built judge verdicts, and the hacks.

The judge is a stand-in with fixed verdicts (`FixedScores`); the rewards are called the way TRL 1.16's
`GRPOTrainer._calculate_rewards` calls them (`trl_call`)."""

from __future__ import annotations

import asyncio
import re
from collections import defaultdict

import pytest
from trl.trainer.utils import get_callable_name, is_async_callable

from hubtools.judge import render
from train.rewards.rubric import format_reward, make_citation_reward, make_rubric_reward

TOOLS = """<snippet id=S1>Title: Eiffel Tower
Snippet: The Eiffel Tower is 330 metres tall.</snippet>
<snippet id=S2>Gustave Eiffel's company built the tower for the 1889 World's Fair.</snippet>
<webpage id=W1>The tower opened to the public on 15 May 1889.</webpage>"""

QUESTION = "Who built the Eiffel Tower and how tall is it?"
TALL = "The tower is 330 metres tall."
BUILT = "Eiffel's company built it for the 1889 fair."
UNCITED = "It is the most visited monument on earth."


def answer(body: str) -> str:
    return f"<think>The sources say so.</think>\n<answer>{body}</answer>"


GOOD = answer(f"<snippet id=S1>{TALL}</snippet> <snippet id=S2>{BUILT}</snippet>")


class FixedScores:
    """Judge stand-in: fixed verdicts, already on [0, 1] as `Judge.score` returns them (None = a reply
    that did not parse), keyed by rubric title or by (claim, cited ids). The packaged prompt is
    rendered, so the variables must fit it. Records every question; one it has no verdict for is a
    KeyError, so "the judge was not asked" is checked too."""

    def __init__(self, verdicts: dict):
        self.verdicts, self.calls, self.asked = verdicts, [], []
        self.in_flight = self.most_in_flight = 0

    async def score(self, template: str, /, *, scale=(0, 2), metric=None, **variables) -> float | None:
        assert scale == (0, 2) and metric in ("rubric", "citation")
        render(template, lo=scale[0], hi=scale[1], **variables)  # StrictUndefined: a missing variable raises
        if metric == "rubric":
            key = variables["rubric"].split("\n")[0]
        else:
            key = (variables["response"], tuple(re.findall(r"^\[(.+)\]$", variables["rubric"], re.M)))
        self.calls.append(key)
        self.asked.append(variables)
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        await asyncio.sleep(0)
        self.in_flight -= 1
        return self.verdicts[key]


def trl_call(reward, completions, **columns):
    """As `_calculate_rewards` does: prompts, completions, completion_ids and each column as lists,
    plus trainer_state, log_extra and log_metric; an async reward is awaited on an event loop
    (TRL: `asyncio.gather` on its daemon loop). Returns (rewards, logged metrics, logged extras)."""
    metrics, extras = defaultdict(list), defaultdict(list)
    n = len(completions)
    kwargs = dict(prompts=[QUESTION] * n, completions=completions, completion_ids=[[1, 2, 3]] * n,
                  trainer_state=None, log_extra=lambda column, values: extras[column].extend(values),
                  log_metric=lambda name, value: metrics[name].append(value)) | columns
    out = asyncio.run(reward(**kwargs)) if is_async_callable(reward) else reward(**kwargs)
    assert len(out) == n
    return out, dict(metrics), dict(extras)


POSITIVE = [{"title": "Names Eiffel's company", "description": "Says who built it.", "weight": 2},
            {"title": "Gives the height", "description": "330 m."}]
NEGATIVE = [{"title": "Claims it is in Lyon", "description": "Wrong city.", "weight": None}]
INSTANCE = {"Names Eiffel's company": 0.5, "Gives the height": 1.0, "Claims it is in Lyon": 0.25}
STATIC = {"Citation Discipline": 1.0, "Off-Query Padding": 0.0, "Wrong-Entity Confabulation": 0.5}


def rubric_rows(n=1, positive=POSITIVE, negative=NEGATIVE):
    return dict(positive_rubrics=[positive] * n, negative_rubrics=[negative] * n)


# ---- rubric ----------------------------------------------------------------------------------

def test_positive_as_is_negative_flipped():
    judge = FixedScores({"Gives the height": 0.75, "Claims it is in Lyon": 0.75})
    reward = make_rubric_reward(judge, instance_rubrics_only=True)
    assert trl_call(reward, [GOOD], **rubric_rows(positive=POSITIVE[1:], negative=[]))[0] == [0.75]
    assert trl_call(reward, [GOOD], **rubric_rows(positive=[], negative=NEGATIVE))[0] == [0.25]


def test_weighted_mean_with_row_weights_default_one():
    rewards, metrics, extras = trl_call(make_rubric_reward(FixedScores(INSTANCE), instance_rubrics_only=True),
                                        [GOOD], **rubric_rows())
    assert rewards == [pytest.approx((2 * 0.5 + 1.0 + (1 - 0.25)) / 4)]
    assert metrics["rubric/positive"] == [pytest.approx(0.75)] and metrics["rubric/negative_avoided"] == [0.75]
    assert extras == {"rubric_positive": [0.75], "rubric_negative_avoided": [0.75], "rubric_parse_failures": [0]}


def test_static_set_joins_reward_and_logs_unless_instance_only():
    judge = FixedScores(INSTANCE | STATIC)
    rewards, metrics, _ = trl_call(make_rubric_reward(judge), [GOOD, GOOD], **rubric_rows(2))
    assert rewards == [pytest.approx((2 * 0.5 + 1.0 + 0.75 + 1.0 + 1.0 + 0.5) / 7)] * 2
    assert metrics["rubric/static/citation_discipline"] == [1.0]
    assert metrics["rubric/static/off_query_padding"] == [1.0]  # logged as it enters the reward: 1 - s
    assert metrics["rubric/static/wrong_entity_confabulation"] == [0.5]
    assert judge.most_in_flight == len(judge.calls) == 12  # one call per rubric per completion, all at once

    judge = FixedScores(INSTANCE)  # a static title would be a KeyError
    rewards, metrics, _ = trl_call(make_rubric_reward(judge, instance_rubrics_only=True), [GOOD], **rubric_rows())
    assert rewards == [pytest.approx(0.6875)]
    assert not [m for m in metrics if m.startswith("rubric/static/")]
    assert set(judge.calls) == set(INSTANCE)


def test_custom_static_set_with_weight():
    static_negative = [{"title": "Off-Query Padding", "description": "Padding.", "weight": 3}]
    reward = make_rubric_reward(FixedScores(INSTANCE | STATIC), static_positive=[], static_negative=static_negative)
    assert trl_call(reward, [GOOD], **rubric_rows())[0] == [pytest.approx((2.75 + 3 * 1.0) / 7)]


def test_parse_failures_left_out_and_counted_all_failing_is_none():
    reward = make_rubric_reward(FixedScores(INSTANCE | {"Gives the height": None}), instance_rubrics_only=True)
    rewards, metrics, extras = trl_call(reward, [GOOD], **rubric_rows())
    assert rewards == [pytest.approx((2 * 0.5 + 0.75) / 3)]  # neither 0 nor 1 stands in for the failure
    assert metrics["rubric/parse_failures"] == [1.0] and extras["rubric_parse_failures"] == [1]

    reward = make_rubric_reward(FixedScores({t: None for t in INSTANCE}), instance_rubrics_only=True)
    rewards, metrics, extras = trl_call(reward, [GOOD], **rubric_rows())
    assert rewards == [None] and metrics["rubric/parse_failures"] == [3.0]
    assert "rubric/positive" not in metrics and extras["rubric_positive"] == [None]


@pytest.mark.parametrize("completion", [
    answer(""),                                                        # empty answer
    answer("Yes."),                                                    # no claims
    answer("<snippet id=S1></snippet> <snippet id=S2> </snippet>"),    # snippet tags with no text
    f"<think>So: <answer><snippet id=S1>{TALL}</snippet></answer></think>",  # <answer> inside <think>
    GOOD + "\n<answer><snippet id=S1>It is tall.</snippet></answer>",  # two answer blocks
    f"<snippet id=S1>{TALL}</snippet> {UNCITED}",                      # no answer block
], ids=["empty", "no-claims", "empty-snippets", "answer-in-think", "two-answers", "no-answer-block"])
def test_rubric_pays_nothing_for_no_claim_without_asking(completion):
    judge = FixedScores({})
    rewards, metrics, _ = trl_call(make_rubric_reward(judge), [completion], **rubric_rows())
    assert rewards == [0.0] and judge.calls == [] and metrics["rubric/no_answer"] == [1.0]


def test_bad_rubric_rows_and_judge_scales_are_errors():
    reward = make_rubric_reward(FixedScores(INSTANCE), instance_rubrics_only=True)
    with pytest.raises(ValueError, match=r"row 1: positive_rubrics\[0\].*weight 0"):
        trl_call(reward, [GOOD, GOOD], positive_rubrics=[POSITIVE, [{"title": "t", "weight": 0}]],
                 negative_rubrics=[[], []])
    with pytest.raises(ValueError, match=r"row 0: negative_rubrics\[0\] must be"):
        trl_call(reward, [GOOD], **rubric_rows(negative=[{"description": "no title"}]))
    with pytest.raises(ValueError, match="row 0 has no rubrics.*instance_rubrics_only"):
        trl_call(reward, [GOOD], **rubric_rows(positive=[], negative=[]))
    with pytest.raises(ValueError, match="normalize"):
        trl_call(make_rubric_reward(FixedScores({"Gives the height": 2.0}), instance_rubrics_only=True), [GOOD],
                 **rubric_rows(positive=POSITIVE[1:], negative=[]))


# ---- citation --------------------------------------------------------------------------------

def citation(verdicts: dict, *completions):
    judge = FixedScores(verdicts)
    out = trl_call(make_citation_reward(judge), list(completions), tool_output=[TOOLS] * len(completions))
    return (*out, judge)


def test_precision_recall_f1_on_hand_built_verdicts():
    text = answer(f"<snippet id=S1>{TALL}</snippet> <snippet id=W1>{BUILT}</snippet> {UNCITED}")
    rewards, metrics, extras, _ = citation({(TALL, ("S1",)): 1.0, (BUILT, ("W1",)): 0.5}, text)
    p, r = (1.0 + 0.5) / 2, (1.0 + 0.5) / 3
    assert rewards == [pytest.approx(2 * p * r / (p + r))] and rewards[0] == pytest.approx(0.6)
    assert extras == {"citation_precision": [p], "citation_recall": [r]}
    assert metrics["citation/precision"] == [p] and metrics["citation/hallucinated_claims"] == [0.0]


def test_judge_sees_the_cited_passages_together_and_alone():
    verdicts = {(TALL, ("S1", "W1")): 1.0, (TALL, ("S1",)): 1.0, (TALL, ("W1",)): 0.0}
    *_, judge = citation(verdicts, answer(f'<snippet id="S1, W1">{TALL}</snippet>'))
    assert sorted(judge.calls) == sorted(verdicts)
    together = judge.asked[judge.calls.index((TALL, ("S1", "W1")))]["rubric"]
    assert together.endswith("[S1]\nTitle: Eiffel Tower\nSnippet: The Eiffel Tower is 330 metres tall.\n\n"
                             "[W1]\nThe tower opened to the public on 15 May 1889.")


@pytest.mark.parametrize("prompt", [QUESTION, [{"role": "system", "content": "Refine."},
                                                {"role": "user", "content": QUESTION}]])
def test_rubric_judge_sees_question_answer_and_criterion(prompt):
    judge = FixedScores(INSTANCE)
    trl_call(make_rubric_reward(judge, instance_rubrics_only=True), [[{"role": "assistant", "content": GOOD}]],
             prompts=[prompt], **rubric_rows(positive=POSITIVE[:1], negative=[]))
    assert judge.asked == [{"question": QUESTION,
                            "response": f"<snippet id=S1>{TALL}</snippet> <snippet id=S2>{BUILT}</snippet>",
                            "rubric": "Names Eiffel's company\nSays who built it."}]


def test_hallucinated_id_is_unsupported_without_asking():
    rewards, metrics, _, judge = citation({}, answer(f"<snippet id=S1,S7>{TALL}</snippet>"))
    assert rewards == [0.0] and judge.calls == [] and metrics["citation/hallucinated_claims"] == [1.0]


def test_citing_every_id_on_every_claim_does_not_pay():
    exact = answer(f"<snippet id=S1>{TALL}</snippet> <snippet id=S2>{BUILT}</snippet>")
    every = answer(f"<snippet id=S1,S2,W1>{TALL}</snippet> <snippet id=S1,S2,W1>{BUILT}</snippet>")
    verdicts = {(TALL, ("S1",)): 1.0, (BUILT, ("S2",)): 1.0,
                (TALL, ("S1", "S2", "W1")): 1.0, (TALL, ("S2",)): 0.0, (TALL, ("W1",)): 0.0,
                (BUILT, ("S1", "S2", "W1")): 1.0, (BUILT, ("S1",)): 0.0, (BUILT, ("W1",)): 0.5}
    rewards, _, extras, _ = citation(verdicts, exact, every)
    assert rewards[0] == 1.0
    assert extras["citation_precision"][1] == pytest.approx((1 / 3 + 2 / 3) / 2)  # each passage asked alone
    assert extras["citation_recall"][1] == 1.0 and rewards[1] == pytest.approx(2 / 3)


def test_repeating_a_supported_claim_does_not_pay():
    once = answer(f"<snippet id=S1>{TALL}</snippet> {UNCITED}")
    twenty = answer(f"<snippet id=S1>{TALL}</snippet> " * 20 + UNCITED)
    rewards, _, _, judge = citation({(TALL, ("S1",)): 1.0}, once, twenty)
    assert rewards == [pytest.approx(2 / 3)] * 2  # the uncited claim still costs half the recall
    assert judge.calls == [(TALL, ("S1",))]  # one question for all the copies


def test_copied_passage_is_faithful_padding_is_left_to_the_rubrics():
    copied = "Gustave Eiffel's company built the tower for the 1889 World's Fair."
    rewards, _, _, _ = citation({(copied, ("S2",)): 1.0}, answer(f"<snippet id=S2>{copied}</snippet>"))
    assert rewards == [1.0]  # the attribution is right; "Off-Query Padding" judges restated passages


def test_citation_parse_failures_left_out_all_failing_is_none():
    text = answer(f"<snippet id=S1>{TALL}</snippet> <snippet id=S2>{BUILT}</snippet> {UNCITED}")
    rewards, metrics, extras, _ = citation({(TALL, ("S1",)): None, (BUILT, ("S2",)): 1.0}, text)
    assert rewards == [pytest.approx(2 * 1.0 * 0.5 / 1.5)] and metrics["citation/parse_failures"] == [1.0]
    rewards, _, _, _ = citation({(TALL, ("S1",)): None, (BUILT, ("S2",)): None}, text)
    assert rewards == [None]


def test_no_cited_claims_or_no_answer_is_zero():
    rewards, _, extras, judge = citation({}, answer(UNCITED), answer(""), f"<snippet id=S1>{TALL}</snippet>")
    assert rewards == [0.0, 0.0, 0.0] and judge.calls == []
    assert extras["citation_precision"] == [None] * 3 and extras["citation_recall"] == [0.0, None, None]


def test_citation_and_format_need_the_tool_output():
    with pytest.raises(ValueError, match="tool_output"):
        trl_call(make_citation_reward(FixedScores({})), [GOOD])
    with pytest.raises(ValueError, match="tool_output"):
        trl_call(format_reward, [GOOD])


# ---- format ----------------------------------------------------------------------------------

@pytest.mark.parametrize("completion,expected", [
    (GOOD, 1.0),
    ([{"role": "assistant", "content": GOOD}], 1.0),                  # conversational completion
    (f"<answer><snippet id=W1>{TALL}</snippet> {UNCITED}</answer>", 1.0),  # no reasoning; uncited text allowed
    (answer(f"<snippet id=S1,S2,W1>{TALL}</snippet>"), 1.0),           # over-citing is the citation reward's
    ("Here you go: " + GOOD.split("\n")[1], 0.0),                     # text before the block
    (GOOD + " Hope this helps.", 0.0),                                # text after the block
    (GOOD + "\n<answer><snippet id=S1>It is tall.</snippet></answer>", 0.0),  # two blocks
    (f"<think>So: <answer><snippet id=S1>{TALL}</snippet></answer></think>", 0.0),  # <answer> inside <think>
    (answer(f"<snippet id=S1,S7>{TALL}</snippet>"), 0.0),              # hallucinated id
    (answer(f"<snippet id=[S1]>{TALL}</snippet>"), 0.0),               # an id spelled differently
    (answer(UNCITED), 0.0),                                           # no cited claim
    (answer(""), 0.0),                                                # empty answer
    (answer(f"<snippet id=S1>{TALL}</snippet><snippet id=S2></snippet>"), 0.0),  # snippet with no text
    (answer(f"<snippet id=S2>{BUILT} <snippet id=S1>{TALL}</snippet></snippet>"), 0.0),  # nested
    (answer(f"<snippet id=S1>{TALL}"), 0.0),                          # unclosed snippet
    (answer(f"<snippet>{TALL}</snippet> <snippet id=S2>{BUILT}</snippet>"), 0.0),  # snippet without ids
    (f"<answer><snippet id=S1>{TALL}</snippet>", 0.0),                # unclosed answer (truncated)
])
def test_format(completion, expected):
    assert trl_call(format_reward, [completion], tool_output=[TOOLS])[0] == [expected]


def test_trl_sees_the_judge_rewards_as_async_under_their_names():
    judge = FixedScores({})
    assert [is_async_callable(f) for f in (make_rubric_reward(judge), make_citation_reward(judge), format_reward)] \
        == [True, True, False]
    assert [get_callable_name(f) for f in (make_rubric_reward(judge), make_citation_reward(judge), format_reward)] \
        == ["rubric", "citation", "format"]
