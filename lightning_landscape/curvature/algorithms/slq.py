r"""The spectral density of a Hessian by stochastic Lanczos quadrature (SLQ), from products only.

For a unit start vector :math:`v`, :math:`m` Lanczos steps give
:math:`T_m = S \operatorname{diag}(\theta) S^\top`, and
:math:`v^\top f(H) v \approx \sum_i w_i f(\theta_i)` with nodes :math:`\theta_i` (Ritz values) and weights
:math:`w_i = S_{1i}^2` (summing to 1). Averaged over Rademacher start vectors :math:`v = z/\sqrt{n}` this
estimates the spectral density :math:`\phi(t) = \frac{1}{n} \sum_i \delta(t - \lambda_i)`, e.g.
:math:`\frac{1}{n}\operatorname{tr} H \approx \overline{\sum_i w_i \theta_i}`. The runs share the public
kernel :func:`~.krylov.lanczos_tridiagonal`, which advances them together
(one batched product per step).
"""

from __future__ import annotations

import torch

from lightning_landscape.curvature._checks import check_int
from lightning_landscape.curvature._inputs import make_generator
from lightning_landscape.curvature.algorithms.krylov import lanczos_tridiagonal
from lightning_landscape.curvature.operators.base import LinearOperator, random_vector
from lightning_landscape.curvature.results import SpectralDensity


def slq(op: LinearOperator, *, num_iter: int = 100, num_runs: int = 10, seed: int = 0) -> SpectralDensity:
    """Stochastic Lanczos quadrature on any symmetric operator.

    Each of ``num_runs`` runs starts Lanczos (full reorthogonalization) from a normalized Rademacher
    vector and takes ``min(num_iter, n)`` steps; its nodes are the Ritz values and its weights the squared
    first components of the eigenvectors of the tridiagonal matrix. A run whose Krylov space is invariant
    stops early (its quadrature is exact); its row is padded with zero-weight copies of its last node.

    Args:
        op: a symmetric operator (e.g. a :class:`~.HessianOperator`).
        num_iter: Lanczos steps per run (>= 1), one product each.
        num_runs: independent start vectors (>= 1), advanced together.
        seed: seeds the private generator of the start vectors.

    Raises:
        ValueError: for ``num_iter < 1`` or ``num_runs < 1``.

    Example:
        >>> from lightning_landscape.curvature.operators.base import DenseOperator
        >>> op = DenseOperator(torch.diag(torch.tensor([1.0, 2.0, 3.0, 4.0], dtype=torch.float64)))
        >>> sd = slq(op, num_iter=4, num_runs=3)
        >>> round(sd.moment(1), 6), round(sd.moment(2), 6)  # tr(H)/n and tr(H^2)/n, exact here
        (2.5, 7.5)
    """
    check_int("num_iter", num_iter)
    check_int("num_runs", num_runs)
    gen = make_generator(seed)
    m = min(num_iter, op.num_params)
    start = getattr(op, "num_products", 0)
    V0 = torch.stack([random_vector(op, gen, rademacher=True) for _ in range(num_runs)], dim=1)
    alphas, betas, steps = lanczos_tridiagonal(op, V0, m)
    nodes = torch.zeros(num_runs, m, dtype=torch.float64)
    weights = torch.zeros(num_runs, m, dtype=torch.float64)
    for r in range(num_runs):
        j = int(steps[r])
        T = torch.diag(alphas[r, :j]) + torch.diag(betas[r, : j - 1], 1) + torch.diag(betas[r, : j - 1], -1)
        theta, S = torch.linalg.eigh(T)
        nodes[r, :j] = theta
        weights[r, :j] = S[0, :] ** 2
        nodes[r, j:] = theta[-1]
    return SpectralDensity(nodes, weights, getattr(op, "num_products", 0) - start, op.num_params)


__all__ = ["slq"]
