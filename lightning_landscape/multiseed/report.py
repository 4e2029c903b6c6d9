"""The files a multi-seed run leaves besides its record: ``summary.csv``, ``seeds.png``, hparams entries.

All of them are derived from the record (:mod:`~lightning_landscape.multiseed.record`) and written
atomically; deleting them loses nothing a rerun cannot write again.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lightning_landscape.multiseed.paths import BEST_OF_K_PNG, SEEDS_PNG, SUMMARY_CSV, atomic_write, relative
from lightning_landscape.multiseed.result import SeedRun
from lightning_landscape.multiseed.selection import BestOfK

SCORE_TAG = "multiseed/score"

_CSV_FIELDS = (
    "seed",
    "status",
    "score",
    "wall_time",
    "best_model_path",
    "last_model_path",
    "log_dir",
    "error",
    "test_score",
    "still_improving",
)
_CSV_PATHS = ("best_model_path", "last_model_path", "log_dir")


def select_best(runs: Sequence[SeedRun], mode: str) -> SeedRun | None:
    """The finished run with the lowest (``mode="min"``) or highest score; ties go to the earlier seed."""
    finished = [r for r in runs if r.status == "finished" and r.score is not None]
    if not finished:
        return None
    sign = 1.0 if mode == "min" else -1.0
    return min(finished, key=lambda r: sign * float(r.score))  # type: ignore[arg-type]


def write_summary_csv(root_dir: str | Path, runs: Sequence[SeedRun]) -> Path:
    """``summary.csv``: one row per seed; paths relative to ``root_dir``, as in ``summary.json``."""
    path = Path(root_dir) / SUMMARY_CSV

    def write(f: Any) -> None:
        writer = csv.DictWriter(f, fieldnames=_CSV_FIELDS)
        writer.writeheader()
        for run in runs:
            row = run.to_dict()
            for key in _CSV_PATHS:
                row[key] = relative(row[key], root_dir)
            writer.writerow({k: "" if row[k] is None else row[k] for k in _CSV_FIELDS})

    atomic_write(path, write)
    return path


def plot_seeds(root_dir: str | Path, runs: Sequence[SeedRun], monitor: str, best: SeedRun | None) -> Path:
    """``seeds.png``: each finished seed's score, the best one starred, failed seeds crossed on the axis."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    # A bare Figure with its own Agg canvas: no pyplot, so the user's global backend is left alone.
    fig = Figure(figsize=(max(4.0, 0.5 * len(runs) + 2.0), 3.2), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    positions = {r.seed: i for i, r in enumerate(runs)}
    finished = [r for r in runs if r.status == "finished" and r.score is not None]
    failed = [r for r in runs if r.status != "finished" or r.score is None]
    scores = [float(r.score) for r in finished if r.score is not None]
    ax.scatter([positions[r.seed] for r in finished], scores, color="tab:blue", label="seed")
    if best is not None and best.score is not None:
        ax.scatter(
            [positions[best.seed]], [best.score], marker="*", s=250, color="tab:red", zorder=3,
            label=f"best: seed {best.seed}",
        )  # fmt: skip
    if failed:
        ax.scatter(
            [positions[r.seed] for r in failed], [0.0] * len(failed), marker="x", color="grey",
            transform=ax.get_xaxis_transform(), clip_on=False, label="failed / not finished",
        )  # fmt: skip
    ax.set_xticks(range(len(runs)), [str(r.seed) for r in runs])
    ax.set_xlabel("seed")
    ax.set_ylabel(monitor)
    ax.set_title(f"{monitor} per seed")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    path = Path(root_dir) / SEEDS_PNG
    atomic_write(path, lambda f: fig.savefig(f, format="png"), binary=True)
    return path


def write_hparams(log_dir: str | Path, run: SeedRun, monitor: str, mode: str) -> None:
    """A TensorBoard hparams entry for one finished seed, so the seeds compare side by side.

    The hyperparameters are the seed, ``monitor``, ``mode`` and the module's own scalar hparams; the
    metric ``multiseed/score`` is the seed's best monitored value.
    """
    from torch.utils.tensorboard import SummaryWriter
    from torch.utils.tensorboard.summary import hparams

    from lightning_landscape._torch import tensorboard_file_writer

    params: dict[str, Any] = dict(run.extra.get("hparams") or {})
    params.update({"seed": run.seed, "monitor": monitor, "mode": mode})
    metrics = {SCORE_TAG: float(run.score) if run.score is not None else math.nan}
    exp, ssi, sei = hparams(params, metrics)
    writer = SummaryWriter(log_dir=str(log_dir), filename_suffix=".hparams")
    try:
        file_writer = tensorboard_file_writer(writer)
        for summary in (exp, ssi, sei):
            file_writer.add_summary(summary)
        writer.add_scalar(SCORE_TAG, metrics[SCORE_TAG], 0)
    finally:
        writer.close()


def plot_best_of_k(root_dir: str | Path, curve: BestOfK, monitor: str) -> Path:
    """``best_of_k.png``: the expected best ``monitor`` of k seeds drawn at random, with its quantile range,
    the confidence band on the expected best (where the curve has one; k without a finite bound are left
    out) and the expected test score of the validation-selected seed when known."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.0, 3.4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    low, high = curve.quantiles
    ax.fill_between(curve.ks, curve.q_low, curve.q_high, color="tab:blue", alpha=0.2,
                    label=f"{low:.0%}-{high:.0%} of the best of k")  # fmt: skip
    if curve.expected_low is not None and curve.expected_high is not None and curve.confidence is not None:
        # The band's better end is None past k ~ K/2 (no finite bound): draw where both ends exist.
        pts = [
            (k, lo, hi)
            for k, lo, hi in zip(curve.ks, curve.expected_low, curve.expected_high, strict=True)
            if lo is not None and hi is not None
        ]
        if pts:
            ks, lows, highs = zip(*pts, strict=True)
            ax.fill_between(ks, lows, highs, color="tab:orange", alpha=0.3,
                            label=f"{curve.confidence:.0%} band on the expected best")  # fmt: skip
    ax.plot(curve.ks, curve.expected, marker=".", color="tab:blue", label=f"expected best {monitor}")
    if curve.expected_test is not None:
        ax.plot(curve.ks, curve.expected_test, marker=".", color="tab:red", label="its expected test score")
    ax.set_xlabel("k seeds drawn at random")
    ax.set_ylabel(monitor)
    ax.set_title("what each extra retrain buys")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    path = Path(root_dir) / BEST_OF_K_PNG
    atomic_write(path, lambda f: fig.savefig(f, format="png"), binary=True)
    return path
