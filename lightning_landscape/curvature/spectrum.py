r"""The trace and the spectral density of a Hessian, from Hessian-vector products only.

**Hutchinson's estimator.** For Rademacher probes :math:`z_j \in \{-1, 1\}^n`,
:math:`\mathbb{E}[z^\top H z] = \operatorname{tr} H`; the estimate is the mean of :math:`z_j^\top H z_j`
over :math:`N` probes, with standard error :math:`s / \sqrt{N}` (:math:`s` the sample standard deviation).

**Stochastic Lanczos quadrature (SLQ).** For a unit start vector :math:`v`, :math:`m` Lanczos steps give
:math:`T_m = S \operatorname{diag}(\theta) S^\top`, and
:math:`v^\top f(H) v \approx \sum_i w_i f(\theta_i)` with nodes :math:`\theta_i` (Ritz values) and weights
:math:`w_i = S_{1i}^2` (summing to 1). Averaged over Rademacher start vectors :math:`v = z/\sqrt{n}` this
estimates the spectral density :math:`\phi(t) = \frac{1}{n} \sum_i \delta(t - \lambda_i)`, e.g.
:math:`\frac{1}{n}\operatorname{tr} H \approx \overline{\sum_i w_i \theta_i}`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from lightning_landscape.curvature.eigen import _Lanczos, check_int, make_generator, random_vector
from lightning_landscape.curvature.operator import HessianOperator, LossFn, MemoryMode, validate_inputs


@dataclass
class TraceResult:
    """A Hutchinson estimate of the Hessian trace.

    Attributes:
        trace: the estimate (mean of :math:`z^\\top H z`).
        std_error: its standard error (sample standard deviation over ``sqrt(num_samples)``; ``nan`` for one
            sample).
        num_samples: the number of probes.
        num_products: Hessian-vector products spent.
        samples: the individual :math:`z^\\top H z` values (float64, CPU).
    """

    trace: float
    std_error: float
    num_samples: int
    num_products: int
    samples: Tensor


@dataclass
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
        if not (isinstance(sigma, (int, float)) and math.isfinite(sigma) and sigma > 0):
            raise ValueError(f"`sigma` must be a finite number > 0, got {sigma!r}.")
        if grid is None:
            check_int("num_points", num_points, minimum=2)
            grid = torch.linspace(lo - 6 * sigma, hi + 6 * sigma, num_points, dtype=torch.float64)
        else:
            grid = torch.as_tensor(grid, dtype=torch.float64).reshape(-1).cpu()
        diff = grid[:, None] - self.nodes.reshape(-1)[None, :]
        kernel = torch.exp(-0.5 * (diff / sigma) ** 2) / (sigma * math.sqrt(2 * math.pi))
        density = kernel @ self.weights.reshape(-1) / self.nodes.shape[0]
        return grid, density


def hessian_trace(
    model: nn.Module,
    loss_fn: LossFn,
    batches: Sequence[Any],
    num_samples: int = 100,
    seed: int = 0,
    train_mode: bool = False,
    memory: MemoryMode = "auto",
) -> TraceResult:
    """The trace of the Hessian by Hutchinson's estimator with Rademacher probes.

    Args:
        model: the model.
        loss_fn: ``loss_fn(model, batch) -> scalar tensor``.
        batches: a non-empty list of batches on the model's device.
        num_samples: the number of probes (>= 1), one product each.
        seed: seeds the private generator of the probes.
        train_mode: evaluate the loss with the model's own train/eval flags instead of eval mode.
        memory: ``"auto"``, ``"reuse"`` or ``"recompute"`` (see :class:`HessianOperator`).

    Returns:
        A :class:`TraceResult`.

    Raises:
        ValueError: for ``num_samples < 1`` and the argument errors of :class:`HessianOperator`.
        NonFiniteError: if the loss or a product is not finite.

    Example::

        >>> res = hessian_trace(model, loss_fn, [(x, y)], num_samples=50)
        >>> res.trace, res.std_error
    """
    batches = validate_inputs(model, loss_fn, batches)
    check_int("num_samples", num_samples)
    op = HessianOperator(model, loss_fn, batches, memory=memory, train_mode=train_mode, seed=seed)
    gen = make_generator(seed)
    try:
        samples = []
        for _ in range(num_samples):
            z = random_vector(op, gen, rademacher=True)
            samples.append(float(torch.dot(op.matvec(z), z)))
    finally:
        op.close()
    values = torch.tensor(samples, dtype=torch.float64)
    std_error = float(values.std() / math.sqrt(num_samples)) if num_samples > 1 else math.nan
    return TraceResult(float(values.mean()), std_error, num_samples, op.num_products, values)


def slq(op: HessianOperator | Any, num_iter: int = 100, num_runs: int = 10, seed: int = 0) -> SpectralDensity:
    """Stochastic Lanczos quadrature on any symmetric operator (see :func:`spectral_density`)."""
    check_int("num_iter", num_iter)
    check_int("num_runs", num_runs)
    gen = make_generator(seed)
    m = min(num_iter, op.num_params)
    nodes = torch.zeros(num_runs, m, dtype=torch.float64)
    weights = torch.zeros(num_runs, m, dtype=torch.float64)
    start = getattr(op, "num_products", 0)
    for r in range(num_runs):
        run = _Lanczos(op, random_vector(op, gen, rademacher=True), m, gen)
        while run.steps < run.max_steps:
            run.step()
            if run.restarted:
                # The start vector's Krylov space is invariant: the quadrature is exact already, and a
                # restarted block would not belong to this start vector.
                break
        theta, S = run.ritz()
        steps = theta.numel()
        nodes[r, :steps] = theta
        weights[r, :steps] = S[0, :] ** 2
        nodes[r, steps:] = theta[-1]
    return SpectralDensity(nodes, weights, getattr(op, "num_products", 0) - start, op.num_params)


def spectral_density(
    model: nn.Module,
    loss_fn: LossFn,
    batches: Sequence[Any],
    num_iter: int = 100,
    num_runs: int = 10,
    seed: int = 0,
    train_mode: bool = False,
    memory: MemoryMode = "auto",
) -> SpectralDensity:
    """The Hessian's spectral density by stochastic Lanczos quadrature (SLQ).

    Each of ``num_runs`` runs starts Lanczos (full reorthogonalization) from a normalized Rademacher
    vector and takes ``min(num_iter, n)`` steps; its nodes are the Ritz values and its weights the squared
    first components of the eigenvectors of the tridiagonal matrix. Unlike pyhessian 0.1's ``density()``
    (which calls the removed ``torch.eig``) this uses ``torch.linalg.eigh``.

    Args:
        model: the model.
        loss_fn: ``loss_fn(model, batch) -> scalar tensor``.
        batches: a non-empty list of batches on the model's device.
        num_iter: Lanczos steps per run (>= 1), one product each.
        num_runs: independent start vectors (>= 1).
        seed: seeds the private generator of the start vectors.
        train_mode: evaluate the loss with the model's own train/eval flags instead of eval mode.
        memory: ``"auto"``, ``"reuse"`` or ``"recompute"`` (see :class:`HessianOperator`).

    Returns:
        A :class:`SpectralDensity`; ``.on_grid()`` gives a smoothed density.

    Raises:
        ValueError: for ``num_iter < 1``, ``num_runs < 1`` and the argument errors of
            :class:`HessianOperator`.
        NonFiniteError: if the loss or a product is not finite.

    Example::

        >>> sd = spectral_density(model, loss_fn, [(x, y)], num_iter=50, num_runs=5)
        >>> grid, density = sd.on_grid()
    """
    batches = validate_inputs(model, loss_fn, batches)
    check_int("num_iter", num_iter)
    check_int("num_runs", num_runs)
    op = HessianOperator(model, loss_fn, batches, memory=memory, train_mode=train_mode, seed=seed)
    try:
        return slq(op, num_iter=num_iter, num_runs=num_runs, seed=seed)
    finally:
        op.close()


__all__ = ["SpectralDensity", "TraceResult", "hessian_trace", "slq", "spectral_density"]
