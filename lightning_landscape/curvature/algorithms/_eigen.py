"""What the two eigenvalue solvers (:func:`~.lanczos.lanczos`, :func:`~.power.power_iteration`) share: their
argument check, the warm start and the acceptance test of a value."""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
from torch import Tensor

from lightning_landscape.curvature._checks import check_choice, check_k_tol
from lightning_landscape.curvature.operators.base import LinearOperator, random_vector

Which = Literal["largest", "smallest", "both"]
WHICH = ("largest", "smallest", "both")

# Weight of the random part of a warm start, relative to the unit warm vector. It gives every eigendirection a
# component of about WARM_MIX / sqrt(n) whatever v0 is, so a v0 that is (nearly) an eigenvector of a
# non-extreme eigenvalue, or orthogonal to a top direction that appeared since, still leaves Lanczos a seed to
# grow the extreme directions from (a cold start has 1 / sqrt(n)); and no start is an exact eigenvector, whose
# one-dimensional Krylov space breaks down at the first step (that path works too: a random block follows).
# A good v0 starts with error components of about WARM_MIX instead of 1: a small weight keeps most of the
# saving, a wrong v0 costs about log(1 / WARM_MIX) steps more. The seed alone cannot stop the residual test
# from accepting a wrong eigenvalue early when the spectrum is flat around it (residual ~ WARM_MIX * spread):
# the guarantee comes from `find_copies`, whose block from a random vector on the complement must fail to
# find anything beyond the accepted values before the result stands.
WARM_MIX = 1e-2


def check_eigen_args(num_params: int, k: Any, which: Any, tol: Any, max_iter: Any, v0: Any = None) -> None:
    """The argument check of every eigenvalue entry point (solvers and :func:`~.api.hessian_eigenvalues`).

    Raises:
        TypeError: if ``v0`` is given and not a tensor.
        ValueError: for ``k`` not in ``1..n-1``, ``tol <= 0``, a bad ``max_iter`` or ``which``, or a bad
            ``v0`` (see :func:`check_start_vector`).

    Example:
        >>> check_eigen_args(10, k=10, which="largest", tol=1e-3, max_iter=None)
        Traceback (most recent call last):
        ...
        ValueError: `k` must be below the number of trainable parameters (10): valid 1..9, got 10.
    """
    check_k_tol(k, tol, num_params, max_iter)
    check_choice("which", which, WHICH)
    if v0 is not None:
        check_start_vector(v0, num_params)


def check_start_vector(v0: Any, num_params: int) -> None:
    """Validate a warm start ``v0``: a flat ``[n]`` vector or a ``[j, n]`` block of non-zero finite rows.

    Raises:
        TypeError: if ``v0`` is not a tensor.
        ValueError: for a wrong shape, non-finite entries, a zero row or rows that sum to zero.
    """
    if not isinstance(v0, Tensor):
        raise TypeError(f"`v0` must be None or a tensor of shape [n] or [j, n], got {type(v0).__name__}.")
    shape = tuple(v0.shape)
    if not (
        (v0.dim() == 1 and shape[0] == num_params)
        or (v0.dim() == 2 and shape[0] >= 1 and shape[1] == num_params)
    ):
        raise ValueError(
            f"`v0` must have shape [n] or [j, n] with n = {num_params} (the number of trainable parameters), "
            f"got {list(shape)}."
        )
    if v0.is_complex() or not v0.is_floating_point():
        raise ValueError(f"`v0` must be a real floating-point tensor, got dtype {v0.dtype}.")
    if not bool(torch.isfinite(v0).all()):
        raise ValueError("`v0` must be finite, got NaN or infinite entries.")
    rows = v0.detach().reshape(-1, num_params)
    norms = torch.linalg.vector_norm(rows, dim=1)
    if bool((norms == 0).any()):
        raise ValueError("`v0` must have non-zero rows, got a zero vector.")
    if rows.shape[0] > 1 and float(torch.linalg.vector_norm((rows / norms[:, None]).sum(0))) <= 1e-6 * len(
        rows
    ):
        raise ValueError(
            "`v0`: the normalized rows sum to zero; pass one of them or vectors that do not cancel."
        )


def warm_start_vector(op: LinearOperator, v0: Tensor, gen: torch.Generator) -> Tensor:
    """The start vector for a warm start: the normalized sum of ``v0``'s unit rows plus a small random part.

    ``v0`` must have passed :func:`check_start_vector`. One Gaussian vector is drawn from ``gen``.
    """
    rows = v0.detach().reshape(-1, op.num_params).to(device=op.device, dtype=op.dtype)
    warm = (rows / torch.linalg.vector_norm(rows, dim=1, keepdim=True)).sum(0)
    warm = warm / torch.linalg.vector_norm(warm)
    noise = random_vector(op, gen)
    return warm + WARM_MIX * noise / torch.linalg.vector_norm(noise)


def zero_floor(dtype: torch.dtype) -> float:
    """Eigenvalues below ``sqrt(eps) * ||H||`` are numerically zero: held to an absolute tolerance."""
    return math.sqrt(torch.finfo(dtype).eps)


def accepted(values: Tensor, bounds: Tensor, tol: float, floor: float, scale: float) -> Tensor:
    """Per value: does its residual bound meet ``tol * max(|value|, floor * scale)``?"""
    return bounds <= tol * torch.clamp(values.abs(), min=floor * scale)


__all__ = [
    "WARM_MIX",
    "WHICH",
    "Which",
    "accepted",
    "check_eigen_args",
    "check_start_vector",
    "warm_start_vector",
    "zero_floor",
]
