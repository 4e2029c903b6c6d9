"""Benchmark: a 41 x 41 loss plane against its arithmetic floor and loss-landscapes 3.0.6; a GPT-2 plane per
grid point against one forward pass.

Side by side in one process, interleaved rounds, one thread (``--threads``), median and range of each ratio;
times are the process's CPU time (``--clock wall`` for wall time; always wall time with several threads).

**MLP.** The 784-256-256-10 ReLU MLP (float32, CPU), one batch of 512 synthetic samples (labels from a random
linear teacher, a few SGD steps off initialization), cross-entropy, 1682 points (41 x 41 and the centre):

* ``loss_plane`` (ours) on loss-landscapes' own directions (rebuilt with its functions from the same seed:
  uniform ``rand_u_like``, ``orthogonal_to``, ``filter_normalize_``, scaled as ``random_plane`` scales them);
* the floor: the multiply-adds of the layers after the first (the first is affine in the grid coordinates,
  its products are computed once), 1682 x 512 x 2 x (256 x 256 + 256 x 10) = 117 GFLOP, timed as the
  ``torch.mm`` calls of those shapes themselves (the rate they reach is printed);
* ``loss_landscapes.random_plane(model, Loss(...), distance=1, steps=41, normalization="filter")``: one
  forward per grid point, the weights moved in place between points;
* for information, the vmapped chunks (``chunk_size=32``, the CPU default before the in-place path).

Same grid: ``random_plane`` walks the grid in place, and its even columns sit one step further along the
second direction than its odd ones (its loop adds before it evaluates on the way up, and subtracts before on
the way down). Ours evaluates the odd columns' lattice, so 1660 of the 1681 values are compared (the top
point of each even column lies outside it). The in-place walk also accumulates float32 rounding in the
weights, hence a relative tolerance of 1e-4 rather than exact equality.

**GPT-2.** Hugging Face ``GPT2LMHeadModel`` from a config (no download): 4 layers, d=512, 8 heads, vocab
8192, 64 positions (16.8M parameters), one batch of 4 x 32 random tokens, ``model(input_ids=b, labels=b)
.loss``. A plane of ``--gpt2-steps`` squared points (random filter-normalized directions; its time includes
everything ``loss_plane`` does) per grid point, against one forward pass over the batch (eval mode,
``torch.no_grad``, the median of several). A few points are checked against the model's own forward with
its weights set to :math:`\theta + a d_1 + b d_2` by hand.

Run: ``flock /tmp/bench.lock python benchmarks/landscape.py [--rounds 3]`` (needs the ``bench`` extra:
``loss-landscapes==3.0.6`` and ``transformers``; about a minute on a quiet 2-core machine).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
from torch import Tensor, nn

from lightning_landscape.landscape import PlaneResult, loss_plane, random_directions

STEPS = 41
SEED = 1234
# The process's CPU time by default (one thread): on a shared machine the time this process was not running
# would land on whichever measurement it hit; ``--clock wall`` for wall time.
clock = time.process_time


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
    start = clock()
    values = loss_landscapes.random_plane(
        model, metric, distance=1, steps=STEPS, normalization="filter", deepcopy_model=True
    )
    return torch.as_tensor(values, dtype=torch.float64), clock() - start


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
    start = clock()
    plane = loss_plane(model, ce, [batch], directions=dirs, span=(-STEPS / 2, STEPS / 2 - 1), steps=STEPS)
    return plane.losses, clock() - start


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


def chunked_vmap(
    model: nn.Module, batch: tuple[Tensor, Tensor], dirs: tuple[dict[str, Tensor], dict[str, Tensor]]
) -> tuple[Tensor, float]:
    start = clock()
    plane = loss_plane(
        model, ce, [batch], directions=dirs, span=(-STEPS / 2, STEPS / 2 - 1), steps=STEPS, chunk_size=32
    )
    return plane.losses, clock() - start


def floor_time(points: int) -> tuple[float, float]:
    """Seconds of the multiply-adds after the first layer: ``torch.mm`` of the plane's shapes, per point."""
    gen = torch.Generator().manual_seed(0)
    h = torch.randn(512, 256, generator=gen)
    w2, w3 = torch.randn(256, 256, generator=gen), torch.randn(10, 256, generator=gen)
    start = clock()
    for _ in range(points):
        torch.mm(h, w2.t())
        torch.mm(h, w3.t())
    seconds = clock() - start
    return seconds, points * 512 * 2 * (256 * 256 + 256 * 10) / seconds / 1e9


def gpt2() -> tuple[nn.Module, Tensor]:
    from transformers import GPT2Config, GPT2LMHeadModel
    from transformers.utils import logging

    logging.set_verbosity_error()
    torch.manual_seed(0)
    config = GPT2Config(
        n_layer=4, n_embd=512, n_head=8, vocab_size=8192, n_positions=64, bos_token_id=0, eos_token_id=0
    )
    model = GPT2LMHeadModel(config)
    tokens = torch.randint(0, 8192, (4, 32), generator=torch.Generator().manual_seed(0))
    return model, tokens


def lm_loss(model: nn.Module, batch: Tensor) -> Tensor:
    return model(input_ids=batch, labels=batch).loss


