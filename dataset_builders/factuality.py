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

import copy
import json
import random
import shlex
import sys
from collections import Counter
from dataclasses import dataclass
from itertools import zip_longest
from pathlib import Path
from typing import Iterator

import yaml

from hubtools.scoring import FACTUALITY_SYSTEM_PROMPT, Grade, grade_answer, normalize_answer

DEFAULT_RECIPE = Path(__file__).parent / "recipes" / "factuality.yaml"
RULES = ("variance", "balanced")
ANSWER_FORMATS = ("auto", "list", "json_list", "string")
HIST_FILE = "pass_rate_hist.png"

_DEFAULTS = {
    "sources": None, "per_source": None, "strict": False, "system_prompt": FACTUALITY_SYSTEM_PROMPT,
    "generator": {"backend": "auto", "model": None}, "k": 16,
    "sampling": {"max_new_tokens": 256, "temperature": 1.0, "top_p": 1.0},
    "select": {"n": None, "rule": "variance", "min_pass_rate": None, "max_pass_rate": None},
    "test_size": 0.1, "seed": 0, "push_to_hub": None, "private": False, "output_dir": None,
    "pretty_name": "Factuality: just-hard-enough QA", "license": None,
}
_SOURCE_KEYS = {"name", "path", "config", "split", "columns", "limit"}
_COLUMN_KEYS = {"question", "answers", "answer_format", "answerable"}
_LOCAL_SUFFIXES = (".jsonl", ".json", ".parquet")


def _say(text: str) -> None:
    print(f"[factuality] {text}", flush=True)


# ---------------------------------------------------------------------------------------- recipe


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(f"recipe: {message}")


def _unknown(given: dict, known, where: str) -> None:
    extra = sorted(set(given) - set(known))
    _require(not extra, f"unknown key(s) {extra} in {where}; known: {sorted(known)}")


def complete_recipe(recipe: dict) -> dict:
    """Validate a recipe and fill in defaults; a wrong key or value is an error naming it."""
    _require(isinstance(recipe, dict), f"expected a mapping, got {type(recipe).__name__}")
    _unknown(recipe, _DEFAULTS, "the recipe")
    r = copy.deepcopy(_DEFAULTS)
    for key, value in copy.deepcopy(recipe).items():
        if isinstance(r[key], dict):
            _require(isinstance(value, dict), f"{key} must be a mapping")
            if key != "generator":  # generator keys are make_generator's to check
                _unknown(value, r[key], key)
            r[key].update(value)
        else:
            r[key] = value
    sources = r["sources"]
    _require(isinstance(sources, list) and sources, "sources must be a non-empty list")
    names = set()
    for i, src in enumerate(sources):
        where = f"sources[{i}]"
        _require(isinstance(src, dict), f"{where} must be a mapping")
        _unknown(src, _SOURCE_KEYS, where)
        name, cols = src.get("name"), src.get("columns")
        _require(isinstance(name, str) and name.strip() != "", f"{where}.name is required")
        _require(name not in names, f"{where}.name {name!r} is used twice")
        names.add(name)
        _require(isinstance(src.get("path"), str) and src["path"] != "", f"{where}.path is required")
        _require(isinstance(cols, dict), f"{where}.columns is required (question, answers, ...)")
        _unknown(cols, _COLUMN_KEYS, f"{where}.columns")
        for col in ("question", "answers"):
            _require(isinstance(cols.get(col), str) and cols[col] != "", f"{where}.columns.{col} is required")
        _require(cols.get("answer_format", "auto") in ANSWER_FORMATS,
                 f"{where}.columns.answer_format must be one of {list(ANSWER_FORMATS)}")
        _require(src.get("limit") is None or (_is_int(src["limit"]) and src["limit"] >= 1),
                 f"{where}.limit must be a positive integer")
    _require(r["per_source"] is None or (_is_int(r["per_source"]) and r["per_source"] >= 1),
             "per_source must be a positive integer (or null: as many as the smallest source has)")
    _require(_is_int(r["k"]) and r["k"] >= 1, "k must be a positive integer")
    _require(_is_int(r["seed"]), "seed must be an integer")
    _require(r["system_prompt"] is None or isinstance(r["system_prompt"], str), "system_prompt must be text")
    s = r["select"]
    _require(s["rule"] in RULES, f"select.rule must be one of {list(RULES)}, got {s['rule']!r}")
    _require(s["n"] is None or (_is_int(s["n"]) and s["n"] >= 1), "select.n must be a positive integer")
    for b in ("min_pass_rate", "max_pass_rate"):
        _require(s[b] is None or (_is_num(s[b]) and 0 <= s[b] <= 1), f"select.{b} must be in [0, 1]")
    if s["min_pass_rate"] is not None and s["max_pass_rate"] is not None:
        _require(s["min_pass_rate"] <= s["max_pass_rate"], "select.min_pass_rate is above select.max_pass_rate")
    t = r["test_size"]
    _require((_is_int(t) and t >= 1) or (isinstance(t, float) and 0 < t < 1),
             f"test_size must be a fraction in (0, 1) or a number of questions >= 1, got {t!r}")
    return r


