"""LossLandscapeMonitor(sharpness_rho=...): landscape/adaptive_sharpness equals a direct adaptive_sharpness
call on the same batches and weights; training stays bit-identical; bad options are refused."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger

from lightning_landscape.callbacks._lightning import batches_that_stepped
from lightning_landscape.callbacks.landscape import LossLandscapeMonitor
from lightning_landscape.callbacks.tags import LANDSCAPE_ADAPTIVE_SHARPNESS
from lightning_landscape.landscape import adaptive_sharpness
from tests.callbacks._cb_helpers import TinyRegression, make_loader, mse_loss_fn
from tests.callbacks._events import read_scalars


class DirectSharpness(pl.Callback):
    """After the monitor, at each epoch end: adaptive_sharpness called directly on the first two batches."""

    def __init__(self, **options: Any) -> None:
        self.options = options
        self.values: dict[int, float] = {}

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: Any) -> None:
        batches = list(make_loader(n=32, batch_size=8))[:2]
        value = adaptive_sharpness(pl_module, mse_loss_fn, batches, **self.options).value
        self.values[batches_that_stepped(trainer) - 1] = value


@pytest.mark.parametrize(("p", "kind"), [(2, "worst"), ("inf", "average")], ids=["l2_worst", "linf_average"])
def test_adaptive_sharpness_equals_a_direct_call(
    p: Any, kind: Any, tmp_path: Path, trainer_kwargs: dict[str, Any]
) -> None:
    options = {"rho": 0.05, "p": p, "kind": kind, "steps": 4, "seed": 3}
    monitor = LossLandscapeMonitor(
        steps=3,
        num_batches=2,
        loss_fn="tests.callbacks._cb_helpers:mse_loss_fn",
        trajectory=False,
        seed=3,
        sharpness_rho=0.05,
        sharpness_p=p,
        sharpness_kind=kind,
        sharpness_steps=4,
    )
    direct = DirectSharpness(**options)
    logger = TensorBoardLogger(tmp_path, name="tb")
    torch.manual_seed(0)
    model = TinyRegression()
    trainer = pl.Trainer(max_epochs=2, callbacks=[monitor, direct], logger=logger, **trainer_kwargs)
    trainer.fit(model, make_loader(n=32, batch_size=8))
    logged = read_scalars(logger.log_dir)[LANDSCAPE_ADAPTIVE_SHARPNESS]
    assert sorted(logged) == sorted(direct.values) == [3, 7]
    for step, value in direct.values.items():
        assert value > 0
        assert logged[step] == pytest.approx(value, rel=1e-6)  # event files hold float32

    torch.manual_seed(0)
    plain = TinyRegression()
    pl.Trainer(max_epochs=2, logger=False, **trainer_kwargs).fit(plain, make_loader(n=32, batch_size=8))
    for a, b in zip(model.state_dict().values(), plain.state_dict().values(), strict=True):
        assert torch.equal(a, b)  # training bit-identical with and without the adaptive sharpness


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"sharpness_rho": 0.0}, "`sharpness_rho`"),
        ({"sharpness_p": 1}, "`sharpness_p` must be 2 or 'inf', got 1."),
        ({"sharpness_kind": "best"}, "`sharpness_kind` must be one of"),
        ({"sharpness_steps": 0}, "`sharpness_steps` must be"),
    ],
)
def test_sharpness_option_errors(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=re.escape(match)):
        LossLandscapeMonitor(**kwargs)
