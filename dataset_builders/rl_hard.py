"""`rl_hard` dataset builder: rubric rows for GRPO on the refiner task, kept where the policy does badly.

Why: the rubric reward (train/rewards/rubric.py) scores a refiner's answer against the row's own
`positive_rubrics` / `negative_rubrics` plus a static set, so every row needs per-instance rubrics,
and rows the policy already answers well, or answers identically every time, teach GRPO nothing.
So an LLM writes each row's rubrics (hubtools/prompts/rubric_writer.j2, its reply validated; the
row's reference rubrics when it fails, or when the recipe prefers them), the policy answers every
row k times, the judge scores each answer with that same reward, and the N rows with the lowest mean
score are kept (by default only among rows whose k scores vary).

Recipe keys: see `recipes/rl_hard.yaml` (the default recipe, on the bundled sample).
Output rows: `id` ("<source>-<row index>"), `source`, `question`, `reasoning`, `tool_output`,
`reference_answer` (or null), `prompt` (system + user messages, TRL conversational format; `make_prompt`),
`positive_rubrics` / `negative_rubrics` ([{title, description, weight}]), `rubric_source`
("generated" or "reference"), `mean_score` and `score_std` (over the scored samples of the k).
"""

from __future__ import annotations

import json
import statistics
from collections import Counter
from pathlib import Path

from pydantic import BaseModel, Field, TypeAdapter, ValidationError, model_validator

from dataset_builders import common
from hubtools.models import model_label
from dataset_builders.common import BadRow, get_column, is_int, require, short
from hubtools.aggregate import mean
from hubtools.citations import source_ids
from hubtools.tasks import RL_HARD

NAME = "rl_hard"
DEFAULT_RECIPE = Path(__file__).parent / "recipes" / "rl_hard.yaml"
RULES = ("lowest_mean_varied", "lowest_mean")
WRITER_TEMPLATE = "rubric_writer"
HIST_FILE = "score_hist.png"
SERVED_KEYS = ("judge", "rubric_writer")  # recipe blocks naming a served model (hubtools.judge.Judge)


# ---------------------------------------------------------------------------------------- rubric schema


class Rubric(BaseModel):
    title: str = Field(min_length=1)
    description: str = Field(min_length=1)
    weight: float = Field(default=1.0, gt=0)


class WrittenRubrics(BaseModel):
    """What the rubric writer must reply: 1-5 positive and 1-5 negative items, titles not repeated."""

    positive_rubrics: list[Rubric] = Field(min_length=1, max_length=5)
    negative_rubrics: list[Rubric] = Field(min_length=1, max_length=5)

    @model_validator(mode="after")
    def _distinct_titles(self):
        titles = [r.title.strip().lower() for r in self.positive_rubrics + self.negative_rubrics]
        if len(set(titles)) != len(titles):
            raise ValueError("every rubric title must differ from the others")
        return self


_RUBRIC_LIST = TypeAdapter(list[Rubric])


def _errors(e: ValidationError) -> str:
    """A validation error in a line the writer (and a log) can read."""
    return "; ".join(f"{'.'.join(map(str, err['loc'])) or 'reply'}: {err['msg']}"
                     for err in e.errors(include_url=False))


def parse_written(reply: str) -> tuple[list[dict], list[dict]]:
    """(positive, negative) rubrics of a writer reply: the whole reply after any reasoning is one JSON
    object (optionally in a ```json fence) matching `WrittenRubrics`; ValueError naming what is wrong."""
    from hubtools.judge import reply_payload  # the judge's own reply rules, for one parser of replies
    try:
        got = WrittenRubrics.model_validate_json(reply_payload(reply))
    except ValidationError as e:
        raise ValueError(_errors(e)) from None
    return ([r.model_dump() for r in got.positive_rubrics], [r.model_dump() for r in got.negative_rubrics])


# ---------------------------------------------------------------------------------------- recipe


