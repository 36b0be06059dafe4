"""What the training scripts (train/grpo.py, train/sft.py) share: script arguments for the dataset, task,
publishing and cards; run setup (packaged model, base-model revision, resume from a Hub revision);
the card facts every step card carries (code version, base model, reproduction command); and training
with every saved checkpoint published as Hub revision `step-N`.

Why one module: each algorithm's script keeps only its own trainer, arguments and card facts, so a
fix to publishing or to the reproduction section reaches every run.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import re
import shlex
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from hubtools import PROJECT as ROOT  # cards name paths relative to the project
from hubtools.redact import portable_path, redact_argv

log = logging.getLogger("hubtools.train")
_HUB_REV = re.compile(r"^(?P<repo>[\w.-]+/[\w.-]+)@(?P<rev>.+)$")


@dataclass
class TrainScriptArguments:
    """Script arguments of every training script (each adds its own in a subclass)."""
    dataset_name: str = field(default="", metadata={"help": "Hub dataset repo or local folder (save_to_disk)"})
    dataset_config: str | None = field(default=None, metadata={"help": "dataset config name"})
    dataset_train_split: str = field(default="train", metadata={"help": "split to train on"})
    task: str = field(default="factuality", metadata={"help": "task (selects the output format text in cards)"})
    publish_repo: str | None = field(default=None, metadata={
        "help": "Hub model repo: each checkpoint goes to branch step-N with its card, the final model to main"})
    publish_private: bool = field(default=False, metadata={"help": "create the publish repo private"})
    publish_optimizer_states: bool = field(default=False, metadata={
        "help": "also publish optimizer/scheduler/RNG states (exact resume from a Hub revision)"})
    publish_merged: bool = field(default=False, metadata={"help": "LoRA: also publish merged weights at step-N-merged"})
    card_notes: list[str] = field(default_factory=list, metadata={"help": "known notes for every card"})
    card_license: str = field(default="apache-2.0", metadata={"help": "license in the model cards"})
    intended_use: str | None = field(default=None, metadata={"help": "intended-use text for the cards"})
    base_model_description: str | None = field(default=None, metadata={
        "help": "how the base model was made, for the cards (e.g. 'SFT on rubric-grounded refiner data')"})


# ---------------------------------------------------------------------------------------- setup


def setup(script_args, training_args, model_args) -> str:
    """Logging; the packaged model's folder for `smollm2`; `model_revision` into the trainer's model
    loading (TRL reads the revision from `model_init_kwargs` only, for the model and its tokenizer);
    `--resume_from_checkpoint REPO@REV` downloaded once, the other ranks waiting. Returns what the
    trainer loads: the model's name, or for a Hub revision that revision's files, downloaded once —
    TRL 1.16 infers the architecture from the config on the default branch whatever the revision,
    and `main` of a LoRA run holds adapters, no config."""
    from accelerate import PartialState

    from hubtools.models import resolve_model
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("hubtools").setLevel(logging.INFO)
    model_args.model_name_or_path = resolve_model(model_args.model_name_or_path)
    if not script_args.dataset_name:
        raise ValueError("set dataset_name in the recipe (a Hub dataset repo or a local folder)")
    kwargs = dict(training_args.model_init_kwargs or {})
    if kwargs.get("revision", model_args.model_revision) != model_args.model_revision:
        raise ValueError(f"model_init_kwargs.revision {kwargs['revision']!r} differs from model_revision "
                         f"{model_args.model_revision!r}: set the base model's revision once, with model_revision")
    training_args.model_init_kwargs = kwargs | {"revision": model_args.model_revision}
    with PartialState().main_process_first():  # one download, then the other ranks find it
        training_args.resume_from_checkpoint = resolve_resume(training_args.resume_from_checkpoint,
                                                              training_args.output_dir)
        if revision := base_revision(model_args):
            from huggingface_hub import snapshot_download
            return snapshot_download(model_args.model_name_or_path, revision=revision)
    return model_args.model_name_or_path


def peft_config(model_args):
    """TRL's LoRA config from `use_peft` & co., pointing at the base model's revision, so that
    `AutoPeftModelForCausalLM` loads the adapters onto the revision they were trained on."""
    from trl import get_peft_config
    config = get_peft_config(model_args)
    if config is not None and base_revision(model_args):
        config.revision = model_args.model_revision
    return config


def resolve_resume(value: str | None, output_dir: str) -> str | None:
    """A Hub revision `REPO@REV` is downloaded next to the run; a local folder is used as is."""
    if not value or value in ("true", "True") or os.path.isdir(value):
        return value
    m = _HUB_REV.match(value)
    if not m:
        raise ValueError(f"--resume_from_checkpoint {value!r}: not a folder, and not REPO@REVISION")
    from huggingface_hub import snapshot_download
    local = Path(output_dir) / f"resume-{m['rev']}"
    snapshot_download(m["repo"], revision=m["rev"], local_dir=local)
    if not (local / "trainer_state.json").exists():
        raise ValueError(f"{value} has no trainer_state.json: it is not a training checkpoint")
    return str(local)


def load_train_dataset(args: TrainScriptArguments):
    from datasets import load_dataset, load_from_disk
    if os.path.isdir(args.dataset_name) and (Path(args.dataset_name) / "dataset_dict.json").exists():
        ds = load_from_disk(args.dataset_name)
    else:
        ds = load_dataset(args.dataset_name, args.dataset_config)
    if args.dataset_train_split not in ds:
        raise ValueError(f"dataset {args.dataset_name} has no split {args.dataset_train_split!r} "
                         f"(splits: {list(ds)})")
    return ds[args.dataset_train_split]


def drop_long_rows(dataset, model: str, revision: str, max_tokens: int | None, *, flag: str,
                   with_completion: bool = False):
    """(rows that fit in `max_tokens` of `model`'s tokenizer, how many were dropped): the prompt as the
    policy sees it (with the generation prompt), or with `with_completion` the whole prompt +
    completion conversation. A row is left out whole, never cut: a cut prompt loses the tool output
    an answer must cite, a cut completion teaches the model to stop mid-answer without its end token."""
    if not max_tokens:
        return dataset, 0
    from transformers import AutoTokenizer
    tokenizer = AutoTokenizer.from_pretrained(model, revision=revision)

    def length(row) -> int:
        prompt = row["prompt"]
        if with_completion:  # conversational prompt and completion (train/sft.py makes them so)
            return len(tokenizer.apply_chat_template(prompt + row["completion"], tokenize=True, return_dict=False))
        if isinstance(prompt, list):  # conversational
            return len(tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True,
                                                     return_dict=False))
        return len(tokenizer(prompt)["input_ids"])

    kept = dataset.filter(lambda row: length(row) <= max_tokens)
    dropped = len(dataset) - len(kept)
    if dropped:
        what = "prompt + completion" if with_completion else "prompt"
        log.warning("dropped %d of %d training rows whose %s is over %s=%d tokens",
                    dropped, len(dataset), what, flag, max_tokens)
    return kept, dropped


# ---------------------------------------------------------------------------------------- card facts


def code_version() -> tuple[str, str, bool]:
    """(hubtools version, git commit, dirty tree) of the code that runs: which code a card's command
    needs. The commit is "unknown" outside a git checkout of this project; never fails."""
    try:
        version = importlib.metadata.version("hubtools")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"

    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, timeout=30,
                              check=True).stdout.strip()
    try:
        if Path(git("rev-parse", "--show-toplevel")).resolve() == ROOT:  # not a repo that merely encloses it
            return version, git("rev-parse", "HEAD"), bool(git("status", "--porcelain", "--untracked-files=no"))
    except (OSError, subprocess.SubprocessError):
        pass
    return version, "unknown", False


def hub_id(name: str) -> str | None:
    """The Hub id a model or dataset can be fetched by elsewhere: the packaged SmolLM2's local folder is
    its Hub repo; any other local folder (or absolute path) has none."""
    from hubtools.models import SMOLLM2_REPO, smollm2_cache_dir
    if Path(name).resolve() == smollm2_cache_dir().resolve():
        return SMOLLM2_REPO
    return None if os.path.isdir(name) or os.path.isabs(name) else name


def name_the_base(trainer, model_args, model_path: str) -> None:
    """LoRA adapters record the base model they train on, and when `setup` handed the trainer a downloaded
    revision that is a folder of this machine: record the Hub id instead (the revision is recorded by
    `peft_config`), so the published adapters load anywhere."""
    if model_path != model_args.model_name_or_path:
        for config in getattr(trainer.model, "peft_config", {}).values():
            config.base_model_name_or_path = model_args.model_name_or_path


def require_rows(dataset, script_args, why: str) -> None:
    """Stop before loading any model when filtering left no training row; `why` says what was left out."""
    if not len(dataset):
        raise ValueError(f"no training rows left in {script_args.dataset_name} ({script_args.dataset_train_split}): "
                         f"{why}")


def base_revision(model_args) -> str | None:
    """The base model's Hub revision when it is not `main` (e.g. `step-2` of an SFT run), else None."""
    if hub_id(model_args.model_name_or_path) and model_args.model_revision not in (None, "", "main"):
        return model_args.model_revision
    return None


def _portable(key: str, value: str) -> tuple[str, str | None]:
    """A flag value as it works on another machine, plus a note when it cannot: a path of this machine
    becomes project-relative, `runs/<name>` (output_dir) or a `path/to/<name>` placeholder (noted)."""
    if key in ("model_name_or_path", "dataset_name"):
        if hub := hub_id(value):
            return hub, None
        name = Path(value).name
        return f"path/to/{name}", f"`--{key}` was a local folder (`{name}`), not a Hub repo: pass your copy."
    shown = portable_path(value, "runs" if key == "output_dir" else "path/to")
    if shown != value and shown.startswith("path/to/"):
        return shown, f"`--{key}` was a local path (`{Path(value).name}`) of the training machine: pass yours."
    return shown, None


def _flags(tokens: list[str]) -> dict[str, list[str]]:
    """`--key value...` / `--key=value` tokens → {key: values}; a later key overrides an earlier one."""
    flags: dict[str, list[str]] = {}
    key = None
    for token in tokens:
        if token.startswith("--"):
            key, _, value = token[2:].partition("=")
            flags[key] = [value] if value else []
        elif key is not None:
            flags[key].append(token)
    return flags


def reproduction(argv: list[str], script: str) -> dict:
    """The card's command (`accelerate launch <script>`, script relative to the project) and exact flags
    (recipe keys overridden by the CLI's) in a form that reruns on another machine: recipe path relative
    to the project, Hub ids, no local paths, no secrets."""
    import yaml
    cli = list(argv)
    recipe, recipe_tokens = None, []
    if "--config" in cli:
        i = cli.index("--config")
        recipe = Path(cli[i + 1]).resolve()
        del cli[i:i + 2]
        for key, value in (yaml.safe_load(recipe.read_text()) or {}).items():
            values = value if isinstance(value, list) else [value]
            recipe_tokens += [f"--{key}", *(str(v).lower() if isinstance(v, bool) else str(v) for v in values)]
    notes: list[str] = []

    def portable(tokens: list[str]) -> dict[str, list[str]]:
        flags = _flags(redact_argv(tokens))
        for key, values in flags.items():
            if len(values) == 1:
                values[0], note = _portable(key, values[0])
                if note and note not in notes:
                    notes.append(note)
        return flags

    merged, overrides = portable(recipe_tokens + cli), portable(cli)
    if recipe is None:
        shown = overrides
    elif recipe.is_relative_to(ROOT):
        shown = {"config": [recipe.relative_to(ROOT).as_posix()]} | overrides
    else:
        shown = merged
        notes.append(f"The recipe `{recipe.name}` is not part of hubtools: all its keys are spelled out as flags.")

    def line(key: str, values: list[str]) -> str:
        return " ".join([f"--{key}", *map(shlex.quote, values)])
    command = " \\\n    ".join([f"accelerate launch {script}", *(line(k, v) for k, v in shown.items())])
    return {"repro_command": command, "repro_flags": [line(k, v) for k, v in merged.items()], "repro_notes": notes}


def _plain(value) -> str:
    """Enum members (optimizer, scheduler) as their plain value."""
    return str(getattr(value, "value", value))


def card_info(script_args, training_args, model_args, world_size: int, argv: list[str], *, algorithm: str,
              trainer: str, script: str, notes: list[str]) -> dict:
    """The step-card facts every training script's cards carry (model_cards keys): base model (repo and
    revision), algorithm and code version, task, dataset, optimizer, batch, parallelism, seed, output
    format, LoRA, reproduction. `notes` (the algorithm's own) follow the recipe's `card_notes`. Each
    script adds its algorithm's facts (reward, rollouts, length, …) to the returned dict."""
    from hubtools.tasks import get_task
    task = get_task(script_args.task)
    base_id = hub_id(model_args.model_name_or_path)  # None: a local folder, kept out of `base_model`
    lora = model_args.use_peft
    notes = list(script_args.card_notes) + list(notes)
    if lora:
        notes.append(f"LoRA adapters: r={model_args.lora_r}, alpha={model_args.lora_alpha}, "
                     f"dropout={model_args.lora_dropout}, targets={model_args.lora_target_modules or 'peft default'}.")
    if not script_args.publish_optimizer_states:
        notes.append("Optimizer/scheduler/RNG states are not published: resuming from this revision "
                     "restarts the optimizer (set publish_optimizer_states: true for exact resumes).")
    version, commit, dirty = code_version()
    repro = reproduction(argv, script)
    if dirty:
        repro["repro_notes"].append("The checkout had uncommitted changes: the code that ran may differ from "
                                    "that commit.")
    revision = base_revision(model_args)
    parallel = f"{world_size} process(es)"
    if training_args.deepspeed or os.environ.get("ACCELERATE_USE_DEEPSPEED") == "true":
        parallel += ", DeepSpeed"
    return {
        "summary": f"{Path(base_id or model_args.model_name_or_path).name} trained on {script_args.task}",
        "license": script_args.card_license, "pipeline_tag": "text-generation",
        "library_name": "peft" if lora else "transformers",
        "tags": [algorithm.lower(), "trl", "hubtools", script_args.task] + (["lora"] if lora else []),
        **({"base_model": base_id} if base_id else {}),
        **({"base_model_revision": revision} if revision else {}),
        "algorithm": algorithm, "algorithm_trainer": trainer, "algorithm_script": script,
        "algorithm_repo": f"hubtools {version}" + (f" @ {commit[:7]}" if commit != "unknown" else ""),
        "task": task.description, "dataset_description": task.dataset_description,
        "base_model_description": script_args.base_model_description,
        "dataset": hub_id(script_args.dataset_name), "dataset_split": script_args.dataset_train_split,
        "optimizer": f"{_plain(training_args.optim)}, loss_type {training_args.loss_type}",
        "learning_rate": training_args.learning_rate, "lr_scheduler": _plain(training_args.lr_scheduler_type),
        "per_device_train_batch_size": training_args.per_device_train_batch_size, "parallelism": parallel,
        "seed": training_args.seed, "output_format": task.output_format,
        "intended_use": script_args.intended_use or f"Research checkpoint for studying {algorithm} training "
                                                   "dynamics; not evaluated for production use.",
        "repro_script": script,
        "repro_script_note": f"hubtools {version}, commit " + (f"`{commit}`" if commit != "unknown" else "unknown")
                             + "; run the command from the project root",
        **repro, "notes": notes,
    }


# ---------------------------------------------------------------------------------------- training


def train_and_publish(trainer, script_args, training_args, model_args, card_info: Callable[[int], dict],
                      metric: str) -> dict:
    """Train; with `publish_repo`, rank 0 publishes every saved checkpoint as branch `step-N` with its
    card (`card_info(world_size)` plus `metric` — reward, loss — at that step) while training goes on,
    and the final model to `main`. Even after a crash, every checkpoint already saved still goes out.
    Returns the trainer's train metrics (train_runtime, …)."""
    from train.callbacks import HubPublishCallback
    publisher = None
    if script_args.publish_repo and trainer.accelerator.is_main_process:
        from hubtools.publish import AsyncPublisher
        info = card_info(trainer.accelerator.num_processes)
        publisher = AsyncPublisher(script_args.publish_repo, private=script_args.publish_private,
                                   include_optimizer=script_args.publish_optimizer_states)
        merged = model_args.use_peft and script_args.publish_merged
        callback = HubPublishCallback(publisher, info, metric=metric,
                                      merge_base=model_args.model_name_or_path if merged else None,
                                      merge_revision=model_args.model_revision,
                                      overwrite_steps=bool(training_args.resume_from_checkpoint))
        trainer.add_callback(callback)

    try:
        metrics = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint).metrics
        trainer.save_model(training_args.output_dir)
        if publisher is not None:
            callback.publish(Path(training_args.output_dir), "main", trainer.state, overwrite=True)
    finally:
        if publisher is not None:  # even after a crash, every checkpoint already saved still goes out
            results = publisher.close()  # raises if any failed
            for r in results:
                print(f"published {r.revision}: {r.url}")
    trainer.accelerator.wait_for_everyone()
    return metrics
