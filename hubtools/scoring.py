"""Answer scoring shared by the dataset builder (filters), the GRPO rewards and evaluation.

Standard library only. The rules, in one place:

* Normalization (`normalize_answer`), SQuAD/TriviaQA style: NFKC, casefold, accents stripped
  ("Zürich" == "Zurich"); LaTeX text wrappers (``\\text{}``, ``\\mathrm{}``...) dropped; "&" -> "and";
  numbers canonical: thousands commas dropped ("1,000" == "1000") and trailing decimal zeros dropped
  ("3.0" == "3", "2.50" == "2.5"; so "1.000" is read as one, never as a thousand); apostrophes and
  periods deleted ("U.S." == "US", "don't" == "dont") except a decimal point between digits
  ("3.5" != "35"); all other punctuation/symbols become spaces ("Jean-Paul" == "Jean Paul");
  articles a/an/the removed; whitespace collapsed. Aliases that normalize to "" never match.
* Final answer (`extract_final_answer`): the completion is split at the first ``</think>`` (a
  ``<think>`` opener is optional: chat templates often put it in the prompt; an unclosed leading
  ``<think>`` makes the whole text reasoning). The text after it is searched first (last
  ``\\boxed{}``/``\\fbox{}``, else last ``<answer>`` block); only when it has neither is the
  reasoning searched the same way. So a box inside the reasoning counts only if none comes after.
* Abstention (`is_not_attempted`): the whole normalized answer must be an abstention phrase
  ("unknown", "I don't know", "not sure", "cannot be determined", "no answer", ...), optionally with
  "sorry"/"unfortunately" before and "for sure"/"the answer"/"to this question"... after. Hedged
  attempts ("not sure, maybe Paris") and answers merely containing such words ("Unknown Soldier",
  "Known as Paris") are attempts.
* Match (`answer_matches`): an answer is CORRECT only if it names one candidate and that candidate
  is a gold alias. Exact match on any alias always counts (an alias such as "Honolulu, Hawaii" is
  the dataset's choice). Otherwise the answer must hold an alias as a whole-token sequence under
  these rules, which trade recall for precision so that a list of guesses never earns more than
  one guess would:
  - one sentence, one item: no list separator (, ; / | + • 、 newline, fullwidth forms too; a
    thousands comma is not one), no ``?``/``!``/ellipsis/sentence-ending period followed by more
    text ("Paris? Lyon?", "1. Paris 2. Lyon"), at most `MAX_CONTAINED_TOKENS` normalized tokens;
  - the alias ends the answer, optionally followed by one parenthetical qualifier: "Barack Obama"
    (gold "Obama"), "The capital is Paris.", "Paris (France)". Words may extend it on the left
    only, as given names and titles do; words after it make another entity or value: "Paris
    Hilton", "Paris Lyon Marseille", "12 km", "12 million" are not "Paris" or "12", and neither
    is "Paris is the capital" (subject-first sentences lose recall). Rules cannot tell a run of
    names from a full name, so "Lyon Paris" and "Hilton Paris" count for "Paris" as "Barack Obama"
    counts for "Obama": with one anchor at the end, a list earns exactly what its last item alone
    would, never more;
  - no word offering an alternative or a hedge outside the alias (`_ALTERNATIVE_WORDS`: or, and,
    not, either, vs, but, maybe, probably, could, guess, ...): "either Paris or Lyon", "Paris (or
    Lyon)", "probably Paris"; "and" inside the alias is fine ("Simon and Garfunkel");
  - no dash joining the alias to the word before it: "Paris-Lyon", "Bowes-Lyon" are not "Lyon";
  - a number alias (a digit or a number word in it) must be the only number in the answer and
    nothing may follow it, not even a qualifier: "1939-1945", "from 1939 to 1945", "12 (million)"
    are not "1945"/"12". Unit symbols are dropped by normalization ("12%" == "12"), unit words
    are not ("12 km").
* Grade (`grade_answer`): no final answer -> INCORRECT when `require_box` (silence is not an
  abstention); abstention -> NOT_ATTEMPTED (checked before matching, whatever the golds say);
  unanswerable question (`answerable=False` or no usable gold alias) -> any attempt is INCORRECT,
  never CORRECT; otherwise CORRECT iff `answer_matches`.
* Process-correct (`reasoning_reaches_gold`): the reasoning commits to the gold. The reasoning is
  the text before the final answer (the whole completion when there is none; ``<think>`` and
  ``<answer>`` tags end a sentence, box commands are dropped), split into sentences at . ! ? …
  and newlines. When there is a final answer, the unfinished text leading into it ("So the answer
  is") belongs to it and is left out. A sentence commits to a candidate when it is not a question
  and names one candidate by the match rules above (so "It could be Paris, Lyon or Marseille",
  "Maybe Paris" and "Paris?" commit to nothing); the reasoning commits to the gold when its last
  committing sentence matches the gold. Only one candidate of the reasoning ever counts, so
  spreading guesses over sentences earns nothing; the price is that a short aside after the gold
  ("It is Paris. Let me check.") commits to something else and cancels the credit. Whether the
  credit is paid (final answer an attempt that is wrong or missing, never an abstention) is the
  reward's rule.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Mapping, Sequence
from enum import Enum

MAX_CONTAINED_TOKENS = 8
_APOSTROPHES = re.compile(r"['‘’`´ʼ]")
_LATEX_TEXT = re.compile(r"\\(?:text(?:bf|it|rm|tt|sf)?|math(?:rm|bf|it|sf|tt)|mbox|emph)\b")
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
_DECIMAL = re.compile(r"(?<![\d.])(\d+)\.(\d+)(?![.\d])")
_PUNCT = re.compile(r"(?P<dec>(?<=\d)\.(?=\d))|[^\w\s]|_")
_ARTICLES = re.compile(r"\b(?:a|an|the)\b")

_BOX = re.compile(r"\\(?:boxed|fbox)\s*\{")
_THINK_END = re.compile(r"</think\s*>", re.I)
_THINK_OPEN = re.compile(r"\s*<think\s*>", re.I)

_LIST_SEPARATOR = re.compile(r"[;/|+•、\n]|(?<!\d),|,(?!\d{3}(?!\d))")
# A sentence ends at ? ! … or an ellipsis, or at a period before a space that does not follow an
# initial ("J. K. Rowling") and is no decimal point.
_SENTENCE_END = re.compile(r"[?!…]+|\.{2,}|(?<!\b[^\W\d_])\.(?=\s|$)|\n")
_QUALIFIER = re.compile(r"\s*\(([^()]*)\)[\s.!}]*$")  # "}": inside \text{...}
_DASH = re.compile(r"[-‐‑‒–—―−]")
_ALTERNATIVE_WORDS = frozenset({
    "or", "and", "nor", "either", "neither", "not", "vs", "versus", "but", "instead", "rather", "otherwise",
    "alternatively", "maybe", "perhaps", "possibly", "probably", "likely", "might", "could", "guess",
    "unsure", "uncertain", "unknown"})
_NUMBER_WORDS = frozenset(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
    "seventeen eighteen nineteen twenty thirty forty fifty sixty seventy eighty ninety hundred thousand "
    "million billion trillion dozen".split())
_MARKUP_TAG = re.compile(r"</?(?:think|answer)\s*>", re.I)
_BOX_COMMAND = re.compile(r"\\(?:boxed|fbox)\b")

_ABSTAIN = re.compile(
    r"(?:(?:sorry|unfortunately|honestly) )?"
    r"(?:(?:i )?(?:really )?(?:dont|do not|didnt|did not) know"
    r"|(?:im|i am) (?:not (?:sure|certain)|unsure|uncertain)"
    r"|(?:i |im |i am )?(?:cannot|can not|cant|could not|couldnt|unable to|not able to)"
    r" (?:answer|say|determine|tell|know|be sure)"
    r"|(?:i )?(?:have )?no (?:idea|answer|clue)"
    r"|(?:(?:answer|it|this|that)(?: is)? |its )?(?:unknown|not known|unclear|uncertain|unsure"
    r"|not sure|unanswerable|not answerable|undetermined|(?:cannot|can not|cant) be (?:determined|answered|known))"
    r"|(?:not enough|insufficient) information)"
    r"(?: (?:for sure|for certain|with certainty|(?:(?:of|about|to|for) )?(?:this |that )?"
    r"(?:answer|question|one|this|that|it)|(?:from|based on|with) (?:given|available|provided) information|sorry))*"
)

_LABEL_PREFIX = re.compile(r"^(?:label|grade|answer)\s*:\s*", re.I)


class Grade(str, Enum):
    """Outcome of grading one completion (SimpleQA's three classes)."""

    CORRECT = "CORRECT"
    INCORRECT = "INCORRECT"
    NOT_ATTEMPTED = "NOT_ATTEMPTED"


def normalize_answer(s: str) -> str:
    """Normalize an answer for comparison (rules in the module docstring)."""
    s = unicodedata.normalize("NFKC", _APOSTROPHES.sub("", s)).casefold()
    s = "".join(c for c in unicodedata.normalize("NFKD", s) if not unicodedata.combining(c))
    s = _LATEX_TEXT.sub(" ", s).replace("&", " and ")
    s = _THOUSANDS.sub("", s)
    s = _DECIMAL.sub(lambda m: m[1] + ("." + m[2].rstrip("0") if m[2].rstrip("0") else ""), s)
    s = _PUNCT.sub(lambda m: "." if m["dec"] else "" if m[0] == "." else " ", s)
    return " ".join(_ARTICLES.sub(" ", s).split())


def _aliases(golds: str | Sequence[str]) -> list[str]:
    """Normalized, non-empty gold aliases."""
    golds = [golds] if isinstance(golds, str) else golds
    return [a for a in map(normalize_answer, golds) if a]


def exact_match(prediction: str, golds: str | Sequence[str]) -> bool:
    """True if the normalized prediction equals any normalized gold alias."""
    return normalize_answer(prediction) in _aliases(golds)


def token_f1(prediction: str, golds: str | Sequence[str]) -> float:
    """SQuAD token F1 of the normalized prediction, max over aliases (0.0 without aliases)."""
    pred = normalize_answer(prediction).split()

    def f1(gold: list[str]) -> float:
        common = sum((Counter(pred) & Counter(gold)).values())
        return 0.0 if common == 0 else 2 * common / (len(pred) + len(gold))

    return max((f1(a.split()) for a in _aliases(golds)), default=0.0)


def contains_answer(text: str, golds: str | Sequence[str]) -> bool:
    """PopQA-style: some normalized alias occurs as a whole-token sequence in the normalized text."""
    padded = f" {normalize_answer(text)} "
    return any(f" {a} " in padded for a in _aliases(golds))


def _is_number(token: str) -> bool:
    return token in _NUMBER_WORDS or any(c.isdigit() for c in token)


def _one_item(answer: str) -> tuple[str, list[str], list[str]] | None:
    """(main text, its tokens, qualifier tokens) of an answer shaped as one item, else None.

    Shape only, gold-independent: one sentence, no list separator, at most one trailing
    parenthetical qualifier and no other parenthesis, at most `MAX_CONTAINED_TOKENS` tokens.
    """
    answer = unicodedata.normalize("NFKC", answer).strip()  # fullwidth "，" and "？" are separators too
    if _LIST_SEPARATOR.search(answer) or any(answer[m.end():].strip() for m in _SENTENCE_END.finditer(answer)):
        return None
    q = _QUALIFIER.search(answer)
    main, qualifier = (answer[:q.start()], q[1]) if q and answer[:q.start()].strip() else (answer, "")
    head, extra = normalize_answer(main).split(), normalize_answer(qualifier).split()
    if "(" in main or ")" in main or not head or len(head) + len(extra) > MAX_CONTAINED_TOKENS:
        return None
    return main, head, extra


def answer_matches(answer: str, golds: str | Sequence[str]) -> bool:
    """Exact match, or the answer names one candidate and it is a gold alias (module docstring)."""
    if exact_match(answer, golds):
        return True
    item = _one_item(answer)
    if item is None:
        return False
    main, head, extra = item
    for alias in map(str.split, _aliases(golds)):
        rest = head[:-len(alias)] + extra
        if (head[-len(alias):] != alias or _ALTERNATIVE_WORDS.intersection(rest)
                or any(normalize_answer(main[m.end():]).split() == alias for m in _DASH.finditer(main))):
            continue
        if any(map(_is_number, alias)) and (extra or any(map(_is_number, rest))):
            continue
        return True
    return False


def _last_boxed(text: str) -> tuple[str, int] | None:
    """(content, start) of the last box opener; None when there is none or it is unbalanced."""
    openers = list(_BOX.finditer(text))
    if not openers:
        return None
    start, depth = openers[-1].end(), 1
    for i in range(start, len(text)):
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        if depth == 0:
            return text[start:i].strip(), openers[-1].start()
    return None


def _last_tagged(text: str, tag: str) -> tuple[str, int] | None:
    t = re.escape(tag)
    blocks = list(re.finditer(rf"<{t}\s*>(.*?)</{t}\s*>", text, re.S | re.I))
    return (blocks[-1][1].strip(), blocks[-1].start()) if blocks else None


def extract_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` / ``\\fbox{...}`` (nested braces ok); None if missing/unbalanced."""
    found = _last_boxed(text)
    return found[0] if found else None


def extract_tagged(text: str, tag: str = "answer") -> str | None:
    """Content of the last ``<tag>...</tag>`` block (stripped), or None."""
    found = _last_tagged(text, tag)
    return found[0] if found else None


def answer_offset(text: str) -> int:
    """Where the text after the reasoning starts: after the first ``</think>`` (a chat template ends the
    reasoning there); 0 without reasoning; the end of the text when a leading ``<think>`` never closes."""
    end = _THINK_END.search(text)
    if end:
        return end.end()
    return len(text) if _THINK_OPEN.match(text) else 0


def answer_part(text: str) -> str:
    """The text after the reasoning (`answer_offset`), stripped: the one rule for policy completions,
    engine answers and judge replies alike."""
    return text[answer_offset(text):].strip()


def _final_answer(text: str) -> tuple[str, int] | None:
    cut = answer_offset(text)
    for lo, hi in ((cut, len(text)), (0, cut)):
        found = _last_boxed(text[lo:hi]) or _last_tagged(text[lo:hi], "answer")
        if found:
            return found[0], lo + found[1]
    return None


def extract_final_answer(text: str) -> str | None:
    """Last box, else last ``<answer>`` block, after the reasoning first, then inside it; else None."""
    found = _final_answer(text)
    return found[0] if found else None


def is_not_attempted(answer_or_text: str) -> bool:
    """True if the final answer (the whole text after the reasoning when there is none) is an abstention."""
    found = _final_answer(answer_or_text)
    answer = found[0] if found else answer_or_text[answer_offset(answer_or_text):]
    return _ABSTAIN.fullmatch(normalize_answer(answer)) is not None


def grade_answer(completion: str, golds: str | Sequence[str], *, require_box: bool = True,
                 answerable: bool = True) -> Grade:
    """Grade a completion; unanswerable (answerable=False or no gold) means only abstaining is right.

    Without a final answer: INCORRECT if `require_box`, else the text after the reasoning is the answer.
    """
    found = _final_answer(completion)
    if found is None and require_box:
        return Grade.INCORRECT
    answer = found[0] if found else completion[answer_offset(completion):]
    if is_not_attempted(answer):
        return Grade.NOT_ATTEMPTED
    if answerable and _aliases(golds) and answer_matches(answer, golds):
        return Grade.CORRECT
    return Grade.INCORRECT


def _sentences(text: str) -> list[str]:
    """Sentences with their end marks; the last item is the unfinished rest (possibly blank)."""
    out, start = [], 0
    for m in _SENTENCE_END.finditer(text):
        out.append(text[start:m.end()].strip())
        start = m.end()
    return out + [text[start:].strip()]


def reasoning_reaches_gold(completion: str, golds: str | Sequence[str]) -> bool:
    """True if the reasoning's last committing sentence names the gold (module docstring).

    Independent of the grade: the reward decides when the credit is paid.
    """
    found = _final_answer(completion)
    reasoning = _MARKUP_TAG.sub("\n", _BOX_COMMAND.sub(" ", completion[:found[1]] if found else completion))
    sentences = _sentences(unicodedata.normalize("NFKC", reasoning))
    for sentence in reversed(sentences[:-1] if found else sentences):
        if sentence.endswith("?"):
            continue
        if answer_matches(sentence, golds):
            return True
        item = _one_item(sentence)
        if item is not None and not _ALTERNATIVE_WORDS.intersection(item[1] + item[2]):
            return False
    return False


def _label_key(s: str) -> str:
    return re.sub(r"[\s_-]+", "_", s.strip().casefold())


def parse_grader_label(text: str, labels: Sequence[str] | Mapping[str, str]) -> str:
    """Strictly parse an LLM grader's reply into one of `labels`; raise ValueError otherwise.

    `labels` is a list of names, or a mapping letter -> name ({"A": "CORRECT", ...}) when the grader
    may answer with the letter; the name is returned. The whole reply, after stripping whitespace,
    markdown emphasis, one "Label:"/"Grade:"/"Answer:" prefix, surrounding quotes/brackets and
    trailing punctuation, must be the name or the letter (case, "_", "-" and spaces are ignored).
    """
    s = _LABEL_PREFIX.sub("", text.replace("**", "").replace("__", "").strip(), count=1)
    key = _label_key(s.lstrip("\"'`([*_ ").rstrip("\"'`)]*_ .!?,;:"))
    pairs = labels.items() if isinstance(labels, Mapping) else ((name, name) for name in labels)
    for letter, name in pairs:
        if key and key in (_label_key(letter), _label_key(name)):
            return name
    raise ValueError(f"cannot parse grader label from {text!r}; expected one of {list(labels)}")
