r"""Extreme eigenvalues by power iteration with shifts and deflation (the comparison solver to Lanczos).

A value is accepted on the same guarantee as Lanczos: its measured residual
:math:`\|Hv - \theta v\| \le \mathrm{tol}\,|\theta|` (with the same floor for values that are numerically
zero), so some eigenvalue of :math:`H` lies within ``tol`` relative of it.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lightning_landscape.curvature._checks import DEFAULT_TOL
from lightning_landscape.curvature._inputs import make_generator
from lightning_landscape.curvature.algorithms._eigen import (
    Which,
    check_eigen_args,
    warm_start_vector,
    zero_floor,
)
from lightning_landscape.curvature.operators.base import LinearOperator, random_vector
from lightning_landscape.curvature.results import EigenResult

_POWER_MAX_ITER = 1000


def _power_one(
    op: LinearOperator,
    shift: float,
    sign: float,
    found: list[Tensor],
    tol: float,
    max_iter: int,
    gen: torch.Generator,
    scale: float,
    start: Tensor | None = None,
) -> tuple[float, Tensor, bool, float]:
    """Dominant eigenpair of ``sign * H + shift * I`` on the complement of ``found``.

    Returns H's value, the vector, whether it converged and its residual :math:`\\|Hv - \theta v\\|`.
    """
    basis = torch.stack(found) if found else None

    def project(x: Tensor) -> Tensor:
        if basis is not None:
            x = x - basis.T @ (basis @ x)
        return x / torch.linalg.vector_norm(x)

    v = project(random_vector(op, gen) if start is None else start)
    theta, residual = 0.0, float("inf")
    floor = zero_floor(op.dtype)
    for _ in range(max_iter):
        hv = op.matvec(v)
        theta = float(torch.dot(hv, v))
        residual = float(torch.linalg.vector_norm(_project_raw(hv - theta * v, basis)))
        if residual <= tol * max(abs(theta), floor * max(scale, abs(theta))):
            return theta, v, True, residual
        v = project(sign * hv + shift * v)
    return theta, v, False, residual


def _project_raw(x: Tensor, basis: Tensor | None) -> Tensor:
    """``x`` minus its component in the span of the (orthonormal) rows of ``basis``."""
    if basis is None:
        return x
    return x - basis.T @ (basis @ x)


_Found = tuple[list[float], list[Tensor], list[bool], list[float]]


def power_iteration(
    op: LinearOperator,
    *,
    k: int = 1,
    which: Which = "largest",
    tol: float = DEFAULT_TOL,
    max_iter: int | None = None,
    seed: int = 0,
    return_eigenvectors: bool = False,
    v0: Tensor | None = None,
) -> EigenResult:
    """Extreme eigenvalues by power iteration with deflation (for comparison with Lanczos).

    A first run finds the dominant eigenvalue :math:`\\lambda_d` (largest magnitude) and so the spectral
    radius :math:`\rho = |\\lambda_d|`. The algebraically largest values are then the dominant ones of
    :math:`H + \rho I` and the smallest those of :math:`\rho I - H`; each is found in turn on the
    orthogonal complement of those already found. A value is accepted when
    :math:`\\|Hv - \theta v\\| \\le \\mathrm{tol}\\,|\theta|` (the same guarantee as Lanczos).

    Args:
        op: the operator.
        k: how many eigenvalues at each wanted end.
        which: ``"largest"``, ``"smallest"`` or ``"both"``.
        tol: relative tolerance per eigenvalue.
        max_iter: the most iterations per eigenvalue (default 1000).
        seed: seeds the private generator of the start vectors.
        return_eigenvectors: also return the eigenvectors.
        v0: warm start, as in :func:`lanczos` (the normalized sum of its unit rows plus a small seeded random
            part): it starts the dominant run and the first run at each wanted end (power iteration on
            :math:`\rho I - H` damps the top components of a vector that holds both ends); runs deflated
            against values already found start at random. ``None``: all start at random.

    Returns:
        An :class:`EigenResult` whose ``residuals`` are the measured :math:`\\|Hv - \theta v\\|`.

    Raises:
        TypeError: if ``v0`` is not a tensor.
        ValueError: for ``k`` not in ``1..n-1``, ``tol <= 0``, a bad ``which`` or ``max_iter``, or a ``v0``
            with the wrong shape, non-finite entries, a zero row or rows that cancel.

    Example:
        >>> from lightning_landscape.curvature.operators.base import DenseOperator
        >>> op = DenseOperator(torch.diag(torch.tensor([3.0, 1.0, -2.0], dtype=torch.float64)))
        >>> res = power_iteration(op, k=1, which="both", tol=1e-6)
        >>> round(float(res.eigenvalues[0]), 4), round(float(res.smallest[0]), 4), res.converged
        (3.0, -2.0, True)
    """
    check_eigen_args(op.num_params, k, which, tol, max_iter, v0)
    iters = _POWER_MAX_ITER if max_iter is None else max_iter
    gen = make_generator(seed)
    start = getattr(op, "num_products", 0)
    first = None if v0 is None else warm_start_vector(op, v0, gen)
    lam_d, v_d, ok_d, res_d = _power_one(op, 0.0, 1.0, [], tol, iters, gen, 0.0, first)
    rho = abs(lam_d)

    def end(sign: float) -> _Found:
        values: list[float] = []
        vectors: list[Tensor] = []
        oks: list[bool] = []
        residuals: list[float] = []
        if ok_d and sign * lam_d > 0:
            values.append(lam_d)
            vectors.append(v_d)
            oks.append(True)
            residuals.append(res_d)
        while len(values) < k:
            lam, v, ok, res = _power_one(
                op, rho, sign, vectors, tol, iters, gen, rho, None if vectors else first
            )
            values.append(lam)
            vectors.append(v)
            oks.append(ok)
            residuals.append(res)
        return values, vectors, oks, residuals

    def pack(found: _Found, descending: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        values, vectors, oks, residuals = found
        order = sorted(range(len(values)), key=lambda i: values[i], reverse=descending)
        return (
            torch.tensor([values[i] for i in order], dtype=torch.float64),
            torch.stack([vectors[i] for i in order]),
            torch.tensor([oks[i] for i in order], dtype=torch.bool),
            torch.tensor([residuals[i] for i in order], dtype=torch.float64),
        )

    top = pack(end(1.0), True) if which in ("largest", "both") else None
    bottom = pack(end(-1.0), False) if which in ("smallest", "both") else None
    num_products = getattr(op, "num_products", 0) - start
    main, other = (bottom, None) if top is None else (top, bottom)
    assert main is not None
    converged = ok_d and bool(main[2].all()) and (other is None or bool(other[2].all()))
    return EigenResult(
        eigenvalues=main[0],
        smallest=None if other is None else other[0],
        eigenvectors=main[1] if return_eigenvectors else None,
        smallest_eigenvectors=other[1] if return_eigenvectors and other is not None else None,
        num_products=num_products,
        converged=converged,
        backend="power",
        residuals=main[3],
        value_converged=main[2],
        smallest_residuals=None if other is None else other[3],
        smallest_converged=None if other is None else other[2],
    )


__all__ = ["power_iteration"]
