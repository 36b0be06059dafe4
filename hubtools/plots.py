"""PNG plots for cards: reward curves, pass-rate histograms, eval breakdowns, trade-off frontiers, gains.

Why one module: every card that shows a figure gets it from here, rendered headless (Agg) to bytes
that go straight into a Hub commit.
"""

from __future__ import annotations

import io
from typing import Sequence


def _figure():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    _figure().close(fig)
    return buf.getvalue()


def line_plot(series: dict[str, tuple[Sequence[float], Sequence[float]]], title: str, xlabel: str,
              ylabel: str) -> bytes:
    """One line per named (x, y) series."""
    plt = _figure()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for name, (xs, ys) in series.items():
        ax.plot(xs, ys, marker="o", markersize=3, label=name)
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    ax.grid(alpha=0.3)
    if len(series) > 1:
        ax.legend(fontsize=8)
    return _png(fig)


def reward_curve(log_history: list[dict]) -> bytes | None:
    """Mean reward (and each reward function's mean) per logged step, from `TrainerState.log_history`."""
    rows = [h for h in log_history if "reward" in h and "step" in h]
    if not rows:
        return None
    keys = ["reward"] + sorted({k for h in rows for k in h if k.startswith("rewards/") and k.endswith("/mean")})
    series = {k: ([h["step"] for h in rows if k in h], [h[k] for h in rows if k in h]) for k in keys}
    return line_plot(series, "Reward during training", "step", "reward")


def histograms(data: dict[str, Sequence[float]], title: str, xlabel: str, bins: int = 10) -> bytes:
    """Overlaid histograms on [0, 1] (e.g. pass rate before and after selection)."""
    plt = _figure()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for name, values in data.items():
        ax.hist(list(values), bins=bins, range=(0, 1), alpha=0.55, label=f"{name} (n={len(values)})")
    ax.set(title=title, xlabel=xlabel, ylabel="questions")
    ax.legend(fontsize=8)
    return _png(fig)


def stacked_bars(rows: dict[str, dict[str, float]], title: str, ylabel: str) -> bytes:
    """One stacked bar per row label (e.g. per revision), segments = the row's categories."""
    plt = _figure()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    labels = list(rows)
    categories = list(next(iter(rows.values())))
    bottom = [0.0] * len(labels)
    for cat in categories:
        values = [rows[label][cat] for label in labels]
        ax.bar(labels, values, bottom=bottom, label=cat)
        bottom = [b + v for b, v in zip(bottom, values)]
    ax.set(title=title, ylabel=ylabel)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1, 1))
    return _png(fig)


def gain_bars(gains: dict[str, float], title: str, xlabel: str) -> bytes:
    """One horizontal bar per label from a zero line, gains green, losses red, none gray (e.g. per GEO method)."""
    plt = _figure()
    labels = list(gains)
    fig, ax = plt.subplots(figsize=(6.5, 0.35 * len(labels) + 1.2))
    ax.barh(range(len(labels)), [gains[k] for k in labels],
            color=["#16a34a" if gains[k] > 0 else "#dc2626" if gains[k] < 0 else "#9ca3af" for k in labels])
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    ax.invert_yaxis()
    ax.axvline(0, color="gray", linewidth=0.8)
    ax.set(title=title, xlabel=xlabel)
    ax.grid(axis="x", alpha=0.3)
    return _png(fig)


def scatter(points: dict[str, tuple[float, float]], title: str, xlabel: str, ylabel: str) -> bytes:
    """Labelled points, with the upper-right Pareto frontier drawn through them."""
    plt = _figure()
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, (x, y) in points.items():
        ax.scatter([x], [y])
        ax.annotate(name, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    frontier, best_y = [], float("-inf")
    for x, y in sorted(points.values(), key=lambda p: (-p[0], -p[1])):
        if y > best_y:
            frontier.append((x, y))
            best_y = y
    if len(frontier) > 1:
        ax.plot(*zip(*sorted(frontier)), linestyle="--", color="gray", label="frontier")
        ax.legend(fontsize=8)
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    ax.grid(alpha=0.3)
    return _png(fig)
