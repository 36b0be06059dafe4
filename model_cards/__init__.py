"""Hub model and dataset cards rendered from run-info dicts (see examples/seed004_run.yaml)."""

from model_cards.render import load_run_info, push_dataset_card, render_dataset_card, render_model_card

__all__ = ["load_run_info", "push_dataset_card", "render_dataset_card", "render_model_card"]
