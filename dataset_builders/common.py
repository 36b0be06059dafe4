"""What every dataset builder shares: the typed recipe, sources read through a column mapping,
bad-row accounting, the train/test split, publishing with a card, and the command-line plumbing.

Why here: a builder module is then only its task — how a row is parsed, what is generated and
scored, what is kept and what its card says — and every builder gets the same validation errors
(naming the key, the source, the row and the field), the same skip counts in its card, and the
same flags (`--recipe --push-to-hub --output-dir --private --model --backend --base-url --seed
--strict`).
"""

from __future__ import annotations

import copy
import json
import random
import shlex
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import yaml

LOCAL_SUFFIXES = (".jsonl", ".json", ".parquet")
SOURCE_KEYS = {"name", "path", "config", "split", "columns", "limit"}
# Keys every recipe has; a builder adds its own defaults on top.
COMMON_DEFAULTS = {
    "sources": None, "strict": False, "generator": {"backend": "auto", "model": None},
    "test_size": 0.1, "seed": 0, "push_to_hub": None, "private": False, "output_dir": None, "license": None,
}


# -- recipe ---------------------------------------------------------------------------------
def is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def require(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(f"recipe: {message}")


def no_unknown(given: dict, known, where: str) -> None:
    extra = sorted(set(given) - set(known))
    require(not extra, f"unknown key(s) {extra} in {where}; known: {sorted(known)}")


@dataclass(frozen=True)
class RecipeSpec:
    """A builder's recipe: its defaults (over COMMON_DEFAULTS), the column keys a source may map
    (`required_columns` must be mapped) and its own checks of the completed recipe."""

    builder: str
    defaults: dict
    column_keys: frozenset
    required_columns: tuple
    check: Callable[[dict], None] = lambda r: None
    column_check: Callable[[dict, str], None] = lambda cols, where: None
    defaults_all: dict = field(init=False)

    def __post_init__(self):
        object.__setattr__(self, "defaults_all", {**COMMON_DEFAULTS, **self.defaults})


def complete_recipe(recipe: dict, spec: RecipeSpec) -> dict:
    """Validate a recipe and fill in defaults; a wrong key or value is an error naming it."""
    require(isinstance(recipe, dict), f"expected a mapping, got {type(recipe).__name__}")
    no_unknown(recipe, spec.defaults_all, "the recipe")
    r = copy.deepcopy(spec.defaults_all)
    for key, value in copy.deepcopy(recipe).items():
        if isinstance(r[key], dict):
            require(isinstance(value, dict), f"{key} must be a mapping")
            if key != "generator":  # generator keys are make_generator's to check, per backend
                no_unknown(value, r[key], key)
            r[key].update(value)
        else:
            r[key] = value
    sources = r["sources"]
    require(isinstance(sources, list) and sources, "sources must be a non-empty list")
    names = set()
    for i, src in enumerate(sources):
        where = f"sources[{i}]"
        require(isinstance(src, dict), f"{where} must be a mapping")
        no_unknown(src, SOURCE_KEYS, where)
        name, cols = src.get("name"), src.get("columns")
        require(isinstance(name, str) and name.strip() != "", f"{where}.name is required")
        require(name not in names, f"{where}.name {name!r} is used twice")
        names.add(name)
        require(isinstance(src.get("path"), str) and src["path"] != "", f"{where}.path is required")
        require(isinstance(cols, dict), f"{where}.columns is required ({', '.join(spec.required_columns)}, ...)")
        no_unknown(cols, spec.column_keys, f"{where}.columns")
        for col in spec.required_columns:
            require(isinstance(cols.get(col), str) and cols[col] != "", f"{where}.columns.{col} is required")
        spec.column_check(cols, f"{where}.columns")
        require(src.get("limit") is None or (is_int(src["limit"]) and src["limit"] >= 1),
                f"{where}.limit must be a positive integer")
    require(is_int(r["seed"]), "seed must be an integer")
    t = r["test_size"]
    require((is_int(t) and t >= 1) or (isinstance(t, float) and 0 < t < 1),
            f"test_size must be a fraction in (0, 1) or a number of rows >= 1, got {t!r}")
    spec.check(r)
    return r


def _resolve(path: str, base: Path, *, always: bool) -> str:
    """A recipe path relative to the recipe's folder; a source path that is neither local-looking nor
    existing there stays as it is (a Hub dataset repo id)."""
    p = Path(path).expanduser()
    if p.is_absolute():
        return str(p)
    local = base / p
    if always or local.exists() or path.startswith(".") or p.suffix in LOCAL_SUFFIXES:
        return str(local.resolve())
    return path


def load_recipe(path: str | Path, spec: RecipeSpec) -> dict:
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
    if isinstance(gen, dict) and isinstance(gen.get("model"), str):
        gen["model"] = _resolve(gen["model"], base, always=False)
    for block in data.values():  # the generator's, and any served model's (a judge's) cache
        if isinstance(block, dict) and isinstance(block.get("cache_dir"), str):
            block["cache_dir"] = _resolve(block["cache_dir"], base, always=True)
    if isinstance(data.get("output_dir"), str):
        data["output_dir"] = _resolve(data["output_dir"], base, always=True)
    try:
        return complete_recipe(data, spec)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None


def override_generator(recipe: dict, *, model: str | None = None, backend: str | None = None,
                       base_url: str | list[str] | None = None) -> None:
    """Command-line generator overrides that are not None, in place; `base_url` (one URL or several
    servers) replaces the recipe's."""
    gen = recipe["generator"]
    for key, value in (("model", model), ("base_url", base_url), ("backend", backend)):
        if value is not None:
            gen[key] = value


# -- served models --------------------------------------------------------------------------
# A recipe block naming a served model (a judge, an engine, a writer): its defaults, checks and client.
SERVED_DEFAULTS = {"model": None, "base_url": None, "api_key_env": None, "concurrency": 16, "max_tokens": 512,
                   "timeout": 120, "cache_dir": None, "processes": 1}


def check_served(r: dict, key: str) -> None:
    """Check the completed recipe's served-model block `key` (model, base_url, limits), naming the key."""
    block = r[key]
    require(isinstance(block["model"], str) and block["model"] != "",
            f"{key}.model is required (the model name its server serves)")
    urls = block["base_url"]
    require(bool(urls) and all(isinstance(u, str) and u for u in ([urls] if isinstance(urls, str) else urls)),
            f"{key}.base_url is required: a URL (or a list) of an OpenAI-compatible server such as "
            "`vllm serve` or `transformers serve`; no judge runs inside the builder")
    require(is_int(block["concurrency"]) and block["concurrency"] >= 1, f"{key}.concurrency must be >= 1")
    require(is_int(block["max_tokens"]) and block["max_tokens"] >= 1, f"{key}.max_tokens must be >= 1")
    require(is_num(block["timeout"]) and block["timeout"] > 0, f"{key}.timeout must be > 0 (seconds)")
    require(is_int(block["processes"]) and 1 <= block["processes"] <= block["concurrency"],
            f"{key}.processes must be between 1 and {key}.concurrency (client processes)")


def make_judge(recipe: dict, key: str):
    """A `hubtools.judge.Judge` for the recipe's served-model block `key`; "smollm2" names the packaged
    model's folder, which is what a `transformers serve` pinned to it expects."""
    import os

    from hubtools.judge import Judge
    from hubtools.models import resolve_model
    block = recipe[key]
    api_key = os.environ.get(block["api_key_env"]) if block["api_key_env"] else None
    if block["api_key_env"] and not api_key:
        raise ValueError(f"{key}.api_key_env: environment variable {block['api_key_env']} is not set")
    return Judge(resolve_model(block["model"]), block["base_url"], api_key=api_key,
                 concurrency=block["concurrency"], max_tokens=block["max_tokens"], timeout=block["timeout"],
                 cache_dir=block["cache_dir"], processes=block["processes"])


# -- sources --------------------------------------------------------------------------------
class BadRow(ValueError):
    """A row that cannot be used: `reason` is the counted category, `field` the recipe column key."""

    def __init__(self, reason: str, field: str | None = None, detail: str = ""):
        super().__init__(detail or reason)
        self.reason, self.field, self.detail = reason, field, detail or reason


def get_column(row: dict, column: str):
    """A column value; a dotted path (`answer.aliases`) reads into nested mappings. Missing → None."""
    value = row
    for part in column.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def short(value) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


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


def read_source(src: dict) -> Iterator[dict | BadRow]:
    """Rows of a local jsonl/json/parquet file, a local dataset folder, or a Hub dataset repo."""
    path, split = Path(src["path"]), src.get("split") or "train"
    if path.is_file():
        if path.suffix in (".jsonl", ".json"):
            return _read_json_file(path)
        if path.suffix == ".parquet":
            import pyarrow.parquet as pq
            return iter(pq.read_table(path).to_pylist())
        raise ValueError(f"source {src['name']!r}: {path}: unsupported file type "
                         f"(use {', '.join(LOCAL_SUFFIXES)}, a folder or a Hub dataset repo id)")
    from datasets import load_dataset, load_from_disk
    if path.is_dir():
        if (path / "dataset_dict.json").exists():
            return iter(load_from_disk(str(path))[split])
        if (path / "state.json").exists():
            return iter(load_from_disk(str(path)))
        return iter(load_dataset(str(path), src.get("config"), split=split))
    if src["path"].startswith((".", "/", "~")) or path.suffix in LOCAL_SUFFIXES:
        raise FileNotFoundError(f"source {src['name']!r}: {src['path']} does not exist")
    return iter(load_dataset(src["path"], src.get("config"), split=split))


def load_sources(recipe: dict, parse_row: Callable[[dict, dict, str, int], object]) -> tuple[dict[str, list], Counter]:
    """Every row of every source through `parse_row(row, columns, source_name, index)` (which
    raises BadRow): {source: items} and skip counts by "source: reason". With `strict`, the first
    bad row is an error naming the source, row index and field (and the column it maps to)."""
    by_source: dict[str, list] = {}
    skipped: Counter = Counter()
    for src in recipe["sources"]:
        name, columns, limit = src["name"], src["columns"], src.get("limit")
        items = by_source[name] = []
        for i, row in enumerate(read_source(src)):
            if limit is not None and i >= limit:
                break
            try:
                if isinstance(row, BadRow):
                    raise row
                if not isinstance(row, dict):
                    raise BadRow("row is not an object", None, f"expected a JSON object, got {short(row)}")
                items.append(parse_row(row, columns, name, i))
            except BadRow as bad:
                if recipe["strict"]:
                    where = f" field {bad.field!r} (column {columns.get(bad.field)!r})" if bad.field else ""
                    raise ValueError(f"source {name!r} ({src['path']}) row {i}:{where}: {bad.detail}") from None
                skipped[f"{name}: {bad.reason}"] += 1
    return by_source, skipped


# -- sampling -------------------------------------------------------------------------------
def sample_k(generator, prompts: list[list[dict]], recipe: dict, desc: str) -> list[list[str]]:
    """`recipe["k"]` samples per chat prompt with the recipe's `sampling` and `seed`, in one `generate`
    call (the generator batches and caches); a backend that returns another count is an error."""
    from hubtools.generation import SamplingParams
    k, s = recipe["k"], recipe["sampling"]
    params = SamplingParams(n=k, max_new_tokens=s["max_new_tokens"], temperature=s["temperature"],
                            top_p=s["top_p"], seed=recipe["seed"])
    outputs = generator.generate(prompts, params, desc=desc)
    if len(outputs) != len(prompts) or any(len(o) != k for o in outputs):
        raise RuntimeError(f"{generator!r} returned {[len(o) for o in outputs]} samples for {len(prompts)} "
                           f"prompts; expected {k} each")
    return outputs


def describe_generator(generator) -> tuple[str, str]:
    """(model label, backend name) of a `make_generator` generator, for logs and cards."""
    from hubtools.models import model_label
    return model_label(generator.model), type(generator).__name__.removesuffix("Generator").lower()


# -- output ---------------------------------------------------------------------------------
def split_train_test(rows: list[dict], test_size: int | float, seed: int) -> tuple[list[dict], list[dict]]:
    """Seeded random test split (a count, or a fraction rounded, at least 1); both splits non-empty."""
    n_test = test_size if isinstance(test_size, int) else max(1, round(test_size * len(rows)))
    if not 1 <= n_test < len(rows):
        raise ValueError(f"test_size={test_size}: {len(rows)} selected row(s) cannot give {n_test} test "
                         "row(s) and a non-empty train split; select more rows or lower test_size")
    test = set(random.Random(seed).sample(range(len(rows)), n_test))
    return ([r for i, r in enumerate(rows) if i not in test], [r for i, r in enumerate(rows) if i in test])


def card_info(recipe: dict, stats: dict, *, kept: int, tags: list[str], description: str, build_params: dict,
              image: tuple[str, str], repro_command: str) -> dict:
    """Dataset-card run info (model_cards.render_dataset_card keys) with the parts every builder
    shares: source shares of the `kept` rows, filter statistics before/after selection, skip counts,
    the histogram `image` (path, caption), the reproduction command; `build_params` without Nones."""
    before, after = stats["before"], stats["after"]
    return {
        "pretty_name": recipe["pretty_name"], "license": recipe["license"], "tags": tags,
        "task_categories": ["question-answering"], "description": description,
        "sources": [{"name": name, "count": n, "share": f"{100 * n / kept:.1f}%" if kept else "0%"}
                    for name, n in stats["sources"].items()],
        "build_params": {k: v for k, v in build_params.items() if v is not None},
        "filter_stats": [{"metric": m, "before selection": before[m], "after selection": after[m]} for m in before],
        "skipped": stats["skipped"] or None,
        "images": [{"path": image[0], "caption": image[1]}],
        "repro_command": repro_command,
    }


def publish(dd, repo: str, private: bool, files: dict[str, bytes], info: dict) -> None:
    """Data first (datasets writes the `configs` YAML), then the figures, then the card merged over
    it; each step retried on transient Hub errors."""
    from huggingface_hub import CommitOperationAdd, HfApi

    from hubtools.publish import with_retries
    from model_cards import push_dataset_card
    with_retries(lambda: dd.push_to_hub(repo, private=private), what=f"push dataset {repo}")
    if files:
        ops = [CommitOperationAdd(path, data) for path, data in files.items()]
        with_retries(lambda: HfApi().create_commit(repo, ops, repo_type="dataset", commit_message="Add figures"),
                     what=f"figures of {repo}")
    with_retries(lambda: push_dataset_card(repo, info), what=f"card of {repo}")


def save(dd, out: Path, files: dict[str, bytes], info: dict) -> None:
    from model_cards import render_dataset_card
    dd.save_to_disk(str(out))
    for path, data in files.items():
        (out / path).write_bytes(data)
    (out / "README.md").write_text(str(render_dataset_card(info)), encoding="utf-8")


def write_outputs(builder: str, dd, recipe: dict, files: dict[str, bytes], info: dict, *, push_to_hub: str | None,
                  output_dir: str | Path | None, private: bool | None) -> None:
    """Push and/or save, as the arguments (or else the recipe) say."""
    repo, out = push_to_hub or recipe["push_to_hub"], output_dir or recipe["output_dir"]
    if repo:
        from huggingface_hub import constants
        publish(dd, repo, recipe["private"] if private is None else private, files, info)
        say(builder, f"pushed to {constants.ENDPOINT}/datasets/{repo}")
    if out:
        save(dd, Path(out), files, info | {"repo_id": repo})
        say(builder, f"saved to {out} (load_from_disk; README.md and the figures beside it)")


def say(builder: str, text: str) -> None:
    print(f"[{builder}] {text}", flush=True)


def say_loaded(builder: str, by_source: dict[str, list], skipped: Counter) -> None:
    """The `load_sources` outcome on the console: rows per source, and the bad rows skipped, by reason."""
    say(builder, "loaded " + ", ".join(f"{name}: {len(items)}" for name, items in by_source.items())
        + (f"; skipped {sum(skipped.values())} bad row(s): {dict(skipped)}" if skipped else ""))


def own_command() -> str:
    """This process's command line, secrets redacted and paths of this machine made portable: the
    reproduction command of a `build` called from Python."""
    import sys

    from hubtools.redact import portable_path, redact_argv
    return shlex.join(redact_argv([Path(sys.argv[0]).name, *map(portable_path, sys.argv[1:])]))


# -- command line ---------------------------------------------------------------------------
# Flags every builder has beside --recipe / --push-to-hub / --output-dir / --private: dest → flag.
COMMON_OVERRIDES = {"model": "--model", "backend": "--backend", "base_url": "--base-url", "seed": "--seed",
                    "strict": "--strict"}


def add_common_arguments(parser, default_recipe: Path, what: str) -> None:
    """The flags every builder has; unset ones leave the recipe's value."""
    from hubtools.generation import BACKENDS, LOCAL_TUNING
    parser.add_argument("--recipe", default=str(default_recipe),
                        help=f"recipe YAML (default: the bundled one, on the bundled {what})")
    parser.add_argument("--push-to-hub", metavar="REPO", help="dataset repo to push to (token: HF_TOKEN)")
    parser.add_argument("--output-dir", metavar="DIR", help="save_to_disk here, with README.md and the figures")
    parser.add_argument("--private", action="store_true", default=None, help="create the Hub repo private")
    parser.add_argument("--model", help="model to sample: local folder, Hub id, served name; 'smollm2' = packaged")
    parser.add_argument("--backend", choices=BACKENDS,
                        help="generation backend (recipe default auto: openai with --base-url, else vllm when "
                             "installed with CUDA, else transformers); a backend ignores the recipe's "
                             f"{', '.join(sorted(LOCAL_TUNING))} when it has no use for them")
    parser.add_argument("--base-url", action="append", metavar="URL",
                        help="OpenAI-compatible server, e.g. http://node1:8000/v1 (vllm serve, transformers serve); "
                             "repeat it for several servers of the same model, requests go to the least busy; "
                             "--model must be the name they serve")
    parser.add_argument("--seed", type=int, help="sampling and split seed")
    parser.add_argument("--strict", action="store_true", default=None,
                        help="stop at the first bad source row instead of skipping and counting it")


def add_served_arguments(parser, key: str, role: str) -> None:
    """`--KEY-model` and `--KEY-base-url`: the served block KEY of the recipe (`check_served`), from the CLI."""
    parser.add_argument(f"--{key}-model", help=f"the {role}'s model name, as its server serves it")
    parser.add_argument(f"--{key}-base-url", action="append", metavar="URL",
                        help=f"the {role}'s OpenAI-compatible server; repeat it for several servers")


def set_overrides(recipe: dict, paths: dict[str, tuple[str, ...]], values: dict) -> None:
    """Write each value that is not None at its recipe path (`paths`: command-line dest → keys), in place."""
    for dest, value in values.items():
        if value is not None:
            *parents, key = paths[dest]
            target = recipe
            for p in parents:
                target = target[p]
            target[key] = value


def run_builder(builder: str, args, load_recipe, build, overrides: dict[str, str]) -> int:
    """`hubtools build-dataset BUILDER ...`: the recipe, its destination checked, then `build` with the
    flags of `overrides` (dest → flag) and the command line as the card's reproduction command."""
    recipe = load_recipe(args.recipe)
    check_destination(builder, args, recipe)
    build(recipe, push_to_hub=args.push_to_hub, output_dir=args.output_dir, private=args.private,
          repro_command=command_line(builder, args, overrides),
          **{dest: getattr(args, dest) for dest in overrides})
    return 0


def command_line(builder: str, args, overrides: dict[str, str]) -> str:
    """The exact command for the card: rebuilt from the parsed flags, secrets redacted, paths of this
    machine made portable (`hubtools.redact.portable_path`: the recipe, --output-dir, a local model folder
    as --model or as a served model's name)."""
    from hubtools.redact import portable_path, redact_argv
    argv = ["hubtools", "build-dataset", builder, "--recipe", portable_path(str(args.recipe))]
    for dest, flag in {"push_to_hub": "--push-to-hub", "output_dir": "--output-dir", "private": "--private",
                       **overrides}.items():
        value = getattr(args, dest)
        if value is True:
            argv.append(flag)
        elif isinstance(value, list):  # a repeated flag
            for v in value:
                argv += [flag, portable_path(str(v))]
        elif value is not None:
            argv += [flag, portable_path(str(value))]
    return shlex.join(redact_argv(argv))


def check_destination(builder: str, args, recipe: dict) -> None:
    if not (args.push_to_hub or args.output_dir or recipe["push_to_hub"] or recipe["output_dir"]):
        raise SystemExit(f"build-dataset {builder}: nowhere to write; give --push-to-hub REPO and/or --output-dir DIR")
