r"""Barriers between the seeds' best checkpoints, raw: along the straight segment, no alignment.

For the best seed :math:`b` and every other seed :math:`s`, the loss barrier along the straight segment
between their best weights (Frankle et al. 2020, see :func:`~lightning_landscape.landscape.linear_barrier`)

.. math::

    B(b, s) = \max_t L((1-t)\theta_b + t\theta_s) - ((1-t) L(\theta_b) + t L(\theta_s)),

and, when asked, the full symmetric ``K x K`` matrix. Seeds with :math:`B(b, s) <` ``tol`` share the best
seed's basin (linear mode connectivity). A raw barrier ignores permutation symmetry: two networks that
differ only by an order of their hidden units are one minimum, yet the segment between them can climb high.
Large raw barriers are therefore compatible with one basin up to permutation; only a small one says more
(the two seeds are linearly connected as they are). Drawn as ``barriers.png`` (heatmap) and
``interpolation.png`` (the ``K - 1`` loss curves from the best seed), stored as the ``barriers`` block of
``summary.json``. Checkpoints are read with ``weights_only=True``
(:func:`~lightning_landscape.multiseed.checkpoints.load_weights`).
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

from lightning_landscape.callbacks._probe import TrainingStepLoss, draw_batches
from lightning_landscape.curvature._inputs import LossFn
from lightning_landscape.landscape import BarrierResult, linear_barrier
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
    """

    seeds: list[int]
    best: int
    matrix: Tensor
    lines: dict[int, BarrierResult]
    tol: float = DEFAULT_TOL
    full: bool = False

    def connected(self) -> list[int]:
        """The seeds whose barrier with the best seed is below ``tol`` (the best seed included)."""
        i = self.seeds.index(self.best)
        return [s for j, s in enumerate(self.seeds) if j == i or float(self.matrix[i, j]) < self.tol]

    def summary(self) -> str:
        """One line: which seeds share the best seed's basin."""
        shared = self.connected()
        others = [s for s in self.seeds if s not in shared]
        names = ", ".join(str(s) for s in shared)
        line = f"seeds {names} share the best seed's basin: barrier < {self.tol:g}"
        if len(shared) == 1:
            line = f"no other seed shares the best seed's ({self.best}) basin: every barrier >= {self.tol:g}"
        if others and len(shared) > 1:
            line += f"; seeds {', '.join(str(s) for s in others)} lie beyond a barrier"
        return line

    def to_dict(self) -> dict[str, Any]:
        """A JSON block (NaN as ``None``) for ``summary.json``."""
        return {
            "best_seed": self.best,
            "seeds": list(self.seeds),
            "tol": self.tol,
            "full": self.full,
            "matrix": [[None if math.isnan(v) else float(v) for v in row] for row in self.matrix.tolist()],
            "connected": self.connected(),
            "summary": self.summary(),
            "lines": {
                str(s): {"t": r.ts.tolist(), "loss": r.losses.tolist(), "barrier": r.barrier}
                for s, r in self.lines.items()
            },
            "buffers": next(iter(self.lines.values())).meta.get("buffers") if self.lines else None,
            "figures": [BARRIERS_PNG, INTERPOLATION_PNG],
        }

    def plot_heatmap(self) -> Any:
        """The barrier matrix as a heatmap (blank where not computed); returns the figure."""
        from matplotlib.figure import Figure

        k = len(self.seeds)
        fig = Figure(figsize=(1.2 + 0.5 * k, 1.0 + 0.45 * k))
        ax = fig.add_subplot(1, 1, 1)
        values = self.matrix.numpy()
        im = ax.imshow(values, cmap="magma_r", vmin=min(0.0, float(torch.nan_to_num(self.matrix).min())))
        fig.colorbar(im, ax=ax, label="loss barrier")
        ax.set_xticks(range(k), [str(s) for s in self.seeds])
        ax.set_yticks(range(k), [str(s) for s in self.seeds])
        ax.set_xlabel("seed")
        ax.set_ylabel("seed")
        ax.set_title(f"barriers (best seed {self.best})")
        if k <= 12:
            for i in range(k):
                for j in range(k):
                    if not math.isnan(values[i, j]):
                        ax.text(
                            j, i, f"{values[i, j]:.2g}", ha="center", va="center", fontsize=7, color="grey"
                        )
        fig.tight_layout()
        return fig

    def plot_interpolation(self) -> Any:
        """The loss along the segment from the best seed to each other seed; returns the figure."""
        from matplotlib.figure import Figure

        fig = Figure(figsize=(5.5, 4.0))
        ax = fig.add_subplot(1, 1, 1)
        for seed, res in self.lines.items():
            ax.plot(res.ts.numpy(), res.losses.numpy(), label=f"seed {seed} (B={res.barrier:.2g})")
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
) -> SeedBarriers:
    """Barriers between the best seed's checkpoint and every other seed's (all pairs with ``full``).

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
    lines: dict[int, BarrierResult] = {}
    for i, a in enumerate(seeds):
        for j in range(i + 1, k):
            b = seeds[j]
            if not full and best not in (a, b):
                continue
            start, end = (a, b) if a == best or b != best else (b, a)
            res = linear_barrier(models[start], models[end], loss_fn, batches, steps=steps, buffers=buffers)
            matrix[i, j] = matrix[j, i] = res.barrier
            if start == best:
                lines[end] = res
    return SeedBarriers(seeds, best, matrix, lines, float(tol), bool(full))


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
) -> dict[str, Any] | None:
    """The ``MultiSeedTrainer`` step: barriers between the finished seeds' best checkpoints, the two figures
    in ``root_dir``, and the block for ``summary.json`` (``None`` with fewer than two finished seeds).

    The loss is each module's ``training_step`` (logging silenced) in eval mode on the first
    ``num_batches`` batches of the train data, drawn under seed 0
    (:func:`~lightning_landscape.callbacks._probe.draw_batches`).
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
    )
    result.save_figures(root_dir)
    return result.to_dict()


__all__ = [
    "BARRIERS_PNG",
    "INTERPOLATION_PNG",
    "SeedBarriers",
    "barriers_after_selection",
    "seed_barriers",
]
