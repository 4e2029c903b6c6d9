"""Linear regression with Gaussian inputs and noise, where the gradient noise has closed forms.

For ``L(w) = E 0.5 (x'w - y)^2``, ``x ~ N(0, I_d)``, ``y = x'w* + sigma eps``, the per-sample gradient is
``g = x (x'e - sigma eps)`` with ``e = w - w*``, so

* ``G = E g = e``, ``|G|^2 = |e|^2``;
* ``E g g' = E x x' (x'e)^2 + sigma^2 I = |e|^2 I + 2 e e' + sigma^2 I`` (Isserlis), hence
  ``tr(Sigma) = (d + 1) |e|^2 + d sigma^2``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, IterableDataset, TensorDataset

D = 4
SIGMA = 1.0
W_STAR = torch.zeros(D, dtype=torch.float64)


def closed_form(w: Tensor) -> tuple[float, float]:
    """``(|G|^2, tr(Sigma))`` at ``w``."""
    e2 = float(((w.detach().double() - W_STAR) ** 2).sum())
    return e2, (D + 1) * e2 + D * SIGMA**2


class LinReg(pl.LightningModule):
    def __init__(self, lr: float = 0.002, w0: float = 1.0, dropout: float = 0.0) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.full((D,), w0, dtype=torch.float64))
        self.drop = nn.Dropout(dropout)
        self.lr = lr

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        x, y = batch
        loss = 0.5 * ((self.drop(x) @ self.w - y) ** 2).mean()
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.lr)


class Stream(IterableDataset):
    """Fresh samples forever: every batch is an independent draw from the population."""

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        gen = torch.Generator().manual_seed(self.seed)
        while True:
            x = torch.randn(1024, D, generator=gen, dtype=torch.float64)
            y = x @ W_STAR + SIGMA * torch.randn(1024, generator=gen, dtype=torch.float64)
            yield from zip(x, y, strict=True)


def finite_data(n: int = 64, seed: int = 0) -> tuple[Tensor, Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, D, generator=gen, dtype=torch.float64)
    y = x @ W_STAR + SIGMA * torch.randn(n, generator=gen, dtype=torch.float64)
    return x, y


def interleaved_loader(n: int = 64, batch_size: int = 8) -> DataLoader:
    """One process's view of what 2 DDP ranks with a non-shuffling DistributedSampler see together: batch k
    holds rank 0's samples (8k, 8k+2, ...) first, then rank 1's (8k+1, 8k+3, ...)."""
    x, y = finite_data(n)
    order = torch.cat(
        [
            torch.cat([torch.arange(s, s + batch_size, 2), torch.arange(s + 1, s + batch_size, 2)])
            for s in range(0, n, batch_size)
        ]
    )
    return DataLoader(TensorDataset(x[order], y[order]), batch_size=batch_size)
