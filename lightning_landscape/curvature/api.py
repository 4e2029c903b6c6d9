"""The model-level entry points: each validates its inputs, builds one :class:`HessianOperator` and hands
it to an algorithm.

This is the only module that knows the optional pyhessian backend. A caller that wants several quantities
at one point (top eigenvalues, trace and density, as :class:`~lightning_landscape.HessianEigenMonitor`
does) builds one :class:`HessianOperator` itself and calls the algorithms
(:func:`~.algorithms.lanczos.lanczos`, :func:`~.algorithms.trace.hutchinson`, :func:`~.algorithms.slq.slq`,
...) on it: the gradient graph is then built once.

Each function checks every argument once, before any evaluation: the operator's inputs by
:meth:`~.operators.hessian.OperatorInputs.check` (the operator is then built from them without a second
check), its own options against the number of selected parameters.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any, Literal

from torch import Tensor, nn

from lightning_landscape.curvature._checks import DEFAULT_TOL, check_choice, check_int
from lightning_landscape.curvature._inputs import LossFn
from lightning_landscape.curvature._params import ParamSelection
from lightning_landscape.curvature.algorithms._eigen import Which, check_eigen_args
from lightning_landscape.curvature.algorithms.lanczos import lanczos
from lightning_landscape.curvature.algorithms.power import power_iteration
from lightning_landscape.curvature.algorithms.slq import slq
from lightning_landscape.curvature.algorithms.trace import TraceMethod, check_trace_args, trace_of
from lightning_landscape.curvature.operators._strategies import refuse_under_fsdp, wants_fsdp
from lightning_landscape.curvature.operators.hessian import (
    HessianOperator,
    HvpMethod,
    MemoryMode,
    OperatorInputs,
)
from lightning_landscape.curvature.results import EigenResult, SpectralDensity, TraceResult

Backend = Literal["lanczos", "power", "pyhessian"]
BACKENDS = ("lanczos", "power", "pyhessian")


@contextlib.contextmanager
def _operator(inputs: OperatorInputs, train_mode: bool, seed: int) -> Iterator[HessianOperator]:
    """The one operator of a model-level call, its saved graph released on the way out."""
    op = HessianOperator.from_inputs(inputs, train_mode=train_mode, seed=seed)
    try:
        yield op
    finally:
        op.close()


def hessian_eigenvalues(
    model: nn.Module,
    loss_fn: LossFn,
    batches: Sequence[Any],
    k: int = 1,
    which: Which = "largest",
    tol: float = DEFAULT_TOL,
    max_iter: int | None = None,
    backend: Backend = "lanczos",
    return_eigenvectors: bool = False,
    train_mode: bool = False,
    memory: MemoryMode = "auto",
    hvp: HvpMethod = "auto",
    seed: int = 0,
    v0: Tensor | None = None,
    params: ParamSelection = None,
) -> EigenResult:
    """Extreme eigenvalues of the Hessian of a model's mean loss over fixed batches.

    The Hessian is the one of :class:`HessianOperator` (batch-size-weighted mean of
    ``loss_fn(model, batch)``, trainable parameters only, eval mode unless ``train_mode``). The model is
    left exactly as found.

    Args:
        model: the model.
        loss_fn: ``loss_fn(model, batch) -> scalar tensor``.
        batches: a non-empty list of batches on the model's device.
        k: how many eigenvalues at each wanted end, ``1 <= k < number of trainable parameters``.
        which: ``"largest"`` (algebraically largest, top-k descending), ``"smallest"`` (most negative
            first, bottom-k ascending: a negative value says the point is a saddle) or ``"both"`` (top-k in
            ``eigenvalues``, bottom-k in ``smallest``).
        tol: relative tolerance per eigenvalue (> 0): a converged value is within ``tol * |value|`` of an
            eigenvalue.
        max_iter: Lanczos: the most steps (default ``min(n, max(100, 20 k))``); power: the most iterations
            per eigenvalue (default 1000); pyhessian: its ``maxIter`` per eigenvalue (default 100).
        backend: ``"lanczos"`` (default), ``"power"`` (power iteration with deflation and shifts) or
            ``"pyhessian"`` (pyhessian 0.1's power iteration, ``which="largest"`` only; needs the
            ``pyhessian`` extra).
        return_eigenvectors: also return unit eigenvectors (flat, parameters' dtype and device). On a model
            whose Krylov basis would pass 64 MiB, Lanczos then keeps a bounded basis of ``2 k + 6``
            parameter-sized vectors (``4 k + 6`` for ``which="both"``); a ``k=1`` probe without
            eigenvectors keeps two (see :func:`~.algorithms.lanczos.lanczos`, ``max_basis``).
        train_mode: evaluate the loss with the model's own train/eval flags instead of eval mode.
        memory: ``"auto"``, ``"reuse"`` or ``"recompute"`` (see :class:`HessianOperator`).
        hvp: how products are taken: ``"auto"``, ``"double_backward"``, ``"forward_over_reverse"`` or
            ``"finite_difference"`` (see :class:`HessianOperator`).
        seed: seeds the private generator of start vectors (the global RNG is never touched).
        v0: warm start (Lanczos and power only): a flat vector of length ``n`` (the number of trainable
            parameters) or a ``[j, n]`` block, typically the ``eigenvectors`` (and ``smallest_eigenvectors``)
            of an earlier call at nearby weights; the solver starts from the normalized sum of its unit rows
            plus a 1% random part, so the values are right from any ``v0`` and take fewer products from a good
            one (see :func:`~.algorithms.lanczos.lanczos`). ``backend="pyhessian"`` draws its own start and
            refuses a ``v0``.
        params: a block of the Hessian: module/parameter name prefixes (list of str) or one regular
            expression (str) selecting the parameters (see :class:`HessianOperator`); ``None``: all trainable.

    Returns:
        An :class:`~.results.EigenResult`.

    Raises:
        TypeError: for a non-module model, a non-callable ``loss_fn``, batches that are not a list or a
            ``v0`` that is not a tensor.
        ValueError: for ``k < 1``, ``k >=`` the number of trainable parameters, ``tol <= 0``, a bad
            ``which``, ``backend``, ``memory`` or ``max_iter``, empty batches, no trainable parameters, a
            ``params`` that selects nothing, a non-scalar loss, ``which != "largest"`` or ``params`` with
            ``backend="pyhessian"``, or a ``v0`` of the wrong shape, not finite, with a zero row or given
            with ``backend="pyhessian"``.
        NonFiniteError: if the loss or a Hessian-vector product is not finite.

    Example:
        >>> import torch
        >>> model = nn.Sequential(nn.Linear(1, 20), nn.ReLU(), nn.Linear(20, 1))
        >>> x = torch.rand(64, 1)
        >>> loss_fn = lambda m, b: nn.functional.mse_loss(m(b[0]), b[1])
        >>> res = hessian_eigenvalues(model, loss_fn, [(x, x**2 + 2 * x)], k=3)
        >>> res.eigenvalues.shape, res.residuals.shape
        (torch.Size([3]), torch.Size([3]))
        >>> head = hessian_eigenvalues(model, loss_fn, [(x, x**2 + 2 * x)], params=["2"])  # last layer
        >>> head.eigenvalues.shape
        torch.Size([1])
    """
    inputs = OperatorInputs.check(model, loss_fn, batches, memory, params, hvp)
    check_choice("backend", backend, BACKENDS)
    if backend == "pyhessian" and v0 is not None:
        raise ValueError(
            "`v0` is not supported with backend='pyhessian' (it draws its own start vectors); "
            "use backend='lanczos' or 'power', or v0=None."
        )
    check_eigen_args(inputs.num_params, k, which, tol, max_iter, v0)
    if backend == "pyhessian":
        if params is not None:
            raise ValueError(
                "`params` is not supported with backend='pyhessian' (it differentiates by every parameter); "
                "use backend='lanczos' or 'power', or params=None."
            )
        if wants_fsdp(model):
            refuse_under_fsdp(hvp, backend)
        from lightning_landscape.curvature._pyhessian import pyhessian_eigenvalues

        return pyhessian_eigenvalues(inputs, k, which, tol, max_iter, return_eigenvectors, train_mode, seed)
    solver = lanczos if backend == "lanczos" else power_iteration
    with _operator(inputs, train_mode, seed) as op:
        return solver(
            op,
            k=k,
            which=which,
            tol=tol,
            max_iter=max_iter,
            seed=seed,
            return_eigenvectors=return_eigenvectors,
            v0=v0,
        )


def hessian_trace(
    model: nn.Module,
    loss_fn: LossFn,
    batches: Sequence[Any],
    num_samples: int = 100,
    seed: int = 0,
    train_mode: bool = False,
    memory: MemoryMode = "auto",
    hvp: HvpMethod = "auto",
    method: TraceMethod = "hutchinson",
    params: ParamSelection = None,
) -> TraceResult:
    """The trace of the Hessian (of a block with ``params``) from ``num_samples`` products.

    Args:
        model: the model.
        loss_fn: ``loss_fn(model, batch) -> scalar tensor``.
        batches: a non-empty list of batches on the model's device.
        num_samples: the product budget: Hutchinson probes (>= 1), or the budget of Hutch++ (>= 3) and
            XTrace (>= 4); a budget of ``n`` or more gives the exact trace for those two.
        seed: seeds the private generator of the probes.
        train_mode: evaluate the loss with the model's own train/eval flags instead of eval mode.
        memory: ``"auto"``, ``"reuse"`` or ``"recompute"`` (see :class:`HessianOperator`).
        hvp: how products are taken: ``"auto"``, ``"double_backward"``, ``"forward_over_reverse"`` or
            ``"finite_difference"`` (see :class:`HessianOperator`).
        method: ``"hutchinson"`` (default), ``"hutchpp"`` or ``"xtrace"`` (see :mod:`~.algorithms.trace`):
            the two variance-reduced estimators are far more accurate at equal budget when the spectrum has a
            few large eigenvalues, as Hessians of networks do.
        params: a block of the Hessian (see :func:`hessian_eigenvalues`).

    Returns:
        A :class:`~.results.TraceResult`.

    Raises:
        ValueError: for a budget below the method's minimum, an unknown ``method`` and the argument errors
            of :class:`HessianOperator`.
        NonFiniteError: if the loss or a product is not finite.

    Example:
        >>> import torch
        >>> model = nn.Linear(3, 1).double()
        >>> x = torch.randn(32, 3, dtype=torch.float64)
        >>> loss_fn = lambda m, b: (m(b) ** 2).mean()
        >>> exact = float(2 * (x**2).mean(0).sum() + 2)  # tr H = 2 E[x^T x] + 2 (the bias)
        >>> res = hessian_trace(model, loss_fn, [x], num_samples=4, method="hutchpp")
        >>> abs(res.trace - exact) < 1e-12, res.method  # a budget of n products is exact
        (True, 'exact')
    """
    inputs = OperatorInputs.check(model, loss_fn, batches, memory, params, hvp)
    check_trace_args(method, num_samples)
    with _operator(inputs, train_mode, seed) as op:
        return trace_of(op, method=method, num_samples=num_samples, seed=seed)


def spectral_density(
    model: nn.Module,
    loss_fn: LossFn,
    batches: Sequence[Any],
    num_iter: int = 100,
    num_runs: int = 10,
    seed: int = 0,
    train_mode: bool = False,
    memory: MemoryMode = "auto",
    hvp: HvpMethod = "auto",
    params: ParamSelection = None,
) -> SpectralDensity:
    """The Hessian's spectral density by stochastic Lanczos quadrature (see :func:`~.algorithms.slq.slq`).

    Unlike pyhessian 0.1's ``density()`` (which calls the removed ``torch.eig``) this uses
    ``torch.linalg.eigh``; the runs advance together, one batched product per step.

    Args:
        model: the model.
        loss_fn: ``loss_fn(model, batch) -> scalar tensor``.
        batches: a non-empty list of batches on the model's device.
        num_iter: Lanczos steps per run (>= 1), one product each.
        num_runs: independent start vectors (>= 1).
        seed: seeds the private generator of the start vectors.
        train_mode: evaluate the loss with the model's own train/eval flags instead of eval mode.
        memory: ``"auto"``, ``"reuse"`` or ``"recompute"`` (see :class:`HessianOperator`).
        hvp: how products are taken: ``"auto"``, ``"double_backward"``, ``"forward_over_reverse"`` or
            ``"finite_difference"`` (see :class:`HessianOperator`).
        params: a block of the Hessian (see :func:`hessian_eigenvalues`).

    Returns:
        A :class:`~.results.SpectralDensity`; ``.on_grid()`` gives a smoothed density.

    Raises:
        ValueError: for ``num_iter < 1``, ``num_runs < 1`` and the argument errors of
            :class:`HessianOperator`.
        NonFiniteError: if the loss or a product is not finite.

    Example:
        >>> import torch
        >>> model = nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 1))
        >>> x, y = torch.randn(32, 2), torch.randn(32, 1)
        >>> loss_fn = lambda m, b: nn.functional.mse_loss(m(b[0]), b[1])
        >>> sd = spectral_density(model, loss_fn, [(x, y)], num_iter=20, num_runs=4)
        >>> grid, density = sd.on_grid(num_points=200)
        >>> sd.nodes.shape, grid.shape == density.shape
        (torch.Size([4, 20]), True)
    """
    inputs = OperatorInputs.check(model, loss_fn, batches, memory, params, hvp)
    check_int("num_iter", num_iter)
    check_int("num_runs", num_runs)
    with _operator(inputs, train_mode, seed) as op:
        return slq(op, num_iter=num_iter, num_runs=num_runs, seed=seed)


__all__ = ["BACKENDS", "Backend", "hessian_eigenvalues", "hessian_trace", "spectral_density"]
