"""HessianEigenMonitor's warm start: fewer products, the same values as dense float64 Hessians, resume."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from torch import Tensor

from lightning_landscape import HessianEigenMonitor
from lightning_landscape.callbacks import tags as _tags
from tests.callbacks._cb_helpers import TinyRegression, make_data, make_loader
from tests.callbacks._events import read_scalars
from tests.oracle import dense_hessian

EVERY = 2


def probe_loss(model: Any, batch: Any) -> Tensor:
    x, y = batch
    return torch.nn.functional.mse_loss(model.net(x), y)


class DenseTruth(pl.Callback):
    """Dense float64 eigenvalues right after the monitor, at the same weights, on the probe samples (the first
    ``num_samples`` of the unshuffled dataset), independent of the monitor's code; keyed by logging step."""

    def __init__(self, num_samples: int) -> None:
        self.x, self.y = make_data(64)
        self.num_samples = num_samples
        self.eigenvalues: dict[int, Tensor] = {}

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: Any, *args: Any) -> None:
        step = trainer.global_step
        if step % EVERY == 0:
            batch = (self.x[: self.num_samples], self.y[: self.num_samples])
            hessian = dense_hessian(pl_module, probe_loss, [batch])
            self.eigenvalues[step - 1] = torch.linalg.eigvalsh(hessian)


class FreezeFirstLayer(pl.Callback):
    """Freezes the first layer after ``at_step`` steps: the number of trainable parameters drops."""

    def __init__(self, at_step: int) -> None:
        self.at_step = at_step

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: Any, *args: Any) -> None:
        if trainer.global_step == self.at_step:
            pl_module.net[0].requires_grad_(False)


def fit(
    root: Path,
    trainer_kwargs: dict[str, Any],
    warm_start: bool,
    extra: list[pl.Callback] | None = None,
    max_epochs: int = 2,
    smallest: bool = False,
) -> tuple[HessianEigenMonitor, dict[str, dict[int, float]]]:
    pl.seed_everything(5)
    monitor = HessianEigenMonitor(
        k=2, every_n_steps=EVERY, smallest=smallest, num_batches=2, tol=1e-6, warm_start=warm_start
    )
    logger = TensorBoardLogger(root, name="tb")
    callbacks = [monitor, *(extra or [])]
    trainer = pl.Trainer(max_epochs=max_epochs, callbacks=callbacks, logger=logger, **trainer_kwargs)
    trainer.fit(TinyRegression(hidden=12), make_loader(batch_size=8, shuffle=False))
    return monitor, read_scalars(logger.log_dir)


def check_against_truth(scalars: dict[str, dict[int, float]], truth: DenseTruth, smallest: bool) -> None:
    assert sorted(scalars[_tags.hessian_eig_tag(1)]) == sorted(truth.eigenvalues)
    for step, eig in truth.eigenvalues.items():
        top = eig.flip(0)
        for i in range(2):
            logged = scalars[_tags.hessian_eig_tag(i + 1)][step]
            assert logged == pytest.approx(float(top[i]), rel=1e-5, abs=1e-8), (step, i)
        if smallest:
            assert scalars[_tags.HESSIAN_EIG_MIN][step] == pytest.approx(float(eig[0]), rel=1e-5, abs=1e-8)


@pytest.mark.parametrize("smallest", [False, True])
def test_warm_start_needs_fewer_products_same_values(
    tmp_path: Path, trainer_kwargs: dict[str, Any], smallest: bool
) -> None:
    cold_truth, warm_truth = DenseTruth(num_samples=16), DenseTruth(num_samples=16)
    cold, cold_scalars = fit(tmp_path / "cold", trainer_kwargs, False, [cold_truth], smallest=smallest)
    warm, warm_scalars = fit(tmp_path / "warm", trainer_kwargs, True, [warm_truth], smallest=smallest)
    check_against_truth(cold_scalars, cold_truth, smallest)
    check_against_truth(warm_scalars, warm_truth, smallest)
    # Same trajectory (the probe touches nothing): the same truths at the same steps.
    for step, eig in cold_truth.eigenvalues.items():
        assert torch.equal(eig, warm_truth.eigenvalues[step])

    cold_products = cold_scalars[_tags.HESSIAN_NUM_PRODUCTS]
    warm_products = warm_scalars[_tags.HESSIAN_NUM_PRODUCTS]
    steps = sorted(cold_products)
    assert len(steps) == cold.num_probes == warm.num_probes == 8
    assert warm_products[steps[0]] == cold_products[steps[0]]  # the first probe starts cold in both
    later_cold = sum(cold_products[s] for s in steps[1:])
    later_warm = sum(warm_products[s] for s in steps[1:])
    # The top pair is well separated: clearly fewer. The bottom pair sits in a tight cluster whose vectors
    # turn within it from probe to probe, so with ``smallest`` the saving is small, but still a saving.
    assert later_warm < (later_cold if smallest else 0.9 * later_cold), (later_warm, later_cold)
    assert warm.total_products < cold.total_products
    assert warm._warm_vectors is not None and cold._warm_vectors is None
    n = sum(p.numel() for p in TinyRegression(hidden=12).parameters())
    assert warm._warm_vectors.shape == ((4 if smallest else 2), n)


