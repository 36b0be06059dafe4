"""Hub model and dataset cards rendered from run-info dicts (see examples/grpo_step_card.yaml)."""

import hubtools  # noqa: F401,E402  (Xet off for a local endpoint, before any HF import)

from model_cards.render import load_run_info, push_dataset_card, render_dataset_card, render_model_card

__all__ = ["load_run_info", "push_dataset_card", "render_dataset_card", "render_model_card"]
