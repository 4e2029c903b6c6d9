r"""Directions in weight space: random filter-normalized, Hessian eigenvectors, PCA of a trajectory, and
the difference of two models of one architecture.

A direction is a ``dict[str, Tensor]`` keyed like ``model.named_parameters()`` (trainable parameters only),
each tensor shaped, typed and placed like its parameter. A point of a line or plane is
:math:`\theta + \alpha d_1 (+ \beta d_2)`.

Filter normalization (Li et al. 2018, "Visualizing the Loss Landscape of Neural Nets", NeurIPS) rescales
every filter :math:`d_{i,j}` of a Gaussian direction (row ``j`` of a Linear weight, output channel ``j`` of a
Conv weight, column ``j`` of a Hugging Face ``Conv1D`` weight, which GPT-2 stores as ``(in, out)``) to the
norm of the matching filter of the weights,

.. math::

    d_{i,j} \leftarrow \frac{d_{i,j}}{\lVert d_{i,j} \rVert} \lVert \theta_{i,j} \rVert,

so that a step :math:`\alpha = 1` moves every filter by its own size whatever the scale of its layer (a
network with ReLUs is invariant to rescaling a filter, and the raw loss surface would show that invariance
rather than the geometry).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal, NamedTuple

import torch
from torch import Tensor, nn

from lightning_landscape._torch import NormBase
from lightning_landscape.curvature import hessian_eigenvalues
from lightning_landscape.curvature._checks import DEFAULT_TOL, check_int
from lightning_landscape.curvature._inputs import LossFn, make_generator
from lightning_landscape.curvature.operators._strategies import is_dtensor, wants_fsdp

Direction = dict[str, Tensor]
"""A direction in weight space: one tensor per trainable parameter, keyed like ``named_parameters()``."""

Normalization = Literal["filter", "layer", "model"]
_NORMALIZATIONS = ("filter", "layer", "model", None)
_IGNORES = ("biasbn", None)
_NORM_LAYERS = (NormBase, nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm)


def named_trainable(model: nn.Module) -> dict[str, Tensor]:
    """The trainable parameters of ``model`` by name, each once, in ``named_parameters()`` order."""
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def _norm_layer_params(model: nn.Module) -> set[str]:
    names: set[str] = set()
    for prefix, module in model.named_modules():
        if isinstance(module, _NORM_LAYERS):
            names.update(f"{prefix}.{n}" if prefix else n for n, _ in module.named_parameters(recurse=False))
    return names


def _filters_last(model: nn.Module) -> set[str]:
    """Names of the weights whose filters run along the last dimension: Hugging Face ``Conv1D`` (GPT-2's
    linear layers, ``y = x W + b`` with ``W`` of shape ``(in, out)``)."""
    names: set[str] = set()
    for prefix, module in model.named_modules():
        kind = type(module)
        if kind.__name__ == "Conv1D" and kind.__module__.startswith("transformers."):
            names.update(f"{prefix}.{n}" if prefix else n for n, _ in module.named_parameters(recurse=False))
    return names


def _filter_norms(t: Tensor, last: bool = False) -> Tensor:
    """Norm of each filter (leading index, or the last with ``last``), broadcastable to ``t``; a 0-d/1-d
    tensor is one filter."""
    if t.dim() <= 1:
        return torch.linalg.vector_norm(t).reshape([1] * t.dim())
    if last:
        return torch.linalg.vector_norm(t.reshape(-1, t.shape[-1]), dim=0).reshape([1] * (t.dim() - 1) + [-1])
    return torch.linalg.vector_norm(t.reshape(t.shape[0], -1), dim=1).reshape([-1] + [1] * (t.dim() - 1))


def _ratio(target: Tensor, current: Tensor) -> Tensor:
    # A zero random filter (measure zero) would divide by zero: leave it zero.
    return torch.where(current > 0, target / current.clamp_min(torch.finfo(current.dtype).tiny), 0.0)


def normalize_direction(
    direction: Mapping[str, Tensor],
    weights: Mapping[str, Tensor],
    normalization: Normalization | None,
    skip: Sequence[str] = (),
    filters_last: Sequence[str] = (),
) -> Direction:
    """Rescale ``direction`` to the scale of ``weights`` (module docstring); ``skip`` names are zeroed.

    ``"filter"``: every filter (the leading index; the last for the names in ``filters_last``, e.g. a Hugging
    Face ``Conv1D`` weight of shape ``(in, out)``) to its weight filter's norm; ``"layer"``: every tensor to
    its weight tensor's norm; ``"model"``: the whole direction (skipped entries excluded) to the norm of the
    weights (same entries); ``None``: unchanged.

    Raises:
        ValueError: for an unknown ``normalization`` or names that do not match ``weights``.
    """
    if normalization not in _NORMALIZATIONS:
        raise ValueError(f"`normalization` must be one of {_NORMALIZATIONS}, got {normalization!r}.")
    if set(direction) != set(weights):
        missing = sorted(set(weights) ^ set(direction))[:5]
        raise ValueError(f"the direction's names do not match the model's trainable parameters: {missing}")
    out: Direction = {}
    skipped, last = set(skip), set(filters_last)
    for name, d in direction.items():
        w = weights[name].detach()
        d = d.detach().to(dtype=w.dtype, device=w.device)
        if name in skipped:
            out[name] = torch.zeros_like(w)
        elif normalization == "filter":
            out[name] = d * _ratio(_filter_norms(w, name in last), _filter_norms(d, name in last))
        elif normalization == "layer":
            out[name] = d * _ratio(torch.linalg.vector_norm(w), torch.linalg.vector_norm(d))
        else:
            out[name] = d.clone()
    if normalization == "model":
        kept = [n for n in out if n not in skipped]
        w_norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(weights[n]) for n in kept]))
        d_norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(out[n]) for n in kept]))
        scale = _ratio(w_norm.to(torch.float64), d_norm.to(torch.float64))
        out = {n: d * scale.to(d.dtype) for n, d in out.items()}
    return out


def random_directions(
    model: nn.Module,
    n: int = 2,
    normalization: Normalization | None = "filter",
    seed: int = 0,
    ignore: Literal["biasbn"] | None = "biasbn",
) -> list[Direction]:
    """``n`` Gaussian directions around the model's weights, normalized as in Li et al. 2018.

    The entries are drawn in float64 on the CPU from a private generator seeded by ``seed`` (the global RNG is
    never touched, and the directions are the same on every device), then normalized (see
    :func:`normalize_direction`) and cast to each parameter's dtype and device. Under FSDP2 (``fully_shard``)
    every entry is a ``DTensor`` sharded like its parameter, the same numbers as on one process (the filter
    norms summed over the shards).

    Args:
        model: the model; its trainable parameters define the space.
        n: how many directions (``>= 1``).
        normalization: ``"filter"`` (default), ``"layer"``, ``"model"`` or ``None`` (raw Gaussian).
        seed: seeds the private generator.
        ignore: ``"biasbn"`` (default) zeroes biases and the parameters of normalization layers (every
            parameter with at most one dimension, and every parameter of a BatchNorm/LayerNorm/GroupNorm), as
            in the paper; ``None`` keeps them (a 0-d/1-d tensor is then one filter).

    Returns:
        A list of ``n`` directions.

    Raises:
        ValueError: for a bad ``n``, ``normalization``, ``seed`` or ``ignore``, or no trainable parameter.

    Example::

        >>> model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 1))
        >>> d1, d2 = random_directions(model, n=2)
        >>> torch.allclose(d1["0.weight"].norm(dim=1), model[0].weight.norm(dim=1))
        True
        >>> float(d1["0.bias"].abs().sum())
        0.0
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"`model` must be a torch.nn.Module, got {type(model).__name__}.")
    check_int("n", n)
    check_int("seed", seed, minimum=0)
    if ignore not in _IGNORES:
        raise ValueError(f"`ignore` must be one of {_IGNORES}, got {ignore!r}.")
    if normalization not in _NORMALIZATIONS:
        raise ValueError(f"`normalization` must be one of {_NORMALIZATIONS}, got {normalization!r}.")
    weights = named_trainable(model)
    if not weights:
        raise ValueError("`model` has no trainable parameters (none with requires_grad=True).")
    skip: list[str] = []
    if ignore == "biasbn":
        norm_params = _norm_layer_params(model)
        skip = [name for name, w in weights.items() if w.dim() <= 1 or name in norm_params]
    gen = make_generator(seed)
    if wants_fsdp(model):  # drawn in full, kept and normalized as shards: see landscape/_sharded.py
        from lightning_landscape.landscape import _sharded

        return _sharded.random_directions(model, n, normalization, skip, gen, sorted(_filters_last(model)))
    out = []
    for _ in range(n):
        raw = {name: torch.randn(w.shape, generator=gen, dtype=torch.float64) for name, w in weights.items()}
        out.append(normalize_direction(raw, weights, normalization, skip, sorted(_filters_last(model))))
    return out


