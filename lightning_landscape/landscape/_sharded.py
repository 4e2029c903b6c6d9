r"""Loss lines and planes, and random directions, under FSDP2 (``fully_shard``): everything on local shards.

:func:`~.lines.loss_line`, :func:`~.lines.loss_plane` and :func:`~.directions.random_directions` hand a
model holding an FSDP2 module to this module. A direction is then a ``DTensor`` sharded like its parameter
(a plain tensor of the parameter's full shape is accepted too, and cut to this rank's shard), and a point
:math:`\theta + \alpha d_1 + \beta d_2` is set by moving every rank's local shards in place:

* **losses**: point by point, every rank runs its own batches (FSDP all-gathers each layer in the forward,
  so every rank must pass the same number of batches), the batch-size-weighted sums and sizes are
  all-reduced once at the end; no ``vmap`` (the sharded forward cannot be batched over points), so
  ``chunk_size``, ``memory_budget`` and ``vectorize`` change nothing here;
* **slope and curvature** along a line: :meth:`~lightning_landscape.curvature.operators.fsdp.
  FSDPHessianOperator.line_derivatives` (a gradient and a central difference of two, dot products
  all-reduced);
* **filter normalization**: the norm of a filter (row ``j`` of a weight) spans every shard holding part of
  it, so the per-filter sums of squares are written at their global rows and all-reduced (one reduction
  per direction); the Gaussian entries are drawn in full from the seeded generator, as on one process, and
  each rank keeps its shard (the same directions as a single process).

``towards`` (a segment to another model) is refused. The model is left as found: the shards are put back
bit for bit, ``.grad``, modes, buffers and the global RNG are untouched.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from lightning_landscape.curvature import HessianOperator, HvpMethod
from lightning_landscape.curvature._inputs import LossFn, batch_size, validate_inputs
from lightning_landscape.curvature._model_state import probe_context
from lightning_landscape.curvature.operators._strategies import refuse_unsupported, reshard
from lightning_landscape.curvature.operators.fsdp import (
    FSDPHessianOperator,
    all_reduce_sum,
    local_tensor,
    shard_of,
    shard_range,
)
from lightning_landscape.landscape._evaluate import check_finite, linspace
from lightning_landscape.landscape.directions import given_or_random
from lightning_landscape.landscape.results import LineResult, PlaneResult

Direction = dict[str, Tensor]


def _trainable(model: nn.Module) -> dict[str, Tensor]:
    refuse_unsupported(model, "finite_difference")  # reshards, and refuses layouts other than plain FSDP
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def as_sharded(piece: Tensor, p: Tensor) -> Tensor:
    """A ``DTensor`` laid out like the parameter ``p`` from this rank's ``piece`` of it."""
    from torch.distributed.tensor import DTensor

    return DTensor.from_local(
        piece.to(dtype=p.dtype, device=local_tensor(p).device),
        p.device_mesh,  # type: ignore[attr-defined]
        p.placements,  # type: ignore[attr-defined]
        run_check=False,
        shape=p.shape,
        stride=p.stride(),
    )


def local_pieces(direction: Any, weights: Mapping[str, Tensor], name: str) -> list[Tensor]:
    """This rank's shard of every entry of ``direction``, in the order of ``weights``.

    Raises:
        TypeError, ValueError: unless ``direction`` maps every trainable parameter name to a tensor of its
            full shape (a ``DTensor`` laid out like it, or a plain tensor).
    """
    if not isinstance(direction, Mapping):
        raise TypeError(
            f"`{name}` must be a dict[str, Tensor] keyed like named_parameters(), "
            f"got {type(direction).__name__}."
        )
    if set(direction) != set(weights):
        diff = sorted(set(direction) ^ set(weights))[:5]
        raise ValueError(f"`{name}` must have one tensor per trainable parameter; mismatched names: {diff}.")
    out = []
    for key, w in weights.items():
        d = direction[key]
        if not isinstance(d, Tensor) or tuple(d.shape) != tuple(w.shape):
            shape = tuple(d.shape) if isinstance(d, Tensor) else type(d).__name__
            raise ValueError(f"`{name}`[{key!r}] must have shape {tuple(w.shape)}, got {shape}.")
        placements = getattr(d, "placements", None)
        if placements is not None and tuple(placements) != tuple(w.placements):  # type: ignore[attr-defined]
            raise ValueError(
                f"`{name}`[{key!r}] is sharded as {tuple(placements)}, its parameter as "
                f"{tuple(w.placements)}: pass it sharded like the parameter, or as a full tensor."  # type: ignore[attr-defined]
            )
        local = local_tensor(w)
        piece = local_tensor(d) if placements is not None else shard_of(d.detach().to(local.device), w)
        out.append(piece.detach().to(dtype=w.dtype, device=local.device))
    return out


# -- random directions ---------------------------------------------------------------------------------


