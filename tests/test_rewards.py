"""Factuality rewards on hand-built groups, and across two real processes (gloo)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest

from conftest import ROOT
from hubtools.hubenv import free_port
from train.rewards import get_reward_funcs
from train.rewards.factuality import caution, fact, fact_caution

GOLD = ["Paris"]
RIGHT = "The capital is Paris. \\boxed{Paris}"
WRONG = "I think it is Lyon. \\boxed{Lyon}"
UNKNOWN = "Not sure. \\boxed{Unknown}"
PROCESS = "The capital is Paris. Or is it Marseille? \\boxed{Marseille}"  # committed to the gold, final answer wrong
NO_BOX = "Paris"  # right words, no final answer: counts as process-correct, never as correct
MISSING = "Let me think about the map."
ABSTAIN_AFTER_GOLD = "The capital is Paris. \\boxed{Unknown}"  # an abstention never earns process credit
LISTED = "It could be Paris, Lyon or Marseille. \\boxed{Lyon}"  # a candidate list commits to nothing
SPREAD = "Paris. Marseille. Nice. \\boxed{Lyon}"  # guesses over sentences: only the last one counts


def group(*completions, qid="q1", answerable=True):
    n = len(completions)
    return dict(completions=list(completions), answers=[GOLD] * n, answerable=[answerable] * n, id=[qid] * n)


def test_some_correct_rewards_correct_and_process_correct():
    assert fact_caution(**group(RIGHT, PROCESS, WRONG, UNKNOWN, NO_BOX, MISSING)) == [1.0, 0.5, 0.0, 0.0, 0.5, 0.0]


def test_process_credit_needs_a_wrong_attempt_and_a_commitment():
    assert fact_caution(**group(RIGHT, ABSTAIN_AFTER_GOLD, LISTED, SPREAD, PROCESS)) == [1.0, 0.0, 0.0, 0.0, 0.5]
    assert fact(**group(ABSTAIN_AFTER_GOLD, LISTED, SPREAD)) == [0.0, 0.0, 0.0]


def test_guess_lists_in_the_box_are_not_correct():
    lists = ["\\boxed{Paris Lyon Marseille}", "\\boxed{Paris-Lyon}", "\\boxed{Paris or Lyon}", "\\boxed{Paris? Lyon?}"]
    assert fact_caution(**group(*lists, UNKNOWN)) == [0.0] * len(lists) + [1.0]


def test_all_correct():
    assert fact_caution(**group(RIGHT, RIGHT)) == [1.0, 1.0]


def test_none_correct_rewards_abstention_only():
    assert fact_caution(**group(WRONG, UNKNOWN, PROCESS, NO_BOX)) == [0.0, 1.0, 0.0, 0.0]


def test_none_correct_without_unknown_is_all_zero():
    assert fact_caution(**group(WRONG, PROCESS)) == [0.0, 0.0]


def test_unanswerable_question_rewards_abstention():
    g = group("\\boxed{Paris}", UNKNOWN, qid="sa1", answerable=False)
    assert fact_caution(**g) == [0.0, 1.0]


def test_groups_are_keyed_by_id_in_one_batch():
    a, b = group(RIGHT, WRONG, qid="a"), group(WRONG, UNKNOWN, qid="b")
    batch = {k: a[k] + b[k] for k in a}
    assert fact_caution(**batch) == [1.0, 0.0, 0.0, 1.0]


def test_fact_and_caution_alone_and_summed():
    g = group(RIGHT, PROCESS, UNKNOWN)
    assert fact(**g) == [1.0, 0.5, 0.0]
    assert caution(**g) == [0.0, 0.0, 0.0]  # someone was right: caution gives nothing
    g = group(WRONG, PROCESS, UNKNOWN)
    assert caution(**g) == [0.0, 0.0, 1.0]
    assert fact(**g) == [0.0, 0.5, 0.0]


def test_fact_then_caution_schedule_switches_at_step():
    (reward,) = get_reward_funcs(SimpleNamespace(reward_funcs=[], reward_schedule="fact:3,caution"))
    g = group(WRONG, UNKNOWN)
    assert reward(**g, trainer_state=SimpleNamespace(global_step=2)) == [0.0, 0.0]
    assert reward(**g, trainer_state=SimpleNamespace(global_step=3)) == [0.0, 1.0]
    assert reward.__name__ == "fact_then_caution"


def test_bad_recipe_names_the_field():
    with pytest.raises(ValueError, match="unknown reward 'facts'"):
        get_reward_funcs(SimpleNamespace(reward_funcs=["facts"], reward_schedule=None))
    with pytest.raises(ValueError, match="answers"):
        fact(completions=[RIGHT])
    with pytest.raises(ValueError, match="last reward stage"):
        get_reward_funcs(SimpleNamespace(reward_funcs=[], reward_schedule="fact:3"))


_WORKER = r"""
import os, sys, json
import torch.distributed as dist
sys.path.insert(0, os.environ["ROOT"])
from train.rewards.factuality import fact_caution, caution
dist.init_process_group("gloo")
rank = dist.get_rank()
# Group q1: the only correct sample is on rank 0; group q2: no correct sample anywhere.
local = {
    0: (["The capital is Paris. \\boxed{Paris}", "\\boxed{Lyon}"], ["q1", "q2"]),
    1: (["It is Paris. Or Nice? \\boxed{Nice}", "\\boxed{Unknown}", "\\boxed{Unknown}"], ["q1", "q1", "q2"]),
}[rank]
completions, ids = local
n = len(completions)
out = {"fact_caution": fact_caution(completions, answers=[["Paris"]] * n, answerable=[True] * n, id=ids),
       "caution": caution(completions, answers=[["Paris"]] * n, answerable=[True] * n, id=ids)}
open(os.path.join(os.environ["OUT"], f"{rank}.json"), "w").write(json.dumps(out))
dist.destroy_process_group()
"""


def test_group_rule_holds_across_two_processes(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(_WORKER)
    env = dict(os.environ, ROOT=str(ROOT), OUT=str(tmp_path))
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          f"--master_port={free_port()}", str(script)], env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    by_len = {len(r["fact_caution"]): r for r in (json.loads((tmp_path / f"{k}.json").read_text()) for k in (0, 1))}
    # rank 1 holds no correct sample of q1, yet sees the group has one: process-correct 0.5, Unknown 0.
    assert by_len[3]["fact_caution"] == [0.5, 0.0, 1.0]
    assert by_len[2]["fact_caution"] == [1.0, 0.0]
    assert by_len[3]["caution"] == [0.0, 0.0, 1.0]


def test_rewards_log_their_wall_time_and_keep_name_and_kind():
    import asyncio
    import inspect

    from train.rewards import timed

    async def slow_judge(completions, **_):
        await asyncio.sleep(0.05)
        return [1.0] * len(completions)

    def rule(completions, **_):
        return [0.0] * len(completions)

    logged = {}
    a, r = timed(slow_judge), timed(rule)
    assert (a.__name__, r.__name__) == ("slow_judge", "rule")  # TRL logs rewards/{name}/mean
    assert inspect.iscoroutinefunction(a) and not inspect.iscoroutinefunction(r)  # TRL gathers async ones
    assert asyncio.run(a(["x", "y"], log_metric=logged.__setitem__)) == [1.0, 1.0]
    assert r(["x"], log_metric=logged.__setitem__) == [0.0]
    assert logged["reward_seconds/slow_judge"] >= 0.05 and 0 <= logged["reward_seconds/rule"] < 0.05
    assert r(["x"]) == [0.0]  # called without TRL's log_metric: nothing to log, no error
