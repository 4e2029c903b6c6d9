"""Batch sharpness against a dense float64 Hessian per batch, and the model left as found."""

from __future__ import annotations

import torch
from torch import nn

from lightning_landscape.curvature.batch_sharpness import batch_sharpness
from tests._shared import assert_unchanged, mse_loss, snapshot


def _dense(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> float:
    params = list(model.parameters())
    shapes = [p.shape for p in params]
    flat = torch.cat([p.detach().reshape(-1) for p in params]).requires_grad_(True)

    def loss_of(theta: torch.Tensor) -> torch.Tensor:
        chunks, start = [], 0
        for shape in shapes:
            n = int(torch.Size(shape).numel())
            chunks.append(theta[start : start + n].reshape(shape))
            start += n
        names = [name for name, _ in model.named_parameters()]
        out = torch.func.functional_call(model, dict(zip(names, chunks, strict=True)), (batch[0],))
        return nn.functional.mse_loss(out, batch[1])

    g = torch.autograd.grad(loss_of(flat), flat, create_graph=True)[0]
    rows = [torch.autograd.grad(g[i], flat, retain_graph=True)[0] for i in range(flat.numel())]
    hessian = torch.stack(rows)
    g = g.detach()
    return float(g @ hessian @ g / (g @ g))


def test_mean_of_per_batch_rayleigh_quotients_equals_the_dense_one() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 1)).double()
    batches = [
        (torch.randn(8, 3, dtype=torch.float64), torch.randn(8, 1, dtype=torch.float64)) for _ in range(3)
    ]
    want = sum(_dense(model, b) for b in batches) / len(batches)
    before = snapshot(model)
    got = batch_sharpness(model, mse_loss, batches)
    assert abs(got - want) <= 1e-10 * max(1.0, abs(want))
    assert_unchanged(model, before)
