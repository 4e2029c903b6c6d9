"""What successive halving of seeds buys, measured offline (issue 19, item 4), and K short seeds against
one long one at equal compute.

1. **digits** (``examples/digits.py``): K seeds of ``DigitsMLP`` trained ``--epochs`` epochs by a plain
   PyTorch loop (the example's model, data split and Adam; validation loss after every epoch), then
   :func:`~lightning_landscape.multiseed.halving_simulation.halving_simulation` on the running-best
   validation curves (the checkpoint score a rung ranks by) for a few schedules.
2. **demo ensemble** (``examples/study.py``): K initializations of the paper's network trained ``--steps``
   Adam steps as one vectorized ensemble (schedule compressed: lr halved every ``steps / 20``), the
   population risk at log-spaced probes as the validation curves, the same schedules.
3. **K seeds of T steps vs one seed of K x T** on the demo problem: the expected best of k = K final risks of
   ensembles trained T steps against the expected (k = 1) final risk of ensembles trained K x T steps, each
   with its whole compressed schedule.

Usage::

    python benchmarks/halving.py [--seeds 16] [--epochs 20] [--demo_seeds 32] [--steps 1000]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from examples.digits import DigitsDataModule, DigitsMLP
from lightning_landscape.multiseed.halving_simulation import halving_simulation
from lightning_landscape.multiseed.selection import best_of_k


def digits_curves(seeds: int, epochs: int) -> np.ndarray:
    """Validation loss after every epoch, per seed: ``[seeds, epochs]``."""
    dm = DigitsDataModule(batch_size=64)
    dm.setup("fit")
    curves = []
    for seed in range(seeds):
        torch.manual_seed(seed)
        model = DigitsMLP()
        opt = model.configure_optimizers()
        opt = opt["optimizer"] if isinstance(opt, dict) else opt
        row = []
        for _ in range(epochs):
            model.train()
            for batch in dm.train_dataloader():
                opt.zero_grad()
                model.loss_on_batch(model, batch).backward()
                opt.step()
            model.eval()
            with torch.no_grad():
                total = sum(float(model.loss_on_batch(model, b)) * len(b[0]) for b in dm.val_dataloader())
            row.append(total / len(dm._val))
        curves.append(row)
    return np.array(curves)


def demo_curves(seeds: int, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """Population risk per initialization at log-spaced probes (step 0 dropped): ``(steps, [seeds, T])``."""
    import logging

    from examples.study import StudyConfig, read_trajectories, train

    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
    cfg = StudyConfig(seeds=seeds, steps=steps, lr_halve_every=max(1, steps // 20), num_probes=30)
    root = Path(tempfile.mkdtemp())
    train(cfg, root, True, "cpu")
    traj = read_trajectories(root)
    keep = traj["steps"] > 0
    return traj["steps"][keep], traj["risk"][:, keep]


HEADER = "| rungs (at) | keep | survivors | steps spent vs all | winner kept | final: halving vs full |"


def report(
    name: str, curves: np.ndarray, at: np.ndarray, schedules: list[tuple[list[int], float]], n: int
) -> None:
    running = np.minimum.accumulate(curves, axis=1)  # a rung ranks by the best checkpoint so far
    print(f"\n{name}: {curves.shape[0]} seeds fully trained, replays of n = {n} drawn 2000 times")
    print(HEADER)
    print("|---|---|---|---|---|---|")
    for rungs, keep in schedules:
        sim = halving_simulation(running, rungs, keep, "min", num_seeds=n, steps=at.tolist(), draws=2000)
        where = ", ".join(f"{int(at[r])}" for r in rungs)
        print(
            f"| {where} | {keep:.3g} | {sim.survivors} | {sim.steps_fraction:.0%} | {sim.kept_rate:.0%} |"
            f" {sim.final_halving:.4g} vs {sim.final_full:.4g} |"
        )


def _g(value: float | None) -> str:
    return "?" if value is None else f"{value:.3g}"


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--seeds", type=int, default=16)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--demo_seeds", type=int, default=32)
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--k", type=int, default=4)
    args = p.parse_args()
    torch.set_num_threads(1)

    start = time.perf_counter()
    curves = digits_curves(args.seeds, args.epochs)
    epochs = np.arange(1, args.epochs + 1)
    e = args.epochs
    report(
        "digits (val_loss per epoch)", curves, epochs,
        [
            ([e // 5 - 1], 1 / 3), ([e // 5 - 1], 1 / 4), ([e // 10 - 1, e // 4 - 1], 1 / 3),
            ([e * 3 // 10 - 1], 1 / 4),
        ],
        n=min(12, args.seeds),
    )  # fmt: skip
    print(f"(digits: {time.perf_counter() - start:.0f} s)")

    start = time.perf_counter()
    at, risk = demo_curves(args.demo_seeds, args.steps)

    def index(step: float) -> int:
        return int(np.searchsorted(at, step))

    s = args.steps
    report(
        f"demo ensemble (population risk, {s} steps)", risk, at,
        [
            ([index(s / 10)], 1 / 4), ([index(s / 10)], 1 / 8), ([index(s / 5)], 1 / 4),
            ([index(s / 10), index(s * 3 / 10)], 1 / 3),
        ],
        n=min(24, args.demo_seeds),
    )  # fmt: skip
    print(f"(demo ensemble: {time.perf_counter() - start:.0f} s)")

    start = time.perf_counter()
    _, short = demo_curves(args.demo_seeds, args.steps // args.k)
    long_final, short_final = risk[:, -1].tolist(), short[:, -1].tolist()
    k = args.k
    best_short = best_of_k(short_final, "min", confidence=0.9).at(k)
    one_long = best_of_k(long_final, "min", confidence=0.9).at(1)
    print(
        f"\nequal compute on the demo problem ({args.demo_seeds} initializations each):"
        f" best of {k} seeds x {args.steps // k} steps: expected final risk {best_short['expected']:.4g}"
        f" (90% band {_g(best_short['expected_low'])} to {_g(best_short['expected_high'])});"
        f" one seed x {args.steps} steps: {one_long['expected']:.4g}"
        f" (90% band {_g(one_long['expected_low'])} to {_g(one_long['expected_high'])})"
    )
    print(f"(short runs: {time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
