"""What the reward modules share: TRL's reward logging."""

from __future__ import annotations


def log_to_trl(log_metric, log_extra, metrics: dict[str, float | None], extras: dict[str, list]) -> None:
    """TRL's reward logging, when the caller passes it; metrics without a value are not logged."""
    if log_metric is not None:
        for name, value in metrics.items():
            if value is not None:
                log_metric(name, value)
    if log_extra is not None:
        for column, values in extras.items():
            log_extra(column, values)