class HessianDirections(NamedTuple):
    """Hessian eigenvectors as unit directions, with their eigenvalues.

    Attributes:
        directions: one direction per eigenvalue (unit norm over all trainable parameters).
        eigenvalues: float64 eigenvalues, in the order of ``directions``.
        converged: whether every eigenvalue met the solver's tolerance.
    """

    directions: list[Direction]
    eigenvalues: Tensor
    converged: bool


def given_or_random(model: nn.Module, given: Any, n: int, seed: int) -> tuple[Any, dict[str, Any]]:
    """The direction of a line (``n=1``) or the pair of a plane (``n=2``), with the result's ``meta``.

    ``given`` as it is (a plane's checked to be a pair), or ``n`` filter-normalized random directions drawn
    under ``seed`` (:func:`random_directions`; on the shards under FSDP2).

    Raises:
        ValueError: If a plane's ``given`` is not a sequence of two directions.
    """
    key = "direction" if n == 1 else "directions"
    if given is None:
        drawn = random_directions(model, n, seed=seed)
        return (drawn[0] if n == 1 else drawn), {key: "random", "normalization": "filter", "seed": seed}
    if n == 2 and (isinstance(given, Mapping) or len(given) != 2):
        raise ValueError("`directions` must be a pair (d1, d2) of dict[str, Tensor] directions.")
    return given, {key: "given"}


