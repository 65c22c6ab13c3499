"""Percentiles and steady-state rates."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (``p`` in 0-100); NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def rate(events: Iterable[tuple[float, float]], start: float, end: float) -> float:
    """Sum of the weights of the ``(time, weight)`` events in ``(start, end]``, per second."""
    if end <= start:
        return math.nan
    return sum(w for t, w in events if start < t <= end) / (end - start)


def kb_each(before_mb: float, after_mb: float, count: int) -> float:
    """The growth from ``before_mb`` to ``after_mb`` per one of ``count`` things, in KB
    (0.0 for none): what a process's RSS grew by per stream it opened."""
    return (after_mb - before_mb) * 1024 / count if count else 0.0


def rounded(value: float, digits: int = 2) -> float | None:
    """``value`` rounded for the JSON line; None (JSON null) when it could not be measured."""
    if value is None or math.isnan(value) or math.isinf(value):
        return None
    return round(value, digits)
