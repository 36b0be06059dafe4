"""`hubtools eval geo`: how much more visible each setting's rewrites make their source to the simulated
generative engine, on the GEO dataset's fixed test split (the GEO study's table of settings).

Settings: the revisions of --model (e.g. GRPO steps) and any --compare REPO[@REV] beside them (the base
instruct model, an SFT step), side by side. Per setting, k rewrites per row are sampled from the row's
`prompt`, and each is scored as the `geo` reward scores it (`train.rewards.geo.GeoScorer`): reasoning
dropped, `[k]` markers removed; a rewrite that is empty, outside --length-ratio × the original's words or
addressed to the engine is not shown to it and counts as uncited; an engine answer citing no source gives
the rewritten source 0. The engine is the --judge-model served at --judge-base-url (deterministic,
temperature 0); "before" is that engine's answer over the original sources, asked once per source set,
never the row's `original_visibility`: the builder's engine may differ in model or max_tokens, and before
and after must come from one engine to be compared.

Per setting: the rewritten source's mean share before / after of each visibility metric (word,
word_position, position) and its relative gain in % (ratio of the means: (after − before) / before), the
weighted score before / after (--weights, the reward's objective), the share of rewrites that raised it
(Improved), the rewrites not shown to the engine (empty, length, injection) and failed engine calls (left
out, counted). With --keypoints, the judge (the same model) checks key points both ways
(`hubtools.geo_keypoints.compare`): the share of the original's key points the rewrite supports, of the
rewrite's the original supports, and contradictions per rewrite; rewrites not fully judged are counted.

Results: results.json and geo_eval.png (across settings) in --output-dir; each --model revision's card
gets its own metrics as `model-index` (config `engine:MODEL`) and the whole table as its eval section.
--compare settings are references: their own cards are not written.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path

from hubtools.aggregate import mean
from hubtools.eval import common
from hubtools.models import model_label
from hubtools.geo import METRICS, REWARD_WEIGHTS
from hubtools.tasks import GEO

COLUMNS = ("prompt", "query", "sources", "target_index")
SHORT = {"word_position": "Word-pos", "position": "Position", "word": "Word"}


@dataclass
class GeoScores:
    rows: int
    k: int
    rewrites: int                    # rewrites scored (the engine answered before and after)
    before: dict[str, float]         # mean share of the rewritten source before, per metric
    after: dict[str, float]
    gain_pct: dict[str, float | None]  # 100 · (after − before) / before of the means; None when before is 0
    score_before: float              # mean weighted score (--weights)
    score_after: float
    improved: float                  # share of scored rewrites whose weighted score rose
    uncited: float                   # share of rewrites shown to the engine whose answer cited no source
    not_shown: dict[str, int]        # rewrites not shown to the engine, by why (empty, length, injection)
    engine_failures: int             # rewrites left out: an engine call failed
    support_original: float | None = None  # --keypoints: mean share of the original's key points kept
    support_rewrite: float | None = None   # mean share of the rewrite's key points the original supports
    contradictions: float | None = None    # mean CONTRADICTED labels per rewrite, both ways
    keypoints_unjudged: int | None = None  # rewrites whose key points were not fully judged
    weights: dict[str, float] = field(default_factory=lambda: dict(REWARD_WEIGHTS))

    def metrics(self) -> dict[str, float]:
        """The numeric results, for a card's model-index (missing ones left out)."""
        out = {f"{m}_{when}": round(getattr(self, when)[m], 4) for m in METRICS for when in ("before", "after")}
        out |= {f"{m}_gain_pct": round(g, 2) for m, g in self.gain_pct.items() if g is not None}
        out |= {"score_before": round(self.score_before, 4), "score_after": round(self.score_after, 4),
                "improved": round(self.improved, 4)}
        out |= {n: round(getattr(self, n), 4) for n in ("support_original", "support_rewrite", "contradictions")
                if getattr(self, n) is not None}
        return out


def summarize(scored: list, rows: int, k: int, weights: dict[str, float], checks: list | None = None) -> GeoScores:
    """The aggregates over one setting's scored rewrites (`train.rewards.geo.Scored`) and, with
    --keypoints, their key-point checks (None where a rewrite was not shown or not fully judged)."""
    from train.rewards.geo import FLAGS, score
    pairs = [s for s in scored if s.before is not None and s.after is not None]
    if not pairs:
        raise ValueError(f"the engine answered none of the {len(scored)} rewrites (every call failed): check the "
                         "engine's model and servers (--judge-model, --judge-base-url)")
    before = {m: mean(s.before[m] for s in pairs) for m in METRICS}
    after = {m: mean(s.after[m] for s in pairs) for m in METRICS}
    shown = [s for s in pairs if s.flag is None]
    judged = [c for c in (checks or []) if c is not None]
    keypoints = {} if checks is None else {
        "support_original": mean(c["support_original"] for c in judged),
        "support_rewrite": mean(c["support_rewrite"] for c in judged),
        "contradictions": mean(c["contradictions"] for c in judged),
        "keypoints_unjudged": sum(c is None and s.flag is None for c, s in zip(checks, scored))}
    return GeoScores(
        rows=rows, k=k, rewrites=len(pairs), before=before, after=after,
        gain_pct={m: 100 * (after[m] - before[m]) / before[m] if before[m] else None for m in METRICS},
        score_before=mean(score(s.before, weights) for s in pairs),
        score_after=mean(score(s.after, weights) for s in pairs),
        improved=sum(score(s.after, weights) > score(s.before, weights) for s in pairs) / len(pairs),
        uncited=sum(bool(s.uncited) for s in shown) / len(shown) if shown else 0.0,
        not_shown={f: sum(s.flag == f for s in scored) for f in FLAGS},
        engine_failures=len(scored) - len(pairs), weights=dict(weights), **keypoints)


