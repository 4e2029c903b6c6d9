"""HessianEigenMonitor on a real Trainer: logged values vs dense float64 Hessians, training untouched, resume,
warm starts, named monitors and per-block Hessians, convergence reports, one operator per probe, the refusals
before training, and DDP on 2 CPU processes."""

from __future__ import annotations

import math
import re
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import Tensor

from lightning_landscape import GradientNormMonitor, RiskGapMonitor
from lightning_landscape.callbacks import tags
from lightning_landscape.callbacks.hessian import HessianEigenMonitor
from lightning_landscape.curvature import HessianOperator
from tests.callbacks._cb_helpers import NAN_AT_STEP, TinyRegression, make_data, make_loader, mse_loss_fn
from tests.callbacks._events import read_layout_categories, read_scalars
from tests.oracle import dense_hessian

HERE = Path(__file__).parent


class DenseTruth(pl.Callback):
    """Dense float64 Hessians (and their eigenvalues) right after the monitor, at the same weights, on the
    probe samples (the first ``num_samples`` of the unshuffled dataset), computed independently of the
    monitor's code; keyed by the step the monitor logs at (the metrics of a batch are logged at the step
    before the optimizer step's increment)."""

    def __init__(self, every_n_steps: int, num_samples: int) -> None:
        self.every_n_steps = every_n_steps
        self.x, self.y = make_data(64)
        self.num_samples = num_samples
        self.hessians: dict[int, Tensor] = {}
        self.eigenvalues: dict[int, Tensor] = {}

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: Any, *args: Any) -> None:
        step = trainer.global_step
        if step % self.every_n_steps == 0:
            batch = (self.x[: self.num_samples], self.y[: self.num_samples])
            self.hessians[step - 1] = dense_hessian(pl_module, mse_loss_fn, [batch])
            self.eigenvalues[step - 1] = torch.linalg.eigvalsh(self.hessians[step - 1])


# -- values against the dense oracle, training untouched, resume, skipped probes ---------------------------


def test_logged_eigenvalues_match_dense_hessian(tmp_path: Path, trainer_kwargs: dict[str, Any]) -> None:
    pl.seed_everything(0)
    monitor = HessianEigenMonitor(k=3, every_n_steps=3, smallest=True, trace=True, num_batches=2, tol=1e-8)
    recorder = DenseTruth(every_n_steps=3, num_samples=16)
    logger = TensorBoardLogger(tmp_path, name="tb")
    trainer = pl.Trainer(max_epochs=2, callbacks=[monitor, recorder], logger=logger, **trainer_kwargs)
    trainer.fit(TinyRegression(), make_loader(batch_size=8, shuffle=False))

    scalars = read_scalars(logger.log_dir)
    assert sorted(scalars[tags.hessian_eig_tag(1)]) == sorted(recorder.hessians) == [2, 5, 8, 11, 14]
    for step, hessian in recorder.hessians.items():
        eig = torch.linalg.eigvalsh(hessian)
        top = eig.flip(0)[:3]
        for i in range(3):
            logged = scalars[tags.hessian_eig_tag(i + 1)][step]
            assert logged == pytest.approx(float(top[i]), rel=1e-5, abs=1e-7), (step, i)
        assert scalars[tags.HESSIAN_EIG_MIN][step] == pytest.approx(float(eig[0]), rel=1e-5, abs=1e-7)
        # Hutchinson with Rademacher probes: Var(z'Hz) = 2 (||H||_F^2 - sum_i H_ii^2), 100 samples.
        std_err = math.sqrt(2 * (hessian.pow(2).sum() - hessian.diag().pow(2).sum()) / 100)
        assert abs(scalars[tags.HESSIAN_TRACE][step] - float(hessian.trace())) < 5 * std_err + 1e-9
        assert scalars[tags.HESSIAN_NUM_PRODUCTS][step] >= 100
    assert monitor.num_probes == 5 and monitor.num_skipped == 0
    # Monitorable: the last value is in callback_metrics (not through the logger a second time).
    assert float(trainer.callback_metrics[tags.hessian_eig_tag(1)]) == pytest.approx(
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

    expected = read_scalars(full_logger.log_dir)[tags.hessian_eig_tag(2)]
    got = read_scalars(resumed_logger.log_dir)[tags.hessian_eig_tag(2)]
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
    series = read_scalars(logger.log_dir)[tags.hessian_eig_tag(1)]
    assert sorted(series) == [1, 5, 7]  # the probe at global step 4 (logged step 3) is missing
    assert all(math.isfinite(v) for v in series.values())
    assert (monitor.num_probes, monitor.num_skipped) == (3, 1)


# -- warm starts -----------------------------------------------------------------------------------------

EVERY = 2


class FreezeFirstLayer(pl.Callback):
    """Freezes the first layer after ``at_step`` steps: the number of trainable parameters drops."""

    def __init__(self, at_step: int) -> None:
        self.at_step = at_step

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: Any, *args: Any) -> None:
        if trainer.global_step == self.at_step:
            pl_module.net[0].requires_grad_(False)


