"""Run by test_noise_scale.py: GradientNoiseScaleMonitor under strategy='ddp' on 2 CPU processes (gloo).

Usage: python _ddp_noise_scale.py OUT_DIR
"""

from __future__ import annotations

import sys

import lightning.pytorch as pl
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from lightning_landscape import GradientNoiseScaleMonitor
from tests.callbacks._ddp_hessian import ddp_trainer
from tests.callbacks._noise_helpers import LinReg, finite_data


class ShardedData(pl.LightningDataModule):
    """Rank r gets samples r, r+2, ... in order, 4 per step: 8 per step over both ranks."""

    def train_dataloader(self) -> DataLoader:
        x, y = finite_data(64)
        dataset = TensorDataset(x, y)
        sampler = DistributedSampler(dataset, num_replicas=2, rank=self.trainer.global_rank, shuffle=False)
        return DataLoader(dataset, batch_size=4, sampler=sampler)


if __name__ == "__main__":
    out = sys.argv[1]
    pl.seed_everything(3)
    monitor = GradientNoiseScaleMonitor(every_n_steps=2, ema_decay=0.5, log_raw=True)
    trainer = ddp_trainer(out, [monitor], max_steps=8)
    trainer.fit(LinReg(lr=0.05), datamodule=ShardedData())
    print(f"rank {trainer.global_rank} estimates {monitor.num_estimates}", flush=True)
