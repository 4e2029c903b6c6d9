"""RiskGapMonitor on a real Trainer: risks and gaps vs Lightning's epoch metrics and a direct evaluation."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from torch.nn import functional as F

from lightning_landscape.callbacks import tags as _tags
from lightning_landscape.callbacks.risk_gap import RiskGapMonitor
from tests.callbacks._cb_helpers import TinyRegression, make_data, make_loader
from tests.callbacks._events import read_layout_categories, read_scalars


def test_epoch_risks_and_gaps(tmp_path: Path, trainer_kwargs: dict[str, Any]) -> None:
    logger = TensorBoardLogger(tmp_path, name="tb")
    monitor = RiskGapMonitor(optimal_risk=0.25)
    trainer = pl.Trainer(max_epochs=3, callbacks=[monitor], logger=logger, **trainer_kwargs)
    trainer.fit(TinyRegression(), make_loader(n=40), make_loader(n=16, seed=1))
    s = read_scalars(logger.log_dir)
    steps = sorted(s[_tags.RISK_TRAIN])
    assert steps == sorted(s["train_loss_epoch"]) == sorted(s["val_loss"]) == [4, 9, 14]
    for step in steps:
        train, val = s["train_loss_epoch"][step], s["val_loss"][step]
        assert s[_tags.RISK_TRAIN][step] == pytest.approx(train, rel=1e-6)
        assert s[_tags.RISK_VAL][step] == pytest.approx(val, rel=1e-6)
        assert s[_tags.RISK_GENERALIZATION_GAP][step] == pytest.approx(val - train, rel=1e-5, abs=1e-7)
        assert s[_tags.RISK_OPTIMALITY_GAP][step] == pytest.approx(train - 0.25, rel=1e-5, abs=1e-7)
    assert read_layout_categories(logger.log_dir) == [["risk"]]
    assert float(trainer.callback_metrics[_tags.RISK_VAL]) == pytest.approx(s["val_loss"][14], rel=1e-6)


class FullRiskRecorder(pl.Callback):
    def __init__(self) -> None:
        self.x, self.y = make_data(40)
        self.risks: list[float] = []

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: Any) -> None:
        was = pl_module.training
        pl_module.eval()
        with torch.no_grad():
            self.risks.append(float(F.mse_loss(pl_module.net(self.x), self.y)))
        pl_module.train(was)


def test_full_train_risk_at_current_weights(tmp_path: Path, trainer_kwargs: dict[str, Any]) -> None:
    logger = TensorBoardLogger(tmp_path, name="tb")
    recorder = FullRiskRecorder()
    monitor = RiskGapMonitor(full_train_risk=True, val_key=None, optimal_risk=0.0)
    trainer = pl.Trainer(max_epochs=2, callbacks=[monitor, recorder], logger=logger, **trainer_kwargs)
    # Dropout makes the training-mode loss differ: the risk is taken in eval mode. Last batch: 5 samples.
    trainer.fit(TinyRegression(dropout=0.5), make_loader(n=40, batch_size=7, shuffle=True))
    s = read_scalars(logger.log_dir)
    logged = [s[_tags.RISK_TRAIN][k] for k in sorted(s[_tags.RISK_TRAIN])]
    assert logged == pytest.approx(recorder.risks, rel=1e-6)
    assert [s[_tags.RISK_OPTIMALITY_GAP][k] for k in sorted(s[_tags.RISK_OPTIMALITY_GAP])] == pytest.approx(
        logged
    )
    assert _tags.RISK_VAL not in s and _tags.RISK_GENERALIZATION_GAP not in s


def test_missing_train_risk_is_a_clear_error(trainer_kwargs: dict[str, Any]) -> None:
    class Silent(TinyRegression):
        """Manual optimization, logs nothing on epoch and returns nothing: no training risk anywhere."""

        def __init__(self) -> None:
            super().__init__()
            self.automatic_optimization = False

        def training_step(self, batch: Any, batch_idx: int) -> None:
            opt = self.optimizers()
            loss = self.loss_on(batch)
            opt.zero_grad()  # type: ignore[union-attr]
            self.manual_backward(loss)
            opt.step()  # type: ignore[union-attr]
            self.log("train_loss", loss)

    trainer = pl.Trainer(
        max_epochs=1,
        callbacks=[RiskGapMonitor(train_key="loss/train", val_key=None)],
        logger=False,
        **trainer_kwargs,
    )
    with pytest.raises(ValueError, match=r"`train_key`='loss/train' was not logged.*Logged: \['train_loss"):
        trainer.fit(Silent(), make_loader(n=16))


def test_missing_val_key_fails_at_the_sanity_check(trainer_kwargs: dict[str, Any]) -> None:
    kwargs = {**trainer_kwargs, "num_sanity_val_steps": 1}
    trainer = pl.Trainer(
        max_epochs=1, callbacks=[RiskGapMonitor(val_key="valid_loss")], logger=False, **kwargs
    )
    with pytest.raises(ValueError, match=r"`val_key`='valid_loss'.*Logged: \['val_loss'\]"):
        trainer.fit(TinyRegression(), make_loader(n=16), make_loader(n=8))
    assert trainer.global_step == 0


def test_lightning_default_step_only_logging_works_as_is(
    tmp_path: Path, trainer_kwargs: dict[str, Any]
) -> None:
    class StepOnly(TinyRegression):
        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            loss = self.loss_on(batch)
            self.log("train_loss", loss)  # Lightning's default: on_step=True, on_epoch=False
            self.losses.append((float(loss.detach()), len(batch[0])))
            return loss

        def validation_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            return self.loss_on(batch)  # returned, never logged

    model = StepOnly()
    model.losses = []
    logger = TensorBoardLogger(tmp_path, name="tb")
    # Accumulation: Lightning divides the loss it hands on by 2, the monitor must undo it.
    trainer = pl.Trainer(
        max_epochs=1, callbacks=[RiskGapMonitor()], logger=logger, accumulate_grad_batches=2, **trainer_kwargs
    )
    x, y = make_data(16, seed=1)
    trainer.fit(model, make_loader(n=20, batch_size=8), make_loader(n=16, seed=1))
    s = read_scalars(logger.log_dir)
    want = sum(v * n for v, n in model.losses) / sum(n for _, n in model.losses)  # sizes 8, 8, 4
    assert list(s[_tags.RISK_TRAIN].values()) == [pytest.approx(want, rel=1e-6)]  # event files hold float32
    with torch.no_grad():
        model.eval()
        val = float(F.mse_loss(model.net(x), y))
    assert list(s[_tags.RISK_VAL].values()) == [pytest.approx(val, rel=1e-6)]  # event files hold float32


def test_state_roundtrip() -> None:
    a = RiskGapMonitor()
    a._val_risk, a._val_epoch, a._num_logged = 0.5, 3, 4
    b = RiskGapMonitor()
    b.load_state_dict(a.state_dict())
    assert (b._val_risk, b._val_epoch, b._num_logged) == (0.5, 3, 4)
    a._train_mean.update(torch.tensor(2.0, dtype=torch.float64), weight=3)
    b.load_state_dict(a.state_dict())
    assert b._pending_train_state == (6.0, 3.0)  # a mid-epoch resume continues the running mean
    assert RiskGapMonitor(train_key="a").state_key != RiskGapMonitor(train_key="b").state_key


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"train_key": ""}, "`train_key` must be a non-empty str, got ''."),
        ({"val_key": 3}, "`val_key`"),
        ({"optimal_risk": float("inf")}, "`optimal_risk` must be None or a finite number, got inf."),
        ({"optimal_risk": "zero"}, "`optimal_risk`"),
        ({"name": "a/b"}, "`name` must be None or a non-empty str"),
        ({"seed": -1}, "`seed` must be an integer >= 0, got -1."),
        ({"loss_fn": "tests.callbacks._cb_helpers:mse_loss_fn"}, "only used with `full_train_risk`=True"),
        ({"full_train_risk": True, "loss_fn": "nope_mod_zz:f"}, "could not be imported"),
    ],
)
def test_argument_errors(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=re.escape(match)):
        RiskGapMonitor(**kwargs)


def test_the_removed_optimality_of_argument_is_refused() -> None:
    """``optimality_of`` was deprecated and ignored before any release; now it is no argument at all (both
    gaps to ``optimal_risk`` have their own tags)."""
    with pytest.raises(TypeError, match="optimality_of"):
        RiskGapMonitor(optimality_of="train")  # type: ignore[call-arg]
