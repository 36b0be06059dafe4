"""Render Hub model and dataset cards from a run-info dict (schema: examples/grpo_step_card.yaml).

YAML metadata goes through huggingface_hub's CardData classes so the Hub reads it; the Markdown body
comes from sandboxed Jinja templates. Everything from `info` is redacted first and handed to the
templates as data only, never compiled as template code.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from huggingface_hub import (DatasetCard, DatasetCardData, EvalResult, HfApi, ModelCard, ModelCardData,
                             hf_hub_download)
from huggingface_hub.errors import EntryNotFoundError
from jinja2 import FileSystemLoader
from jinja2.sandbox import SandboxedEnvironment

from hubtools.redact import redact, redact_data

MODEL_KEYS = {
    "repo_id", "title", "summary", "license", "pipeline_tag", "library_name", "tags", "datasets",
    "base_model", "base_model_revision", "base_model_description", "algorithm", "algorithm_trainer",
    "algorithm_script", "algorithm_repo", "algorithm_repo_url", "step", "training_reward", "training_loss",
    "revision", "loading", "reward_plot", "loss_plot", "training_length", "task", "dataset",
    "dataset_split", "dataset_description", "reward_description", "reward_components", "judge",
    "judge_serving", "kl_estimator", "kl_beta", "optimizer", "learning_rate", "lr_scheduler",
    "per_device_train_batch_size", "parallelism", "rollout_prompts", "rollout_samples_per_prompt",
    "temperature", "context", "seed", "output_format", "intended_use", "repro_script",
    "repro_script_url", "repro_script_note", "repro_command", "repro_flags", "repro_notes", "notes",
    "eval_results",
}
DATASET_KEYS = {
    "repo_id", "pretty_name", "license", "tags", "task_categories", "description", "sources",
    "build_params", "filter_stats", "skipped", "images", "repro_command",
}
_LISTS = {"tags", "datasets", "reward_components", "repro_flags", "repro_notes", "notes", "eval_results",
          "task_categories", "sources", "images"}
_DICTS = {"loading", "context", "build_params", "skipped"}

_env = SandboxedEnvironment(loader=FileSystemLoader(Path(__file__).parent / "templates"),
                            autoescape=False, trim_blocks=True, lstrip_blocks=True,
                            keep_trailing_newline=True)


def load_run_info(path: str | Path) -> dict:
    """Read a run-info YAML file; it must be a mapping (the error names the file)."""
    data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        raise ValueError(f"{path}: run info must be a YAML mapping, got {type(data).__name__}")
    return data


def _checked(info: dict, keys: set[str], what: str) -> dict:
    """Redact `info` and fill absent keys with None; a misspelt key is an error, not a lost section."""
    if not isinstance(info, dict):
        raise TypeError(f"{what} info must be a dict, got {type(info).__name__}")
    unknown = sorted(set(info) - keys)
    if unknown:
        raise ValueError(f"{what} info: unknown key(s) {unknown}; known keys: {sorted(keys)}")
    for k in keys & info.keys():
        want = list if k in _LISTS else dict if k in _DICTS else None
        if want and info[k] is not None and not isinstance(info[k], want):
            raise ValueError(f"{what} info: {k!r} must be a {want.__name__}, got {type(info[k]).__name__}")
    return dict.fromkeys(keys) | redact_data(info)


def _body(template: str, ctx: dict) -> str:
    return redact(_env.get_template(template).render(**ctx))


def _eval_results(rows: list[dict]) -> list[EvalResult]:
    out = []
    for i, row in enumerate(rows):
        try:
            out.append(EvalResult(**row))
        except TypeError as e:
            raise ValueError(f"eval_results[{i}]: {e} (need task_type, dataset_type, dataset_name, "
                             "metric_type, metric_value)") from None
    return out


def render_model_card(info: dict) -> ModelCard:
    """Model card: Hub metadata (incl. model-index from eval_results) + the training-run body."""
    ctx = _checked(info, MODEL_KEYS, "model card")
    name = (ctx["repo_id"] or "model").split("/")[-1]
    ctx["title"] = ctx["title"] or (f"{name}-step{ctx['step']}" if ctx["step"] is not None else name)
    ctx["reward_components"] = [{"name": None, "weight": None, "description": None} | c
                                for c in ctx["reward_components"] or []]
    loading = ctx["loading"]
    if loading:
        if loading.get("kind") not in ("full", "lora"):
            raise ValueError("model card info: loading.kind must be 'full' or 'lora', "
                             f"got {loading.get('kind')!r}")
        if not ctx["repo_id"]:
            raise ValueError("model card info: 'loading' needs 'repo_id'")
    datasets = ctx["datasets"] or ([ctx["dataset"]] if ctx["dataset"] else None)
    evals = _eval_results(ctx["eval_results"] or [])
    # training_step / training_reward (/ training_loss): extra metadata keys, read by the hub's run view from
    # each step's card
    data = ModelCardData(base_model=ctx["base_model"], datasets=datasets, tags=ctx["tags"],
                         library_name=ctx["library_name"], pipeline_tag=ctx["pipeline_tag"],
                         license=ctx["license"], eval_results=evals or None,
                         model_name=ctx["title"] if evals else None,
                         training_step=ctx["step"], training_reward=ctx["training_reward"],
                         training_loss=ctx["training_loss"])
    return ModelCard(f"---\n{data.to_yaml()}\n---\n{_body('model_card.md.j2', ctx)}")


def render_dataset_card(info: dict, existing: DatasetCard | None = None) -> DatasetCard:
    """Dataset card; metadata keys of `existing` this info does not set (e.g. the `configs` and
    `dataset_info` that `datasets.push_to_hub` wrote) are kept, its body is replaced."""
    ctx = _checked(info, DATASET_KEYS, "dataset card")
    new = {k: ctx[k] for k in ("pretty_name", "license", "tags", "task_categories") if ctx[k] is not None}
    meta = (existing.data.to_dict() if existing else {}) | new
    data = DatasetCardData(**meta)
    return DatasetCard(f"---\n{data.to_yaml()}\n---\n{_body('dataset_card.md.j2', ctx)}")


def push_dataset_card(repo_id: str, info: dict, token: str | None = None,
                      revision: str | None = None) -> DatasetCard:
    """Load the dataset repo's README.md, merge, push; `parent_commit` makes a concurrent edit
    fail the push instead of being overwritten."""
    sha = HfApi(token=token).repo_info(repo_id, repo_type="dataset", revision=revision).sha
    existing = None
    if sha:  # None only for a repo without commits
        try:
            path = hf_hub_download(repo_id, "README.md", repo_type="dataset", revision=sha, token=token)
            existing = DatasetCard.load(path)
        except EntryNotFoundError:
            pass
    card = render_dataset_card(info | {"repo_id": repo_id}, existing)
    card.push_to_hub(repo_id, token=token, revision=revision, parent_commit=sha,
                     commit_message="Update dataset card")
    return card
