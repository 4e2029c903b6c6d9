"""Models, data and the plain single-seed runs the vectorized tests compare against (float64).

Two kinds of member: a bare ``nn.Module`` (:class:`MLP`) for :class:`SeedEnsemble`, and a qualifying
LightningModule (:class:`PlainRegressor`) for the vectorized executor, each with its plain reference run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule, Trainer, seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_landscape.multiseed.build import model_builder
from lightning_landscape.multiseed.executors import SeedJob
from tests.multiseed._tiny import QUIET as EXECUTOR_QUIET

SEEDS = [0, 5, 9]


# ---- SeedEnsemble: bare networks against a plain torch loop ------------------------------------------
class MLP(nn.Module):
    def __init__(self, width: int = 5, depth: int = 1) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Linear(1, width), nn.ReLU()]
        for _ in range(depth - 1):
            layers += [nn.Linear(width, width), nn.ReLU()]
        self.body = nn.Sequential(*layers, nn.Linear(width, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def data(n: int = 48) -> TensorDataset:
    g = torch.Generator().manual_seed(1)
    x = torch.rand(n, 1, generator=g, dtype=torch.float64)
    return TensorDataset(x, x**2 + 2 * x)


def single_run(seed: int, loader: Any, epochs: int, opt_name: str, **kw: Any) -> nn.Module:
    """The documented single run: seed_everything, build, then a plain torch loop."""
    seed_everything(seed, workers=True, verbose=False)
    net = MLP(width=5).double()
    if opt_name == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(
            net.parameters(), lr=kw["lr"], momentum=0.9, nesterov=True, weight_decay=1e-3
        )
    else:
        opt = torch.optim.Adam(net.parameters(), lr=kw["lr"], betas=(0.8, 0.99), weight_decay=1e-3)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5) if kw.get("step") else None
    for _ in range(epochs):
        for x, y in loader:
            loss = F.mse_loss(net(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        if sched is not None:
            sched.step()
    return net


def assert_same(a: nn.Module, b: nn.Module, atol: float) -> None:
    """Same parameter names, and every parameter equal to ``atol`` (absolute)."""
    pa, pb = dict(a.named_parameters()), dict(b.named_parameters())
    assert pa.keys() == pb.keys()
    for name in pa:
        torch.testing.assert_close(pa[name].detach(), pb[name].detach(), rtol=0, atol=atol)


# ---- the vectorized executor: a qualifying LightningModule against K Lightning fits --------------------
EXECUTOR_SEEDS = [3, 11, 42]
EPOCHS = 4


class PlainRegressor(LightningModule):
    """Qualifies: `net` holds all parameters and both steps use `loss_on_batch`."""

    def __init__(self, hidden: int = 6, lr: float = 0.08, optimizer: str = "adam") -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Linear(2, hidden), nn.Tanh(), nn.Linear(hidden, 1))

    def loss_on_batch(self, net: Any, batch: Any) -> torch.Tensor:
        x, y = batch
        return F.mse_loss(net(x), y)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        loss = self.loss_on_batch(self.net, batch)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self.log("val_loss", self.loss_on_batch(self.net, batch))

    def configure_optimizers(self) -> Any:
        if self.hparams.optimizer == "lbfgs":
            return torch.optim.LBFGS(self.parameters(), lr=self.hparams.lr)
        if self.hparams.optimizer == "sgd":
            return torch.optim.SGD(self.parameters(), lr=self.hparams.lr, momentum=0.9)
        opt = torch.optim.Adam(self.parameters(), lr=self.hparams.lr)
        return {
            "optimizer": opt,
            "lr_scheduler": torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5),
        }


def loaders() -> tuple[DataLoader, DataLoader]:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(40, 2, generator=g, dtype=torch.float64)
    y = (x**2).sum(1, keepdim=True) + 2 * x[:, :1]
    # 20 validation samples in batches of 8: the uneven last batch checks the size-weighted epoch mean.
    return DataLoader(TensorDataset(x[:20], y[:20]), batch_size=8), DataLoader(
        TensorDataset(x[20:], y[20:]), batch_size=8
    )


def sequential(seed: int, tmp: Path, **hparams: Any) -> tuple[float, dict[str, torch.Tensor]]:
    """One plain Lightning fit of seed ``seed``: its best val_loss and the weights of its best checkpoint."""
    train, val = loaders()
    seed_everything(seed, workers=True, verbose=False)
    model = PlainRegressor(**hparams)
    ckpt = ModelCheckpoint(dirpath=tmp / f"seq_{seed}", monitor="val_loss", mode="min")
    trainer = Trainer(
        max_epochs=EPOCHS,
        precision="64-true",
        logger=False,
        callbacks=[ckpt],
        num_sanity_val_steps=0,
        **EXECUTOR_QUIET,
    )
    trainer.fit(model, train, val)
    state = torch.load(ckpt.best_model_path, weights_only=True)["state_dict"]
    return float(ckpt.best_model_score), state  # type: ignore[arg-type]


def job(root: Path, model: Any, trainer_kwargs: dict[str, Any], mode: str = "min", **hparams: Any) -> SeedJob:
    train, val = loaders()
    return SeedJob(
        root_dir=str(root),
        monitor="val_loss",
        mode=mode,
        trainer_kwargs=trainer_kwargs,
        model=model_builder(model, hparams or None),
        train_dataloaders=train,
        val_dataloaders=val,
    )
