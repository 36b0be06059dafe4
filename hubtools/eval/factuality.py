"""`hubtools eval factuality`: the factuality breakdown over k samples per question, per revision.

Per revision: the share of questions that are Partial Correct, Partial NotAttempt, All NotAttempt, All
Correct, All Attempt and Wrong over k samples each (the breakdown of the GRPO factuality-and-caution
study; the five partition every question), plus SimpleQA-style correct / not attempted / hallucination
rate (incorrect) / accuracy given attempted / F1 over all samples. Writes results.json and a breakdown
plot to --output-dir and adds the results to each revision's model card (`model-index` results and a
table section; the rest of the card is kept). With --prompts, evaluates several system prompts on one
model instead and plots the correct-vs-not-attempted frontier.

Grading (--grader): `rules` is `hubtools.scoring.grade_answer`, the grade the rewards and the dataset
builder use. `judge` asks an LLM judge (--judge-model, --judge-base-url) for SimpleQA's label of each
final answer: CORRECT, INCORRECT or NOT_ATTEMPTED (prompt template `grade_answer`). Both graders share
the format rules, without asking the judge: a sample without a final answer in \\boxed{} is INCORRECT
(silence is not an abstention), and an abstention the rules recognize (\\boxed{Unknown}, "I don't
know", ...) is NOT_ATTEMPTED. The judge grades every other final answer, and its NOT_ATTEMPTED counts
as an abstention; on an unanswerable question an attempt is INCORRECT whatever the judge says. A reply
that is not exactly one label, or a call that failed, leaves the sample ungraded: counted (Ungraded),
left out of every rate, never scored. The grader is recorded in results.json and as each card
metric's config (`rules`, or `judge:MODEL`); judge-graded results are kept beside rule-graded ones
under their own names ("correct (judge:MODEL)"), never in their place.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from hubtools.eval import common
from hubtools.models import model_label
from hubtools.generation import SamplingParams
from hubtools.scoring import Grade, extract_boxed, extract_final_answer, grade_answer, is_not_attempted, normalize_answer
from hubtools.tasks import FACTUALITY

RULES = "rules"
NO_KNOWN_ANSWER = "(none: no answer to this question is known)"  # the judge's gold target for an unanswerable one
CATEGORIES = ("Partial Correct", "Partial NotAttempt", "All NotAttempt", "All Correct", "All Attempt and Wrong")


def category(grades: list[Grade]) -> str:
    """Which of the five breakdown categories k grades of one question fall in."""
    k, c = len(grades), grades.count(Grade.CORRECT)
    na = grades.count(Grade.NOT_ATTEMPTED)
    if c == k:
        return "All Correct"
    if c > 0:
        return "Partial Correct"
    if na == k:
        return "All NotAttempt"
    return "Partial NotAttempt" if na > 0 else "All Attempt and Wrong"


@dataclass
class FactualityScores:
    questions: int
    k: int
    breakdown: dict[str, float]  # percent of questions per category (over the questions with a graded sample)
    correct: float               # fraction of all graded samples
    not_attempted: float
    hallucination_rate: float    # incorrect among all graded samples (TruthRL's hallucination rate)
    accuracy_given_attempted: float
    f1: float                    # SimpleQA's F-score: harmonic mean of correct and accuracy given attempted
    boxed: float | None = None   # samples with a final answer in \boxed{} (abstentions too): the format every
                                 # grade reads, so a model can learn it before any grade moves; None = not measured
    grader: str = RULES          # who graded: "rules" (hubtools.scoring) or "judge:MODEL" (an LLM judge)
    ungraded: int = 0            # samples the judge could not grade (unparsable reply, failed call): in no rate


def score(grades_per_question: list[list[Grade | None]], boxed_per_question: list[list[bool]] | None = None, *,
          grader: str = RULES) -> FactualityScores:
    """The breakdown and the aggregates. A grade None (the judge could not grade the sample) is left out
    of every rate and counted in `ungraded`; a question none of whose samples was graded is left out of
    the breakdown."""
    if not grades_per_question:
        raise ValueError("no questions to score")
    boxed = None if boxed_per_question is None else [b for bs in boxed_per_question for b in bs]
    graded = [[g for g in gs if g is not None] for gs in grades_per_question]
    flat = [g for gs in graded for g in gs]
    ungraded = sum(map(len, grades_per_question)) - len(flat)
    if not flat:
        raise ValueError(f"{grader} graded none of the {ungraded} samples (every reply unparsable or every call "
                         f"failed): check the judge's model and servers (--judge-model, --judge-base-url)")
    cats = [category(gs) for gs in graded if gs]
    n = len(flat)
    c, na = flat.count(Grade.CORRECT) / n, flat.count(Grade.NOT_ATTEMPTED) / n
    acc = c / (1 - na) if na < 1 else 0.0
    return FactualityScores(
        questions=len(grades_per_question), k=len(grades_per_question[0]),
        breakdown={name: round(100 * cats.count(name) / len(cats), 2) for name in CATEGORIES},
        correct=round(c, 4), not_attempted=round(na, 4), hallucination_rate=round(1 - c - na, 4),
        accuracy_given_attempted=round(acc, 4), f1=round(2 * c * acc / (c + acc) if c + acc else 0.0, 4),
        boxed=None if boxed is None else round(sum(boxed) / len(boxed), 4), grader=grader, ungraded=ungraded)


def load_eval_rows(dataset: str, split: str, limit: int | None = None) -> list[dict]:
    """Rows with `question`, `answers` (and `answerable`, `prompt` when the builder wrote them)."""
    return common.load_eval_rows(dataset, split, ("question", "answers"), limit=limit)


def grader_name(judge=None) -> str:
    """How samples are graded: "rules", or "judge:MODEL" with an LLM judge."""
    return RULES if judge is None else f"judge:{model_label(judge.model)}"


def grade_samples(rows: list[dict], samples: list[list[str]], judge=None) -> list[list[Grade | None]]:
    """Each row's samples graded by the rules, or with `judge` (a `hubtools.judge.Judge`) as a SimpleQA
    grader of the final answers (module docstring); None = the judge could not grade that sample."""
    if judge is None:
        return [[grade_answer(s, row["answers"], answerable=row.get("answerable", True)) for s in outs]
                for row, outs in zip(rows, samples)]
    from hubtools.judge import GRADE_LABELS
    grades: list[list[Grade | None]] = []
    asks: list[tuple[int, int, bool, dict]] = []  # (row, sample, answerable, template variables) the judge grades
    for i, (row, outs) in enumerate(zip(rows, samples)):
        golds = [a for a in row["answers"] if normalize_answer(a)] if row.get("answerable", True) else []
        grades.append([])
        for j, text in enumerate(outs):
            final = (extract_final_answer(text) or "").strip()
            grades[i].append(Grade.INCORRECT if not final else Grade.NOT_ATTEMPTED if is_not_attempted(final)
                             else None)
            if grades[i][j] is None:
                asks.append((i, j, bool(golds), {"question": row["question"], "target": golds or NO_KNOWN_ANSWER,
                                                 "response": final}))
    labels = judge.label_many("grade_answer", GRADE_LABELS, [variables for *_, variables in asks]) if asks else []
    for (i, j, answerable, _), label in zip(asks, labels):
        grade = None if label is None else Grade(label)
        grades[i][j] = Grade.INCORRECT if grade is Grade.CORRECT and not answerable else grade
    return grades


def grade_model(generator, rows: list[dict], k: int, system_prompt: str | None, max_new_tokens: int,
                temperature: float, seed: int, desc: str,
                judge=None) -> tuple[list[list[Grade | None]], list[list[bool]]]:
    """Per question, the k samples' grades (`grade_samples`) and whether each has a final answer in `\\boxed{}`."""
    prompts = []
    for row in rows:
        if system_prompt is None and row.get("prompt"):
            prompts.append(row["prompt"])
        else:
            prompts.append([{"role": "system", "content": system_prompt or FACTUALITY.system_prompt},
                            {"role": "user", "content": row["question"]}])
    samples = generator.generate(prompts, SamplingParams(n=k, max_new_tokens=max_new_tokens,
                                                         temperature=temperature, seed=seed), desc=desc)
    return (grade_samples(rows, samples, judge),
            [[bool((extract_boxed(s) or "").strip()) for s in outs] for outs in samples])


