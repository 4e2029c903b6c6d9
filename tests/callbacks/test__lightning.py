"""Every private Lightning member the callbacks use, each through its accessor in ``callbacks._lightning``: a
Lightning upgrade that renames one fails here, by name."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
from lightning.pytorch.loggers import TensorBoardLogger

from lightning_landscape import RiskGapMonitor
from lightning_landscape.callbacks import _lightning
from tests.callbacks._cb_helpers import TinyRegression, make_loader
from tests.callbacks._events import read_scalars


def test_the_private_lightning_accesses(tmp_path: Path, trainer_kwargs: dict[str, Any]) -> None:
    seen: dict[str, Any] = {}

    class Probe(pl.Callback):
        def on_train_start(self, trainer: pl.Trainer, pl_module: Any) -> None:
            _lightning.load_val_dataloaders(trainer)
            seen["val_loaders"] = trainer.val_dataloaders

        def on_train_batch_end(self, trainer: pl.Trainer, pl_module: Any, *args: Any) -> None:
            seen.setdefault("steps", []).append(_lightning.batches_that_stepped(trainer))

        def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: Any) -> None:
            seen["epoch"] = _lightning.running_epoch_metrics(trainer)
            seen["keys"] = _lightning.running_logged_keys(trainer)

    logger = TensorBoardLogger(tmp_path, name="tb")
    trainer = pl.Trainer(callbacks=[Probe(), RiskGapMonitor()], logger=logger, max_epochs=1, **trainer_kwargs)
    trainer.fit(TinyRegression(), make_loader(n=32, batch_size=8), make_loader(n=16, batch_size=8, seed=1))
    s = read_scalars(logger.log_dir)
    assert seen["val_loaders"] is not None
    assert seen["steps"] == sorted(s["train_loss_step"]) == [0, 1, 2, 3]  # the step Lightning logs at
    assert seen["epoch"]["train_loss_epoch"] == pytest.approx(s["train_loss_epoch"][3], rel=1e-6)
    assert {"train_loss_step", "train_loss_epoch"} <= seen["keys"]


def test_running_results_outside_a_loop_are_empty() -> None:
    trainer = pl.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False)
    assert _lightning.running_epoch_metrics(trainer) == {}
    assert _lightning.running_logged_keys(trainer) == set()


def test_generate_state_key_names_the_class_and_the_fields() -> None:
    class Watcher(pl.Callback):
        pass

    key = _lightning.generate_state_key(Watcher(), k=2, name="val")
    assert key == Watcher.__qualname__ + "{'k': 2, 'name': 'val'}"
    assert key != _lightning.generate_state_key(Watcher(), k=3, name="val")
