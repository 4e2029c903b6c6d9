"""Third-party-shaped LightningModules the callbacks must handle as they are (the zoo of issue 12).

Each zoo entry builds a fresh module and its (unshuffled) train loader and names an independent loss
``oracle_loss(model, batch)`` for :mod:`tests.oracle` (``None`` where the dense Hessian is too big to be
cheap). Every module is tiny so that a fit takes well under a second. The Hugging Face GPT-2 and BERT
(:mod:`tests.callbacks.zoo_hf`) need ``transformers``; their tests skip without it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.demos.boring_classes import BoringModel, RandomDataset
from lightning.pytorch.demos.transformer import LightningTransformer, Transformer
from torch import Tensor, nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, Dataset, TensorDataset

from tests.callbacks.zoo_hf import TinyBert, TinyGPT2, classify_loader, hf_loss, lm_loader


class TinyTransformer(LightningTransformer):
    """Lightning's demo Transformer (encoder-decoder, dropout, layer norm), tiny, on synthetic tokens.

    Its ``prepare_data`` downloads WikiText2: overridden, the tokens are drawn here.
    """

    def __init__(self, vocab_size: int = 5) -> None:
        super().__init__(vocab_size=vocab_size)
        self.model = Transformer(vocab_size=vocab_size, ninp=4, nhead=2, nhid=4, nlayers=1, dropout=0.1)

    def prepare_data(self) -> None:
        return None

    def train_dataloader(self) -> DataLoader:
        gen = torch.Generator().manual_seed(0)
        tokens = torch.randint(0, self.model.vocab_size, (16, 6), generator=gen)
        return DataLoader(TensorDataset(tokens[:, :-1], tokens[:, 1:]), batch_size=4)


class BatchNormDropoutCNN(pl.LightningModule):
    """Conv-BatchNorm-ReLU-Dropout-Linear on 4x4 images with dict batches ``{"x", "y"}``: 42 parameters."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.ReLU(), nn.Dropout(0.3), nn.Flatten(), nn.Linear(8, 2)
        ).double()

    def loss_on(self, batch: dict[str, Tensor]) -> Tensor:
        return F.cross_entropy(self.net(batch["x"]), batch["y"])

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        loss = self.loss_on(batch)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)


class DictDataset(Dataset):
    def __init__(self, n: int = 24) -> None:
        gen = torch.Generator().manual_seed(0)
        self.x = torch.randn(n, 1, 4, 4, generator=gen, dtype=torch.float64)
        self.y = torch.randint(0, 2, (n,), generator=gen)

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        return {"x": self.x[i], "y": self.y[i]}


class TinyGAN(pl.LightningModule):
    """Two optimizers under manual optimization, as in Lightning's GAN example (toggle, manual_backward)."""

    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.generator = nn.Sequential(nn.Linear(2, 4), nn.Tanh(), nn.Linear(4, 2)).double()
        self.discriminator = nn.Sequential(nn.Linear(2, 4), nn.Tanh(), nn.Linear(4, 1)).double()

    @staticmethod
    def noise(real: Tensor) -> Tensor:
        # Deterministic in the batch, so the probed loss is a fixed function of the weights.
        return torch.sin(3 * real.flip(1))

    def d_loss(self, batch: Any) -> Tensor:
        (real,) = batch
        fake = self.generator(self.noise(real))
        logits = torch.cat([self.discriminator(real), self.discriminator(fake)])
        labels = torch.cat([torch.ones(len(real), 1), torch.zeros(len(real), 1)]).to(logits)
        return F.binary_cross_entropy_with_logits(logits, labels)

    def g_loss(self, batch: Any) -> Tensor:
        (real,) = batch
        logits = self.discriminator(self.generator(self.noise(real)))
        return F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits))

    def training_step(self, batch: Any, batch_idx: int) -> None:
        g_opt, d_opt = self.optimizers()  # type: ignore[misc]
        self.toggle_optimizer(d_opt)
        d_loss = self.d_loss(batch)
        d_opt.zero_grad()
        self.manual_backward(d_loss)
        d_opt.step()
        self.untoggle_optimizer(d_opt)
        self.toggle_optimizer(g_opt)
        g_loss = self.g_loss(batch)
        g_opt.zero_grad()
        self.manual_backward(g_loss)
        g_opt.step()
        self.untoggle_optimizer(g_opt)
        self.log_dict({"d_loss": d_loss, "g_loss": g_loss})

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        return [
            torch.optim.Adam(self.generator.parameters(), lr=1e-2),
            torch.optim.Adam(self.discriminator.parameters(), lr=1e-2),
        ]


