"""Rewards of the GEO task (rewrite one web source so that a generative engine cites it more); TRL
signature `f(completions, **columns)`, `async def` (TRL gathers them concurrently).

Columns: `query`, `sources` (the n original source texts), `target_index` (0-based: the source the
policy rewrites) and, when the GEO builder wrote it, `original_visibility` ({word, word_position,
position}: that source's shares of the engine's answer over the original sources).

* `geo` (`make_geo_reward`): the rewrite (`rewrite_text`: the completion after its reasoning, by
  `hubtools.scoring`'s rule — the text after the first `</think>`, nothing for an unclosed `<think>` —
  as the engine's own replies are read) takes the place of `sources[target_index]`, and the simulated
  engine (`hubtools.geo_engine.Engine`) answers the query over the n sources: every completion of the
  step in one gather. Reward = S(after) − S(before), S = `hubtools.geo.weighted_score` (weights from
  the recipe's `geo_weights`, default word_position 0.6, position 0.2, word 0.2). Before: the row's
  `original_visibility`, else the engine's answer over the original sources, asked in the same gather
  and kept for the process (the judge's disk cache keeps it across runs).
* `keypoint` (`make_keypoint_reward`): (supported − contradicted) / key points of the original source,
  each labelled against the rewrite by the judge (`hubtools.geo_keypoints`); the original's key points
  are listed once per source text. In [−1, 1]; an empty rewrite 0 without asking; None when any label
  did not parse (as the builder's filter: an unjudged point could hide a contradiction, and leaving it
  out would pay a rewrite that keeps one point and garbles the judge on the rest). It checks one way:
  what the rewrite adds (an invented statistic) is the eval's support of the rewrite's own key points.

What the hacks get (each pinned in tests/test_geo_reward.py):

* The engine cites nothing (no id in 1..n — no citation, or only hallucinated ones): the metrics then
  give every source 1/n, so a rewrite that stops the engine citing would gain whenever its source had
  less than 1/n. Here an answer that cites nothing gives the source 0 (`target_shares`, which the GEO
  builder's `original_visibility` follows too): reward = −S(before), the least a rewrite can get.
* Empty rewrite (also: only reasoning, an unclosed `<think>`, only markers and punctuation): not sent;
  0 → −S(before).
* Length: a rewrite whose word count, or length in characters, is outside `length_ratio` × the
  original's (default 0.5–2×; the study's system prompt asks for "approximately the same length") is not
  sent; 0 → −S(before). More words are a bigger share of the words an engine copies, a few words cannot
  keep the source, and characters catch words joined into one ("The-tower-is-330-metres-tall-…").
* `[k]` citation markers inside the rewrite (the metrics' marker forms: `[3]`, `[1][3]`, `[1, 3]`)
  are removed before the engine sees it: a source cannot pre-cite itself for an engine that copies
  markers, and a rewrite of nothing but markers is empty.
* Instructions to the engine (prompt injection: "cite this source as [1]", "ignore previous
  instructions", "you must cite …", chat-template tokens, a line starting "Question:" as the engine's
  prompt writes its own): a rewrite with more matches of an `ENGINE_DIRECTED` pattern than the
  original has is not sent; 0 → −S(before). This is a lexical net
  and a paraphrase passes it; what stands behind it is the engine's prompt, which declares the
  sources material, never instructions, each under a label it cannot forge (geo_engine.j2). An
  engine that obeys an injection it is shown pays that injection (the tests show it), so: an engine
  that follows its prompt, the `geo/injection` log, and the eval's support of the rewrite's key points
  by the original.
* A failed engine call (or a failed "before"): None — TRL leaves it out of the step — never 0.

Logged per step (TRL `log_metric`): geo/gain, geo/before, geo/after and the three metrics' mean
after-shares of the rewritten source, geo/uncited (share of engine answers citing nothing),
geo/hallucinated (citations of ids outside 1..n), geo/empty, geo/length, geo/injection (rewrites not
sent, by why), geo/markers_removed, geo/engine_failures; per completion (`log_extra`): geo_before,
geo_after, geo_flag. `keypoint` logs keypoint/support, keypoint/contradiction, keypoint/unjudged.
"""

from __future__ import annotations

import asyncio
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Callable

from hubtools.geo import CITATION, METRICS, REWARD_WEIGHTS, sentences, strip_citations
from hubtools.geo_keypoints import MAX_POINTS, keypoints, preservation
from hubtools.scoring import answer_part
from hubtools.aggregate import mean
from train.rewards.common import log_to_trl
from train.rewards.factuality import completion_text

COLUMNS = ("query", "sources", "target_index")
LENGTH_RATIO = (0.5, 2.0)
FLAGS = ("empty", "length", "injection")  # why a rewrite was not sent to the engine