def _check(r: dict) -> None:
    for key in SERVED_KEYS:
        common.check_served(r, key)
    static = r["static_rubrics"]
    require(isinstance(static, list) and all(isinstance(t, str) for t in static),
            "static_rubrics must be a list of titles")
    unknown = [t for t in static if t not in RL_HARD.static_rubrics]
    require(not unknown, f"static_rubrics: unknown title(s) {unknown}; known: {list(RL_HARD.static_rubrics)}")
    require(isinstance(r["prefer_reference_rubrics"], bool), "prefer_reference_rubrics must be true or false")
    require(is_int(r["k"]) and r["k"] >= 1, "k must be a positive integer")
    s = r["select"]
    require(s["rule"] in RULES, f"select.rule must be one of {list(RULES)}, got {s['rule']!r}")
    require(s["n"] is None or (is_int(s["n"]) and s["n"] >= 1), "select.n must be a positive integer")


SPEC = common.RecipeSpec(
    builder=NAME,
    defaults={"judge": dict(common.SERVED_DEFAULTS), "rubric_writer": common.SERVED_DEFAULTS | {"max_tokens": 1024},
              "prefer_reference_rubrics": False, "static_rubrics": list(RL_HARD.static_rubrics), "k": 8,
              "sampling": {"max_new_tokens": 1024, "temperature": 1.0, "top_p": 1.0},
              "select": {"n": None, "rule": RULES[0]}, "pretty_name": "Refiner: hard rubric rows"},
    column_keys=frozenset({"question", "reasoning", "tool_output", "reference_answer", "positive_rubrics",
                           "negative_rubrics"}),
    required_columns=("question", "reasoning", "tool_output"), check=_check)


def complete_recipe(recipe: dict) -> dict:
    """Validate a recipe and fill in defaults; a wrong key or value is an error naming it."""
    return common.complete_recipe(recipe, SPEC)


def load_recipe(path: str | Path) -> dict:
    """Read a recipe YAML; its local paths are taken relative to the recipe file's folder."""
    return common.load_recipe(path, SPEC)


# command-line dest → where it goes in the recipe
_PATHS = {"k": ("k",), "n": ("select", "n"), "max_new_tokens": ("sampling", "max_new_tokens"), "seed": ("seed",),
          "strict": ("strict",), "judge_model": ("judge", "model"), "judge_base_url": ("judge", "base_url"),
          "writer_model": ("rubric_writer", "model"), "writer_base_url": ("rubric_writer", "base_url")}


def apply_overrides(recipe: dict, *, model: str | None = None, backend: str | None = None,
                    base_url: str | list[str] | None = None, **values) -> dict:
    """A completed copy of `recipe` with the command-line overrides that are not None (`_PATHS` keys,
    and the policy's `model`, `backend`, `base_url`)."""
    r = complete_recipe(recipe)
    common.set_overrides(r, _PATHS, values)
    common.override_generator(r, model=model, backend=backend, base_url=base_url)
    return complete_recipe(r)


def _say(text: str) -> None:
    common.say(NAME, text)


# ---------------------------------------------------------------------------------------- rows


def make_prompt(question: str, reasoning: str, tool_output: str) -> list[dict]:
    """The refiner's chat prompt (TRL conversational format): the task's system prompt, then the
    question, the agent's reasoning and its raw tool output (snippet ids kept) in one user message."""
    user = (f"<question>\n{question}\n</question>\n\n<reasoning>\n{reasoning}\n</reasoning>\n\n"
            f"<tool_output>\n{tool_output}\n</tool_output>")
    return [{"role": "system", "content": RL_HARD.system_prompt}, {"role": "user", "content": user}]


def _text(row: dict, columns: dict, key: str, required: bool) -> str | None:
    value = get_column(row, columns[key]) if columns.get(key) else None
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            raise BadRow(f"missing {key}", key, "missing or empty")
        return None
    if not isinstance(value, str):
        raise BadRow(f"{key} is not text", key, f"expected a string, got {short(value)}")
    return value.strip()


def _reference_rubrics(row: dict, columns: dict, key: str) -> list[dict]:
    """A row's own rubric list ([] when unmapped or empty); a JSON-encoded list is accepted too."""
    value = get_column(row, columns[key]) if columns.get(key) else None
    if isinstance(value, str) and value.strip():
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise BadRow(f"invalid {key}", key, f"not a list nor a JSON-encoded list: {short(value)}") from None
    try:
        return [r.model_dump() for r in _RUBRIC_LIST.validate_python(value or [])]
    except ValidationError as e:
        raise BadRow(f"invalid {key}", key, _errors(e)) from None


