"""The examples: analytic targets and risks, the data stream, the models' contracts, plain-Python runs."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from torch import nn

from examples.digits import DigitsDataModule, DigitsMLP
from examples.shallow_relu import (
    ShallowReLU,
    ShallowReLUDataModule,
    population_risk,
    target_function,
    teacher_network,
)

ROOT = Path(__file__).resolve().parents[1]


def _quiet_trainer(tmp_path: Path, **kwargs) -> pl.Trainer:
    kwargs.setdefault("logger", False)
    return pl.Trainer(
        default_root_dir=tmp_path,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        accelerator="cpu",
        **kwargs,
    )


def _tb_scalars(log_dir: str) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(log_dir, size_guidance={"scalars": 0})
    acc.Reload()
    return {t: [(e.step, e.value) for e in acc.Scalars(t)] for t in acc.Tags()["scalars"]}


# --- targets and the population risk -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "formula"),
    [
        ("quadratic", lambda x: x**2 + 2 * x),
        ("sin3", lambda x: math.sin(3 * x)),
        ("x4sin", lambda x: x**4 * math.sin(x)),
    ],
)
def test_targets_match_their_formulas(name, formula):
    xs = [0.0, 0.13, 0.5, 0.77, 1.0]
    got = target_function(name)(torch.tensor(xs, dtype=torch.float64)[:, None]).squeeze(1).tolist()
    assert got == pytest.approx([formula(x) for x in xs], rel=1e-12, abs=1e-15)


def test_population_risk_of_zero_network_is_the_integral_of_f_squared():
    # ∫_0^1 (x^2 + 2x)^2 dx = 1/5 + 1 + 4/3 and ∫_0^1 sin(3x)^2 dx = 1/2 - sin(6)/12
    zero = lambda x: torch.zeros_like(x)  # noqa: E731
    assert population_risk(zero, target_function("quadratic")) == pytest.approx(1 / 5 + 1 + 4 / 3, rel=1e-8)
    assert population_risk(zero, target_function("sin3")) == pytest.approx(0.5 - math.sin(6) / 12, rel=1e-8)


def test_teacher_is_realized_exactly_by_a_wider_student_so_the_optimal_risk_is_zero():
    width = 4
    teacher = teacher_network(width=width, seed=1234)
    kinks = (-teacher[0].bias / teacher[0].weight.squeeze(1)).tolist()
    assert all(0.1 <= k <= 0.9 for k in kinks)  # every unit bends inside the input domain
    student = ShallowReLU(hidden=[20])
    with torch.no_grad():
        for p in student.net.parameters():
            p.zero_()
        student.net[0].weight[:width] = teacher[0].weight
        student.net[0].bias[:width] = teacher[0].bias
        student.net[2].weight[:, :width] = teacher[2].weight
        student.net[2].bias.copy_(teacher[2].bias)
    dm = ShallowReLUDataModule(target="teacher", teacher_width=width)
    assert dm.optimal_risk == 0.0
    assert population_risk(student.net, dm.target) < 1e-12
    x, y = dm.val_dataloader().dataset.tensors
    assert float(student.loss_on_batch(student.net, (x, y))) < 1e-12
    # A student that is off by a constant c has risk c^2 exactly.
    with torch.no_grad():
        student.net[2].bias += 0.1
    assert population_risk(student.net, dm.target) == pytest.approx(0.01, rel=1e-5)


def test_val_loss_on_the_midpoint_grid_is_the_population_risk():
    dm = ShallowReLUDataModule(target="sin3", val_size=4096)
    pl.seed_everything(3, verbose=False)
    model = ShallowReLU(hidden=[20])
    x, y = dm.val_dataloader().dataset.tensors
    with torch.no_grad():
        val = float(model.loss_on_batch(model.net, (x, y)))
    exact = population_risk(model.net, dm.target, num_points=400_000)
    assert val == pytest.approx(exact, rel=1e-4)
    # Random validation samples only estimate it.
    dm_mc = ShallowReLUDataModule(target="sin3", val_size=4096, val_grid=False)
    x_mc, _ = dm_mc.val_dataloader().dataset.tensors
    assert x_mc.min() >= 0 and x_mc.max() <= 1 and not torch.equal(x_mc, x)


# --- the online data stream ---------------------------------------------------------------------------


def test_online_stream_is_fresh_per_step_and_reproducible_per_seed():
    def first_batches(seed: int, n: int = 3) -> list[torch.Tensor]:
        dm = ShallowReLUDataModule(target="quadratic", batch_size=1024, steps_per_epoch=n, seed=seed)
        return [x for x, _ in dm.train_dataloader()]

    a, b, c = first_batches(0), first_batches(0), first_batches(1)
    assert len(a) == 3 and a[0].shape == (1024, 1)
    assert all(torch.equal(u, v) for u, v in zip(a, b, strict=True))
    assert not torch.equal(a[0], a[1])
    assert not torch.equal(a[0], c[0])
    assert float(a[0].min()) >= 0.0 and float(a[0].max()) <= 1.0
    # The stream does not depend on the global RNG (that decides the initialization only).
    torch.manual_seed(123)
    assert torch.equal(first_batches(0)[0], a[0])
    # A second epoch draws new samples.
    dm = ShallowReLUDataModule(steps_per_epoch=1)
    first = next(iter(dm.train_dataloader()))[0]
    second = next(iter(dm.train_dataloader()))[0]
    assert not torch.equal(first, second)
    _, y = next(iter(dm.train_dataloader()))
    assert y.shape == (1024, 1)


# --- the models ----------------------------------------------------------------------------------------


def test_shallow_relu_qualifies_for_vectorization_and_is_seeded_by_seed_everything():
    pl.seed_everything(7, verbose=False)
    a = ShallowReLU(hidden=[50, 50], init="xavier")
    pl.seed_everything(7, verbose=False)
    b = ShallowReLU(hidden=[50, 50], init="xavier")
    assert isinstance(a.net, nn.Module)
    assert sum(p.numel() for p in a.parameters()) == sum(p.numel() for p in a.net.parameters()) == 2701
    assert all(torch.equal(p, q) for p, q in zip(a.net.parameters(), b.net.parameters(), strict=True))
    batch = (torch.rand(16, 1), torch.rand(16, 1))
    expected = torch.nn.functional.mse_loss(a.net(batch[0]), batch[1])
    assert torch.equal(a.loss_on_batch(a.net, batch), expected)
    assert torch.equal(a.training_step(batch, 0), expected)


def test_he_and_xavier_initialization_scales():
    pl.seed_everything(0, verbose=False)
    he = ShallowReLU(hidden=[2000], init="he")
    xavier = ShallowReLU(hidden=[2000], init="xavier")
    # Second layer: fan_in 2000, fan_out 1: He std sqrt(2/2000), Xavier std sqrt(2/2001).
    assert float(he.net[2].weight.std()) == pytest.approx(math.sqrt(2 / 2000), rel=0.1)
    assert float(xavier.net[2].weight.std()) == pytest.approx(math.sqrt(2 / 2001), rel=0.1)
    # First layer: fan_in 1: He std sqrt(2), Xavier std sqrt(2/2001).
    assert float(he.net[0].weight.std()) == pytest.approx(math.sqrt(2), rel=0.1)
    assert float(xavier.net[0].weight.std()) == pytest.approx(math.sqrt(2 / 2001), rel=0.1)


def test_adam_learning_rate_is_halved_every_n_steps_in_a_real_trainer(tmp_path):
    model = ShallowReLU(hidden=[4], optimizer="adam", lr=0.01, lr_halve_every=5)
    trainer = _quiet_trainer(tmp_path, max_steps=12, limit_val_batches=0)
    trainer.fit(model, datamodule=ShallowReLUDataModule(batch_size=32, steps_per_epoch=4))
    assert trainer.global_step == 12
    assert isinstance(trainer.optimizers[0], torch.optim.Adam)
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.01 * 0.5**2)
    sgd = ShallowReLU(optimizer="sgd", lr=0.05).configure_optimizers()
    assert isinstance(sgd, torch.optim.SGD) and sgd.param_groups[0]["lr"] == 0.05


def test_digits_accuracy_in_tensorboard_matches_an_independent_count(tmp_path):
    pl.seed_everything(0, verbose=False)
    dm = DigitsDataModule(batch_size=64, val_fraction=0.2, seed=0)
    model = DigitsMLP(hidden=[32], lr=3e-3)
    logger = TensorBoardLogger(str(tmp_path), name="", version="")
    trainer = _quiet_trainer(
        tmp_path, max_epochs=2, logger=logger, num_sanity_val_steps=0, log_every_n_steps=5
    )
    trainer.fit(model, datamodule=dm)
    scalars = _tb_scalars(logger.log_dir)
    assert {"train_loss_step", "train_loss_epoch", "val_loss", "val_acc"} <= set(scalars)
    x, y = dm._val.tensors  # type: ignore[union-attr]
    assert len(y) == round(0.2 * 1797)
    with torch.no_grad():
        logits = model.net(x)
    acc = float((logits.argmax(1) == y).double().mean())
    loss = float(torch.nn.functional.cross_entropy(logits, y))
    assert scalars["val_acc"][-1][1] == pytest.approx(acc, abs=1e-6)
    assert scalars["val_loss"][-1][1] == pytest.approx(loss, rel=1e-4)  # batch means, size-weighted
    assert acc > 0.5  # two epochs of Adam already learn the digits


# --- bad input -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("build", "argument"),
    [
        (lambda: ShallowReLUDataModule(target="cubic"), "target"),  # type: ignore[arg-type]
        (lambda: ShallowReLUDataModule(batch_size=0), "batch_size"),
        (lambda: ShallowReLUDataModule(steps_per_epoch=-1), "steps_per_epoch"),
        (lambda: ShallowReLUDataModule(val_size=1.5), "val_size"),  # type: ignore[arg-type]
        (lambda: ShallowReLU(hidden=[]), "hidden"),
        (lambda: ShallowReLU(hidden=[20, 0]), "hidden"),
        (lambda: ShallowReLU(init="kaiming"), "init"),  # type: ignore[arg-type]
        (lambda: ShallowReLU(optimizer="rmsprop"), "optimizer"),  # type: ignore[arg-type]
        (lambda: ShallowReLU(lr=-0.01), "lr"),
        (lambda: ShallowReLU(lr=float("nan")), "lr"),
        (lambda: ShallowReLU(lr_halve_every=-5), "lr_halve_every"),
        (lambda: target_function("cos"), "target"),
        (lambda: teacher_network(width=0), "width"),
        (lambda: DigitsDataModule(val_fraction=1.5), "val_fraction"),
        (lambda: DigitsDataModule(batch_size=0), "batch_size"),
        (lambda: DigitsMLP(hidden=[-3]), "hidden"),
        (lambda: DigitsMLP(lr=0), "lr"),
    ],
)
def test_bad_arguments_raise_a_value_error_naming_argument_and_value(build, argument):
    with pytest.raises(ValueError, match=f"`{argument}`") as info:
        build()
    assert "got" in str(info.value)


# --- plain Python ------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(
    ("script", "args", "expect"),
    [
        ("shallow_relu.py", ["--max_steps", "10", "--target", "sin3"], "population risk"),
        ("digits.py", ["--max_epochs", "1"], "val_acc"),
    ],
)
def test_examples_run_from_plain_python(tmp_path, script, args, expect):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / script), *args, "--root_dir", str(tmp_path)],
        cwd=tmp_path,  # not the repository root: the scripts must find their own imports
        capture_output=True,
        text=True,
        timeout=240,
        env={**__import__("os").environ, "OMP_NUM_THREADS": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert expect in proc.stdout
    assert list(tmp_path.rglob("events.out.tfevents.*"))


def test_bias_init_zero_starts_every_bias_at_zero_and_a_bad_value_is_named():
    pl.seed_everything(0, verbose=False)
    model = ShallowReLU(hidden=[5, 5], bias_init="zero")
    assert all(float(m.bias.detach().abs().max()) == 0.0 for m in model.net if isinstance(m, nn.Linear))
    with pytest.raises(ValueError, match="`bias_init` must be 'normal' or 'zero', got 'ones'"):
        ShallowReLU(bias_init="ones")  # type: ignore[arg-type]