def forward_times(model: nn.Module, batch: Tensor, reps: int = 7) -> list[float]:
    """Seconds of ``reps`` forward passes over ``batch`` (eval mode, no grad); the model's modes restored."""
    was = model.training
    model.eval()
    times = []
    with torch.no_grad():
        lm_loss(model, batch)
        for _ in range(reps):
            start = clock()
            lm_loss(model, batch)
            times.append(clock() - start)
    model.train(was)
    return times


def gpt2_check(model: nn.Module, batch: Tensor, plane: PlaneResult, dirs: list[dict[str, Tensor]]) -> float:
    """Max relative difference of a few plane points from the model's own forward at those weights."""
    probe = copy.deepcopy(model).eval()
    params = dict(probe.named_parameters())
    base = {n: p.detach().clone() for n, p in params.items()}
    worst = 0.0
    n = len(plane.alphas)
    for i, j in [(0, 0), (n // 2, n // 2), (n - 1, 1), (1, n - 1)]:
        a, b = float(plane.alphas[i]), float(plane.betas[j])
        with torch.no_grad():
            for name, p in params.items():
                p.copy_(base[name] + a * dirs[0][name] + b * dirs[1][name])
            want = float(lm_loss(probe, batch))
        worst = max(worst, abs(float(plane.losses[i, j]) - want) / abs(want))
    return worst


def spread(values: list[float]) -> str:
    return f"median {statistics.median(values):.2f}x (range {min(values):.2f}-{max(values):.2f}x)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--gpt2-steps", type=int, default=11)
    parser.add_argument("--skip-peer", action="store_true", help="leave loss-landscapes out")
    parser.add_argument("--skip-gpt2", action="store_true")
    parser.add_argument("--clock", choices=("cpu", "wall"), default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.clock == "wall" or args.threads > 1:
        global clock
        clock = time.perf_counter
    model, batch = mlp()
    dirs = their_directions(model)
    points = STEPS * STEPS + 1
    ratios: dict[str, list[float]] = {"floor": [], "peer": [], "vmap": [], "gpt2": []}
    worst, compared, rate = 0.0, 0, []
    big, tokens = (None, None) if args.skip_gpt2 else gpt2()
    for r in range(args.rounds):
        t_floor, gflops = floor_time(points)
        ours, t_ours = our_plane(model, batch, dirs)
        line = f"round {r + 1}: floor {t_floor:.2f} s ({gflops:.0f} GFLOP/s), ours {t_ours:.2f} s"
        ratios["floor"].append(t_ours / t_floor)
        rate.append(gflops)
        _, t_vmap = chunked_vmap(model, batch, dirs)
        ratios["vmap"].append(t_vmap / t_ours)
        line += f", vmap chunks {t_vmap:.2f} s"
        if not args.skip_peer:
            theirs, t_theirs = their_plane(model, batch)
            ratios["peer"].append(t_theirs / t_ours)
            rel, compared = compare(theirs, ours)
            worst = max(worst, rel)
            line += f", loss-landscapes {t_theirs:.2f} s"
        if big is not None and tokens is not None:
            forwards = forward_times(big, tokens)
            gdirs = random_directions(big, 2, seed=r)
            start = clock()
            plane = loss_plane(big, lm_loss, [tokens], directions=gdirs, steps=args.gpt2_steps)
            per_point = (clock() - start) / (args.gpt2_steps**2 + 1)
            t_fwd = statistics.median(forwards + forward_times(big, tokens))  # before and after
            ratios["gpt2"].append(per_point / t_fwd)
            line += f"; GPT-2 forward {t_fwd * 1e3:.1f} ms, plane {per_point * 1e3:.1f} ms/point"
            if r == 0:
                gpt2_worst = gpt2_check(big, tokens, plane, gdirs)
        print(line, flush=True)
    which = "process CPU time" if clock is time.process_time else "wall time"
    print(f"\n{torch.get_num_threads()} thread(s), {args.rounds} interleaved rounds, {which}")
    print(f"41x41 plane, 784-256-256-10 MLP, batch 512, float32 ({statistics.median(rate):.0f} GFLOP/s GEMM)")
    print(f"  ours / arithmetic floor (117 GFLOP):      {spread(ratios['floor'])}   target <= 1.5x")
    if ratios["peer"]:
        print(f"  loss-landscapes random_plane / ours:      {spread(ratios['peer'])}")
    print(f"  vmapped chunks (chunk_size=32) / ours:    {spread(ratios['vmap'])}")
    if ratios["gpt2"]:
        print(f"GPT-2 16.8M, batch 4 x 32, {args.gpt2_steps}x{args.gpt2_steps} plane")
        print(f"  plane per grid point / one forward pass:  {spread(ratios['gpt2'])}   target <= 1.2x")
        print(
            f"  same values as the model's own forward at 4 points: max relative difference {gpt2_worst:.1e}"
        )
    if ratios["peer"]:
        print(f"same values as loss-landscapes: max relative difference {worst:.2e} over {compared} points")
        if worst > 1e-4:
            raise SystemExit("values differ beyond 1e-4")


if __name__ == "__main__":
    main()
