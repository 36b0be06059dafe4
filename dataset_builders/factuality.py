"""`factuality` dataset builder: "just-hard-enough" QA for GRPO (the factuality-and-caution study's recipe).

Why: a GRPO group whose samples all get the same reward teaches nothing, and questions the base
model always or never answers correctly give exactly such groups. So the sources are mixed evenly,
the base model answers every question k times, each sample is graded with the shared scorer
(`hubtools.scoring.grade_answer`), and the N questions whose correctness varies most are kept.

Recipe keys: see `recipes/factuality.yaml` (the default recipe, on the four bundled sample sets).
Output rows (the GRPO trainer, rewards and eval read them): `id` ("<source>-<row index>"), `source`,
`question`, `answers` (gold aliases; [] when unanswerable), `answerable`, `prompt` (system + user
messages, TRL conversational format), `pass_rate`, `not_attempted_rate`, `variance` = p(1-p).
"""

from __future__ import annotations

import json
import random
from collections import Counter
from dataclasses import dataclass
from itertools import zip_longest
from pathlib import Path

from dataset_builders import common
from dataset_builders.common import BadRow, get_column, is_int, is_num, require, short
from hubtools.scoring import Grade, grade_answer, normalize_answer
from hubtools.tasks import FACTUALITY

NAME = "factuality"
DEFAULT_RECIPE = Path(__file__).parent / "recipes" / "factuality.yaml"
RULES = ("variance", "balanced")
ANSWER_FORMATS = ("auto", "list", "json_list", "string")
HIST_FILE = "pass_rate_hist.png"


def _check(r: dict) -> None:
    require(r["per_source"] is None or (is_int(r["per_source"]) and r["per_source"] >= 1),
            "per_source must be a positive integer (or null: as many as the smallest source has)")
    require(is_int(r["k"]) and r["k"] >= 1, "k must be a positive integer")
    require(r["system_prompt"] is None or isinstance(r["system_prompt"], str), "system_prompt must be text")
    s = r["select"]
    require(s["rule"] in RULES, f"select.rule must be one of {list(RULES)}, got {s['rule']!r}")
    require(s["n"] is None or (is_int(s["n"]) and s["n"] >= 1), "select.n must be a positive integer")
    for b in ("min_pass_rate", "max_pass_rate"):
        require(s[b] is None or (is_num(s[b]) and 0 <= s[b] <= 1), f"select.{b} must be in [0, 1]")
    if s["min_pass_rate"] is not None and s["max_pass_rate"] is not None:
        require(s["min_pass_rate"] <= s["max_pass_rate"], "select.min_pass_rate is above select.max_pass_rate")


def _check_columns(cols: dict, where: str) -> None:
    require(cols.get("answer_format", "auto") in ANSWER_FORMATS,
            f"{where}.answer_format must be one of {list(ANSWER_FORMATS)}")


SPEC = common.RecipeSpec(
    builder=NAME,
    defaults={"per_source": None, "system_prompt": FACTUALITY.system_prompt, "k": 16,
              "sampling": {"max_new_tokens": 256, "temperature": 1.0, "top_p": 1.0},
              "select": {"n": None, "rule": "variance", "min_pass_rate": None, "max_pass_rate": None},
              "pretty_name": "Factuality: just-hard-enough QA"},
    column_keys=frozenset({"question", "answers", "answer_format", "answerable"}),
    required_columns=("question", "answers"), check=_check, column_check=_check_columns)


def _say(text: str) -> None:
    common.say(NAME, text)


def complete_recipe(recipe: dict) -> dict:
    """Validate a recipe and fill in defaults; a wrong key or value is an error naming it."""
    return common.complete_recipe(recipe, SPEC)


def load_recipe(path: str | Path) -> dict:
    """Read a recipe YAML; its local paths are taken relative to the recipe file's folder."""
    return common.load_recipe(path, SPEC)


