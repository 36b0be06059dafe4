"""Snippet citations of the refiner output format, shared by rewards and eval.

A refiner reads an agent's reasoning plus raw search-tool output and answers with one
``<answer>...</answer>`` block in which every claim is wrapped as ``<snippet id=ID1,ID2>claim</snippet>``,
citing ids of the tool output. The rules, in one place:

* Tool output (`source_passages`, `source_ids`): the blocks dr-tulu's search and browse tools write,
  ``<snippet id=ID>passage</snippet>`` and ``<webpage id=ID>page</webpage>`` (id quoted or not,
  other attributes after it ignored, tags case-insensitive). Nothing else names a source: ``[S1]``
  or ``id: S1`` lines are plain text, so a model cannot make an id exist by writing it into its own
  reasoning. An id given twice keeps both passages, joined by a newline.
* Answer (`answer_block`): only the text after the reasoning counts (split at the first
  ``</think>``, the same rule as `hubtools.scoring`; an unclosed leading ``<think>`` leaves no
  answer). It must hold exactly one closed ``<answer>`` block: two blocks are no answer (no way to
  tell which one the reader gets), and an ``<answer>`` inside ``<think>`` is reasoning. Text around
  the block is ignored by the parser; `strict` (the format reward) allows only whitespace there.
* Ids (`parse_ids`): everything after ``id=`` (or ``ids=``) up to ``>``, split at commas, semicolons
  and whitespace, quotes stripped from each piece: ``id=A,B``, ``id="A, B"``, ``id='A'``,
  ``id=A B``, ``id="A","B"`` all give their ids in order, repeats dropped.
* Claims (`parse_claims`): each snippet with ids and at least one word character is a cited claim;
  identical claims stay separate entries (same text with other ids is another attribution). The
  text outside every snippet is cut at snippet tags, sentence ends (. ! ? followed by space) and line
  breaks; each piece with at least `MIN_CLAIM_WORDS` words is an uncited claim, shorter pieces
  (connectives, "In short,", list markers) are glue. A snippet without ids counts as outside text.
* Nesting is flattened: an inner snippet is its own claim and the outer claim keeps only its own
  text, so no character is ever counted in two claims. A snippet left unclosed has no citation (its
  text is outside text); a stray ``</snippet>`` is a boundary.
* `malformed(answer)` names what breaks the output format (nesting, unclosed or stray tags, a
  snippet without ids or without text); the format reward uses it, the content rewards don't care.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from hubtools.scoring import answer_offset

MIN_CLAIM_WORDS = 4

_ANSWER = re.compile(r"<answer\s*>(.*?)</answer\s*>", re.I | re.S)
_ONLY_ANSWER = re.compile(r"\s*<answer\s*>.*</answer\s*>\s*", re.I | re.S)
_SOURCE = re.compile(r"<(snippet|webpage)\s+ids?\s*=\s*[\"']?([^\"'>\s]+)[\"']?(?:\s[^>]*)?>(.*?)</\1\s*>",
                     re.I | re.S)
_TAG = re.compile(r"<snippet\b([^>]*)>|</snippet\s*>", re.I)
_ID_ATTR = re.compile(r"^\s*ids?\s*=(.*)$", re.I | re.S)
_ID_SPLIT = re.compile(r"[\s,;]+")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n")
_WORD = re.compile(r"\w+")


@dataclass(frozen=True)
class Claim:
    text: str
    ids: tuple[str, ...] = ()

    @property
    def cited(self) -> bool:
        return bool(self.ids)


def source_passages(tool_output: str | None) -> dict[str, str]:
    """Passage text per snippet id in raw tool output."""
    passages: dict[str, str] = {}
    for m in _SOURCE.finditer(tool_output or ""):
        sid, body = m.group(2), m.group(3).strip()
        passages[sid] = f"{passages[sid]}\n{body}" if sid in passages else body
    return passages


def source_ids(tool_output: str | None) -> set[str]:
    return set(source_passages(tool_output))


def answer_block(completion: str, *, strict: bool = False) -> str | None:
    """The text of the one `<answer>` block after the reasoning, or None (none, several, unclosed).
    `strict`: the block must also be all there is after the reasoning, whitespace aside."""
    after = completion[answer_offset(completion):]
    blocks = _ANSWER.findall(after)
    if len(blocks) != 1 or (strict and not _ONLY_ANSWER.fullmatch(after)):
        return None
    return blocks[0]


def parse_ids(attrs: str) -> tuple[str, ...]:
    """Ids of a snippet tag's attribute text (`' id="A, B"'`); () without an id attribute."""
    m = _ID_ATTR.match(attrs)
    if not m:
        return ()
    ids = (p.strip("\"'") for p in _ID_SPLIT.split(m.group(1)))
    return tuple(dict.fromkeys(i for i in ids if i))


def _walk(answer: str) -> list[tuple[str, object]]:
    """The answer as events: ('text', str) outside snippets, ('claim', Claim), ('bad', reason) for
    each format break. Nesting is flattened; a boundary ("\n") separates outside pieces."""
    events: list[tuple[str, object]] = []
    open_: list[tuple[tuple[str, ...], list[str]]] = []  # (ids, own text) per open snippet

    def add_text(s: str):
        if open_:
            open_[-1][1].append(s)
        else:
            events.append(("text", s))

    pos = 0
    for m in _TAG.finditer(answer):
        add_text(answer[pos:m.start()])
        pos = m.end()
        if not m.group(0).startswith("</"):
            if open_:
                events.append(("bad", "snippets are nested"))
            add_text("\n")
            open_.append((parse_ids(m.group(1)), []))
            continue
        if not open_:
            events.append(("bad", "a </snippet> closes nothing"))
            add_text("\n")
            continue
        ids, parts = open_.pop()
        body = " ".join("".join(parts).split())
        if not ids:
            events.append(("bad", "a snippet has no ids"))
            add_text(f"\n{body}\n")
        elif not _WORD.search(body):
            events.append(("bad", f"snippet id={','.join(ids)} wraps no text"))
        else:
            events.append(("claim", Claim(body, ids)))
        add_text("\n")
    add_text(answer[pos:])
    while open_:
        events.append(("bad", "a snippet is not closed"))
        add_text("\n" + "".join(open_.pop()[1]))
    return events


def parse_claims(completion: str) -> list[Claim]:
    """Claims of a completion (reasoning and answer, or the bare `<answer>` block) in order of
    appearance: cited snippets and uncited sentences of its one answer block; none without one."""
    answer = answer_block(completion)
    if answer is None:
        return []
    claims: list[Claim] = []
    outside: list[str] = []

    def flush():
        for piece in _SENTENCE_END.split("".join(outside)):
            if len(_WORD.findall(piece)) >= MIN_CLAIM_WORDS:
                claims.append(Claim(" ".join(piece.split())))
        outside.clear()

    for kind, item in _walk(answer):
        if kind == "claim":
            flush()
            claims.append(item)
        elif kind == "text":
            outside.append(item)
    flush()
    return claims


def malformed(answer: str) -> list[str]:
    """What in an answer body breaks the snippet format; empty when it is well formed."""
    return [item for kind, item in _walk(answer) if kind == "bad"]


def normalize_claim(text: str) -> str:
    """Claim text compared for repeats: case, punctuation and spacing ignored."""
    return " ".join(_WORD.findall(text.lower()))
