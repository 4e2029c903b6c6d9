"""Overhead of the landscape callbacks on the fit time of a small MLP, measured side by side in one run.

Configurations (same model, data, seed, Trainer options and TensorBoardLogger; only the callbacks differ):

* ``none``: no callback;
* ``grad_norm``: :class:`~lightning_landscape.GradientNormMonitor` at default settings (target <= 1.05x);
* ``grad_norm_every_step``: ours, logging every step;
* ``lightning_grad_norm_every_step``: Lightning's route, ``self.log_dict(grad_norm(self, norm_type=2))`` in
  ``on_before_optimizer_step`` every step (what users write today);
* ``hessian_top1``: :class:`~lightning_landscape.HessianEigenMonitor` top-1 every 100 steps (target <= 1.10x),
  warm-started from the previous probe (the default);
* ``hessian_top1_cold``: the same with ``warm_start=False`` (every probe from a random vector);
* ``pyhessian_top1``: pyhessian 0.1's ``hessian(...).eigenvalues(top_n=1)``, same place, same batch;
* ``noise_scale``: :class:`~lightning_landscape.GradientNoiseScaleMonitor` at default settings (every 50
  steps, the batch cut into 8 chunks; target <= 1.05x), its hook time measured like the Hessian probes'.
* ``stability``: :class:`~lightning_landscape.EdgeOfStabilityMonitor` at default settings (every 100 steps,
  one probe batch, top-1 of H for SGD; same probe as ``hessian_top1`` plus the threshold), hook time likewise.

``--configs`` runs a subset (``none`` is always included, as the reference).

Each configuration is fitted ``--repeats`` times, interleaved round-robin (the order rotating each round) so
that load on the machine hits all alike; each round's fit is divided by the same round's ``none`` fit, and the
median and range of those ratios are reported.
On a shared machine fit times move by several percent from run to run, more than a probe costs; so for the
Hessian configurations the time spent inside the monitor's step hook (the probes themselves) is also
measured and reported as a share of the ``none`` fit, which load disturbs much less.
Run ``python benchmarks/callbacks.py``.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from _stats import ratios, spread  # benchmarks/_stats.py (this script's folder is on sys.path)
from lightning.pytorch import Callback, LightningModule, Trainer, seed_everything
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import grad_norm
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_landscape import (
    EdgeOfStabilityMonitor,
    GradientNoiseScaleMonitor,
    GradientNormMonitor,
    HessianEigenMonitor,
)


class MLP(LightningModule):
    def __init__(self, d_in: int = 32, width: int = 64, classes: int = 10, lightning_grad_norm: bool = False):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(d_in, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, classes)
        )
        self.lightning_grad_norm = lightning_grad_norm

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        loss = F.cross_entropy(self.net(x), y)
        self.log("train_loss", loss)
        return loss

    def on_before_optimizer_step(self, optimizer: Any) -> None:
        if self.lightning_grad_norm:
            self.log_dict(grad_norm(self, norm_type=2))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.05)


class PyHessianTop1(Callback):
    """pyhessian's top eigenvalue every ``every`` steps on the first training batch, as users call it."""

    def __init__(self, every: int, batch: tuple[torch.Tensor, torch.Tensor]) -> None:
        self.every = every
        self.batch = batch
        self.hook_seconds = 0.0

    def on_train_batch_end(self, trainer: Trainer, pl_module: Any, *args: Any) -> None:
        start = time.perf_counter()
        if trainer.global_step % self.every == 0:
            from pyhessian import hessian

            hessian(pl_module.net, nn.CrossEntropyLoss(), data=self.batch, cuda=False).eigenvalues(top_n=1)
        self.hook_seconds += time.perf_counter() - start


class TimedHessianEigenMonitor(HessianEigenMonitor):
    """:class:`HessianEigenMonitor` with the time spent in its step hook (where it probes) recorded."""

    hook_seconds = 0.0

    def on_train_batch_end(self, *args: Any, **kwargs: Any) -> None:
        start = time.perf_counter()
        super().on_train_batch_end(*args, **kwargs)
        self.hook_seconds += time.perf_counter() - start


class TimedNoiseScaleMonitor(GradientNoiseScaleMonitor):
    """:class:`GradientNoiseScaleMonitor` with the time spent in its step hook (the estimates) recorded."""

    hook_seconds = 0.0

    def on_before_optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        start = time.perf_counter()
        super().on_before_optimizer_step(*args, **kwargs)
        self.hook_seconds += time.perf_counter() - start


class TimedEdgeOfStabilityMonitor(EdgeOfStabilityMonitor):
    """:class:`EdgeOfStabilityMonitor` with the time spent in its step hook (where it probes) recorded."""

    hook_seconds = 0.0

    def on_train_batch_end(self, *args: Any, **kwargs: Any) -> None:
        start = time.perf_counter()
        super().on_train_batch_end(*args, **kwargs)
        self.hook_seconds += time.perf_counter() - start


def make_loader(n: int, batch_size: int) -> DataLoader:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, 32, generator=gen)
    y = (x[:, :10] + 0.5 * torch.randn(n, 10, generator=gen)).argmax(dim=1)
    return DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=True)