def _resolve(path: str, base: Path, *, always: bool) -> str:
    """A recipe path relative to the recipe's folder; a source path that is neither local-looking nor
    existing there stays as it is (a Hub dataset repo id)."""
    p = Path(path).expanduser()
    if p.is_absolute():
        return str(p)
    local = base / p
    if always or local.exists() or path.startswith(".") or p.suffix in _LOCAL_SUFFIXES:
        return str(local.resolve())
    return path


def load_recipe(path: str | Path) -> dict:
    """Read a recipe YAML; its local paths are taken relative to the recipe file's folder."""
    path = Path(path)
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a recipe must be a YAML mapping")
    base = path.resolve().parent
    for src in data.get("sources") or []:
        if isinstance(src, dict) and isinstance(src.get("path"), str):
            src["path"] = _resolve(src["path"], base, always=False)
    gen = data.get("generator")
    if isinstance(gen, dict):
        if isinstance(gen.get("model"), str):
            gen["model"] = _resolve(gen["model"], base, always=False)
        if isinstance(gen.get("cache_dir"), str):
            gen["cache_dir"] = _resolve(gen["cache_dir"], base, always=True)
    if isinstance(data.get("output_dir"), str):
        data["output_dir"] = _resolve(data["output_dir"], base, always=True)
    try:
        return complete_recipe(data)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None


def apply_overrides(recipe: dict, *, k: int | None = None, n: int | None = None, per_source: int | None = None,
                    model: str | None = None, backend: str | None = None, base_url: str | list[str] | None = None,
                    max_new_tokens: int | None = None, seed: int | None = None,
                    strict: bool | None = None) -> dict:
    """A completed copy of `recipe` with the command-line overrides that are not None.

    `base_url` (one URL or several servers) replaces the recipe's; with backend auto it means openai.
    """
    r = complete_recipe(recipe)
    for key, value in (("k", k), ("per_source", per_source), ("seed", seed), ("strict", strict)):
        if value is not None:
            r[key] = value
    if n is not None:
        r["select"]["n"] = n
    if max_new_tokens is not None:
        r["sampling"]["max_new_tokens"] = max_new_tokens
    gen = r["generator"]
    if model is not None:
        gen["model"] = model
    if base_url is not None:
        gen["base_url"] = base_url
    if backend is not None:
        gen["backend"] = backend
    return complete_recipe(r)


# ---------------------------------------------------------------------------------------- loading


@dataclass
class Question:
    id: str
    source: str
    question: str
    answers: list[str]
    answerable: bool


class BadRow(ValueError):
    """A row that cannot be used: `reason` is the counted category, `field` the recipe column key."""

    def __init__(self, reason: str, field: str | None = None, detail: str = ""):
        super().__init__(detail or reason)
        self.reason, self.field, self.detail = reason, field, detail or reason


def _get(row: dict, column: str):
    """A column value; a dotted path (`answer.aliases`) reads into nested mappings. Missing → None."""
    value = row
    for part in column.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _is_text(v) -> bool:
    return isinstance(v, str) or _is_num(v)


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
                         f"expected a JSON-encoded list of strings, got {_short(value)}") from None
    if fmt == "string":
        if not _is_text(value):
            raise BadRow("unparsable answers", "answers", f"expected a string, got {_short(value)}")
        value = [value]
    elif not isinstance(value, (list, tuple)) or not all(_is_text(a) for a in value):
        raise BadRow("unparsable answers", "answers", f"expected a list of strings, got {_short(value)}")
    aliases = list(dict.fromkeys(s for s in (str(a).strip() for a in value) if s))
    if not any(normalize_answer(a) for a in aliases):
        raise BadRow("missing answers", "answers", f"no usable answer alias in {_short(value)}")
    return aliases


