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
    """A 1-hidden-1 MLP; ``fail_on_seed`` raises in that seed's training, ``nan`` logs a NaN loss (from
    epoch ``nan_from_epoch`` on, if set)."""

    def __init__(
        self,
        hidden: int = 16,
        lr: float = 0.05,
        fail_on_seed: int = -1,
        nan: bool = False,
        dropout: float = 0.0,
        nan_from_epoch: int = -1,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.lr, self.fail_on_seed, self.nan = lr, fail_on_seed, nan
        self.nan_from_epoch = nan_from_epoch
        self.net = nn.Sequential(nn.Linear(1, hidden), nn.Tanh(), nn.Dropout(dropout), nn.Linear(hidden, 1))
        self.seed = int(os.environ.get("PL_GLOBAL_SEED", "-1"))

    @override
    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def loss_on_batch(self, net: Any, batch: Any) -> Tensor:
        x, y = batch
        loss = nn.functional.mse_loss(net(x), y)
        diverged = 0 <= self.nan_from_epoch <= (self.current_epoch if self._trainer is not None else -1)
        return loss * float("nan") if self.nan or diverged else loss

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
    """Signals this process (SIGKILL by default) at a global step of one seed: a crash to survive."""

    def __init__(self, seed: int, step: int, signum: int = signal.SIGKILL) -> None:
        self.seed, self.step, self.signum, self.sent = seed, step, signum, False

    @override
    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args: Any) -> None:
        seed = int(os.environ.get("PL_GLOBAL_SEED", "-1"))
        if seed == self.seed and trainer.global_step >= self.step and not self.sent:
            self.sent = True
            os.kill(os.getpid(), self.signum)


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
    """SIGKILLs a worker process (never the process that built it) the first time it trains ``seed``,
    at global step ``step`` or later."""

    def __init__(self, seed: int, marker: str, step: int = 0) -> None:
        self.seed, self.marker, self.step, self.driver_pid = seed, marker, step, os.getpid()

    @override
    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args: Any) -> None:
        if os.getpid() == self.driver_pid or int(os.environ.get("PL_GLOBAL_SEED", "-1")) != self.seed:
            return
        if trainer.global_step < self.step:
            return
        if not os.path.exists(self.marker):
            open(self.marker, "w").close()
            os.kill(os.getpid(), signal.SIGKILL)


def fit(root: Any, seeds: Any = 3, model: Any = TinyRegressor, epochs: int = 3, **kwargs: Any) -> Any:
    """A MultiSeedTrainer run on the tiny data: ``trainer={...}`` adds Trainer arguments."""
    from lightning_landscape.multiseed import MultiSeedTrainer

    trainer_kwargs = {"max_epochs": epochs, **QUIET, **kwargs.pop("trainer", {})}
    train, val = loaders()
    data = kwargs.pop("datamodule", None)
    loaders_kw = {} if data is not None else {"train_dataloaders": train, "val_dataloaders": val}
    trainer = MultiSeedTrainer(seeds=seeds, root_dir=root, **kwargs, **trainer_kwargs)
    return trainer.fit(model, datamodule=data, **loaders_kw)
