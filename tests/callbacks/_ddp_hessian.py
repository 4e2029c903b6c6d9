"""Run by test_hessian.py: HessianEigenMonitor under strategy='ddp' on 2 CPU processes (gloo).

Usage: python _ddp_hessian.py OUT_DIR
"""

from __future__ import annotations

import hashlib
import sys

import lightning.pytorch as pl
from lightning.pytorch.loggers import TensorBoardLogger
from torch.utils.data import DataLoader, DistributedSampler

from lightning_landscape import HessianEigenMonitor, RiskGapMonitor
from tests.callbacks._cb_helpers import TinyRegression, make_loader


class ShardedData(pl.LightningDataModule):
    """Rank r gets samples r, r+2, ... in order (Lightning's own sampler would shuffle), so both ranks
    together see the same 8 samples per step as one process with batch_size=8."""

    def train_dataloader(self) -> DataLoader:
        dataset = make_loader(n=48).dataset
        sampler = DistributedSampler(dataset, num_replicas=2, rank=self.trainer.global_rank, shuffle=False)
        return DataLoader(dataset, batch_size=4, sampler=sampler)


def ddp_trainer(out: str, callbacks: list[pl.Callback], max_steps: int) -> pl.Trainer:
    """The Trainer of every 2-process DDP worker here: CPU, gloo, TensorBoard under ``OUT/tb/version_0``,
    logging every step, no checkpoints, the samplers left to :class:`ShardedData`."""
    return pl.Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp",
        max_steps=max_steps,
        callbacks=callbacks,
        logger=TensorBoardLogger(out, name="tb", version=0),
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        log_every_n_steps=1,
        use_distributed_sampler=False,
    )


if __name__ == "__main__":
    out = sys.argv[1]
    pl.seed_everything(11)
    model = TinyRegression()
    monitor = HessianEigenMonitor(k=3, every_n_steps=2, smallest=True, num_batches=1, tol=1e-9)
    trainer = ddp_trainer(out, [monitor, RiskGapMonitor(val_key=None, optimal_risk=0.0)], max_steps=6)
    trainer.fit(model, datamodule=ShardedData())
    print(f"rank {trainer.global_rank} probes {monitor.num_probes}", flush=True)
    # Every rank must start each probe from the same warm vectors (else the Lanczos runs would part ways).
    warm = monitor.warm_vectors
    digest = "none" if warm is None else hashlib.sha256(warm.cpu().numpy().tobytes()).hexdigest()
    print(f"rank {trainer.global_rank} warm {digest}", flush=True)
