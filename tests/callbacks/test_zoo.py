"""Every callback together: on every zoo module (right values, tags read back, training bit-identical without
them), and added from LightningCLI's command line."""

from __future__ import annotations

import importlib.util
import math
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from lightning_landscape import GradientNormMonitor, HessianEigenMonitor, RiskGapMonitor
from lightning_landscape.callbacks import tags
from lightning_landscape.callbacks._lightning import batches_that_stepped
from tests._shared import QUIET
from tests.callbacks._cb_helpers import TinyRegression
from tests.callbacks._events import read_layout_categories, read_scalars
from tests.callbacks.zoo import ZOO, BatchNormDropoutCNN, Entry, TinyGAN
from tests.oracle import dense_eigenvalues


class GradRecorder(pl.Callback):
    """Independent gradient norms of each optimizer's parameters, keyed by (logging step, optimizer)."""

    def __init__(self) -> None:
        self.norms: dict[tuple[int, int], float] = {}

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: Any, optimizer: Any) -> None:
        index = next(i for i, o in enumerate(trainer.optimizers) if o is optimizer)
        grads = [
            p.grad.double().flatten()
            for g in optimizer.param_groups
            for p in g["params"]
            if p.grad is not None
        ]
        self.norms[(batches_that_stepped(trainer), index)] = float(torch.cat(grads).norm())


def _fit(
    entry: Entry, callbacks: list[pl.Callback], root: Path, max_steps: int
) -> tuple[Any, pl.Trainer, torch.Tensor]:
    """Fit a fresh zoo module; returns it, the trainer and the global RNG state right after the fit."""
    pl.seed_everything(0)
    model = entry.build()
    trainer = pl.Trainer(
        default_root_dir=root,
        max_steps=max_steps,
        accelerator="cpu",
        devices=1,
        callbacks=callbacks,
        logger=TensorBoardLogger(root, name="tb") if callbacks else False,
        enable_checkpointing=False,
        log_every_n_steps=1,
        **QUIET,
    )
    trainer.fit(model, entry.loader())
    return model, trainer, torch.get_rng_state()


def _assert_same_training(
    a: tuple[Any, pl.Trainer, torch.Tensor], b: tuple[Any, pl.Trainer, torch.Tensor]
) -> None:
    (model_a, trainer_a, rng_a), (model_b, trainer_b, rng_b) = a, b
    assert torch.equal(rng_a, rng_b)
    for (name, x), (_, y) in zip(model_a.state_dict().items(), model_b.state_dict().items(), strict=True):
        assert torch.equal(x, y), name
    for (name, p), q in zip(model_a.named_parameters(), model_b.parameters(), strict=True):
        assert (p.grad is None) == (q.grad is None) and (p.grad is None or torch.equal(p.grad, q.grad)), name
        assert p.requires_grad == q.requires_grad, name
    assert [m.training for m in model_a.modules()] == [m.training for m in model_b.modules()]
    for opt_a, opt_b in zip(trainer_a.optimizers, trainer_b.optimizers, strict=True):
        sa, sb = opt_a.state_dict(), opt_b.state_dict()
        assert sa["param_groups"] == sb["param_groups"]
        for key in sa["state"]:
            for field, value in sa["state"][key].items():
                assert torch.equal(torch.as_tensor(value), torch.as_tensor(sb["state"][key][field])), (
                    key,
                    field,
                )


def _marks(entry: Entry) -> list[pytest.MarkDecorator]:
    marks = [pytest.mark.slow] if entry.name == "compiled" else []
    if entry.needs is not None and importlib.util.find_spec(entry.needs) is None:
        marks.append(pytest.mark.skip(reason=f"{entry.name} needs {entry.needs}"))
    return marks


ENTRIES = [pytest.param(name, marks=_marks(entry)) for name, entry in ZOO.items()]


