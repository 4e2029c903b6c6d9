"""The argument checks of the seed statistics (selection, bands, noise floor, halving), in one format."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any


def check_mode(mode: Any) -> None:
    if mode not in ("min", "max"):
        raise ValueError(f"`mode` must be 'min' or 'max', got {mode!r}")


def check_fraction(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise ValueError(f"`{name}` must be a number in [0, 1], got {value!r}")


def check_confidence(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
        raise ValueError(f"`{name}` must be a number in (0, 1), e.g. 0.9, got {value!r}")
    return float(value)


def check_scores(name: str, values: Any) -> list[float]:
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise TypeError(f"`{name}` must be a sequence of numbers, got {type(values).__name__}")
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ValueError(f"`{name}` must hold finite numbers only, got {v!r} in {list(values)!r}")
        out.append(float(v))
    return out
