"""`geo` dataset builder: GEO rewrites of web sources that a simulated engine cites more, for SFT, GRPO and eval.

Why: Generative Engine Optimization rewrites one source of a query's search results so that an
engine answering over all of them cites it more and earlier. SFT needs rewrites that did that
without changing what the source says; GRPO and eval need the query, the sources, which one to
rewrite and how visible it was before. The steps:

1. Rows: a query and its n >= 2 source texts through the column mapping (`query`, `sources`, and
   `source_text`, the text field of each source object, e.g. GEO-bench's `cleaned_text`; unmapped,
   each source must be a string). The source to rewrite (the target, 0-based): the `target` column
   when mapped (GEO-bench's `sugg_idx`), else the recipe's `target_rule` — `each` (every source in
   turn: n targets per query) or an index (that source of every row). Bad rows are skipped and
   counted by reason (or `--strict`).
2. Split by row index: a row whose index in its source (its position in the file, bad rows
   included, so the split does not move when rows are cleaned) lies in `test_rows` [start, end) is a
   test row and never enters train or rl.
3. Rewrites: every train row's target is rewritten once per method of `methods`, with that
   method's prompt (`METHODS`: its task text in `hubtools/prompts/geo_rewrite.j2`, "Directly return
   the rewritten content."); `identity` is the source unchanged, no model asked. The rewriter is the
   recipe's `generator` (`hubtools.generation.make_generator`: local transformers, vLLM or a
   server; `--model`, `--base-url`): as the sampled model of the other builders, its text becomes
   the rows, while the engine and the judge are served evaluators (`engine`, `judge`:
   `hubtools.judge.Judge`). A rewrite is read as the GEO reward reads a completion
   (`train.rewards.geo.prepare`): reasoning dropped, `[k]` markers removed, refused when empty,
   engine-directed (injection) or outside `length_ratio` × the source's words; a reply wrapped
   whole in one ``` fence is unwrapped first.
4. Engine and judge, concurrently (one `Judge.run_many` gather each, in two threads): the engine
   (`hubtools.geo_engine`) answers over the original sources and over each set with the target
   rewritten; the target's shares (`train.rewards.geo.target_shares`: `hubtools.geo.visibility`,
   all 0 when the answer cites no source, as the reward counts them) are `original_visibility` and
   `rewrite_visibility`. The judge lists the key points of the original and of the rewrite
   (`hubtools.geo_keypoints`, prompt `geo_keypoints`) and labels each against the other text
   (`geo_support`): `support_original` = share of the original's points the rewrite supports,
   `support_rewrite` = share of the rewrite's points the original supports, `contradictions` =
   CONTRADICTED labels both ways. A failed list or any unparsed label leaves the three None
   ("keypoints not judged"): an unjudged point could hide a contradiction. Identity is 1, 1, 0.
5. Filter (`filter_reasons`): a (row, method) rewrite is kept when every metric (word,
   word_position, position) gains more than `filter.min_gain`, both supports are >= `min_support`
   and contradictions <= `max_contradictions`.

Splits (one schema): `train` — the kept rewrites, for SFT (`prompt` = the general rewrite prompt as
the user message, `rewrite` the target); `rl` — every non-test row and target once, unfiltered,
for GRPO (`prompt` = `GEO.system_prompt` + the same user message; the reward reads `query`,
`sources`, `target_index`, `original_visibility`); `test` — every test row and target once, the
same shape, for eval. `rl` and `test` rows have method `identity` (`rewrite` = the source,
`rewrite_visibility` = `original_visibility`, supports 1, contradictions 0). `make_prompt` builds
every prompt; a split without rows is left out (the Hub cannot load it). Columns: `id`, `source`,
`row_index`, `query`, `sources`, `target_index`, `method`, `prompt`, `rewrite`,
`original_visibility` / `rewrite_visibility` ({word, word_position, position}), `support_original`,
`support_rewrite`, `contradictions`.

Recipe keys: see `recipes/geo.yaml` (the default recipe, on the bundled sample).
"""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from dataset_builders import common
from hubtools.models import model_label
from dataset_builders.common import BadRow, get_column, is_int, is_num, require, short
from hubtools.aggregate import mean
from hubtools.geo import METRICS
from hubtools.tasks import GEO

NAME = "geo"
DEFAULT_RECIPE = Path(__file__).parent / "recipes" / "geo.yaml"
REWRITE_TEMPLATE = "geo_rewrite"
PLOT_FILE = "geo_methods.png"
SERVED_KEYS = ("engine", "judge")  # recipe blocks naming a served model (hubtools.judge.Judge)
IDENTITY = "identity"


@dataclass(frozen=True)
class Method:
    name: str          # as the GEO paper names it (cards)
    task: str | None   # the task text of its rewrite prompt; None: the source unchanged


