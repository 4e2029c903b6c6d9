"""The one argument checker of the callbacks: the curvature core's ``check_int`` and its message format.

Every message reads ``` `name` must be <what is valid>, got <value>.```, the same as the curvature core's,
so a bad ``k`` reads the same whether it reaches a callback or :func:`~lightning_landscape.curvature.lanczos`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from lightning_landscape.curvature.eigen import check_int

__all__ = ["check_choice", "check_float", "check_int", "check_str"]


def check_float(name: str, value: Any, optional: bool = False, positive: bool = False) -> None:
    """A ``ValueError`` naming ``name`` unless ``value`` is a finite number (``> 0`` if ``positive``).

    Example::

        >>> check_float("tol", 0.0, positive=True)
        Traceback (most recent call last):
        ...
        ValueError: `tol` must be a finite number > 0, got 0.0.
    """
    if optional and value is None:
        return
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
    if not ok or (positive and value <= 0):
        allowed = ("None or " if optional else "") + "a finite number" + (" > 0" if positive else "")
        raise ValueError(f"`{name}` must be {allowed}, got {value!r}.")


def check_choice(name: str, value: Any, choices: Sequence[Any]) -> None:
    """A ``ValueError`` naming ``name`` and the valid ``choices`` unless ``value`` is one of them."""
    if value not in choices:
        allowed = ", ".join(repr(c) for c in choices)
        raise ValueError(f"`{name}` must be one of {allowed}, got {value!r}.")


def check_str(name: str, value: Any, optional: bool = False) -> None:
    """A ``ValueError`` naming ``name`` unless ``value`` is a non-empty str (or None if ``optional``)."""
    if optional and value is None:
        return
    if not isinstance(value, str) or not value:
        allowed = ("None or " if optional else "") + "a non-empty str"
        raise ValueError(f"`{name}` must be {allowed}, got {value!r}.")
