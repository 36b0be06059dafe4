"""Factuality and caution rewards of the GRPO factuality-and-caution study; TRL signature
`f(completions, **columns)`.

Columns they read (written by `dataset_builders.factuality`): `answers` (gold aliases), `answerable`
(False for SelfAware-style questions: abstaining is then the right answer) and `id` (one id per
question, which keys the group).

`fact_caution`, over the group of samples of one prompt:
  * some sample is CORRECT  → CORRECT 1.0, process-correct 0.5, others 0;
  * no sample is CORRECT    → NOT_ATTEMPTED (`\\boxed{Unknown}`, "I don't know", …) 1.0, others 0.
Process-correct means the grade is INCORRECT (the final answer is a wrong attempt or missing; an
abstention never earns it, else "name the gold in the reasoning, then box Unknown" would pay
whether or not the group has a correct sample) and the reasoning commits to the gold: its last
committing sentence names the gold and only the gold (`hubtools.scoring.reasoning_reaches_gold`),
so listing candidates earns nothing. It earns credit only in groups where someone got it right,
so an all-wrong group never gets a shaped, noisy spread from it.

`fact` and `caution` split the rule in two, to be used alone, summed, or in sequence (`staged`):
  * fact: CORRECT 1.0, process-correct 0.5, others 0 (per sample, no group condition);
  * caution: in a group with no CORRECT sample, NOT_ATTEMPTED 1.0, others 0; otherwise 0.

Group rules need the whole group, but TRL scores completions on each process separately and only
gathers the rewards afterwards: a group's samples can sit on different ranks. So the grades are
all-gathered (torch.distributed, any backend) before the group decisions are taken. Every rank calls
the reward the same number of times per step, so the collective is safe.
"""

from __future__ import annotations

from typing import Callable, Sequence

from hubtools.scoring import Grade, extract_boxed, grade_answer, reasoning_reaches_gold

RewardFn = Callable[..., list[float]]


def completion_text(completion) -> str:
    """TRL passes plain strings, or message lists for conversational datasets."""
    if isinstance(completion, str):
        return completion
    return "".join(m.get("content") or "" for m in completion if m.get("role", "assistant") == "assistant")


def _grades(completions, answers, answerable) -> list[tuple[Grade, bool]]:
    out = []
    for i, c in enumerate(completions):
        if answers is None:
            raise ValueError("factuality rewards need an `answers` column (gold aliases) in the dataset")
        text, golds = completion_text(c), answers[i]
        ok = True if answerable is None else bool(answerable[i])
        grade = grade_answer(text, golds, answerable=ok)
        out.append((grade, ok and grade is Grade.INCORRECT and reasoning_reaches_gold(text, golds)))
    return out


def _all_gather(items: list) -> list:
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        parts: list = [None] * dist.get_world_size()
        dist.all_gather_object(parts, items)
        return [x for part in parts for x in part]
    return items


def _group_has_correct(keys: Sequence, grades: list[tuple[Grade, bool]]) -> list[bool]:
    """For each local sample: does any sample of its group, on any rank, have a CORRECT grade?"""
    everywhere = _all_gather([(k, g is Grade.CORRECT) for k, (g, _) in zip(keys, grades)])
    correct_keys = {k for k, correct in everywhere if correct}
    return [k in correct_keys for k in keys]


def _keys(completions, id=None, prompts=None) -> list:
    if id is not None:
        return list(id)
    if prompts is not None:
        return [repr(p) for p in prompts]
    raise ValueError("group rewards need an `id` column (or the prompts) to find each sample's group")


def fact_caution(completions, answers=None, answerable=None, id=None, prompts=None, **_) -> list[float]:
    grades = _grades(completions, answers, answerable)
    has_correct = _group_has_correct(_keys(completions, id, prompts), grades)
    rewards = []
    for (grade, process_correct), any_correct in zip(grades, has_correct):
        if any_correct:
            rewards.append(1.0 if grade is Grade.CORRECT else 0.5 if process_correct else 0.0)
        else:
            rewards.append(1.0 if grade is Grade.NOT_ATTEMPTED else 0.0)
    return rewards


def fact(completions, answers=None, answerable=None, **_) -> list[float]:
    return [1.0 if g is Grade.CORRECT else 0.5 if pc else 0.0 for g, pc in _grades(completions, answers, answerable)]


def caution(completions, answers=None, answerable=None, id=None, prompts=None, **_) -> list[float]:
    grades = _grades(completions, answers, answerable)
    has_correct = _group_has_correct(_keys(completions, id, prompts), grades)
    return [1.0 if (not any_c and g is Grade.NOT_ATTEMPTED) else 0.0 for (g, _), any_c in zip(grades, has_correct)]


def boxed_format(completions, **_) -> list[float]:
    """1.0 when the completion gives a final answer in `\\boxed{}` (an abstention counts), else 0.

    Every grade above reads that box, and a small model that rarely writes one gives groups with no
    spread, so nothing to learn from; this is the signal such a model can learn first. It pays for
    the format only: pair it with a correctness reward at a lower weight."""
    return [1.0 if (extract_boxed(completion_text(c)) or "").strip() else 0.0 for c in completions]


def staged(stages: list[tuple[RewardFn, int | None]]) -> RewardFn:
    """One reward after another: `[(fact, 100), (caution, None)]` = fact for steps < 100, then caution."""
    if not stages or stages[-1][1] is not None:
        raise ValueError("the last reward stage must have no end step (until_step: null)")

    def reward(completions, trainer_state=None, **columns) -> list[float]:
        step = trainer_state.global_step if trainer_state is not None else 0
        fn = next(f for f, until in stages if until is None or step < until)
        return fn(completions, trainer_state=trainer_state, **columns)

    reward.__name__ = "_then_".join(f.__name__ for f, _ in stages)
    return reward