def fit_time(
    steps: int, callbacks: Callable[[DataLoader], list[Callback]], lightning_grad_norm: bool
) -> tuple[float, float]:
    """Seconds of ``trainer.fit`` and seconds spent inside the callbacks' timed hooks."""
    seed_everything(0, verbose=False)
    loader = make_loader(steps * 64, 64)
    cbs = callbacks(loader)
    with tempfile.TemporaryDirectory() as root:
        trainer = Trainer(
            max_steps=steps,
            accelerator="cpu",
            devices=1,
            logger=TensorBoardLogger(root),
            callbacks=cbs,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            num_sanity_val_steps=0,
        )
        model = MLP(lightning_grad_norm=lightning_grad_norm)
        start = time.perf_counter()
        trainer.fit(model, loader)
        elapsed = time.perf_counter() - start
    return elapsed, sum(float(getattr(cb, "hook_seconds", 0.0)) for cb in cbs)


def first_batch(loader: DataLoader) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = loader.dataset.tensors  # type: ignore[attr-defined]
    return x[:64], y[:64]


CONFIGS: dict[str, tuple[Callable[[DataLoader], list[Callback]], bool]] = {
    "none": (lambda loader: [], False),
    "grad_norm": (lambda loader: [GradientNormMonitor()], False),
    "grad_norm_every_step": (lambda loader: [GradientNormMonitor(log_every_n_steps=1)], False),
    "lightning_grad_norm_every_step": (lambda loader: [], True),
    "hessian_top1": (lambda loader: [TimedHessianEigenMonitor(k=1, every_n_steps=100)], False),
    "hessian_top1_cold": (
        lambda loader: [TimedHessianEigenMonitor(k=1, every_n_steps=100, warm_start=False)],
        False,
    ),
    "pyhessian_top1": (lambda loader: [PyHessianTop1(100, first_batch(loader))], False),
    "noise_scale": (lambda loader: [TimedNoiseScaleMonitor()], False),
    "stability": (lambda loader: [TimedEdgeOfStabilityMonitor()], False),
}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--configs", nargs="+", choices=list(CONFIGS), default=list(CONFIGS))
    args = parser.parse_args()
    configs = {name: CONFIGS[name] for name in CONFIGS if name == "none" or name in args.configs}
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    import logging

    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    times: dict[str, list[float]] = {name: [] for name in configs}
    hooks: dict[str, list[float]] = {name: [] for name in configs}
    fit_time(50, CONFIGS["none"][0], False)  # warm-up: imports, allocator
    names = list(configs)
    for r in range(args.repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            callbacks, lightning_route = configs[name]
            elapsed, in_hooks = fit_time(args.steps, callbacks, lightning_route)
            times[name].append(elapsed)
            hooks[name].append(in_hooks)
    # Rounds are paired: every ratio is round r of a configuration over round r of ``none``.
    print(
        f"small MLP (32-64-64-10, batch 64), {args.steps} steps, {args.repeats} interleaved rounds, "
        "TensorBoardLogger; ratios: median [min, max] over the rounds"
    )
    print(f"{'configuration':34s} {'fit s (median)':>15s}  x none")
    for name, ts in times.items():
        print(f"{name:34s} {statistics.median(ts):15.3f}  {spread(ratios(ts, times['none']), '.3f')}")
    if {"grad_norm_every_step", "lightning_grad_norm_every_step"} <= set(times):
        ours = [t - b for t, b in zip(times["grad_norm_every_step"], times["none"], strict=True)]
        theirs = [t - b for t, b in zip(times["lightning_grad_norm_every_step"], times["none"], strict=True)]
        print(
            "per-step logging overhead, ours vs Lightning grad_norm+log_dict: "
            f"{spread(ratios(ours, [max(t, 1e-9) for t in theirs]))}"
        )
        print(
            f"  ({1e3 * statistics.median(ours) / args.steps:.3f} ms vs "
            f"{1e3 * statistics.median(theirs) / args.steps:.3f} ms per step, medians)"
        )
    hessian = ("hessian_top1", "hessian_top1_cold", "pyhessian_top1")
    if set(hessian) <= set(times):
        fit = {name: spread(ratios(times[name], times["none"]), ".3f") for name in hessian}
        probe = {
            name: spread([1 + h / b for h, b in zip(hooks[name], times["none"], strict=True)], ".3f")
            for name in hessian
        }
        print(
            f"Hessian top-1 every 100 steps, fit time x none: ours {fit['hessian_top1']} "
            f"(cold start {fit['hessian_top1_cold']}), pyhessian {fit['pyhessian_top1']}"
        )
        print(
            f"  time in the probing hook, as 1 + share of the none fit: ours {probe['hessian_top1']} "
            f"(cold start {probe['hessian_top1_cold']}), pyhessian {probe['pyhessian_top1']}"
        )
    for name, what in (("noise_scale", "gradient noise scale"), ("stability", "edge of stability")):
        if name in times:
            hook = [1 + h / b for h, b in zip(hooks[name], times["none"], strict=True)]
            print(
                f"{what} at defaults, fit time x none: {spread(ratios(times[name], times['none']), '.3f')}; "
                f"time in its hook as 1 + share of the none fit: {spread(hook, '.3f')}"
            )


if __name__ == "__main__":
    main()
