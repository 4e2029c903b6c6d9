r"""What the curvature algorithms return: frozen results that say what is converged and what is an estimate.

:class:`EigenResult` (extreme eigenvalues, each with its residual bound and whether it converged),
:class:`TraceResult` (a trace estimate with its standard error) and :class:`SpectralDensity` (the nodes and
weights of stochastic Lanczos quadrature, and the smoothed density they give).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from lightning_landscape.curvature._checks import check_int, check_positive


@dataclass(frozen=True)
class EigenResult:
    r"""Extreme eigenvalues of a Hessian, each with its residual bound and whether it converged.

    Attributes:
        eigenvalues: ``"largest"`` and ``"both"``: the top-k, descending; ``"smallest"``: the bottom-k,
            ascending (float64, CPU).
        smallest: for ``which="both"`` the bottom-k, ascending; otherwise ``None``.
        eigenvectors: ``[k, n]`` unit eigenvectors matching ``eigenvalues`` (parameters' dtype and device)
            when asked for, else ``None``.
        smallest_eigenvectors: for ``which="both"`` the ``[k, n]`` eigenvectors matching ``smallest``.
        num_products: Hessian-vector products spent.
        converged: every returned value met the residual bound ``tol * |value|`` (all of ``value_converged``
            and ``smallest_converged``).
        backend: the solver that produced the values.
        residuals: per value of ``eigenvalues``, an upper bound on :math:`\|Hv - \lambda v\|` of its
            (Ritz) vector: some eigenvalue of :math:`H` lies within it (float64, CPU).
        value_converged: per value of ``eigenvalues``, whether its residual met the tolerance (bool).
        smallest_residuals: the same as ``residuals`` for ``smallest``.
        smallest_converged: the same as ``value_converged`` for ``smallest``.
    """

    eigenvalues: Tensor
    smallest: Tensor | None = None
    eigenvectors: Tensor | None = None
    smallest_eigenvectors: Tensor | None = None
    num_products: int = 0
    converged: bool = False
    backend: str = "lanczos"
    residuals: Tensor | None = None
    value_converged: Tensor | None = None
    smallest_residuals: Tensor | None = None
    smallest_converged: Tensor | None = None


@dataclass(frozen=True)
class TraceResult:
    """An estimate of the trace of a Hessian.

    Attributes:
        trace: the estimate (the mean of ``samples``).
        std_error: its standard error (sample standard deviation of ``samples`` over the square root of
            their number; ``nan`` for one sample, ``0`` when the trace is exact).
        num_samples: the number of ``samples``.
        num_products: Hessian-vector products spent.
        samples: the individual estimates (float64, CPU): :math:`z^\\top H z` for Hutchinson, the
            low-rank trace plus one complement probe for Hutch++, the exchangeable per-vector estimates for
            XTrace, the diagonal when exact.
        method: ``"hutchinson"``, ``"hutchpp"``, ``"xtrace"`` or ``"exact"`` (a budget of at least ``n``
            products: the trace from ``n`` unit vectors).
    """

    trace: float
    std_error: float
    num_samples: int
    num_products: int
    samples: Tensor
    method: str = "hutchinson"


@dataclass(frozen=True)
class SpectralDensity:
    """Stochastic Lanczos quadrature of a Hessian's spectrum.

    Attributes:
        nodes: ``[num_runs, m]`` Ritz values of each run (float64, CPU).
        weights: ``[num_runs, m]`` their quadrature weights; each row sums to 1 (a run that ended early
            on an invariant subspace is padded with zero-weight copies of its last node).
        num_products: Hessian-vector products spent.
        num_params: the dimension :math:`n` of the Hessian.

    Example:
        >>> nodes, weights = torch.tensor([[1.0, 3.0]]).double(), torch.tensor([[0.5, 0.5]]).double()
        >>> sd = SpectralDensity(nodes, weights, num_products=2, num_params=2)
        >>> sd.moment(1), sd.moment(2)  # (1 + 3) / 2 and (1 + 9) / 2
        (2.0, 5.0)
        >>> grid, density = sd.on_grid(num_points=2001)
        >>> round(float(torch.trapezoid(density, grid)), 6)
        1.0
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


__all__ = ["EigenResult", "SpectralDensity", "TraceResult"]
