"""HessianEigenMonitor builds one HessianOperator per probe and hands it to every algorithm it uses."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_landscape import HessianEigenMonitor
from lightning_landscape.curvature import HessianOperator


class _Tiny(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1)).double()

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        x, y = batch
        return nn.functional.mse_loss(self.net(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.05)


@pytest.mark.parametrize("backend", ["lanczos", "power"])
def test_one_operator_per_probe(monkeypatch: pytest.MonkeyPatch, tmp_path: Any, backend: str) -> None:
    built: list[HessianOperator] = []
    original = HessianOperator.__init__

    def counting_init(self: HessianOperator, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        built.append(self)

    monkeypatch.setattr(HessianOperator, "__init__", counting_init)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(32, 3, dtype=torch.float64, generator=gen)
    loader = DataLoader(TensorDataset(x, x.sum(1, keepdim=True) ** 2), batch_size=8)
    monitor = HessianEigenMonitor(
        k=2,
        every_n_steps=2,
        smallest=True,
        trace=True,
        trace_samples=10,
        density=True,
        density_iter=5,
        backend=backend,  # type: ignore[arg-type]
        max_iter=3000 if backend == "power" else None,
    )
    trainer = pl.Trainer(
        max_steps=4,
        callbacks=[monitor],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        accelerator="cpu",
        devices=1,
    )
    pl.seed_everything(0)
    trainer.fit(_Tiny(), loader)
    assert monitor.num_probes == 2
    assert len(built) == 2  # one per probe, not one per quantity (it used to be three)
    # Every product of the probe went through that one operator and is reported.
    assert monitor.total_products == sum(op.num_products for op in built)
    assert all(op.num_products > 10 + 5 for op in built)  # eigenvalues + 10 trace + 5 density products
