"""Objective visibility of each source in a generative engine's answer: the GEO paper's impression
metrics, shared by the GEO builder, reward and eval.

An engine answers a query over n sources and cites them as ``[k]`` (k = 1..n). A source is visible
in proportion to the answer text that cites it, and more so early in the answer. Per source:

* word: the words of every sentence citing it, a sentence's words shared equally among the sources
  it cites;
* word_position: the same, each sentence weighted by exp(-i / (N - 1)) (i = 0..N-1 its index over
  the whole answer, N its sentences; weight 1 when N = 1) — the paper's position-adjusted word
  count, its main metric;
* position: 1 / (sources cited) per citing sentence, with the same weight.

Each metric is normalized over the sources (x / sum(x); 1/n each when nothing is credited), so it
is a source's share of the answer: `visibility(answer, n).word_position[k - 1]`.

Splitting (`sentences`), offline and deterministic:

* Blank lines end paragraphs and every line break ends a sentence (a heading or a list item is its
  own sentence even without a full stop); each line is split into sentences by `sentencex`
  (Wikimedia's rule-based segmenter, English rules, shipped in its wheel: "Dr. Smith", "e.g.
  Boston", "the U.S. in 2020", "3.5" are not cut).
* Citation markers: ``[`` one or more integers separated by commas, semicolons or spaces ``]``:
  ``[2]``, ``[1][3]``, ``[1] [3]``, ``[1, 3]``, ``[1,3]``, ``[1; 3]`` all cite their ids. Anything
  else in brackets (``[Source 1]``, ``[1-3]``, ``[a]``) is text; a bracketed year ``[2024]`` is a
  citation (a hallucinated one). Markers are not words.
* A word is a run of letters or digits, joined through inner ``'``, ``’``, ``-`` or ``.``:
  "don't", "well-known", "3.5", "U.S" are one word each.
* A piece without any word (nothing but markers and punctuation) is no sentence of its own: its
  citations join the sentence before it ("... the end. [2]", a ``[2]`` line under a paragraph), or
  the one after it when it opens the answer; a piece with neither word nor citation is dropped and
  not counted in N. An answer of citations alone is one sentence without words.

Decisions where the reference code (GEO-optim/GEO src/utils.py, NLTK punkt) does otherwise, each
pinned by a test in tests/test_geo.py:

1. ``[0]`` credits nobody (the reference adds it to the last source through Python's index -1) and
   counts as a hallucinated citation (`Visibility.hallucinated`).
2. An id outside 1..n credits nobody and does not dilute the sentence's credit: "x [1][9]" gives
   source 1 the whole sentence (the reference divides by 2 and drops the half for [9]). It counts
   as a hallucinated citation.
3. A citation after the full stop ("... the end. [2]") belongs to the sentence before it; punkt
   cuts after the full stop, so in the reference the marker opens the next sentence (crediting its
   words) or, ending a paragraph, is a sentence of its own without words (position credit only,
   and N grows by one).
4. ``[1, 3]`` and ``[1,3]`` cite both ids (the reference reads only the first id of ``[1,3]`` and
   nothing of ``[1, 3]``).
5. An id repeated within a sentence counts once ("x [1][1][2]": half each; the reference gives
   source 1 two thirds), so repeating a citation buys no extra share.
6. Line breaks end sentences (punkt joins list items without full stops into one sentence).
7. Every word counts; the reference counts only NLTK tokens longer than two characters (dropping
   "a", "is", "of", but counting "n't"). Shares move slightly; the definition is the paper's.

`weighted_score` combines the three metrics of one source into the GEO reward's objective.
"""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Mapping
from dataclasses import dataclass

import sentencex

METRICS = ("word", "word_position", "position")
# The GEO reward's weights: (new·0.6 + new_pos·0.2 + new_word·0.2) − (orig·0.6 + …), from the research
# note's "new_score * 0.6 + new_pos_score * 0.2 + new_word_score * 0.2". AutoGEO's public reward code
# (open-r1 rewards.py: the note's setup of LLaMA-Factory SFT, open-r1 GRPO, a Gemini Flash-Lite engine,
# Researchy Questions) combines exactly `impression_wordpos_count_simple`, `impression_pos_count_simple`
# and `impression_word_count_simple` (stored as wordpos, pos, word), so the 0.6 term ("score") is the
# position-adjusted word count. The note's "weighted: 0.8, 0.1, 0.1" line disagrees with its own
# formula and AutoGEO weighs the three equally; the formula is taken, and the weights are a recipe value.
REWARD_WEIGHTS = {"word_position": 0.6, "position": 0.2, "word": 0.2}