# The task of the SFT and RL prompt: no method named, the study's "general regeneration prompt".
GENERAL_TASK = ("Rewrite the source text so that an AI search engine, which answers questions from several web "
                "sources and cites them, finds it more useful and cites it more often and earlier in its answers. "
                "Keep all the key points and facts of the source, add nothing false, and keep it about as long as "
                "the source.")
_KEEP = "Keep the rest of the source unchanged."
# The GEO paper's nine methods plus identity, as short tasks a small model can follow (our wording).
METHODS = {
    IDENTITY: Method("Identity", None),
    "authoritative": Method("Authoritative", (
        "Rewrite the source in a confident, authoritative tone, as an expert in the field would write it: state its "
        "claims decisively and persuasively, without hedging. Keep its facts and meaning unchanged.")),
    "keyword_stuffing": Method("Keyword Stuffing", (
        "Add new keywords that optimize the source for search engines, at different places in the text. Use only "
        f"keywords that are relevant to the topic and not yet in the source, at most 10 of them. {_KEEP}")),
    "statistics_addition": Method("Statistics Addition", (
        "Add relevant statistics to the source where they fit: numbers, percentages, dates or measurements that "
        f"back its claims. {_KEEP}")),
    "quotation_addition": Method("Quotation Addition", (
        "Add one or two relevant quotations from credible experts or organizations to the source, each attributed "
        f"to its speaker, where they support its claims. {_KEEP}")),
    "cite_sources": Method("Cite Sources", (
        "Add citations of credible sources for the main claims of the source, in natural phrases such as "
        f"\"according to a study by ...\" or \"as reported by ...\". {_KEEP}")),
    "fluency_optimization": Method("Fluency Optimization", (
        "Rewrite the source so that it reads fluently: smooth, well-formed sentences, clear transitions and correct "
        "grammar. Keep all of its information.")),
    "easy_to_understand": Method("Easy-to-Understand", (
        "Rewrite the source in simple language that any reader understands easily: short sentences, everyday words, "
        "and every technical term explained. Keep all of its information.")),
    "unique_words": Method("Unique Words", (
        "Rewrite the source using distinctive, precise and less common words in place of generic ones, so that it "
        "stands out. Keep its meaning unchanged.")),
    "technical_terms": Method("Technical Terms", (
        "Rewrite the source using the precise technical terms of its field where they fit, so that it reads as "
        "expert content. Keep its meaning unchanged.")),
}
_FENCED = re.compile(r"```[\w-]*[ \t]*\n(.*?)\n?[ \t]*```", re.S)


# ---------------------------------------------------------------------------------------- recipe


def _check(r: dict) -> None:
    for key in SERVED_KEYS:
        common.check_served(r, key)
    methods = r["methods"]
    require(isinstance(methods, list) and methods and all(isinstance(m, str) for m in methods),
            "methods must be a non-empty list of method names")
    unknown = [m for m in methods if m not in METHODS]
    require(not unknown, f"methods: unknown method(s) {unknown}; known: {list(METHODS)}")
    require(len(set(methods)) == len(methods), f"methods: a method is named twice in {methods}")
    rule = r["target_rule"]
    require(rule == "each" or (is_int(rule) and rule >= 0),
            f"target_rule must be 'each' or a 0-based source index, got {rule!r}")
    require(r["test_size"] == common.COMMON_DEFAULTS["test_size"],
            "test_size: the geo builder splits by row index; give test_rows {start, end} instead")
    t = r["test_rows"]
    require(is_int(t["start"]) and is_int(t["end"]) and 0 <= t["start"] < t["end"],
            f"test_rows must be {{start, end}}: row indices with 0 <= start < end (end excluded), got {t}")
    s = r["sampling"]
    require(is_int(s["max_new_tokens"]) and s["max_new_tokens"] >= 1, "sampling.max_new_tokens must be >= 1")
    require(is_num(s["temperature"]) and s["temperature"] >= 0, "sampling.temperature must be >= 0")
    require(is_num(s["top_p"]) and 0 < s["top_p"] <= 1, "sampling.top_p must be in (0, 1]")
    ratio = r["length_ratio"]
    require(isinstance(ratio, list) and len(ratio) == 2 and all(is_num(x) for x in ratio)
            and 0 <= ratio[0] <= 1 <= ratio[1], f"length_ratio must be [lo, hi] with 0 <= lo <= 1 <= hi, got {ratio!r}")
    require(is_int(r["max_keypoints"]) and r["max_keypoints"] >= 1, "max_keypoints must be a positive integer")
    f = r["filter"]
    require(is_num(f["min_gain"]) and f["min_gain"] >= 0, "filter.min_gain must be a number >= 0")
    require(is_num(f["min_support"]) and 0 <= f["min_support"] <= 1, "filter.min_support must be in [0, 1]")
    require(is_int(f["max_contradictions"]) and f["max_contradictions"] >= 0,
            "filter.max_contradictions must be an integer >= 0")


