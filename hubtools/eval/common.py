"""What every `hubtools eval TASK` shares: the flags (the judge's too), which model revision
generates, the eval rows, and writing results into a revision's card.

Why here: each task module is then only its metrics; every task evaluates exactly the revision it
names (a server must answer as `REPO@REVISION`), and writes its results the same way — `model-index`
metrics plus one replaceable section per task — keeping the rest of the card.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, is_dataclass
from pathlib import Path

def add_common_arguments(parser, default_k: int) -> None:
    """Flags every eval has: which model and revisions, which data, how to generate, where results go."""
    from hubtools.generation import BACKENDS
    parser.add_argument("--model", required=True,
                        help="Hub model repo, REPO@REVISION (= --revisions REVISION), or a local folder "
                             "('smollm2' = packaged model)")
    parser.add_argument("--revisions", type=lambda s: [r for r in s.split(",") if r],
                        help="comma-separated revisions, e.g. step-2,step-4 (default main). Through --base-url, "
                             "revision R is asked for as the model named REPO@R and the server must answer as it, "
                             "or eval stops before writing any card")
    parser.add_argument("--dataset", required=True, help="Hub dataset repo or local folder (save_to_disk)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--k", type=int, default=default_k, help=f"samples per row (default {default_k})")
    parser.add_argument("--limit", type=int, help="evaluate only the first N rows")
    parser.add_argument("--backend", choices=BACKENDS,
                        help="generation backend (default auto: openai with --base-url, else vllm when installed "
                             "with CUDA, else transformers)")
    parser.add_argument("--base-url", action="append", metavar="URL",
                        help="OpenAI-compatible server serving each revision as REPO@REVISION: `transformers serve` "
                             "(no model given: it loads REPO@REVISION from the Hub by name), or `vllm serve REPO "
                             "--revision R --served-model-name REPO@R` (one revision per server). Repeat it for "
                             "several servers; requests go to the least busy")
    parser.add_argument("--batch-size", type=int,
                        help="sequences per generate call (transformers backend; default 8; others ignore it)")
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-card", action="store_true", help="do not write results into the model cards")
    parser.add_argument("--output-dir", default="eval-results")


def add_judge_arguments(parser, *, required: bool) -> None:
    """The flags of an LLM judge (`hubtools.judge.Judge`): its model and servers, how many requests in
    flight, how long a reply may be, and a cache of its replies."""
    parser.add_argument("--judge-model", required=required, help="model name the judge server(s) serve")
    parser.add_argument("--judge-base-url", action="append", required=required, metavar="URL",
                        help="OpenAI-compatible judge endpoint (repeatable: several share the load)")
    parser.add_argument("--judge-concurrency", type=int, default=16,
                        help="judge requests in flight per endpoint (default 16)")
    parser.add_argument("--judge-max-tokens", type=int, default=512,
                        help="longest judge reply in tokens (default 512; leave room for a thinking judge's "
                             "reasoning, or its replies are cut and counted as unparsable)")
    parser.add_argument("--judge-cache-dir", help="on-disk cache of judge replies (a rerun asks only what is new)")
    parser.add_argument("--judge-processes", type=int, default=1,
                        help="judge client processes (default 1; more when one process's HTTP client is the limit, "
                             "at a few hundred calls/s)")


def make_judge(args, needed_by: str):
    """The judge the `add_judge_arguments` flags describe; an error names the flags `needed_by` lacks."""
    from hubtools.judge import Judge
    missing = [flag for flag, value in (("--judge-model", args.judge_model), ("--judge-base-url", args.judge_base_url))
               if not value]
    if missing:
        raise ValueError(f"{needed_by} needs {' and '.join(missing)}")
    return Judge(args.judge_model, args.judge_base_url, concurrency=args.judge_concurrency,
                 max_tokens=args.judge_max_tokens, cache_dir=args.judge_cache_dir, processes=args.judge_processes)


def model_and_revisions(args) -> tuple[str, list[str]]:
    """`--model REPO@REV` is `--model REPO --revisions REV`; no revision means main."""
    model, revisions = args.model, args.revisions
    if "@" in model and not Path(model).exists():
        model, revision = model.split("@", 1)
        if revisions:
            raise ValueError(f"--model {args.model} names a revision: leave out --revisions, or the @{revision}")
        revisions = [revision]
    return model, revisions or ["main"]


def generator_spec(args) -> dict:
    """The generator options given on the command line (the rest are each backend's defaults)."""
    return {k: v for k, v in (("backend", args.backend), ("base_url", args.base_url),
                              ("batch_size", args.batch_size)) if v is not None}


def generator_for(spec: dict, model: str, revision: str | None):
    """A generator for exactly `revision` of `model`, on any backend: local ones load that revision; a
    server is asked for `model@revision` and must answer as it, or eval stops before any card is
    written (OpenAIGenerator). A local folder has no revisions."""
    from hubtools.generation import make_generator
    from hubtools.models import resolve_model
    local = Path(resolve_model(model)).is_dir()
    return make_generator({**spec, "model": model, "revision": None if local else revision})


def has_card(model: str) -> bool:
    """A Hub repo has cards to write into; a local folder (or the packaged model) has not."""
    from hubtools.models import resolve_model
    return not Path(resolve_model(model)).is_dir()


def load_eval_rows(dataset: str, split: str, columns: tuple[str, ...], config: str | None = None,
                   limit: int | None = None) -> list[dict]:
    """The rows of `split`, which must have `columns`; an error names what is missing."""
    from datasets import load_dataset, load_from_disk
    ds = load_from_disk(dataset)[split] if Path(dataset).is_dir() else load_dataset(dataset, config, split=split)
    missing = [c for c in columns if c not in ds.column_names]
    if missing:
        raise ValueError(f"dataset {dataset} split {split} has no {missing} column(s) (columns: {ds.column_names})")
    rows = list(ds)[:limit] if limit else list(ds)
    if not rows:
        raise ValueError(f"dataset {dataset} split {split} is empty")
    return rows


def save_results(output_dir: str | Path, results: dict, files: dict[str, bytes]) -> Path:
    """results.json (dataclasses as dicts) and the figures, in `output_dir`."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    plain = {k: asdict(v) if is_dataclass(v) else v for k, v in results.items()}
    (out / "results.json").write_text(json.dumps(plain, indent=2))
    for name, data in files.items():
        (out / name).write_bytes(data)
    return out


def metric_key(name: str) -> str:
    return re.sub(r"\W+", "_", name.strip().lower()).strip("_")


def write_card_results(repo: str, revision: str, *, task: str, task_type: str, metrics: dict[str, float],
                       dataset: str, split: str, section: str, plot: bytes | None = None,
                       metric_config: str | None = None, variant: str | None = None) -> None:
    """Add eval results to the revision's existing card, in one commit: `metrics` as `model-index`
    results (replacing this task's earlier ones for the same dataset/split and `metric_config`) and
    `section` as the card's `## Evaluation: TASK` section (replacing an earlier one), plus the plot as
    `eval_TASK.png`. When `revision` is the newest `step-N`, branch `latest` follows it.

    `metric_config` records how the metrics were measured (each metric's `config`, e.g. which grader).
    A `variant` (e.g. `judge:MODEL`) is a measurement kept beside the task's default one, never in
    its place: its metric names, section and plot carry the variant's name.
    """
    from huggingface_hub import CommitOperationAdd, EvalResult, HfApi, ModelCard, hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    from hubtools.publish import advance_latest
    try:
        card = ModelCard.load(hf_hub_download(repo, "README.md", revision=revision))
    except EntryNotFoundError:
        card = ModelCard("---\n{}\n---\n")
    kept = [r for r in (card.data.eval_results or []) if not (r.dataset_type == dataset and r.dataset_split == split
                                                              and r.metric_type in metrics
                                                              and r.metric_config == metric_config)]
    suffix = f" ({variant})" if variant else ""
    card.data.eval_results = kept + [
        EvalResult(task_type=task_type, dataset_type=dataset, dataset_name=dataset, dataset_split=split,
                   metric_type=name, metric_name=name.replace("_", " ") + suffix, metric_value=value,
                   metric_config=metric_config)
        for name, value in metrics.items()]
    card.data.model_name = card.data.model_name or repo.split("/")[-1]
    key = f"{task}-{metric_key(variant)}" if variant else task
    start, end = f"<!-- hubtools-eval-{key}:start -->", f"<!-- hubtools-eval-{key}:end -->"
    plot_name = f"eval_{key}.png"
    block = (f"{start}\n## Evaluation: {task}{suffix}\n\n{section.strip()}\n"
             + (f"\n![{task}{suffix} results]({plot_name})\n" if plot else "") + end)
    text = card.text
    if start in text and end in text:
        text = text[:text.index(start)] + block + text[text.index(end) + len(end):]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    card.text = text
    ops = [CommitOperationAdd("README.md", str(card).encode())]
    if plot:
        ops.append(CommitOperationAdd(plot_name, plot))
    api = HfApi()
    api.create_commit(repo, operations=ops, revision=revision,
                      commit_message=f"Add {task}{suffix} eval results ({dataset}:{split})")
    advance_latest(api, repo, revision)


def markdown_table(head: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(cells) + " |" for cells in rows]
    return "\n".join(lines)
