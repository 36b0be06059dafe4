"""Trainer callback that publishes every saved checkpoint as Hub revision `step-N` with its own card.

Why a callback of our own: Trainer's `hub_strategy` pushes to one revision and skips saves while a
push is in flight. Here `on_save` hands the checkpoint to `hubtools.publish.AsyncPublisher` (a
snapshot copy and a queue; a background process uploads), so training goes on at once and no step
is dropped. Even merging LoRA adapters for `step-N-merged` happens in that process. Used by every
training script (train/common.py `train_and_publish`).
"""

from __future__ import annotations

import logging
from functools import partial
from pathlib import Path

from transformers import TrainerCallback

from hubtools.plots import line_plot, reward_curve
from hubtools.publish import AsyncPublisher

log = logging.getLogger("hubtools.train")


def loss_curve(log_history: list[dict]) -> bytes | None:
    """Training loss per logged step, from `TrainerState.log_history`."""
    rows = [h for h in log_history if "loss" in h and "step" in h]
    if not rows:
        return None
    return line_plot({"loss": ([h["step"] for h in rows], [h["loss"] for h in rows])},
                     "Loss during training", "step", "loss")


# The metric a run's step cards lead with → (plot file in the repo, plot function drawn by the publisher).
CURVES = {"reward": ("reward_curve.png", reward_curve), "loss": ("loss_curve.png", loss_curve)}


def metric_summary(log_history: list[dict], metric: str = "reward") -> str | None:
    """'mean reward 0.41 over the last 5 logged steps (first 0.20)' — a line for the card."""
    values = [h[metric] for h in log_history if metric in h]
    if not values:
        return None
    last = values[-5:]
    return (f"mean {metric} {sum(last) / len(last):.3f} over the last {len(last)} logged step(s) "
            f"(first logged: {values[0]:.3f})")


def merge_lora(adapters: Path, out: Path, base_model: str, revision: str | None = None) -> None:
    """Write `adapters` merged into `base_model` at `revision` (full weights + the base's tokenizer) to `out`.

    Module-level so that the publisher process can unpickle it: it runs there, on CPU, not in `on_save`.
    """
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer
    base = AutoModelForCausalLM.from_pretrained(base_model, revision=revision, device_map="cpu")
    PeftModel.from_pretrained(base, adapters).merge_and_unload().save_pretrained(out)
    AutoTokenizer.from_pretrained(base_model, revision=revision).save_pretrained(out)


class HubPublishCallback(TrainerCallback):
    """On each save (rank 0 only): queue `checkpoint-N` for branch `step-N` with a card and metric plot.

    `card_info` is the run-info dict of every card; each step's card adds `metric` ("reward" for GRPO,
    "loss" for SFT) at that step: a note, the metadata key `training_<metric>` and its curve. With
    `merge_base` (the base model's id or path, at `merge_revision`), LoRA checkpoints are also merged
    into it, by the publisher process, and published at `step-N-merged`.
    """

    def __init__(self, publisher: AsyncPublisher, card_info: dict, metric: str = "reward",
                 merge_base: str | None = None, merge_revision: str | None = None, overwrite_steps: bool = False):
        if metric not in CURVES:
            raise ValueError(f"metric {metric!r}: one of {sorted(CURVES)}")
        self.publisher, self.card_info, self.metric = publisher, card_info, metric
        self.merge_base, self.merge_revision = merge_base, merge_revision
        self.overwrite_steps = overwrite_steps  # a resumed run re-saves steps it may have published before

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.publish(Path(args.output_dir) / f"checkpoint-{state.global_step}", f"step-{state.global_step}",
                         state, overwrite=self.overwrite_steps)

    def publish(self, folder: Path, revision: str, state, *, overwrite: bool = False) -> None:
        """Queue `folder` for `revision` with a card for `state.global_step` and the metric's curve so far.

        The card's metadata carries `training_step` and `training_<metric>` (the last logged value):
        the keys the hub's run view reads from each step's card.
        """
        step, metric = state.global_step, self.metric
        info = dict(self.card_info, notes=list(self.card_info.get("notes") or []), step=step)
        summary = metric_summary(state.log_history, metric)
        if summary:
            info["notes"].append(f"Training {metric} at step {step}: {summary}.")
        values = [h[metric] for h in state.log_history if metric in h]
        extra = {}
        if values:
            plot_file, plot = CURVES[metric]
            info[f"training_{metric}"] = float(values[-1])
            extra[plot_file] = partial(plot, list(state.log_history))  # drawn by the publisher
            info[f"{metric}_plot"] = plot_file
        lora = (folder / "adapter_config.json").exists()
        merged = f"{revision}-merged" if lora and self.merge_base else None
        if lora:
            info["loading"] = {"kind": "lora", **({"merged_revision": merged} if merged else {})}
        self.publisher.submit(folder, revision, card_info=info, extra_files=extra, overwrite=overwrite)
        if merged:
            self.publisher.submit(folder, merged, extra_files=extra, overwrite=overwrite, move_latest=False,
                                  card_info={**info, "loading": {"kind": "full"}, "library_name": "transformers"},
                                  transform=partial(merge_lora, base_model=self.merge_base,
                                                    revision=self.merge_revision))
        log.info("queued %s for %s@%s (%d pending)", folder.name, self.publisher.repo_id, revision,
                 self.publisher.pending)
