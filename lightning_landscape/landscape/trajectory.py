r"""The plane of an optimizer's trajectory: the first two principal directions of its iterates.

Conventions of :mod:`~.lines`; the model passed only gives the architecture (its weights are not used nor
modified).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from lightning_landscape.curvature._checks import check_int
from lightning_landscape.curvature._inputs import LossFn
from lightning_landscape.landscape._evaluate import GridEvaluator
from lightning_landscape.landscape.directions import named_trainable, pca_directions, unflatten
from lightning_landscape.landscape.lines import plane_result
from lightning_landscape.landscape.results import PlaneResult


def _load_state(item: Any, argument: str) -> dict[str, Tensor]:
    if isinstance(item, (str, Path)):
        loaded = torch.load(item, map_location="cpu", weights_only=True)
        if isinstance(loaded, Mapping) and isinstance(loaded.get("state_dict"), Mapping):
            loaded = loaded["state_dict"]  # a Lightning checkpoint
        item = loaded
    if not isinstance(item, Mapping):
        raise TypeError(f"`{argument}` must hold state dicts or checkpoint paths, got {type(item).__name__}.")
    return {str(k): v for k, v in item.items() if isinstance(v, Tensor)}


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
            wrong shape, or bad arguments.

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
    evaluator = GridEvaluator(
        model,
        loss_fn,
        batches,
        train_mode=train_mode,
        chunk_size=chunk_size,
        memory_budget=memory_budget,
        vectorize=vectorize,
        seed=0,
    )
    like = named_trainable(model)
    buffer_names = {n for n, _ in model.named_buffers()}
    states = [_load_state(item, "checkpoints_or_state_dicts") for item in checkpoints_or_state_dicts]
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
    plane = plane_result(evaluator, center, buffers or None, d1, d2, axes[0], axes[1], meta)
    basis = [unflatten((f - path[-1]).to(device), like) for f in flats]
    eye = torch.eye(len(flats), dtype=torch.float64)
    plane.path = coords.to(torch.float64).cpu()
    plane.path_losses = evaluator.losses(center, basis, eye, buffers or None)
    return plane


__all__ = ["trajectory_plane"]
