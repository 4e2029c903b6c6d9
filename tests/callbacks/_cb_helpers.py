"""Importable pieces for the callback tests (loss_fn import paths, subprocess scripts)."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset


class TinyRegression(pl.LightningModule):
    """A 3-4-1 tanh MLP on a regression task: 21 parameters, small enough for dense Hessians."""

    def __init__(
        self, d_in: int = 3, hidden: int = 4, dropout: float = 0.0, lr: float = 0.05, double: bool = True
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(
            nn.Linear(d_in, hidden), nn.Tanh(), nn.Dropout(dropout), nn.Linear(hidden, 1)
        )
        if double:
            self.net.double()
        self.lr = lr

    def loss_on(self, batch: Any) -> Tensor:
        x, y = batch
        return F.mse_loss(self.net(x), y)

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        loss = self.loss_on(batch)
        self.log("train_loss", loss, on_step=True, on_epoch=True)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self.log("val_loss", self.loss_on(batch))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.lr)


def make_data(n: int = 64, d_in: int = 3, seed: int = 0, double: bool = True) -> tuple[Tensor, Tensor]:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d_in, generator=gen)
    y = torch.sin(x.sum(dim=1, keepdim=True)) + 0.1 * torch.randn(n, 1, generator=gen)
    dtype = torch.float64 if double else torch.float32
    return x.to(dtype), y.to(dtype)


def make_loader(
    n: int = 64, batch_size: int = 8, shuffle: bool = False, seed: int = 0, **kwargs: Any
) -> DataLoader:
    x, y = make_data(n, seed=seed)
    return DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=shuffle, **kwargs)


def mse_loss_fn(model: nn.Module, batch: Any) -> Tensor:
    """A user ``loss_fn(model, batch)`` for the import-path option."""
    x, y = batch
    return F.mse_loss(model.net(x), y)  # type: ignore[operator]


NAN_AT_STEP = 4


def nan_at_step_loss(model: nn.Module, batch: Any) -> Tensor:
    """The MSE, except NaN while the trainer is at global step ``NAN_AT_STEP``: one probe must be skipped."""
    loss = mse_loss_fn(model, batch)
    if model.trainer.global_step == NAN_AT_STEP:  # type: ignore[union-attr]
        return loss * float("nan")
    return loss


class TinyData(pl.LightningDataModule):
    """The regression data as a datamodule, for LightningCLI."""

    def __init__(self, n: int = 64, batch_size: int = 8) -> None:
        super().__init__()
        self.n = n
        self.batch_size = batch_size

    def train_dataloader(self) -> DataLoader:
        return make_loader(n=self.n, batch_size=self.batch_size)

    def val_dataloader(self) -> DataLoader:
        return make_loader(n=16, batch_size=self.batch_size, seed=1)
