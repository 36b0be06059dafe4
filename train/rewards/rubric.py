"""Rewards of the rubric task (a refiner that answers with `<snippet id=...>` citations); TRL signature
`f(completions, **columns)`. The judge-backed ones are `async def`: TRL gathers them concurrently.

Both judge-backed rewards ask through `hubtools.judge.Judge.score` with the packaged `rubric_score`
prompt (question, response, criterion; 0-2): a support check is a criterion holding the cited passages,
with the claim as the response. The judge counts its failures under the metrics `rubric` and `citation`.

Columns they read: `positive_rubrics` / `negative_rubrics` (per row, lists of {title, description,
weight?}; a missing or null weight is 1) and `tool_output` (the raw search-tool output the refiner
saw; its format in `hubtools.citations`).

* `rubric` (`make_rubric_reward`): the judge scores every rubric of the row, plus a static set, on
  0-2, normalized by the judge to [0, 1]. Positive rubrics enter as-is, negative ones flipped (1 - s);
  reward = weighted mean. A rubric whose judge reply did not parse (None) is left out and counted;
  all of them failing makes the reward None. A completion whose answer has no claim (no answer
  block, an empty one, snippets without text, a few words) gets 0 without asking the judge: else
  the flipped negatives alone would pay for saying nothing.
* `citation` (`make_citation_reward`): claim-level F1 of snippet attributions (claims per
  `hubtools.citations.parse_claims`). A cited claim's support s is the judge's 0-2 verdict on the
  claim against the passages it cites; a claim citing an id absent from the tool output has s = 0
  without asking. Precision over cited claims counts s times the fraction of cited passages that
  support the claim at least in part on their own (asked per passage when a claim cites several),
  so citing every id on every claim does not pay; recall = supported / all claims, uncited ones
  included. Repeats of one claim text share one claim's weight, so restating a supported claim 20
  times neither raises recall nor buries an uncited claim. No cited claims: 0; every cited claim
  unjudged (parse failures): None.
* `format_reward`: 1.0 when, after the reasoning, there is exactly one `<answer>` block and nothing
  else but whitespace, its snippets are well formed (`hubtools.citations.malformed`), it has at least
  one cited claim and every cited id is in the tool output; else 0.0.

What TRL 1.16 does with None: it becomes NaN for that reward function; the per-function log
(`rewards/{name}/mean`) skips it; the weighted sum over functions is a nansum, so the function adds 0
to that completion's total while the others still count (next to `format_reward`, a None `rubric`
weighs like 0 in the advantage). Only a completion for which every function returned None is
dropped from its group's baseline and gets advantage 0 (TRL logs a warning naming the row).
"""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from typing import Callable, Protocol, Sequence

from hubtools.citations import Claim, answer_block, malformed, normalize_claim, parse_claims, source_passages
from hubtools.tasks import RL_HARD
from hubtools.aggregate import mean
from train.rewards.common import log_to_trl
from train.rewards.factuality import completion_text

TOOL_OUTPUT = "tool_output"


class Judge(Protocol):
    """What the rewards need of `hubtools.judge.Judge`."""

    async def score(self, template: str, /, *, scale: tuple[float, float] = (0, 2), metric: str | None = None,
                    **variables) -> float | None:
        """The judge's score for the packaged prompt `template` (hubtools/prompts/TEMPLATE.j2) rendered with
        `variables`, normalized from `scale` to [0, 1]; None when the call failed or the reply did not
        parse. Failures are counted under `metric`."""


def static_rubrics(names: Sequence[str] | None = None) -> tuple[list[dict], list[dict]]:
    """(positive, negative) rubrics of the task's static set (`hubtools.tasks.RL_HARD`), all or by title."""
    table = RL_HARD.static_rubrics
    unknown = sorted(set(names or ()) - set(table))
    if unknown:
        raise ValueError(f"unknown static rubric(s) {unknown}; known: {sorted(table)}")
    chosen = [(title, table[title]) for title in (table if names is None else names)]
    return ([{"title": t, "description": r["description"]} for t, r in chosen if r["kind"] == "positive"],
            [{"title": t, "description": r["description"]} for t, r in chosen if r["kind"] == "negative"])


STATIC_POSITIVE, STATIC_NEGATIVE = static_rubrics()

TEMPLATE = "rubric_score"  # question, response, rubric (criterion text) -> 0-2

# A support check is a rubric item too: the claim is the response, its cited passages are in the criterion.
SUPPORT_QUESTION = "Is this claim, taken from an answer that cites its sources, backed by the passages it cites?"
SUPPORT_CRITERION = ("The response is stated in, or follows directly from, the cited source passages below. "
                     "Judge from these passages alone, not from what you know.\n\n{passages}")


