"""Vectorized seed ensembles vs K sequential Lightning fits vs K plain torch loops.

The task of arXiv 2212.13111: x ~ U[0, 1], target x^2 + 2x, a fresh batch of 1024 per step, squared error,
Adam with lr 0.01, a (1, 50, 50, 1) ReLU network. For each K we report the wall time of one training step
of all K seeds:

* ``ensemble``: one :class:`~lightning_landscape.SeedEnsemble` fit (one vmapped forward/backward per step);
* ``lightning``: K sequential ``Trainer.fit`` runs of a plain single-seed LightningModule, measured on a few
  seeds and extrapolated to K (each run is independent, so the cost is linear in K); both the steady-state
  step time and the time per step including each fit's setup are given;
* ``plain``: K sequential plain PyTorch loops (no Lightning), measured on a few seeds and extrapolated.

All runs use the same Trainer options (no logger, no checkpointing, no progress bar) and the same
thread count, measured side by side in one process. Run ``python benchmarks/ensemble.py --help``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch import Callback, LightningModule, Trainer, seed_everything
from torch import nn

from lightning_landscape import SeedEnsemble

LR = 0.01
TRAINER = {
    "logger": False,
    "enable_checkpointing": False,
    "enable_progress_bar": False,
    "enable_model_summary": False,
    "num_sanity_val_steps": 0,
}


def mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(1, 50), nn.ReLU(), nn.Linear(50, 50), nn.ReLU(), nn.Linear(50, 1))


class FreshBatches:
    """``steps`` fresh batches of the paper's task; ``members`` > 0: one slice per member ``[K, B, 1]``."""

    def __init__(self, seed: int, steps: int, batch: int, members: int = 0) -> None:
        self.seed, self.steps, self.batch, self.members = seed, steps, batch, members

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        gen = torch.Generator().manual_seed(self.seed)
        shape = (self.members, self.batch, 1) if self.members else (self.batch, 1)
        for _ in range(self.steps):
            x = torch.rand(shape, generator=gen)
            yield x, x * x + 2 * x


class Plain(LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = mlp()

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = F.mse_loss(self.net(x), y)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self) -> Any:
        return torch.optim.Adam(self.parameters(), lr=LR)


class StepTimer(Callback):
    def __init__(self) -> None:
        self.stamps: list[float] = []

    def on_train_batch_end(self, *args: Any) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        self.stamps.append(time.perf_counter())


def steady_step(stamps: list[float], warmup: int) -> float:
    """Mean seconds per step after ``warmup`` steps."""
    s = stamps[warmup:]
    return (s[-1] - s[0]) / max(1, len(s) - 1)


def time_ensemble(k: int, steps: int, warmup: int, batch: int, accelerator: str) -> float:
    ensemble = SeedEnsemble(mlp, seeds=k, loss="mse", optimizer="adam", lr=LR, per_seed_data=True)
    timer = StepTimer()
    trainer = Trainer(max_steps=steps, callbacks=[timer], accelerator=accelerator, devices=1, **TRAINER)
    trainer.fit(ensemble, FreshBatches(0, steps, batch, members=k))
    return steady_step(timer.stamps, warmup)


def time_lightning(seeds: int, steps: int, warmup: int, batch: int, accelerator: str) -> tuple[float, float]:
    """(steady-state seconds per step, seconds per step including the fit's setup) of one seed."""
    steady, total = [], []
    for seed in range(seeds):
        start = time.perf_counter()
        seed_everything(seed, workers=True, verbose=False)
        timer = StepTimer()
        trainer = Trainer(max_steps=steps, callbacks=[timer], accelerator=accelerator, devices=1, **TRAINER)
        trainer.fit(Plain(), FreshBatches(seed, steps, batch))
        total.append((time.perf_counter() - start) / steps)
        steady.append(steady_step(timer.stamps, warmup))
    return statistics.median(steady), statistics.median(total)


def time_plain(seeds: int, steps: int, warmup: int, batch: int, device: torch.device) -> float:
    per_step = []
    for seed in range(seeds):
        torch.manual_seed(seed)
        net = mlp().to(device)
        opt = torch.optim.Adam(net.parameters(), lr=LR)
        stamps = []
        for x, y in FreshBatches(seed, steps, batch):
            loss = F.mse_loss(net(x.to(device)), y.to(device))
            opt.zero_grad()
            loss.backward()
            opt.step()
            if device.type == "cuda":
                torch.cuda.synchronize()
            stamps.append(time.perf_counter())
        per_step.append(steady_step(stamps, warmup))
    return statistics.median(per_step)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ks", default="8,64,300", help="ensemble sizes, comma-separated")
    parser.add_argument("--steps", type=int, default=60, help="training steps per ensemble fit")
    parser.add_argument(
        "--seq-seeds", type=int, default=3, help="sequential runs measured, then extrapolated"
    )
    parser.add_argument("--seq-steps", type=int, default=150, help="training steps per sequential run")
    parser.add_argument("--warmup", type=int, default=5, help="steps left out of the steady-state mean")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (same for every contender)")
    parser.add_argument("--batch", type=int, default=1024, help="fresh samples per step (paper: 1024)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where every contender runs")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    batch, device = args.batch, torch.device(args.device)
    accelerator = "gpu" if device.type == "cuda" else "cpu"
    ks = [int(k) for k in args.ks.split(",")]

    print(f"task: x~U[0,1], y=x^2+2x, batch {batch} fresh per step, MSE, Adam lr {LR}, net (1,50,50,1) ReLU")
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    print(f"device: {name}, torch threads: {args.threads}, torch {torch.__version__}")
    lit_steady, lit_total = time_lightning(args.seq_seeds, args.seq_steps, args.warmup, batch, accelerator)
    plain = time_plain(args.seq_seeds, args.seq_steps, args.warmup, batch, device)
    print(
        f"one seed, measured on {args.seq_seeds} seeds x {args.seq_steps} steps: Lightning "
        f"{lit_steady * 1e3:.2f} ms/step steady ({lit_total * 1e3:.2f} ms/step with fit setup), "
        f"plain loop {plain * 1e3:.2f} ms/step"
    )
    print("K sequential runs are EXTRAPOLATED as K x the measured per-seed time (runs are independent).")
    header = (
        f"{'K':>5} {'ensemble ms/step':>17} {'K x Lightning':>14} {'(with setup)':>13} {'K x plain':>10}"
        f" {'speedup vs Lightning':>21} {'(with setup)':>13} {'vs plain':>9}"
    )
    print(header)
    for k in ks:
        ens = time_ensemble(k, args.steps, args.warmup, batch, accelerator)
        seq, seq_total, loops = k * lit_steady, k * lit_total, k * plain
        print(
            f"{k:>5} {ens * 1e3:>17.2f} {seq * 1e3:>14.1f} {seq_total * 1e3:>13.1f} {loops * 1e3:>10.1f}"
            f" {seq / ens:>20.1f}x {seq_total / ens:>12.1f}x {loops / ens:>8.1f}x"
        )


if __name__ == "__main__":
    main()