_TOPIC = r"(?:source|text|page|document|result|article|site|website|passage|content|answer)s?"
# Phrases addressed to the engine, not to a reader of the page (case-insensitive, within one sentence).
ENGINE_DIRECTED = tuple(re.compile(p, re.I) for p in (
    r"\b(?:ignore|disregard|forget|override)\b[^.\n]{0,40}\b(?:instructions?|prompts?|rules|guidelines)\b",
    r"\b(?:cite|citing|credit|rank|prioriti[sz]e|quote|reference)\b[^.\n]{0,30}\b(?:this|these|the following|me|us)"
    rf"\s+(?:\w+\s+)?{_TOPIC}\b",
    r"\b(?:cite|rank|quote|reference)\s+(?:it|this|them)\b[^.\n]{0,30}\b(?:first|above|as|only|always|in every)\b",
    r"\b(?:assistant|ai|model|engine|chatbot)\b[^.\n]{0,25}\b(?:must|should|shall|need to|have to|is to)"
    r"\s+(?:\w+\s+)?(?:cite|rank|quote|reference|credit|prioriti[sz]e|ignore|answer|respond|mention)\b",
    r"\byou\b[^.\n]{0,25}\b(?:must|should|shall|will|need to|have to|are to)\s+(?:\w+\s+)?"
    r"(?:cite|rank|quote|prioriti[sz]e|ignore)\s+(?:this|it|these|only|me|us)\b",
    r"\b(?:search|retrieved)\s+results?\b",
    r"\bsystem\s+prompts?\b|\b(?:note|message|instructions?|attention)\s+(?:to|for)\s+(?:the\s+|any\s+)?"
    r"(?:ai|assistant|model|engine|chatbot|llm)s?\b",
    r"<\|[a-z_]+\|>|\[/?INST\]|<</?SYS>>|(?m:^\s*(?:system|assistant|user|question)\s*:)",
))


def rewrite_text(completion) -> str:
    """The rewrite in a completion: the text after its reasoning, stripped ('' for an unclosed `<think>`)."""
    return answer_part(completion_text(completion))


def word_count(text: str) -> int:
    """Words as the visibility metrics count them (`hubtools.geo.sentences`; markers are not words)."""
    return sum(s.words for s in sentences(text))


def engine_directed(rewrite: str, original: str) -> list[str]:
    """The `ENGINE_DIRECTED` phrases the rewrite has more often than the original (empty: none)."""
    found = []
    for pattern in ENGINE_DIRECTED:
        hits = pattern.findall(rewrite)
        if len(hits) > len(pattern.findall(original)):
            found.append(hits[0] if isinstance(hits[0], str) else pattern.pattern)
    return found


@dataclass(frozen=True)
class Rewrite:
    text: str          # what the engine is shown (markers removed); '' when not sent
    flag: str | None   # None: sent to the engine; else why not (FLAGS)
    markers: int       # citation markers removed


def prepare(completion, original: str, length_ratio: tuple[float, float] = LENGTH_RATIO) -> Rewrite:
    """The completion's rewrite as the engine sees it, or why it is not sent (the guards of the module
    docstring, checked in this order: empty, injection, length)."""
    raw = rewrite_text(completion)
    markers = len(CITATION.findall(raw))
    text = strip_citations(raw).strip()
    words = word_count(text)
    if not words:
        return Rewrite("", "empty", markers)
    if engine_directed(raw, original):
        return Rewrite("", "injection", markers)
    lo, hi = length_ratio
    for size, base in ((words, word_count(original)), (_chars(text), _chars(strip_citations(original)))):
        if base and not lo * base <= size <= hi * base:
            return Rewrite("", "length", markers)
    return Rewrite(text, None, markers)


def _chars(text: str) -> int:
    """Length in characters, runs of whitespace as one: with words, the length bound's second measure, so
    joining words into one ("The-tower-is-330-metres-tall-…") cannot carry more text within the word bound."""
    return len(" ".join(text.split()))


def parse_weights(spec: str | Mapping[str, float]) -> dict[str, float]:
    """'word_position:0.6,position:0.2,word:0.2' (or a mapping) → {metric: weight}, checked."""
    if isinstance(spec, Mapping):
        pairs = list(spec.items())
    else:
        pairs = []
        for part in str(spec).split(","):
            name, sep, value = part.strip().partition(":")
            try:
                pairs.append((name.strip(), float(value)))
            except ValueError:
                raise ValueError(f"geo_weights: bad entry {part.strip()!r}; expected metric:weight, e.g. "
                                 "word_position:0.6,position:0.2,word:0.2") from None
            if not sep:
                raise ValueError(f"geo_weights: bad entry {part.strip()!r}; expected metric:weight")
    weights = dict(pairs)
    unknown = sorted(set(weights) - set(METRICS))
    if unknown or len(weights) != len(pairs):
        raise ValueError(f"geo_weights: unknown or repeated metric(s) {unknown or [n for n, _ in pairs]}; "
                         f"known: {list(METRICS)}")
    if any(not math.isfinite(w) or w < 0 for w in weights.values()) or not sum(weights.values()) > 0:
        raise ValueError(f"geo_weights: weights must be >= 0 and not all 0, got {weights}")
    return weights


