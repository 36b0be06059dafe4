"""`hubtools eval factuality`: evaluate published revisions (or system prompts) on factuality.

Per revision, the breakdown of the GRPO factuality-and-caution study over k samples per question —
Partial Correct, Partial NotAttempt, All NotAttempt, All Correct, All Attempt and Wrong (percent of
questions; the five partition every question) — plus SimpleQA-style aggregates over all samples. Results go into each
revision's card as `model-index` eval results and a table section, added to the existing card.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from hubtools.eval import common
from hubtools.generation import SamplingParams
from hubtools.scoring import Grade, extract_boxed, grade_answer
from hubtools.tasks import FACTUALITY

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
    breakdown: dict[str, float]  # percent of questions per category
    correct: float               # fraction of all samples
    not_attempted: float
    hallucination_rate: float    # incorrect among all samples (TruthRL's hallucination rate)
    accuracy_given_attempted: float
    f1: float                    # SimpleQA's F-score: harmonic mean of correct and accuracy given attempted
    boxed: float | None = None   # samples with a final answer in \boxed{} (abstentions too): the format every
                                 # grade reads, so a model can learn it before any grade moves; None = not measured


def score(grades_per_question: list[list[Grade]],
          boxed_per_question: list[list[bool]] | None = None) -> FactualityScores:
    if not grades_per_question:
        raise ValueError("no questions to score")
    boxed = None if boxed_per_question is None else [b for bs in boxed_per_question for b in bs]
    cats = [category(g) for g in grades_per_question]
    flat = [g for gs in grades_per_question for g in gs]
    n = len(flat)
    c, na = flat.count(Grade.CORRECT) / n, flat.count(Grade.NOT_ATTEMPTED) / n
    acc = c / (1 - na) if na < 1 else 0.0
    return FactualityScores(
        questions=len(cats), k=len(grades_per_question[0]),
        breakdown={name: round(100 * cats.count(name) / len(cats), 2) for name in CATEGORIES},
        correct=round(c, 4), not_attempted=round(na, 4), hallucination_rate=round(1 - c - na, 4),
        accuracy_given_attempted=round(acc, 4), f1=round(2 * c * acc / (c + acc) if c + acc else 0.0, 4),
        boxed=None if boxed is None else round(sum(boxed) / len(boxed), 4))


def load_eval_rows(dataset: str, split: str, limit: int | None = None) -> list[dict]:
    """Rows with `question`, `answers` (and `answerable`, `prompt` when the builder wrote them)."""
    return common.load_eval_rows(dataset, split, ("question", "answers"), limit=limit)


def grade_model(generator, rows: list[dict], k: int, system_prompt: str | None, max_new_tokens: int,
                temperature: float, seed: int, desc: str) -> tuple[list[list[Grade]], list[list[bool]]]:
    """Per question, the k samples' grades and whether each has a final answer in `\\boxed{}`."""
    prompts = []
    for row in rows:
        if system_prompt is None and row.get("prompt"):
            prompts.append(row["prompt"])
        else:
            prompts.append([{"role": "system", "content": system_prompt or FACTUALITY.system_prompt},
                            {"role": "user", "content": row["question"]}])
    samples = generator.generate(prompts, SamplingParams(n=k, max_new_tokens=max_new_tokens,
                                                         temperature=temperature, seed=seed), desc=desc)
    grades = [[grade_answer(s, row["answers"], answerable=row.get("answerable", True)) for s in outs]
              for row, outs in zip(rows, samples)]
    return grades, [[bool((extract_boxed(s) or "").strip()) for s in outs] for outs in samples]


def markdown_table(results: dict[str, FactualityScores]) -> str:
    head = ["Revision", *CATEGORIES, "Boxed", "Correct", "Not attempted", "Hallucination rate", "Acc. given attempted",
            "F1"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for rev, s in results.items():
        cells = [rev, *(f"{s.breakdown[c]:.2f}" for c in CATEGORIES),
                 "–" if s.boxed is None else f"{100 * s.boxed:.1f}",
                 *(f"{100 * v:.1f}" for v in (s.correct, s.not_attempted, s.hallucination_rate,
                                              s.accuracy_given_attempted, s.f1))]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_card_results(repo: str, revision: str, scores: FactualityScores, dataset: str, split: str,
                       plot: bytes | None = None) -> None:
    """Add eval results to the revision's existing card (metadata + a table section), in one commit.

    When `revision` is the newest `step-N`, branch `latest` follows it, so it keeps equalling that step.
    """
    metrics = {"correct": scores.correct, "not_attempted": scores.not_attempted,
               "hallucination_rate": scores.hallucination_rate,
               "accuracy_given_attempted": scores.accuracy_given_attempted, "f1": scores.f1,
               **({"boxed": scores.boxed} if scores.boxed is not None else {}),
               **{common.metric_key(c): scores.breakdown[c] / 100 for c in CATEGORIES}}
    section = (f"`hubtools eval factuality` on `{dataset}` ({split} split), {scores.questions} questions × "
               f"k={scores.k} samples. Breakdown in % of questions; boxed (a final answer in `\\boxed{{}}`) / "
               f"correct / not attempted / hallucination rate (incorrect) in % of all samples.\n\n"
               f"{markdown_table({revision: scores})}\n")
    common.write_card_results(repo, revision, task=FACTUALITY.name, task_type="question-answering", metrics=metrics,
                              dataset=dataset, split=split, section=section, plot=plot)


def evaluate_revisions(model: str, revisions: list[str], dataset: str, *, split: str = "test", k: int = 8,
                       limit: int | None = None, generator: dict | None = None, max_new_tokens: int = 256,
                       temperature: float = 1.0, seed: int = 0, system_prompt: str | None = None,
                       write_cards: bool = True, output_dir: str | Path = "eval-results") -> dict[str, FactualityScores]:
    from hubtools.plots import stacked_bars
    rows = load_eval_rows(dataset, split, limit=limit)
    results: dict[str, FactualityScores] = {}
    for rev in revisions:
        gen = common.generator_for(generator or {}, model, rev)
        results[rev] = score(*grade_model(gen, rows, k, system_prompt, max_new_tokens, temperature, seed,
                                          desc=f"eval {rev} (k={k})"))
        del gen
    plot = stacked_bars({rev: s.breakdown for rev, s in results.items()}, "Factuality breakdown per revision",
                        "% of questions")
    common.save_results(output_dir, results, {"breakdown.png": plot})
    if write_cards and common.has_card(model):
        for rev, s in results.items():
            write_card_results(model, rev, s, dataset, split, plot)
    return results


def prompt_sweep(model: str, prompts: dict[str, str], dataset: str, *, split: str = "test", k: int = 8,
                 limit: int | None = None, generator: dict | None = None, max_new_tokens: int = 256,
                 temperature: float = 1.0, seed: int = 0, revision: str | None = None,
                 output_dir: str | Path = "eval-results") -> dict[str, FactualityScores]:
    """Several system prompts on one model: the correct-vs-not-attempted trade-off that, in the
    factuality studies, the prompt alone moves."""
    from hubtools.plots import scatter
    rows = load_eval_rows(dataset, split, limit=limit)
    gen = common.generator_for(generator or {}, model, revision)
    results = {name: score(*grade_model(gen, rows, k, text, max_new_tokens, temperature, seed, desc=f"prompt {name}"))
               for name, text in prompts.items()}
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "frontier.png").write_bytes(scatter(
        {name: (100 * s.not_attempted, 100 * s.correct) for name, s in results.items()},
        "System prompts: correct vs not attempted", "not attempted (% of samples)", "correct (% of samples)"))
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