def parse_row(row, columns: dict) -> tuple[str, list[str], bool]:
    """(question, answers, answerable) of one source row, or BadRow.

    With an `answerable` column, a row marked false (SelfAware-style) keeps answers [] whatever its
    answers cell holds: only abstaining is right for it.
    """
    if not isinstance(row, dict):
        raise BadRow("row is not an object", None, f"expected a JSON object, got {_short(row)}")
    question = _get(row, columns["question"])
    if question is None or (isinstance(question, str) and not question.strip()):
        raise BadRow("missing question", "question", "missing or empty")
    if not isinstance(question, str):
        raise BadRow("question is not text", "question", f"expected a string, got {_short(question)}")
    answerable = True
    if columns.get("answerable"):
        answerable = _get(row, columns["answerable"])
        if not isinstance(answerable, bool):
            raise BadRow("invalid answerable", "answerable", f"expected true or false, got {_short(answerable)}")
    answers = parse_answers(_get(row, columns["answers"]), columns.get("answer_format", "auto")) if answerable else []
    return question.strip(), answers, answerable


def _read_json_file(path: Path) -> Iterator[dict | BadRow]:
    """JSON lines (blank lines ignored), or one JSON array of objects."""
    text = path.read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        try:
            yield from json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON: {e}") from None
        return
    for line in text.splitlines():
        if line.strip():
            try:
                yield json.loads(line)
            except json.JSONDecodeError as e:
                yield BadRow("invalid JSON", None, f"not valid JSON ({e.msg})")


def _read_source(src: dict) -> Iterator[dict | BadRow]:
    """Rows of a local jsonl/json/parquet file, a local dataset folder, or a Hub dataset repo."""
    path, split = Path(src["path"]), src.get("split") or "train"
    if path.is_file():
        if path.suffix in (".jsonl", ".json"):
            return _read_json_file(path)
        if path.suffix == ".parquet":
            import pyarrow.parquet as pq
            return iter(pq.read_table(path).to_pylist())
        raise ValueError(f"source {src['name']!r}: {path}: unsupported file type "
                         f"(use {', '.join(_LOCAL_SUFFIXES)}, a folder or a Hub dataset repo id)")
    from datasets import load_dataset, load_from_disk
    if path.is_dir():
        if (path / "dataset_dict.json").exists():
            return iter(load_from_disk(str(path))[split])
        if (path / "state.json").exists():
            return iter(load_from_disk(str(path)))
        return iter(load_dataset(str(path), src.get("config"), split=split))
    if src["path"].startswith((".", "/", "~")) or path.suffix in _LOCAL_SUFFIXES:
        raise FileNotFoundError(f"source {src['name']!r}: {src['path']} does not exist")
    return iter(load_dataset(src["path"], src.get("config"), split=split))


def load_sources(recipe: dict) -> tuple[dict[str, list[Question]], Counter]:
    """Every row of every source, validated: {source: questions} and skip counts by "source: reason".

    With `strict`, the first bad row is an error naming the source, row index and field.
    """
    recipe = complete_recipe(recipe)
    by_source: dict[str, list[Question]] = {}
    skipped: Counter = Counter()
    for src in recipe["sources"]:
        name, columns, limit = src["name"], src["columns"], src.get("limit")
        questions = by_source[name] = []
        for i, row in enumerate(_read_source(src)):
            if limit is not None and i >= limit:
                break
            try:
                if isinstance(row, BadRow):
                    raise row
                question, answers, answerable = parse_row(row, columns)
            except BadRow as bad:
                if recipe["strict"]:
                    where = f" field {bad.field!r} (column {columns[bad.field]!r})" if bad.field else ""
                    raise ValueError(f"source {name!r} ({src['path']}) row {i}:{where}: {bad.detail}") from None
                skipped[f"{name}: {bad.reason}"] += 1
                continue
            questions.append(Question(f"{name}-{i}", name, question, answers, answerable))
    return by_source, skipped


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


def split_train_test(rows: list[dict], test_size: int | float, seed: int) -> tuple[list[dict], list[dict]]:
    """Seeded random test split (a count, or a fraction rounded, at least 1); both splits non-empty."""
    n_test = test_size if isinstance(test_size, int) else max(1, round(test_size * len(rows)))
    if not 1 <= n_test < len(rows):
        raise ValueError(f"test_size={test_size}: {len(rows)} selected question(s) cannot give {n_test} test "
                         "question(s) and a non-empty train split; select more questions or lower test_size")
    test = set(random.Random(seed).sample(range(len(rows)), n_test))
    return ([r for i, r in enumerate(rows) if i not in test], [r for i, r in enumerate(rows) if i in test])