def unflatten(vector: Tensor, like: Mapping[str, Tensor]) -> Direction:
    """Split a flat vector (``named_parameters()`` order) into a direction shaped like ``like``."""
    out: Direction = {}
    offset = 0
    for name, p in like.items():
        piece = vector[offset : offset + p.numel()].reshape(p.shape)
        if is_dtensor(p):  # FSDP2: the direction is sharded like its parameter
            from lightning_landscape.landscape._sharded import as_sharded, shard_of

            out[name] = as_sharded(shard_of(piece, p), p)
        else:
            out[name] = piece.to(dtype=p.dtype, device=p.device)
        offset += p.numel()
    if offset != vector.numel():
        raise ValueError(f"vector of {vector.numel()} entries for {offset} trainable parameters")
    return out


def flatten(direction: Mapping[str, Tensor], like: Mapping[str, Tensor] | None = None) -> Tensor:
    """Concatenate a direction into one flat vector (in the order of ``like``'s names when given)."""
    names = list(like) if like is not None else list(direction)
    pieces = []
    for n in names:
        gather = getattr(direction[n], "full_tensor", None)  # FSDP2: gathered, the vector whole on every rank
        pieces.append((gather() if gather is not None else direction[n]).reshape(-1))
    return torch.cat(pieces)


def hessian_directions(
    model: nn.Module,
    loss_fn: LossFn,
    batches: Sequence[Any],
    k: int = 2,
    which: Literal["largest", "smallest"] = "largest",
    tol: float = DEFAULT_TOL,
    seed: int = 0,
    **kwargs: Any,
) -> HessianDirections:
    """The top (or bottom) ``k`` Hessian eigenvectors as directions, from the curvature core's Lanczos.

    The Hessian is the one of :func:`~lightning_landscape.curvature.hessian_eigenvalues` (batch-size-weighted
    mean of ``loss_fn`` over ``batches``, eval mode); further keyword arguments (``max_iter``, ``memory``,
    ``train_mode``, ``backend``, ``hvp``) go to it. The model is left exactly as found.

    Returns:
        A :class:`HessianDirections` (directions of unit norm, eigenvalues, converged flag).

    Raises:
        ValueError: for ``which`` other than ``"largest"``/``"smallest"`` and whatever
            :func:`~lightning_landscape.curvature.hessian_eigenvalues` refuses.

    Example::

        >>> model = nn.Linear(3, 1)
        >>> x = torch.randn(32, 3)
        >>> loss_fn = lambda m, b: ((m(b) - 1.0) ** 2).mean()
        >>> dirs, values, converged = hessian_directions(model, loss_fn, [x], k=2)
        >>> len(dirs), values.shape
        (2, torch.Size([2]))
    """
    if which not in ("largest", "smallest"):
        raise ValueError(f"`which` must be 'largest' or 'smallest', got {which!r}.")
    result = hessian_eigenvalues(
        model, loss_fn, batches, k=k, which=which, tol=tol, seed=seed, return_eigenvectors=True, **kwargs
    )
    assert result.eigenvectors is not None
    like = named_trainable(model)
    directions = [unflatten(v.detach(), like) for v in result.eigenvectors]
    return HessianDirections(directions, result.eigenvalues.to(torch.float64), bool(result.converged))


