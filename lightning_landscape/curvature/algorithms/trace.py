r"""The trace of a symmetric operator from products only: Hutchinson, Hutch++ and XTrace.

**Hutchinson.** For Rademacher probes :math:`z_j \in \{-1, 1\}^n`, :math:`\mathbb{E}[z^\top H z] =
\operatorname{tr} H`; the estimate is the mean of :math:`z_j^\top H z_j` over :math:`N` probes, with
standard error :math:`s / \sqrt{N}` (:math:`s` the sample standard deviation).

**Hutch++** (Meyer, Musco, Musco and Woodruff, 2021). A third of the budget sketches the range:
:math:`Q = \operatorname{orth}(HS)`; a third gives the exact trace on it,
:math:`\operatorname{tr}(Q^\top H Q)`; the last third is Hutchinson on the complement,
:math:`\frac{1}{N}\sum_j g_j^\top PHP g_j` with :math:`P = I - QQ^\top`. Unbiased; the top of the
spectrum, which dominates Hutchinson's variance, is taken exactly.

**XTrace** (Epperly, Tropp and Webber, 2024). Half the budget gives :math:`Y = H\Omega` for ``m`` test
vectors, half :math:`HQ` for :math:`Q = \operatorname{orth}(Y)`. For each ``i`` the estimate uses the basis
built without :math:`\omega_i` and :math:`\omega_i` itself as the Hutchinson probe on its complement; the
``m`` estimates are exchangeable, their mean is the result and their spread its standard error. Test
vectors are Gaussian normalized to length :math:`\sqrt{n}`, with the paper's correction for that.

Each estimator draws its vectors from a private generator seeded by ``seed`` (the global RNG is never
touched) and applies the operator ``block_size`` vectors at a time
(:func:`~lightning_landscape.curvature.operators.base.apply_block`).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

from lightning_landscape.curvature._checks import check_choice, check_int
from lightning_landscape.curvature._inputs import make_generator
from lightning_landscape.curvature.operators.base import LinearOperator, apply_block, random_vector
from lightning_landscape.curvature.results import TraceResult

DEFAULT_BLOCK = 32
"""Vectors per :meth:`~.HessianOperator.matmat` call in the trace estimators."""

TraceMethod = Literal["hutchinson", "hutchpp", "xtrace"]
TRACE_METHODS = ("hutchinson", "hutchpp", "xtrace")
#: The smallest budget of each method: one probe; a sketch, its product, a probe; two exchangeable estimates.
MIN_BUDGET = {"hutchinson": 1, "hutchpp": 3, "xtrace": 4}


def _result(samples: Tensor, products: int, method: str) -> TraceResult:
    samples = samples.detach().to(device="cpu", dtype=torch.float64)
    count = samples.numel()
    if method == "exact":
        return TraceResult(float(samples.sum()), 0.0, count, products, samples, method)
    std_error = float(samples.std() / math.sqrt(count)) if count > 1 else math.nan
    return TraceResult(float(samples.mean()), std_error, count, products, samples, method)


def _blocks(op: LinearOperator, V: Tensor, block_size: int) -> Tensor:
    return torch.cat([apply_block(op, V[:, i : i + block_size]) for i in range(0, V.shape[1], block_size)], 1)


def _exact(op: LinearOperator, block_size: int) -> TraceResult:
    n = op.num_params
    diag = []
    for i in range(0, n, block_size):
        E = torch.zeros(n, min(block_size, n - i), dtype=op.dtype, device=op.device)
        E[torch.arange(i, i + E.shape[1]), torch.arange(E.shape[1])] = 1
        diag.append(apply_block(op, E)[torch.arange(i, i + E.shape[1]), torch.arange(E.shape[1])])
    return _result(torch.cat(diag), n, "exact")


def _rademacher(op: LinearOperator, gen: torch.Generator, count: int) -> Tensor:
    if count == 0:
        return torch.zeros(op.num_params, 0, dtype=op.dtype, device=op.device)
    return torch.stack([random_vector(op, gen, rademacher=True) for _ in range(count)], dim=1)


def hutchinson(
    op: LinearOperator, *, num_samples: int = 100, seed: int = 0, block_size: int = DEFAULT_BLOCK
) -> TraceResult:
    """Hutchinson's trace estimate with ``num_samples`` Rademacher probes (one product each).

    Args:
        op: a symmetric operator (e.g. a :class:`~.HessianOperator`).
        num_samples: the number of probes (>= 1).
        seed: seeds the private generator of the probes.
        block_size: probes per batched product (>= 1).

    Raises:
        ValueError: for ``num_samples < 1`` or ``block_size < 1``.

    Example:
        >>> from lightning_landscape.curvature.operators.base import DenseOperator
        >>> op = DenseOperator(torch.diag(torch.arange(1.0, 5.0, dtype=torch.float64)))
        >>> res = hutchinson(op, num_samples=8)
        >>> res.trace, res.std_error, res.num_products  # Rademacher probes are exact on a diagonal
        (10.0, 0.0, 8)
    """
    check_int("num_samples", num_samples)
    check_int("block_size", block_size)
    gen = make_generator(seed)
    Z = _rademacher(op, gen, num_samples)
    samples = (Z * _blocks(op, Z, block_size)).sum(0)
    return _result(samples, num_samples, "hutchinson")


def hutchpp(
    op: LinearOperator, *, num_products: int = 99, seed: int = 0, block_size: int = DEFAULT_BLOCK
) -> TraceResult:
    """The Hutch++ trace estimate with ``3 * (num_products // 3)`` products (see the module docstring).

    With a budget of ``n`` or more products the trace is computed exactly from ``n`` unit vectors.

    Args:
        op: a symmetric operator.
        num_products: the product budget (>= 3).
        seed: seeds the private generator of the sketch and probe vectors (Rademacher).
        block_size: vectors per batched product (>= 1).

    Raises:
        ValueError: for ``num_products < 3`` or ``block_size < 1``.

    Example:
        >>> from lightning_landscape.curvature.operators.base import DenseOperator
        >>> A = torch.randn(50, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
        >>> op = DenseOperator(A @ A.T)  # rank 4: the sketch of 10 vectors holds all of it
        >>> res = hutchpp(op, num_products=30)
        >>> abs(res.trace - float((A**2).sum())) < 1e-9, res.num_products
        (True, 30)
    """
    check_int("num_products", num_products, minimum=3)
    check_int("block_size", block_size)
    n = op.num_params
    if num_products >= n:
        return _exact(op, block_size)
    N = num_products // 3
    gen = make_generator(seed)
    S = _rademacher(op, gen, N)
    Q, _ = torch.linalg.qr(_blocks(op, S, block_size))
    low_rank = float((Q * _blocks(op, Q, block_size)).sum())
    G = _rademacher(op, gen, N)
    PG = G - Q @ (Q.T @ G)
    rest = _diag_prod(PG, _blocks(op, PG, block_size))
    return _result(low_rank + rest, 3 * N, "hutchpp")


def _diag_prod(A: Tensor, B: Tensor) -> Tensor:
    """The column-wise dot products of ``A`` and ``B``."""
    return (A * B).sum(0)


def xtrace(
    op: LinearOperator, *, num_products: int = 100, seed: int = 0, block_size: int = DEFAULT_BLOCK
) -> TraceResult:
    """The XTrace estimate with ``2 * (num_products // 2)`` products (see the module docstring).

    With a budget of ``n`` or more products the trace is computed exactly from ``n`` unit vectors.
    When the sketch is rank-deficient (the operator has rank below ``num_products // 2``) the basis holds
    the whole range and the estimate is the exact :math:`\\operatorname{tr}(Q^\\top H Q)`.

    Args:
        op: a symmetric operator.
        num_products: the product budget (>= 4: at least two exchangeable estimates).
        seed: seeds the private generator of the test vectors (normalized Gaussians).
        block_size: vectors per batched product (>= 1).

    Raises:
        ValueError: for ``num_products < 4`` or ``block_size < 1``.

    Example:
        >>> from lightning_landscape.curvature.operators.base import DenseOperator
        >>> A = torch.randn(60, 60, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
        >>> op = DenseOperator(A @ A.T / 60)
        >>> res = xtrace(op, num_products=40)
        >>> abs(res.trace - float((A**2).sum() / 60)) < 4 * res.std_error, res.num_samples
        (True, 20)
    """
    check_int("num_products", num_products, minimum=4)
    check_int("block_size", block_size)
    n = op.num_params
    if num_products >= n:
        return _exact(op, block_size)
    m = num_products // 2
    gen = make_generator(seed)
    Om = torch.randn(m, n, generator=gen, dtype=torch.float64).T.to(device=op.device, dtype=op.dtype)
    Om = math.sqrt(n) * Om / torch.linalg.vector_norm(Om, dim=0, keepdim=True)
    Y = _blocks(op, Om, block_size)
    Q, R = torch.linalg.qr(Y)
    Z = _blocks(op, Q, block_size)
    H = Q.T @ Z
    # Column i of S is the unit vector with Q_i Q_i^T = Q (I - s_i s_i^T) Q^T, Q_i the basis without omega_i.
    S = torch.linalg.inv(R).T
    S = S / torch.linalg.vector_norm(S, dim=0, keepdim=True)
    if not bool(torch.isfinite(S).all()):
        # Y is rank-deficient: Q spans the whole range of H and the trace on it is the trace.
        return _result(torch.full((m,), float(torch.trace(H)), dtype=torch.float64), 2 * m, "xtrace")
    W = Q.T @ Om
    T = Z.T @ Om
    HW = H @ W
    dSW = _diag_prod(S, W)
    dSHS = _diag_prod(S, H @ S)
    dTW = _diag_prod(T, W)
    dWHW = _diag_prod(W, HW)
    dSRmHW = _diag_prod(S, R - HW)
    dTmHRS = _diag_prod(T - H.T @ W, S)
    scale = (n - m + 1) / (n - _diag_prod(W, W) + dSW**2)
    ests = torch.trace(H) - dSHS + (dWHW - dTW + dTmHRS * dSW + dSW**2 * dSHS + dSW * dSRmHW) * scale
    return _result(ests, 2 * m, "xtrace")


def check_trace_args(method: object, num_samples: object) -> None:
    """A ``ValueError`` for an unknown ``method`` or a budget ``num_samples`` below its :data:`MIN_BUDGET`."""
    check_choice("method", method, TRACE_METHODS)
    assert isinstance(method, str)
    check_int("num_samples", num_samples, minimum=MIN_BUDGET[method])


def trace_of(
    op: LinearOperator, *, method: TraceMethod = "hutchinson", num_samples: int = 100, seed: int = 0
) -> TraceResult:
    """The trace of ``op`` by ``method`` with a budget of ``num_samples`` products (one entry for all three).

    Args:
        op: a symmetric operator.
        method: ``"hutchinson"``, ``"hutchpp"`` or ``"xtrace"``.
        num_samples: the product budget (at least 1, 3 and 4 respectively).
        seed: seeds the private generator of the random vectors.

    Raises:
        ValueError: for an unknown ``method`` or a budget below the method's minimum (1, 3, 4).

    Example:
        >>> from lightning_landscape.curvature.operators.base import DenseOperator
        >>> op = DenseOperator(torch.diag(torch.arange(1.0, 5.0, dtype=torch.float64)))
        >>> trace_of(op, method="xtrace", num_samples=4).trace  # a budget of n products is exact
        10.0
    """
    check_trace_args(method, num_samples)
    if method == "hutchinson":
        return hutchinson(op, num_samples=num_samples, seed=seed)
    estimator = hutchpp if method == "hutchpp" else xtrace
    return estimator(op, num_products=num_samples, seed=seed)


__all__ = [
    "DEFAULT_BLOCK",
    "MIN_BUDGET",
    "TRACE_METHODS",
    "TraceMethod",
    "check_trace_args",
    "hutchinson",
    "hutchpp",
    "trace_of",
    "xtrace",
]
