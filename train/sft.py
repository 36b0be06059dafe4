"""SFT with TRL's `SFTTrainer`; every saved checkpoint is published as Hub revision `step-N`.

    accelerate launch train/sft.py --config train/recipes/rl_hard_sft.yaml [--flag value ...]

Why SFT before GRPO: a small model that rarely writes the task's output format gives the GRPO rewards
nothing to tell apart; fine-tuned on reference answers first, it starts GRPO writing the format. A
published step is then GRPO's base: `train/grpo.py --model_name_or_path REPO --model_revision step-N`.

The recipe is parsed like train/grpo.py's, by TRL's parser: script arguments (below) + `SFTConfig` +
`ModelConfig` (full or LoRA via `use_peft`); any recipe key can be overridden on the command line. Data:
a `prompt` column of chat messages (as the dataset builders write) and the target in
`completion_column` (text becomes one assistant message, or a list of messages), given to SFTTrainer in
TRL's prompt-completion format, so the loss is on the completion only. Rows without a target, and rows
whose prompt + completion exceed `max_length` tokens, are left out whole (counted in the log and cards).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python train/sft.py` from a checkout

from train import common  # noqa: E402  (its package turns Xet off for a local hub before HF imports)


@dataclass
class ScriptArguments(common.TrainScriptArguments):
    completion_column: str = field(default="completion", metadata={
        "help": "dataset column holding the target: text (one assistant message) or a list of chat messages"})


def _is_messages(value) -> bool:
    return isinstance(value, list) and bool(value) and all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in value)


def prompt_completion(dataset, column: str):
    """(the rows in TRL's conversational prompt-completion format — `prompt` messages, `completion` the
    target as assistant message(s) — and how many rows had no target and were left out). A missing
    column, a prompt that is not chat messages, or a target that is neither text nor messages is an
    error naming it."""
    missing = [c for c in ("prompt", column) if c not in dataset.column_names]
    if missing:
        raise ValueError(f"the SFT dataset has no column {' or '.join(map(repr, missing))} (columns: "
                         f"{dataset.column_names}); it needs `prompt` (chat messages) and the target column "
                         "named by completion_column")

    def convert(row: dict, index: int) -> dict:
        prompt, target = row["prompt"], row[column]
        if not _is_messages(prompt):
            raise ValueError(f"row {index}: `prompt` must be a list of chat messages ({{role, content}}), "
                             f"got {type(prompt).__name__}")
        if target is None or target == [] or (isinstance(target, str) and not target.strip()):
            completion = []  # no target: left out below
        elif isinstance(target, str):
            completion = [{"role": "assistant", "content": target}]
        elif _is_messages(target):
            completion = target
        else:
            raise ValueError(f"row {index}: `{column}` (completion_column) must be text or a list of chat "
                             f"messages, got {type(target).__name__}")
        return {"prompt": prompt, "completion": completion}

    rows = dataset.map(convert, with_indices=True, remove_columns=dataset.column_names, desc="prompt-completion")
    kept = rows.filter(lambda row: bool(row["completion"]))
    dropped = len(rows) - len(kept)
    if dropped:
        common.log.warning("dropped %d of %d training rows without a target in %r", dropped, len(rows), column)
    return kept, dropped


def build_card_info(script_args, training_args, model_args, world_size: int, argv: list[str], *, rows: int,
                    no_target: int = 0, too_long: int = 0) -> dict:
    """Run facts for the step cards: the common ones (train/common.py) plus the data, loss and length."""
    notes = []
    if no_target:
        notes.append(f"{no_target} training row(s) without a target in `{script_args.completion_column}` were "
                     "left out.")
    if too_long:
        notes.append(f"{too_long} training row(s) with prompt + completion over {training_args.max_length} "
                     "tokens were left out.")
    info = common.card_info(script_args, training_args, model_args, world_size, argv, algorithm="SFT",
                            trainer="TRL `SFTTrainer`", script="train/sft.py", notes=notes)
    loss_on = ("the target tokens only" if training_args.completion_only_loss is not False
               else "every token, prompt included")
    accumulation = training_args.gradient_accumulation_steps
    length = (f"`max_steps = {training_args.max_steps}`" if training_args.max_steps > 0
              else f"`num_train_epochs = {training_args.num_train_epochs}`")
    effective = training_args.per_device_train_batch_size * accumulation * world_size
    return info | {
        "dataset_description": f"prompts from the `prompt` column (chat messages); the target, trained as the "
                               f"assistant's reply, from the `{script_args.completion_column}` column; loss on "
                               f"{loss_on}",
        "training_length": f"{length} over {rows} rows, effective batch {effective} "
                           f"({training_args.per_device_train_batch_size} per device × {accumulation} "
                           f"accumulation step(s) × {world_size} process(es))",
        "context": {"max_length": training_args.max_length} if training_args.max_length else None,
    }


def build_trainer(script_args, training_args, model_args, model_path: str):
    """(SFTTrainer, card facts of the data: rows, no_target, too_long) for parsed and set-up arguments;
    `model_path` is what `common.setup` returned."""
    from trl import SFTTrainer
    dataset = common.load_train_dataset(script_args)
    dataset, no_target = prompt_completion(dataset, script_args.completion_column)
    dataset, too_long = common.drop_long_rows(dataset, model_args.model_name_or_path, model_args.model_revision,
                                              training_args.max_length, flag="max_length", with_completion=True)
    common.require_rows(dataset, script_args,
                        f"{no_target} without a target, {too_long} over max_length={training_args.max_length}")
    trainer = SFTTrainer(model=model_path, args=training_args, train_dataset=dataset,
                         peft_config=common.peft_config(model_args))
    common.name_the_base(trainer, model_args, model_path)
    return trainer, {"rows": len(dataset), "no_target": no_target, "too_long": too_long}


def main(argv: list[str] | None = None) -> dict:
    """Train; returns the trainer's train metrics (train_runtime, …)."""
    from trl import ModelConfig, SFTConfig, TrlParser

    argv = sys.argv[1:] if argv is None else argv
    parser = TrlParser((ScriptArguments, SFTConfig, ModelConfig))
    script_args, training_args, model_args = parser.parse_args_and_config(argv)
    model_path = common.setup(script_args, training_args, model_args)
    trainer, data = build_trainer(script_args, training_args, model_args, model_path)
    return common.train_and_publish(
        trainer, script_args, training_args, model_args, metric="loss",
        card_info=lambda world: build_card_info(script_args, trainer.args, model_args, world, argv, **data))


if __name__ == "__main__":
    main()
