"""The top Hessian eigenvalues of a small net by each backend, with the products each spent.

A shallow ReLU net (1-20-1) fit to x^2 + 2x on x ~ U[0, 1] for 200 Adam steps, in float64. Its Hessian
(61 x 61) is small enough to build densely, which gives the truth to compare against. Runs in seconds:

    python examples/curvature_demo.py
"""

from __future__ import annotations

import time

import torch
from torch import Tensor, nn

from lightning_landscape.curvature import (
    HessianOperator,
    hessian_eigenvalues,
    hessian_trace,
    spectral_density,
)


def loss_fn(model: nn.Module, batch: tuple[Tensor, Tensor]) -> Tensor:
    x, y = batch
    return nn.functional.mse_loss(model(x), y)


def main() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(1, 20), nn.ReLU(), nn.Linear(20, 1)).double()
    x = torch.rand(256, 1, dtype=torch.float64)
    batches = [(xb, xb**2 + 2 * xb) for xb in x.split(64)]
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(200):
        opt.zero_grad()
        sum(loss_fn(model, b) for b in batches).backward()  # type: ignore[union-attr]
        opt.step()
    model.zero_grad(set_to_none=True)

    op = HessianOperator(model, loss_fn, batches)
    dense = torch.linalg.eigvalsh(op.dense())
    k = 3
    print(f"shallow ReLU net, {op.num_params} parameters, {len(batches)} batches of 64")
    print(f"dense truth   top-{k}: " + ", ".join(f"{v:.6f}" for v in dense.flip(0)[:k].tolist()))
    print(f"              smallest: {float(dense[0]):.6f}\n")
    print(f"{'backend':<10}{'top-3 eigenvalues':<38}{'products':>9}{'converged':>10}{'seconds':>9}")
    for backend, tol in (("lanczos", 1e-6), ("power", 1e-4), ("pyhessian", 1e-3)):
        start = time.perf_counter()
        res = hessian_eigenvalues(model, loss_fn, batches, k=k, tol=tol, backend=backend)  # type: ignore[arg-type]
        wall = time.perf_counter() - start
        values = ", ".join(f"{v:.6f}" for v in res.eigenvalues.tolist())
        print(f"{backend:<10}{values:<38}{res.num_products:>9}{res.converged!s:>10}{wall:>9.2f}")

    low = hessian_eigenvalues(model, loss_fn, batches, which="smallest", tol=1e-6)
    print(f"\nsmallest eigenvalue (lanczos): {float(low.eigenvalues[0]):.6f} in {low.num_products} products")
    tr = hessian_trace(model, loss_fn, batches, num_samples=100)
    print(
        f"trace (Hutchinson, 100 probes): {tr.trace:.4f} +- {tr.std_error:.4f}"
        f"  (dense {float(dense.sum()):.4f})"
    )
    sd = spectral_density(model, loss_fn, batches, num_iter=30, num_runs=5)
    grid, density = sd.on_grid()
    print(
        "spectral density (SLQ, 5 runs x 30 steps): "
        f"integrates to {float(torch.trapezoid(density, grid)):.4f}, "
        f"mean eigenvalue {sd.moment(1):.4f} (dense {float(dense.mean()):.4f})"
    )


if __name__ == "__main__":
    main()
