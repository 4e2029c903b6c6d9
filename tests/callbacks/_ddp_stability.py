"""Run by test_stability.py: EdgeOfStabilityMonitor (Adam, batch sharpness) under strategy='ddp' on 2 CPU
processes (gloo).

Usage: python _ddp_stability.py OUT_DIR
"""

from __future__ import annotations

import sys

import lightning.pytorch as pl
import torch

from lightning_landscape import EdgeOfStabilityMonitor
from tests.callbacks._cb_helpers import TinyRegression
from tests.callbacks._ddp_hessian import ShardedData, ddp_trainer


class AdamRegression(TinyRegression):
    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=0.01, betas=(0.8, 0.99), eps=1e-4)


if __name__ == "__main__":
    out = sys.argv[1]
    pl.seed_everything(11)
    model = AdamRegression()
    monitor = EdgeOfStabilityMonitor(every_n_steps=2, num_batches=1, batch_sharpness=True, tol=1e-10)
    trainer = ddp_trainer(out, [monitor], max_steps=6)
    trainer.fit(model, datamodule=ShardedData())
    print(f"rank {trainer.global_rank} probes {monitor.num_probes}", flush=True)