def parse_row(row: dict, columns: dict, source: str, index: int) -> dict:
    """One source row as an output row in the making (rubrics still the reference ones), or BadRow."""
    question = _text(row, columns, "question", True)
    reasoning = _text(row, columns, "reasoning", True)
    tool_output = _text(row, columns, "tool_output", True)
    if not source_ids(tool_output):
        raise BadRow("no snippet ids in tool_output", "tool_output",
                     "no <snippet id=...> or <webpage id=...> block: an answer could cite nothing")
    return {"id": f"{source}-{index}", "source": source, "question": question, "reasoning": reasoning,
            "tool_output": tool_output, "reference_answer": _text(row, columns, "reference_answer", False),
            "prompt": make_prompt(question, reasoning, tool_output),
            "reference_rubrics": (_reference_rubrics(row, columns, "positive_rubrics"),
                                  _reference_rubrics(row, columns, "negative_rubrics"))}


def load_sources(recipe: dict) -> tuple[dict[str, list[dict]], Counter]:
    """Every row of every source, validated: {source: rows} and skip counts by "source: reason"."""
    return common.load_sources(complete_recipe(recipe), parse_row)


# ---------------------------------------------------------------------------------------- rubrics


async def write_rubrics(writer, row: dict) -> tuple[tuple[list[dict], list[dict]] | None, str]:
    """(rubrics or None, outcome): the writer's reply, validated; an invalid one is shown to the
    writer with the error, once. Outcomes: "valid", "valid after retry", "invalid after retry",
    "call failed"."""
    variables = {k: row[k] for k in ("question", "reasoning", "tool_output")} | {
        "reference_answer": row["reference_answer"] or ""}
    reply = await writer.complete(WRITER_TEMPLATE, error=None, previous_reply=None, **variables)
    if reply is None:
        return None, "call failed"
    try:
        return parse_written(reply), "valid"
    except ValueError as e:
        error = str(e)
    reply = await writer.complete(WRITER_TEMPLATE, error=error, previous_reply=reply, **variables)
    if reply is None:
        return None, "call failed"
    try:
        return parse_written(reply), "valid after retry"
    except ValueError:
        return None, "invalid after retry"


def attach_rubrics(writer, rows: list[dict], prefer_reference: bool) -> Counter:
    """Set each row's `positive_rubrics` / `negative_rubrics` / `rubric_source` (None: no usable rubrics).

    The writer is asked unless `prefer_reference` and the row has reference rubrics; when it fails,
    the row's reference rubrics are used if it has any. Returns the outcome counts.
    """
    ask = [i for i, r in enumerate(rows) if not (prefer_reference and any(r["reference_rubrics"]))]
    written = dict(zip(ask, writer.run_many(lambda i: write_rubrics(writer, rows[i]), ask, "writing rubrics") if ask else []))
    counts = Counter({"reference rubrics preferred": len(rows) - len(ask)})
    for i, row in enumerate(rows):
        reference = row["reference_rubrics"] if any(row["reference_rubrics"]) else None
        if i not in written:
            rubrics, source = reference, "reference"
        else:
            rubrics, outcome = written[i]
            counts[f"writer: {outcome}"] += 1
            source = "generated"
            if rubrics is None:
                rubrics, source = reference, ("reference" if reference else None)
                counts["reference rubrics used (writer failed)"] += bool(reference)
        row["positive_rubrics"], row["negative_rubrics"] = rubrics or ([], [])
        row["rubric_source"] = source
    return counts


# ---------------------------------------------------------------------------------------- scoring and selection