def _prompt_text(prompt) -> str:
    """TRL passes a string, or a message list for conversational datasets: its last user turn."""
    if prompt is None or isinstance(prompt, str):
        return prompt or ""
    users = [m.get("content") or "" for m in prompt if m.get("role") == "user"]
    return users[-1] if users else ""


def _rubrics(value, where: str) -> list[dict]:
    """A rubric list, checked: bad entries are an error naming row and column, never skipped."""
    rubrics = list(value or [])
    for k, r in enumerate(rubrics):
        if not isinstance(r, dict) or not isinstance(r.get("title"), str):
            raise ValueError(f"{where}[{k}] must be a {{title, description, weight?}} mapping, got {r!r}")
        w = r.get("weight")
        if w is not None and not (isinstance(w, (int, float)) and w > 0):
            raise ValueError(f"{where}[{k}] ({r['title']!r}) has weight {w!r}; weights must be > 0")
    return rubrics


async def _judged(judge: Judge, template: str, metric: str, **variables) -> float | None:
    s = await judge.score(template, scale=(0, 2), metric=metric, **variables)
    if s is not None and not 0.0 <= s <= 1.0:
        raise ValueError(f"judge returned {s}, outside [0, 1]: Judge.score must normalize its scale")
    return s


def _slug(title: str) -> str:
    return re.sub(r"\W+", "_", title.lower()).strip("_")


def make_rubric_reward(judge: Judge, *, instance_rubrics_only: bool = False,
                       static_positive: Sequence[dict] = STATIC_POSITIVE,
                       static_negative: Sequence[dict] = STATIC_NEGATIVE,
                       template: str = TEMPLATE) -> Callable:
    """The `rubric` reward; `instance_rubrics_only` drops the static set from reward and logs."""
    static = [] if instance_rubrics_only else (
        [(r, False, True) for r in _rubrics(static_positive, "static_positive")]
        + [(r, True, True) for r in _rubrics(static_negative, "static_negative")])

    async def rubric(completions, prompts=None, positive_rubrics=None, negative_rubrics=None,
                     log_metric=None, log_extra=None, **_) -> list[float | None]:
        n = len(completions)
        pos_col, neg_col = positive_rubrics or [None] * n, negative_rubrics or [None] * n
        prompt_col = prompts or [None] * n
        jobs = []  # (row, rubric, negative?, static?) per judge call
        answers = []
        for i, c in enumerate(completions):
            items = ([(r, False, False) for r in _rubrics(pos_col[i], f"row {i}: positive_rubrics")]
                     + [(r, True, False) for r in _rubrics(neg_col[i], f"row {i}: negative_rubrics")] + static)
            if not items:
                why = " and instance_rubrics_only drops the static set" if instance_rubrics_only else ""
                raise ValueError(f"row {i} has no rubrics: positive_rubrics and negative_rubrics are empty{why}")
            text = completion_text(c)
            answers.append(answer_block(text) if parse_claims(text) else None)
            if answers[i] is not None:
                jobs += [(i, *item) for item in items]
        scores = await asyncio.gather(*(
            _judged(judge, template, "rubric", question=_prompt_text(prompt_col[i]), response=answers[i],
                    rubric=f"{r['title']}\n{r.get('description') or ''}".strip())
            for i, r, *_ in jobs))

        num, den = [0.0] * n, [0.0] * n
        pos, neg, failed = [[] for _ in range(n)], [[] for _ in range(n)], [0] * n
        by_static: dict[str, list[float]] = {r["title"]: [] for r, *_ in static}
        for (i, r, negative, is_static), s in zip(jobs, scores):
            if s is None:
                failed[i] += 1
                continue
            value = 1.0 - s if negative else s
            w = r.get("weight") or 1.0
            num[i] += w * value
            den[i] += w
            (neg if negative else pos)[i].append(value)
            if is_static:
                by_static[r["title"]].append(value)
        rewards = [0.0 if answers[i] is None else (num[i] / den[i] if den[i] else None) for i in range(n)]

        log_to_trl(log_metric, log_extra,
                  {"rubric/positive": mean([v for vs in pos for v in vs]),
                   "rubric/negative_avoided": mean([v for vs in neg for v in vs]),
                   "rubric/parse_failures": float(sum(failed)),
                   "rubric/no_answer": float(sum(a is None for a in answers)),
                   **{f"rubric/static/{_slug(t)}": mean(v) for t, v in by_static.items()}},
                  {"rubric_positive": [mean(v) for v in pos], "rubric_negative_avoided": [mean(v) for v in neg],
                   "rubric_parse_failures": failed})
        return rewards

    return rubric