def fit_warm(
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
    assert sorted(scalars[tags.hessian_eig_tag(1)]) == sorted(truth.eigenvalues)
    for step, eig in truth.eigenvalues.items():
        top = eig.flip(0)
        for i in range(2):
            logged = scalars[tags.hessian_eig_tag(i + 1)][step]
            assert logged == pytest.approx(float(top[i]), rel=1e-5, abs=1e-8), (step, i)
        if smallest:
            assert scalars[tags.HESSIAN_EIG_MIN][step] == pytest.approx(float(eig[0]), rel=1e-5, abs=1e-8)


@pytest.mark.parametrize("smallest", [False, True])
def test_warm_start_needs_fewer_products_same_values(
    tmp_path: Path, trainer_kwargs: dict[str, Any], smallest: bool
) -> None:
    cold_truth = DenseTruth(every_n_steps=EVERY, num_samples=16)
    warm_truth = DenseTruth(every_n_steps=EVERY, num_samples=16)
    cold, cold_scalars = fit_warm(tmp_path / "cold", trainer_kwargs, False, [cold_truth], smallest=smallest)
    warm, warm_scalars = fit_warm(tmp_path / "warm", trainer_kwargs, True, [warm_truth], smallest=smallest)
    check_against_truth(cold_scalars, cold_truth, smallest)
    check_against_truth(warm_scalars, warm_truth, smallest)
    # Same trajectory (the probe touches nothing): the same truths at the same steps.
    for step, eig in cold_truth.eigenvalues.items():
        assert torch.equal(eig, warm_truth.eigenvalues[step])

    cold_products = cold_scalars[tags.HESSIAN_NUM_PRODUCTS]
    warm_products = warm_scalars[tags.HESSIAN_NUM_PRODUCTS]
    steps = sorted(cold_products)
    assert len(steps) == cold.num_probes == warm.num_probes == 8
    assert warm_products[steps[0]] == cold_products[steps[0]]  # the first probe starts cold in both
    later_cold = sum(cold_products[s] for s in steps[1:])
    later_warm = sum(warm_products[s] for s in steps[1:])
    # The top pair is well separated: clearly fewer. The bottom pair sits in a tight cluster whose vectors
    # turn within it from probe to probe, so with ``smallest`` the saving is small, but still a saving.
    assert later_warm < (later_cold if smallest else 0.9 * later_cold), (later_warm, later_cold)
    assert warm.total_products < cold.total_products
    assert warm.warm_vectors is not None and cold.warm_vectors is None
    n = sum(p.numel() for p in TinyRegression(hidden=12).parameters())
    assert warm.warm_vectors.shape == ((4 if smallest else 2), n)


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
    eig_tags = [tags.hessian_eig_tag(1), tags.hessian_eig_tag(2), tags.HESSIAN_EIG_MIN]
    for tag in [*eig_tags, tags.HESSIAN_NUM_PRODUCTS]:
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
    products = old[tags.HESSIAN_NUM_PRODUCTS]
    assert products[11] > full[tags.HESSIAN_NUM_PRODUCTS][11]  # cold, then warm again
    for tag in eig_tags:
        for step, value in old[tag].items():
            assert value == pytest.approx(full[tag][step], rel=1e-5), (tag, step)


def test_warm_vectors_dropped_when_trainable_parameters_change(
    tmp_path: Path, trainer_kwargs: dict[str, Any]
) -> None:
    truth = DenseTruth(every_n_steps=EVERY, num_samples=16)
    freeze = FreezeFirstLayer(at_step=5)
    monitor, scalars = fit_warm(tmp_path, trainer_kwargs, True, [freeze, truth], max_epochs=1)
    assert monitor.num_probes == 4 and monitor.num_skipped == 0
    check_against_truth(scalars, truth, smallest=False)
    # After freezing, the Hessian is over the last layer only (12 weights + 1 bias).
    assert truth.eigenvalues[7].numel() == 13
    assert monitor.warm_vectors is not None and monitor.warm_vectors.shape == (2, 13)


def test_warm_start_flag_and_pyhessian(tmp_path: Path, trainer_kwargs: dict[str, Any]) -> None:
    # pyhessian draws its own start: the flag is ignored there and nothing is kept.
    monitor = HessianEigenMonitor(k=1, every_n_steps=2, backend="pyhessian", tol=1e-3)
    assert monitor.warm_start is True
    trainer = pl.Trainer(max_steps=4, callbacks=[monitor], logger=False, **trainer_kwargs)
    trainer.fit(TinyRegression(), make_loader(batch_size=8))
    assert monitor.num_probes == 2 and monitor.warm_vectors is None
    assert "warm_vectors" not in monitor.state_dict()


def test_power_backend_warm_start_matches_dense(tmp_path: Path, trainer_kwargs: dict[str, Any]) -> None:
    truth = DenseTruth(every_n_steps=EVERY, num_samples=16)
    pl.seed_everything(5)
    monitor = HessianEigenMonitor(k=1, every_n_steps=EVERY, num_batches=2, tol=1e-6, backend="power")
    logger = TensorBoardLogger(tmp_path, name="tb")
    trainer = pl.Trainer(max_steps=8, callbacks=[monitor, truth], logger=logger, **trainer_kwargs)
    trainer.fit(TinyRegression(hidden=12), make_loader(batch_size=8, shuffle=False))
    scalars = read_scalars(logger.log_dir)
    assert sorted(scalars[tags.hessian_eig_tag(1)]) == sorted(truth.eigenvalues) == [1, 3, 5, 7]
    for step, eig in truth.eigenvalues.items():
        assert scalars[tags.hessian_eig_tag(1)][step] == pytest.approx(float(eig[-1]), rel=1e-5)
    products = scalars[tags.HESSIAN_NUM_PRODUCTS]
    assert monitor.warm_vectors is not None and monitor.warm_vectors.shape == (1, 61)
    assert max(products[s] for s in (3, 5, 7)) < products[1]  # the first power run starts cold


# -- named monitors, blocks, convergence -----------------------------------------------------------------


def _fit_with_val(
    tmp_path: Path, callbacks: list[pl.Callback], trainer_kwargs: dict[str, Any], **kwargs: Any
) -> Any:
    logger = TensorBoardLogger(tmp_path, name="tb")
    trainer = pl.Trainer(callbacks=callbacks, logger=logger, **{**trainer_kwargs, **kwargs})
    model = TinyRegression()
    trainer.fit(model, make_loader(n=32, batch_size=8), make_loader(n=16, batch_size=8, seed=1))
    return model, trainer, read_scalars(logger.log_dir), logger.log_dir


def test_two_named_monitors_of_one_kind_write_separate_series(
    tmp_path: Path, trainer_kwargs: dict[str, Any]
) -> None:
    train = HessianEigenMonitor(k=1, every_n_steps=4, tol=1e-8)
    val = HessianEigenMonitor(k=1, every_n_steps=4, tol=1e-8, dataloader="val", name="val")
    assert train.state_key != val.state_key
    norms = [GradientNormMonitor(), GradientNormMonitor(norm_type="inf", name="max", per_layer=False)]
    model, _, s, log_dir = _fit_with_val(tmp_path, [train, val, *norms], trainer_kwargs, max_steps=4)
    x, y = make_data(16, seed=1)
    want_val = float(torch.linalg.eigvalsh(dense_hessian(model, mse_loss_fn, [(x[:8], y[:8])]))[-1])
    x, y = make_data(32)
    want_train = float(torch.linalg.eigvalsh(dense_hessian(model, mse_loss_fn, [(x[:8], y[:8])]))[-1])
    assert s[tags.hessian_eig_tag(1)] == {3: pytest.approx(want_train, rel=1e-6)}
    assert s[tags.hessian_eig_tag(1, name="val")] == {3: pytest.approx(want_val, rel=1e-6)}
    assert abs(want_val - want_train) > 1e-3  # two different series, not one interleaved
    assert sorted(s[tags.grad_norm_total_tag(name="max")]) == sorted(s[tags.GRAD_NORM_TOTAL]) == [0, 1, 2, 3]
    assert not [t for t in s if t.startswith("grad_norm/max/net")]
    assert read_layout_categories(log_dir) == [["grad_norm", "grad_norm/max", "hessian", "hessian/val"]]


def test_per_block_and_selected_parameters_against_dense_blocks(
    tmp_path: Path, trainer_kwargs: dict[str, Any]
) -> None:
    blocks = HessianEigenMonitor(k=2, every_n_steps=4, smallest=True, tol=1e-8, blocks=["net.0", "net.3"])
    head = HessianEigenMonitor(k=1, every_n_steps=4, tol=1e-8, params=r"^net\.3\.", name="head")
    model, _, s, _ = _fit_with_val(tmp_path, [blocks, head], trainer_kwargs, max_steps=4)
    x, y = make_data(32)
    batch = (x[:8], y[:8])
    full = dense_hessian(model, mse_loss_fn, [batch])
    for block, names in [
        ("net.0", ["net.0.weight", "net.0.bias"]),
        ("net.3", ["net.3.weight", "net.3.bias"]),
    ]:
        eig = torch.linalg.eigvalsh(dense_hessian(model, mse_loss_fn, [batch], names=names))
        assert s[tags.hessian_eig_tag(1, block=block)][3] == pytest.approx(float(eig[-1]), rel=1e-6)
        assert s[tags.hessian_eig_tag(2, block=block)][3] == pytest.approx(float(eig[-2]), rel=1e-6)
        assert s[tags.hessian_tag(tags.EIG_MIN, block=block)][3] == pytest.approx(float(eig[0]), abs=1e-7)
        assert s[tags.hessian_tag(tags.CONVERGED, block=block)][3] == 1.0
    # The blocks are diagonal blocks of the full Hessian, and the full one is logged as well.
    assert s[tags.hessian_eig_tag(1)][3] == pytest.approx(float(torch.linalg.eigvalsh(full)[-1]), rel=1e-6)
    head_eig = torch.linalg.eigvalsh(full[-5:, -5:])  # net.3 holds the last 4 + 1 parameters
    assert s[tags.hessian_eig_tag(1, name="head")][3] == pytest.approx(float(head_eig[-1]), rel=1e-6)


def test_unconverged_values_are_flagged_and_warned_once(
    tmp_path: Path, trainer_kwargs: dict[str, Any]
) -> None:
    logged = HessianEigenMonitor(k=3, every_n_steps=1, max_iter=4, smallest=True, name="log")
    skipped = HessianEigenMonitor(
        k=3, every_n_steps=1, max_iter=4, smallest=True, unconverged="skip", name="skip"
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _, _, s, _ = _fit_with_val(tmp_path, [logged, skipped], trainer_kwargs, max_steps=3)
    ours = [str(w.message) for w in caught if "did not converge" in str(w.message)]
    assert len(ours) == 2  # once per monitor, not once per probe
    assert "logged anyway" in ours[0] and "not logged" in ours[1]
    assert s[tags.hessian_tag(tags.CONVERGED, name="log")] == {0: 0.0, 1: 0.0, 2: 0.0}
    assert s[tags.hessian_tag(tags.CONVERGED, name="skip")] == {0: 0.0, 1: 0.0, 2: 0.0}
    assert len(s[tags.hessian_eig_tag(3, name="log")]) == 3
    assert tags.hessian_eig_tag(3, name="skip") not in s  # 4 Lanczos steps cannot hold 3 converged values
    assert logged.num_unconverged == skipped.num_unconverged == 3


# -- one operator per probe -------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["lanczos", "power"])
def test_one_operator_per_probe(
    monkeypatch: pytest.MonkeyPatch, trainer_kwargs: dict[str, Any], backend: str
) -> None:
    built: list[HessianOperator] = []
    original = HessianOperator.__init__

    def counting_init(self: HessianOperator, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        built.append(self)

    monkeypatch.setattr(HessianOperator, "__init__", counting_init)
    monitor = HessianEigenMonitor(
        k=2,
        every_n_steps=2,
        smallest=True,
        trace=True,
        trace_samples=10,
        density=True,
        density_iter=5,
        backend=backend,  # type: ignore[arg-type]
        max_iter=3000 if backend == "power" else None,
    )
    trainer = pl.Trainer(max_steps=4, callbacks=[monitor], logger=False, **trainer_kwargs)
    pl.seed_everything(0)
    trainer.fit(TinyRegression(), make_loader(n=32, batch_size=8))
    assert monitor.num_probes == 2
    assert len(built) == 2  # one per probe, not one per quantity (it used to be three)
    # Every product of the probe went through that one operator and is reported.
    assert monitor.total_products == sum(op.num_products for op in built)
    assert all(op.num_products > 10 + 5 for op in built)  # eigenvalues + 10 trace + 5 density products


# -- refusals: arguments in __init__, environment and model in setup, all before training ---------------


def test_refuses_sharded_strategies() -> None:
    from lightning.pytorch.strategies import FSDPStrategy

    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False)
    monitor = HessianEigenMonitor()
    fake = object.__new__(FSDPStrategy)
    trainer._accelerator_connector.strategy = fake  # type: ignore[assignment]
    with pytest.raises(MisconfigurationException, match="FSDPStrategy"):
        monitor.setup(trainer, TinyRegression(), "fit")


@pytest.mark.parametrize(
    ("kwargs", "given"),
    [
        ({"params": ["net.0"]}, "`params`=['net.0']"),
        ({"params": r"^net\.3\."}, r"`params`='^net\\.3\\.'"),
        ({"blocks": ["net.0", "net.3"]}, "`blocks`=['net.0', 'net.3']"),
        ({"params": ["net.0"], "blocks": ["net.3"]}, "`params`=['net.0'] and `blocks`=['net.3']"),
    ],
)
def test_pyhessian_with_params_or_blocks_is_refused_in_init(kwargs: dict[str, Any], given: str) -> None:
    """pyhessian differentiates by every parameter: it used to fail at the first probe with ``params`` and
    to answer ``blocks`` by power iteration without a word."""
    with pytest.raises(ValueError) as info:
        HessianEigenMonitor(backend="pyhessian", **kwargs)
    message = str(info.value)
    assert message.startswith(f"{given} cannot be used with `backend`='pyhessian'"), message
    assert "backend='lanczos'" in message
    HessianEigenMonitor(backend="lanczos", **kwargs)  # the way out the message names


def test_pyhessian_under_ddp_is_refused_at_setup(tmp_path: Path) -> None:
    """pyhessian's products are not all-reduced: on 2 processes each rank would log its own shard's values."""
    trainer = pl.Trainer(
        accelerator="cpu", devices=2, strategy="ddp", logger=False, default_root_dir=tmp_path
    )  # constructing launches nothing; setup is called as the fit would call it on each rank
    assert trainer.world_size == 2
    with pytest.raises(MisconfigurationException, match=r"`backend`='pyhessian' cannot run on 2 processes "):
        HessianEigenMonitor(backend="pyhessian").setup(trainer, TinyRegression(), "fit")
    HessianEigenMonitor(backend="lanczos").setup(trainer, TinyRegression(), "fit")
    single = pl.Trainer(accelerator="cpu", devices=1, logger=False, default_root_dir=tmp_path)
    HessianEigenMonitor(backend="pyhessian").setup(single, TinyRegression(), "fit")


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
        ({"name": "a/b"}, "`name` must be None or a non-empty str"),
        ({"params": []}, "`params` must be None, a regex"),
        ({"blocks": "net.0"}, "`blocks` must be None or a non-empty list"),
        ({"blocks": ["net 0"]}, "`blocks` must be None or a non-empty str"),
        ({"unconverged": "drop"}, "`unconverged` must be one of ('log', 'skip'), got 'drop'."),
        ({"train_mode": "yes"}, "`train_mode` must be None, False or True, got 'yes'."),
    ],
)
def test_argument_errors(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=re.escape(match)):
        HessianEigenMonitor(**kwargs)
    if "name" in kwargs:
        with pytest.raises(ValueError, match=re.escape(match)):
            GradientNormMonitor(**kwargs)