def gan_d_loss(model: nn.Module, batch: Any) -> Tensor:
    """The GAN's discriminator loss, the way a user would probe it."""
    return model.d_loss(batch)  # type: ignore[operator]


def gan_d_loss_after_training_step(model: nn.Module, batch: Any) -> Tensor:
    """A hostile loss_fn: it runs the whole training_step (backward + both optimizer steps) first."""
    model.training_step(batch, 0)  # type: ignore[operator]
    return model.d_loss(batch)  # type: ignore[operator]


class CompiledNet(pl.LightningModule):
    """``self.net = torch.compile(net)``: parameters live under ``net._orig_mod``."""

    def __init__(self) -> None:
        super().__init__()
        net = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1)).double()
        # aot_eager: cheap to compile, and it has aot_autograd's missing double backward.
        self.net = torch.compile(net, backend="aot_eager")

    def loss_on(self, batch: Any) -> Tensor:
        x, y = batch
        return F.mse_loss(self.net(x), y)

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        loss = self.loss_on(batch)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.05)


class FrozenAndUnused(pl.LightningModule):
    """A frozen embedding layer in use, and a trainable head that the loss never touches."""

    def __init__(self) -> None:
        super().__init__()
        self.frozen = nn.Linear(3, 3).double().requires_grad_(False)
        self.net = nn.Sequential(nn.Linear(3, 3), nn.Tanh(), nn.Linear(3, 1)).double()
        self.unused = nn.Linear(2, 1).double()

    def loss_on(self, batch: Any) -> Tensor:
        x, y = batch
        return F.mse_loss(self.net(self.frozen(x)), y)

    def training_step(self, batch: Any, batch_idx: int) -> dict[str, Tensor]:
        loss = self.loss_on(batch)
        self.log("train_loss", loss, on_epoch=True)
        return {"loss": loss}

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=1e-2)


def regression_loader(n: int = 32, batch_size: int = 8) -> DataLoader:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, 3, generator=gen, dtype=torch.float64)
    y = torch.sin(x.sum(1, keepdim=True))
    return DataLoader(TensorDataset(x, y), batch_size=batch_size)


def gan_loader(n: int = 32, batch_size: int = 8) -> DataLoader:
    gen = torch.Generator().manual_seed(0)
    real = torch.randn(n, 2, generator=gen, dtype=torch.float64) * 0.5 + 1.0
    return DataLoader(TensorDataset(real), batch_size=batch_size)


def boring_loader() -> DataLoader:
    torch.manual_seed(0)  # RandomDataset draws from the global generator
    return DataLoader(RandomDataset(32, 32), batch_size=8)


@dataclass
class Entry:
    """One zoo module: how to build it and its data, and what the monitors need to know about it."""

    name: str
    build: Callable[[], pl.LightningModule]
    loader: Callable[[], DataLoader]
    oracle_loss: Callable[[nn.Module, Any], Tensor] | None
    hessian_kwargs: dict[str, Any] = field(default_factory=dict)
    num_optimizers: int = 1
    needs: str | None = None
    """A package the entry needs beyond the package's own dependencies (its tests skip without it)."""


ZOO: dict[str, Entry] = {
    "boring": Entry("boring", BoringModel, boring_loader, lambda m, b: m.step(b)),  # type: ignore[operator]
    "transformer": Entry(
        "transformer",
        TinyTransformer,
        lambda: TinyTransformer().train_dataloader(),
        None,
        {"train_mode": False},
    ),
    "bn_dropout_cnn": Entry(
        "bn_dropout_cnn",
        BatchNormDropoutCNN,
        lambda: DataLoader(DictDataset(), batch_size=8),
        lambda m, b: m.loss_on(b),  # type: ignore[operator]
        {"train_mode": False},
    ),
    "gan": Entry(
        "gan",
        TinyGAN,
        gan_loader,
        gan_d_loss,
        {"loss_fn": "tests.callbacks.zoo:gan_d_loss_after_training_step"},
        num_optimizers=2,
    ),
    "frozen_unused": Entry(
        "frozen_unused",
        FrozenAndUnused,
        regression_loader,
        lambda m, b: m.loss_on(b),  # type: ignore[operator]
    ),
    "compiled": Entry(
        "compiled",
        CompiledNet,
        regression_loader,
        lambda m, b: F.mse_loss(m.net._orig_mod(b[0]), b[1]),  # type: ignore[operator]
    ),
    "hf_gpt2": Entry("hf_gpt2", TinyGPT2, lm_loader, hf_loss, {"train_mode": False}, needs="transformers"),
    "hf_bert": Entry("hf_bert", TinyBert, classify_loader, hf_loss, needs="transformers"),
}
