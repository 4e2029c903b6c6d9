"""The loss landscape: directions, lines, planes, barriers between models, trajectory planes, sharpness.

Pure PyTorch (no Lightning import), on top of the curvature core: usable on any ``nn.Module`` with
``loss_fn(model, batch)`` and fixed batches. Grid points are evaluated many per forward
(``torch.func.functional_call`` under ``vmap``); the model is left exactly as found.

* :mod:`~.directions`: random (filter-normalized) and Hessian directions, PCA of a trajectory;
* :mod:`~.lines`: :func:`loss_line`, :func:`loss_plane`; :mod:`~.barrier`: :func:`linear_barrier`;
  :mod:`~.trajectory`: :func:`trajectory_plane`; :mod:`~.results`: what they return;
* :mod:`~.align`: :func:`align` (permutation and rescaling symmetry), :func:`functional_distance`;
  :mod:`~.sharpness`: :func:`adaptive_sharpness`;
* :mod:`~._evaluate` (the vectorized grid) and :mod:`~._affine` (its cached first-layer products).
"""

from lightning_landscape.landscape.align import AlignResult, FunctionalDistance, align, functional_distance
from lightning_landscape.landscape.barrier import linear_barrier
from lightning_landscape.landscape.directions import (
    Direction,
    HessianDirections,
    hessian_directions,
    normalize_direction,
    random_directions,
)
from lightning_landscape.landscape.lines import loss_line, loss_plane
from lightning_landscape.landscape.results import BarrierResult, LineResult, PlaneResult
from lightning_landscape.landscape.sharpness import SharpnessResult, adaptive_sharpness
from lightning_landscape.landscape.trajectory import trajectory_plane

__all__ = [
    "AlignResult",
    "BarrierResult",
    "Direction",
    "FunctionalDistance",
    "HessianDirections",
    "LineResult",
    "PlaneResult",
    "SharpnessResult",
    "adaptive_sharpness",
    "align",
    "functional_distance",
    "hessian_directions",
    "linear_barrier",
    "loss_line",
    "loss_plane",
    "normalize_direction",
    "random_directions",
    "trajectory_plane",
]