def score_rewrites(scorer, rows: list[dict], samples: list[list[str]]) -> list:
    """Every sample scored by the engine (`GeoScorer`), all at once with a progress bar: one call per
    source set, so rows sharing it (one per target) ask its "before" once (the rows' `original_visibility`
    is not used: see the module docstring). Flattened row by row."""
    groups: dict[tuple, list[int]] = {}
    for i, row in enumerate(rows):
        groups.setdefault((row["query"], tuple(row["sources"])), []).append(i)

    def group(indices: list[int]):
        flat = [(i, s) for i in indices for s in samples[i]]
        return scorer.score([s for _, s in flat], *([rows[i][c] for i, _ in flat] for c in COLUMNS[1:]))

    scored = scorer.engine.judge.run_many(group, list(groups.values()), "engine")
    by_row: dict[int, list] = {}
    for indices, results in zip(groups.values(), scored):
        for i in indices:
            by_row[i] = results[:len(samples[i])]
            results = results[len(samples[i]):]
    return [s for i in range(len(rows)) for s in by_row[i]]


def check_keypoints(judge, rows: list[dict], samples: list[list[str]], scored: list,
                    listed: dict[str, list[str]]) -> list[dict | None]:
    """`geo_keypoints.compare` for every rewrite shown to the engine (None for the others); each
    original's key points listed once (kept in `listed` for the next setting)."""
    from hubtools.geo_keypoints import compare, keypoints
    items = [(i, rows[i]["sources"][rows[i]["target_index"]], s) for i, outs in enumerate(samples) for s in outs]
    pending: dict[str, asyncio.Future] = {}

    async def one(j: int) -> dict | None:
        _, original, _ = items[j]
        if scored[j].flag is not None:
            return None
        if original not in listed and original not in pending:
            pending[original] = asyncio.ensure_future(keypoints(judge, original))
        return await compare(judge, original, scored[j].rewrite, listed.get(original) or pending[original])

    checks = judge.run_many(one, list(range(len(items))), "key points")
    for original, task in pending.items():
        if task.result() is not None:
            listed[original] = task.result()
    return checks


def markdown_table(results: dict[str, GeoScores]) -> str:
    """One row per setting: shares in %, before → after and gain per metric; key points when measured."""
    keypoints = any(s.support_original is not None or s.keypoints_unjudged for s in results.values())
    head = ["Setting", *(f"{SHORT[m]} before → after (gain)" for m in METRICS), "Score before → after", "Improved",
            "Not shown (empty/length/injection)", "Uncited", "Engine failures",
            *(["Support original", "Support rewrite", "Contradictions", "Unjudged"] if keypoints else [])]

    def pct(v):
        return "–" if v is None else f"{100 * v:.1f}"

    def gain(v):
        return "–" if v is None else f"{v:+.1f} %"
    return common.markdown_table(head, [
        [label, *(f"{pct(s.before[m])} → {pct(s.after[m])} ({gain(s.gain_pct[m])})" for m in METRICS),
         f"{pct(s.score_before)} → {pct(s.score_after)}", pct(s.improved), "/".join(map(str, s.not_shown.values())),
         pct(s.uncited), str(s.engine_failures),
         *([pct(s.support_original), pct(s.support_rewrite),
            "–" if s.contradictions is None else f"{s.contradictions:.2f}", str(s.keypoints_unjudged)]
           if keypoints else [])]
        for label, s in results.items()])


def parse_setting(text: str) -> tuple[str, str | None]:
    """`REPO@REV` → (REPO, REV); a repo or local folder without @ → (it, None: main)."""
    if "@" in text and not Path(text).exists():
        model, revision = text.split("@", 1)
        return model, revision
    return text, None


