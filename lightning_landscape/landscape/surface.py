r"""Loss lines, planes, barriers between two models and the plane of an optimizer's trajectory.

Conventions of the curvature core: ``loss_fn(model, batch) -> scalar``, a list of fixed ``batches`` (the loss
is their batch-size-weighted mean), eval mode unless ``train_mode``, the model left exactly as found (weights,
buffers, modes, ``.grad``, global RNG). Only trainable parameters move; buffers stay the model's own except
where a function says otherwise (:func:`linear_barrier`, :func:`trajectory_plane`).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from lightning_landscape._torch import BatchNormBase
from lightning_landscape.curvature._checks import check_int
from lightning_landscape.curvature._inputs import LossFn, batch_size
from lightning_landscape.curvature._model_state import rng_devices
from lightning_landscape.landscape._evaluate import (
    GridEvaluator,
    _LossOf,
    check_finite,
    linspace,
    probe_context,
)
from lightning_landscape.landscape.directions import (
    Direction,
    named_trainable,
    pca_directions,
    random_directions,
    unflatten,
)
from lightning_landscape.landscape.results import BarrierResult, LineResult, PlaneResult

BufferMode = Literal["interpolate", "reestimate"]
_BUFFER_MODES = ("interpolate", "reestimate")


def _options(
    train_mode: bool, chunk_size: int | None, memory_budget: int | None, vectorize: bool, seed: int
) -> dict[str, Any]:
    """The evaluation options every function here shares (see :func:`loss_line`)."""
    return {
        "train_mode": train_mode,
        "chunk_size": chunk_size,
        "memory_budget": memory_budget,
        "vectorize": vectorize,
        "seed": seed,
    }


def _evaluator(
    model: nn.Module, loss_fn: LossFn, batches: Sequence[Any], options: dict[str, Any]
) -> GridEvaluator:
    return GridEvaluator(model, loss_fn, batches, **options)


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
) -> tuple[float, float]:
    r""":math:`g^\top d` and :math:`d^\top H d` of the mean loss at the model's weights (double backward on
    detached copies of the weights: the model's parameters and ``.grad`` are not involved)."""
    weights = named_trainable(model)
    wrapper = _LossOf(model, loss_fn)
    sizes = [float(batch_size(b)) for b in batches]
    gd_total = dhd_total = 0.0
    with probe_context(model, train_mode, grad=True):
        for i, batch in enumerate(batches):
            torch.manual_seed(seed * 1_000_003 + i)
            leaves = {n: w.detach().requires_grad_(True) for n, w in weights.items()}
            state = {f"model.{n}": t for n, t in leaves.items()}
            loss = torch.func.functional_call(wrapper, state, (batch,), strict=False)
            grads = torch.autograd.grad(loss, list(leaves.values()), create_graph=True, allow_unused=True)
            gd = sum(
                ((g * direction[n]).sum() for n, g in zip(leaves, grads, strict=True) if g is not None),
                torch.zeros((), dtype=torch.float64),
            )
            dhd = 0.0
            if isinstance(gd, Tensor) and gd.requires_grad:
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