SPEC = common.RecipeSpec(
    builder=NAME,
    defaults={"target_rule": "each", "test_rows": {"start": None, "end": None}, "methods": list(METHODS),
              "sampling": {"max_new_tokens": 512, "temperature": 0.7, "top_p": 1.0}, "length_ratio": [0.5, 2.0],
              "engine": dict(common.SERVED_DEFAULTS), "judge": dict(common.SERVED_DEFAULTS), "max_keypoints": 8,
              "filter": {"min_gain": 0.0, "min_support": 0.8, "max_contradictions": 0},
              "pretty_name": "GEO: source rewrites a generative engine cites more"},
    column_keys=frozenset({"query", "sources", "source_text", "target"}),
    required_columns=("query", "sources"), check=_check)


def complete_recipe(recipe: dict) -> dict:
    """Validate a recipe and fill in defaults; a wrong key or value is an error naming it."""
    return common.complete_recipe(recipe, SPEC)


def load_recipe(path: str | Path) -> dict:
    """Read a recipe YAML; its local paths are taken relative to the recipe file's folder."""
    return common.load_recipe(path, SPEC)


# command-line dest → where it goes in the recipe
_PATHS = {"methods": ("methods",), "max_new_tokens": ("sampling", "max_new_tokens"), "seed": ("seed",),
          "strict": ("strict",), "engine_model": ("engine", "model"), "engine_base_url": ("engine", "base_url"),
          "judge_model": ("judge", "model"), "judge_base_url": ("judge", "base_url"),
          "engine_max_tokens": ("engine", "max_tokens"), "judge_max_tokens": ("judge", "max_tokens"),
          "max_keypoints": ("max_keypoints",)}


def apply_overrides(recipe: dict, *, model: str | None = None, backend: str | None = None,
                    base_url: str | list[str] | None = None, **values) -> dict:
    """A completed copy of `recipe` with the command-line overrides that are not None (`_PATHS` keys,
    `methods` as a list or comma-separated names, and the rewriter's `model`, `backend`, `base_url`)."""
    r = complete_recipe(recipe)
    if isinstance(values.get("methods"), str):
        values["methods"] = [m.strip() for m in values["methods"].split(",") if m.strip()]
    common.set_overrides(r, _PATHS, values)
    common.override_generator(r, model=model, backend=backend, base_url=base_url)
    return complete_recipe(r)


def _say(text: str) -> None:
    common.say(NAME, text)


# ---------------------------------------------------------------------------------------- rows


def make_prompt(source: str, task: str = GENERAL_TASK, *, system: bool = False) -> list[dict]:
    """A rewrite prompt as chat messages: the task and the source text in one user message
    (hubtools/prompts/geo_rewrite.j2), after `GEO.system_prompt` with `system`. SFT rows: the general
    task, no system prompt; RL and test rows: the general task with it (the study's RL prompt); the
    rewriter: each method's task."""
    from hubtools.judge import render
    user = [{"role": "user", "content": render(REWRITE_TEMPLATE, task=task, source=source)}]
    return ([{"role": "system", "content": GEO.system_prompt}] if system else []) + user


def _source_text(value, field: str | None, i: int) -> str:
    if field:
        if not isinstance(value, dict):
            raise BadRow("source is not an object", "source_text",
                         f"source {i}: expected an object with field {field!r}, got {short(value)}")
        value = get_column(value, field)
    elif isinstance(value, dict):
        raise BadRow("source is not text", "source_text",
                     f"source {i} is an object: map columns.source_text to its text field (e.g. cleaned_text)")
    if value is None or (isinstance(value, str) and not value.strip()):
        raise BadRow("empty source text", "source_text" if field else "sources", f"source {i} has no text")
    if not isinstance(value, str):
        raise BadRow("source text is not text", "source_text" if field else "sources",
                     f"source {i}: expected a string, got {short(value)}")
    return value.strip()


def parse_row(row: dict, columns: dict, source: str, index: int, target_rule: str | int = "each") -> dict:
    """One source row: {id, source, row_index, query, sources, targets}, or BadRow."""
    query = get_column(row, columns["query"])
    if query is None or (isinstance(query, str) and not query.strip()):
        raise BadRow("missing query", "query", "missing or empty")
    if not isinstance(query, str):
        raise BadRow("query is not text", "query", f"expected a string, got {short(query)}")
    value = get_column(row, columns["sources"])
    if value is None:
        raise BadRow("missing sources", "sources", "missing")
    if not isinstance(value, (list, tuple)):
        raise BadRow("sources is not a list", "sources", f"expected a list of sources, got {short(value)}")
    if len(value) < 2:
        raise BadRow("fewer than 2 sources", "sources",
                     f"{len(value)} source(s): the engine must choose among at least 2")
    texts = [_source_text(s, columns.get("source_text"), i) for i, s in enumerate(value)]
    n = len(texts)
    if columns.get("target"):
        target = get_column(row, columns["target"])
        if target is None:
            raise BadRow("missing target", "target", "missing")
        if not is_int(target):
            raise BadRow("invalid target", "target", f"expected a 0-based source index, got {short(target)}")
        if not 0 <= target < n:
            raise BadRow("target out of range", "target", f"index {target} of {n} sources (0-based)")
        targets = [target]
    elif target_rule == "each":
        targets = list(range(n))
    else:
        if target_rule >= n:
            raise BadRow("target out of range", "target", f"target_rule {target_rule} with {n} sources (0-based)")
        targets = [target_rule]
    return {"id": f"{source}-{index}", "source": source, "row_index": index, "query": query.strip(),
            "sources": texts, "targets": targets}


