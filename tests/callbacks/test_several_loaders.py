"""Probes on a Trainer with several training loaders (a dict, a ``CombinedLoader``, a list): the probe draws
from the one named loader (values against dense float64 Hessians of that loader's batches), the bare
``"train"`` is refused naming the choices, and the format is checked in ``__init__``."""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import CombinedLoader
from torch import Tensor

from lightning_landscape import HessianEigenMonitor, LossLandscapeMonitor, RiskGapMonitor
from lightning_landscape.callbacks import tags
from lightning_landscape.callbacks._batches import check_dataloader, probe_dataloader
from tests.callbacks._cb_helpers import TinyRegression, make_data, make_loader, mse_loss_fn
from tests.callbacks._events import read_scalars
from tests.oracle import dense_hessian

MSE = "tests.callbacks._cb_helpers:mse_loss_fn"


class TwoTasks(TinyRegression):
    """Trains on a dict batch ``{"a": (x, y), "b": (x, y)}``: the sum of the two MSEs."""

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        loss = self.loss_on(batch["a"]) + self.loss_on(batch["b"])
        self.log("train_loss", loss)
        return loss


def _loaders() -> dict[str, Any]:
    # Two different datasets: a probe of the wrong loader gives other eigenvalues.
    return {"a": make_loader(n=32, batch_size=8, seed=0), "b": make_loader(n=32, batch_size=8, seed=5)}


class DenseTruth(pl.Callback):
    """Dense float64 top eigenvalues on the first batch of each loader, right after the monitor, keyed by the
    step the monitor logs at."""

    def __init__(self) -> None:
        self.batches = {name: make_data(32, seed=seed) for name, seed in (("a", 0), ("b", 5))}
        self.top: dict[str, dict[int, float]] = {"a": {}, "b": {}}

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: Any, *args: Any) -> None:
        for name, (x, y) in self.batches.items():
            hessian = dense_hessian(pl_module, mse_loss_fn, [(x[:8], y[:8])])
            self.top[name][trainer.global_step - 1] = float(torch.linalg.eigvalsh(hessian)[-1])


@pytest.mark.parametrize("kind", ["dict", "combined"])
def test_hessian_probe_draws_from_the_named_loader(
    kind: str, tmp_path: Path, trainer_kwargs: dict[str, Any]
) -> None:
    torch.manual_seed(0)
    monitor = HessianEigenMonitor(every_n_steps=1, dataloader="train:b", loss_fn=MSE, tol=1e-10)
    truth = DenseTruth()
    logger = TensorBoardLogger(tmp_path, name="tb")
    trainer = pl.Trainer(max_steps=3, callbacks=[monitor, truth], logger=logger, **trainer_kwargs)
    loaders = _loaders() if kind == "dict" else CombinedLoader(_loaders(), mode="max_size_cycle")
    trainer.fit(TwoTasks(), loaders)

    logged = read_scalars(logger.log_dir)[tags.hessian_eig_tag(1)]
    assert sorted(logged) == sorted(truth.top["b"]) == [0, 1, 2]
    for step, value in logged.items():
        assert value == pytest.approx(truth.top["b"][step], rel=1e-6)
        assert abs(value - truth.top["a"][step]) > 1e-3 * abs(value)  # the other loader differs


def test_landscape_probe_draws_from_the_named_loader(tmp_path: Path, trainer_kwargs: dict[str, Any]) -> None:
    torch.manual_seed(0)
    monitor = LossLandscapeMonitor(mode="line", steps=3, trajectory=False, dataloader="train:b", loss_fn=MSE)
    trainer = pl.Trainer(max_epochs=1, callbacks=[monitor], logger=False, **trainer_kwargs)
    model = TwoTasks()
    trainer.fit(model, _loaders())
    assert monitor.last_result is not None
    with torch.no_grad():  # the named loader's first batch at the final weights, and the other loader's
        expected, other = (
            float(mse_loss_fn(model, (x[:8], y[:8]))) for x, y in (make_data(32, seed=s) for s in (5, 0))
        )
    assert monitor.last_result.center_loss == pytest.approx(expected, rel=1e-12)
    assert abs(expected - other) > 1e-3 * expected


