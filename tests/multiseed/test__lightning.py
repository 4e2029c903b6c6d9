"""Each private Lightning member that multiseed/_lightning.py reads, against what Lightning does with it."""

from __future__ import annotations

import pytest
import torch
from _tiny import TinyRegressor
from lightning.pytorch import LightningModule
from lightning.pytorch.utilities.rank_zero import rank_zero_only

from lightning_landscape.multiseed._lightning import (
    SIGTERMException,
    attached_trainer,
    configure_optimizers,
    is_rank_zero,
    plain_hparams,
    saved_hparams,
)


def test_is_rank_zero_follows_the_rank_lightning_sets(monkeypatch: pytest.MonkeyPatch) -> None:
    assert is_rank_zero()
    monkeypatch.setattr(rank_zero_only, "rank", 1)
    assert not is_rank_zero()


def test_configure_optimizers_reads_every_form_lightning_accepts() -> None:
    params = [torch.nn.Parameter(torch.zeros(1))]
    sgd = torch.optim.SGD(params, lr=0.1)
    step = torch.optim.lr_scheduler.StepLR(sgd, 1)
    assert configure_optimizers(sgd) == ([sgd], [])
    assert configure_optimizers({"optimizer": sgd, "lr_scheduler": step}) == ([sgd], [step])
    assert configure_optimizers(([sgd], [step])) == ([sgd], [step])
    config = {"scheduler": step, "interval": "step"}
    assert configure_optimizers({"optimizer": sgd, "lr_scheduler": config}) == ([sgd], [config])


def test_hparams_of_a_module_that_saved_them_and_of_one_that_did_not() -> None:
    model = TinyRegressor(hidden=4, lr=0.5)
    assert saved_hparams(model) == dict(model.hparams_initial) and saved_hparams(model)["hidden"] == 4
    assert plain_hparams(model)["lr"] == 0.5
    bare = LightningModule()
    assert saved_hparams(bare) is None and plain_hparams(bare) == {}
    model.hparams["net"] = torch.nn.Linear(1, 1)  # not a scalar: not shown
    assert "net" not in plain_hparams(model)


def test_sigterm_exception_is_what_lightning_raises_for_a_sigterm() -> None:
    from lightning.pytorch.utilities import exceptions

    assert SIGTERMException is exceptions.SIGTERMException and issubclass(SIGTERMException, SystemExit)


def test_attached_trainer_is_the_trainer_the_module_runs_in(tmp_path) -> None:
    from lightning.pytorch import Trainer

    model = TinyRegressor()
    assert attached_trainer(model) is None
    trainer = Trainer(logger=False, enable_checkpointing=False, default_root_dir=tmp_path, accelerator="cpu")
    model.trainer = trainer
    assert attached_trainer(model) is trainer is model.trainer