def apply_overrides(recipe: dict, *, k: int | None = None, n: int | None = None, per_source: int | None = None,
                    model: str | None = None, backend: str | None = None, base_url: str | list[str] | None = None,
                    max_new_tokens: int | None = None, seed: int | None = None,
                    strict: bool | None = None) -> dict:
    """A completed copy of `recipe` with the command-line overrides that are not None."""
    r = complete_recipe(recipe)
    for key, value in (("k", k), ("per_source", per_source), ("seed", seed), ("strict", strict)):
        if value is not None:
            r[key] = value
    if n is not None:
        r["select"]["n"] = n
    if max_new_tokens is not None:
        r["sampling"]["max_new_tokens"] = max_new_tokens
    common.override_generator(r, model=model, backend=backend, base_url=base_url)
    return complete_recipe(r)


# ---------------------------------------------------------------------------------------- loading


@dataclass
class Question:
    id: str
    source: str
    question: str
    answers: list[str]
    answerable: bool


def _is_text(v) -> bool:
    return isinstance(v, str) or is_num(v)


def parse_answers(value, fmt: str = "auto") -> list[str]:
    """Gold aliases from one cell: a list ("list"), a JSON-encoded list ("json_list", PopQA) or one
    string ("string"); "auto" goes by the cell's type. Stripped, deduplicated, empties dropped."""
    if fmt == "auto":
        fmt = ("list" if isinstance(value, (list, tuple)) else
               "json_list" if isinstance(value, str) and value.lstrip().startswith("[") else "string")
    if value is None or (isinstance(value, (str, list, tuple)) and not value):
        raise BadRow("missing answers", "answers", "no answer given")
    if fmt == "json_list" and isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise BadRow("unparsable answers", "answers",
                         f"expected a JSON-encoded list of strings, got {short(value)}") from None
    if fmt == "string":
        if not _is_text(value):
            raise BadRow("unparsable answers", "answers", f"expected a string, got {short(value)}")
        value = [value]
    elif not isinstance(value, (list, tuple)) or not all(_is_text(a) for a in value):
        raise BadRow("unparsable answers", "answers", f"expected a list of strings, got {short(value)}")
    aliases = list(dict.fromkeys(s for s in (str(a).strip() for a in value) if s))
    if not any(normalize_answer(a) for a in aliases):
        raise BadRow("missing answers", "answers", f"no usable answer alias in {short(value)}")
    return aliases


def parse_row(row, columns: dict) -> tuple[str, list[str], bool]:
    """(question, answers, answerable) of one source row, or BadRow.

    With an `answerable` column, a row marked false (SelfAware-style) keeps answers [] whatever its
    answers cell holds: only abstaining is right for it.
    """
    question = get_column(row, columns["question"])
    if question is None or (isinstance(question, str) and not question.strip()):
        raise BadRow("missing question", "question", "missing or empty")
    if not isinstance(question, str):
        raise BadRow("question is not text", "question", f"expected a string, got {short(question)}")
    answerable = True
    if columns.get("answerable"):
        answerable = get_column(row, columns["answerable"])
        if not isinstance(answerable, bool):
            raise BadRow("invalid answerable", "answerable", f"expected true or false, got {short(answerable)}")
    answers = parse_answers(get_column(row, columns["answers"]), columns.get("answer_format", "auto")) if answerable else []
    return question.strip(), answers, answerable


def load_sources(recipe: dict) -> tuple[dict[str, list[Question]], Counter]:
    """Every row of every source, validated: {source: questions} and skip counts by "source: reason".

    With `strict`, the first bad row is an error naming the source, row index and field.
    """
    def question(row: dict, columns: dict, source: str, i: int) -> Question:
        return Question(f"{source}-{i}", source, *parse_row(row, columns))
    return common.load_sources(complete_recipe(recipe), question)