@pytest.mark.parametrize(
    ("loaders", "dataloader", "match"),
    [
        (
            "dict",
            "train",
            "the Trainer has 2 (['a', 'b']); name the one to probe: `dataloader`='train:a' or 'train:b'",
        ),
        ("combined", "train", "`dataloader`='train:a' or 'train:b'"),
        ("list", "train", "`dataloader`='train:0' or 'train:1'"),
        ("dict", "train:c", "`dataloader`='train:c': the Trainer's train dataloaders are named ['a', 'b']"),
        ("single", "train:a", "the Trainer has a single train DataLoader; pass `dataloader`='train'"),
    ],
)
def test_refusals_name_the_loaders_before_training(
    loaders: str, dataloader: str, match: str, trainer_kwargs: dict[str, Any]
) -> None:
    data: Any = {
        "dict": _loaders(),
        "combined": CombinedLoader(_loaders()),
        "list": list(_loaders().values()),
        "single": make_loader(n=16),
    }[loaders]
    model = TinyRegression() if loaders == "single" else TwoTasks()
    steps: list[int] = []

    class Steps(pl.Callback):
        def on_train_batch_start(self, *args: Any) -> None:
            steps.append(1)

    monitor = HessianEigenMonitor(dataloader=dataloader, loss_fn=MSE)
    trainer = pl.Trainer(max_steps=1, callbacks=[monitor, Steps()], logger=False, **trainer_kwargs)
    with pytest.raises(ValueError, match=re.escape(match)):
        trainer.fit(model, data)
    assert steps == []  # refused before the first step


@pytest.mark.parametrize("value", ["test", "train:", "val:", ":a", "Train", "train_a"])
def test_format_checked_in_init(value: str) -> None:
    for monitor in (HessianEigenMonitor, LossLandscapeMonitor):
        with pytest.raises(ValueError, match=re.escape(f"got {value!r}")):
            monitor(dataloader=value)
    with pytest.raises(TypeError, match="`dataloader` must be a str"):
        check_dataloader(0)


def test_probe_dataloader_resolution() -> None:
    a, b = make_loader(n=8), make_loader(n=8)
    trainer: Any = SimpleNamespace(train_dataloader={"a": a, "b": b}, val_dataloaders=[a, b])
    assert probe_dataloader(trainer, "train:a") is a and probe_dataloader(trainer, "train:b") is b
    assert probe_dataloader(trainer, "val") is a  # the first validation dataloader, as before
    assert probe_dataloader(trainer, "val:1") is b
    trainer.train_dataloader = {"only": b}
    assert probe_dataloader(trainer, "train") is b  # one loader in a dict is not ambiguous
    trainer.train_dataloader = CombinedLoader({"a": a, "b": b})
    assert probe_dataloader(trainer, "train:b") is b
    trainer.train_dataloader = {"a": a, "nested": {"x": b}}
    with pytest.raises(ValueError, match="the probe needs a single train DataLoader, found dict"):
        probe_dataloader(trainer, "train:nested")


def test_risk_gap_draws_from_the_named_loader(tmp_path: Path, trainer_kwargs: dict[str, Any]) -> None:
    """``RiskGapMonitor(dataloader="train:b")``: the training risk is that loader's batches' mean loss at the
    validation's weights (and the bare ``"train"`` is refused naming the choices, before the first step)."""
    torch.manual_seed(0)
    val = make_loader(n=16, batch_size=8, seed=9)
    monitor = RiskGapMonitor(val_key=None, dataloader="train:b", loss_fn=MSE, train_batches=2)
    trainer = pl.Trainer(max_epochs=1, callbacks=[monitor], logger=False, **trainer_kwargs)
    model = TwoTasks()
    trainer.fit(model, _loaders(), val)
    with torch.no_grad():
        expected, other = (
            float(mse_loss_fn(model, (x[:16], y[:16]))) for x, y in (make_data(32, seed=s) for s in (5, 0))
        )
    # Two batches of 8 in the loader's (unshuffled) order: the first 16 samples.
    assert float(trainer.callback_metrics["risk/train"]) == pytest.approx(expected, rel=1e-6)
    assert abs(expected - other) > 1e-3 * expected

    with pytest.raises(ValueError, match=re.escape("`dataloader`='train:a' or 'train:b'")):
        pl.Trainer(
            max_steps=1, callbacks=[RiskGapMonitor(val_key=None, loss_fn=MSE)], logger=False, **trainer_kwargs
        ).fit(TwoTasks(), _loaders())
    for value in ("val", "val:a", "test"):
        with pytest.raises(ValueError, match=re.escape(f"got {value!r}")):
            RiskGapMonitor(dataloader=value)
