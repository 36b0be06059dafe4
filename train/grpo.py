"""GRPO training with task rewards; every saved checkpoint is published as Hub revision `step-N`.

    accelerate launch train/grpo.py --config train/recipes/factuality.yaml [--flag value ...]

The recipe is parsed like open-r1's, by TRL's parser: script arguments (below) + `GRPOConfig` +
`ModelConfig` (full or LoRA via `use_peft`). Any recipe key can be overridden on the command line.
`--resume_from_checkpoint` takes a local folder or a Hub revision as `REPO@REVISION`.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]  # the project: cards name paths relative to it
sys.path.insert(0, str(ROOT))  # `python train/grpo.py` from a checkout

import hubtools  # noqa: E402,F401  (Xet off for a local endpoint, before HF imports)
from hubtools.redact import redact_argv  # noqa: E402

log = logging.getLogger("hubtools.train")
_HUB_REV = re.compile(r"^(?P<repo>[\w.-]+/[\w.-]+)@(?P<rev>.+)$")
@dataclass
class ScriptArguments:
    dataset_name: str = field(default="", metadata={"help": "Hub dataset repo or local folder (save_to_disk)"})
    dataset_config: str | None = field(default=None, metadata={"help": "dataset config name"})
    dataset_train_split: str = field(default="train", metadata={"help": "split to train on"})
    task: str = field(default="factuality", metadata={"help": "task (selects the output format text in cards)"})
    reward_funcs: list[str] = field(default_factory=list, metadata={
        "help": "rewards, summed with reward_weights (names in train/rewards: fact_caution, fact, caution, "
                "boxed_format, rubric, citation, format)"})
    reward_schedule: str | None = field(default=None, metadata={
        "help": "rewards in sequence instead, e.g. 'fact:100,caution' = fact until step 100, then caution"})
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
    max_prompt_length: int | None = field(default=None, metadata={
        "help": "drop training rows whose prompt is longer than this many tokens (counted in the log and cards)"})
    # The LLM judge of the judge-backed rewards (rubric, citation): any OpenAI-compatible server(s).
    judge_model: str | None = field(default=None, metadata={"help": "model name the judge server(s) serve"})
    judge_base_url: list[str] = field(default_factory=list, metadata={
        "help": "OpenAI-compatible judge endpoint(s), e.g. http://node1:8000/v1; several share the load"})
    judge_serving: str = field(default="an OpenAI-compatible endpoint", metadata={
        "help": "how the judge is served, for the cards (e.g. 'local vLLM'); never a URL"})
    judge_concurrency: int = field(default=16, metadata={"help": "judge requests in flight per server"})
    judge_cache_dir: str | None = field(default=None, metadata={"help": "on-disk cache of judge replies"})
    static_rubrics: list[str] = field(default_factory=lambda: ["Citation Discipline", "Off-Query Padding",
                                                               "Wrong-Entity Confabulation"],
                                      metadata={"help": "titles of the static rubric set added to every row's rubrics"})
    instance_rubrics_only: bool = field(default=False, metadata={
        "help": "rubric reward: score only the row's own rubrics (drop the static set from reward and logs)"})


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


def drop_long_prompts(dataset, model: str, max_tokens: int | None):
    """(rows whose prompt fits in `max_tokens` of `model`'s tokenizer, how many were dropped). TRL does not
    truncate prompts, and a cut prompt would lose the tool output the answer must cite, so a longer row
    is left out whole."""
    if not max_tokens:
        return dataset, 0
    from transformers import AutoTokenizer
    tokenizer = AutoTokenizer.from_pretrained(model)

    def length(row) -> int:
        prompt = row["prompt"]
        if isinstance(prompt, list):  # conversational
            return len(tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True))
        return len(tokenizer(prompt)["input_ids"])

    kept = dataset.filter(lambda row: length(row) <= max_tokens)
    dropped = len(dataset) - len(kept)
    if dropped:
        log.warning("dropped %d of %d training rows whose prompt is over max_prompt_length=%d tokens",
                    dropped, len(dataset), max_tokens)
    return kept, dropped


def load_train_dataset(args: ScriptArguments):
    from datasets import load_dataset, load_from_disk
    if os.path.isdir(args.dataset_name) and (Path(args.dataset_name) / "dataset_dict.json").exists():
        ds = load_from_disk(args.dataset_name)
    else:
        ds = load_dataset(args.dataset_name, args.dataset_config)
    if args.dataset_train_split not in ds:
        raise ValueError(f"dataset {args.dataset_name} has no split {args.dataset_train_split!r} "
                         f"(splits: {list(ds)})")
    return ds[args.dataset_train_split]


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


def _portable(key: str, value: str) -> tuple[str, str | None]:
    """A flag value as it works on another machine, plus a note when it cannot: a path of this machine
    becomes project-relative, `runs/<name>` (output_dir) or a `path/to/<name>` placeholder (noted)."""
    if key in ("model_name_or_path", "dataset_name"):
        if hub := hub_id(value):
            return hub, None
        name = Path(value).name
        return f"path/to/{name}", f"`--{key}` was a local folder (`{name}`), not a Hub repo: pass your copy."
    path = Path(value).expanduser()
    if not path.is_absolute():
        return value, None
    if path.resolve().is_relative_to(ROOT):
        return path.resolve().relative_to(ROOT).as_posix(), None
    if key == "output_dir":
        return f"runs/{path.name}", None
    return f"path/to/{path.name}", f"`--{key}` was a local path (`{path.name}`) of the training machine: pass yours."


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


def reproduction(argv: list[str]) -> dict:
    """The card's command and exact flags (recipe keys overridden by the CLI's) in a form that reruns
    on another machine: recipe path relative to the project, Hub ids, no local paths, no secrets."""
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
    command = " \\\n    ".join(["accelerate launch train/grpo.py", *(line(k, v) for k, v in shown.items())])
    return {"repro_command": command, "repro_flags": [line(k, v) for k, v in merged.items()], "repro_notes": notes}


def _plain(value) -> str:
    """Enum members (optimizer, scheduler) as their plain value."""
    return str(getattr(value, "value", value))


def build_card_info(script_args, training_args, model_args, reward_names: list[str], world_size: int,
                    argv: list[str], dropped_long_prompts: int = 0) -> dict:
    """Run facts for the step cards (see examples/grpo_step_card.yaml for the keys)."""
    from hubtools.tasks import get_task
    from train import rewards
    task = get_task(script_args.task)
    base_id = hub_id(model_args.model_name_or_path)  # None: a local folder, kept out of `base_model`
    weights = training_args.reward_weights or [1.0] * len(reward_names)
    lora = model_args.use_peft
    parallel = f"{world_size} process(es)"
    if training_args.deepspeed or os.environ.get("ACCELERATE_USE_DEEPSPEED") == "true":
        parallel += ", DeepSpeed"
    context = {"max_prompt_length": script_args.max_prompt_length,
               "max_completion_length": training_args.max_completion_length,
               "vllm_max_model_length": training_args.vllm_max_model_length if training_args.use_vllm else None}
    context = {k: v for k, v in context.items() if v is not None}
    notes = list(script_args.card_notes)
    if training_args.beta == 0:
        notes.append("No KL penalty (beta = 0), so no reference model was loaded.")
    if dropped_long_prompts:
        notes.append(f"{dropped_long_prompts} training row(s) with prompts over {script_args.max_prompt_length} "
                     "tokens were left out.")
    if "rubric" in reward_names:
        notes.append("Rubric reward: the row's per-instance rubrics only (static set dropped)."
                     if script_args.instance_rubrics_only else
                     f"Rubric reward: the row's per-instance rubrics plus the static set "
                     f"({', '.join(f'`{t}`' for t in script_args.static_rubrics)}).")
    if lora:
        notes.append(f"LoRA adapters: r={model_args.lora_r}, alpha={model_args.lora_alpha}, "
                     f"dropout={model_args.lora_dropout}, targets={model_args.lora_target_modules or 'peft default'}.")
    if not script_args.publish_optimizer_states:
        notes.append("Optimizer/scheduler/RNG states are not published: resuming from this revision "
                     "restarts the optimizer (set publish_optimizer_states: true for exact resumes).")
    version, commit, dirty = code_version()
    repro = reproduction(argv)
    if dirty:
        repro["repro_notes"].append("The checkout had uncommitted changes: the code that ran may differ from "
                                    "that commit.")
    return {
        "summary": f"{Path(base_id or model_args.model_name_or_path).name} trained on {script_args.task}",
        "license": script_args.card_license, "pipeline_tag": "text-generation",
        "library_name": "peft" if lora else "transformers",
        "tags": ["grpo", "trl", "hubtools", script_args.task] + (["lora"] if lora else []),
        **({"base_model": base_id} if base_id else {}),
        "algorithm": "GRPO", "algorithm_trainer": "TRL `GRPOTrainer`", "algorithm_script": "train/grpo.py",
        "algorithm_repo": f"hubtools {version}" + (f" @ {commit[:7]}" if commit != "unknown" else ""),
        "task": task.description, "dataset_description": task.dataset_description,
        "base_model_description": script_args.base_model_description,
        "dataset": hub_id(script_args.dataset_name), "dataset_split": script_args.dataset_train_split,
        "reward_description": "; ".join(f"`{n}`: {task.reward_text(n.split('_then_')[0])}" for n in reward_names)
        if not script_args.reward_schedule else
        f"rewards in sequence (`{script_args.reward_schedule}`): " +
        "; ".join(f"`{s['reward']}`: {task.reward_text(s['reward'])}"
                  for s in rewards.parse_schedule(script_args.reward_schedule)),
        "reward_components": [{"name": n, "weight": w} for n, w in zip(reward_names, weights)],
        **({"judge": script_args.judge_model, "judge_serving": script_args.judge_serving}
           if {"rubric", "citation"} & set(reward_names) else {}),
        **({"kl_estimator": "k3", "kl_beta": training_args.beta} if training_args.beta > 0 else {}),
        "optimizer": f"{_plain(training_args.optim)}, loss_type {training_args.loss_type}",
        "learning_rate": training_args.learning_rate, "lr_scheduler": _plain(training_args.lr_scheduler_type),
        "per_device_train_batch_size": training_args.per_device_train_batch_size,
        "parallelism": parallel,
        "rollout_prompts": training_args.generation_batch_size // training_args.num_generations,
        "rollout_samples_per_prompt": training_args.num_generations,
        "temperature": training_args.temperature, "context": context, "seed": training_args.seed,
        "output_format": task.output_format,
        "intended_use": script_args.intended_use or "Research checkpoint for studying GRPO training dynamics; "
                                                   "not evaluated for production use.",
        "repro_script": "train/grpo.py",
        "repro_script_note": f"hubtools {version}, commit " + (f"`{commit}`" if commit != "unknown" else "unknown")
                             + "; run the command from the project root",
        **repro, "notes": notes,
    }


def main(argv: list[str] | None = None) -> dict:
    """Train; returns the trainer's train metrics (train_runtime, …)."""
    from trl import GRPOConfig, GRPOTrainer, ModelConfig, TrlParser, get_peft_config

    from hubtools.models import resolve_model
    from train.callbacks import HubPublishCallback, reward_summary
    from train.rewards import get_reward_funcs

    argv = sys.argv[1:] if argv is None else argv
    parser = TrlParser((ScriptArguments, GRPOConfig, ModelConfig))
    script_args, training_args, model_args = parser.parse_args_and_config(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("hubtools").setLevel(logging.INFO)
    model_args.model_name_or_path = resolve_model(model_args.model_name_or_path)
    if not script_args.dataset_name:
        raise ValueError("set dataset_name in the recipe (a Hub dataset repo or a local folder)")
    reward_funcs = get_reward_funcs(script_args)
    reward_names = [f.__name__ for f in reward_funcs]
    from accelerate import PartialState
    with PartialState().main_process_first():  # one download, then the other ranks find it
        training_args.resume_from_checkpoint = resolve_resume(training_args.resume_from_checkpoint,
                                                              training_args.output_dir)

    dataset = load_train_dataset(script_args)
    dataset, dropped = drop_long_prompts(dataset, model_args.model_name_or_path, script_args.max_prompt_length)
    trainer = GRPOTrainer(model=model_args.model_name_or_path, reward_funcs=reward_funcs, args=training_args,
                          train_dataset=dataset, peft_config=get_peft_config(model_args))
    world = trainer.accelerator.num_processes
    publisher = None
    if script_args.publish_repo and trainer.accelerator.is_main_process:
        from hubtools.publish import AsyncPublisher
        base_info = build_card_info(script_args, trainer.args, model_args, reward_names, world, argv, dropped)

        def card_info(step: int, history: list[dict]) -> dict:
            info = dict(base_info, notes=list(base_info["notes"]))
            summary = reward_summary(history)
            if summary:
                info["notes"].append(f"Training reward at step {step}: {summary}.")
            return info

        publisher = AsyncPublisher(script_args.publish_repo, private=script_args.publish_private,
                                   include_optimizer=script_args.publish_optimizer_states)
        merge_base = model_args.model_name_or_path if (model_args.use_peft and script_args.publish_merged) else None
        callback = HubPublishCallback(publisher, card_info, merge_base=merge_base,
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


if __name__ == "__main__":
    main()