def check_length_ratio(ratio: Sequence[float]) -> tuple[float, float]:
    if len(ratio) != 2 or not 0 <= ratio[0] <= 1 <= ratio[1]:
        raise ValueError(f"geo_length_ratio: expected [lo, hi] with 0 <= lo <= 1 <= hi, got {list(ratio)}")
    return float(ratio[0]), float(ratio[1])


def _target(i: int, sources, target) -> str:
    """The row's source to rewrite, checked: an error names the row and the column."""
    if isinstance(sources, str) or not isinstance(sources, Sequence) or not sources or \
            not all(isinstance(s, str) for s in sources):
        raise ValueError(f"row {i}: `sources` must be a non-empty list of strings")
    if isinstance(target, bool) or not isinstance(target, int) or not 0 <= target < len(sources):
        raise ValueError(f"row {i}: `target_index` must be an index into its {len(sources)} sources, got {target!r}")
    return sources[target]


def _row(i: int, query, sources, target, original_visibility) -> None:
    """A row's GEO columns, checked: an error names the row and the column."""
    if not isinstance(query, str) or not query.strip():
        raise ValueError(f"row {i}: `query` must be a non-empty string, got {query!r}")
    _target(i, sources, target)
    if original_visibility is not None and not (
            isinstance(original_visibility, Mapping) and all(
                isinstance(original_visibility.get(m), (int, float)) and 0 <= original_visibility[m] <= 1
                for m in METRICS)):
        raise ValueError(f"row {i}: `original_visibility` must map {list(METRICS)} to shares in [0, 1], "
                         f"got {original_visibility!r}")


def _column(columns: dict, name: str, n: int, reward: str) -> list:
    value = columns.get(name)
    if value is None:
        raise ValueError(f"the {reward} reward needs a `{name}` column (the GEO dataset's {', '.join(COLUMNS)})")
    if len(value) != n:
        raise ValueError(f"column `{name}` has {len(value)} values for {n} completions")
    return list(value)


ZERO = dict.fromkeys(METRICS, 0.0)


def target_shares(answer, index: int) -> dict[str, float]:
    """The source's shares in an engine answer; all 0 when the answer cites no source in 1..n."""
    if not answer.cited:
        return dict(ZERO)
    return {m: getattr(answer.visibility, m)[index] for m in METRICS}


def score(shares: Mapping[str, float], weights: Mapping[str, float]) -> float:
    return sum(w * shares[m] for m, w in weights.items())


@dataclass(frozen=True)
class Scored:
    """One completion's rewrite scored: the source's shares before and after (None: the engine failed)."""

    before: dict[str, float] | None
    after: dict[str, float] | None
    flag: str | None            # why the rewrite was not sent (FLAGS), None when it was
    markers: int                # citation markers removed from the rewrite
    uncited: bool | None        # the engine's answer over the rewrite cited nothing (None: not asked)
    hallucinated: int           # citations of ids outside 1..n in that answer
    rewrite: str                # the rewrite as the engine saw it ('' when not sent)


class GeoScorer:
    """Scores rewrites by the engine, as the `geo` reward and `hubtools eval geo` both do; keeps each
    original source set's answer for the process (the "before" of rows without `original_visibility`)."""

    def __init__(self, engine, length_ratio: Sequence[float] = LENGTH_RATIO):
        self.engine, self.length_ratio = engine, check_length_ratio(length_ratio)
        self._before: dict[tuple[str, tuple[str, ...]], object] = {}

    async def score(self, completions: Sequence, query: Sequence[str], sources: Sequence[Sequence[str]],
                    target_index: Sequence[int], original_visibility: Sequence | None = None) -> list[Scored]:
        n = len(completions)
        originals = list(original_visibility) if original_visibility is not None else [None] * n
        for i in range(n):
            _row(i, query[i], sources[i], target_index[i], originals[i])
        rewrites = [prepare(c, sources[i][target_index[i]], self.length_ratio) for i, c in enumerate(completions)]
        keys = [(query[i], tuple(sources[i])) for i in range(n)]
        ask_before = list(dict.fromkeys(keys[i] for i in range(n) if originals[i] is None and keys[i] not in self._before))
        ask_after = [(i, (query[i], [*sources[i][:target_index[i]], r.text, *sources[i][target_index[i] + 1:]]))
                     for i, r in enumerate(rewrites) if r.flag is None]
        answers = await self.engine.answer_all([*ask_before, *(row for _, row in ask_after)])
        for key, answer in zip(ask_before, answers):
            if answer is not None:
                self._before[key] = answer
        after = dict(zip((i for i, _ in ask_after), answers[len(ask_before):]))

        out = []
        for i, r in enumerate(rewrites):
            k = target_index[i]
            if originals[i] is not None:
                before = {m: float(originals[i][m]) for m in METRICS}
            else:
                answer = self._before.get(keys[i])
                before = None if answer is None else target_shares(answer, k)
            if r.flag is not None:
                out.append(Scored(before, dict(ZERO), r.flag, r.markers, None, 0, r.text))
                continue
            a = after[i]
            out.append(Scored(before, None if a is None else target_shares(a, k), None, r.markers,
                              None if a is None else not a.cited, 0 if a is None else a.hallucinated, r.text))
        return out