def load_sources(recipe: dict) -> tuple[dict[str, list[dict]], Counter]:
    """Every row of every source, validated: {source: rows} and skip counts by "source: reason"."""
    recipe = complete_recipe(recipe)
    rule = recipe["target_rule"]
    return common.load_sources(recipe, lambda row, cols, name, i: parse_row(row, cols, name, i, rule))


def split_by_index(rows: list[dict], start: int, end: int) -> tuple[list[dict], list[dict]]:
    """(train rows, test rows): a row is a test row when start <= its `row_index` < end."""
    test = [r for r in rows if start <= r["row_index"] < end]
    return [r for r in rows if not start <= r["row_index"] < end], test


def targets_of(rows: list[dict]) -> list[dict]:
    """One item per (row, target): the row's fields and `target_index`, id "<row id>-<target>"."""
    return [{k: v for k, v in r.items() if k != "targets"} | {"id": f"{r['id']}-{t}", "target_index": t}
            for r in rows for t in r["targets"]]


def original_of(item: dict) -> str:
    return item["sources"][item["target_index"]]


# ---------------------------------------------------------------------------------------- rewriting


def read_rewrite(reply: str, original: str, length_ratio) -> tuple[str, str | None]:
    """(the rewrite as the engine sees it, None) or ("", why refused): reasoning dropped, a reply
    fenced whole unwrapped, then the GEO reward's guards (`train.rewards.geo.prepare`)."""
    from train.rewards.geo import prepare, rewrite_text
    text = rewrite_text(reply)
    if fence := _FENCED.fullmatch(text):
        text = fence[1].strip()
    r = prepare(text, original, tuple(length_ratio))
    return r.text, r.flag


def rewrite_pairs(generator, pairs: list[dict], recipe: dict) -> None:
    """Set each pair's `rewrite` and `flag` (None, or why the rewrite is refused): identity is the
    source; every other method's rewrite is sampled once, all in one `generate` call."""
    from hubtools.generation import SamplingParams
    for p in pairs:
        if p["method"] == IDENTITY:
            p["rewrite"], p["flag"] = original_of(p), None
    ask = [p for p in pairs if p["method"] != IDENTITY]
    if not ask:
        return
    s = recipe["sampling"]
    params = SamplingParams(n=1, max_new_tokens=s["max_new_tokens"], temperature=s["temperature"], top_p=s["top_p"],
                            seed=recipe["seed"])
    outputs = generator.generate([make_prompt(original_of(p), METHODS[p["method"]].task) for p in ask], params,
                                 desc="rewriting")
    if len(outputs) != len(ask) or any(len(o) != 1 for o in outputs):
        raise RuntimeError(f"{generator!r} returned {[len(o) for o in outputs]} samples for {len(ask)} prompts; "
                           "expected 1 each")
    for p, (reply,) in zip(ask, outputs):
        p["rewrite"], p["flag"] = read_rewrite(reply, original_of(p), recipe["length_ratio"])


# ---------------------------------------------------------------------------------------- engine and key points


def rewritten_sources(pair: dict) -> list[str]:
    t = pair["target_index"]
    return [*pair["sources"][:t], pair["rewrite"], *pair["sources"][t + 1:]]


def engine_shares(engine, items: list[dict], pairs: list[dict]) -> tuple[list, list]:
    """The target's shares ({metric: share}, None where the engine failed) over each item's original
    sources and over each pair's rewritten sources (a refused or identity pair: not asked, None);
    one gather, identical source sets asked once."""
    from train.rewards.geo import target_shares
    ask = [p for p in pairs if p["flag"] is None and p["method"] != IDENTITY]
    rows = [(it["query"], it["sources"]) for it in items] + [(p["query"], rewritten_sources(p)) for p in ask]
    answers = engine.answer_many(rows) if rows else []
    shares = [None if a is None else target_shares(a, row["target_index"])
              for a, row in zip(answers, [*items, *ask])]
    after = dict(zip(map(id, ask), shares[len(items):]))
    return shares[:len(items)], [after.get(id(p)) for p in pairs]


