"""GradientNoiseScaleMonitor: the logged noise scale against the closed forms of linear regression, the three
sources of the two batch sizes against each other (chunks of a batch, micro-batches, DDP ranks), no side
effects on training, resume of the moving averages."""

from __future__ import annotations

import math
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch.utils.data import DataLoader, TensorDataset

from lightning_landscape import GradientNoiseScaleMonitor
from lightning_landscape.callbacks import tags as _tags
from lightning_landscape.callbacks._noise_estimators import chunk_gradient_norms, unbiased_estimates
from lightning_landscape.callbacks._probe import TrainingStepLoss
from tests.callbacks._events import read_scalars
from tests.callbacks._noise_helpers import LinReg, Stream, closed_form, finite_data, interleaved_loader

B_SIMPLE, GRAD_SQ, TRACE = _tags.NOISE_SCALE_B_SIMPLE, _tags.NOISE_SCALE_GRAD_SQ, _tags.NOISE_SCALE_TRACE_COV


class WeightsAtProbes(Callback):
    """The weights each probe sees (on_before_optimizer_step runs before the step moves them)."""

    def __init__(self) -> None:
        self.w: dict[int, torch.Tensor] = {}

    def on_before_optimizer_step(self, trainer: pl.Trainer, pl_module: Any, optimizer: Any) -> None:
        self.w[trainer.global_step] = pl_module.w.detach().clone()


def _fit(
    trainer_kwargs: dict[str, Any], loader: DataLoader, callbacks: list[Callback], model: LinReg, **kw: Any
) -> dict[str, dict[int, float]]:
    logger = TensorBoardLogger(trainer_kwargs["default_root_dir"], name="tb")
    trainer = pl.Trainer(callbacks=callbacks, logger=logger, **{**trainer_kwargs, **kw})
    trainer.fit(model, loader)
    return read_scalars(logger.log_dir)


@pytest.mark.parametrize(
    ("num_chunks", "decay", "start"), [(256, 0.98, 50), pytest.param(8, 0.99, 100, marks=pytest.mark.slow)]
)
def test_logged_noise_scale_matches_the_closed_form_over_a_run(
    trainer_kwargs: dict[str, Any], num_chunks: int, decay: float, start: int
) -> None:
    # Fresh population samples each step; the weights move (|e|^2 from 4 to about 1.8), so the truth is the
    # same moving average applied to the closed forms at the weights of each probe. Every logged value from
    # step `start` on is within 10 % (measured: at most 3.8 % per sample, 5.5 % with 8 chunks, whose
    # estimates are noisier and get the longer average).
    rel, steps = 0.10, 300
    monitor = GradientNoiseScaleMonitor(every_n_steps=1, ema_decay=decay, num_chunks=num_chunks, log_raw=True)
    record = WeightsAtProbes()
    loader = DataLoader(Stream(seed=num_chunks), batch_size=256)
    scalars = _fit(trainer_kwargs, loader, [monitor, record], LinReg(lr=0.002), max_steps=steps)
    assert monitor.num_estimates == steps
    num = {"g": 0.0, "t": 0.0}
    den = 0.0
    raw_err = {"g": 0.0, "t": 0.0}
    for step in range(steps):
        g, t = closed_form(record.w[step])
        num["g"], num["t"], den = decay * num["g"] + g, decay * num["t"] + t, decay * den + 1
        want_g, want_t = num["g"] / den, num["t"] / den
        raw_err["g"] += scalars[_tags.noise_scale_tag(_tags.GRAD_SQ, raw=True)][step] - g
        raw_err["t"] += scalars[_tags.noise_scale_tag(_tags.TRACE_COV, raw=True)][step] - t
        if step < start:  # the first averages hold few estimates
            continue
        assert scalars[GRAD_SQ][step] == pytest.approx(want_g, rel=rel), step
        assert scalars[TRACE][step] == pytest.approx(want_t, rel=rel), step
        assert scalars[B_SIMPLE][step] == pytest.approx(want_t / want_g, rel=rel), step
    assert (
        closed_form(record.w[steps - 1])[0] < 0.5 * closed_form(record.w[0])[0]
    )  # the run moved the weights
    # Unbiased: the single-step estimates' mean error over the run is small against the values (|G|^2 >= 1.8,
    # tr(Sigma) >= 13).
    assert abs(raw_err["g"]) / steps < 0.1
    assert abs(raw_err["t"]) / steps < 0.5