def pca_directions(offsets: Tensor, k: int = 2) -> tuple[Tensor, Tensor]:
    """The first ``k`` principal directions of the rows of ``offsets`` ``[m, n]`` (uncentred, as in
    tomgoldstein/loss-landscape: offsets of the iterates from the final one) and their explained variance
    ratios.

    Returns:
        ``(vectors [k, n] orthonormal, ratios [k])``; directions beyond the rank of ``offsets`` are zero.
    """
    _, s, vh = torch.linalg.svd(offsets.to(torch.float64), full_matrices=False)
    vectors = torch.zeros(k, offsets.shape[1], dtype=torch.float64, device=offsets.device)
    r = min(k, vh.shape[0])
    vectors[:r] = vh[:r]
    energy = (s**2).sum()
    ratios = torch.zeros(k, dtype=torch.float64)
    if float(energy) > 0:
        ratios[:r] = (s[:r] ** 2 / energy).cpu()
    return vectors, ratios


def check_pair(model_a: nn.Module, model_b: nn.Module) -> None:
    """A ``TypeError``/``ValueError`` unless both are modules of one architecture (parameters and buffers, by
    name and shape)."""
    for name, m in (("model_a", model_a), ("model_b", model_b)):
        if not isinstance(m, nn.Module):
            raise TypeError(f"`{name}` must be a torch.nn.Module, got {type(m).__name__}.")
    shapes_a = {n: tuple(p.shape) for n, p in model_a.named_parameters()}
    shapes_b = {n: tuple(p.shape) for n, p in model_b.named_parameters()}
    bufs_a = {n: tuple(b.shape) for n, b in model_a.named_buffers()}
    bufs_b = {n: tuple(b.shape) for n, b in model_b.named_buffers()}
    if shapes_a != shapes_b or bufs_a != bufs_b:
        diff = sorted(
            set(shapes_a.items()) ^ set(shapes_b.items()) | set(bufs_a.items()) ^ set(bufs_b.items())
        )
        raise ValueError(
            "the two models must have one architecture (the same parameters and buffers, by name "
            f"and shape); they differ in {diff[:5]}."
        )


def difference(model_a: nn.Module, model_b: nn.Module) -> tuple[Direction, dict[str, Tensor]]:
    """``b - a`` over the trainable parameters of ``a`` (a direction) and over the floating buffers.

    Raises:
        TypeError, ValueError: unless the two models have one architecture.

    Example:
        >>> a, b = nn.Linear(2, 1), nn.Linear(2, 1)
        >>> delta, _ = difference(a, b)
        >>> torch.equal(delta["bias"], (b.bias - a.bias).detach())
        True
    """
    check_pair(model_a, model_b)
    wa, wb = named_trainable(model_a), dict(model_b.named_parameters())
    delta = {n: (wb[n].detach().to(wa[n].device, wa[n].dtype) - wa[n].detach()) for n in wa}
    ba, bb = dict(model_a.named_buffers()), dict(model_b.named_buffers())
    buffer_delta = {
        n: bb[n].detach().to(b.device, b.dtype) - b.detach() for n, b in ba.items() if b.is_floating_point()
    }
    return delta, buffer_delta


__all__ = [
    "Direction",
    "HessianDirections",
    "Normalization",
    "check_pair",
    "difference",
    "flatten",
    "hessian_directions",
    "named_trainable",
    "normalize_direction",
    "pca_directions",
    "random_directions",
    "unflatten",
]