def keypoint_stats(judge, pairs: list[dict], max_points: int) -> list[dict | None]:
    """Per pair: {support_original, support_rewrite, contradictions}, or None when not judged (a
    refused pair, a key-point list that failed, an unparsed label); identity: 1, 1, 0 without asking.
    Each original's key points are listed once; every pair in one gather."""
    from hubtools.geo_keypoints import keypoints, preservation
    listed: dict[str, asyncio.Future] = {}

    async def one(pair: dict) -> dict | None:
        if pair["method"] == IDENTITY:
            return {"support_original": 1.0, "support_rewrite": 1.0, "contradictions": 0}
        original, rewrite = original_of(pair), pair["rewrite"]
        if original not in listed:
            listed[original] = asyncio.ensure_future(keypoints(judge, original, max_points))
        points, rewrite_points = await asyncio.gather(listed[original], keypoints(judge, rewrite, max_points))
        if points is None or rewrite_points is None:
            return None
        kept, back = await asyncio.gather(preservation(judge, points, rewrite),
                                          preservation(judge, rewrite_points, original))
        if kept.judged < kept.asked or back.judged < back.asked:
            return None
        return {"support_original": kept.support, "support_rewrite": back.support,
                "contradictions": kept.contradicted + back.contradicted}

    todo = [p for p in pairs if p["flag"] is None]
    done = dict(zip(map(id, todo), judge.run_many(one, todo, "judging key points") if todo else []))
    return [done.get(id(p)) for p in pairs]


def measure(engine, judge, items: list[dict], pairs: list[dict], max_points: int) -> None:
    """The engine's and the judge's work, side by side (two threads, one gather each): sets each
    item's `original_visibility`, each pair's `original_visibility`, `rewrite_visibility` and
    key-point stats."""
    with ThreadPoolExecutor(2) as pool:
        shares = pool.submit(engine_shares, engine, items, pairs)
        stats = pool.submit(keypoint_stats, judge, pairs, max_points)
        (before, after), kp = shares.result(), stats.result()
    for item, b in zip(items, before):
        item["original_visibility"] = b
    by_item = {it["id"]: it for it in items}
    for pair, a, k in zip(pairs, after, kp):
        pair["original_visibility"] = by_item[pair["item"]]["original_visibility"]
        pair["rewrite_visibility"] = pair["original_visibility"] if pair["method"] == IDENTITY else a
        pair.update(k or dict.fromkeys(("support_original", "support_rewrite", "contradictions")))


# ---------------------------------------------------------------------------------------- filter and tables


def gains(pair: dict) -> dict[str, float]:
    return {m: pair["rewrite_visibility"][m] - pair["original_visibility"][m] for m in METRICS}


def status(pair: dict) -> str | None:
    """Why a pair has no measurement (None: measured)."""
    if pair["original_visibility"] is None:
        return "engine failed on the original sources"
    if pair["flag"] is not None:
        return f"rewrite refused: {pair['flag']}"
    if pair["rewrite_visibility"] is None:
        return "engine failed on the rewritten sources"
    return None


def filter_reasons(pair: dict, f: dict) -> list[str]:
    """Why a measured pair fails the recipe's `filter` (empty: kept): a metric that gains no more than
    `min_gain`, key points not judged, a support under `min_support`, contradictions over
    `max_contradictions`."""
    reasons = [f"{m} gain <= {f['min_gain']}" for m, g in gains(pair).items() if not g > f["min_gain"]]
    if pair["support_original"] is None:
        return reasons + ["keypoints not judged"]
    for key in ("support_original", "support_rewrite"):
        if pair[key] < f["min_support"]:
            reasons.append(f"{key} < {f['min_support']}")
    if pair["contradictions"] > f["max_contradictions"]:
        reasons.append(f"contradictions > {f['max_contradictions']}")
    return reasons


def summarize(pairs: list[dict]) -> dict:
    """What the card's filter table shows over measured pairs, before and after filtering."""
    judged = [p for p in pairs if p["support_original"] is not None]
    return {
        "rewrites": len(pairs),
        **{f"mean {m} gain": mean((gains(p)[m] for p in pairs), 4) for m in METRICS},
        "rewrites with key points judged": len(judged),
        "mean support_original": mean((p["support_original"] for p in judged), 4),
        "mean support_rewrite": mean((p["support_rewrite"] for p in judged), 4),
        "rewrites with a contradiction": sum(p["contradictions"] > 0 for p in judged),
    }


