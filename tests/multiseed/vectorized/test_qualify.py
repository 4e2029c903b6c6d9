"""Every reason a job cannot be vectorized is named before anything trains, with the sequential way out."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn

from lightning_landscape.multiseed.vectorized import VectorizationError, run_vectorized
from lightning_landscape.multiseed.vectorized.qualify import (
    SEQUENTIAL_HINT,
    buffer_updating_modules,
    check_clipping,
    check_trainer_kwargs,
)
from tests.multiseed.vectorized._cases import EXECUTOR_QUIET, PlainRegressor, job


class _NoNet(PlainRegressor):
    def __init__(self) -> None:
        super().__init__()
        self.body = self.net
        del self.net


class _NoLoss(LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Linear(2, 1)


class _Bn(PlainRegressor):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(2, 4), nn.BatchNorm1d(4), nn.Linear(4, 1))


class _Branchy(PlainRegressor):
    def loss_on_batch(self, net: Any, batch: Any) -> torch.Tensor:
        x, y = batch
        out = net(x)
        if out.sum() > 0:  # data-dependent control flow
            out = out * 2
        return F.mse_loss(out, y)


@pytest.mark.parametrize(
    ("model", "trainer_kwargs", "mode", "match"),
    [
        (_NoNet, {}, "min", "no nn.Module attribute `net`"),
        (_NoLoss, {}, "min", "loss_on_batch"),
        (_Bn, {}, "min", "BatchNorm1d|batch-norm"),
        (lambda: PlainRegressor(optimizer="lbfgs"), {}, "min", "LBFGS.*elementwise"),
        (PlainRegressor, {"gradient_clip_val": 1.0}, "min", "gradient_clip_val=1.0"),
        (PlainRegressor, {}, "max", "mode='max'"),
        (PlainRegressor, {"callbacks": [ModelCheckpoint()]}, "min", "callbacks"),
        (_Branchy, {}, "min", "data-dependent control flow"),
    ],
)
def test_refusals_name_the_reason_and_suggest_sequential(
    tmp_path: Path, model: Any, trainer_kwargs: dict[str, Any], mode: str, match: str
) -> None:
    kwargs = {"max_epochs": 1, "logger": False, **EXECUTOR_QUIET, **trainer_kwargs}
    with pytest.raises(VectorizationError, match=match) as info:
        run_vectorized(job(tmp_path, model, kwargs, mode=mode), [0, 1])
    assert 'executor="sequential"' in str(info.value)
    assert isinstance(info.value, ValueError)
    # Refused before any member was trained or exported.
    assert not list(tmp_path.glob("seed_*/checkpoints/*.ckpt"))


def test_clipping_by_value_passes_and_by_norm_is_refused_by_name() -> None:
    check_clipping(0.5, "value")  # elementwise: each member clipped as its single run
    check_clipping(None, None)
    check_clipping(0.0, "norm")  # 0 means no clipping in Lightning
    check_trainer_kwargs({"gradient_clip_val": 0.5, "gradient_clip_algorithm": "value"})
    for algorithm in (None, "norm"):
        with pytest.raises(
            VectorizationError, match=r"gradient_clip_val=0\.5 with gradient_clip_algorithm='norm'"
        ) as info:
            check_clipping(0.5, algorithm)
        assert str(info.value).endswith(SEQUENTIAL_HINT)


def test_buffer_updating_modules_names_batch_norm_with_running_statistics_only() -> None:
    net = nn.Sequential(nn.Linear(1, 4), nn.BatchNorm1d(4), nn.BatchNorm1d(4, track_running_stats=False))
    assert buffer_updating_modules(net) == ["1 (BatchNorm1d)"]
    assert buffer_updating_modules(nn.BatchNorm2d(3)) == ["<root> (BatchNorm2d)"]
    assert buffer_updating_modules(nn.LayerNorm(3)) == []