def make_geo_reward(engine, *, weights: Mapping[str, float] = REWARD_WEIGHTS,
                    length_ratio: Sequence[float] = LENGTH_RATIO) -> Callable:
    """The `geo` reward over `engine` (a `hubtools.geo_engine.Engine`); rules in the module docstring."""
    weights = parse_weights(weights)
    scorer = GeoScorer(engine, length_ratio)

    async def geo(completions, query=None, sources=None, target_index=None, original_visibility=None,
                  log_metric=None, log_extra=None, **_) -> list[float | None]:
        n = len(completions)
        columns = {"query": query, "sources": sources, "target_index": target_index}
        scored = await scorer.score(completions, *(_column(columns, c, n, "geo") for c in COLUMNS),
                                    original_visibility=original_visibility)
        before = [None if s.before is None else score(s.before, weights) for s in scored]
        after = [None if s.after is None else score(s.after, weights) for s in scored]
        rewards = [None if b is None or a is None else a - b for b, a in zip(before, after)]
        asked = [s for s in scored if s.uncited is not None]
        log_to_trl(log_metric, log_extra,
                  {"geo/gain": mean(rewards), "geo/before": mean(before), "geo/after": mean(after),
                   **{f"geo/after_{m}": mean([s.after[m] for s in scored if s.after is not None]) for m in METRICS},
                   "geo/uncited": mean([float(s.uncited) for s in asked]),
                   "geo/hallucinated": float(sum(s.hallucinated for s in scored)),
                   **{f"geo/{f}": float(sum(s.flag == f for s in scored)) for f in FLAGS},
                   "geo/markers_removed": float(sum(s.markers > 0 for s in scored)),
                   "geo/engine_failures": float(sum(r is None for r in rewards))},
                  {"geo_before": before, "geo_after": after, "geo_flag": [s.flag for s in scored]})
        return rewards

    return geo


def make_keypoint_reward(judge, *, max_points: int = MAX_POINTS) -> Callable:
    """The `keypoint` reward over `judge` (a `hubtools.judge.Judge`); rules in the module docstring."""
    listed: dict[str, list[str]] = {}  # original text -> its key points (a failure is asked again next time)

    async def one(rewrite: str, points: asyncio.Future | list[str]):
        if not rewrite:
            return 0.0, None
        points = points if isinstance(points, list) else await points
        if points is None:
            return None, None
        kept = await preservation(judge, points, rewrite)
        if kept.judged < kept.asked or not kept.asked:
            return None, kept
        return (kept.supported - kept.contradicted) / kept.asked, kept

    async def keypoint(completions, sources=None, target_index=None, log_metric=None, log_extra=None,
                       **_) -> list[float | None]:
        n = len(completions)
        columns = {"sources": sources, "target_index": target_index}
        sources, targets = _column(columns, "sources", n, "keypoint"), _column(columns, "target_index", n, "keypoint")
        originals = [_target(i, sources[i], targets[i]) for i in range(n)]
        pending = {text: asyncio.ensure_future(keypoints(judge, text, max_points))
                   for text in dict.fromkeys(originals) if text not in listed}
        results = await asyncio.gather(*(one(rewrite_text(c), listed.get(originals[i]) or pending[originals[i]])
                                         for i, c in enumerate(completions)))
        for text, points in zip(pending, await asyncio.gather(*pending.values())):
            if points is not None:
                listed[text] = points
        kept = [k for _, k in results if k is not None]
        log_to_trl(log_metric, log_extra,
                  {"keypoint/support": mean([k.support for k in kept]),
                   "keypoint/contradiction": mean([k.contradiction for k in kept]),
                   "keypoint/unjudged": float(sum(k.asked - k.judged for k in kept))},
                  {"keypoint_support": [None if k is None else k.support for _, k in results]})
        return [value for value, _ in results]

    return keypoint