def method_table(pairs: list[dict], methods: list[str]) -> list[dict]:
    """Per method: rewrites, measured, mean gain per metric, share improved on all three, mean
    supports, share of judged rewrites with a contradiction, kept."""
    rows = []
    for m in methods:
        mine = [p for p in pairs if p["method"] == m and p["original_visibility"] is not None]
        measured = [p for p in mine if status(p) is None]
        judged = [p for p in measured if p["support_original"] is not None]
        rows.append({
            "method": METHODS[m].name, "rewrites": len(mine), "measured": len(measured),
            **{f"gain {k}": mean((gains(p)[k] for p in measured), 3) for k in METRICS},
            "improved (all 3)": mean((float(all(g > 0 for g in gains(p).values())) for p in measured), 3),
            "support_original": mean((p["support_original"] for p in judged), 3),
            "support_rewrite": mean((p["support_rewrite"] for p in judged), 3),
            "contradicted": mean((float(p["contradictions"] > 0) for p in judged), 3),
            "kept": sum(p["kept"] for p in measured)})
    return rows


def _table(rows: list[dict]) -> str:
    cols = list(rows[0])
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join("–" if r[c] is None else str(r[c]) for c in cols) + " |" for r in rows]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------- build


def features():
    """The fixed output schema of every split."""
    from datasets import Features, List, Value
    shares = {m: Value("float64") for m in METRICS}
    return Features({
        "id": Value("string"), "source": Value("string"), "row_index": Value("int64"), "query": Value("string"),
        "sources": List(Value("string")), "target_index": Value("int64"), "method": Value("string"),
        "prompt": List({"role": Value("string"), "content": Value("string")}), "rewrite": Value("string"),
        "original_visibility": shares, "rewrite_visibility": shares, "support_original": Value("float64"),
        "support_rewrite": Value("float64"), "contradictions": Value("int64"),
    })


def sft_row(pair: dict) -> dict:
    """A kept rewrite as an SFT row: the general prompt without system prompt, the rewrite as target."""
    return {"id": f"{pair['item']}-{pair['method']}", "source": pair["source"], "row_index": pair["row_index"],
            "query": pair["query"], "sources": pair["sources"], "target_index": pair["target_index"],
            "method": pair["method"], "prompt": make_prompt(original_of(pair)), "rewrite": pair["rewrite"],
            **{k: pair[k] for k in ("original_visibility", "rewrite_visibility", "support_original", "support_rewrite",
                                    "contradictions")}}


def identity_row(item: dict) -> dict:
    """An rl / test row: the item unrewritten, the RL prompt (system prompt + general task)."""
    return {"id": f"{item['id']}-{IDENTITY}", "source": item["source"], "row_index": item["row_index"],
            "query": item["query"], "sources": item["sources"], "target_index": item["target_index"],
            "method": IDENTITY, "prompt": make_prompt(original_of(item), system=True), "rewrite": original_of(item),
            "original_visibility": item["original_visibility"], "rewrite_visibility": item["original_visibility"],
            "support_original": 1.0, "support_rewrite": 1.0, "contradictions": 0}


def method_label(row: dict) -> str:
    """A method's name in the figure, with the mean support of the original's key points (or why none)."""
    support = row["support_original"]
    return f"{row['method']} ({'key points not judged' if support is None else f'support {support:.2f}'})"