def test_resume_continues_warm_series_exactly(tmp_path: Path, trainer_kwargs: dict[str, Any]) -> None:
    def run(root: Path, max_epochs: int, ckpt_path: str | None = None) -> dict[str, dict[int, float]]:
        pl.seed_everything(5)
        monitor = HessianEigenMonitor(k=2, every_n_steps=3, tol=1e-6, smallest=True)
        ckpt = ModelCheckpoint(dirpath=root / "ckpt", save_top_k=-1, every_n_epochs=1)
        logger = TensorBoardLogger(root, name="tb")
        kwargs = {**trainer_kwargs, "enable_checkpointing": True}
        trainer = pl.Trainer(max_epochs=max_epochs, callbacks=[monitor, ckpt], logger=logger, **kwargs)
        trainer.fit(TinyRegression(hidden=12), make_loader(n=40, batch_size=8), ckpt_path=ckpt_path)
        return read_scalars(logger.log_dir)

    full = run(tmp_path / "full", 4)
    run(tmp_path / "first", 2)
    ckpt_path = next((tmp_path / "first" / "ckpt").glob("epoch=1*.ckpt"))
    # The warm vectors are plain tensors in the checkpoint: it loads with weights_only=True.
    checkpoint = torch.load(ckpt_path, weights_only=True)
    (state,) = [v for k, v in checkpoint["callbacks"].items() if k.startswith("HessianEigenMonitor")]
    assert isinstance(state["warm_vectors"], Tensor) and state["warm_vectors"].device.type == "cpu"
    assert state["warm_vectors"].shape == (4, 61) and state["warm_vectors"].dtype == torch.float64

    resumed = run(tmp_path / "resumed", 4, str(ckpt_path))
    tags = [_tags.hessian_eig_tag(1), _tags.hessian_eig_tag(2), _tags.HESSIAN_EIG_MIN]
    for tag in [*tags, _tags.HESSIAN_NUM_PRODUCTS]:
        expected = {s: v for s, v in full[tag].items() if s >= 10}
        assert sorted(resumed[tag]) == sorted(expected) == [11, 14, 17], tag
        for step, value in resumed[tag].items():
            # The same start vectors as the uninterrupted run: the same products, the same Ritz values.
            assert value == pytest.approx(expected[step], rel=1e-12, abs=1e-14), (tag, step)

    # A checkpoint from before warm starts (no "warm_vectors") resumes with a cold first probe.
    del checkpoint["callbacks"][next(k for k in checkpoint["callbacks"] if k.startswith("HessianEigen"))][
        "warm_vectors"
    ]
    old_path = tmp_path / "old.ckpt"
    torch.save(checkpoint, old_path)
    old = run(tmp_path / "old", 4, str(old_path))
    products = old[_tags.HESSIAN_NUM_PRODUCTS]
    assert products[11] > full[_tags.HESSIAN_NUM_PRODUCTS][11]  # cold, then warm again
    for tag in tags:
        for step, value in old[tag].items():
            assert value == pytest.approx(full[tag][step], rel=1e-5), (tag, step)


def test_warm_vectors_dropped_when_trainable_parameters_change(
    tmp_path: Path, trainer_kwargs: dict[str, Any]
) -> None:
    truth = DenseTruth(num_samples=16)
    monitor, scalars = fit(tmp_path, trainer_kwargs, True, [FreezeFirstLayer(at_step=5), truth], max_epochs=1)
    assert monitor.num_probes == 4 and monitor.num_skipped == 0
    check_against_truth(scalars, truth, smallest=False)
    # After freezing, the Hessian is over the last layer only (12 weights + 1 bias).
    assert truth.eigenvalues[7].numel() == 13
    assert monitor._warm_vectors is not None and monitor._warm_vectors.shape == (2, 13)


def test_warm_start_flag_and_pyhessian(tmp_path: Path, trainer_kwargs: dict[str, Any]) -> None:
    # pyhessian draws its own start: the flag is ignored there and nothing is kept.
    monitor = HessianEigenMonitor(k=1, every_n_steps=2, backend="pyhessian", tol=1e-3)
    assert monitor.warm_start is True
    trainer = pl.Trainer(max_steps=4, callbacks=[monitor], logger=False, **trainer_kwargs)
    trainer.fit(TinyRegression(), make_loader(batch_size=8))
    assert monitor.num_probes == 2 and monitor._warm_vectors is None
    assert "warm_vectors" not in monitor.state_dict()


def test_power_backend_warm_start_matches_dense(tmp_path: Path, trainer_kwargs: dict[str, Any]) -> None:
    truth = DenseTruth(num_samples=16)
    pl.seed_everything(5)
    monitor = HessianEigenMonitor(k=1, every_n_steps=EVERY, num_batches=2, tol=1e-6, backend="power")
    logger = TensorBoardLogger(tmp_path, name="tb")
    trainer = pl.Trainer(max_steps=8, callbacks=[monitor, truth], logger=logger, **trainer_kwargs)
    trainer.fit(TinyRegression(hidden=12), make_loader(batch_size=8, shuffle=False))
    scalars = read_scalars(logger.log_dir)
    assert sorted(scalars[_tags.hessian_eig_tag(1)]) == sorted(truth.eigenvalues) == [1, 3, 5, 7]
    for step, eig in truth.eigenvalues.items():
        assert scalars[_tags.hessian_eig_tag(1)][step] == pytest.approx(float(eig[-1]), rel=1e-5)
    products = scalars[_tags.HESSIAN_NUM_PRODUCTS]
    assert monitor._warm_vectors is not None and monitor._warm_vectors.shape == (1, 61)
    assert max(products[s] for s in (3, 5, 7)) < products[1]  # the first power run starts cold
