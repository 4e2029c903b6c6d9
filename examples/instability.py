"""When is the outcome decided? Instability analysis (Frankle et al. 2020) of the demo's shallow ReLU network.

One initialization of the demo's network ((1, 50, 50, 1), He-normal weights, zero biases, Adam at 0.01
halved every ``steps / 20`` steps, a fresh batch of 1024 samples per step, :math:`f(x) = x^2 + 2x`) is
trained once; at each branch step :math:`k` two children are copied from it (weights and Adam state) and
trained to the end on different sample streams. The barrier of the population risk between the two
children's end points says from which step on the basin is fixed::

    python examples/instability.py --out runs/instability        # about a minute on a laptop CPU

It prints the table and writes ``instability.png`` and ``instability.json`` into ``--out``. The stream of
the demo's data module comes from its own seed; here each run draws its stream's seed from the global
generator, so ``seed_everything(child_seed)`` gives each child its own samples.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from typing_extensions import override

# `python examples/instability.py` puts examples/ (not the repository root) on sys.path.
_ROOT = Path(__file__).resolve().parents[1]
if str(_ROOT) not in sys.path:
    sys.path.insert(0, str(_ROOT))

from examples.shallow_relu import ShallowReLU, ShallowReLUDataModule, _OnlineBatches  # noqa: E402
from lightning_landscape.multiseed import instability  # noqa: E402


class PerRunStream(ShallowReLUDataModule):
    """The demo's data, with the training stream's seed drawn from the global generator per run."""

    @override
    def train_dataloader(self) -> DataLoader:
        seed = int(torch.randint(0, 2**31 - 1, ()))
        return DataLoader(
            _OnlineBatches(self.target, self.batch_size, self.steps_per_epoch, seed), batch_size=None
        )


def main(argv: list[str] | None = None) -> Any:
    """Run the study, print the table, write the figure and the JSON; returns the result."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--out", default="runs/instability", help="folder for instability.png and .json")
    p.add_argument("--steps", type=int, default=600, help="Adam steps of every child")
    p.add_argument("--branch_steps", type=int, nargs="+", default=[0, 5, 20, 60, 200])
    p.add_argument("--hidden", type=int, nargs="+", default=[50, 50])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--grid_size", type=int, default=4096, help="midpoints of the population risk")
    args = p.parse_args(argv)

    data = PerRunStream(target="quadratic", batch_size=1024, steps_per_epoch=100)
    grid = ((torch.arange(args.grid_size, dtype=torch.float64) + 0.5) / args.grid_size)[:, None].float()
    target = data.target(grid)

    def population_risk(model: Any, batch: Any) -> torch.Tensor:
        # The barrier of the population risk (midpoint rule on [0, 1]), not of one sampled batch.
        return F.mse_loss(model.net(grid), target)

    def build() -> ShallowReLU:
        return ShallowReLU(
            hidden=args.hidden,
            bias_init="zero",
            optimizer="adam",
            lr=0.01,
            lr_halve_every=max(args.steps // 20, 1),
        )

    start = time.perf_counter()
    res = instability(
        build,
        data,
        total_steps=args.steps,
        branch_steps=args.branch_steps,
        seed=args.seed,
        loss_fn=population_risk,
        num_batches=1,
        barrier_steps=21,
        tol=1e-3,
        rtol=0.1,
    )
    elapsed = time.perf_counter() - start
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    res.save(out / "instability.json")
    res.plot().savefig(out / "instability.png", dpi=110)
    print(res.table())
    print(f"{2 * len(res.branch_steps)} children of {args.steps} steps in {elapsed:.1f} s; wrote {out}/")
    return res


if __name__ == "__main__":
    torch.set_num_threads(1)  # tiny matrices: more threads only add overhead
    main()
