"""An MLP on scikit-learn's handwritten digits: the landscape tools on a real (shipped) data set.

``load_digits`` ships 1797 8x8 images of the digits 0-9 inside scikit-learn, so this example needs
no download. Run it from plain Python::

    python examples/digits.py --max_epochs 5

or from the command line with the callbacks configured in YAML::

    lightning-landscape fit --config configs/digits.yaml
"""

from __future__ import annotations

import argparse
import itertools
import math
from collections.abc import Callable
from typing import Any, Literal

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset
from torchmetrics.classification import MulticlassAccuracy
from typing_extensions import override

NUM_FEATURES = 64
NUM_CLASSES = 10


class DigitsDataModule(pl.LightningDataModule):
    """scikit-learn's ``load_digits`` split once, with a seeded permutation, into train and validation.

    Pixels are scaled from ``0..16`` to ``[0, 1]``.

    Args:
        batch_size: training batch size (validation uses batches of the same size).
        val_fraction: share of the 1797 images held out for validation, in ``(0, 1)``.
        seed: seed of the train/validation split.

    Raises:
        ValueError: for a non-positive ``batch_size`` or a ``val_fraction`` outside ``(0, 1)``.

    Example::

        dm = DigitsDataModule(batch_size=64)
        pl.Trainer(max_epochs=5).fit(DigitsMLP(), datamodule=dm)
    """

    def __init__(self, batch_size: int = 64, val_fraction: float = 0.2, seed: int = 0) -> None:
        super().__init__()
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"`batch_size` must be a positive int, got {batch_size!r}.")
        if not (isinstance(val_fraction, (int, float)) and 0.0 < val_fraction < 1.0):
            raise ValueError(f"`val_fraction` must be a float in (0, 1), got {val_fraction!r}.")
        self.save_hyperparameters()
        self.batch_size = batch_size
        self.val_fraction = val_fraction
        self.seed = seed
        self._train: TensorDataset | None = None
        self._val: TensorDataset | None = None

    @override
    def setup(self, stage: str) -> None:
        if self._train is not None:
            return
        from sklearn.datasets import load_digits

        x_np, y_np = load_digits(return_X_y=True)
        x = torch.as_tensor(x_np, dtype=torch.float32) / 16.0
        y = torch.as_tensor(y_np, dtype=torch.long)
        perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(self.seed))
        n_val = max(1, round(self.val_fraction * len(y)))
        val_idx, train_idx = perm[:n_val], perm[n_val:]
        self._train = TensorDataset(x[train_idx], y[train_idx])
        self._val = TensorDataset(x[val_idx], y[val_idx])

    @override
    def train_dataloader(self) -> DataLoader:
        assert self._train is not None, "call setup() first"
        # A private generator: shuffling follows `seed_everything` without touching the global stream.
        gen = torch.Generator().manual_seed(int(torch.initial_seed()) % 2**63)
        return DataLoader(self._train, batch_size=self.batch_size, shuffle=True, generator=gen)

    @override
    def val_dataloader(self) -> DataLoader:
        assert self._val is not None, "call setup() first"
        return DataLoader(self._val, batch_size=self.batch_size)

    @override
    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()


class DigitsMLP(pl.LightningModule):
    """A ReLU MLP ``(64, *hidden, 10)`` trained by cross-entropy; logs ``val_acc`` via torchmetrics.

    Args:
        hidden: widths of the hidden layers.
        optimizer: ``"adam"`` or ``"sgd"``.
        lr: learning rate.
        weight_decay: L2 penalty passed to the optimizer.

    Raises:
        ValueError: for an empty or non-positive ``hidden``, an unknown ``optimizer`` or a non-positive
            ``lr``.

    Example::

        model = DigitsMLP(hidden=[64], lr=1e-3)
    """

    def __init__(
        self,
        hidden: list[int] | None = None,
        optimizer: Literal["adam", "sgd"] = "adam",
        lr: float = 1e-3,
        weight_decay: float = 0.0,
    ) -> None:
        super().__init__()
        hidden = [64] if hidden is None else list(hidden)
        if not hidden or any(isinstance(h, bool) or not isinstance(h, int) or h < 1 for h in hidden):
            raise ValueError(f"`hidden` must be a non-empty list of positive ints, got {hidden!r}.")
        if optimizer not in ("adam", "sgd"):
            raise ValueError(f"`optimizer` must be 'adam' or 'sgd', got {optimizer!r}.")
        if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
            raise ValueError(f"`lr` must be a positive finite float, got {lr!r}.")
        self.save_hyperparameters()
        sizes = [NUM_FEATURES, *hidden, NUM_CLASSES]
        layers: list[nn.Module] = []
        for i, (fan_in, fan_out) in enumerate(itertools.pairwise(sizes)):
            layers.append(nn.Linear(fan_in, fan_out))
            if i < len(sizes) - 2:
                layers.append(nn.ReLU())
        self.net = nn.Sequential(*layers)
        self.val_acc = MulticlassAccuracy(num_classes=NUM_CLASSES, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes=NUM_CLASSES, average="micro")

    @override
    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def loss_on_batch(self, net: Callable[..., Tensor], batch: Any) -> Tensor:
        """Cross-entropy of ``net`` on one ``(x, y)`` batch."""
        x, y = batch
        return F.cross_entropy(net(x), y)

    @override
    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        loss = self.loss_on_batch(self.net, batch)
        # on_epoch too: the epoch mean in the progress bar and the loggers (RiskGapMonitor takes its own
        # training risk at the weights each validation ran at).
        self.log("train_loss", loss, prog_bar=True, on_step=True, on_epoch=True)
        return loss

    @override
    def validation_step(self, batch: Any, batch_idx: int) -> Tensor:
        x, y = batch
        logits = self.net(x)
        loss = F.cross_entropy(logits, y)
        self.val_acc(logits, y)
        self.log("val_loss", loss, prog_bar=True)
        self.log("val_acc", self.val_acc, prog_bar=True)
        return loss

    @override
    def test_step(self, batch: Any, batch_idx: int) -> Tensor:
        x, y = batch
        logits = self.net(x)
        loss = F.cross_entropy(logits, y)
        self.test_acc(logits, y)
        self.log("test_loss", loss)
        self.log("test_acc", self.test_acc)
        return loss

    @override
    def configure_optimizers(self) -> torch.optim.Optimizer:
        hp = self.hparams
        if hp["optimizer"] == "sgd":
            return torch.optim.SGD(self.parameters(), lr=hp["lr"], weight_decay=hp["weight_decay"])
        return torch.optim.Adam(self.parameters(), lr=hp["lr"], weight_decay=hp["weight_decay"])


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Train one MLP from plain Python and print its validation loss and accuracy."""
    parser = argparse.ArgumentParser(description="MLP on scikit-learn's digits")
    parser.add_argument("--hidden", type=int, nargs="+", default=[64])
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--max_epochs", type=int, default=10)
    parser.add_argument("--max_steps", type=int, default=-1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--root_dir", default="runs/digits")
    args = parser.parse_args(argv)

    pl.seed_everything(args.seed, workers=True, verbose=False)
    trainer = pl.Trainer(
        max_epochs=args.max_epochs,
        max_steps=args.max_steps,
        default_root_dir=args.root_dir,
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=5,
    )
    model = DigitsMLP(hidden=args.hidden, lr=args.lr)
    trainer.fit(model, datamodule=DigitsDataModule())
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k in ("val_loss", "val_acc")}
    print(f"seed {args.seed}: val_loss {metrics['val_loss']:.4f}, val_acc {metrics['val_acc']:.4f}")
    return metrics


if __name__ == "__main__":
    main()