def _row_sums(piece: Tensor, p: Tensor, dim: int | None) -> Tensor:
    """This rank's part of the sums of squares of ``p``'s filters along ``dim`` (each at its global index),
    or of all of ``p`` (one entry) for ``dim=None``: summed over ranks they are the full sums."""
    x = piece.double()
    if dim is None:
        return (x * x).sum().reshape(1)
    sq = (x * x).movedim(dim, 0)
    rows = sq.reshape(sq.shape[0], math.prod(sq.shape[1:])).sum(1)  # an empty shard has no rows
    where = shard_range(p)
    if where is None or where[0] != dim:
        return rows  # every rank holds every filter (in part)
    full = torch.zeros(p.shape[dim], dtype=torch.float64, device=x.device)
    full[where[1] : where[1] + where[2]] = rows
    return full


def _local_rows(total: Tensor, p: Tensor, dim: int | None) -> Tensor:
    """The full sums of :func:`_row_sums` that concern this rank's shard, broadcastable to it."""
    if dim is None:
        return total.reshape([1] * p.dim())
    where = shard_range(p)
    if where is not None and where[0] == dim:
        total = total[where[1] : where[1] + where[2]]
    shape = [1] * p.dim()
    shape[dim] = -1
    return total.reshape(shape)


def _ratio(target: Tensor, current: Tensor) -> Tensor:
    # A zero random filter (measure zero) would divide by zero: leave it zero (as on one process).
    return torch.where(current > 0, target / current.clamp_min(torch.finfo(current.dtype).tiny), 0.0)


def normalize(
    pieces: Mapping[str, Tensor],
    weights: Mapping[str, Tensor],
    normalization: str | None,
    skip: Sequence[str],
    filters_last: Sequence[str] = (),
) -> Direction:
    """:func:`~.directions.normalize_direction` on shards: ``pieces`` (float64 local shards) rescaled to the
    scale of ``weights`` with the norms summed over all ranks (one reduction); a sharded direction. Filters
    run along the leading dimension, the last for the names in ``filters_last``."""
    skipped, last = set(skip), set(filters_last)
    kept = [n for n in weights if n not in skipped]
    scaled = normalization in ("filter", "layer", "model")
    dims: dict[str, int | None] = {
        n: (w.dim() - 1 if n in last else 0) if normalization == "filter" and w.dim() > 1 else None
        for n, w in weights.items()
    }
    pairs = [
        (_row_sums(local_tensor(weights[n]), weights[n], dims[n]), _row_sums(pieces[n], weights[n], dims[n]))
        for n in (kept if scaled else [])
    ]
    flat = [t for pair in pairs for t in pair]
    sums = all_reduce_sum(torch.cat(flat)) if flat else torch.zeros(0, dtype=torch.float64)
    w_sq: dict[str, Tensor] = {}
    d_sq: dict[str, Tensor] = {}
    offset = 0
    for n, (a, _) in zip(kept, pairs, strict=False):
        w_sq[n], d_sq[n] = (
            sums[offset : offset + a.numel()],
            sums[offset + a.numel() : offset + 2 * a.numel()],
        )
        offset += 2 * a.numel()
    if normalization == "model" and kept:
        w_total = torch.stack([w_sq[n].sum() for n in kept]).sum().sqrt()
        d_total = torch.stack([d_sq[n].sum() for n in kept]).sum().sqrt()
        scales = {n: _ratio(w_total, d_total).reshape(1) for n in kept}
    else:
        scales = {n: _ratio(w_sq[n].sqrt(), d_sq[n].sqrt()) for n in w_sq}
    out: Direction = {}
    for n, w in weights.items():
        if n in skipped:
            local = torch.zeros_like(local_tensor(w))
        elif scaled:
            local = pieces[n] * _local_rows(scales[n], w, dims[n])
        else:
            local = pieces[n]
        out[n] = as_sharded(local, w)
    return out


def random_directions(
    model: nn.Module,
    n: int,
    normalization: str | None,
    skip: Sequence[str],
    generator: torch.Generator,
    filters_last: Sequence[str] = (),
) -> list[Direction]:
    """``n`` Gaussian directions sharded like ``model``'s parameters, the same as on one process (the
    entries drawn in full from ``generator`` in the same order, each rank keeping its shard); filters along
    the last dimension for the names in ``filters_last`` (Hugging Face ``Conv1D``)."""
    weights = _trainable(model)
    out = []
    for _ in range(n):
        pieces = {}
        for name, w in weights.items():
            full = torch.randn(w.shape, generator=generator, dtype=torch.float64)
            pieces[name] = shard_of(full, w).to(local_tensor(w).device)
        out.append(normalize(pieces, weights, normalization, skip, filters_last))
    return out


# -- the loss at points ----------------------------------------------------------------------------------