def sample_and_grade(generator, questions: list[Question], prompts: list[list[dict]],
                     recipe: dict) -> list[list[Grade]]:
    """k samples per question in one `generate` call (the generator batches and caches), all graded."""
    from hubtools.generation import SamplingParams
    k, s = recipe["k"], recipe["sampling"]
    params = SamplingParams(n=k, max_new_tokens=s["max_new_tokens"], temperature=s["temperature"],
                            top_p=s["top_p"], seed=recipe["seed"])
    outputs = generator.generate(prompts, params, desc=f"sampling k={k}")
    if len(outputs) != len(prompts) or any(len(o) != k for o in outputs):
        raise RuntimeError(f"{generator!r} returned {[len(o) for o in outputs]} samples for {len(prompts)} "
                           f"prompts; expected {k} each")
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


def _model_label(model: str) -> str:
    from hubtools.models import SMOLLM2, SMOLLM2_REPO
    return f"{SMOLLM2_REPO} (packaged GGUF)" if Path(model).name == SMOLLM2 else model


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
    before, after = stats["before"], stats["after"]
    return {
        "pretty_name": recipe["pretty_name"], "license": recipe["license"],
        "tags": ["factuality", "grpo", "just-hard-enough", "question-answering"],
        "task_categories": ["question-answering"], "description": description,
        "sources": [{"name": name, "count": n, "share": f"{100 * n / total:.1f}%" if total else "0%"}
                    for name, n in stats["sources"].items()],
        "build_params": {k: v for k, v in build_params.items() if v is not None},
        "filter_stats": [{"metric": m, "before selection": before[m], "after selection": after[m]} for m in before],
        "skipped": stats["skipped"] or None,
        "images": [{"path": HIST_FILE, "caption": "Pass rate over the k samples, before vs after selection"}],
        "repro_command": repro_command,
    }


def _publish(dd, repo: str, private: bool, png: bytes, info: dict) -> None:
    """Data first (datasets writes the `configs` YAML), then the figure, then the card merged over it."""
    from huggingface_hub import HfApi

    from model_cards import push_dataset_card
    dd.push_to_hub(repo, private=private)
    HfApi().upload_file(path_or_fileobj=png, path_in_repo=HIST_FILE, repo_id=repo, repo_type="dataset",
                        commit_message="Add pass-rate histogram")
    push_dataset_card(repo, info)


def _save(dd, out: Path, png: bytes, info: dict) -> None:
    from model_cards import render_dataset_card
    dd.save_to_disk(str(out))
    (out / HIST_FILE).write_bytes(png)
    (out / "README.md").write_text(str(render_dataset_card(info)), encoding="utf-8")


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
    from hubtools.redact import redact_argv

    recipe = apply_overrides(recipe, **overrides)
    repo = push_to_hub or recipe["push_to_hub"]
    out = output_dir or recipe["output_dir"]
    private = recipe["private"] if private is None else private
    repro_command = repro_command or shlex.join(redact_argv([Path(sys.argv[0]).name, *sys.argv[1:]]))

    by_source, skipped = load_sources(recipe)
    _say("loaded " + ", ".join(f"{name}: {len(qs)}" for name, qs in by_source.items())
         + (f"; skipped {sum(skipped.values())} bad row(s): {dict(skipped)}" if skipped else ""))
    questions = mix_evenly(by_source, recipe["per_source"], recipe["seed"])
    per_source = len(questions) // len(by_source)
    prompts = [make_prompt(recipe["system_prompt"], q.question) for q in questions]

    generator = make_generator(recipe["generator"])
    model, backend = _model_label(generator.model), type(generator).__name__.removesuffix("Generator").lower()
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
    train, test = split_train_test(selected, recipe["test_size"], recipe["seed"])
    dd = DatasetDict(train=Dataset.from_list(train, features=features()),
                     test=Dataset.from_list(test, features=features()))

    stats = {"loaded": {name: len(qs) for name, qs in by_source.items()}, "skipped": dict(skipped),
             "per_source": per_source, "before": before, "after": after, "train": len(train), "test": len(test),
             "sources": {name: sum(r["source"] == name for r in selected) for name in by_source}}
    info = card_info(recipe, stats, model, backend, repro_command)
    png = histograms({"before selection": [r["pass_rate"] for r in rows],
                      "after selection": [r["pass_rate"] for r in selected]},
                     f"Pass rate over k={recipe['k']} samples", "pass rate", bins=recipe["k"] + 1)
    if repo:
        from huggingface_hub import constants
        _publish(dd, repo, private, png, info)
        _say(f"pushed to {constants.ENDPOINT}/datasets/{repo}")
    if out:
        _save(dd, Path(out), png, info | {"repo_id": repo})
        _say(f"saved to {out} (load_from_disk; README.md and {HIST_FILE} beside it)")
    _say(f"selected {len(selected)} of {len(rows)} (rule {sel['rule']}): mean pass rate {before['mean pass rate']}"
         f" → {after['mean pass rate']}; train {len(train)}, test {len(test)}; per source {stats['sources']}")
    return dd, stats


