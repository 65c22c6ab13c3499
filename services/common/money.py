"""Money as integer micro-dollars: exact sums, whatever the number of calls."""

from __future__ import annotations

MICROS_PER_USD = 1_000_000


def usd_to_micros(usd: float) -> int:
    return round(usd * MICROS_PER_USD)


def micros_to_usd(micros: int) -> float:
    return micros / MICROS_PER_USD