def markdown_table(results: dict[str, FactualityScores]) -> str:
    """One row per revision; with an Ungraded column (samples) when the judge graded any."""
    judged = any(s.grader != RULES for s in results.values())
    head = ["Revision", *CATEGORIES, "Boxed", "Correct", "Not attempted", "Hallucination rate", "Acc. given attempted",
            "F1", *(["Ungraded"] if judged else [])]
    return common.markdown_table(head, [
        [rev, *(f"{s.breakdown[c]:.2f}" for c in CATEGORIES), "–" if s.boxed is None else f"{100 * s.boxed:.1f}",
         *(f"{100 * v:.1f}" for v in (s.correct, s.not_attempted, s.hallucination_rate, s.accuracy_given_attempted,
                                      s.f1)),
         *([str(s.ungraded)] if judged else [])]
        for rev, s in results.items()])


def write_card_results(repo: str, revision: str, scores: FactualityScores, dataset: str, split: str,
                       plot: bytes | None = None) -> None:
    """Add eval results to the revision's existing card (metadata + a table section), in one commit.

    The grader is each metric's config; judge-graded results go beside the rule-graded ones. When
    `revision` is the newest `step-N`, branch `latest` follows it, so it keeps equalling that step.
    """
    metrics = {"correct": scores.correct, "not_attempted": scores.not_attempted,
               "hallucination_rate": scores.hallucination_rate,
               "accuracy_given_attempted": scores.accuracy_given_attempted, "f1": scores.f1,
               **({"boxed": scores.boxed} if scores.boxed is not None else {}),
               **{common.metric_key(c): scores.breakdown[c] / 100 for c in CATEGORIES}}
    judged = scores.grader != RULES
    graded_by = (f", graded by the LLM judge `{scores.grader.removeprefix('judge:')}` (SimpleQA-style labels; "
                 f"no final answer is incorrect and a recognized abstention not attempted without asking it). "
                 f"{scores.ungraded} of {scores.questions * scores.k} samples the judge could not grade (reply "
                 f"not a label, or the call failed) are left out of every rate (Ungraded)" if judged else "")
    section = (f"`hubtools eval factuality` on `{dataset}` ({split} split), {scores.questions} questions × "
               f"k={scores.k} samples{graded_by}. Breakdown in % of questions; boxed (a final answer in "
               f"`\\boxed{{}}`) / correct / not attempted / hallucination rate (incorrect) in % of all samples.\n\n"
               f"{markdown_table({revision: scores})}\n")
    common.write_card_results(repo, revision, task=FACTUALITY.name, task_type="question-answering", metrics=metrics,
                              dataset=dataset, split=split, section=section, plot=plot, metric_config=scores.grader,
                              variant=scores.grader if judged else None)