def mix_evenly(by_source: dict[str, list[Question]], per_source: int | None, seed: int) -> list[Question]:
    """The same number of questions from every source (the study mixes its four sources evenly):
    `per_source`, or fewer when a source is smaller (said so); None takes the smallest source's size.
    Each source's questions are a seeded random sample, kept in source order."""
    sizes = {name: len(qs) for name, qs in by_source.items()}
    empty = [name for name, size in sizes.items() if size == 0]
    if empty:
        raise ValueError(f"source(s) {empty} have no usable rows (see the skip counts); cannot mix evenly")
    smallest = min(sizes.values())
    take = smallest if per_source is None else min(per_source, smallest)
    short = {name: size for name, size in sizes.items() if size < (per_source or 0)}
    if short:
        _say(f"note: source(s) {', '.join(f'{n} ({s} usable rows)' for n, s in short.items())} are smaller "
             f"than per_source={per_source}; taking {take} from every source to keep the mix even")
    elif per_source is None and len(set(sizes.values())) > 1:
        _say(f"note: sources differ in size {sizes}; taking {take} (the smallest) from every source")
    mixed = []
    for name, qs in by_source.items():
        picked = sorted(random.Random(f"{seed}:{name}").sample(range(len(qs)), take))
        mixed.extend(qs[i] for i in picked)
    return mixed


# ---------------------------------------------------------------------------------------- sampling and selection


def make_prompt(system_prompt: str | None, question: str) -> list[dict]:
    """Chat messages in TRL's conversational format: system (if any) + user."""
    system = [{"role": "system", "content": system_prompt}] if system_prompt else []
    return system + [{"role": "user", "content": question}]


def question_stats(grades: list[Grade], answerable: bool = True) -> dict[str, float]:
    """pass_rate p, not_attempted_rate, and variance p(1-p) (from counts, so equal spreads tie exactly).

    A pass is the right outcome: CORRECT, or for an unanswerable question NOT_ATTEMPTED (what the
    reward pays for there), so unanswerable questions can be "just hard enough" too.
    """
    k = len(grades)
    passed = grades.count(Grade.CORRECT if answerable else Grade.NOT_ATTEMPTED)
    return {"pass_rate": passed / k, "not_attempted_rate": grades.count(Grade.NOT_ATTEMPTED) / k,
            "variance": passed * (k - passed) / k ** 2}


def _rank_key(row: dict):
    return -row["variance"], row["not_attempted_rate"], row["id"]


def select_questions(rows: list[dict], n: int | None, rule: str = "variance", *, min_pass_rate: float | None = None,
                     max_pass_rate: float | None = None) -> list[dict]:
    """The top `n` rows (each with id, source, pass_rate, not_attempted_rate, variance), best first.

    Rows outside the pass-rate bounds are dropped first. "variance": highest p(1-p) first, ties to
    fewer not-attempts, then id. "balanced": the same ranking within each source, taken round-robin
    across sources so the selection stays as evenly mixed as the input.
    """
    if rule not in RULES:
        raise ValueError(f"selection rule must be one of {list(RULES)}, got {rule!r}")
    pool = sorted((r for r in rows if (min_pass_rate is None or r["pass_rate"] >= min_pass_rate)
                   and (max_pass_rate is None or r["pass_rate"] <= max_pass_rate)), key=_rank_key)
    if rule == "balanced":
        per_source: dict[str, list[dict]] = {}
        for r in pool:
            per_source.setdefault(r["source"], []).append(r)
        pool = [r for tier in zip_longest(*per_source.values())
                for r in sorted((r for r in tier if r is not None), key=_rank_key)]
    return pool if n is None else pool[:n]


def sample_and_grade(generator, questions: list[Question], prompts: list[list[dict]],
                     recipe: dict) -> list[list[Grade]]:
    """k samples per question, all graded."""
    outputs = common.sample_k(generator, prompts, recipe, desc=f"sampling k={recipe['k']}")
    return [[grade_answer(text, q.answers, answerable=q.answerable) for text in texts]
            for q, texts in zip(questions, outputs)]


