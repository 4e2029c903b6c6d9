"""The seed statistics' argument checks name the argument and what is valid."""

from __future__ import annotations

import math

import pytest

from lightning_landscape.multiseed._checks import check_confidence, check_fraction, check_mode, check_scores


def test_each_check_accepts_the_valid_and_names_the_invalid() -> None:
    check_mode("min")
    check_mode("max")
    with pytest.raises(ValueError, match="`mode` must be 'min' or 'max', got 'best'"):
        check_mode("best")
    check_fraction("fraction", 0.0)
    with pytest.raises(ValueError, match=r"`fraction` must be a number in \[0, 1\], got True"):
        check_fraction("fraction", True)
    assert check_confidence("confidence", 0.9) == 0.9
    for bad in (0, 1, 1.5, "x", math.nan):
        with pytest.raises(ValueError, match="`confidence`"):
            check_confidence("confidence", bad)
    assert check_scores("scores", [1, 2.5]) == [1.0, 2.5]
    with pytest.raises(ValueError, match="`scores` must hold finite numbers only"):
        check_scores("scores", [1.0, math.inf])
    with pytest.raises(TypeError, match="`scores` must be a sequence of numbers, got str"):
        check_scores("scores", "12")
