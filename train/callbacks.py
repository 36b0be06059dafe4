"""Trainer callback that publishes every saved checkpoint as Hub revision `step-N` with its own card.

Why a callback of our own: Trainer's `hub_strategy` pushes to one revision and skips saves while a
push is in flight. Here `on_save` hands the checkpoint to `hubtools.publish.AsyncPublisher` (a
snapshot copy and a queue; a background process uploads), so training goes on at once and no step
is dropped. Even merging LoRA adapters for `step-N-merged` happens in that process.
"""

from __future__ import annotations

import logging
from functools import partial
from pathlib import Path
from typing import Callable

from transformers import TrainerCallback

from hubtools.plots import reward_curve
from hubtools.publish import AsyncPublisher

log = logging.getLogger("hubtools.train")
REWARD_PLOT = "reward_curve.png"


def reward_summary(log_history: list[dict]) -> str | None:
    """'mean reward 0.41 over the last 5 logged steps (first 0.20)' — a line for the card."""
    rewards = [h["reward"] for h in log_history if "reward" in h]
    if not rewards:
        return None
    last = rewards[-5:]
    return (f"mean reward {sum(last) / len(last):.3f} over the last {len(last)} logged step(s) "
            f"(first logged: {rewards[0]:.3f})")


def merge_lora(adapters: Path, out: Path, base_model: str) -> None:
    """Write `adapters` merged into `base_model` (full weights + the base's tokenizer) to `out`.

    Module-level so that the publisher process can unpickle it: it runs there, on CPU, not in `on_save`.
    """
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer
    base = AutoModelForCausalLM.from_pretrained(base_model, device_map="cpu")
    PeftModel.from_pretrained(base, adapters).merge_and_unload().save_pretrained(out)
    AutoTokenizer.from_pretrained(base_model).save_pretrained(out)


class HubPublishCallback(TrainerCallback):
    """On each save (rank 0 only): queue `checkpoint-N` for branch `step-N` with a card and reward plot.

    `card_info(step, log_history)` returns the run-info dict for that step's card. With `merge_base`
    (the base model's id or path), LoRA checkpoints are also merged into it, by the publisher
    process, and published at `step-N-merged`.
    """

    def __init__(self, publisher: AsyncPublisher, card_info: Callable[[int, list[dict]], dict],
                 merge_base: str | None = None, overwrite_steps: bool = False):
        self.publisher, self.card_info, self.merge_base = publisher, card_info, merge_base
        self.overwrite_steps = overwrite_steps  # a resumed run re-saves steps it may have published before

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.publish(Path(args.output_dir) / f"checkpoint-{state.global_step}", f"step-{state.global_step}",
                         state, overwrite=self.overwrite_steps)

    def publish(self, folder: Path, revision: str, state, *, overwrite: bool = False) -> None:
        """Queue `folder` for `revision` with a card for `state.global_step` and the reward curve so far.

        The card's metadata carries `training_step` and `training_reward` (the last logged mean
        reward): the keys the hub's run view reads from each step's card.
        """
        step = state.global_step
        info = dict(self.card_info(step, state.log_history), step=step)
        rewards = [h["reward"] for h in state.log_history if "reward" in h]
        extra = {}
        if rewards:
            info["training_reward"] = float(rewards[-1])
            extra[REWARD_PLOT] = partial(reward_curve, list(state.log_history))  # drawn by the publisher
            info["reward_plot"] = REWARD_PLOT
        lora = (folder / "adapter_config.json").exists()
        merged = f"{revision}-merged" if lora and self.merge_base else None
        if lora:
            info["loading"] = {"kind": "lora", **({"merged_revision": merged} if merged else {})}
        self.publisher.submit(folder, revision, card_info=info, extra_files=extra, overwrite=overwrite)
        if merged:
            self.publisher.submit(folder, merged, extra_files=extra, overwrite=overwrite, move_latest=False,
                                  card_info={**info, "loading": {"kind": "full"}, "library_name": "transformers"},
                                  transform=partial(merge_lora, base_model=self.merge_base))
        log.info("queued %s for %s@%s (%d pending)", folder.name, self.publisher.repo_id, revision,
                 self.publisher.pending)
