"""HessianEigenMonitor on a real Trainer: logged values vs dense float64 Hessians, no side effects, resume."""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from lightning_landscape import HessianEigenMonitor
from lightning_landscape.callbacks import tags as _tags
from tests.callbacks._cb_helpers import NAN_AT_STEP, TinyRegression, make_data, make_loader, mse_loss_fn
from tests.callbacks._events import read_layout_categories, read_scalars
from tests.oracle import dense_hessian


class DenseRecorder(pl.Callback):
    """Ground truth taken right after the monitor, at the same weights, on the probe samples (the first
    ``num_samples`` of an unshuffled dataset), computed independently of the monitor's code."""

    def __init__(self, every_n_steps: int, num_samples: int) -> None:
        self.every_n_steps = every_n_steps
        self.x, self.y = make_data(64)
        self.num_samples = num_samples
        self.hessians: dict[int, torch.Tensor] = {}

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: Any, *args: Any) -> None:
        step = trainer.global_step
        if step % self.every_n_steps == 0:
            batch = (self.x[: self.num_samples], self.y[: self.num_samples])
            # Metrics of this batch are logged at the step before the optimizer step's increment.
            self.hessians[step - 1] = dense_hessian(pl_module, mse_loss_fn, [batch])


def test_logged_eigenvalues_match_dense_hessian(tmp_path: Path, trainer_kwargs: dict[str, Any]) -> None:
    pl.seed_everything(0)
    monitor = HessianEigenMonitor(k=3, every_n_steps=3, smallest=True, trace=True, num_batches=2, tol=1e-8)
    recorder = DenseRecorder(every_n_steps=3, num_samples=16)
    logger = TensorBoardLogger(tmp_path, name="tb")
    trainer = pl.Trainer(max_epochs=2, callbacks=[monitor, recorder], logger=logger, **trainer_kwargs)
    trainer.fit(TinyRegression(), make_loader(batch_size=8, shuffle=False))

    scalars = read_scalars(logger.log_dir)
    assert sorted(scalars[_tags.hessian_eig_tag(1)]) == sorted(recorder.hessians) == [2, 5, 8, 11, 14]
    for step, hessian in recorder.hessians.items():
        eig = torch.linalg.eigvalsh(hessian)
        top = eig.flip(0)[:3]
        for i in range(3):
            logged = scalars[_tags.hessian_eig_tag(i + 1)][step]
            assert logged == pytest.approx(float(top[i]), rel=1e-5, abs=1e-7), (step, i)
        assert scalars[_tags.HESSIAN_EIG_MIN][step] == pytest.approx(float(eig[0]), rel=1e-5, abs=1e-7)
        # Hutchinson with Rademacher probes: Var(z'Hz) = 2 (||H||_F^2 - sum_i H_ii^2), 100 samples.
        std_err = math.sqrt(2 * (hessian.pow(2).sum() - hessian.diag().pow(2).sum()) / 100)
        assert abs(scalars[_tags.HESSIAN_TRACE][step] - float(hessian.trace())) < 5 * std_err + 1e-9
        assert scalars[_tags.HESSIAN_NUM_PRODUCTS][step] >= 100
    assert monitor.num_probes == 5 and monitor.num_skipped == 0
    # Monitorable: the last value is in callback_metrics (not through the logger a second time).
    assert float(trainer.callback_metrics[_tags.hessian_eig_tag(1)]) == pytest.approx(
        scalars["hessian/eig_1"][14]
    )
    assert read_layout_categories(logger.log_dir) == [["hessian"]]


def _fit_weights(
    tmp_path: Path, trainer_kwargs: dict[str, Any], callbacks: list[pl.Callback]
) -> dict[str, Any]:
    pl.seed_everything(7)
    model = TinyRegression(dropout=0.3)
    loader = make_loader(n=48, batch_size=8, shuffle=True)
    val = make_loader(n=16, batch_size=8, seed=1)
    kwargs = {**trainer_kwargs, "num_sanity_val_steps": 2}
    trainer = pl.Trainer(max_epochs=2, callbacks=callbacks, logger=TensorBoardLogger(tmp_path), **kwargs)
    trainer.fit(model, loader, val)
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_training_bit_identical_with_and_without_monitors(
    tmp_path: Path, trainer_kwargs: dict[str, Any]
) -> None:
    from lightning_landscape import GradientNormMonitor, RiskGapMonitor

    plain = _fit_weights(tmp_path / "a", trainer_kwargs, [])
    monitors: list[pl.Callback] = [
        HessianEigenMonitor(
            k=2,
            every_n_steps=2,
            smallest=True,
            trace=True,
            trace_samples=3,
            density=True,
            density_iter=5,
            num_batches=2,
            every_n_epochs=1,
        ),
        HessianEigenMonitor(k=1, every_n_steps=3, train_mode=True, dataloader="val", memory="recompute"),
        GradientNormMonitor(histogram=True),
        RiskGapMonitor(full_train_risk=True, optimal_risk=0.0),
    ]
    probed = _fit_weights(tmp_path / "b", trainer_kwargs, monitors)
    assert plain.keys() == probed.keys()
    for name in plain:
        assert torch.equal(plain[name], probed[name]), name
    assert monitors[0].num_probes > 0 and monitors[1].num_probes > 0  # type: ignore[attr-defined]


