"""Money as integer micro-dollars: exact sums, whatever the number of calls."""

from __future__ import annotations

import math

MICROS_PER_USD = 1_000_000


def usd_to_micros(usd: float) -> int:
    """``usd`` in micro-dollars; ValueError for NaN or an infinity (never on the books)."""
    if not math.isfinite(usd):
        raise ValueError(f"not an amount of money: {usd!r}")
    return round(usd * MICROS_PER_USD)


def micros_to_usd(micros: int) -> float:
    return micros / MICROS_PER_USD
