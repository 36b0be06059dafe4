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
* Match (`answer_matches`): exact match on any alias, or containment of an alias as a whole-token
  sequence in a short answer: at most `MAX_CONTAINED_TOKENS` normalized tokens, no list separator
  (, ; / | newline; a thousands comma is not one) and none of "or and nor either neither not vs
  versus" outside the alias. So "Barack Obama" matches gold "Obama" and "Paris (France)" matches
  "Paris", while "Paris or Lyon", "Paris, Lyon" and also "Honolulu, Hawaii" (gold "Honolulu") do
  not: precision over recall, so that candidate lists are never rewarded.
* Grade (`grade_answer`): no final answer -> INCORRECT when `require_box` (silence is not an
  abstention); abstention -> NOT_ATTEMPTED (checked before matching, whatever the golds say);
  unanswerable question (`answerable=False` or no usable gold alias) -> any attempt is INCORRECT,
  never CORRECT; otherwise CORRECT iff `answer_matches`.
* Process-correct (`reasoning_reaches_gold`): a gold alias occurs (whole tokens) in the text before
  the final answer's ``\\boxed``/``<answer>`` (the whole completion when there is none).
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from collections.abc import Mapping, Sequence
from enum import Enum

MAX_CONTAINED_TOKENS = 8
# The seed's system prompt (001/003): it asks for exactly the output format `grade_answer` reads.
SEED_SYSTEM_PROMPT = ("A conversation between User and Assistant. The Assistant must think step by step. "
                      "Then give a brief answer in \\boxed{} if sure about the answer, otherwise the "
                      "Assistant can return \\boxed{Unknown} if not sure.")

_APOSTROPHES = re.compile(r"['‘’`´ʼ]")
_LATEX_TEXT = re.compile(r"\\(?:text(?:bf|it|rm|tt|sf)?|math(?:rm|bf|it|sf|tt)|mbox|emph)\b")
_THOUSANDS = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
_DECIMAL = re.compile(r"(?<![\d.])(\d+)\.(\d+)(?![.\d])")
_PUNCT = re.compile(r"(?P<dec>(?<=\d)\.(?=\d))|[^\w\s]|_")
_ARTICLES = re.compile(r"\b(?:a|an|the)\b")

_BOX = re.compile(r"\\(?:boxed|fbox)\s*\{")
_THINK_END = re.compile(r"</think\s*>", re.I)
_THINK_OPEN = re.compile(r"\s*<think\s*>", re.I)

_LIST_SEPARATOR = re.compile(r"[;/|\n]|(?<!\d),|,(?!\d{3}(?!\d))")
_LIST_WORDS = frozenset({"or", "and", "nor", "either", "neither", "not", "vs", "versus"})

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


def answer_matches(answer: str, golds: str | Sequence[str]) -> bool:
    """Exact match, or an alias contained in a short single-item answer (see module docstring)."""
    if exact_match(answer, golds):
        return True
    tokens = normalize_answer(answer).split()
    if len(tokens) > MAX_CONTAINED_TOKENS or _LIST_SEPARATOR.search(answer):
        return False
    for alias in map(str.split, _aliases(golds)):
        n = len(alias)
        for i in range(len(tokens) - n + 1):
            if tokens[i:i + n] == alias and not _LIST_WORDS.intersection(tokens[:i] + tokens[i + n:]):
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


def _answer_offset(text: str) -> int:
    """Where the text after the reasoning starts: after the first ``</think>``; 0 without reasoning."""
    end = _THINK_END.search(text)
    if end:
        return end.end()
    return len(text) if _THINK_OPEN.match(text) else 0


def _final_answer(text: str) -> tuple[str, int] | None:
    cut = _answer_offset(text)
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
    answer = found[0] if found else answer_or_text[_answer_offset(answer_or_text):]
    return _ABSTAIN.fullmatch(normalize_answer(answer)) is not None


def grade_answer(completion: str, golds: str | Sequence[str], *, require_box: bool = True,
                 answerable: bool = True) -> Grade:
    """Grade a completion; unanswerable (answerable=False or no gold) means only abstaining is right.

    Without a final answer: INCORRECT if `require_box`, else the text after the reasoning is the answer.
    """
    found = _final_answer(completion)
    if found is None and require_box:
        return Grade.INCORRECT
    answer = found[0] if found else completion[_answer_offset(completion):]
    if is_not_attempted(answer):
        return Grade.NOT_ATTEMPTED
    if answerable and _aliases(golds) and answer_matches(answer, golds):
        return Grade.CORRECT
    return Grade.INCORRECT


def reasoning_reaches_gold(completion: str, golds: str | Sequence[str]) -> bool:
    """True if a gold alias occurs (whole tokens) in the text before the final answer.

    That text is everything before the final ``\\boxed``/``<answer>`` (think section included), or
    the whole completion when there is no final answer. Independent of the grade: the reward gives
    process credit only when the grade is not CORRECT.
    """
    found = _final_answer(completion)
    return contains_answer(completion[:found[1]] if found else completion, golds)


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