_PARAGRAPH = re.compile(r"\n[ \t]*\n")
CITATION = re.compile(r"\[\s*\d+(?:\s*[,;]?\s*\d+)*\s*\]")
_MARKER = re.compile(rf"(?m:^(?:[ \t]*{CITATION.pattern})+[ \t]*)|[ \t]*{CITATION.pattern}")  # with its spacing
_ID = re.compile(r"\d+")
_WORD = re.compile(r"[^\W_]+(?:['’.\-][^\W_]+)*")


@dataclass(frozen=True)
class Sentence:
    text: str
    words: int
    ids: tuple[int, ...]  # the ids it cites, in order, repeats dropped; out-of-range ids included


@dataclass(frozen=True)
class Visibility:
    """Each source's share of the answer (index k - 1 for source [k]); see the module docstring."""

    word: list[float]
    word_position: list[float]
    position: list[float]
    cited: tuple[int, ...]  # ids in 1..n cited anywhere, in order of first citation
    hallucinated: int  # citations of ids outside 1..n ([0] included), once per sentence and id


def _pieces(answer: str) -> list[str]:
    """The answer cut into paragraphs, lines and sentences, in order."""
    return [piece for paragraph in _PARAGRAPH.split(answer) for line in paragraph.split("\n")
            for piece in sentencex.segment("en", line)]


def sentences(answer: str) -> list[Sentence]:
    """The answer's sentences with their word counts and cited ids (rules in the module docstring)."""
    out: list[list] = []  # [text, words, ids]
    orphan: list[int] = []  # ids of leading word-less pieces, for the first sentence
    for piece in _pieces(answer):
        ids = [int(i) for m in CITATION.findall(piece) for i in _ID.findall(m)]
        words = len(_WORD.findall(CITATION.sub(" ", piece)))
        if words:
            out.append([piece.strip(), words, orphan + ids])
            orphan = []
        elif ids:
            if out:
                out[-1][0] += " " + piece.strip()
                out[-1][2] += ids
            else:
                orphan += ids
    if orphan:  # nothing but citations: one sentence without words
        out.append([answer.strip(), 0, orphan])
    return [Sentence(text, words, tuple(dict.fromkeys(ids))) for text, words, ids in out]


def _is_int(x) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def _shares(scores: list[float]) -> list[float]:
    total = sum(scores)
    return [x / total for x in scores] if total > 0 else [1 / len(scores)] * len(scores)


def visibility(answer: str, n_sources: int) -> Visibility:
    """Word, position-adjusted word and position shares of each of `n_sources` sources in `answer`."""
    if not _is_int(n_sources) or n_sources < 1:
        raise ValueError(f"n_sources: expected an integer >= 1, got {n_sources!r}")
    if not isinstance(answer, str):
        raise TypeError(f"answer: expected a string, got {type(answer).__name__}")
    sents = sentences(answer)
    word, word_position, position = ([0.0] * n_sources for _ in METRICS)
    cited: dict[int, None] = {}
    hallucinated = 0
    for i, s in enumerate(sents):
        valid = [k for k in s.ids if 1 <= k <= n_sources]
        hallucinated += len(s.ids) - len(valid)
        decay = math.exp(-i / (len(sents) - 1)) if len(sents) > 1 else 1.0
        for k in valid:
            cited[k] = None
            word[k - 1] += s.words / len(valid)
            word_position[k - 1] += s.words * decay / len(valid)
            position[k - 1] += decay / len(valid)
    return Visibility(_shares(word), _shares(word_position), _shares(position), tuple(cited), hallucinated)


def weighted_score(vis: Visibility, index: int, weights: Mapping[str, float] = REWARD_WEIGHTS) -> float:
    """Σ weight × metric of the source at 0-based `index` (source [index + 1]); the GEO reward is this
    score after the rewrite minus before. `weights` maps metric names (`METRICS`) to weights."""
    unknown = sorted(set(weights) - set(METRICS))
    if unknown:
        raise ValueError(f"weights: unknown metric(s) {unknown}; known: {list(METRICS)}")
    n = len(vis.word)
    if not _is_int(index) or not 0 <= index < n:
        raise ValueError(f"index: expected a source index in 0..{n - 1}, got {index!r}")
    return sum(w * getattr(vis, metric)[index] for metric, w in weights.items())


def strip_citations(text: str) -> str:
    """`text` without `[k]` citation markers (the forms the metrics read) and the spacing before them.
    Sources reach the engine without them, and so does a rewrite: a page's own Wikipedia-style `[1]`
    markers (GEO-bench keeps them) would otherwise confuse the engine's citations, and a rewrite would
    gain just by deleting the ones its original had. Removed until none is left: a marker nested in
    another (`[[2]2]`) would otherwise leave one behind."""
    while (stripped := _MARKER.sub("", text)) != text:
        text = stripped
    return text
