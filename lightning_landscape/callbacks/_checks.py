"""The one argument checker of the callbacks: the curvature core's checkers, and two more in their format.

Every message reads ``` `name` must be <what is valid>, got <value>.```, the same as the curvature core's,
so a bad ``k`` reads the same whether it reaches a callback or :func:`~lightning_landscape.curvature.lanczos`.
"""

from __future__ import annotations

import math
from typing import Any

from lightning_landscape.curvature._checks import check_choice, check_int, check_positive

__all__ = ["check_choice", "check_float", "check_int", "check_positive", "check_str"]


def check_float(name: str, value: Any, optional: bool = False, positive: bool = False) -> None:
    """A ``ValueError`` naming ``name`` unless ``value`` is a finite number (``> 0`` if ``positive``).

    Example::

        >>> check_float("optimal_risk", float("inf"), optional=True)
        Traceback (most recent call last):
        ...
        ValueError: `optimal_risk` must be None or a finite number, got inf.
    """
    if optional and value is None:
        return
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
    if not ok or (positive and value <= 0):
        allowed = ("None or " if optional else "") + "a finite number" + (" > 0" if positive else "")
        raise ValueError(f"`{name}` must be {allowed}, got {value!r}.")


def check_str(name: str, value: Any, optional: bool = False) -> None:
    """A ``ValueError`` naming ``name`` unless ``value`` is a non-empty str (or None if ``optional``)."""
    if optional and value is None:
        return
    if not isinstance(value, str) or not value:
        allowed = ("None or " if optional else "") + "a non-empty str"
        raise ValueError(f"`{name}` must be {allowed}, got {value!r}.")