def card_info(recipe: dict, stats: dict, models: dict[str, str], repro_command: str) -> dict:
    """Dataset-card run info (model_cards.render_dataset_card keys)."""
    from hubtools.judge import STATS
    s, f, methods = recipe["sampling"], recipe["filter"], recipe["methods"]
    build_params = {
        "rewriter": models["rewriter"], "rewriter backend": models["backend"], "engine": models["engine"],
        "judge": models["judge"], "methods": [METHODS[m].name for m in methods],
        "prompts": f"rewriter: hubtools/prompts/{REWRITE_TEMPLATE}.j2 with each method's task "
                   "(dataset_builders/geo.py METHODS); engine: hubtools/prompts/geo_engine.j2; key points: "
                   "hubtools/prompts/geo_keypoints.j2 and geo_support.j2",
        "max_new_tokens": s["max_new_tokens"], "temperature": s["temperature"], "top_p": s["top_p"],
        "seed": recipe["seed"], "length_ratio": recipe["length_ratio"], "max_keypoints": recipe["max_keypoints"],
        "filter": f, "target_rule": recipe["target_rule"],
        "test_rows": f"[{recipe['test_rows']['start']}, {recipe['test_rows']['end']})",
        "general task (SFT and RL prompt)": GENERAL_TASK, "system_prompt (RL and test prompt)": GEO.system_prompt}
    tasks = "\n".join(f"- **{METHODS[m].name}**: {METHODS[m].task or 'the source unchanged (no model asked)'}"
                      for m in methods)
    filter_counts = "\n".join(f"| {k} | {v} |" for k, v in stats["filter"].items())
    calls = "\n".join(f"| {name} | " + " | ".join(str(c[k]) for k in c) + " |" for name, c in stats["calls"].items())
    description = (
        "Generative Engine Optimization (GEO) data: a query, its n search-result sources and the source to rewrite "
        f"(`target_index`). The rewriter `{models['rewriter']}` rewrote every train row's target once per method; a "
        f"simulated generative engine (`{models['engine']}`, prompt `geo_engine`) answered the query with `[k]` "
        "citations over the original sources and over the sources with the target rewritten, and the target's shares "
        "of the answer (word, position-adjusted word, position; `hubtools.geo`, 0 when the answer cites no source) "
        f"are `original_visibility` and `rewrite_visibility`. The judge `{models['judge']}` listed the key points of "
        "the original and of the rewrite and labelled each against the other text: `support_original` is the share "
        "of the original's key points the rewrite supports, `support_rewrite` the share of the rewrite's the original "
        "supports, `contradictions` the CONTRADICTED labels both ways. A rewrite was kept when every metric gained "
        f"more than {f['min_gain']}, both supports were >= {f['min_support']} and contradictions <= "
        f"{f['max_contradictions']}.\n\n"
        f"Splits (an empty one left out): `train` (rows: {stats['train']}) — the kept rewrites, for SFT: `prompt` is "
        f"the general rewrite prompt as one user message, `rewrite` the target; `rl` (rows: {stats['rl']}) — every "
        "non-test row and "
        "target once, unfiltered, for GRPO: `prompt` is the GEO system prompt plus the same user message, and the "
        "reward reads `query`, `sources`, `target_index`, `original_visibility`; `test` "
        f"(rows: {stats['test']}) — the rows with index in [{recipe['test_rows']['start']}, "
        f"{recipe['test_rows']['end']}) of each source (their position in it; never in train or rl), in the `rl` "
        "shape, for eval. `rl` and `test` rows have method "
        "`identity`: `rewrite` is the source, `rewrite_visibility` equals `original_visibility`.\n\n"
        "Columns: `id`, `source`, `row_index`, `query`, `sources`, `target_index` (0-based), `method`, `prompt`, "
        "`rewrite`, `original_visibility` / `rewrite_visibility` ({word, word_position, position}), "
        "`support_original`, `support_rewrite`, `contradictions`.\n\n"
        f"### Methods\n\n{tasks}\n\n"
        "### Per method (train rows)\n\nGains are the rewritten target's share minus its share before, means over "
        "the measured rewrites; improved = share of them that gained on all three metrics; supports and "
        "contradicted (share of rewrites with a contradiction) over those whose key points were judged; "
        "– = nothing to average.\n\n"
        f"{_table(stats['methods'])}\n\n"
        f"### Filter\n\nPairs counted once per failed criterion.\n\n| Outcome | Pairs |\n|---|---|\n{filter_counts}\n\n"
        f"### Engine and judge calls\n\n| Prompt | {' | '.join(STATS)} |\n|---|{'---|' * len(STATS)}\n{calls}")
    return common.card_info(recipe, stats, kept=stats["train"], tags=["geo", "generative-engine-optimization", "sft",
                                                                       "grpo"],
                            description=description, build_params=build_params,
                            image=(PLOT_FILE, "Per method: mean gain of the target's position-adjusted word share, "
                                              "with the mean share of the original's key points the rewrite supports"),
                            repro_command=repro_command)