def test_resume_continues_the_same_series(tmp_path: Path, trainer_kwargs: dict[str, Any]) -> None:
    def run(
        root: Path, max_epochs: int, ckpt_path: str | None = None
    ) -> tuple[HessianEigenMonitor, Any, Any]:
        pl.seed_everything(3)
        monitor = HessianEigenMonitor(k=2, every_n_steps=3, tol=1e-9)
        # A second instance must coexist (distinct state_key) and be restored independently.
        other = HessianEigenMonitor(k=1, every_n_steps=4, tol=1e-9)
        ckpt = ModelCheckpoint(dirpath=root / "ckpt", save_top_k=-1, every_n_epochs=1)
        logger = TensorBoardLogger(root, name="tb")
        kwargs = {**trainer_kwargs, "enable_checkpointing": True}
        trainer = pl.Trainer(max_epochs=max_epochs, callbacks=[monitor, other, ckpt], logger=logger, **kwargs)
        trainer.fit(TinyRegression(), make_loader(n=40, batch_size=8), ckpt_path=ckpt_path)
        return monitor, other, logger

    full, full_other, full_logger = run(tmp_path / "full", 4)
    first, _, _ = run(tmp_path / "first", 2)
    ckpt_path = str(next((tmp_path / "first" / "ckpt").glob("epoch=1*.ckpt")))
    assert len(torch.load(ckpt_path, weights_only=False)["callbacks"]) == 3
    resumed, resumed_other, resumed_logger = run(tmp_path / "resumed", 4, ckpt_path)

    expected = read_scalars(full_logger.log_dir)[_tags.hessian_eig_tag(2)]
    got = read_scalars(resumed_logger.log_dir)[_tags.hessian_eig_tag(2)]
    assert sorted(got) == [s for s in sorted(expected) if s >= 10] == [11, 14, 17]
    for step, value in got.items():
        assert value == pytest.approx(expected[step], rel=1e-9)
    assert resumed.num_probes == full.num_probes == 6
    assert resumed_other.num_probes == full_other.num_probes == 5
    assert first.num_probes == 3


def test_nonfinite_probe_is_skipped_with_one_warning(tmp_path: Path, trainer_kwargs: dict[str, Any]) -> None:
    monitor = HessianEigenMonitor(
        k=1, every_n_steps=2, loss_fn="tests.callbacks._cb_helpers:nan_at_step_loss", tol=1e-6
    )
    logger = TensorBoardLogger(tmp_path, name="tb")
    trainer = pl.Trainer(max_steps=8, callbacks=[monitor], logger=logger, **trainer_kwargs)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(TinyRegression(), make_loader(batch_size=8))
    ours = [w for w in caught if "HessianEigenMonitor: skipped" in str(w.message)]
    assert len(ours) == 1 and f"step {NAN_AT_STEP}" in str(ours[0].message)
    assert trainer.global_step == 8
    series = read_scalars(logger.log_dir)[_tags.hessian_eig_tag(1)]
    assert sorted(series) == [1, 5, 7]  # the probe at global step 4 (logged step 3) is missing
    assert all(math.isfinite(v) for v in series.values())
    assert (monitor.num_probes, monitor.num_skipped) == (3, 1)


def test_refuses_sharded_strategies() -> None:
    from lightning.pytorch.strategies import FSDPStrategy

    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False)
    monitor = HessianEigenMonitor()
    fake = object.__new__(FSDPStrategy)
    trainer._accelerator_connector.strategy = fake  # type: ignore[assignment]
    with pytest.raises(MisconfigurationException, match="FSDPStrategy"):
        monitor.setup(trainer, TinyRegression(), "fit")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"k": 0}, "`k` must be an integer >= 1, got 0."),
        ({"k": 2.5}, "`k`"),
        ({"every_n_steps": 0}, "`every_n_steps`"),
        ({"every_n_steps": None}, "both None"),
        ({"every_n_epochs": -1}, "`every_n_epochs`"),
        ({"num_batches": 0}, "`num_batches`"),
        ({"dataloader": "test"}, "`dataloader` must be one of ('train', 'val'), got 'test'."),
        ({"tol": 0.0}, "`tol`"),
        ({"tol": float("nan")}, "`tol`"),
        ({"backend": "arpack"}, "`backend`"),
        ({"backend": "pyhessian", "smallest": True}, "largest eigenvalues only"),
        ({"max_iter": 0}, "`max_iter`"),
        ({"memory": "lots"}, "`memory`"),
        ({"trace_samples": 0}, "`trace_samples`"),
        ({"loss_fn": "no_such_module_xyz:fn"}, "`loss_fn`='no_such_module_xyz:fn' could not be imported"),
        ({"loss_fn": "math.pi"}, "not a callable"),
        ({"loss_fn": "nodots"}, "import path"),
    ],
)
def test_argument_errors(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match.replace("(", r"\(").replace(")", r"\)")):
        HessianEigenMonitor(**kwargs)


def test_loss_fn_import_path_styles() -> None:
    a = HessianEigenMonitor(loss_fn="tests.callbacks._cb_helpers:mse_loss_fn")
    b = HessianEigenMonitor(loss_fn="tests.callbacks._cb_helpers.mse_loss_fn")
    assert a._loss_fn is b._loss_fn is mse_loss_fn
