"""`hubtools eval rl_hard`: how well published revisions of a refiner policy answer held-out rows.

Per revision, k answers per row are scored with the training rewards themselves (train/rewards/
rubric.py, one place for the scoring): mean rubric score, the mean score of the positive rubrics
(satisfied) and of the flipped negative ones (avoided), citation precision / recall / F1, and the
share of answers in a valid format. Judge replies that do not parse are counted, never scored.
Results go into each revision's card (`model-index` + a section) and a plot across revisions.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from hubtools.aggregate import mean
from hubtools.eval import common
from hubtools.models import model_label
from hubtools.tasks import RL_HARD

COLUMNS = ("prompt", "positive_rubrics", "negative_rubrics", "tool_output")


@dataclass
class RubricScores:
    rows: int
    k: int
    rubric_score: float | None        # mean rubric reward over the answers the judge scored
    positive_satisfied: float | None  # mean judge score of the positive rubrics, in [0, 1]
    negative_avoided: float | None    # mean of 1 - score of the negative rubrics
    citation_precision: float | None
    citation_recall: float | None
    citation_f1: float | None
    format_valid: float               # share of answers whose format reward is 1
    judge_parse_failures: int

    def metrics(self) -> dict[str, float]:
        """The numeric results, for a card's model-index (missing ones left out)."""
        names = ("rubric_score", "positive_satisfied", "negative_avoided", "citation_precision", "citation_recall",
                 "citation_f1", "format_valid")
        return {n: round(getattr(self, n), 4) for n in names if getattr(self, n) is not None}


def score_answers(judge, rows: list[dict], answers: list[list[str]], *, static_rubrics: list[str] | None = None,
                  instance_rubrics_only: bool = False) -> RubricScores:
    """Score k answers per row with the rubric, citation and format rewards, called as TRL calls them."""
    from train.rewards.rubric import format_reward, make_citation_reward, make_rubric_reward, static_rubrics as static

    positive, negative = static(static_rubrics)
    rubric = make_rubric_reward(judge, instance_rubrics_only=instance_rubrics_only,
                                static_positive=positive, static_negative=negative)
    citation = make_citation_reward(judge)
    flat = [(row, a) for row, outs in zip(rows, answers) for a in outs]
    columns = {c: [row[c] for row, _ in flat] for c in COLUMNS}
    columns["prompts"] = columns.pop("prompt")
    completions = [a for _, a in flat]
    logged: dict[str, float] = {}

    async def both():
        return await asyncio.gather(rubric(completions, log_metric=logged.__setitem__, **columns),
                                    citation(completions, log_metric=logged.__setitem__, **columns))

    rubric_scores, citation_scores = asyncio.run(both())
    formats = format_reward(completions, **columns)
    return RubricScores(
        rows=len(rows), k=len(answers[0]) if answers else 0, rubric_score=mean(rubric_scores),
        positive_satisfied=logged.get("rubric/positive"), negative_avoided=logged.get("rubric/negative_avoided"),
        citation_precision=logged.get("citation/precision"), citation_recall=logged.get("citation/recall"),
        citation_f1=mean(citation_scores), format_valid=sum(formats) / len(formats),
        judge_parse_failures=int(logged.get("rubric/parse_failures", 0) + logged.get("citation/parse_failures", 0)))


def markdown_table(results: dict[str, RubricScores]) -> str:
    head = ["Revision", "Rubric score", "Positive satisfied", "Negative avoided", "Citation P", "Citation R",
            "Citation F1", "Format valid", "Judge parse failures"]

    def pct(v):
        return "–" if v is None else f"{100 * v:.1f}"
    return common.markdown_table(head, [
        [rev, *(pct(v) for v in (s.rubric_score, s.positive_satisfied, s.negative_avoided, s.citation_precision,
                                 s.citation_recall, s.citation_f1, s.format_valid)), str(s.judge_parse_failures)]
        for rev, s in results.items()])


def evaluate_revisions(model: str, revisions: list[str], dataset: str, judge, *, split: str = "test", k: int = 2,
                       limit: int | None = None, generator: dict | None = None, max_new_tokens: int = 512,
                       temperature: float = 1.0, seed: int = 0, static_rubrics: list[str] | None = None,
                       instance_rubrics_only: bool = False, write_cards: bool = True,
                       output_dir: str = "eval-results") -> dict[str, RubricScores]:
    """Generate k answers per row with each revision and score them; every card is written only after
    every revision was scored (a failure leaves no card changed)."""
    from hubtools.generation import SamplingParams
    from hubtools.plots import line_plot

    rows = common.load_eval_rows(dataset, split, COLUMNS, limit=limit)
    results: dict[str, RubricScores] = {}
    for rev in revisions:
        gen = common.generator_for(generator or {}, model, rev)
        answers = gen.generate([row["prompt"] for row in rows], SamplingParams(
            n=k, max_new_tokens=max_new_tokens, temperature=temperature, seed=seed), desc=f"eval {rev} (k={k})")
        del gen
        results[rev] = score_answers(judge, rows, answers, static_rubrics=static_rubrics,
                                     instance_rubrics_only=instance_rubrics_only)
    names = list(results)
    plot = line_plot({m: (list(range(len(names))), [results[r].metrics().get(m, float("nan")) for r in names])
                      for m in ("rubric_score", "citation_f1", "format_valid")},
                     "Rubric eval per revision (x: " + ", ".join(names) + ")", "revision", "score")
    common.save_results(output_dir, results, {"rubric_eval.png": plot})
    if write_cards and common.has_card(model):
        for rev, s in results.items():
            section = (f"`hubtools eval rl_hard` on `{dataset}` ({split} split), {s.rows} rows × k={s.k} answers, "
                       f"judge `{model_label(judge.model)}`. Scores in %; judge replies that did not parse are left out and "
                       f"counted.\n\n{markdown_table({rev: s})}\n")
            common.write_card_results(model, rev, task=RL_HARD.name, task_type="text-generation",
                                      metrics=s.metrics(), dataset=dataset, split=split, section=section, plot=plot)
    return results


def add_arguments(parser) -> None:
    common.add_common_arguments(parser, default_k=2)
    common.add_judge_arguments(parser, required=True)
    parser.add_argument("--static-rubrics", type=lambda s: [r.strip() for r in s.split(",") if r.strip()],
                        help=f"comma-separated titles of the static rubric set (default all: "
                             f"{', '.join(RL_HARD.static_rubrics)})")
    parser.add_argument("--instance-rubrics-only", action="store_true", help="score only each row's own rubrics")


def run(args) -> int:
    model, revisions = common.model_and_revisions(args)
    judge = common.make_judge(args, "hubtools eval rl_hard")
    results = evaluate_revisions(
        model, revisions, args.dataset, judge, split=args.split, k=args.k, limit=args.limit,
        generator=common.generator_spec(args), max_new_tokens=args.max_new_tokens, temperature=args.temperature,
        seed=args.seed, static_rubrics=args.static_rubrics, instance_rubrics_only=args.instance_rubrics_only,
        write_cards=not args.no_card, output_dir=args.output_dir)
    print(markdown_table(results))
    print(f"results: {args.output_dir}/results.json, plot: {args.output_dir}/rubric_eval.png")
    return 0
