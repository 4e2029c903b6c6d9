"""Worker for the 2-process gloo test of the monitors under Lightning's ``ModelParallelStrategy``, the
module's ``configure_model`` calling ``fully_shard`` (FSDP2). ``mp.spawn`` starts the ranks with
``LOCAL_RANK`` set, so Lightning takes them as launched externally and one process runs several Trainers.
The data is ``_ddp_hessian.ShardedData``: both ranks together see the 8 samples per step one process sees
with ``batch_size=8``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import Logger
from torch import Tensor

from tests._shared import QUIET
from tests.callbacks._cb_helpers import TinyRegression

PREFIXES = ("hessian/", "stability/", "landscape/")


class ShardedRegression(TinyRegression):
    """``TinyRegression`` sharded as Lightning's FSDP2 examples do: each layer, then the root."""

    def configure_model(self) -> None:
        from torch.distributed.fsdp import fully_shard

        fully_shard(self.net[0])
        fully_shard(self.net)


class AdamRegression(TinyRegression):
    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=0.01, betas=(0.8, 0.99), eps=1e-4)


class ShardedAdamRegression(ShardedRegression, AdamRegression):
    pass


class SubMeshRegression(TinyRegression):
    """Sharded over the one-rank ``data_parallel`` sub-mesh of the default (1 x 2) mesh: not plain FSDP."""

    def configure_model(self) -> None:
        from torch.distributed.fsdp import fully_shard

        fully_shard(self.net, mesh=self.device_mesh["data_parallel"])


class Recorder(Logger):
    """The monitors' values as logged (float64, global rank zero only), by step."""

    def __init__(self) -> None:
        super().__init__()
        self.values: dict[int, dict[str, float]] = {}

    @property
    def name(self) -> str:
        return "recorder"

    @property
    def version(self) -> int:
        return 0

    def log_hyperparams(self, *args: Any, **kwargs: Any) -> None:
        pass

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        found = {k: v for k, v in metrics.items() if k.startswith(PREFIXES)}
        if found and step is not None:
            self.values.setdefault(step, {}).update(found)


def monitors() -> list[pl.Callback]:
    """The monitors compared between the sharded and the single-process run."""
    from lightning_landscape import EdgeOfStabilityMonitor, HessianEigenMonitor, LossLandscapeMonitor

    hessian = HessianEigenMonitor(
        k=2, every_n_steps=2, smallest=True, trace=True, trace_samples=3, blocks=["net.0"], tol=1e-9
    )
    line = LossLandscapeMonitor(steps=5, trajectory=False)
    plane = LossLandscapeMonitor(mode="plane", directions="hessian", steps=3, trajectory=False)
    return [hessian, EdgeOfStabilityMonitor(every_n_steps=2, tol=1e-9), line, plane]


def landscapes(callbacks: list[pl.Callback]) -> list[dict[str, Any]]:
    """The last line or plane of each landscape monitor, as plain values."""
    out = []
    for callback in callbacks:
        result = getattr(callback, "last_result", None)
        if result is not None:
            out.append({"losses": result.losses, "curvature": getattr(result, "curvature", None)})
    return out


def fit(
    model: pl.LightningModule, callbacks: list[pl.Callback], data: Any, logger: Any = False, **kwargs: Any
) -> pl.Trainer:
    trainer = pl.Trainer(
        max_steps=6, callbacks=callbacks, logger=logger, enable_checkpointing=False, **QUIET, **kwargs
    )
    trainer.fit(model, datamodule=data) if isinstance(data, pl.LightningDataModule) else trainer.fit(
        model, data
    )
    return trainer


def weights(model: pl.LightningModule) -> list[Tensor]:
    return [p.full_tensor() if hasattr(p, "full_tensor") else p.detach().clone() for p in model.parameters()]


def run(rank: int, port: int, out_dir: str) -> None:
    from lightning.pytorch.strategies import ModelParallelStrategy
    from lightning.pytorch.utilities.exceptions import MisconfigurationException

    from lightning_landscape import EdgeOfStabilityMonitor, HessianEigenMonitor, LossLandscapeMonitor
    from tests.callbacks._ddp_hessian import ShardedData

    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), LOCAL_RANK=str(rank), NODE_RANK="0", WORLD_SIZE="2"
    )
    torch.set_num_threads(1)
    sharded = {
        "accelerator": "cpu",
        "devices": 2,
        "use_distributed_sampler": False,
        "default_root_dir": out_dir,
    }
    out: dict[str, Any] = {}
    for key, cls in (("sgd", ShardedRegression), ("adam", ShardedAdamRegression)):
        pl.seed_everything(11)
        model, recorder = cls(), Recorder()
        callbacks = monitors() if key == "sgd" else [EdgeOfStabilityMonitor(every_n_steps=2, tol=1e-9)]
        fit(model, callbacks, ShardedData(), recorder, strategy=ModelParallelStrategy(), **sharded)
        out[key] = recorder.values
        out[f"{key}_landscapes"] = landscapes(callbacks)
        out[f"{key}_weights"] = weights(model)
        out[f"{key}_sharded"] = all(type(p).__name__ == "DTensor" for p in model.parameters())
    pl.seed_everything(11)
    plain = ShardedRegression()
    fit(plain, [], ShardedData(), strategy=ModelParallelStrategy(), **sharded)
    out["plain_weights"] = weights(plain)
    refused = {}
    for name, model, callback in (
        ("double_backward", ShardedRegression(), HessianEigenMonitor(hvp="double_backward")),
        ("pyhessian", ShardedRegression(), HessianEigenMonitor(backend="pyhessian")),
        ("batch_sharpness", ShardedRegression(), EdgeOfStabilityMonitor(batch_sharpness=True)),
        ("trajectory", ShardedRegression(), LossLandscapeMonitor()),
        ("adaptive", ShardedRegression(), LossLandscapeMonitor(trajectory=False, sharpness_rho=0.1)),
        ("sub_mesh", SubMeshRegression(), HessianEigenMonitor()),
    ):
        try:
            trainer = fit(model, [callback], ShardedData(), strategy=ModelParallelStrategy(), **sharded)
            refused[name] = f"not refused, {trainer.global_step} steps"
        except MisconfigurationException as err:
            refused[name] = str(err)
    out["refused"] = refused
    torch.save(out, Path(out_dir) / f"rank{rank}.pt")