def score_samples(judge, static_titles: list[str], rows: list[dict],
                  samples: list[list[str]]) -> list[tuple[list[float | None], int]]:
    """Per row: the rubric reward of each sample (None: every judge reply for it failed or did not
    parse) and how many samples had no answer (scored 0 without the judge). The reward is called the
    way TRL calls it, once per row with its k samples as conversational completions."""
    from train.rewards.rubric import make_rubric_reward, static_rubrics

    positive, negative = static_rubrics(static_titles)
    reward = make_rubric_reward(judge, static_positive=positive, static_negative=negative)

    async def one(row: dict, texts: list[str]):
        logged: Counter = Counter()
        n = len(texts)
        scores = await reward(completions=[[{"role": "assistant", "content": t}] for t in texts],
                              prompts=[row["prompt"]] * n, positive_rubrics=[row["positive_rubrics"]] * n,
                              negative_rubrics=[row["negative_rubrics"]] * n, tool_output=[row["tool_output"]] * n,
                              log_metric=lambda name, value: logged.update({name: value}))
        return scores, int(logged["rubric/no_answer"])

    return judge.run_many(lambda i: one(rows[i], samples[i]), list(range(len(rows))), "judging samples") if rows else []


def score_stats(scores: list[float | None]) -> dict | None:
    """`mean_score` and `score_std` over a row's scored samples, and how many were (un)scored; None
    when no sample was scored."""
    values = [s for s in scores if s is not None]
    if not values:
        return None
    return {"mean_score": statistics.fmean(values), "score_std": statistics.pstdev(values), "scored": len(values),
            "unscored": len(scores) - len(values)}


def select_rows(rows: list[dict], n: int | None, rule: str = RULES[0]) -> list[dict]:
    """The `n` rows (each with id, mean_score, score_std) the policy does worst on, lowest mean first;
    ties to the larger spread, then id. "lowest_mean_varied" keeps only rows whose scores vary
    (score_std > 0): a group of equal rewards gives GRPO no advantage to learn from."""
    if rule not in RULES:
        raise ValueError(f"selection rule must be one of {list(RULES)}, got {rule!r}")
    pool = sorted((r for r in rows if rule == "lowest_mean" or r["score_std"] > 0),
                  key=lambda r: (r["mean_score"], -r["score_std"], r["id"]))
    return pool if n is None else pool[:n]


def summarize(rows: list[dict]) -> dict:
    """What the card's filter table shows, before and after selection."""
    return {
        "rows": len(rows),
        "mean score": mean((r["mean_score"] for r in rows), 4),
        "mean score std over the k samples": mean((r["score_std"] for r in rows), 4),
        "varied rows (score std > 0)": sum(r["score_std"] > 0 for r in rows),
        "rows with mean score 0": sum(r["mean_score"] == 0 for r in rows),
        "samples scored": sum(r["scored"] for r in rows),
        "samples unscored (judge failed or unparsable)": sum(r["unscored"] for r in rows),
        "samples without an answer (0, judge not asked)": sum(r["no_answer"] for r in rows),
        "rubric sets generated": sum(r["rubric_source"] == "generated" for r in rows),
        "rubric sets from the reference": sum(r["rubric_source"] == "reference" for r in rows),
        "positive rubrics per row (mean)": mean((len(r["positive_rubrics"]) for r in rows), 4),
        "negative rubrics per row (mean)": mean((len(r["negative_rubrics"]) for r in rows), 4),
        "instance rubrics (total)": sum(len(r["positive_rubrics"]) + len(r["negative_rubrics"]) for r in rows),
    }


# ---------------------------------------------------------------------------------------- build


def features():
    """The fixed output schema (explicit, so a split whose reference answers are all null still types)."""
    from datasets import Features, List, Value
    rubric = List({"title": Value("string"), "description": Value("string"), "weight": Value("float64")})
    return Features({
        "id": Value("string"), "source": Value("string"), "question": Value("string"),
        "reasoning": Value("string"), "tool_output": Value("string"), "reference_answer": Value("string"),
        "prompt": List({"role": Value("string"), "content": Value("string")}),
        "positive_rubrics": rubric, "negative_rubrics": rubric, "rubric_source": Value("string"),
        "mean_score": Value("float64"), "score_std": Value("float64"),
    })