def grid_losses(
    model: nn.Module,
    loss_fn: LossFn,
    batches: Sequence[Any],
    weights: Mapping[str, Tensor],
    basis: Sequence[Sequence[Tensor]],
    coeffs: Tensor,
    train_mode: bool,
    seed: int,
) -> Tensor:
    """The mean loss over all ranks' batches at ``theta + coeffs[p] @ basis`` for every row ``p``.

    Returns:
        ``[P]`` float64 losses on the CPU (non-finite ones as they are).
    """
    locals_ = [local_tensor(w) for w in weights.values()]
    saved = [t.detach().clone() for t in locals_]
    stacked = [torch.stack([b[i] for b in basis]) for i in range(len(locals_))]
    sizes = [float(batch_size(b)) for b in batches]
    count = torch.tensor([float(len(batches)), -float(len(batches))], dtype=torch.float64)
    device = saved[0].device
    count = count.to(device)
    torch.distributed.all_reduce(count, op=torch.distributed.ReduceOp.MAX)
    if int(count[0].item()) != -int(count[1].item()):
        raise ValueError(
            "Under FSDP every rank must pass the same number of batches (each forward all-gathers the "
            f"parameters); they pass {-int(count[1].item())} to {int(count[0].item())}."
        )
    total = torch.zeros(coeffs.shape[0], dtype=torch.float64)
    try:
        with probe_context(model, train_mode, grad=False):
            for p, c in enumerate(coeffs):
                reshard(model)  # the next forward gathers the moved shards, not a kept full copy
                with torch.no_grad():
                    for t, s, d in zip(locals_, saved, stacked, strict=True):
                        t.copy_(s + torch.tensordot(c.to(s.dtype), d, dims=1))
                for i, batch in enumerate(batches):
                    if train_mode:
                        torch.manual_seed(seed * 1_000_003 + i)
                    total[p] += float(loss_fn(model, batch).detach()) * sizes[i]
    finally:
        reshard(model)
        with torch.no_grad():
            for t, s in zip(locals_, saved, strict=True):
                t.copy_(s)
    packed = all_reduce_sum(torch.cat([total, torch.tensor([sum(sizes)], dtype=torch.float64)]).to(device))
    packed = packed.cpu()
    return packed[:-1] / packed[-1]


# -- lines and planes ------------------------------------------------------------------------------------


def loss_line(
    model: nn.Module,
    loss_fn: LossFn,
    batches: Sequence[Any],
    direction: Mapping[str, Tensor] | None,
    span: tuple[float, float] | None,
    steps: int,
    towards: nn.Module | None,
    quadratic: bool,
    train_mode: bool,
    seed: int,
    hvp: HvpMethod,
) -> LineResult:
    """:func:`~.lines.loss_line` of a model holding an FSDP2 module (arguments checked there)."""
    if towards is not None:
        raise ValueError(
            "`towards` is not supported under FSDP: a segment between two sharded models needs both "
            "sharded alike. Pass `direction` (e.g. the difference of their state dicts, sharded like the "
            "parameters), or gather both models to one process."
        )
    batches = validate_inputs(model, loss_fn, batches)
    weights = _trainable(model)
    op: FSDPHessianOperator | None = None
    if quadratic:  # built first: an unsupported `hvp` is refused before any evaluation
        built = HessianOperator(model, loss_fn, batches, train_mode=train_mode, seed=seed, hvp=hvp)
        assert isinstance(built, FSDPHessianOperator)
        op = built
    direction, meta = given_or_random(model, direction, 1, seed)
    d = local_pieces(direction, weights, "direction")
    alphas = linspace(span if span is not None else (-1.0, 1.0), steps)
    coeffs = torch.cat([alphas, torch.zeros(1, dtype=torch.float64)])[:, None]
    losses = grid_losses(model, loss_fn, batches, weights, [d], coeffs, train_mode, seed)
    check_finite(losses, "line")
    slope = curvature = None
    if op is not None:
        names = list(weights)
        slope, curvature = op.line_derivatives([d[names.index(n)] for n in op.param_names])
    return LineResult(alphas, losses[:-1], float(losses[-1]), slope, curvature, meta)


def loss_plane(
    model: nn.Module,
    loss_fn: LossFn,
    batches: Sequence[Any],
    directions: Sequence[Mapping[str, Tensor]] | None,
    span: tuple[float, float],
    steps: int,
    train_mode: bool,
    seed: int,
) -> PlaneResult:
    """:func:`~.lines.loss_plane` of a model holding an FSDP2 module (arguments checked there)."""
    batches = validate_inputs(model, loss_fn, batches)
    weights = _trainable(model)
    directions, meta = given_or_random(model, directions, 2, seed)
    d1 = local_pieces(directions[0], weights, "directions[0]")
    d2 = local_pieces(directions[1], weights, "directions[1]")
    axis = linspace(span, steps)
    grid = torch.cartesian_prod(axis, axis)
    coeffs = torch.cat([grid, torch.zeros(1, 2, dtype=torch.float64)])
    losses = grid_losses(model, loss_fn, batches, weights, [d1, d2], coeffs, train_mode, seed)
    check_finite(losses, "plane")
    return PlaneResult(axis, axis, losses[:-1].reshape(steps, steps), float(losses[-1]), meta=meta)


__all__ = ["as_sharded", "grid_losses", "local_pieces", "loss_line", "loss_plane", "random_directions"]
