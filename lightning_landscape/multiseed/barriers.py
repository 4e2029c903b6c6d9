r"""Barriers between the seeds' best checkpoints: raw, and aligned up to permutation symmetry.

For the best seed :math:`b` and every other seed :math:`s`, the loss barrier along the straight segment
between their best weights (Frankle et al. 2020, see :func:`~lightning_landscape.landscape.linear_barrier`)

.. math::

    B(b, s) = \max_t L((1-t)\theta_b + t\theta_s) - ((1-t) L(\theta_b) + t L(\theta_s)),

and, when asked, the full symmetric ``K x K`` matrix. Seeds with :math:`B(b, s) <` ``tol`` share the best
seed's basin (linear mode connectivity). A raw barrier ignores permutation symmetry: two networks that
differ only by an order of their hidden units are one minimum, yet the segment between them can climb high.
Large raw barriers are therefore compatible with one basin up to permutation; only a small one says more
(the two seeds are linearly connected as they are). With ``align`` the other seed is first moved onto the
best one along those symmetries (:func:`~lightning_landscape.landscape.align`, the same function) and the
barrier measured again: an aligned barrier below ``tol`` says "one basin up to permutation", an aligned
barrier that remains says the two minima are separated even so. Beside the barriers, the
:func:`~lightning_landscape.landscape.functional_distance` between the two seeds' functions on the same
batches (disagreement for classifiers, RMS output distance otherwise). Drawn as ``barriers.png`` (raw and
aligned heatmaps side by side) and ``interpolation.png`` (the ``K - 1`` loss curves from the best seed,
aligned ones dashed), stored as the ``barriers`` block of ``summary.json``. Checkpoints are read with
``weights_only=True`` (:func:`~lightning_landscape.multiseed.checkpoints.load_weights`).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from lightning_landscape.callbacks._batches import draw_batches
from lightning_landscape.callbacks._probe import TrainingStepLoss
from lightning_landscape.curvature._inputs import LossFn
from lightning_landscape.landscape import BarrierResult, functional_distance, linear_barrier
from lightning_landscape.landscape.align import AlignMethod
from lightning_landscape.multiseed.checkpoints import load_weights
from lightning_landscape.multiseed.executors import SeedJob
from lightning_landscape.multiseed.paths import atomic_write
from lightning_landscape.multiseed.result import SeedRun

BARRIERS_PNG = "barriers.png"
INTERPOLATION_PNG = "interpolation.png"
DEFAULT_TOL = 0.01


@dataclasses.dataclass
class SeedBarriers:
    """Barriers between seeds' best checkpoints.

    Attributes:
        seeds: the seeds, in matrix order.
        best: the best seed.
        matrix: ``[K, K]`` float64 barriers; row/column ``i`` is ``seeds[i]``; NaN where not computed
            (only the best seed's row and column unless ``full``); 0 on the diagonal.
        lines: the segment from the best seed to each other seed, by seed.
        tol: the barrier below which two seeds count as one basin (loss units).
        full: whether every pair was computed.
        aligned: like ``matrix``, after aligning the second seed of each pair to the first (``align``);
            ``None`` without alignment.
        aligned_lines: the aligned segments from the best seed, by seed.
        align: the alignment method used, ``None`` if none.
        align_error: why alignment was not possible for this module (then the barriers are raw only).
        distances: ``[K, K]`` functional distances between the compared seeds (NaN where not computed).
        distance_kind: ``"disagreement"`` or ``"rms"`` (``None`` if no distance was computed).
        distance_error: why no functional distance could be computed, else ``None``.
    """

    seeds: list[int]
    best: int
    matrix: Tensor
    lines: dict[int, BarrierResult]
    tol: float = DEFAULT_TOL
    full: bool = False
    aligned: Tensor | None = None
    aligned_lines: dict[int, BarrierResult] = dataclasses.field(default_factory=dict)
    align: str | None = None
    align_error: str | None = None
    distances: Tensor | None = None
    distance_kind: str | None = None
    distance_error: str | None = None

    def connected(self, aligned: bool = False) -> list[int]:
        """The seeds whose (raw, or with ``aligned`` aligned) barrier with the best seed is below ``tol``
        (the best seed included); with ``aligned`` and no aligned matrix, an empty list."""
        matrix = self.aligned if aligned else self.matrix
        if matrix is None:
            return []
        i = self.seeds.index(self.best)
        return [s for j, s in enumerate(self.seeds) if j == i or float(matrix[i, j]) < self.tol]

    def _aligned_summary(self, aligned: Tensor) -> str:
        shared = self.connected(aligned=True)
        others = [s for s in self.seeds if s not in shared]
        if len(shared) > 1:
            line = f"seeds {', '.join(map(str, shared))} are one basin up to permutation: aligned barrier"
            line += f" < {self.tol:g}"
        else:
            line = f"no other seed shares the best seed's ({self.best}) basin, even up to permutation"
        if not others:
            return line
        i = self.seeds.index(self.best)
        cols = [self.seeds.index(s) for s in others]
        raw = [float(self.matrix[i, j]) for j in cols]
        left = [float(aligned[i, j]) for j in cols]
        share = 1 - sum(max(v, 0.0) for v in left) / max(sum(max(v, 0.0) for v in raw), 1e-300)
        line += (
            f"; raw barriers up to {max(raw):.3g} are {min(max(share, 0.0), 1.0):.0%} permutation symmetry:"
            f" aligned barriers of {min(left):.3g}-{max(left):.3g} remain"
            f" to seeds {', '.join(map(str, others))}"
        )
        if self.distances is not None and self.distance_kind is not None:
            far = max(float(self.distances[i, j]) for j in cols)
            line += f" (functional distance up to {far:.3g}, {self.distance_kind})"
        return line

    def summary(self) -> str:
        """One line: what the raw and (if computed) aligned barriers say about the best seed's basin."""
        if self.aligned is not None:
            return self._aligned_summary(self.aligned)
        shared = self.connected()
        others = [s for s in self.seeds if s not in shared]
        names = ", ".join(str(s) for s in shared)
        line = f"seeds {names} share the best seed's basin: barrier < {self.tol:g}"
        if len(shared) == 1:
            line = f"no other seed shares the best seed's ({self.best}) basin: every barrier >= {self.tol:g}"
        if others and len(shared) > 1:
            line += f"; seeds {', '.join(str(s) for s in others)} lie beyond a barrier"
        if others and self.align_error is not None:
            line += " (raw barriers only: the module cannot be aligned, so they may be permutation symmetry)"
        return line

    def to_dict(self) -> dict[str, Any]:
        """A JSON block (NaN as ``None``) for ``summary.json``: ``matrix`` (raw), ``aligned_matrix``,
        ``functional_distance`` and the rest of the attributes."""
        return {
            "best_seed": self.best,
            "seeds": list(self.seeds),
            "tol": self.tol,
            "full": self.full,
            "matrix": _json_matrix(self.matrix),
            "connected": self.connected(),
            "align": self.align,
            "align_error": self.align_error,
            "aligned_matrix": None if self.aligned is None else _json_matrix(self.aligned),
            "connected_up_to_permutation": self.connected(aligned=True) if self.aligned is not None else None,
            "functional_distance": {
                "kind": self.distance_kind,
                "matrix": None if self.distances is None else _json_matrix(self.distances),
                "error": self.distance_error,
            },
            "summary": self.summary(),
            "lines": {
                str(s): {"t": r.ts.tolist(), "loss": r.losses.tolist(), "barrier": r.barrier}
                for s, r in self.lines.items()
            },
            "aligned_lines": {
                str(s): {"t": r.ts.tolist(), "loss": r.losses.tolist(), "barrier": r.barrier}
                for s, r in self.aligned_lines.items()
            },
            "buffers": next(iter(self.lines.values())).meta.get("buffers") if self.lines else None,
            "figures": [BARRIERS_PNG, INTERPOLATION_PNG],
        }

    def plot_heatmap(self) -> Any:
        """The raw barrier matrix as a heatmap (blank where not computed) and, when aligned, the aligned one
        beside it on the same colour scale; returns the figure."""
        from matplotlib.figure import Figure

        k = len(self.seeds)
        panels = [("raw", self.matrix)] + (
            [] if self.aligned is None else [(f"aligned ({self.align})", self.aligned)]
        )
        fig = Figure(figsize=(len(panels) * (1.2 + 0.5 * k) + 0.8, 1.0 + 0.45 * k))
        low = min(0.0, *(float(torch.nan_to_num(m).min()) for _, m in panels))
        high = max(float(torch.nan_to_num(m).max()) for _, m in panels)
        for n, (title, matrix) in enumerate(panels):
            ax = fig.add_subplot(1, len(panels), n + 1)
            values = matrix.numpy()
            im = ax.imshow(values, cmap="magma_r", vmin=low, vmax=max(high, low + 1e-12))
            ax.set_xticks(range(k), [str(s) for s in self.seeds])
            ax.set_yticks(range(k), [str(s) for s in self.seeds])
            ax.set_xlabel("seed")
            ax.set_ylabel("seed")
            ax.set_title(f"{title} barriers (best seed {self.best})", fontsize=9)
            if k <= 12:
                for i in range(k):
                    for j in range(k):
                        if not math.isnan(values[i, j]):
                            ax.text(
                                j,
                                i,
                                f"{values[i, j]:.2g}",
                                ha="center",
                                va="center",
                                fontsize=7,
                                color="grey",
                            )
        fig.colorbar(im, ax=fig.axes, label="loss barrier")
        return fig

    def plot_interpolation(self) -> Any:
        """The loss along the segment from the best seed to each other seed; returns the figure."""
        from matplotlib.figure import Figure

        fig = Figure(figsize=(5.5, 4.0))
        ax = fig.add_subplot(1, 1, 1)
        for n, (seed, res) in enumerate(self.lines.items()):
            ax.plot(
                res.ts.numpy(),
                res.losses.numpy(),
                color=f"C{n % 10}",
                label=f"seed {seed} (B={res.barrier:.2g})",
            )
            if seed in self.aligned_lines:
                other = self.aligned_lines[seed]
                label = f"aligned (B={other.barrier:.2g})"
                ax.plot(other.ts.numpy(), other.losses.numpy(), color=f"C{n % 10}", ls="--", label=label)
        ax.set_xlabel(f"t (0: best seed {self.best}, 1: other seed)")
        ax.set_ylabel("loss")
        ax.set_title("linear interpolation between best checkpoints")
        if self.lines:
            ax.legend(fontsize="small")
        fig.tight_layout()
        return fig

    def save_figures(self, folder: str | Path) -> list[Path]:
        """Write ``barriers.png`` and ``interpolation.png`` into ``folder``."""
        folder = Path(folder)
        paths = [folder / BARRIERS_PNG, folder / INTERPOLATION_PNG]
        for path, fig in zip(paths, (self.plot_heatmap(), self.plot_interpolation()), strict=True):
            # A temporary file renamed into place: a link planted at the name is replaced, never followed.
            atomic_write(path, functools.partial(fig.savefig, format="png", dpi=110), binary=True)
        return paths


def seed_barriers(
    checkpoints: Mapping[int, str | Path] | Sequence[str | Path],
    model: nn.Module | Callable[[], nn.Module],
    loss_fn: LossFn,
    batches: Sequence[Any],
    best: int | None = None,
    full: bool = False,
    steps: int = 11,
    tol: float = DEFAULT_TOL,
    buffers: Literal["interpolate", "reestimate"] = "interpolate",
    align: AlignMethod | None = None,
    distances: bool = True,
) -> SeedBarriers:
    """Barriers between the best seed's checkpoint and every other seed's (all pairs with ``full``), raw and,
    with ``align``, aligned; and the functional distances between the same pairs.

    Args:
        checkpoints: seed -> checkpoint path (a list is keyed ``0 .. K-1``); Lightning checkpoints or plain
            ``torch.save`` state dicts.
        model: a module of the checkpoints' architecture (its weights are not used) or a factory.
        loss_fn: ``loss_fn(model, batch) -> scalar tensor``.
        batches: the fixed batches the loss is averaged over.
        best: the best seed (default: the first one).
        full: compute every pair, not only the best seed's row.
        steps: points per segment (odd keeps the midpoint).
        tol: barrier (loss units) below which two seeds share a basin (``>= 0``).
        buffers: BatchNorm buffers along the segment (see
            :func:`~lightning_landscape.landscape.linear_barrier`).
        align: ``"weights"`` or ``"activations"``: also the barrier after aligning the pair's second seed
            to the first; a module that cannot be aligned keeps the raw barriers and ``align_error`` says
            why. ``None``: raw only.
        distances: the functional distance of each compared pair on ``batches`` (the model called on
            ``batch[0]`` of tuple batches, see :func:`~lightning_landscape.landscape.functional_distance`).

    Returns:
        A :class:`SeedBarriers`.

    Raises:
        ValueError: fewer than 2 checkpoints, an unknown ``best``, a bad ``tol``, or a checkpoint that does
            not fit the model.
    """
    paths = dict(checkpoints) if isinstance(checkpoints, Mapping) else dict(enumerate(checkpoints))
    if len(paths) < 2:
        raise ValueError(f"`checkpoints` must hold at least 2 seeds, got {len(paths)}")
    seeds = list(paths)
    best = seeds[0] if best is None else best
    if best not in paths:
        raise ValueError(f"`best`={best!r} is not one of the seeds {seeds}")
    if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not 0 <= tol < math.inf:
        raise ValueError(f"`tol` must be a finite number >= 0, got {tol!r}")
    template = model if isinstance(model, nn.Module) else model()
    models = {s: load_weights(p, template) for s, p in paths.items()}
    k = len(seeds)
    matrix = torch.full((k, k), math.nan, dtype=torch.float64)
    matrix.fill_diagonal_(0.0)
    aligned = matrix.clone() if align is not None else None
    dist = matrix.clone() if distances else None
    out = SeedBarriers(seeds, best, matrix, {}, float(tol), bool(full), aligned, align=align)
    for i, a in enumerate(seeds):
        for j in range(i + 1, k):
            b = seeds[j]
            if not full and best not in (a, b):
                continue
            start, end = (a, b) if a == best or b != best else (b, a)
            pair = (models[start], models[end], loss_fn, batches)
            res = linear_barrier(*pair, steps=steps, buffers=buffers)
            matrix[i, j] = matrix[j, i] = res.barrier
            if start == best:
                out.lines[end] = res
            if out.aligned is not None:
                try:
                    res = linear_barrier(*pair, steps=steps, buffers=buffers, align=align)
                except ValueError as err:  # the module's permutation structure cannot be derived
                    out.aligned, out.align, out.align_error = None, None, str(err)
                else:
                    out.aligned[i, j] = out.aligned[j, i] = res.barrier
                    if start == best:
                        out.aligned_lines[end] = res
            if dist is not None and out.distance_error is None:
                try:
                    d = functional_distance(models[start], models[end], batches)
                except (TypeError, ValueError, NotImplementedError) as err:  # e.g. no forward()
                    out.distance_error = f"{type(err).__name__}: {err}"
                else:
                    dist[i, j] = dist[j, i] = d.value
                    out.distance_kind = d.kind
    if dist is not None and out.distance_error is None:
        out.distances = dist
    return out


def _train_loader(job: SeedJob) -> Any:
    """The job's (first) train dataloader, as ``Trainer.fit`` would get it."""
    datamodule, train = job.build_data()
    if datamodule is not None:
        datamodule.setup("fit")
        train = datamodule.train_dataloader()
    return train[0] if isinstance(train, (list, tuple)) else train


def barriers_after_selection(
    job: SeedJob,
    runs: Sequence[SeedRun],
    best_seed: int,
    root_dir: str | Path,
    which: Literal["best", "all"],
    tol: float = DEFAULT_TOL,
    num_batches: int = 4,
    align: AlignMethod | None = None,
) -> dict[str, Any] | None:
    """The ``MultiSeedTrainer`` step: barriers between the finished seeds' best checkpoints, the two figures
    in ``root_dir``, and the block for ``summary.json`` (``None`` with fewer than two finished seeds).

    The loss is each module's ``training_step`` (logging silenced) in eval mode on the first
    ``num_batches`` batches of the train data, drawn under seed 0
    (:func:`~lightning_landscape.callbacks._batches.draw_batches`). With ``align``, also the aligned barriers
    (raw only, and why, when the module cannot be aligned); always the functional distances.
    """
    paths = {r.seed: r.best_model_path for r in runs if r.status == "finished" and r.best_model_path}
    if len(paths) < 2 or best_seed not in paths:
        return None
    result = seed_barriers(
        paths,
        job.build_model,
        TrainingStepLoss(),
        draw_batches(_train_loader(job), num_batches, seed=0),
        best=best_seed,
        full=which == "all",
        tol=tol,
        align=align,
    )
    result.save_figures(root_dir)
    return result.to_dict()


def _json_matrix(matrix: Tensor) -> list[list[float | None]]:
    return [[None if math.isnan(v) else float(v) for v in row] for row in matrix.tolist()]


__all__ = [
    "BARRIERS_PNG",
    "INTERPOLATION_PNG",
    "SeedBarriers",
    "barriers_after_selection",
    "seed_barriers",
]
