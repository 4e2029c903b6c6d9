"""The edge of stability (Cohen et al. 2021) on the demo's shallow ReLU network, on the population risk.

The demo's network ((1, 50, 50, 1), He-normal weights, zero biases, :math:`f(x) = x^2 + 2x`) is trained by
plain full-batch gradient descent on the midpoint grid of :math:`[0, 1]`: the training loss *is* the
population risk (midpoint rule), so there is no sampling noise at all. Every ``--every`` steps
:class:`~lightning_landscape.EdgeOfStabilityMonitor` measures the sharpness :math:`\\lambda_1(H)` and the
stability threshold :math:`2/\\eta` of gradient descent::

    python examples/edge_of_stability.py --out runs/edge_of_stability      # about half a minute on a CPU

It prints the sharpness, threshold and ratio over training and writes ``edge_of_stability.png`` (the ratio
with a line at 1, and the loss) into ``--out``. What it shows at the defaults (``--lr 0.1``, seed 1): the
sharpness rises from about 10 at step 10 (ratio 0.52) to 2/lr = 20 by step ~650 (progressive sharpening) and
then stays there, the ratio between 1.000 and 1.001 over the last third of training, while the loss keeps
decreasing (at the very end no longer monotonically): gradient descent has reached the edge of stability and
holds itself there. On a quadratic, any ratio above 1 would diverge.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

# `python examples/edge_of_stability.py` puts examples/ (not the repository root) on sys.path.
_ROOT = Path(__file__).resolve().parents[1]
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))

from examples.shallow_relu import ShallowReLU, target_function  # noqa: E402
from lightning_landscape import EdgeOfStabilityMonitor  # noqa: E402
from lightning_landscape.callbacks import tags  # noqa: E402


class Record(pl.Callback):
    """After the monitor: its values at each probe, with the training loss of that step."""

    def __init__(self, monitor: EdgeOfStabilityMonitor) -> None:
        self.monitor = monitor
        self.rows: list[dict[str, float]] = []

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: Any, outputs: Any, *args: Any) -> None:
        if self.monitor.num_probes > len(self.rows):
            row = {"step": float(trainer.global_step), "loss": float(outputs["loss"])}
            row.update({tag.split("/")[-1]: v for tag, v in self.monitor.last_metrics.items()})
            self.rows.append(row)


def main(argv: list[str] | None = None) -> list[dict[str, float]]:
    """Train, print the table, write the figure; returns the recorded rows."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--out", default="runs/edge_of_stability", help="folder for edge_of_stability.png")
    p.add_argument("--lr", type=float, default=0.1, help="learning rate of plain gradient descent")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--every", type=int, default=10, help="probe every this many steps")
    p.add_argument("--hidden", type=int, nargs="+", default=[50, 50])
    p.add_argument("--grid_size", type=int, default=1024, help="midpoints of [0, 1]: the full batch")
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args(argv)

    pl.seed_everything(args.seed, verbose=False)
    x = ((torch.arange(args.grid_size, dtype=torch.float64) + 0.5) / args.grid_size)[:, None].float()
    grid = DataLoader(TensorDataset(x, target_function("quadratic")(x)), batch_size=args.grid_size)
    model = ShallowReLU(hidden=args.hidden, bias_init="zero", optimizer="sgd", lr=args.lr)
    monitor = EdgeOfStabilityMonitor(every_n_steps=args.every, tol=1e-4)
    record = Record(monitor)
    trainer = pl.Trainer(
        max_steps=args.steps,
        accelerator="cpu",
        devices=1,
        callbacks=[monitor, record],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    start = time.perf_counter()
    trainer.fit(model, grid)
    elapsed = time.perf_counter() - start

    rows = record.rows
    print(f"full-batch GD, lr={args.lr}, {args.grid_size} midpoints; threshold 2/lr = {2 / args.lr:g}")
    print(f"{'step':>6s} {'loss':>10s} {'sharpness':>10s} {'threshold':>10s} {'ratio':>7s}")
    shown = max(len(rows) // 25, 1)
    for i, row in enumerate(rows):
        if i % shown == 0 or i == len(rows) - 1:
            print(
                f"{int(row['step']):6d} {row['loss']:10.3e} {row[tags.SHARPNESS]:10.3f} "
                f"{row[tags.THRESHOLD]:10.3f} {row[tags.RATIO]:7.3f}"
            )
    last = [row[tags.RATIO] for row in rows[2 * len(rows) // 3 :]]
    if last:
        print(f"last third of training: ratio in [{min(last):.3f}, {max(last):.3f}]")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    _plot(rows, args.lr).savefig(out / "edge_of_stability.png", dpi=110)
    print(f"{args.steps} steps and {len(rows)} probes in {elapsed:.1f} s; wrote {out}/edge_of_stability.png")
    return rows


def _plot(rows: list[dict[str, float]], lr: float) -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [row["step"] for row in rows]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(7, 5.5), sharex=True)
    top.plot(steps, [row[tags.RATIO] for row in rows], color="C0", label="sharpness / (2 / lr)")
    top.axhline(1.0, color="k", ls="--", lw=1, label="edge of stability")
    top.set_ylabel("stability/ratio")
    top.legend(loc="lower right")
    top.set_title(f"ShallowReLU, full-batch GD on the population risk, lr = {lr:g}")
    bottom.plot(steps, [row["loss"] for row in rows], color="C1")
    bottom.set_yscale("log")
    bottom.set_ylabel("population risk")
    bottom.set_xlabel("step")
    fig.tight_layout()
    plt.close(fig)
    return fig


if __name__ == "__main__":
    torch.set_num_threads(1)  # tiny matrices: more threads only add overhead
    main()
