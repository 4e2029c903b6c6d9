r"""The loss barrier between two models of one architecture, and the BatchNorm re-estimation it may need.

Conventions of :mod:`~.lines`; neither model is modified.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import nn

from lightning_landscape._torch import BatchNormBase
from lightning_landscape.curvature._checks import check_choice, check_int
from lightning_landscape.curvature._inputs import LossFn
from lightning_landscape.curvature._model_state import rng_devices
from lightning_landscape.landscape._evaluate import GridEvaluator, check_finite, state_tensors
from lightning_landscape.landscape.directions import difference, named_trainable
from lightning_landscape.landscape.results import BarrierResult

BufferMode = Literal["interpolate", "reestimate"]
BUFFER_MODES = ("interpolate", "reestimate")


def reestimated(model: nn.Module, loss_fn: LossFn, batches: Sequence[Any], seed: int) -> nn.Module:
    """A copy of ``model`` whose BatchNorm statistics are the plain average over ``batches`` in train mode."""
    clone = copy.deepcopy(model)
    norms = [m for m in clone.modules() if isinstance(m, BatchNormBase)]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches
    clone.train()
    with torch.random.fork_rng(devices=rng_devices(model)), torch.no_grad():
        for i, batch in enumerate(batches):
            torch.manual_seed(seed * 1_000_003 + i)
            loss_fn(clone, batch)
    return clone


def linear_barrier(
    model_a: nn.Module,
    model_b: nn.Module,
    loss_fn: LossFn,
    batches: Sequence[Any],
    steps: int = 25,
    buffers: BufferMode = "interpolate",
    train_mode: bool = False,
    chunk_size: int | None = None,
    memory_budget: int | None = None,
    vectorize: bool = True,
    seed: int = 0,
) -> BarrierResult:
    r"""The loss along the segment from ``model_a`` to ``model_b`` (one architecture) and its barrier

    .. math::

        B = \max_{t} \; L((1-t)\,\theta_a + t\,\theta_b) - ((1-t)\,L(\theta_a) + t\,L(\theta_b))

    over ``steps`` values of :math:`t` from 0 to 1 (Frankle et al. 2020). BatchNorm buffers: with
    ``buffers="interpolate"`` (default) the floating buffers (running mean and variance) are interpolated
    like the weights and integer ones (``num_batches_tracked``) taken from ``model_a``, all points in one
    vectorized evaluation; with ``"reestimate"`` each point's running statistics are recomputed as the plain
    average of train-mode forwards over ``batches`` (Jordan et al. 2023, "REPAIR", show interpolated
    statistics overstate barriers of BatchNorm networks), point by point, and the endpoints are re-estimated
    too so that the chord compares like with like. Neither model is modified.

    Args:
        model_a: the start (:math:`t = 0`).
        model_b: the end (:math:`t = 1`), same parameter and buffer names and shapes.
        loss_fn: ``loss_fn(model, batch) -> scalar tensor``.
        batches: a non-empty list of batches on the models' device.
        steps: points on the segment (``>= 2``; odd includes the midpoint).
        buffers: ``"interpolate"`` or ``"reestimate"``.
        train_mode, chunk_size, memory_budget, vectorize, seed: as in :func:`loss_line`.

    Returns:
        A :class:`BarrierResult`.

    Raises:
        TypeError, ValueError: for bad arguments or models of different architectures.
        NonFiniteError: if the loss is not finite at any point.

    Example::

        >>> a, b = nn.Linear(2, 1), nn.Linear(2, 1)
        >>> x = torch.randn(32, 2)
        >>> res = linear_barrier(a, b, lambda m, x: (m(x) ** 2).mean(), [x], steps=5)
        >>> res.barrier <= 1e-12  # a convex loss: the segment stays under the chord
        True
    """
    check_int("steps", steps, minimum=2)
    check_choice("buffers", buffers, BUFFER_MODES)
    options: dict[str, Any] = {
        "train_mode": train_mode,
        "chunk_size": chunk_size,
        "memory_budget": memory_budget,
        "vectorize": vectorize,
        "seed": seed,
    }
    delta, buffer_delta = difference(model_a, model_b)
    ts = torch.linspace(0.0, 1.0, steps, dtype=torch.float64)
    if buffers == "interpolate":
        evaluator = GridEvaluator(model_a, loss_fn, batches, **options)
        weights, bufs = state_tensors(model_a)
        losses = evaluator.losses(weights, [delta], ts[:, None], bufs, [buffer_delta])
    else:
        evaluator = GridEvaluator(model_a, loss_fn, batches, **options)  # validates the arguments
        values = []
        for t in ts.tolist():
            point = copy.deepcopy(model_a)
            with torch.no_grad():
                for n, p in named_trainable(point).items():
                    p.add_(delta[n], alpha=t)
            point = reestimated(point, loss_fn, evaluator.batches, seed)
            single = GridEvaluator(point, loss_fn, evaluator.batches, **options)
            w, b = state_tensors(point)
            values.append(single.losses(w, [], torch.zeros(1, 0, dtype=torch.float64), b))
        losses = torch.cat(values)
    check_finite(losses, "segment")
    loss_a, loss_b = float(losses[0]), float(losses[-1])
    excess = losses - ((1 - ts) * loss_a + ts * loss_b)
    index = int(torch.nan_to_num(excess, nan=-torch.inf).argmax())
    return BarrierResult(
        ts, losses, loss_a, loss_b, float(excess[index]), float(ts[index]), meta={"buffers": buffers}
    )


__all__ = ["BUFFER_MODES", "BufferMode", "linear_barrier", "reestimated"]
