r"""REPAIR (Jordan et al. 2023): move an interpolated network's preactivations onto the endpoints' statistics.

Interpolating two (aligned) networks shrinks the variance of their hidden preactivations ("variance
collapse"), which inflates the barrier between them. REPAIR measures, for every hidden unit :math:`u`,
the mean :math:`\mu` and standard deviation :math:`\sigma` of its preactivation over the data in both
endpoints and moves the interpolated network's preactivation at :math:`t` onto

.. math::

    \mu^\star_u(t) = (1-t)\,\mu^a_u + t\,\mu^b_u, \qquad
    \sigma^\star_u(t) = (1-t)\,\sigma^a_u + t\,\sigma^b_u,

by folding an affine map into the producing layer: ``weight *= s`` and ``bias = (bias - mu) * s + mu*``
with :math:`s = \sigma^\star / \sigma`, layer after layer in forward order (each measured after the layers
before it are corrected). The hidden preactivations are the outputs of the Linear/Conv layers whose output
axis is a permuted (hidden) axis of :func:`~lightning_landscape.landscape.align`'s permutation structure;
the network's output layer is never touched. A layer without bias is only rescaled.

LayerNorm normalizes each example by its own statistics, so a collapse of the variance across examples in
front of it is not undone by it and is repaired like any other; after a LayerNorm there is nothing to repair
(its output statistics are fixed per example). BatchNorm already re-normalizes with its buffers: for
BatchNorm networks ``buffers="reestimate"`` of :func:`~lightning_landscape.landscape.linear_barrier` is the
REPAIR paper's "reset BatchNorm" and ``repair`` is not needed.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from lightning_landscape.curvature._inputs import LossFn
from lightning_landscape.curvature._model_state import rng_devices
from lightning_landscape.landscape._derive_spec import derive_spec

_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d)
EPS = 1e-12

Stats = dict[str, tuple[Tensor, Tensor]]


def repair_layers(model: nn.Module) -> list[str]:
    """Names of the Linear/Conv layers whose output is a hidden (permuted) axis, in module order.

    Raises:
        ValueError: if the permutation structure of ``model`` cannot be derived (the message says why).
    """
    spec = derive_spec(model)
    hidden = {e.name.rpartition(".")[0] for e in spec.entries if e.axis == 0 and e.name.endswith("weight")}
    return [n for n, m in model.named_modules() if isinstance(m, _LAYERS) and n in hidden]


def _channels(out: Tensor, layer: nn.Module) -> Tensor:
    """``[units, values]``: conv channels are dim 1, a Linear's units its last dim."""
    if isinstance(layer, nn.Linear):
        return out.detach().reshape(-1, out.shape[-1]).T
    return out.detach().transpose(0, 1).reshape(out.shape[1], -1)


def statistics(model: nn.Module, names: Sequence[str], loss_fn: LossFn, batches: Sequence[Any]) -> Stats:
    """Per layer in ``names``: mean and standard deviation (float64, biased) of each unit over ``batches``,
    ``loss_fn`` run in eval mode without gradients on a copy (``model`` and the RNG are left as found)."""
    clone = copy.deepcopy(model).eval()
    modules = dict(clone.named_modules())
    sums: dict[str, list[Tensor]] = {}
    counts: dict[str, int] = {}

    def hook(name: str) -> Any:
        def record(layer: nn.Module, _inputs: Any, out: Tensor) -> None:
            values = _channels(out, layer).to(torch.float64)
            s = sums.setdefault(name, [values.new_zeros(values.shape[0]), values.new_zeros(values.shape[0])])
            s[0] += values.sum(1)
            s[1] += values.pow(2).sum(1)
            counts[name] = counts.get(name, 0) + values.shape[1]

        return record

    handles = [modules[n].register_forward_hook(hook(n)) for n in names]
    try:
        with torch.random.fork_rng(devices=rng_devices(model)), torch.no_grad():
            for batch in batches:
                loss_fn(clone, batch)
    finally:
        for h in handles:
            h.remove()
    stats: Stats = {}
    for n in names:
        mean = sums[n][0] / counts[n]
        var = (sums[n][1] / counts[n] - mean**2).clamp_min(0.0)
        stats[n] = (mean, var.sqrt())
    return stats


def repaired(
    point: nn.Module,
    names: Sequence[str],
    targets: Stats,
    loss_fn: LossFn,
    batches: Sequence[Any],
) -> nn.Module:
    """A copy of ``point`` whose layers ``names`` are corrected, one after the other, to ``targets``."""
    clone = copy.deepcopy(point)
    modules = dict(clone.named_modules())
    for name in names:
        mean, std = statistics(clone, [name], loss_fn, batches)[name]
        target_mean, target_std = targets[name]
        scale = target_std / std.clamp_min(EPS)
        layer = modules[name]
        weight = layer.weight
        with torch.no_grad():
            shape = (-1,) + (1,) * (weight.dim() - 1)
            weight.mul_(scale.to(weight.dtype).reshape(shape))
            if layer.bias is not None:
                bias = (layer.bias.to(torch.float64) - mean) * scale + target_mean
                layer.bias.copy_(bias.to(layer.bias.dtype))
    return clone


def interpolated_targets(stats_a: Stats, stats_b: Stats, t: float) -> Stats:
    """The endpoints' statistics interpolated at ``t``."""
    return {
        n: ((1 - t) * stats_a[n][0] + t * stats_b[n][0], (1 - t) * stats_a[n][1] + t * stats_b[n][1])
        for n in stats_a
    }


__all__ = ["interpolated_targets", "repair_layers", "repaired", "statistics"]