def summarize(rows: list[dict]) -> dict:
    """Counts and means the card's filter table shows (before and after selection)."""
    n = len(rows)
    return {"questions": n,
            "mean pass rate": round(sum(r["pass_rate"] for r in rows) / n, 4) if n else None,
            "mean not-attempted rate": round(sum(r["not_attempted_rate"] for r in rows) / n, 4) if n else None,
            "always passed": sum(r["pass_rate"] == 1 for r in rows),
            "never passed": sum(r["pass_rate"] == 0 for r in rows),
            "varied (0 < pass rate < 1)": sum(0 < r["pass_rate"] < 1 for r in rows),
            "unanswerable": sum(not r["answerable"] for r in rows)}


# ---------------------------------------------------------------------------------------- build


def features():
    """The fixed output schema (explicit, so an all-unanswerable split still types `answers`)."""
    from datasets import Features, List, Value
    return Features({
        "id": Value("string"), "source": Value("string"), "question": Value("string"),
        "answers": List(Value("string")), "answerable": Value("bool"),
        "prompt": List({"role": Value("string"), "content": Value("string")}),
        "pass_rate": Value("float64"), "not_attempted_rate": Value("float64"), "variance": Value("float64"),
    })


def card_info(recipe: dict, stats: dict, model: str, backend: str, repro_command: str) -> dict:
    """Dataset-card run info (model_cards.render_dataset_card keys)."""
    s, sel, total = recipe["sampling"], recipe["select"], stats["after"]["questions"]
    build_params = {"model": model, "backend": backend, "k": recipe["k"], "max_new_tokens": s["max_new_tokens"],
                    "temperature": s["temperature"], "top_p": s["top_p"], "seed": recipe["seed"],
                    "per_source": stats["per_source"], "selection rule": sel["rule"], "selection n": sel["n"],
                    "min_pass_rate": sel["min_pass_rate"], "max_pass_rate": sel["max_pass_rate"],
                    "test_size": recipe["test_size"], "system_prompt": recipe["system_prompt"]}
    loaded = ", ".join(f"{name} {n}" for name, n in stats["loaded"].items())
    description = (
        "Questions the base model answers correctly only *sometimes* (\"just-hard-enough\"), for GRPO on "
        f"factuality. {stats['before']['questions']} questions ({stats['per_source']} from each source, mixed "
        f"evenly; usable rows per source: {loaded}) were each answered k={recipe['k']} times by `{model}`. Every "
        "sample was graded with `hubtools.scoring.grade_answer` (final answer in `\\boxed{}`; "
        "`\\boxed{Unknown}` is NOT_ATTEMPTED; for an unanswerable question only abstaining is right), and the "
        f"{total} questions with the highest variance of correctness p(1-p) were kept (rule `{sel['rule']}`), "
        f"split into train ({stats['train']}) and test ({stats['test']}).\n\n"
        "Columns: `id`, `source`, `question`, `answers` (gold aliases; empty when unanswerable), `answerable`, "
        "`prompt` (system + user messages, TRL conversational format), `pass_rate` and `not_attempted_rate` "
        "(over the k samples), `variance` (p(1-p)).")
    return common.card_info(recipe, stats, kept=total, tags=["factuality", "grpo", "just-hard-enough", "question-answering"],
                            description=description, build_params=build_params,
                            image=(HIST_FILE, "Pass rate over the k samples, before vs after selection"), repro_command=repro_command)


