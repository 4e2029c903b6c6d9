"""The private Lightning member the vectorized package reads, through multiseed/_lightning.py."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from lightning.pytorch import LightningModule, Trainer
from torch.utils.data import DataLoader, TensorDataset

from lightning_landscape.multiseed._lightning import attached_trainer
from tests._shared import QUIET


class _Seen(LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Linear(1, 1)
        self.seen: list[Any] = []

    def setup(self, stage: str) -> None:
        self.seen.append(attached_trainer(self))

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self.net(batch[0]).pow(2).mean()

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_attached_trainer_is_none_where_module_trainer_raises_and_the_trainer_during_fit() -> None:
    module = _Seen()
    assert attached_trainer(module) is None
    with pytest.raises(RuntimeError, match="not attached to a `Trainer`"):
        _ = module.trainer
    trainer = Trainer(max_steps=1, logger=False, enable_checkpointing=False, **QUIET)
    trainer.fit(module, DataLoader(TensorDataset(torch.rand(4, 1)), batch_size=2))
    assert module.seen == [trainer]
    assert attached_trainer(module) is trainer
