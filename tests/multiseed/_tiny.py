"""Tiny models and data shared by the multi-seed tests, the SIGKILL subprocess and the benchmark."""

from __future__ import annotations

import os
import signal
from typing import Any

import torch
from lightning.pytorch import Callback, LightningDataModule, LightningModule, Trainer
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset
from typing_extensions import override


def make_data(n: int, seed: int) -> TensorDataset:
    # Its own generator: the data stay the same whatever the global seed.
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, generator=g) * 4 - 2
    y = torch.sin(2 * x) + 0.1 * torch.randn(n, 1, generator=g)
    return TensorDataset(x, y)


def loaders(n_train: int = 64, n_val: int = 32, batch_size: int = 16) -> tuple[DataLoader, DataLoader]:
    return (
        DataLoader(make_data(n_train, 100), batch_size=batch_size, shuffle=True),
        DataLoader(make_data(n_val, 200), batch_size=batch_size),
    )


class TinyData(LightningDataModule):
    def __init__(self, n_train: int = 64, n_val: int = 32, batch_size: int = 16) -> None:
        super().__init__()
        self.save_hyperparameters()

    @override
    def train_dataloader(self) -> DataLoader:
        return loaders(self.hparams.n_train, self.hparams.n_val, self.hparams.batch_size)[0]

    @override
    def val_dataloader(self) -> DataLoader:
        return loaders(self.hparams.n_train, self.hparams.n_val, self.hparams.batch_size)[1]


class TinyRegressor(LightningModule):
    """A 1-hidden-1 MLP; ``fail_on_seed`` raises in that seed's training, ``nan`` logs a NaN loss."""

    def __init__(
        self,
        hidden: int = 16,
        lr: float = 0.05,
        fail_on_seed: int = -1,
        nan: bool = False,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.lr, self.fail_on_seed, self.nan = lr, fail_on_seed, nan
        self.net = nn.Sequential(nn.Linear(1, hidden), nn.Tanh(), nn.Dropout(dropout), nn.Linear(hidden, 1))
        self.seed = int(os.environ.get("PL_GLOBAL_SEED", "-1"))

    def loss_on_batch(self, net: Any, batch: Any) -> Tensor:
        x, y = batch
        loss = nn.functional.mse_loss(net(x), y)
        return loss * float("nan") if self.nan else loss

    @override
    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        if self.seed == self.fail_on_seed:
            raise RuntimeError(f"seed {self.seed} is broken on purpose")
        loss = self.loss_on_batch(self.net, batch)
        self.log("train_loss", loss)
        return loss

    @override
    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self.log("val_loss", self.loss_on_batch(self.net, batch))

    @override
    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.lr)


def val_loss(model: LightningModule, loader: DataLoader) -> float:
    """The mean validation loss, recomputed outside Lightning (batch-size weighted, as Lightning logs it)."""
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for x, y in loader:
            total += float(nn.functional.mse_loss(model.net(x), y)) * len(x)
            count += len(x)
    return total / count


class KillAt(Callback):
    """SIGKILLs this process at a global step of one seed: the crash a resume must survive."""

    def __init__(self, seed: int, step: int) -> None:
        self.seed, self.step = seed, step

    @override
    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args: Any) -> None:
        if int(os.environ.get("PL_GLOBAL_SEED", "-1")) == self.seed and trainer.global_step >= self.step:
            os.kill(os.getpid(), signal.SIGKILL)


class RecordStart(Callback):
    """Appends ``<seed> <global_step at fit start>`` to a file: evidence of where each attempt began."""

    def __init__(self, path: str) -> None:
        self.path = path

    @override
    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        with open(self.path, "a") as f:
            f.write(f"{os.environ.get('PL_GLOBAL_SEED')} {trainer.global_step}\n")


QUIET: dict[str, Any] = {"enable_progress_bar": False, "enable_model_summary": False}


class DieOnceInWorker(Callback):
    """SIGKILLs a worker process (never the process that built it) the first time it trains ``seed``."""

    def __init__(self, seed: int, marker: str) -> None:
        self.seed, self.marker, self.driver_pid = seed, marker, os.getpid()

    @override
    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args: Any) -> None:
        if os.getpid() == self.driver_pid or int(os.environ.get("PL_GLOBAL_SEED", "-1")) != self.seed:
            return
        if not os.path.exists(self.marker):
            open(self.marker, "w").close()
            os.kill(os.getpid(), signal.SIGKILL)