def evaluate_revisions(model: str, revisions: list[str], dataset: str, *, split: str = "test", k: int = 8,
                       limit: int | None = None, generator: dict | None = None, max_new_tokens: int = 256,
                       temperature: float = 1.0, seed: int = 0, system_prompt: str | None = None, judge=None,
                       write_cards: bool = True, output_dir: str | Path = "eval-results") -> dict[str, FactualityScores]:
    """Score each revision (graded by `judge` when given, else by the rules); every card is written
    only after every revision was scored."""
    from hubtools.plots import stacked_bars
    rows = load_eval_rows(dataset, split, limit=limit)
    results: dict[str, FactualityScores] = {}
    for rev in revisions:
        gen = common.generator_for(generator or {}, model, rev)
        results[rev] = score(*grade_model(gen, rows, k, system_prompt, max_new_tokens, temperature, seed,
                                          desc=f"eval {rev} (k={k})", judge=judge), grader=grader_name(judge))
        del gen
    by = "" if judge is None else f" (graded by {grader_name(judge)})"
    plot = stacked_bars({rev: s.breakdown for rev, s in results.items()}, f"Factuality breakdown per revision{by}",
                        "% of questions")
    common.save_results(output_dir, results, {"breakdown.png": plot})
    if write_cards and common.has_card(model):
        for rev, s in results.items():
            write_card_results(model, rev, s, dataset, split, plot)
    return results


