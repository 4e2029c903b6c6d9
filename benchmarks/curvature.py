"""Benchmark: top Hessian eigenvalues by our Lanczos vs pyhessian's power iteration, and product cost.

Side by side in one run, on a shallow ReLU net (1-20-1, 64 points) and an MLP 784-256-256-10 (one batch
of 512 synthetic samples), both float64 on the CPU:

* products and wall time for the top-1 and top-5 eigenvalues at ``tol=1e-3``, ours vs pyhessian, and
  how many returned values are in fact within 1e-3 relative of the truth;
* the cost of one Hessian-vector product relative to one gradient, with the graph reused vs recomputed.

Truth: dense ``torch.linalg.eigvalsh`` for the shallow net; for the MLP (270k parameters, no dense
Hessian) a tight Lanczos run of ours (``tol=1e-8``), validated against dense on the shallow net first.

Run: ``python benchmarks/curvature.py`` (about a minute).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from lightning_landscape.curvature import HessianOperator, hessian_eigenvalues

DTYPE = torch.float64
REL = 1e-3


def mse(model: nn.Module, batch: tuple[Tensor, Tensor]) -> Tensor:
    return nn.functional.mse_loss(model(batch[0]), batch[1])


def ce(model: nn.Module, batch: tuple[Tensor, Tensor]) -> Tensor:
    return nn.functional.cross_entropy(model(batch[0]), batch[1])


def shallow_relu() -> tuple[nn.Module, Callable[..., Tensor], list[Any]]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(1, 20), nn.ReLU(), nn.Linear(20, 1)).to(DTYPE)
    x = torch.rand(64, 1, dtype=DTYPE)
    y = x**2 + 2 * x
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(200):
        opt.zero_grad()
        mse(model, (x, y)).backward()
        opt.step()
    model.zero_grad(set_to_none=True)
    return model, mse, [(x, y)]


def mlp() -> tuple[nn.Module, Callable[..., Tensor], list[Any]]:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10)
    ).to(DTYPE)
    # Synthetic, learnable: labels from a random linear teacher; a few SGD steps off initialization.
    x = torch.randn(512, 784, dtype=DTYPE)
    y = (x @ torch.randn(784, 10, dtype=DTYPE)).argmax(dim=1)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    for _ in range(20):
        opt.zero_grad()
        ce(model, (x, y)).backward()
        opt.step()
    model.zero_grad(set_to_none=True)
    return model, ce, [(x, y)]


def dense_top(model: nn.Module, loss_fn: Callable[..., Tensor], batches: list[Any], k: int) -> Tensor:
    params = [p for p in model.parameters()]
    names = [n for n, _ in model.named_parameters()]
    flat = torch.cat([p.detach().reshape(-1) for p in params])

    def f(v: Tensor) -> Tensor:
        tensors, off = {}, 0
        for n, p in zip(names, params, strict=True):
            tensors[n] = v[off : off + p.numel()].view_as(p)
            off += p.numel()
        out = torch.func.functional_call(model, tensors, (batches[0][0],))
        return nn.functional.mse_loss(out, batches[0][1])

    return torch.linalg.eigvalsh(torch.autograd.functional.hessian(f, flat)).flip(0)[:k]


def accurate(values: Tensor, truth: Tensor) -> int:
    return int((((values - truth).abs() / truth.abs()) <= REL).sum())


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def product_cost(
    model: nn.Module, loss_fn: Callable[..., Tensor], batches: list[Any], reps: int
) -> dict[str, float]:
    params = [p for p in model.parameters() if p.requires_grad]

    def gradient() -> None:
        torch.autograd.grad(loss_fn(model, batches[0]), params)

    ops = {m: HessianOperator(model, loss_fn, batches, memory=m) for m in ("reuse", "recompute")}
    v = torch.randn(ops["reuse"].num_params, dtype=DTYPE)
    out = {}
    for name, fn in [("gradient", gradient)] + [(m, lambda o=op: o.matvec(v)) for m, op in ops.items()]:
        fn()  # warm-up
        best = min(timed(fn)[1] for _ in range(reps))
        out[name] = best
    return out


def main() -> None:
    torch.set_num_threads(max(1, torch.get_num_threads()))
    rows = []
    validation = ""
    for label, build in [("shallow ReLU 1-20-1", shallow_relu), ("MLP 784-256-256-10", mlp)]:
        model, loss_fn, batches = build()
        n = sum(p.numel() for p in model.parameters())
        if label.startswith("shallow"):
            truth = dense_top(model, loss_fn, batches, 5)
            source = "dense eigvalsh"
            tight = hessian_eigenvalues(model, loss_fn, batches, k=5, tol=1e-8).eigenvalues
            err = float(((tight - truth).abs() / truth.abs()).max())
            validation = f"tight Lanczos (tol=1e-8) vs dense on the shallow net: max rel. error {err:.1e}"
        else:
            res = hessian_eigenvalues(model, loss_fn, batches, k=5, tol=1e-8, max_iter=400)
            truth = res.eigenvalues
            source = f"Lanczos tol=1e-8 ({res.num_products} products, converged={res.converged})"
        costs = product_cost(model, loss_fn, batches, reps=3 if n > 1000 else 20)
        for k in (1, 5):
            for backend in ("lanczos", "pyhessian"):
                start = time.perf_counter()
                res = hessian_eigenvalues(model, loss_fn, batches, k=k, tol=1e-3, backend=backend)
                wall = time.perf_counter() - start
                rows.append(
                    (label, k, backend, res.num_products, wall, accurate(res.eigenvalues, truth[:k]), k)
                )
        print(f"\n{label}: n={n} parameters, truth = {source}")
        print("  top-5 truth: " + ", ".join(f"{t:.6g}" for t in truth.tolist()))
        print(
            f"  one product / one gradient: reuse {costs['reuse'] / costs['gradient']:.2f}x, "
            f"recompute {costs['recompute'] / costs['gradient']:.2f}x "
            f"(gradient {costs['gradient'] * 1e3:.2f} ms)"
        )
    print(f"\n{validation}")
    header = f"{'model':<22}{'k':>3}  {'backend':<10}{'products':>9}{'wall s':>9}{'accurate (1e-3)':>17}"
    print("\n" + header + "\n" + "-" * len(header))
    for label, k, backend, prods, wall, acc, kk in rows:
        print(f"{label:<22}{k:>3}  {backend:<10}{prods:>9}{wall:>9.3f}{f'{acc}/{kk}':>17}")
    print("\nratio pyhessian/ours (products):")
    for i in range(0, len(rows), 2):
        ours, theirs = rows[i], rows[i + 1]
        print(f"  {ours[0]:<22} top-{ours[1]}: {theirs[3] / ours[3]:.1f}x")


if __name__ == "__main__":
    main()