def test_micro_batches_under_accumulation_equal_chunks_of_the_batch(trainer_kwargs: dict[str, Any]) -> None:
    # Two micro-batches of 4 consecutive samples = one batch of 8 cut into 2 chunks: same steps, same numbers.
    x, y = finite_data(64)

    def run(batch_size: int, accumulate: int, root: Path) -> dict[str, dict[int, float]]:
        monitor = GradientNoiseScaleMonitor(every_n_steps=2, ema_decay=0.5, num_chunks=2, log_raw=True)
        loader = DataLoader(TensorDataset(x, y), batch_size=batch_size)
        kwargs = {**trainer_kwargs, "default_root_dir": root}
        return _fit(
            kwargs, loader, [monitor], LinReg(lr=0.05), max_steps=8, accumulate_grad_batches=accumulate
        )

    split = run(8, 1, trainer_kwargs["default_root_dir"] / "split")
    micro = run(4, 2, trainer_kwargs["default_root_dir"] / "micro")
    for tag in (B_SIMPLE, GRAD_SQ, TRACE, _tags.noise_scale_tag(_tags.TRACE_COV, raw=True)):
        assert sorted(split[tag]) == [0, 2, 4, 6], tag
        for step, value in split[tag].items():
            assert micro[tag][step] == pytest.approx(value, rel=1e-5), (tag, step)


