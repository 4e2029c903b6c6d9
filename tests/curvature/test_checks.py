"""The one argument checker of the curvature core: each message names the argument and what is valid."""

from __future__ import annotations

from typing import Any

import pytest

from lightning_landscape.curvature._checks import (
    DEFAULT_TOL,
    check_choice,
    check_int,
    check_k_tol,
    check_positive,
)


def test_default_tolerance() -> None:
    assert DEFAULT_TOL == 1e-3


@pytest.mark.parametrize("value", [0, -3, 2.0, True, "1"])
def test_check_int_refuses(value: Any) -> None:
    with pytest.raises(ValueError, match=rf"`n` must be an integer >= 1, got {value!r}"):
        check_int("n", value)


def test_check_int_accepts_and_optional() -> None:
    check_int("n", 1)
    check_int("n", 0, minimum=0)
    check_int("n", None, optional=True)
    with pytest.raises(ValueError, match=r"`n` must be None or an integer >= 2, got 1"):
        check_int("n", 1, minimum=2, optional=True)


@pytest.mark.parametrize("value", [0, -1.0, float("nan"), float("inf"), True, "1"])
def test_check_positive_refuses(value: Any) -> None:
    with pytest.raises(ValueError, match=r"`x` must be a finite number > 0"):
        check_positive("x", value)


def test_check_choice_and_k_tol() -> None:
    check_choice("c", "a", ("a", "b"))
    with pytest.raises(ValueError, match=r"`c` must be one of \('a', 'b'\), got 'z'"):
        check_choice("c", "z", ("a", "b"))
    check_k_tol(3, 1e-3, 4)
    with pytest.raises(ValueError, match=r"valid 1..3, got 4"):
        check_k_tol(4, 1e-3, 4)
    with pytest.raises(ValueError, match=r"`max_iter` must be None or an integer >= 1, got 0"):
        check_k_tol(1, 1e-3, 4, max_iter=0)
