r"""Loss lines and planes through a model's weights: :math:`\theta + \alpha d` and
:math:`\theta + \alpha d_1 + \beta d_2`, and the segment towards another model.

Conventions of the curvature core: ``loss_fn(model, batch) -> scalar``, a list of fixed ``batches`` (the loss
is their batch-size-weighted mean), eval mode unless ``train_mode``, the model left exactly as found (weights,
buffers, modes, ``.grad``, global RNG). Only trainable parameters move; the buffers stay the model's own (on a
segment ``towards`` another model its floating buffers are interpolated too).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from lightning_landscape.curvature import HessianOperator, HvpMethod
from lightning_landscape.curvature._checks import check_choice, check_int
from lightning_landscape.curvature._inputs import LossFn, LossOf, batch_size
from lightning_landscape.curvature._model_state import math_attention, probe_context
from lightning_landscape.curvature.operators._strategies import wants_fsdp
from lightning_landscape.curvature.operators.hessian import HVP_METHODS
from lightning_landscape.landscape import _sharded
from lightning_landscape.landscape._evaluate import (
    GridEvaluator,
    check_finite,
    linspace,
    state_tensors,
)
from lightning_landscape.landscape.directions import (
    Direction,
    difference,
    given_or_random,
    named_trainable,
)
from lightning_landscape.landscape.results import LineResult, PlaneResult


def _check_direction(direction: Any, weights: Mapping[str, Tensor], name: str) -> Direction:
    if not isinstance(direction, Mapping):
        raise TypeError(
            f"`{name}` must be a dict[str, Tensor] keyed like named_parameters(), "
            f"got {type(direction).__name__}."
        )
    if set(direction) != set(weights):
        diff = sorted(set(direction) ^ set(weights))[:5]
        raise ValueError(f"`{name}` must have one tensor per trainable parameter; mismatched names: {diff}.")
    out: Direction = {}
    for key, w in weights.items():
        d = direction[key]
        if not isinstance(d, Tensor) or tuple(d.shape) != tuple(w.shape):
            shape = tuple(d.shape) if isinstance(d, Tensor) else type(d).__name__
            raise ValueError(f"`{name}`[{key!r}] must have shape {tuple(w.shape)}, got {shape}.")
        out[key] = d.detach().to(dtype=w.dtype, device=w.device)
    return out


def _slope_curvature(
    model: nn.Module,
    loss_fn: LossFn,
    batches: Sequence[Any],
    direction: Direction,
    train_mode: bool,
    seed: int,
    hvp: HvpMethod = "auto",
) -> tuple[float, float]:
    r""":math:`g^\top d` and :math:`d^\top H d` of the mean loss at the model's weights.

    Double backward (``hvp`` ``"auto"`` or ``"double_backward"``) on detached copies of the weights under the
    math attention kernel (the model's parameters and ``.grad`` are not involved); otherwise, or where the
    double backward fails under ``"auto"`` (one warning), the slope by one gradient and the curvature by
    one product of a :class:`~lightning_landscape.curvature.HessianOperator` taken the ``hvp`` way.
    """
    if hvp in ("auto", "double_backward"):
        try:
            with math_attention():
                return _first_and_second(model, loss_fn, batches, direction, train_mode, seed, second=True)
        except (RuntimeError, NotImplementedError) as err:
            if hvp == "double_backward":
                raise
            warnings.warn(
                "hvp='auto': the line's curvature is taken by finite differences, since the double backward "
                f"failed ({str(err).splitlines()[0]}). Pass hvp='finite_difference' to choose it without "
                "this warning.",
                UserWarning,
                stacklevel=3,
            )
            hvp = "finite_difference"
    slope, _ = _first_and_second(model, loss_fn, batches, direction, train_mode, seed, second=False)
    op = HessianOperator(
        model, loss_fn, batches, memory="recompute", train_mode=train_mode, seed=seed, hvp=hvp
    )
    v = torch.cat([direction[n].reshape(-1).to(op.dtype) for n in op.param_names])
    return slope, float(torch.dot(v, op.matvec(v)))


def _first_and_second(
    model: nn.Module,
    loss_fn: LossFn,
    batches: Sequence[Any],
    direction: Direction,
    train_mode: bool,
    seed: int,
    second: bool,
) -> tuple[float, float]:
    """Slope, and with ``second`` the curvature by double backward (else 0), all-reduced under DDP."""
    weights = named_trainable(model)
    wrapper = LossOf(model, loss_fn)
    sizes = [float(batch_size(b)) for b in batches]
    gd_total = dhd_total = 0.0
    with probe_context(model, train_mode, grad=True):
        for i, batch in enumerate(batches):
            torch.manual_seed(seed * 1_000_003 + i)
            leaves = {n: w.detach().requires_grad_(True) for n, w in weights.items()}
            state = {f"model.{n}": t for n, t in leaves.items()}
            loss = torch.func.functional_call(wrapper, state, (batch,), strict=False)
            grads = torch.autograd.grad(loss, list(leaves.values()), create_graph=second, allow_unused=True)
            gd = sum(
                ((g * direction[n]).sum() for n, g in zip(leaves, grads, strict=True) if g is not None),
                torch.zeros((), dtype=torch.float64),
            )
            dhd = 0.0
            if second and isinstance(gd, Tensor) and gd.requires_grad:
                hds = torch.autograd.grad(gd, list(leaves.values()), allow_unused=True)
                dhd = sum(
                    float((h * direction[n]).sum()) for n, h in zip(leaves, hds, strict=True) if h is not None
                )
            gd_total += float(gd.detach() if isinstance(gd, Tensor) else gd) * sizes[i]
            dhd_total += dhd * sizes[i]
    total = sum(sizes)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        device = next(iter(weights.values())).device
        packed = torch.tensor([gd_total, dhd_total, total], dtype=torch.float64, device=device)
        torch.distributed.all_reduce(packed)
        gd_total, dhd_total, total = (float(v) for v in packed.cpu())
    return gd_total / total, dhd_total / total


def loss_line(
    model: nn.Module,
    loss_fn: LossFn,
    batches: Sequence[Any],
    direction: Mapping[str, Tensor] | None = None,
    span: tuple[float, float] | None = None,
    steps: int = 51,
    towards: nn.Module | None = None,
    quadratic: bool = True,
    train_mode: bool = False,
    chunk_size: int | None = None,
    memory_budget: int | None = None,
    vectorize: bool = True,
    seed: int = 0,
    hvp: HvpMethod = "auto",
) -> LineResult:
    r"""The loss along :math:`\theta + \alpha d` for ``steps`` values of :math:`\alpha` in ``span``.

    With ``towards=other`` (same architecture) the line is the segment from the model's weights
    (:math:`\alpha = 0`) to ``other``'s (:math:`\alpha = 1`), ``span`` defaulting to ``(0, 1)``; floating
    buffers (BatchNorm statistics) are interpolated along with the weights. With ``direction`` (default: one
    filter-normalized random direction from ``seed``) ``span`` defaults to ``(-1, 1)`` and, with
    ``quadratic``, the result also holds :math:`g^\top d` and :math:`d^\top H d` at the centre (one double
    backward), so that :meth:`LineResult.plot` overlays the second-order prediction; for a unit Hessian
    eigenvector :math:`d^\top H d` is its eigenvalue.

    Under FSDP2 (the model holds a ``fully_shard``-ed module) every rank passes its own batches (the same
    number), the points are set on the local shards one by one and the weighted losses all-reduced, the
    direction may be sharded like the parameters, and slope and curvature come from finite differences of
    sharded gradients (``hvp`` ``"auto"`` or ``"finite_difference"``); ``towards`` is refused and
    ``chunk_size``/``memory_budget``/``vectorize`` change nothing (:mod:`~._sharded`).

    Args:
        model: the model (left exactly as found).
        loss_fn: ``loss_fn(model, batch) -> scalar tensor``.
        batches: a non-empty list of batches on the model's device.
        direction: a direction keyed like ``named_parameters()`` (trainable parameters).
        span: ``(low, high)`` of :math:`\alpha`.
        steps: points on the line (``>= 2``).
        towards: the other end of a segment (instead of ``direction``).
        quadratic: also compute slope and curvature along ``direction``.
        train_mode: evaluate in the model's own train/eval mode instead of eval mode.
        chunk_size: points per ``vmap``'d forward (``None``: on a CPU point by point, the weights written in
            place; elsewhere from ``memory_budget``).
        memory_budget: bytes a chunk may use (``None``: a quarter of the free device memory).
        vectorize: ``False`` evaluates point by point.
        seed: the random direction's seed (and that of random layers in train mode).
        hvp: how the curvature :math:`d^\top H d` is taken: ``"auto"`` (double backward under the math
            attention kernel, finite differences where that fails, with a warning), ``"double_backward"``,
            ``"forward_over_reverse"`` or ``"finite_difference"`` (see
            :class:`~lightning_landscape.curvature.HessianOperator`).

    Returns:
        A :class:`LineResult`.

    Raises:
        TypeError, ValueError: for bad arguments (named in the message), both or neither of
            ``direction``/``towards`` given with ``towards`` of another architecture.
        NonFiniteError: if the loss is not finite at any point.

    Example::

        >>> model = nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 1))
        >>> x = torch.randn(64, 2)
        >>> loss_fn = lambda m, b: (m(b) ** 2).mean()
        >>> line = loss_line(model, loss_fn, [x], steps=11)
        >>> line.losses.shape, float(line.alphas[5])
        (torch.Size([11]), 0.0)
    """
    check_int("steps", steps, minimum=2)
    check_choice("hvp", hvp, HVP_METHODS)
    if wants_fsdp(model):  # point by point on the shards, see landscape/_sharded.py
        return _sharded.loss_line(
            model, loss_fn, batches, direction, span, steps, towards, quadratic, train_mode, seed, hvp
        )
    evaluator = GridEvaluator(
        model,
        loss_fn,
        batches,
        train_mode=train_mode,
        chunk_size=chunk_size,
        memory_budget=memory_budget,
        vectorize=vectorize,
        seed=seed,
    )
    weights, buffers = state_tensors(model)
    if direction is not None and towards is not None:
        raise ValueError("pass either `direction` or `towards`, not both.")
    if towards is not None:
        alphas = linspace(span if span is not None else (0.0, 1.0), steps)
        delta, buffer_delta = difference(model, towards)
        coeffs = torch.cat([alphas, torch.zeros(1, dtype=torch.float64)])[:, None]
        losses = evaluator.losses(weights, [delta], coeffs, buffers, [buffer_delta])
        check_finite(losses, "line")
        return LineResult(alphas, losses[:-1], float(losses[-1]), meta={"direction": "interpolation"})
    direction, meta = given_or_random(model, direction, 1, seed)
    d = _check_direction(direction, weights, "direction")
    alphas = linspace(span if span is not None else (-1.0, 1.0), steps)
    coeffs = torch.cat([alphas, torch.zeros(1, dtype=torch.float64)])[:, None]
    losses = evaluator.losses(weights, [d], coeffs)
    check_finite(losses, "line")
    slope = curvature = None
    if quadratic:
        slope, curvature = _slope_curvature(model, loss_fn, evaluator.batches, d, train_mode, seed, hvp)
    return LineResult(alphas, losses[:-1], float(losses[-1]), slope, curvature, meta)


def loss_plane(
    model: nn.Module,
    loss_fn: LossFn,
    batches: Sequence[Any],
    directions: Sequence[Mapping[str, Tensor]] | None = None,
    span: tuple[float, float] = (-1.0, 1.0),
    steps: int = 41,
    train_mode: bool = False,
    chunk_size: int | None = None,
    memory_budget: int | None = None,
    vectorize: bool = True,
    seed: int = 0,
) -> PlaneResult:
    r"""The loss on the ``steps x steps`` grid :math:`\theta + \alpha d_1 + \beta d_2`,
    :math:`\alpha, \beta \in` ``span``.

    Under FSDP2 the grid is evaluated on the local shards as :func:`loss_line` says.

    Args:
        model: the model (left exactly as found).
        loss_fn: ``loss_fn(model, batch) -> scalar tensor``.
        batches: a non-empty list of batches on the model's device.
        directions: two directions (default: :func:`random_directions` ``(model, 2, seed=seed)``, filter
            normalized, biases and norm layers zeroed).
        span: ``(low, high)`` of both coordinates.
        steps: points per axis (``>= 2``).
        train_mode, chunk_size, memory_budget, vectorize, seed: as in :func:`loss_line`.

    Returns:
        A :class:`PlaneResult`, ``losses[i, j]`` at ``(alphas[i], betas[j])``.

    Raises:
        TypeError, ValueError: for bad arguments (named in the message).
        NonFiniteError: if the loss is not finite at any point.

    Example::

        >>> model = nn.Sequential(nn.Linear(2, 8), nn.Tanh(), nn.Linear(8, 1))
        >>> x = torch.randn(64, 2)
        >>> plane = loss_plane(model, lambda m, b: (m(b) ** 2).mean(), [x], steps=5)
        >>> plane.losses.shape
        torch.Size([5, 5])
    """
    check_int("steps", steps, minimum=2)
    if wants_fsdp(model):  # point by point on the shards, see landscape/_sharded.py
        return _sharded.loss_plane(model, loss_fn, batches, directions, span, steps, train_mode, seed)
    evaluator = GridEvaluator(
        model,
        loss_fn,
        batches,
        train_mode=train_mode,
        chunk_size=chunk_size,
        memory_budget=memory_budget,
        vectorize=vectorize,
        seed=seed,
    )
    weights, _ = state_tensors(model)
    directions, meta = given_or_random(model, directions, 2, seed)
    d1 = _check_direction(directions[0], weights, "directions[0]")
    d2 = _check_direction(directions[1], weights, "directions[1]")
    axis = linspace(span, steps)
    return plane_result(evaluator, weights, None, d1, d2, axis, axis, meta)


def plane_result(
    evaluator: GridEvaluator,
    weights: Mapping[str, Tensor],
    buffers: Mapping[str, Tensor] | None,
    d1: Direction,
    d2: Direction,
    alphas: Tensor,
    betas: Tensor,
    meta: dict[str, Any],
) -> PlaneResult:
    """The losses on the grid ``alphas x betas`` of the plane ``weights + a d1 + b d2`` (and the centre's)."""
    grid = torch.cartesian_prod(alphas, betas)
    coeffs = torch.cat([grid, torch.zeros(1, 2, dtype=torch.float64)])
    losses = evaluator.losses(weights, [d1, d2], coeffs, buffers)
    check_finite(losses, "plane")
    return PlaneResult(
        alphas, betas, losses[:-1].reshape(len(alphas), len(betas)), float(losses[-1]), meta=meta
    )


__all__ = ["loss_line", "loss_plane", "plane_result"]
