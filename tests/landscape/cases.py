"""Models and data for the landscape tests: float64, tiny, with closed forms where there are any."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from lightning_landscape.landscape.directions import named_trainable
from tests._shared import mse_loss
from tests.curvature.cases import Case

DT = torch.float64


def ce(model: nn.Module, batch: tuple[Tensor, Tensor]) -> Tensor:
    x, y = batch
    return F.cross_entropy(model(x), y)


def linear_case(seed: int = 0) -> Case:
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = nn.Linear(3, 2).to(DT)
    batches = [
        (torch.randn(7, 3, generator=gen, dtype=DT), torch.randn(7, 2, generator=gen, dtype=DT)),
        (torch.randn(4, 3, generator=gen, dtype=DT), torch.randn(4, 2, generator=gen, dtype=DT)),
    ]
    return Case("linear", model, mse_loss, batches)


def mean_loss(model: nn.Module, loss_fn: Any, batches: list[Any]) -> Tensor:
    sizes = [b[0].shape[0] for b in batches]
    return sum(loss_fn(model, b) * n for b, n in zip(batches, sizes, strict=True)) / sum(sizes)


def gradient(case: Case) -> Tensor:
    params = list(named_trainable(case.model).values())
    grads = torch.autograd.grad(mean_loss(case.model, case.loss_fn, case.batches), params)
    return torch.cat([g.reshape(-1) for g in grads])


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class ConvNet(nn.Module):
    """Conv first (the cached-products path of conv), BatchNorm, dropout: exercises modes and buffers."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)
        self.drop = nn.Dropout(0.3)
        self.fc = nn.Linear(3 * 4 * 4, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.drop(torch.relu(self.bn(self.conv(x)))).flatten(1))


def conv_case(seed: int = 0) -> Case:
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = ConvNet().to(DT)
    with torch.no_grad():  # BatchNorm statistics away from their defaults
        model.bn.running_mean.uniform_(-0.5, 0.5)
        model.bn.running_var.uniform_(0.5, 1.5)
    x = torch.randn(10, 1, 4, 4, generator=gen, dtype=DT)
    y = torch.randint(0, 3, (10,), generator=gen)
    return Case("conv", model, ce, [(x[:6], y[:6]), (x[6:], y[6:])])


class DoubleWell(nn.Module):
    def __init__(self, w: tuple[float, float]) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor(w, dtype=DT))

    def forward(self, x: Tensor) -> Tensor:
        return (self.w[0] ** 2 - 1) ** 2 + (self.w[1] - 0.3) ** 2 + 0 * x.sum()