def evaluate_settings(settings: dict[str, tuple[str, str | None]], dataset: str, engine, *, split: str = "test",
                      k: int = 1, limit: int | None = None, generator: dict | None = None, max_new_tokens: int = 512,
                      temperature: float = 1.0, seed: int = 0, weights: dict[str, float] = REWARD_WEIGHTS,
                      length_ratio=(0.5, 2.0), keypoints: bool = False, write_cards: dict[str, str] | None = None,
                      output_dir: str | Path = "eval-results") -> dict[str, GeoScores]:
    """Score each setting (label → (model, revision)); `write_cards` (label → the card's revision, of the
    settings whose card gets results) is written only after every setting was scored."""
    from hubtools.generation import SamplingParams
    from hubtools.plots import line_plot
    from train.rewards.geo import GeoScorer, parse_weights

    weights = parse_weights(weights)
    rows = common.load_eval_rows(dataset, split, COLUMNS, limit=limit)
    scorer = GeoScorer(engine, length_ratio)
    listed: dict[str, list[str]] = {}
    results: dict[str, GeoScores] = {}
    for label, (model, rev) in settings.items():
        gen = common.generator_for(generator or {}, model, rev)
        samples = gen.generate([row["prompt"] for row in rows], SamplingParams(
            n=k, max_new_tokens=max_new_tokens, temperature=temperature, seed=seed), desc=f"rewrite {label} (k={k})")
        del gen
        scored = score_rewrites(scorer, rows, samples)
        checks = check_keypoints(engine.judge, rows, samples, scored, listed) if keypoints else None
        results[label] = summarize(scored, len(rows), k, weights, checks)

    labels = list(results)
    plot = line_plot({**{f"{m} after": (list(range(len(labels))), [results[x].after[m] for x in labels])
                         for m in METRICS},
                      "word_position before": (list(range(len(labels))),
                                               [results[x].before["word_position"] for x in labels])},
                     "Rewritten source's share of the engine's answer (x: " + ", ".join(labels) + ")",
                     "setting", "share")
    common.save_results(output_dir, {"engine": engine.judge.model, "dataset": dataset, "split": split, **results},
                        {"geo_eval.png": plot})
    for label, rev in (write_cards or {}).items():
        model = settings[label][0]
        s = results[label]
        section = (f"`hubtools eval geo` on `{dataset}` ({split} split), {s.rows} rows × k={s.k} rewrites, engine "
                   f"`{model_label(engine.judge.model)}`: the rewritten source's share of the engine's answer before → after, "
                   f"in %, scored as the `geo` reward scores it (weights {weights}); this revision is `{label}`.\n\n"
                   f"{markdown_table(results)}\n")
        common.write_card_results(model, rev, task=GEO.name, task_type="text-generation", metrics=s.metrics(),
                                  dataset=dataset, split=split, section=section, plot=plot,
                                  metric_config=f"engine:{model_label(engine.judge.model)}")
    return results


def add_arguments(parser) -> None:
    common.add_common_arguments(parser, default_k=1)
    parser.set_defaults(max_new_tokens=512)
    parser.add_argument("--compare", action="append", metavar="REPO[@REV]", default=[],
                        help="a reference setting evaluated beside --model's revisions, e.g. the base instruct model "
                             "or an SFT step (repeatable); in the table, not written into its own card")
    common.add_judge_arguments(parser, required=True)
    parser.add_argument("--keypoints", action="store_true",
                        help="also check key points both ways with the judge model (support of the original's "
                             "key points by the rewrite and back, contradictions)")
    parser.add_argument("--weights", default=",".join(f"{m}:{w}" for m, w in REWARD_WEIGHTS.items()),
                        help="weights of the score, as the geo reward's geo_weights (default %(default)s)")
    parser.add_argument("--length-ratio", type=float, nargs=2, default=[0.5, 2.0], metavar=("LO", "HI"),
                        help="a rewrite outside LO..HI times the original's words is not shown to the engine, as "
                             "the reward's geo_length_ratio (default 0.5 2.0)")


def run(args) -> int:
    from hubtools.geo_engine import Engine
    model, revisions = common.model_and_revisions(args)
    settings = {label: parse_setting(label) for label in args.compare}
    mine = {(f"{model}@{rev}" if args.compare else rev): (model, rev) for rev in revisions}
    clash = sorted(set(settings) & set(mine))
    if clash:
        raise ValueError(f"--compare {', '.join(clash)}: already one of --model's revisions")
    engine = Engine(common.make_judge(args, "hubtools eval geo (the engine)"))
    cards = {label: rev for label, (_, rev) in mine.items()} if not args.no_card and common.has_card(model) else {}
    results = evaluate_settings(
        settings | mine, args.dataset, engine, split=args.split, k=args.k, limit=args.limit,
        generator=common.generator_spec(args), max_new_tokens=args.max_new_tokens, temperature=args.temperature,
        seed=args.seed, weights=args.weights, length_ratio=args.length_ratio, keypoints=args.keypoints,
        write_cards=cards, output_dir=args.output_dir)
    print(markdown_table(results))
    print(f"results: {args.output_dir}/results.json, plot: {args.output_dir}/geo_eval.png")
    return 0