def test_loss_fn_import_path_styles() -> None:
    a = HessianEigenMonitor(loss_fn="tests.callbacks._cb_helpers:mse_loss_fn")
    b = HessianEigenMonitor(loss_fn="tests.callbacks._cb_helpers.mse_loss_fn")
    assert a._loss_fn is b._loss_fn is mse_loss_fn


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"blocks": ["net.9"]}, r"`blocks`: the prefixes \['net.9'\] selects no trainable parameter"),
        ({"params": "^head"}, r"`params`: the regex '\^head' selects no trainable parameter"),
        ({"k": 5, "blocks": ["net.3"]}, r"`k`=5 must be below the 5 parameters of `blocks`=\['net.3'\]"),
    ],
)
def test_bad_parameter_selections_are_refused_before_training(
    kwargs: dict[str, Any], match: str, trainer_kwargs: dict[str, Any]
) -> None:
    trainer = pl.Trainer(
        callbacks=[HessianEigenMonitor(**kwargs)], logger=False, max_steps=1, **trainer_kwargs
    )
    with pytest.raises(MisconfigurationException, match=match):
        trainer.fit(TinyRegression(), make_loader(n=16))
    assert trainer.global_step == 0


# -- DDP on 2 CPU processes ------------------------------------------------------------------------------