def _passages(ids: Sequence[str], passages: dict[str, str]) -> str:
    return "\n\n".join(f"[{i}]\n{passages[i]}" for i in ids)


def _f1(units: list[tuple[float, bool, float, float]]) -> tuple[float | None, float | None, float]:
    """Precision over cited claims, recall over all claims, F1 (0 when nothing is cited)."""
    cited = [(w, credit) for w, is_cited, _, credit in units if is_cited]
    total = sum(w for w, *_ in units)
    p = sum(w * c for w, c in cited) / sum(w for w, _ in cited) if cited else None
    r = sum(w * s for w, _, s, _ in units) / total if total else None
    return p, r, (2 * p * r / (p + r) if p and r else 0.0)


def make_citation_reward(judge: Judge, *, template: str = TEMPLATE) -> Callable:
    """The `citation` reward (claim-level snippet-attribution F1)."""

    async def citation(completions, tool_output=None, log_metric=None, log_extra=None, **_) -> list[float | None]:
        if tool_output is None:
            raise ValueError(f"the citation reward needs a `{TOOL_OUTPUT}` column (the raw search-tool output)")
        rows: list[tuple[list[Claim], dict[str, str]]] = [
            (parse_claims(completion_text(c)), source_passages(t)) for c, t in zip(completions, tool_output)]
        asks: dict[tuple[str, str], int] = {}  # (claim, passages) -> judge call; repeats are asked once

        def ask(claim: Claim, ids: Sequence[str], passages: dict[str, str]) -> int:
            return asks.setdefault((claim.text, _passages(ids, passages)), len(asks))

        plans = []  # per row, per claim: None (uncited), "hallucinated" or (support call, per-passage calls)
        for claims, passages in rows:
            plan = []
            for claim in claims:
                if not claim.cited:
                    plan.append(None)
                elif any(i not in passages for i in claim.ids):
                    plan.append("hallucinated")
                else:
                    singles = [ask(claim, [i], passages) for i in claim.ids] if len(claim.ids) > 1 else []
                    plan.append((ask(claim, claim.ids, passages), singles))
            plans.append(plan)
        verdicts = await asyncio.gather(*(
            _judged(judge, template, "citation", question=SUPPORT_QUESTION, response=claim,
                    rubric=SUPPORT_CRITERION.format(passages=passages))
            for claim, passages in asks))

        rewards, precisions, recalls = [], [], []
        hallucinated = failures = 0
        for (claims, _), plan in zip(rows, plans):
            copies = Counter(normalize_claim(c.text) for c in claims)
            units = []  # (weight, cited?, support, precision credit) per judged claim
            unjudged = False
            for claim, step in zip(claims, plan):
                w = 1.0 / copies[normalize_claim(claim.text)]
                if step is None:
                    units.append((w, False, 0.0, 0.0))
                elif step == "hallucinated":
                    hallucinated += 1
                    units.append((w, True, 0.0, 0.0))
                else:
                    got = [verdicts[k] for k in (step[0], *step[1])]
                    if None in got:
                        failures += 1
                        unjudged = True
                        continue
                    relevant = mean([float(v > 0) for v in got[1:]]) if step[1] else 1.0
                    units.append((w, True, got[0], got[0] * relevant))
            p, r, f1 = _f1(units)
            rewards.append(None if p is None and unjudged else f1)
            precisions.append(p)
            recalls.append(r)

        log_to_trl(log_metric, log_extra,
                  {"citation/precision": mean(precisions),
                   "citation/recall": mean(recalls),
                   "citation/hallucinated_claims": float(hallucinated),
                   "citation/parse_failures": float(failures)},
                  {"citation_precision": precisions, "citation_recall": recalls})
        return rewards

    return citation


def format_reward(completions, tool_output=None, **_) -> list[float]:
    """1.0 for one well-formed `<answer>` block with at least one cited claim, every cited id in the
    tool output; else 0.0 (the module doc has the rule)."""
    if tool_output is None:
        raise ValueError(f"the format reward needs a `{TOOL_OUTPUT}` column (the raw search-tool output)")
    out = []
    for c, tools in zip(completions, tool_output):
        text = completion_text(c)
        answer = answer_block(text, strict=True)
        cited = [claim for claim in parse_claims(text) if claim.cited]
        known = source_passages(tools)
        ok = (answer is not None and not malformed(answer) and bool(cited)
              and all(i in known for claim in cited for i in claim.ids))
        out.append(1.0 if ok else 0.0)
    return out


format_reward.__name__ = "format"  # its recipe name, which TRL's logs (rewards/format/mean) and the cards show