def card_info(recipe: dict, stats: dict, models: dict[str, str], repro_command: str) -> dict:
    """Dataset-card run info (model_cards.render_dataset_card keys)."""
    s, sel, total = recipe["sampling"], recipe["select"], stats["after"]["rows"]
    build_params = {
        "policy": models["policy"], "policy backend": models["backend"], "judge": models["judge"],
        "rubric writer": models["rubric writer"],
        "prompts": f"rubric writer: hubtools/prompts/{WRITER_TEMPLATE}.j2; judge: hubtools/prompts/rubric_score.j2",
        "static rubrics": recipe["static_rubrics"], "prefer_reference_rubrics": recipe["prefer_reference_rubrics"],
        "k": recipe["k"], "max_new_tokens": s["max_new_tokens"], "temperature": s["temperature"],
        "top_p": s["top_p"], "seed": recipe["seed"], "selection rule": sel["rule"], "selection n": sel["n"],
        "test_size": recipe["test_size"], "system_prompt": RL_HARD.system_prompt}
    outcome_table = "\n".join(f"| {k} | {v} |" for k, v in stats["rubrics"].items() if v)
    writer, judge = stats["writer"], stats["judge"]
    calls_table = "\n".join(f"| {k} | {writer[k] if k != 'parse_failures' else '(validated: see above)'} | {judge[k]} |"
                             for k in judge)
    description = (
        "Refiner rows for GRPO with a rubric reward: a question, a research agent's reasoning and its raw search-"
        "tool output (passages with snippet ids), and per-instance rubrics. An LLM wrote each row's "
        "`positive_rubrics` / `negative_rubrics` from the question, reasoning, tool output and reference answer "
        f"(prompt `{WRITER_TEMPLATE}`; its JSON reply validated, retried once with the error shown, the row's "
        "reference rubrics used when it still failed or when the recipe prefers them; `rubric_source` says which). "
        f"The policy `{models['policy']}` answered every row k={recipe['k']} times, and the judge "
        f"`{models['judge']}` scored each answer with the rubric reward (`train/rewards/rubric.py`: instance "
        f"rubrics plus the static set {recipe['static_rubrics']}, 0-2 per rubric, negatives flipped). The "
        f"{total} rows with the lowest mean score were kept (rule `{sel['rule']}`), split into train "
        f"({stats['train']}) and test ({stats['test']}).\n\n"
        "Columns: `id`, `source`, `question`, `reasoning`, `tool_output`, `reference_answer`, `prompt` (system + "
        "user messages, TRL conversational format), `positive_rubrics` / `negative_rubrics` ({title, "
        "description, weight}), `rubric_source`, `mean_score` and `score_std` (over the scored samples).\n\n"
        f"### Rubrics\n\n| Outcome | Rows |\n|---|---|\n{outcome_table}\n\n"
        f"### Rubric writer and judge calls\n\n| | rubric writer | judge |\n|---|---|---|\n{calls_table}")
    return common.card_info(recipe, stats, kept=total, tags=["grpo", "rubric", "refiner", "citations"],
                            description=description, build_params=build_params,
                            image=(HIST_FILE, "Mean rubric score over the k samples, before vs after selection"), repro_command=repro_command)