def build(recipe: dict, *, push_to_hub: str | None = None, output_dir: str | Path | None = None,
          private: bool | None = None, repro_command: str | None = None, **overrides):
    """Build the dataset: load + validate, mix evenly, sample k, grade, select N, split, publish.

    Pushes to `push_to_hub` (or the recipe's) and/or saves to `output_dir` (or the recipe's), each with
    the card and the pass-rate histogram. `overrides` are `apply_overrides`' keywords. The default
    reproduction command is this process's own (redacted) command line.
    Returns (DatasetDict with train/test, stats).
    """
    from datasets import Dataset, DatasetDict

    from hubtools.generation import make_generator
    from hubtools.plots import histograms

    recipe = apply_overrides(recipe, **overrides)
    repro_command = repro_command or common.own_command()

    by_source, skipped = load_sources(recipe)
    common.say_loaded(NAME, by_source, skipped)
    questions = mix_evenly(by_source, recipe["per_source"], recipe["seed"])
    per_source = len(questions) // len(by_source)
    prompts = [make_prompt(recipe["system_prompt"], q.question) for q in questions]

    generator = make_generator(recipe["generator"])
    model, backend = common.describe_generator(generator)
    _say(f"sampling {len(questions)} questions ({per_source} per source) × k={recipe['k']} from {model} ({backend})")
    grades = sample_and_grade(generator, questions, prompts, recipe)

    rows = [{"id": q.id, "source": q.source, "question": q.question, "answers": q.answers,
             "answerable": q.answerable, "prompt": p, **question_stats(g, q.answerable)}
            for q, p, g in zip(questions, prompts, grades)]
    sel = recipe["select"]
    selected = select_questions(rows, sel["n"], sel["rule"], min_pass_rate=sel["min_pass_rate"],
                                max_pass_rate=sel["max_pass_rate"])
    before, after = summarize(rows), summarize(selected)
    _say(f"graded: mean pass rate {before['mean pass rate']}; always passed {before['always passed']}, never passed "
         f"{before['never passed']}, varied {before['varied (0 < pass rate < 1)']}")
    if after["varied (0 < pass rate < 1)"] < len(selected):
        _say(f"note: only {after['varied (0 < pass rate < 1)']} of the {len(selected)} selected questions have "
             "varied outcomes; the rest always or never pass (pass: correct, or an abstention when unanswerable)")
    train, test = common.split_train_test(selected, recipe["test_size"], recipe["seed"])
    dd = DatasetDict(train=Dataset.from_list(train, features=features()),
                     test=Dataset.from_list(test, features=features()))

    stats = {"loaded": {name: len(qs) for name, qs in by_source.items()}, "skipped": dict(skipped),
             "per_source": per_source, "before": before, "after": after, "train": len(train), "test": len(test),
             "sources": {name: sum(r["source"] == name for r in selected) for name in by_source}}
    info = card_info(recipe, stats, model, backend, repro_command)
    png = histograms({"before selection": [r["pass_rate"] for r in rows],
                      "after selection": [r["pass_rate"] for r in selected]},
                     f"Pass rate over k={recipe['k']} samples", "pass rate", bins=recipe["k"] + 1)
    common.write_outputs(NAME, dd, recipe, {HIST_FILE: png}, info, push_to_hub=push_to_hub,
                         output_dir=output_dir, private=private)
    _say(f"selected {len(selected)} of {len(rows)} (rule {sel['rule']}): mean pass rate {before['mean pass rate']}"
         f" → {after['mean pass rate']}; train {len(train)}, test {len(test)}; per source {stats['sources']}")
    return dd, stats


# ---------------------------------------------------------------------------------------- command line

_OVERRIDE_FLAGS = {**common.COMMON_OVERRIDES, "k": "--k", "n": "--n", "per_source": "--per-source",
                   "max_new_tokens": "--max-new-tokens"}


def add_arguments(parser) -> None:
    """Flags of `hubtools build-dataset factuality`; unset ones leave the recipe's value."""
    common.add_common_arguments(parser, DEFAULT_RECIPE, "four sample sets")
    parser.add_argument("--k", type=int, help="samples per question (recipe default 16)")
    parser.add_argument("--n", type=int, help="questions to keep (select.n)")
    parser.add_argument("--per-source", type=int, help="questions taken from each source")
    parser.add_argument("--max-new-tokens", type=int, help="tokens per sample")


def run(args) -> int:
    """`hubtools build-dataset factuality ...`"""
    return common.run_builder(NAME, args, load_recipe, build, _OVERRIDE_FLAGS)
