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


def exact_micros(micros: int, usd: float) -> int:
    """The exact amount of an API amount given in two forms, a double ``usd`` and its
    ``micros`` twin (the value to compute with): ``micros`` when given (not 0), else
    ``usd`` in micro-dollars. ValueError for a NaN or infinite ``usd`` it falls back to."""
    return micros if micros else usd_to_micros(usd)


def split_micros(total: int, parts: int) -> list[int]:
    """``total`` micro-dollars in ``parts`` exact shares (they add up to ``total``), the
    first ones larger by one where it does not divide evenly."""
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]
