"""Benchmark: wall time of :func:`lightning_landscape.landscape.align`, and what it does to a barrier.

Cases (float32, CPU, one thread per process unless ``--threads``; the median of ``--rounds`` runs):

* weight matching of two 784-256-256-10 ReLU MLPs (target: under 5 s): a random network and a copy of it
  with its hidden units permuted and rescaled (it must come back exactly), then two independently
  initialized networks;
* aligning two demo networks (``examples/shallow_relu.py``'s ``ShallowReLU``, hidden ``[50, 50]`` as in
  ``examples/study.py``, He-normal initialization; target: well under 1 s), by weights and by activations
  on the demo's 4096-point grid.

For the permuted copy the barrier on the straight segment (21 points) is printed before and after alignment,
for the mean squared distance to the reference's outputs on 512 Gaussian inputs (0 at both ends, since the
copy computes the reference's function): the raw barrier is large, the aligned one 0 up to float32 rounding.

Then two demo networks trained from different seeds (Adam, lr 0.01 halved every 250 steps, 1,000 full-batch
steps on 1024 grid points of the demo's target :math:`x^2 + 2x`): the barrier of the population risk
(4096-point midpoint grid, 21 points on the segment) raw, after weight matching and after activation
matching on the grid, and the RMS distance between the two functions.

Run: ``python benchmarks/align.py [--rounds 3]`` (about 15 s).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from examples.shallow_relu import ShallowReLU
from lightning_landscape.landscape import align


def mlp() -> nn.Sequential:
    return nn.Sequential(nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10))


def permuted_copy(net: nn.Sequential, gen: torch.Generator) -> nn.Sequential:
    """The same function: hidden units shuffled, each rescaled by a factor in [e^-1, e]."""
    twin = copy.deepcopy(net)
    with torch.no_grad():
        for first, second in ((0, 2), (2, 4)):
            n = net[first].out_features
            perm = torch.randperm(n, generator=gen)
            c = torch.exp(2 * torch.rand(n, generator=gen) - 1)
            twin[first].weight.copy_(twin[first].weight[perm] * c[:, None])
            twin[first].bias.copy_(twin[first].bias[perm] * c)
            twin[second].weight.copy_(twin[second].weight[:, perm] / c)
    return twin


def barrier(a: nn.Module, b: nn.Module, loss: Callable[[nn.Module], Tensor], steps: int = 21) -> float:
    """Largest excess of the loss on the segment from ``a`` to ``b`` over the chord."""
    sa, sb = a.state_dict(), b.state_dict()
    ts = torch.linspace(0, 1, steps)
    with torch.no_grad():
        values = torch.stack(
            [
                loss(
                    lambda x, t=t: functional_call(
                        a, {k: (1 - t) * v + t * sb[k] for k, v in sa.items()}, (x,)
                    )
                )
                for t in ts
            ]
        )
    return float((values - ((1 - ts) * values[0] + ts * values[-1])).max())


def timed(fn: Callable[[], object], rounds: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(rounds):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)

    ref = mlp()
    twin = permuted_copy(ref, gen)
    x = torch.randn(512, 784, generator=gen)
    with torch.no_grad():
        y = ref(x)

    def mse(f: Callable[[Tensor], Tensor]) -> Tensor:
        return F.mse_loss(f(x), y)

    seconds, result = timed(lambda: align(ref, twin), args.rounds)
    aligned = result.model  # type: ignore[attr-defined]
    error = max(float((aligned.state_dict()[k] - v).abs().max()) for k, v in ref.state_dict().items())
    print(f"784-256-256-10, permuted+rescaled copy, weights: {seconds:.3f} s (target < 5 s)")
    print(f"  max |aligned - reference| = {error:.1e}; sweeps {result.sweeps}")  # type: ignore[attr-defined]
    raw, after = barrier(ref, twin, mse), barrier(ref, aligned, mse)
    scale = float(y.pow(2).mean())
    print(f"  barrier raw {raw:.2e} ({raw / scale:.0%} of the mean squared output)  aligned {after:.2e}")
    other = mlp()
    seconds, result = timed(lambda: align(ref, other), args.rounds)
    print(f"784-256-256-10, independent inits, weights: {seconds:.3f} s, sweeps {result.sweeps}")  # type: ignore[attr-defined]

    a = ShallowReLU(hidden=[50, 50], init="he")
    b = ShallowReLU(hidden=[50, 50], init="he")
    grid = (torch.arange(4096, dtype=torch.float32)[:, None] + 0.5) / 4096
    seconds, _ = timed(lambda: align(a, b), args.rounds)
    print(f"demo ShallowReLU [50, 50], weights: {seconds * 1e3:.1f} ms (target well under 1 s)")
    seconds, _ = timed(lambda: align(a, b, "activations", [grid], lambda m, t: m(t)), args.rounds)
    print(f"demo ShallowReLU [50, 50], activations on the 4096-point grid: {seconds * 1e3:.1f} ms")

    trained(args.rounds)


def trained(rounds: int) -> None:
    grid = (torch.arange(4096, dtype=torch.float32)[:, None] + 0.5) / 4096
    train_x = (torch.arange(1024, dtype=torch.float32)[:, None] + 0.5) / 1024

    def target(x: Tensor) -> Tensor:
        return x**2 + 2 * x

    def risk(f: Callable[[Tensor], Tensor]) -> Tensor:
        return F.mse_loss(f(grid), target(grid))

    nets = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        net = ShallowReLU(hidden=[50, 50], init="he").net
        opt = torch.optim.Adam(net.parameters(), lr=0.01)
        sched = torch.optim.lr_scheduler.StepLR(opt, 250, 0.5)
        for _ in range(1000):
            opt.zero_grad()
            F.mse_loss(net(train_x), target(train_x)).backward()
            opt.step()
            sched.step()
        nets.append(net)
    a, b = nets
    with torch.no_grad():
        risks = [float(risk(n)) for n in nets]
    print(f"two trained demo networks (risks {risks[0]:.1e}, {risks[1]:.1e}):")
    print(f"  barrier raw {barrier(a, b, risk):.3g}")
    for method in ("weights", "activations"):
        seconds, result = timed(lambda m=method: align(a, b, m, [grid], lambda n, t: n(t)), rounds)
        print(f"  barrier {method}-aligned {barrier(a, result.model, risk):.3g} ({seconds * 1e3:.0f} ms)")  # type: ignore[attr-defined]
    with torch.no_grad():
        rms = float((a(grid) - b(grid)).pow(2).mean().sqrt())
    print(f"  RMS distance between the functions on the grid {rms:.3g}")


if __name__ == "__main__":
    main()