@pytest.mark.parametrize("name", ENTRIES)
@pytest.mark.usefixtures("one_thread")
def test_every_callback_on_every_zoo_module(name: str, tmp_path: Path) -> None:
    entry = ZOO[name]
    steps = 4 * entry.num_optimizers  # one global step per optimizer step: 4 batches
    options = {"k": 2, "every_n_steps": steps, "smallest": True, "tol": 1e-6, **entry.hessian_kwargs}
    hessian = HessianEigenMonitor(**options)
    train_key = "d_loss" if name == "gan" else "train_loss"
    recorder = GradRecorder()
    callbacks = [
        GradientNormMonitor(granularity="parameter"),
        hessian,
        # At fixed weights the GAN's manual-optimization training_step cannot be evaluated: its d_loss can.
        RiskGapMonitor(train_key, None, loss_fn="self.d_loss" if name == "gan" else None),
        recorder,
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # no skipped or unconverged probe
        run = _fit(entry, callbacks, tmp_path / "with", steps)
    bare = _fit(entry, [], tmp_path / "without", steps)
    _assert_same_training(run, bare)

    model, trainer, _ = run
    assert trainer.logger is not None and trainer.logger.log_dir is not None
    scalars = read_scalars(trainer.logger.log_dir)
    assert not [t for t in scalars if "_orig_mod" in t]
    # Gradient norms: one series per optimizer when there are several, against an independent norm.
    opts = [None] if entry.num_optimizers == 1 else list(range(entry.num_optimizers))
    for i, opt in enumerate(opts):
        series = scalars[tags.grad_norm_total_tag(optimizer=opt)]
        assert sorted(series) == [0, 1, 2, 3]
        for step, value in series.items():
            assert value == pytest.approx(recorder.norms[(step, i)], rel=1e-5)
    assert (tags.GRAD_NORM_TOTAL in scalars) == (entry.num_optimizers == 1)
    # Hessian: one converged probe at the last step, against the dense float64 oracle.
    assert scalars[tags.HESSIAN_CONVERGED] == {3: 1.0}
    top = [scalars[tags.hessian_eig_tag(i)][3] for i in (1, 2)]
    assert top[0] >= top[1]
    if entry.oracle_loss is not None:
        batch = next(iter(entry.loader()))
        eig = dense_eigenvalues(model, entry.oracle_loss, [batch])
        scale = float(eig.abs().max())
        assert top == pytest.approx([float(eig[-1]), float(eig[-2])], rel=1e-5, abs=1e-6 * scale)
        assert scalars[tags.HESSIAN_EIG_MIN][3] == pytest.approx(float(eig[0]), abs=1e-5 * scale)
    # Risk: the module as it is (no on_epoch=True anywhere but in frozen_unused), one value per epoch.
    assert all(math.isfinite(v) for v in scalars[tags.RISK_TRAIN].values()) and scalars[tags.RISK_TRAIN]
    assert read_layout_categories(trainer.logger.log_dir) == [["grad_norm", "hessian", "risk"]]


def test_unused_parameters_force_a_zero_smallest_eigenvalue(tmp_path: Path) -> None:
    entry = ZOO["frozen_unused"]
    monitor = HessianEigenMonitor(k=1, every_n_steps=2, smallest=True, tol=1e-8)
    model, trainer, _ = _fit(entry, [monitor], tmp_path, 2)
    eig_min = read_scalars(trainer.logger.log_dir)[tags.HESSIAN_EIG_MIN][1]  # type: ignore[union-attr]
    eig = dense_eigenvalues(model, entry.oracle_loss, [next(iter(entry.loader()))])  # type: ignore[arg-type]
    # The unused head's 3 parameters have zero rows: three exact zero eigenvalues, so eig_min <= 0.
    assert int((eig.abs() < 1e-14).sum()) >= 3
    assert eig_min <= 1e-7 * float(eig[-1])
    assert eig_min == pytest.approx(float(eig[0]), abs=1e-6 * float(eig[-1]))


def test_manual_optimization_without_loss_fn_is_refused_at_setup(tmp_path: Path) -> None:
    trainer = pl.Trainer(
        default_root_dir=tmp_path,
        max_steps=2,
        callbacks=[HessianEigenMonitor()],
        logger=False,
        accelerator="cpu",
    )
    model = TinyGAN()
    before = [p.detach().clone() for p in model.parameters()]
    refusal = r"manual optimization.*Pass the loss to probe as `loss_fn`.*self.d_loss"
    with pytest.raises(MisconfigurationException, match=refusal):
        trainer.fit(model, ZOO["gan"].loader())
    assert trainer.global_step == 0
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_batchnorm_dropout_default_train_mode_warns_once(tmp_path: Path) -> None:
    entry = ZOO["bn_dropout_cnn"]
    with pytest.warns(UserWarning, match=r"BatchNorm2d, Dropout.*eval mode") as caught:
        _fit(entry, [HessianEigenMonitor(every_n_steps=1)], tmp_path, 2)
    assert len([w for w in caught if "HessianEigenMonitor" in str(w.message)]) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        HessianEigenMonitor(train_mode=False).setup(pl.Trainer(logger=False), BatchNormDropoutCNN(), "fit")
        # Dropout(p=0) and BatchNorm without running statistics compute the same in both modes: no warning.
        plain = TinyRegression(dropout=0.0)
        plain.net.append(torch.nn.BatchNorm1d(1, track_running_stats=False).double())
        HessianEigenMonitor().setup(pl.Trainer(logger=False), plain, "fit")


def test_probe_under_bf16_mixed_runs_in_float32(tmp_path: Path) -> None:
    """The stated behaviour: autocast off in the probe, so bf16-mixed training still probes in float32."""
    entry = ZOO["boring"]
    pl.seed_everything(0)
    model = entry.build()
    logger = TensorBoardLogger(tmp_path, name="tb")
    trainer = pl.Trainer(
        max_steps=2,
        accelerator="cpu",
        precision="bf16-mixed",
        callbacks=[HessianEigenMonitor(every_n_steps=2, tol=1e-6)],
        logger=logger,
        enable_checkpointing=False,
        **QUIET,
    )
    trainer.fit(model, entry.loader())
    eig = dense_eigenvalues(model, entry.oracle_loss, [next(iter(entry.loader()))])  # type: ignore[arg-type]
    logged = read_scalars(logger.log_dir)[tags.hessian_eig_tag(1)][1]
    assert logged == pytest.approx(float(eig[-1]), rel=1e-5)  # bf16 would be off by ~1e-2


def test_a_gan_picks_its_loss_by_method_name(tmp_path: Path) -> None:
    entry = ZOO["gan"]
    d_probe = HessianEigenMonitor(every_n_steps=4, tol=1e-8, loss_fn="self.d_loss", name="d")
    g_probe = HessianEigenMonitor(every_n_steps=4, tol=1e-8, loss_fn="self.g_loss", name="g")
    model, trainer, _ = _fit(entry, [d_probe, g_probe], tmp_path, 4)
    scalars = read_scalars(trainer.logger.log_dir)  # type: ignore[union-attr]
    batch = next(iter(entry.loader()))
    for name, loss in (("d", TinyGAN.d_loss), ("g", TinyGAN.g_loss)):
        eig = dense_eigenvalues(model, loss, [batch])  # type: ignore[arg-type]
        assert scalars[tags.hessian_eig_tag(1, name=name)] == {1: pytest.approx(float(eig[-1]), rel=1e-6)}


def test_a_missing_loss_method_is_refused_at_setup(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"`loss_fn`='self.1x' must name a method"):
        HessianEigenMonitor(loss_fn="self.1x")
    trainer = pl.Trainer(
        default_root_dir=tmp_path,
        max_steps=2,
        callbacks=[RiskGapMonitor(full_train_risk=True, loss_fn="self.gen_loss", val_key=None)],
        logger=False,
        accelerator="cpu",
    )
    with pytest.raises(MisconfigurationException, match=r"no method 'gen_loss'.*\['d_loss', 'g_loss'\]"):
        trainer.fit(TinyGAN(), ZOO["gan"].loader())
    assert trainer.global_step == 0


@pytest.mark.slow
def test_lightning_cli_adds_the_monitors_from_the_command_line(
    tmp_path: Path, subprocess_env: dict[str, str]
) -> None:
    code = (
        "from lightning.pytorch.cli import LightningCLI; import tests.callbacks._cb_helpers as h; "
        "LightningCLI(h.TinyRegression, h.TinyData)"
    )
    args = [
        "fit",
        f"--trainer.default_root_dir={tmp_path}",
        "--trainer.max_steps=4",
        "--trainer.accelerator=cpu",
        "--trainer.enable_progress_bar=false",
        "--trainer.log_every_n_steps=1",
        "--trainer.logger=TensorBoardLogger",
        f"--trainer.logger.save_dir={tmp_path}",
        "--trainer.callbacks+=lightning_landscape.HessianEigenMonitor",
        "--trainer.callbacks.init_args.k=3",
        "--trainer.callbacks.init_args.every_n_steps=2",
        "--trainer.callbacks+=lightning_landscape.GradientNormMonitor",
        "--trainer.callbacks.init_args.norm_type=inf",
        "--trainer.callbacks+=lightning_landscape.RiskGapMonitor",
        "--trainer.callbacks.init_args.optimal_risk=0.0",
    ]
    proc = subprocess.run(
        [sys.executable, "-c", code, *args],
        env=subprocess_env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    scalars = read_scalars(tmp_path)
    assert sorted(scalars[tags.hessian_eig_tag(3)]) == [1, 3]
    assert scalars[tags.hessian_eig_tag(1)][3] >= scalars[tags.hessian_eig_tag(3)][3]
    assert sorted(scalars[tags.GRAD_NORM_TOTAL]) == [0, 1, 2, 3]
