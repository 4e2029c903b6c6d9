"""The one argument checker of the curvature core: every message names the argument and what is valid."""

from __future__ import annotations

import math
from typing import Any

#: The default relative tolerance of every eigenvalue solver and monitor (Ritz values converge to it).
DEFAULT_TOL = 1e-3


def check_int(name: str, value: Any, minimum: int = 1, optional: bool = False) -> None:
    """A ``ValueError`` naming ``name`` unless ``value`` is an int >= ``minimum`` (or None if optional).

    Example:
        >>> check_int("k", 0)
        Traceback (most recent call last):
        ...
        ValueError: `k` must be an integer >= 1, got 0.
    """
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        allowed = ("None or " if optional else "") + f"an integer >= {minimum}"
        raise ValueError(f"`{name}` must be {allowed}, got {value!r}.")


def check_positive(name: str, value: Any) -> None:
    """A ``ValueError`` naming ``name`` unless ``value`` is a finite number > 0."""
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ValueError(f"`{name}` must be a finite number > 0, got {value!r}.")


def check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    """A ``ValueError`` naming ``name`` unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise ValueError(f"`{name}` must be one of {choices}, got {value!r}.")


def check_k_tol(k: Any, tol: Any, num_params: int, max_iter: Any = None) -> None:
    """Validate ``k``, ``tol`` and ``max_iter`` against the number of parameters."""
    check_int("k", k)
    if k >= num_params:
        raise ValueError(
            f"`k` must be below the number of trainable parameters ({num_params}): valid 1..{num_params - 1},"
            f" got {k}."
        )
    check_positive("tol", tol)
    check_int("max_iter", max_iter, optional=True)
