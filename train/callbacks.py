"""Trainer callback that publishes every saved checkpoint as Hub revision `step-N` with its own card.

Why a callback of our own: Trainer's `hub_strategy` pushes to one revision and skips saves while a
push is in flight. Here `on_save` hands the checkpoint to `hubtools.publish.AsyncPublisher` (hard
links, a queue, a background thread), so training goes on at once and no step is dropped.
"""

from __future__ import annotations

import logging
import shutil
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


class HubPublishCallback(TrainerCallback):
    """On each save (rank 0 only): queue `checkpoint-N` for branch `step-N` with a card and reward plot.

    `card_info(step, log_history)` returns the run-info dict for that step's card. With
    `merge_lora(folder) -> Path`, a merged copy of each LoRA checkpoint goes to `step-N-merged`.
    """

    def __init__(self, publisher: AsyncPublisher, card_info: Callable[[int, list[dict]], dict],
                 merge_lora: Callable[[Path], Path] | None = None, overwrite_steps: bool = False):
        self.publisher, self.card_info, self.merge_lora = publisher, card_info, merge_lora
        self.overwrite_steps = overwrite_steps  # a resumed run re-saves steps it may have published before

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.publish(Path(args.output_dir) / f"checkpoint-{state.global_step}", f"step-{state.global_step}",
                         state, overwrite=self.overwrite_steps)

    def publish(self, folder: Path, revision: str, state, *, overwrite: bool = False) -> None:
        """Queue `folder` for `revision` with a card for `state.global_step` and the reward curve so far."""
        step = state.global_step
        info = dict(self.card_info(step, state.log_history), step=step)
        extra = {}
        if any("reward" in h for h in state.log_history):
            extra[REWARD_PLOT] = partial(reward_curve, list(state.log_history))  # drawn by the publisher
            info["reward_plot"] = REWARD_PLOT
        if self.merge_lora is not None:
            merged = self.merge_lora(folder)
            info["loading"] = {"kind": "lora", "merged_revision": f"{revision}-merged"}
            self.publisher.submit(merged, f"{revision}-merged", card_info={**info, "loading": {"kind": "full"}},
                                  extra_files=extra, move_latest=False, overwrite=overwrite)
            shutil.rmtree(merged)  # staged by `submit`; a full copy per save would fill the disk
        elif (folder / "adapter_config.json").exists():
            info["loading"] = {"kind": "lora"}
        self.publisher.submit(folder, revision, card_info=info, extra_files=extra, overwrite=overwrite)
        log.info("queued %s for %s@%s (%d pending)", folder.name, self.publisher.repo_id, revision,
                 self.publisher.pending)
