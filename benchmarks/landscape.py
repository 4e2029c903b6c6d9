"""Benchmark: a 41 x 41 loss plane, ours (vectorized) vs loss-landscapes 3.0.6's ``random_plane``.

Side by side in one run, interleaved rounds, on the 784-256-256-10 ReLU MLP (float32, CPU) with one batch
of 512 synthetic samples (labels from a random linear teacher, a few SGD steps off initialization),
cross-entropy:

* ``loss_landscapes.random_plane(model, Loss(...), distance=1, steps=41, normalization="filter")``: one
  forward per grid point, the weights moved in place between points;
* ``lightning_landscape.landscape.loss_plane`` on the same model, batch and grid and the *same directions*:
  loss-landscapes' own, rebuilt with its own functions from the same seed (uniform ``rand_u_like``,
  ``orthogonal_to``, ``filter_normalize_``, scaled as ``random_plane`` scales them);
* for information, ours with the cached first-layer products switched off (plain ``vmap``).

Same grid: ``random_plane`` walks the grid in place, and its even columns sit one step further along the
second direction than its odd ones (its loop adds before it evaluates on the way up, and subtracts before on
the way down). Ours evaluates the odd columns' lattice, so 1660 of the 1681 values are compared (the top
point of each even column lies outside it). The in-place walk also accumulates float32 rounding in the
weights, hence a relative tolerance of 1e-4 rather than exact equality.

Run: ``flock /tmp/bench.lock python benchmarks/landscape.py [--rounds 2]`` (loss-landscapes is needed:
``pip install loss-landscapes==3.0.6``; a few minutes on a shared 2-core machine).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
from torch import Tensor, nn

from lightning_landscape.landscape import loss_plane
from lightning_landscape.landscape._evaluate import GridEvaluator

STEPS = 41
SEED = 1234


def ce(model: nn.Module, batch: tuple[Tensor, Tensor]) -> Tensor:
    return nn.functional.cross_entropy(model(batch[0]), batch[1])


def mlp() -> tuple[nn.Module, tuple[Tensor, Tensor]]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10))
    x = torch.randn(512, 784)
    y = (x @ torch.randn(784, 10)).argmax(dim=1)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    for _ in range(20):
        opt.zero_grad()
        ce(model, (x, y)).backward()
        opt.step()
    model.zero_grad(set_to_none=True)
    return model, (x, y)


def their_plane(model: nn.Module, batch: tuple[Tensor, Tensor]) -> tuple[Tensor, float]:
    import loss_landscapes
    from loss_landscapes.metrics import Loss

    torch.manual_seed(SEED)
    metric = Loss(nn.functional.cross_entropy, batch[0], batch[1])
    start = time.perf_counter()
    values = loss_landscapes.random_plane(
        model, metric, distance=1, steps=STEPS, normalization="filter", deepcopy_model=True
    )
    return torch.as_tensor(values, dtype=torch.float64), time.perf_counter() - start


def their_directions(model: nn.Module) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """``random_plane``'s per-step directions, rebuilt with its own functions from the same seed."""
    from loss_landscapes.model_interface.model_parameters import orthogonal_to, rand_u_like
    from loss_landscapes.model_interface.model_wrapper import wrap_model

    torch.manual_seed(SEED)
    start = wrap_model(copy.deepcopy(model)).get_module_parameters()
    one = rand_u_like(start)
    two = orthogonal_to(one)
    one.filter_normalize_(start)
    two.filter_normalize_(start)
    # random_plane's scaling (distance=1): a step is model_norm / steps long.
    one.mul_((start.model_norm() / STEPS) / one.model_norm())
    two.mul_((start.model_norm() / STEPS) / two.model_norm())
    names = [n for n, _ in model.named_parameters()]
    return (
        {n: one.parameters[i].clone() for i, n in enumerate(names)},
        {n: two.parameters[i].clone() for i, n in enumerate(names)},
    )


def our_plane(
    model: nn.Module, batch: tuple[Tensor, Tensor], dirs: tuple[dict[str, Tensor], dict[str, Tensor]]
) -> tuple[Tensor, float]:
    # Odd columns of random_plane: coordinates i - steps / 2 along both directions, i = 0 .. steps - 1.
    start = time.perf_counter()
    plane = loss_plane(model, ce, [batch], directions=dirs, span=(-STEPS / 2, STEPS / 2 - 1), steps=STEPS)
    return plane.losses, time.perf_counter() - start


def plain_vmap(
    model: nn.Module, batch: tuple[Tensor, Tensor], dirs: tuple[dict[str, Tensor], dict[str, Tensor]]
) -> tuple[Tensor, float]:
    """The same grid through the evaluator with the cached first-layer products switched off."""
    start = time.perf_counter()
    evaluator = GridEvaluator(model, ce, [batch], cache_products=False)
    axis = torch.arange(STEPS, dtype=torch.float64) - STEPS / 2
    weights = {n: p.detach() for n, p in model.named_parameters()}
    losses = evaluator.losses(weights, list(dirs), torch.cartesian_prod(axis, axis))
    return losses.reshape(STEPS, STEPS), time.perf_counter() - start


def compare(theirs: Tensor, ours: Tensor) -> tuple[float, int]:
    """Max relative difference over the points both grids hold, and how many."""
    diffs = []
    for i in range(STEPS):
        if i % 2 == 1:
            diffs.append((theirs[i] - ours[i]).abs() / theirs[i].abs())
        else:  # even columns are one step further along the second direction
            diffs.append((theirs[i, :-1] - ours[i, 1:]).abs() / theirs[i, :-1].abs())
    flat = torch.cat(diffs)
    return float(flat.max()), int(flat.numel())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    model, batch = mlp()
    dirs = their_directions(model)
    times: dict[str, list[float]] = {"loss-landscapes": [], "ours": [], "ours, plain vmap": []}
    worst = 0.0
    compared = 0
    for r in range(args.rounds):
        theirs, t_theirs = their_plane(model, batch)
        ours, t_ours = our_plane(model, batch, dirs)
        plain, t_plain = plain_vmap(model, batch, dirs)
        times["loss-landscapes"].append(t_theirs)
        times["ours"].append(t_ours)
        times["ours, plain vmap"].append(t_plain)
        rel, compared = compare(theirs, ours)
        rel_plain, _ = compare(theirs, plain)
        worst = max(worst, rel, rel_plain)
        print(
            f"round {r + 1}: loss-landscapes {t_theirs:.2f} s, ours {t_ours:.2f} s, "
            f"plain vmap {t_plain:.2f} s, ratio {t_theirs / t_ours:.1f}x, max rel diff {rel:.2e}"
        )
    print(f"\n41x41 plane, 784-256-256-10 MLP, batch 512, float32, {torch.get_num_threads()} threads")
    for name, values in times.items():
        print(f"  {name:18s} best {min(values):7.2f} s   median {statistics.median(values):7.2f} s")
    ratios = [a / b for a, b in zip(times["loss-landscapes"], times["ours"], strict=True)]
    best = min(times["loss-landscapes"]) / min(times["ours"])
    print(
        f"speed-up vs loss-landscapes random_plane: {best:.1f}x "
        f"(best vs best), per round {', '.join(f'{q:.1f}x' for q in ratios)}"
    )
    print(f"same values: max relative difference {worst:.2e} over {compared} shared grid points (tol 1e-4)")
    if worst > 1e-4:
        raise SystemExit("values differ beyond 1e-4")


if __name__ == "__main__":
    main()