@pytest.mark.slow
def test_ddp_two_processes_match_one_process(
    tmp_path: Path, trainer_kwargs: dict[str, Any], subprocess_env: dict[str, str]
) -> None:
    proc = subprocess.run(
        [sys.executable, str(HERE / "_ddp_hessian.py"), str(tmp_path / "ddp")],
        env=subprocess_env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    # Every rank took part in every probe.
    assert "rank 0 probes 3" in proc.stdout and "rank 1 probes 3" in proc.stdout, proc.stdout
    digests = re.findall(r"rank (\d) warm (\w+)", proc.stdout)
    assert len(digests) == 2 and digests[0][1] == digests[1][1] != "none", digests
    ddp = read_scalars(tmp_path / "ddp")

    pl.seed_everything(11)
    logger = TensorBoardLogger(tmp_path / "single", name="tb")
    monitor = HessianEigenMonitor(k=3, every_n_steps=2, smallest=True, num_batches=1, tol=1e-9)
    risk = RiskGapMonitor(val_key=None, optimal_risk=0.0)
    trainer = pl.Trainer(max_steps=6, callbacks=[monitor, risk], logger=logger, **trainer_kwargs)
    trainer.fit(TinyRegression(), make_loader(n=48, batch_size=8))
    single = read_scalars(logger.log_dir)

    eig_tags = [tags.hessian_eig_tag(i) for i in (1, 2, 3)] + [tags.HESSIAN_EIG_MIN]
    for tag in eig_tags:
        assert sorted(ddp[tag]) == sorted(single[tag]) == [1, 3, 5], tag
        for step, value in single[tag].items():
            assert ddp[tag][step] == pytest.approx(value, rel=1e-6, abs=1e-8), (tag, step)
    # The epoch's training risk is the mean over both ranks' batches (each rank alone would differ).
    assert ddp[tags.RISK_TRAIN] == {5: pytest.approx(single[tags.RISK_TRAIN][5], rel=1e-6)}
    assert ddp[tags.RISK_OPTIMALITY_GAP] == ddp[tags.RISK_TRAIN]
