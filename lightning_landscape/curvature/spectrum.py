r"""The spectral density of a Hessian by stochastic Lanczos quadrature (SLQ), from products only.

For a unit start vector :math:`v`, :math:`m` Lanczos steps give
:math:`T_m = S \operatorname{diag}(\theta) S^\top`, and
:math:`v^\top f(H) v \approx \sum_i w_i f(\theta_i)` with nodes :math:`\theta_i` (Ritz values) and weights
:math:`w_i = S_{1i}^2` (summing to 1). Averaged over Rademacher start vectors :math:`v = z/\sqrt{n}` this
estimates the spectral density :math:`\phi(t) = \frac{1}{n} \sum_i \delta(t - \lambda_i)`, e.g.
:math:`\frac{1}{n}\operatorname{tr} H \approx \overline{\sum_i w_i \theta_i}`. The runs share the public
kernel :func:`~lightning_landscape.curvature.krylov.lanczos_tridiagonal`, which advances them together
(one batched product per step).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from lightning_landscape.curvature._checks import check_int, check_positive
from lightning_landscape.curvature._inputs import make_generator
from lightning_landscape.curvature.krylov import LinearOperator, lanczos_tridiagonal, random_vector


@dataclass(frozen=True)
class SpectralDensity:
    """Stochastic Lanczos quadrature of a Hessian's spectrum.

    Attributes:
        nodes: ``[num_runs, m]`` Ritz values of each run (float64, CPU).
        weights: ``[num_runs, m]`` their quadrature weights; each row sums to 1 (a run that ended early
            on an invariant subspace is padded with zero-weight copies of its last node).
        num_products: Hessian-vector products spent.
        num_params: the dimension :math:`n` of the Hessian.
    """

    nodes: Tensor
    weights: Tensor
    num_products: int
    num_params: int

    def moment(self, order: int) -> float:
        """The estimate of :math:`\\frac{1}{n}\\operatorname{tr} H^{order}` (the mean over runs)."""
        return float((self.weights * self.nodes**order).sum(dim=1).mean())

    def on_grid(
        self, grid: Tensor | None = None, num_points: int = 1000, sigma: float | None = None
    ) -> tuple[Tensor, Tensor]:
        """A smoothed density: the weighted nodes, averaged over runs, each convolved with a Gaussian.

        .. math::

            \\hat\\phi(t) = \\frac{1}{R} \\sum_{r=1}^{R} \\sum_i w_{ri}\\,
            \\frac{1}{\\sigma\\sqrt{2\\pi}} e^{-(t - \\theta_{ri})^2 / (2\\sigma^2)}

        integrates to 1 over the real line; the default grid covers all nodes with 6 ``sigma`` margins,
        so it integrates to 1 on the grid too.

        Args:
            grid: points to evaluate at (1-D); default ``num_points`` evenly spaced over the nodes' range
                widened by ``6 * sigma`` on each side.
            num_points: the size of the default grid (>= 2).
            sigma: the Gaussian width (> 0); default 1% of the nodes' range (or of their magnitude if the
                range is 0, or 1e-3 if all nodes are 0).

        Returns:
            ``(grid, density)``, float64 CPU tensors of equal length.

        Raises:
            ValueError: for ``num_points < 2`` or ``sigma <= 0``.
        """
        lo, hi = float(self.nodes.min()), float(self.nodes.max())
        if sigma is None:
            span = hi - lo
            sigma = 0.01 * (span if span > 0 else max(abs(lo), abs(hi))) or 1e-3
        check_positive("sigma", sigma)
        if grid is None:
            check_int("num_points", num_points, minimum=2)
            grid = torch.linspace(lo - 6 * sigma, hi + 6 * sigma, num_points, dtype=torch.float64)
        else:
            grid = torch.as_tensor(grid, dtype=torch.float64).reshape(-1).cpu()
        diff = grid[:, None] - self.nodes.reshape(-1)[None, :]
        kernel = torch.exp(-0.5 * (diff / sigma) ** 2) / (sigma * math.sqrt(2 * math.pi))
        density = kernel @ self.weights.reshape(-1) / self.nodes.shape[0]
        return grid, density


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
        >>> from lightning_landscape.curvature.krylov import DenseOperator
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


__all__ = ["SpectralDensity", "slq"]