def build(recipe: dict, *, push_to_hub: str | None = None, output_dir: str | Path | None = None,
          private: bool | None = None, repro_command: str | None = None, **overrides):
    """Build the dataset: load + validate, write rubrics, sample k, judge, select N, split, publish.

    Pushes to `push_to_hub` (or the recipe's) and/or saves to `output_dir` (or the recipe's), each with
    the card and the score histogram. `overrides` are `apply_overrides`' keywords. The default
    reproduction command is this process's own (redacted) command line.
    Returns (DatasetDict with train/test, stats).
    """
    from datasets import Dataset, DatasetDict

    from hubtools.generation import make_generator
    from hubtools.plots import histograms

    recipe = apply_overrides(recipe, **overrides)
    repro_command = repro_command or common.own_command()

    by_source, skipped = load_sources(recipe)
    rows = [r for rs in by_source.values() for r in rs]
    common.say_loaded(NAME, by_source, skipped)

    writer = common.make_judge(recipe, "rubric_writer")
    rubric_counts = attach_rubrics(writer, rows, recipe["prefer_reference_rubrics"])
    for r in rows:
        if r["rubric_source"] is None:
            skipped[f"{r['source']}: no rubrics (writer failed, no reference rubrics)"] += 1
    rows = [r for r in rows if r["rubric_source"]]
    _say(f"rubrics: {dict(+rubric_counts)}; writer {writer.stats()}")
    if not rows:
        raise ValueError(f"no usable row: every row was skipped ({dict(skipped)})")

    generator = make_generator(recipe["generator"])
    policy, backend = common.describe_generator(generator)
    _say(f"sampling {len(rows)} rows × k={recipe['k']} from {policy} ({backend})")
    samples = common.sample_k(generator, [r["prompt"] for r in rows], recipe, desc=f"sampling k={recipe['k']}")

    judge = common.make_judge(recipe, "judge")
    scored = []
    for row, (scores, no_answer) in zip(rows, score_samples(judge, recipe["static_rubrics"], rows, samples)):
        row_stats = score_stats(scores)
        if row_stats is None:
            skipped[f"{row['source']}: no scored sample (every judge reply failed or did not parse)"] += 1
        else:
            scored.append(row | row_stats | {"no_answer": no_answer})
    _say(f"judge {judge.stats('rubric')}")
    if not scored:
        raise RuntimeError(f"no row has a scored sample: the judge's replies failed or did not parse "
                           f"({judge.stats('rubric')}); check the judge model and its max_tokens")
    sel = recipe["select"]
    selected = select_rows(scored, sel["n"], sel["rule"])
    before, after = summarize(scored), summarize(selected)
    _say(f"scored {len(scored)} rows: mean score {before['mean score']}, varied {before['varied rows (score std > 0)']}")
    if not selected:
        raise RuntimeError(f"no row selected: rule {sel['rule']!r} keeps rows whose k scores vary, and none of the "
                           f"{len(scored)} scored rows did ({before['samples without an answer (0, judge not asked)']} "
                           "samples had no answer block and score 0); raise k, use a stronger policy, or use rule "
                           "'lowest_mean'")
    train, test = common.split_train_test(selected, recipe["test_size"], recipe["seed"])
    keep = list(features())
    dd = DatasetDict(train=Dataset.from_list([{k: r[k] for k in keep} for r in train], features=features()),
                     test=Dataset.from_list([{k: r[k] for k in keep} for r in test], features=features()))

    stats = {"loaded": {name: len(rs) for name, rs in by_source.items()}, "skipped": dict(skipped),
             "rubrics": dict(rubric_counts), "writer": writer.stats(), "judge": judge.stats("rubric"),
             "before": before, "after": after, "train": len(train), "test": len(test),
             "sources": {name: sum(r["source"] == name for r in selected) for name in by_source}}
    models = {"policy": policy, "backend": backend, "judge": model_label(judge.model),
              "rubric writer": model_label(writer.model)}
    info = card_info(recipe, stats, models, repro_command)
    png = histograms({"before selection": [r["mean_score"] for r in scored],
                      "after selection": [r["mean_score"] for r in selected]},
                     f"Mean rubric score over k={recipe['k']} samples", "mean rubric score")
    common.write_outputs(NAME, dd, recipe, {HIST_FILE: png}, info, push_to_hub=push_to_hub,
                         output_dir=output_dir, private=private)
    _say(f"selected {len(selected)} of {len(scored)} (rule {sel['rule']}): mean score {before['mean score']} → "
        f"{after['mean score']}; train {len(train)}, test {len(test)}")
    return dd, stats


# ---------------------------------------------------------------------------------------- command line

_OVERRIDE_FLAGS = {**common.COMMON_OVERRIDES, "judge_model": "--judge-model", "judge_base_url": "--judge-base-url",
                   "writer_model": "--writer-model", "writer_base_url": "--writer-base-url", "k": "--k", "n": "--n",
                   "max_new_tokens": "--max-new-tokens"}


def add_arguments(parser) -> None:
    """Flags of `hubtools build-dataset rl_hard`; unset ones leave the recipe's value."""
    common.add_common_arguments(parser, DEFAULT_RECIPE, "refiner sample")
    common.add_served_arguments(parser, "judge", "judge")
    common.add_served_arguments(parser, "writer", "rubric writer")
    parser.add_argument("--k", type=int, help="policy samples per row (recipe default 8)")
    parser.add_argument("--n", type=int, help="rows to keep (select.n)")
    parser.add_argument("--max-new-tokens", type=int, help="tokens per policy sample")


def run(args) -> int:
    """`hubtools build-dataset rl_hard ...`"""
    return common.run_builder(NAME, args, load_recipe, build, _OVERRIDE_FLAGS)
