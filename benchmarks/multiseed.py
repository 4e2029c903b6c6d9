"""Benchmark: K seeds of a small MLP, four ways, timed side by side in one process.

1. a plain PyTorch loop per seed (no Lightning at all): the floor;
2. a bare ``Trainer.fit`` per seed with a ``ModelCheckpoint(monitor="val_loss")`` and a
   ``TensorBoardLogger``: what a user would write by hand for one seed;
2b. the same bare fit plus a second ``ModelCheckpoint`` that rewrites ``last.ckpt`` at every epoch end
   (what resuming needs: Lightning >= 2.6 writes ``save_last`` only when the best improves), so the
   wrapper's overhead is shown both over the plain bare fit and over one with equal resume safety;
3. ``MultiSeedTrainer(executor="sequential")``;
4. ``MultiSeedTrainer(executor="ray")`` on a local 2-CPU Ray cluster (2 workers, one seed each).

Prints wall times, ratios against the bare fit, and the wrapper's overhead over both bare fits, per seed
(each seed's own wall time) and in total (including the monitor pre-flight, summary files, hparams,
the plot and best.ckpt). Target: per-seed overhead under 5%.

Usage::

    python benchmarks/multiseed.py [--seeds 8] [--steps 640] [--no-ray]
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningModule, Trainer, seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_landscape import MultiSeedTrainer

BATCH = 32
N_TRAIN = 64 * BATCH  # 64 steps per epoch
N_VAL = 512


def make_loaders() -> tuple[DataLoader, DataLoader]:
    g = torch.Generator().manual_seed(0)
    w = torch.randn(16, 1, generator=g)

    def split(n: int) -> TensorDataset:
        x = torch.randn(n, 16, generator=g)
        return TensorDataset(x, torch.sin(x @ w) + 0.1 * torch.randn(n, 1, generator=g))

    return DataLoader(split(N_TRAIN), batch_size=BATCH, shuffle=True), DataLoader(
        split(N_VAL), batch_size=256
    )


def make_net() -> nn.Module:
    return nn.Sequential(nn.Linear(16, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 1))


class MLP(LightningModule):
    def __init__(self, lr: float = 0.05) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = make_net()

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        x, y = batch
        loss = nn.functional.mse_loss(self.net(x), y)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", nn.functional.mse_loss(self.net(x), y))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)


def plain_loop(seed: int, steps: int, train: DataLoader, val: DataLoader) -> float:
    torch.manual_seed(seed)
    net = make_net()
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    best, step = math.inf, 0
    while step < steps:
        net.train()
        for x, y in train:
            opt.zero_grad()
            nn.functional.mse_loss(net(x), y).backward()
            opt.step()
            step += 1
            if step >= steps:
                break
        net.eval()
        with torch.no_grad():
            losses = [nn.functional.mse_loss(net(x), y) * len(x) for x, y in val]
        best = min(best, float(sum(losses)) / N_VAL)
    return best


QUIET: dict[str, Any] = {"enable_progress_bar": False, "enable_model_summary": False, "log_every_n_steps": 16}


def bare_fit(
    seed: int, steps: int, root: Path, train: DataLoader, val: DataLoader, every_epoch_last: bool = False
) -> float:
    seed_everything(seed, workers=True, verbose=False)
    model = MLP()
    checkpoint = ModelCheckpoint(monitor="val_loss", mode="min")
    callbacks = [checkpoint]
    if every_epoch_last:
        # No monitor: saved at every save point, not only when the best improves.
        callbacks.append(
            ModelCheckpoint(filename="last", monitor=None, save_top_k=1, enable_version_counter=False)
        )
    logger = TensorBoardLogger(str(root), name=f"seed_{seed}", version="")
    trainer = Trainer(
        max_steps=steps,
        default_root_dir=str(root / f"seed_{seed}"),
        callbacks=callbacks,
        logger=logger,
        **QUIET,
    )
    trainer.fit(model, train, val)
    return float(checkpoint.best_model_score)  # type: ignore[arg-type]


def timed(fn: Any) -> tuple[Any, float]:
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, default=8, help="number of seeds K")
    parser.add_argument(
        "--steps",
        type=int,
        default=640,
        help="training steps per seed (64 per epoch; validation at epoch ends)",
    )
    parser.add_argument("--no-ray", action="store_true", help="skip the Ray executor")
    args = parser.parse_args()
    torch.set_num_threads(1)  # as each Ray worker (num_cpus=1) gets; keeps the comparison fair
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    seeds = list(range(args.seeds))
    train, val = make_loaders()
    rows: list[tuple[str, float]] = []
    with tempfile.TemporaryDirectory(prefix="bench-multiseed-") as tmp:
        root = Path(tmp)
        # Warm-up: first-call costs (imports, TensorBoard writer, allocator) must not land on one contender.
        bare_fit(0, 64, root / "warmup", train, val)
        plain_loop(0, 64, train, val)
        _, t_plain = timed(lambda: [plain_loop(s, args.steps, train, val) for s in seeds])
        rows.append(("plain PyTorch loop", t_plain))

        # Paired, seed by seed: a bare fit, then the wrapper on the same seed (earlier seeds are already
        # finished in its root_dir, so each call trains exactly one), so load from other processes hits
        # both alike. Each seed's own wall time is compared; the rest of a call is its fixed cost.
        bare_times, bare_scores, wrapped_times, fixed_costs, last_times = [], [], [], [], []
        for s in seeds:
            score, t = timed(lambda s=s: bare_fit(s, args.steps, root / "bare", train, val))
            bare_times.append(t)
            bare_scores.append(score)
            _, t = timed(lambda s=s: bare_fit(s, args.steps, root / "bare-last", train, val, True))
            last_times.append(t)
            one = MultiSeedTrainer(
                seeds=seeds[: s + 1], root_dir=root / "paired", max_steps=args.steps, **QUIET
            )
            res, t_call = timed(lambda one=one: one.fit(MLP, train_dataloaders=train, val_dataloaders=val))
            wrapped_times.append(res.runs[-1].wall_time)
            fixed_costs.append(t_call - res.runs[-1].wall_time)
        t_bare = sum(bare_times)
        rows.append(("bare Trainer.fit per seed", t_bare))
        rows.append(("bare Trainer.fit + last.ckpt every epoch", sum(last_times)))

        seq = MultiSeedTrainer(seeds=seeds, root_dir=root / "seq", max_steps=args.steps, **QUIET)
        result, t_seq = timed(lambda: seq.fit(MLP, train_dataloaders=train, val_dataloaders=val))
        rows.append(("MultiSeedTrainer sequential, all K in one fit()", t_seq))
        same = all(a == b for a, b in zip(result.scores, bare_scores, strict=True))

        if not args.no_ray:
            import ray

            _, t_init = timed(lambda: ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False))
            ray_trainer = MultiSeedTrainer(
                seeds=seeds,
                root_dir=root / "ray",
                executor="ray",
                cpus_per_seed=1,
                max_steps=args.steps,
                **QUIET,
            )
            ray_result, t_ray = timed(
                lambda: ray_trainer.fit(MLP, train_dataloaders=train, val_dataloaders=val)
            )
            ray.shutdown()
            rows.append(("MultiSeedTrainer ray, 2 workers (excl. ray.init)", t_ray))
            rows.append(("  ray.init (local cluster start)", t_init))
            ray_same = close(ray_result.scores, result.scores)

    print(f"\nK={args.seeds} seeds x {args.steps} steps, MLP 16-64-64-1, batch {BATCH}, 1 thread per seed")
    print(f"{'':50s} {'wall s':>8s} {'x bare':>8s}")
    for name, t in rows:
        print(f"{name:50s} {t:8.2f} {t / t_bare:8.2f}")
    print("\nper-seed overhead of the wrapper (paired, seed by seed, each seed's own wall time):")
    for name, base in (("a bare fit", bare_times), ("a bare fit + last.ckpt every epoch", last_times)):
        ratios = [w / b for w, b in zip(wrapped_times, base, strict=True)]
        print(
            f"  over {name:36s} median {100 * (statistics.median(ratios) - 1):+5.1f}%"
            f" [{100 * (min(ratios) - 1):+5.1f}%, {100 * (max(ratios) - 1):+5.1f}%],"
            f" mean {100 * (statistics.fmean(ratios) - 1):+5.1f}%"
            f" (medians: seed {statistics.median(wrapped_times):.3f}s,"
            f" baseline {statistics.median(base):.3f}s)"
        )
    print(
        f"fixed cost per fit() call (pre-flight, summary, hparams, plot, best.ckpt):"
        f" {statistics.median(fixed_costs):.2f}s median"
    )
    print(f"sequential K-seed fit() vs K bare fits: {100 * (t_seq / t_bare - 1):+.1f}% (unpaired, noisy)")
    print(f"sequential scores identical to bare fits: {same}")
    if not args.no_ray:
        print(f"ray scores equal to sequential (rel 1e-6): {ray_same}")


def close(a: list[float], b: list[float]) -> bool:
    return len(a) == len(b) and all(math.isclose(x, y, rel_tol=1e-6) for x, y in zip(a, b, strict=True))


if __name__ == "__main__":
    main()
