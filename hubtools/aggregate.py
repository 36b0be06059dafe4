"""The mean every eval, builder and reward reports: missing values (None: a failed judge call, an unjudged
point) are left out, never counted as 0, and a mean of nothing is None, never 0."""

from __future__ import annotations

import statistics
from collections.abc import Iterable


def mean(values: Iterable[float | None], digits: int | None = None) -> float | None:
    """Mean of the values that are not None (rounded to `digits` when given); None when there is none."""
    present = [v for v in values if v is not None]
    if not present:
        return None
    m = statistics.fmean(present)
    return m if digits is None else round(m, digits)