def _state_tensors(model: nn.Module) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    weights = {n: p.detach() for n, p in named_trainable(model).items()}
    buffers = {n: b.detach() for n, b in model.named_buffers()}
    return weights, buffers


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
) -> LineResult:
    r"""The loss along :math:`\theta + \alpha d` for ``steps`` values of :math:`\alpha` in ``span``.

    With ``towards=other`` (same architecture) the line is the segment from the model's weights
    (:math:`\alpha = 0`) to ``other``'s (:math:`\alpha = 1`), ``span`` defaulting to ``(0, 1)``; floating
    buffers (BatchNorm statistics) are interpolated along with the weights. With ``direction`` (default: one
    filter-normalized random direction from ``seed``) ``span`` defaults to ``(-1, 1)`` and, with
    ``quadratic``, the result also holds :math:`g^\top d` and :math:`d^\top H d` at the centre (one double
    backward), so that :meth:`LineResult.plot` overlays the second-order prediction; for a unit Hessian
    eigenvector :math:`d^\top H d` is its eigenvalue.

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
        chunk_size: points per vectorized forward (``None``: from ``memory_budget``).
        memory_budget: bytes a chunk may use (``None``: a quarter of the free device memory).
        vectorize: ``False`` evaluates point by point.
        seed: the random direction's seed (and that of random layers in train mode).

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
    options = _options(train_mode, chunk_size, memory_budget, vectorize, seed)
    evaluator = _evaluator(model, loss_fn, batches, options)
    weights, buffers = _state_tensors(model)
    if direction is not None and towards is not None:
        raise ValueError("pass either `direction` or `towards`, not both.")
    if towards is not None:
        alphas = linspace(span if span is not None else (0.0, 1.0), steps)
        delta, buffer_delta = _difference(model, towards)
        coeffs = torch.cat([alphas, torch.zeros(1, dtype=torch.float64)])[:, None]
        losses = evaluator.losses(weights, [delta], coeffs, buffers, [buffer_delta])
        check_finite(losses, "line")
        return LineResult(alphas, losses[:-1], float(losses[-1]), meta={"direction": "interpolation"})
    meta: dict[str, Any] = {"direction": "given"}
    if direction is None:
        direction = random_directions(model, 1, seed=seed)[0]
        meta = {"direction": "random", "normalization": "filter", "seed": seed}
    d = _check_direction(direction, weights, "direction")
    alphas = linspace(span if span is not None else (-1.0, 1.0), steps)
    coeffs = torch.cat([alphas, torch.zeros(1, dtype=torch.float64)])[:, None]
    losses = evaluator.losses(weights, [d], coeffs)
    check_finite(losses, "line")
    slope = curvature = None
    if quadratic:
        slope, curvature = _slope_curvature(model, loss_fn, evaluator.batches, d, train_mode, seed)
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
    evaluator = _evaluator(
        model, loss_fn, batches, _options(train_mode, chunk_size, memory_budget, vectorize, seed)
    )
    weights, _ = _state_tensors(model)
    meta: dict[str, Any] = {"directions": "given"}
    if directions is None:
        directions = random_directions(model, 2, seed=seed)
        meta = {"directions": "random", "normalization": "filter", "seed": seed}
    if isinstance(directions, Mapping) or len(directions) != 2:
        raise ValueError("`directions` must be a pair (d1, d2) of dict[str, Tensor] directions.")
    d1 = _check_direction(directions[0], weights, "directions[0]")
    d2 = _check_direction(directions[1], weights, "directions[1]")
    axis = linspace(span, steps)
    return _plane(evaluator, weights, None, d1, d2, axis, axis, meta)


def _plane(
    evaluator: GridEvaluator,
    weights: Mapping[str, Tensor],
    buffers: Mapping[str, Tensor] | None,
    d1: Direction,
    d2: Direction,
    alphas: Tensor,
    betas: Tensor,
    meta: dict[str, Any],
) -> PlaneResult:
    grid = torch.cartesian_prod(alphas, betas)
    coeffs = torch.cat([grid, torch.zeros(1, 2, dtype=torch.float64)])
    losses = evaluator.losses(weights, [d1, d2], coeffs, buffers)
    check_finite(losses, "plane")
    return PlaneResult(
        alphas, betas, losses[:-1].reshape(len(alphas), len(betas)), float(losses[-1]), meta=meta
    )


def _check_pair(model_a: nn.Module, model_b: nn.Module) -> None:
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


def _difference(model_a: nn.Module, model_b: nn.Module) -> tuple[Direction, dict[str, Tensor]]:
    """``b - a`` over the trainable parameters of ``a`` and over the floating buffers."""
    _check_pair(model_a, model_b)
    wa, wb = named_trainable(model_a), dict(model_b.named_parameters())
    delta = {n: (wb[n].detach().to(wa[n].device, wa[n].dtype) - wa[n].detach()) for n in wa}
    ba, bb = dict(model_a.named_buffers()), dict(model_b.named_buffers())
    buffer_delta = {
        n: bb[n].detach().to(b.device, b.dtype) - b.detach() for n, b in ba.items() if b.is_floating_point()
    }
    return delta, buffer_delta


def _reestimated(model: nn.Module, loss_fn: LossFn, batches: Sequence[Any], seed: int) -> nn.Module:
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
    if buffers not in _BUFFER_MODES:
        raise ValueError(f"`buffers` must be one of {_BUFFER_MODES}, got {buffers!r}.")
    options = _options(train_mode, chunk_size, memory_budget, vectorize, seed)
    delta, buffer_delta = _difference(model_a, model_b)
    ts = torch.linspace(0.0, 1.0, steps, dtype=torch.float64)
    if buffers == "interpolate":
        evaluator = _evaluator(model_a, loss_fn, batches, options)
        weights, bufs = _state_tensors(model_a)
        losses = evaluator.losses(weights, [delta], ts[:, None], bufs, [buffer_delta])
    else:
        evaluator = _evaluator(model_a, loss_fn, batches, options)  # validates the arguments
        values = []
        for t in ts.tolist():
            point = copy.deepcopy(model_a)
            with torch.no_grad():
                for n, p in named_trainable(point).items():
                    p.add_(delta[n], alpha=t)
            point = _reestimated(point, loss_fn, evaluator.batches, seed)
            single = _evaluator(point, loss_fn, evaluator.batches, options)
            w, b = _state_tensors(point)
            values.append(single.losses(w, [], torch.zeros(1, 0, dtype=torch.float64), b))
        losses = torch.cat(values)
    check_finite(losses, "segment")
    loss_a, loss_b = float(losses[0]), float(losses[-1])
    excess = losses - ((1 - ts) * loss_a + ts * loss_b)
    index = int(torch.nan_to_num(excess, nan=-torch.inf).argmax())
    return BarrierResult(
        ts, losses, loss_a, loss_b, float(excess[index]), float(ts[index]), meta={"buffers": buffers}
    )


def _load_state(item: Any, argument: str, index: int) -> dict[str, Tensor]:
    where = f"iterate {index}"
    if isinstance(item, (str, Path)):
        where = f"{item} (iterate {index})"
        try:
            loaded = torch.load(item, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise
        except Exception as err:  # truncated, crafted (refused by weights_only) or not a torch file
            first = (str(err).strip().splitlines() or [""])[0][:200]
            raise ValueError(
                f"{item}: not a readable checkpoint ({type(err).__name__}: {first}); nothing in it was run"
            ) from err
        if isinstance(loaded, Mapping) and isinstance(loaded.get("state_dict"), Mapping):
            loaded = loaded["state_dict"]  # a Lightning checkpoint
        item = loaded
    if not isinstance(item, Mapping):
        raise TypeError(f"`{argument}` must hold state dicts or checkpoint paths, got {type(item).__name__}.")
    state = {str(k): v for k, v in item.items() if isinstance(v, Tensor)}
    bad = sorted(k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all()))
    if bad:
        raise ValueError(f"{where} holds non-finite values in {bad}: a diverged iterate cannot be projected")
    return state


def trajectory_plane(
    checkpoints_or_state_dicts: Sequence[str | Path | Mapping[str, Tensor]],
    model: nn.Module,
    loss_fn: LossFn,
    batches: Sequence[Any],
    steps: int = 41,
    margin: float = 0.2,
    train_mode: bool = False,
    chunk_size: int | None = None,
    memory_budget: int | None = None,
    vectorize: bool = True,
) -> PlaneResult:
    r"""The plane of the first two principal directions of an optimizer's iterates around the last one.

    With iterates :math:`\theta_1, \dots, \theta_m`, the rows :math:`\theta_i - \theta_m` (:math:`i < m`)
    are decomposed by SVD; the first two right singular vectors :math:`v_1, v_2` (orthonormal) span the
    plane through :math:`\theta_m`, each iterate is drawn at :math:`((\theta_i - \theta_m)^\top v_1,
    (\theta_i - \theta_m)^\top v_2)` and the grid covers the path plus ``margin`` of its extent on each side
    (tomgoldstein/loss-landscape's trajectory plot). ``meta["explained_variance"]`` says how much of the
    path the plane holds. ``path_losses`` are the losses at the iterates' own weights (not their
    projections); all losses use the last iterate's buffers (BatchNorm statistics).

    Args:
        checkpoints_or_state_dicts: at least 3 iterates, oldest first: state dicts or paths of ``torch.save``
            files / Lightning checkpoints (loaded with ``weights_only=True``), keyed like
            ``model.state_dict()``.
        model: a module of the iterates' architecture (its own weights are not used nor modified).
        loss_fn: ``loss_fn(model, batch) -> scalar tensor``.
        batches: a non-empty list of batches on the model's device.
        steps: points per axis (``>= 2``).
        margin: fraction of the path's extent added on each side (``>= 0``).
        train_mode, chunk_size, memory_budget, vectorize: as in :func:`loss_line`.

    Returns:
        A :class:`PlaneResult` with ``path`` and ``path_losses``.

    Raises:
        TypeError, ValueError: for fewer than 3 iterates, iterates missing a trainable parameter or with a
            wrong shape, holding non-finite values, a checkpoint file that does not load with
            ``weights_only=True`` (the message names it), or bad arguments.

    Example::

        >>> model = nn.Linear(2, 1)
        >>> x = torch.randn(32, 2)
        >>> iterates = [{k: v + 0.1 * i for k, v in model.state_dict().items()} for i in range(4)]
        >>> plane = trajectory_plane(iterates, model, lambda m, b: (m(b) ** 2).mean(), [x], steps=5)
        >>> plane.path.shape
        torch.Size([4, 2])
    """
    check_int("steps", steps, minimum=2)
    if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not margin >= 0:
        raise ValueError(f"`margin` must be a number >= 0, got {margin!r}.")
    if isinstance(checkpoints_or_state_dicts, (str, Path, Mapping)) or len(checkpoints_or_state_dicts) < 3:
        raise ValueError("`checkpoints_or_state_dicts` must be a list of at least 3 iterates, oldest first.")
    evaluator = _evaluator(
        model, loss_fn, batches, _options(train_mode, chunk_size, memory_budget, vectorize, 0)
    )
    like = named_trainable(model)
    buffer_names = {n for n, _ in model.named_buffers()}
    states = [
        _load_state(item, "checkpoints_or_state_dicts", i)
        for i, item in enumerate(checkpoints_or_state_dicts)
    ]
    flats = []
    for i, state in enumerate(states):
        for n, p in like.items():
            if n not in state or tuple(state[n].shape) != tuple(p.shape):
                got = tuple(state[n].shape) if n in state else "missing"
                raise ValueError(
                    f"iterate {i} does not fit the model: parameter {n!r} expected shape {tuple(p.shape)}, "
                    f"got {got}."
                )
        flats.append(torch.cat([state[n].reshape(-1).to(torch.float64) for n in like]))
    path = torch.stack(flats)
    offsets = path[:-1] - path[-1]
    vectors, ratios = pca_directions(offsets, 2)
    coords = (path - path[-1]) @ vectors.T  # [m, 2]
    device = next(iter(like.values())).device
    center = unflatten(path[-1].to(device), like)
    d1, d2 = (unflatten(v.to(device), like) for v in vectors)
    last = states[-1]
    buffers = {n: last[n].to(device) for n in buffer_names if n in last}
    axes = []
    for j in range(2):
        lo, hi = float(coords[:, j].min()), float(coords[:, j].max())
        pad = margin * (hi - lo) if hi > lo else 1.0
        axes.append(torch.linspace(lo - pad, hi + pad, steps, dtype=torch.float64))
    meta = {
        "directions": "pca",
        "explained_variance": [float(r) for r in ratios],
        "xlabel": f"PC 1 ({100 * float(ratios[0]):.1f}%)",
        "ylabel": f"PC 2 ({100 * float(ratios[1]):.1f}%)",
        "title": "optimizer trajectory",
    }
    plane = _plane(evaluator, center, buffers or None, d1, d2, axes[0], axes[1], meta)
    basis = [unflatten((f - path[-1]).to(device), like) for f in flats]
    eye = torch.eye(len(flats), dtype=torch.float64)
    plane.path = coords.to(torch.float64).cpu()
    plane.path_losses = evaluator.losses(center, basis, eye, buffers or None)
    return plane


__all__ = ["BufferMode", "linear_barrier", "loss_line", "loss_plane", "trajectory_plane"]