# ---------------------------------------------------------------------------------------- command line

_OVERRIDE_FLAGS = {"k": "--k", "n": "--n", "per_source": "--per-source", "model": "--model", "backend": "--backend",
                   "base_url": "--base-url", "max_new_tokens": "--max-new-tokens", "seed": "--seed",
                   "strict": "--strict"}


def add_arguments(parser) -> None:
    """Flags of `hubtools build-dataset factuality`; unset ones leave the recipe's value."""
    from hubtools.generation import BACKENDS, LOCAL_TUNING
    parser.add_argument("--recipe", default=str(DEFAULT_RECIPE),
                        help="recipe YAML (default: the bundled one, on the four sample sets)")
    parser.add_argument("--push-to-hub", metavar="REPO", help="dataset repo to push to (token: HF_TOKEN)")
    parser.add_argument("--output-dir", metavar="DIR", help="save_to_disk here, with README.md and the histogram")
    parser.add_argument("--private", action="store_true", default=None, help="create the Hub repo private")
    parser.add_argument("--k", type=int, help="samples per question (recipe default 16)")
    parser.add_argument("--n", type=int, help="questions to keep (select.n)")
    parser.add_argument("--per-source", type=int, help="questions taken from each source")
    parser.add_argument("--model", help="base model: local folder, Hub id, served name; 'smollm2' = packaged")
    parser.add_argument("--backend", choices=BACKENDS,
                        help="generation backend (recipe default auto: openai with --base-url, else vllm when "
                             "installed with CUDA, else transformers); a backend ignores the recipe's "
                             f"{', '.join(sorted(LOCAL_TUNING))} when it has no use for them")
    parser.add_argument("--base-url", action="append", metavar="URL",
                        help="OpenAI-compatible server, e.g. http://node1:8000/v1 (vllm serve, transformers serve); "
                             "repeat it for several servers of the same model, requests go to the least busy; "
                             "--model must be the name they serve")
    parser.add_argument("--max-new-tokens", type=int, help="tokens per sample")
    parser.add_argument("--seed", type=int, help="sampling and split seed")
    parser.add_argument("--strict", action="store_true", default=None,
                        help="stop at the first bad source row instead of skipping and counting it")


def _command_line(args) -> str:
    """The exact command for the card: rebuilt from the parsed flags, secrets redacted."""
    from hubtools.redact import redact_argv
    argv = ["hubtools", "build-dataset", "factuality", "--recipe", str(args.recipe)]
    for dest, flag in {"push_to_hub": "--push-to-hub", "output_dir": "--output-dir", "private": "--private",
                       **_OVERRIDE_FLAGS}.items():
        value = getattr(args, dest)
        if value is True:
            argv.append(flag)
        elif isinstance(value, list):  # a repeated flag
            for v in value:
                argv += [flag, str(v)]
        elif value is not None:
            argv += [flag, str(value)]
    return shlex.join(redact_argv(argv))


def run(args) -> int:
    """`hubtools build-dataset factuality ...`"""
    recipe = load_recipe(args.recipe)
    if not (args.push_to_hub or args.output_dir or recipe["push_to_hub"] or recipe["output_dir"]):
        raise SystemExit("build-dataset factuality: nowhere to write; give --push-to-hub REPO and/or --output-dir DIR")
    build(recipe, push_to_hub=args.push_to_hub, output_dir=args.output_dir, private=args.private,
          repro_command=_command_line(args), **{dest: getattr(args, dest) for dest in _OVERRIDE_FLAGS})
    return 0
