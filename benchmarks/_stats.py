"""What every benchmark prints for a timed quantity: the median and the range over interleaved rounds."""

from __future__ import annotations

import statistics
from collections.abc import Sequence


def spread(values: Sequence[float], fmt: str = ".2f", unit: str = "x") -> str:
    """``"median [min, max]"`` of ``values`` (one per interleaved round), e.g. ``"0.81x [0.77x, 0.86x]"``."""
    if not values:
        return "n/a"
    med, low, high = statistics.median(values), min(values), max(values)
    return f"{med:{fmt}}{unit} [{low:{fmt}}{unit}, {high:{fmt}}{unit}]"


def ratios(numerator: Sequence[float], denominator: Sequence[float]) -> list[float]:
    """Per-round ratios of two paired series (round r of one over round r of the other)."""
    if len(numerator) != len(denominator):
        raise ValueError(f"paired rounds differ in number: {len(numerator)} vs {len(denominator)}")
    return [a / b for a, b in zip(numerator, denominator, strict=True)]