@pytest.mark.slow
def test_ddp_two_processes_equal_one_process(tmp_path: Path, trainer_kwargs: dict[str, Any]) -> None:
    here = Path(__file__).parent
    env = {
        **__import__("os").environ,
        "PYTHONPATH": f"{here}:{here.parent.parent}",
        "OMP_NUM_THREADS": "1",
    }
    proc = subprocess.run(
        [sys.executable, str(here / "_ddp_noise_scale.py"), str(tmp_path / "ddp")],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "rank 0 estimates 4" in proc.stdout and "rank 1 estimates 4" in proc.stdout, proc.stdout
    ddp = read_scalars(tmp_path / "ddp")
    pl.seed_everything(3)
    monitor = GradientNoiseScaleMonitor(every_n_steps=2, ema_decay=0.5, num_chunks=2, log_raw=True)
    kwargs = {**trainer_kwargs, "default_root_dir": tmp_path / "single"}
    single = _fit(kwargs, interleaved_loader(64, 8), [monitor], LinReg(lr=0.05), max_steps=8)
    for tag in (B_SIMPLE, GRAD_SQ, TRACE, _tags.noise_scale_tag(_tags.GRAD_SQ, raw=True)):
        assert sorted(ddp[tag]) == sorted(single[tag]) == [0, 2, 4, 6], tag
        for step, value in single[tag].items():
            assert ddp[tag][step] == pytest.approx(value, rel=1e-5), (tag, step)


def test_training_is_unchanged_by_the_monitor(trainer_kwargs: dict[str, Any]) -> None:
    # Dropout draws from the global RNG in every step: any RNG, grad or mode leak would change the run.
    def run(callbacks: list[Callback], root: str) -> tuple[torch.Tensor, dict[int, float]]:
        pl.seed_everything(7)
        model = LinReg(lr=0.05, dropout=0.3)
        loader = DataLoader(TensorDataset(*finite_data(64)), batch_size=16, shuffle=True)
        kwargs = {**trainer_kwargs, "default_root_dir": trainer_kwargs["default_root_dir"] / root}
        scalars = _fit(kwargs, loader, callbacks, model, max_steps=9)
        return model.w.detach().clone(), scalars["train_loss"]

    w0, loss0 = run([], "plain")
    w1, loss1 = run([GradientNoiseScaleMonitor(every_n_steps=2)], "monitored")
    assert torch.equal(w0, w1)
    assert loss0 == loss1


def test_chunk_norms_leave_model_grads_and_rng_as_found() -> None:
    model = LinReg(dropout=0.5)
    model.train()
    x, y = finite_data(16)
    model.w.grad = torch.ones(4, dtype=torch.float64)
    grad, rng = model.w.grad, torch.get_rng_state()
    norms = chunk_gradient_norms(model, TrainingStepLoss(), (x, y), 4)
    assert norms is not None and (norms.b_small, norms.b_big) == (4, 16)
    assert model.w.grad is grad and torch.equal(grad, torch.ones(4, dtype=torch.float64))
    assert torch.equal(torch.get_rng_state(), rng) and model.training and model.drop.training
    # Against plain autograd per chunk (no dropout: deterministic).
    plain = LinReg()
    norms = chunk_gradient_norms(plain, TrainingStepLoss(), (x, y), 4)
    chunk_grads = []
    for i in range(4):
        xs, ys = x[4 * i : 4 * i + 4], y[4 * i : 4 * i + 4]
        (g,) = torch.autograd.grad(0.5 * ((xs @ plain.w - ys) ** 2).mean(), [plain.w])
        chunk_grads.append(g)
    G = torch.stack(chunk_grads)
    assert norms is not None
    assert norms.small_sq == pytest.approx(float(G.pow(2).sum(1).mean()), rel=1e-12)
    assert norms.big_sq == pytest.approx(float(G.mean(0).pow(2).sum()), rel=1e-12)
    assert plain.w.grad is None


def test_vmap_fallback_loops_over_chunks() -> None:
    x, y = finite_data(12)
    model = LinReg()
    vec = chunk_gradient_norms(model, TrainingStepLoss(), (x, y), 3)
    loop = chunk_gradient_norms(model, TrainingStepLoss(), (x, y), 3, vectorize=False)
    assert vec is not None and loop is not None
    assert loop.small_sq == pytest.approx(vec.small_sq, rel=1e-12)
    assert loop.big_sq == pytest.approx(vec.big_sq, rel=1e-12)
    # A remainder is left out; a batch of one sample gives nothing.
    odd = chunk_gradient_norms(model, TrainingStepLoss(), (x[:11], y[:11]), 3)
    assert odd is not None and (odd.b_small, odd.b_big) == (3, 9)
    assert chunk_gradient_norms(model, TrainingStepLoss(), (x[:1], y[:1]), 3) is None


@pytest.mark.parametrize("num_chunks", [16, 4])
def test_estimators_are_unbiased_at_fixed_weights(num_chunks: int) -> None:
    # 1000 independent batches of 16 at one w: the mean estimate is within 10 % (about 4 standard errors) of
    # the closed form, where the naive |G_B|^2 is off by tr(Sigma) / 16 = 1.5 against |G|^2 = 4 (37 %).
    model = LinReg()
    want_g, want_t = closed_form(model.w)
    stream = iter(DataLoader(Stream(seed=11), batch_size=16))
    sums, naive = [0.0, 0.0], 0.0
    n = 1000
    for _ in range(n):
        norms = chunk_gradient_norms(model, TrainingStepLoss(), next(stream), num_chunks)
        assert norms is not None
        g, t = unbiased_estimates(norms.small_sq, norms.big_sq, norms.b_small, norms.b_big)
        sums[0], sums[1], naive = sums[0] + g, sums[1] + t, naive + norms.big_sq
    assert sums[0] / n == pytest.approx(want_g, rel=0.10)
    assert sums[1] / n == pytest.approx(want_t, rel=0.10)
    assert naive / n == pytest.approx(want_g + want_t / 16, rel=0.10)
    assert abs(naive / n - want_g) > 0.3 * want_g


def test_unbiased_estimates_closed_form_and_checks() -> None:
    g2, tr = 2.5, 40.0
    assert unbiased_estimates(g2 + tr / 4, g2 + tr / 32, 4, 32) == pytest.approx((g2, tr), rel=1e-12)
    with pytest.raises(ValueError, match="0 < b_small < b_big"):
        unbiased_estimates(1.0, 1.0, 8, 8)


def test_resume_restores_the_moving_averages(trainer_kwargs: dict[str, Any], tmp_path: Path) -> None:
    x, y = finite_data(32)

    def trainer(root: str, epochs: int, monitor: GradientNoiseScaleMonitor, **kw: Any) -> pl.Trainer:
        kwargs = {**trainer_kwargs, "default_root_dir": tmp_path / root, "enable_checkpointing": True}
        ckpt = ModelCheckpoint(dirpath=tmp_path / root / "ckpt", save_last=True)
        return pl.Trainer(callbacks=[monitor, ckpt], max_epochs=epochs, logger=False, **{**kwargs, **kw})

    def loader() -> DataLoader:
        return DataLoader(TensorDataset(x, y), batch_size=8)

    full = GradientNoiseScaleMonitor(every_n_steps=1, ema_decay=0.7)
    trainer("full", 4, full).fit(LinReg(lr=0.05), loader())
    first = GradientNoiseScaleMonitor(every_n_steps=1, ema_decay=0.7)
    trainer("resumed", 2, first).fit(LinReg(lr=0.05), loader())
    ckpt = str(tmp_path / "mid.ckpt")
    shutil.copy(tmp_path / "resumed/ckpt/last.ckpt", ckpt)
    second = GradientNoiseScaleMonitor(every_n_steps=1, ema_decay=0.7)
    trainer("resumed", 4, second).fit(LinReg(lr=0.05), loader(), ckpt_path=ckpt)
    assert (first.num_estimates, second.num_estimates, full.num_estimates) == (8, 16, 16)
    # The resumed averages continue from the saved ones: the same as one uninterrupted run.
    a, b = second.state_dict(), full.state_dict()
    assert a["num_estimates"] == b["num_estimates"] == 16
    for key in ("grad_sq", "trace_cov"):
        assert a[key]["count"] == b[key]["count"] == 16
        assert a[key]["mean"] == pytest.approx(b[key]["mean"], rel=1e-9)

    class Forgetful(GradientNoiseScaleMonitor):
        def load_state_dict(self, state_dict: dict[str, Any]) -> None:
            pass

    # Without the saved state the resumed averages differ: the comparison above can fail.
    forgetful = Forgetful(every_n_steps=1, ema_decay=0.7)
    trainer("forgetful", 4, forgetful).fit(LinReg(lr=0.05), loader(), ckpt_path=ckpt)
    assert forgetful.state_dict()["trace_cov"]["count"] == 8
    assert forgetful.state_dict()["trace_cov"]["mean"] != pytest.approx(b["trace_cov"]["mean"], rel=1e-3)


def test_bad_arguments_and_manual_optimization_are_refused(trainer_kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="`every_n_steps` must be an integer >= 1"):
        GradientNoiseScaleMonitor(every_n_steps=0)
    with pytest.raises(ValueError, match=r"`ema_decay` must be a number in \[0, 1\)"):
        GradientNoiseScaleMonitor(ema_decay=1.0)
    with pytest.raises(ValueError, match="`num_chunks` must be an integer >= 2"):
        GradientNoiseScaleMonitor(num_chunks=1)
    with pytest.raises(ValueError, match="`name` must be None"):
        GradientNoiseScaleMonitor(name="a/b")

    class Manual(LinReg):
        def __init__(self) -> None:
            super().__init__()
            self.automatic_optimization = False

    trainer = pl.Trainer(callbacks=[GradientNoiseScaleMonitor()], max_steps=1, logger=False, **trainer_kwargs)
    with pytest.raises(MisconfigurationException, match="automatic_optimization is False"):
        trainer.fit(Manual(), DataLoader(TensorDataset(*finite_data(8)), batch_size=4))


def test_two_monitors_have_their_own_tags_and_state_keys(trainer_kwargs: dict[str, Any]) -> None:
    a = GradientNoiseScaleMonitor(every_n_steps=1)
    b = GradientNoiseScaleMonitor(every_n_steps=2, num_chunks=4, name="coarse")
    assert a.state_key != b.state_key
    loader = DataLoader(TensorDataset(*finite_data(64)), batch_size=16)
    scalars = _fit(trainer_kwargs, loader, [a, b], LinReg(lr=0.01), max_steps=4)
    assert sorted(scalars[TRACE]) == [0, 1, 2, 3]
    assert sorted(scalars["noise_scale/coarse/trace_cov"]) == [0, 2]
    assert all(math.isfinite(v) for v in scalars[TRACE].values())