def prompt_sweep(model: str, prompts: dict[str, str], dataset: str, *, split: str = "test", k: int = 8,
                 limit: int | None = None, generator: dict | None = None, max_new_tokens: int = 256,
                 temperature: float = 1.0, seed: int = 0, revision: str | None = None, judge=None,
                 output_dir: str | Path = "eval-results") -> dict[str, FactualityScores]:
    """Several system prompts on one model: the correct-vs-not-attempted trade-off that, in the
    factuality studies, the prompt alone moves."""
    from hubtools.plots import scatter
    rows = load_eval_rows(dataset, split, limit=limit)
    gen = common.generator_for(generator or {}, model, revision)
    results = {name: score(*grade_model(gen, rows, k, text, max_new_tokens, temperature, seed, desc=f"prompt {name}",
                                        judge=judge), grader=grader_name(judge))
               for name, text in prompts.items()}
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    by = "" if judge is None else f" (graded by {grader_name(judge)})"
    (out / "frontier.png").write_bytes(scatter(
        {name: (100 * s.not_attempted, 100 * s.correct) for name, s in results.items()},
        f"System prompts: correct vs not attempted{by}", "not attempted (% of samples)", "correct (% of samples)"))
    (out / "prompts.json").write_text(json.dumps({n: asdict(s) for n, s in results.items()}, indent=2))
    return results


def load_prompts(path: str | Path) -> dict[str, str]:
    """A YAML mapping name → system prompt, or a list of {name, system_prompt}."""
    import yaml
    data = yaml.safe_load(Path(path).read_text())
    if isinstance(data, dict):
        return {str(k): str(v) for k, v in data.items()}
    if isinstance(data, list) and all(isinstance(d, dict) and {"name", "system_prompt"} <= set(d) for d in data):
        return {d["name"]: d["system_prompt"] for d in data}
    raise ValueError(f"{path}: expected a mapping name → system prompt, or a list of {{name, system_prompt}}")


def add_arguments(parser) -> None:
    common.add_common_arguments(parser, default_k=8)
    parser.add_argument("--system-prompt", help="override the dataset's prompts with this system prompt")
    parser.add_argument("--prompts", help="YAML of name → system prompt: run the prompt sweep on --model")
    parser.add_argument("--grader", choices=(RULES, "judge"), default=RULES,
                        help="how samples are graded: rules (hubtools.scoring, as the rewards grade; default) or "
                             "judge (an LLM judge's SimpleQA label of each final answer; needs --judge-model and "
                             "--judge-base-url; samples it cannot grade are counted as Ungraded, never scored)")
    common.add_judge_arguments(parser, required=False)


def judge_for(args):
    """The judge of `--grader judge`, else None; judge flags without it are an error (the rules would
    grade while the user thinks the judge did)."""
    if args.grader == "judge":
        return common.make_judge(args, "--grader judge")
    given = [flag for flag, value in (("--judge-model", args.judge_model), ("--judge-base-url", args.judge_base_url),
                                      ("--judge-cache-dir", args.judge_cache_dir)) if value]
    if given:
        raise ValueError(f"{', '.join(given)}: used only with --grader judge (the grader is {args.grader})")
    return None


def run(args) -> int:
    model, revisions = common.model_and_revisions(args)
    judge = judge_for(args)
    options = dict(split=args.split, k=args.k, limit=args.limit, generator=common.generator_spec(args),
                   max_new_tokens=args.max_new_tokens, temperature=args.temperature, seed=args.seed, judge=judge,
                   output_dir=args.output_dir)
    if args.prompts:
        results = prompt_sweep(model, load_prompts(args.prompts), args.dataset, revision=revisions[0], **options)
        print(markdown_table(results).replace("| Revision |", "| Prompt |", 1))
        print(f"frontier plot: {args.output_dir}/frontier.png")
        return 0
    results = evaluate_revisions(model, revisions, args.dataset, system_prompt=args.system_prompt,
                                 write_cards=not args.no_card, **options)
    print(markdown_table(results))
    print(f"results: {args.output_dir}/results.json, plot: {args.output_dir}/breakdown.png")
    return 0
