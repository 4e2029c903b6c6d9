"""The callbacks' argument checker: the curvature core's checkers themselves, plus two in the same format."""

from __future__ import annotations

import re

import pytest

from lightning_landscape.callbacks import _checks
from lightning_landscape.curvature import _checks as core


def test_the_shared_checkers_are_the_curvature_cores() -> None:
    for name in ("check_choice", "check_int", "check_positive"):
        assert getattr(_checks, name) is getattr(core, name)


@pytest.mark.parametrize(
    ("value", "kwargs", "message"),
    [
        (float("nan"), {}, "`x` must be a finite number, got nan."),
        (True, {}, "`x` must be a finite number, got True."),
        ("1", {}, "`x` must be a finite number, got '1'."),
        (0.0, {"positive": True}, "`x` must be a finite number > 0, got 0.0."),
        (None, {}, "`x` must be a finite number, got None."),
        (-1, {"optional": True, "positive": True}, "`x` must be None or a finite number > 0, got -1."),
    ],
)
def test_check_float_names_the_argument_and_what_is_valid(value: object, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        _checks.check_float("x", value, **kwargs)


@pytest.mark.parametrize(
    ("value", "kwargs"), [(2, {}), (-3.5, {}), (None, {"optional": True}), (1e-9, {"positive": True})]
)
def test_check_float_accepts_finite_numbers(value: object, kwargs: dict) -> None:
    _checks.check_float("x", value, **kwargs)


@pytest.mark.parametrize(
    ("value", "optional", "message"),
    [
        ("", False, "`s` must be a non-empty str, got ''."),
        (3, False, "`s` must be a non-empty str, got 3."),
        (None, False, "`s` must be a non-empty str, got None."),
        ("", True, "`s` must be None or a non-empty str, got ''."),
    ],
)
def test_check_str(value: object, optional: bool, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        _checks.check_str("s", value, optional=optional)
    _checks.check_str("s", "ok", optional=optional)
    if optional:
        _checks.check_str("s", None, optional=True)
