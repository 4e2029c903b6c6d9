r"""Batch sharpness: the curvature along each mini-batch's own gradient, averaged over the mini-batches.

.. math::

    \frac{1}{m} \sum_{b=1}^{m} \frac{g_b^\top H_b g_b}{\|g_b\|^2},

with :math:`g_b` and :math:`H_b` the gradient and Hessian of the loss on batch :math:`b` (the quantity that
stochastic gradient descent keeps near :math:`2/\eta`). Pure PyTorch, no Lightning import.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from lightning_landscape.curvature._inputs import LossFn
from lightning_landscape.curvature._model_state import math_attention, probe_context
from lightning_landscape.curvature._params import ParamSelection, select_parameters
from lightning_landscape.curvature.operators import NonFiniteError


def batch_sharpness(
    model: nn.Module,
    loss_fn: LossFn,
    batches: Sequence[Any],
    params: ParamSelection = None,
    train_mode: bool = False,
    seed: int = 0,
) -> float:
    r"""Mean over ``batches`` of :math:`g_b^\top H_b g_b / \|g_b\|^2` (batches with :math:`g_b = 0` left out).

    One gradient and one Hessian-vector product per batch, in the probe context of the Hessian operator
    (eval mode unless ``train_mode``, RNG forked and seeded per batch as the operator seeds it, buffers
    copied, math attention), so nothing reaches the model.

    Args:
        model: the model; ``params`` selects the variables (all trainable parameters by default).
        loss_fn: ``loss_fn(model, batch) -> scalar tensor``.
        batches: the mini-batches.
        params: a parameter selection as in :class:`~lightning_landscape.curvature.HessianOperator`.
        train_mode: evaluate with the model's own train/eval flags instead of eval mode.
        seed: seeds random layers per batch in train mode.

    Returns:
        The mean; 0.0 when every batch's gradient is zero.

    Raises:
        NonFiniteError: If a loss or a value is not finite.

    Example:
        >>> model = nn.Linear(2, 1, bias=False)
        >>> x = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
        >>> mse = lambda m, b: ((m(b) ** 2).sum(dim=1)).mean()  # H = 2 diag(1, 4) / 2 = diag(1, 4)
        >>> with torch.no_grad():
        ...     _ = model.weight.copy_(torch.tensor([[1.0, 0.0]]))
        >>> round(batch_sharpness(model, mse, [x]), 6)  # g = (1, 0): g'Hg / |g|^2 = 1
        1.0
    """
    variables = [p for _, p in select_parameters(model, params)]
    values: list[float] = []
    for index, batch in enumerate(batches):
        with probe_context(model, train_mode, grad=True), math_attention():
            torch.manual_seed(seed * 1_000_003 + index)
            loss = loss_fn(model, batch)
            if not bool(torch.isfinite(loss.detach()).all()):
                raise NonFiniteError(f"The loss is not finite ({float(loss)}) on batch {index}.")
            grads = torch.autograd.grad(loss, variables, create_graph=True, allow_unused=True)
            pairs = [(g, p) for g, p in zip(grads, variables, strict=True) if g is not None]
            g_flat = torch.cat([g.detach().reshape(-1) for g, _ in pairs]).double()
            squared = float(g_flat @ g_flat)
            if squared == 0.0:
                continue
            live = [(g, p) for g, p in pairs if g.requires_grad]
            hg = (
                torch.autograd.grad(
                    [g for g, _ in live],
                    [p for _, p in live],
                    [g.detach() for g, _ in live],
                    allow_unused=True,
                )
                if live
                else ()
            )
            quad = sum(
                float((h.double() * g.detach().double()).sum())
                for h, (g, _) in zip(hg, live, strict=True)
                if h is not None
            )
        value = quad / squared
        if not math.isfinite(value):
            raise NonFiniteError(f"the batch sharpness of batch {index} is not finite ({value})")
        values.append(value)
    return sum(values) / len(values) if values else 0.0
