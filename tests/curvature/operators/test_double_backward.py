"""Double-backward products against a closed form: the gradient graph of 0.5 w^T A w + b^T u has Hessian A."""

from __future__ import annotations

import torch

from lightning_landscape.curvature.operators._double_backward import DoubleBackward

DT = torch.float64


def test_products_of_a_quadratic_batched_and_looped() -> None:
    gen = torch.Generator().manual_seed(0)
    B = torch.randn(5, 5, generator=gen, dtype=DT)
    A = B @ B.T
    w = torch.randn(5, generator=gen, dtype=DT, requires_grad=True)
    unused = torch.ones(2, dtype=DT, requires_grad=True)  # no row in the graph: zero products
    rows = torch.randn(3, 7, generator=gen, dtype=DT)
    want = torch.cat([rows[:, :5] @ A, torch.zeros(3, 2, dtype=DT)], dim=1)
    for batched in (True, False):
        products = DoubleBackward([w, unused], batched=batched)
        grads = list(torch.autograd.grad(0.5 * w @ A @ w, [w, unused], create_graph=True, allow_unused=True))
        got = products(grads, rows, retain=True)
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(products(grads, rows[:1], retain=False), want[:1], rtol=1e-12, atol=1e-12)
        assert products.batched is batched and products.num_params == 7
