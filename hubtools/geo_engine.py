"""A simulated generative engine: a served model answers a query over n numbered sources, citing
them as ``[k]``; the GEO builder, reward and eval measure a source's visibility in its answers.

Why through the judge client (`hubtools.judge.Judge`): a GRPO step asks the engine once per
completion (the sources with that completion's rewrite in place) plus once for the original
sources, so the calls must run many at once over one or more servers, retry, and be cached on disk
(a deterministic engine, `temperature=0`, answers the original sources once per query, ever). The
engine's model, servers, sampling and cache are the Judge's; its calls are counted under the metric
``geo_engine`` (`judge.stats("geo_engine")`).

    engine = Engine(Judge("Qwen/Qwen3-8B", "http://127.0.0.1:8000/v1", cache_dir="engine-cache", max_tokens=1024))
    before, after = await engine.answer_all([(query, sources), (query, [*sources[:k], rewrite, *sources[k + 1:]])])
    after.visibility.word_position[k] - before.visibility.word_position[k]
    engine.answer_many(rows)  # the same from sync code, with a progress bar

The prompt is the packaged template ``geo_engine`` (hubtools/prompts/geo_engine.j2): the question, then
the sources as numbered search results (``[k] text``), declared material, never instructions, then the
question again. Why numbered results and not ``<source id="k">`` blocks: with blocks, the packaged
SmolLM2-135M cited nothing in 8 of 8 bundled queries; with numbered results, it cited in 16 of 16 (it
copies a result's label with its text), so the offline demo and tests measure real citations. A source
cannot forge a result's label: the engine reads each source through `engine_view` (look-alike characters
made plain, then every ``[k]`` marker removed until none is left), so a line that starts with ``[k]`` is
always the prompt's own. A source can still write a line that reads like the prompt ("Question: …"); the
real question comes again after the results, and the GEO reward refuses a rewrite that adds such a line
(`train.rewards.geo.ENGINE_DIRECTED`).

The reply (`parse_answer`): any reasoning up to the first ``</think>`` is dropped (an unclosed
leading ``<think>`` leaves no answer), and the rest is scored by `hubtools.geo.visibility`. A cited
id outside 1..n is counted as a hallucinated citation and credits nobody. A failed call (the
judge's retries spent) is None, counted by the judge as an error, never an answer without citations.
"""

from __future__ import annotations

import asyncio
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

from hubtools.geo import Visibility, strip_citations, visibility
from hubtools.judge import Judge
from hubtools.scoring import answer_part

TEMPLATE = "geo_engine"

Row = tuple[str, Sequence[str]]  # (query, sources)


@dataclass(frozen=True)
class EngineAnswer:
    text: str  # the answer, reasoning dropped
    visibility: Visibility

    @property
    def cited(self) -> tuple[int, ...]:
        """Ids in 1..n the answer cites, in order of first citation."""
        return self.visibility.cited

    @property
    def hallucinated(self) -> int:
        """Citations of ids outside 1..n."""
        return self.visibility.hallucinated


def parse_answer(reply: str, n_sources: int) -> EngineAnswer:
    """The engine's reply as an answer over `n_sources` sources (rules in the module docstring)."""
    text = answer_part(reply)
    return EngineAnswer(text, visibility(text, n_sources))


def template_variables(query: str, sources: Sequence[str]) -> dict:
    """What the engine's prompt template is rendered with: the query and the sources as the engine reads
    them (`engine_view`), so no source can forge another's label. The query is the dataset's, not the
    policy's, and is shown as it is."""
    return {"query": query, "sources": [engine_view(s) for s in sources]}


def engine_view(source: str) -> str:
    """A source as the engine reads it: NFKC-normalised and without format characters (zero-width spaces,
    joiners, direction marks), then without `[k]` markers (`hubtools.geo.strip_citations`). Look-alike
    labels (`［2］`, `[²]`, `[2` + zero-width space + `]`) become plain markers first and go with them."""
    plain = "".join(ch for ch in unicodedata.normalize("NFKC", source) if unicodedata.category(ch) != "Cf")
    return strip_citations(plain)


def _checked(query, sources) -> tuple[str, tuple[str, ...]]:
    if not isinstance(query, str) or not query.strip():
        raise ValueError(f"query: expected a non-empty string, got {query!r}")
    if isinstance(sources, str) or not isinstance(sources, Sequence) or not sources:
        raise ValueError(f"sources: expected a non-empty list of strings, got {type(sources).__name__}")
    for i, source in enumerate(sources):
        if not isinstance(source, str):
            raise ValueError(f"sources[{i}]: expected a string, got {type(source).__name__}")
    return query, tuple(sources)


class Engine:
    """The generative engine over `judge` (its model, servers, sampling, cache and counters)."""

    def __init__(self, judge: Judge):
        self.judge = judge

    def __repr__(self) -> str:
        return f"Engine({self.judge!r})"

    async def answer(self, query: str, sources: Sequence[str]) -> EngineAnswer | None:
        """The engine's answer to `query` over `sources` (cited as [1]..[n]); None if the call failed."""
        query, sources = _checked(query, sources)
        reply = await self.judge.complete(TEMPLATE, **template_variables(query, sources))
        return None if reply is None else parse_answer(reply, len(sources))

    async def answer_all(self, rows: Sequence[Row]) -> list[EngineAnswer | None]:
        """`answer` for every (query, sources) row concurrently; identical rows are asked once."""
        unique = _unique(rows)
        answers = await asyncio.gather(*(self.answer(*row) for row in unique))
        return _spread(rows, unique, answers)

    def answer_many(self, rows: Sequence[Row]) -> list[EngineAnswer | None]:
        """`answer_all` from sync code (`Judge.run_many`: a progress bar, this loop's clients closed after)."""
        unique = _unique(rows)
        return _spread(rows, unique, self.judge.run_many(lambda row: self.answer(*row), unique, TEMPLATE))


def _key(row, i: int) -> tuple[str, tuple[str, ...]]:
    try:
        query, sources = row
        return _checked(query, sources)
    except (TypeError, ValueError) as e:
        raise ValueError(f"rows[{i}]: expected (query, sources): {e}") from None


def _unique(rows: Sequence[Row]) -> list[tuple[str, tuple[str, ...]]]:
    return list(dict.fromkeys(_key(row, i) for i, row in enumerate(rows)))


def _spread(rows: Sequence[Row], unique: list, answers: list) -> list:
    by_row = dict(zip(unique, answers))
    return [by_row[_key(row, i)] for i, row in enumerate(rows)]