def build(recipe: dict, *, push_to_hub: str | None = None, output_dir: str | Path | None = None,
          private: bool | None = None, repro_command: str | None = None, **overrides):
    """Build the dataset: load + validate, split by row index, rewrite, engine + key points, filter,
    publish. Pushes to `push_to_hub` (or the recipe's) and/or saves to `output_dir` (or the
    recipe's), each with the card and the per-method plot. `overrides` are `apply_overrides`'
    keywords. Returns (DatasetDict with train/rl/test, stats)."""
    from datasets import Dataset, DatasetDict

    from hubtools.geo_engine import Engine
    from hubtools.generation import make_generator
    from hubtools.plots import gain_bars

    recipe = apply_overrides(recipe, **overrides)
    repro_command = repro_command or common.own_command()
    by_source, skipped = load_sources(recipe)
    rows = [r for rs in by_source.values() for r in rs]
    common.say_loaded(NAME, by_source, skipped)
    t = recipe["test_rows"]
    train_rows, test_rows = split_by_index(rows, t["start"], t["end"])
    if not test_rows or not train_rows:
        raise ValueError(f"test_rows [{t['start']}, {t['end']}): {len(test_rows)} usable row(s) fall in it and "
                         f"{len(train_rows)} outside; both must be non-empty (a row index is its position in its "
                         "source)")
    train_items, test_items = targets_of(train_rows), targets_of(test_rows)
    pairs = [item | {"item": item["id"], "method": m} for item in train_items for m in recipe["methods"]]

    asked = any(m != IDENTITY for m in recipe["methods"])
    generator = make_generator(recipe["generator"]) if asked else None
    rewriter, backend = common.describe_generator(generator) if generator else ("none (identity only)", "none")
    _say(f"rewriting {len(train_items)} targets × {len(recipe['methods'])} method(s) with {rewriter} ({backend}); "
         f"{len(test_items)} test targets")
    rewrite_pairs(generator, pairs, recipe)
    refused = Counter(p["flag"] for p in pairs if p["flag"])
    if refused:
        _say(f"rewrites refused: {dict(refused)}")

    engine, judge = Engine(common.make_judge(recipe, "engine")), common.make_judge(recipe, "judge")
    measure(engine, judge, train_items + test_items, pairs, recipe["max_keypoints"])
    for item in train_items + test_items:
        if item["original_visibility"] is None:
            skipped[f"{item['source']}: engine failed on the original sources"] += 1
    f = recipe["filter"]
    outcomes: Counter = Counter()
    for p in pairs:
        why = status(p)
        reasons = [why] if why else filter_reasons(p, f)
        p["kept"] = not reasons
        outcomes.update(reasons or ["kept"])
    measured = [p for p in pairs if status(p) is None]
    kept = [p for p in measured if p["kept"]]
    calls = {name: judge_.stats(name) for name, judge_ in (("geo_engine", engine.judge), ("geo_keypoints", judge),
                                                           ("geo_support", judge))}
    _say(f"engine {calls['geo_engine']}; key points {calls['geo_keypoints']}; support labels {calls['geo_support']}")
    if all(it["original_visibility"] is None for it in train_items + test_items):
        raise RuntimeError(f"the engine answered none of the original source sets ({calls['geo_engine']}); check the "
                           "engine's model, server and max_tokens")

    splits = {"train": [sft_row(p) for p in kept],
              "rl": [identity_row(it) for it in train_items if it["original_visibility"] is not None],
              "test": [identity_row(it) for it in test_items if it["original_visibility"] is not None]}
    schema = features()  # an empty split is left out: the Hub cannot load a split without data
    dd = DatasetDict({name: Dataset.from_list(rs, features=schema) for name, rs in splits.items() if rs})
    table = method_table(pairs, recipe["methods"])
    stats = {"loaded": {name: len(rs) for name, rs in by_source.items()}, "skipped": dict(skipped),
             "before": summarize(measured), "after": summarize(kept), "methods": table,
             "filter": dict(outcomes.most_common()), "calls": calls, "refused": dict(refused),
             **{name: len(rs) for name, rs in splits.items()},
             "sources": {name: sum(p["source"] == name for p in kept) for name in by_source}}
    models = {"rewriter": rewriter, "backend": backend, "engine": model_label(engine.judge.model),
              "judge": model_label(judge.model)}
    info = card_info(recipe, stats, models, repro_command)
    png = gain_bars({method_label(r): r["gain word_position"] for r in table if r["gain word_position"] is not None},
                    "GEO methods: visibility gain of the rewritten source",
                    "mean gain of its position-adjusted word share in the engine's answer")
    common.write_outputs(NAME, dd, recipe, {PLOT_FILE: png}, info, push_to_hub=push_to_hub, output_dir=output_dir,
                         private=private)
    _say(f"kept {len(kept)} of {len(measured)} measured rewrites ({len(pairs)} asked); train {len(splits['train'])}, "
         f"rl {len(splits['rl'])}, test {len(splits['test'])}")
    if not kept:
        _say("note: no rewrite passed the filter, so there is no train (SFT) split; rl and test are complete")
    return dd, stats


# ---------------------------------------------------------------------------------------- command line

_OVERRIDE_FLAGS = {**common.COMMON_OVERRIDES, "engine_model": "--engine-model", "engine_base_url": "--engine-base-url",
                   "judge_model": "--judge-model", "judge_base_url": "--judge-base-url", "methods": "--methods",
                   "max_new_tokens": "--max-new-tokens", "engine_max_tokens": "--engine-max-tokens",
                   "judge_max_tokens": "--judge-max-tokens", "max_keypoints": "--max-keypoints"}


def add_arguments(parser) -> None:
    """Flags of `hubtools build-dataset geo`; unset ones leave the recipe's value."""
    common.add_common_arguments(parser, DEFAULT_RECIPE, "GEO sample (30 queries × 5 sources)")
    common.add_served_arguments(parser, "engine", "generative engine")
    common.add_served_arguments(parser, "judge", "key-point judge")
    parser.add_argument("--methods", metavar="M1,M2",
                        help=f"comma-separated rewrite methods (recipe default: all); known: {', '.join(METHODS)}")
    parser.add_argument("--max-new-tokens", type=int, help="tokens per rewrite")
    parser.add_argument("--engine-max-tokens", type=int, help="tokens per engine answer")
    parser.add_argument("--judge-max-tokens", type=int, help="tokens per judge reply (key-point list or label)")
    parser.add_argument("--max-keypoints", type=int, help="key points listed per text")


def run(args) -> int:
    """`hubtools build-dataset geo ...`"""
    return common.run_builder(NAME, args, load_recipe, build, _OVERRIDE_FLAGS)
