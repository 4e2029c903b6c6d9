"""The vectorized executor against K separate Lightning fits of the same plain module (float64)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.data import DataLoader

from lightning_landscape.multiseed.executors import SeedTask
from lightning_landscape.multiseed.result import SeedRun
from lightning_landscape.multiseed.vectorized import VectorizationError, VectorizedExecutor, run_vectorized
from lightning_landscape.multiseed.vectorized import executor as executor_module
from tests.multiseed.vectorized._cases import (
    EPOCHS,
    EXECUTOR_QUIET,
    EXECUTOR_SEEDS,
    PlainRegressor,
    job,
    loaders,
    sequential,
)

SEEDS = EXECUTOR_SEEDS


def _vectorized(tmp: Path, **hparams: Any) -> list[Any]:
    kwargs = {"max_epochs": EPOCHS, "precision": "64-true", "log_every_n_steps": 1, **EXECUTOR_QUIET}
    return run_vectorized(job(tmp / "vec", PlainRegressor, kwargs, **hparams), SEEDS)


@pytest.mark.slow
def test_matches_sequential_fits_and_exports_plain_checkpoints(tmp_path: Path) -> None:
    runs = _vectorized(tmp_path)
    assert [r.seed for r in runs] == SEEDS
    _, val = loaders()
    for run in runs:
        assert run.status == "finished", run.error
        score, state = sequential(run.seed, tmp_path)
        assert run.score == pytest.approx(score, rel=1e-10, abs=1e-12)
        # An ordinary Lightning checkpoint: plain values only, loadable by the plain class alone.
        path = Path(run.best_model_path)
        assert path == tmp_path / "vec" / f"seed_{run.seed}" / "checkpoints" / "best.ckpt"
        raw = torch.load(path, weights_only=True)
        assert {"state_dict", "hyper_parameters", "pytorch-lightning_version", "epoch", "global_step"} <= set(
            raw
        )
        assert raw["state_dict"].keys() == state.keys()
        for name, tensor in state.items():
            torch.testing.assert_close(raw["state_dict"][name], tensor, rtol=0, atol=1e-12)
        # load_from_checkpoint builds float32 parameters, so the reloaded score agrees to float32 rounding.
        plain = PlainRegressor.load_from_checkpoint(path, weights_only=True)
        assert plain.hparams.hidden == 6
        assert _val_score(plain.double(), val) == pytest.approx(run.score, rel=1e-6)
        exact = PlainRegressor().double()
        exact.load_state_dict(raw["state_dict"])
        assert _val_score(exact, val) == pytest.approx(run.score, rel=1e-12)


def _val_score(model: PlainRegressor, val: DataLoader) -> float:
    with torch.no_grad():
        total = sum(float(model.loss_on_batch(model.net, b)) * len(b[0]) for b in val)
    return total / len(val.dataset)  # type: ignore[arg-type]


def test_sgd_momentum_members_match_sequential(tmp_path: Path) -> None:
    runs = _vectorized(tmp_path, optimizer="sgd", lr=0.05)
    for run in runs[:2]:
        score, state = sequential(run.seed, tmp_path, optimizer="sgd", lr=0.05)
        assert run.score == pytest.approx(score, rel=1e-10)
        exported = torch.load(run.best_model_path, weights_only=True)["state_dict"]
        for name, tensor in state.items():
            torch.testing.assert_close(exported[name], tensor, rtol=0, atol=1e-12)


def test_per_member_tags_in_tensorboard(tmp_path: Path) -> None:
    runs = _vectorized(tmp_path)
    events = EventAccumulator(str(tmp_path / "vec" / "ensemble"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    for seed in SEEDS:
        for name in ("val_loss", "train_loss", "grad_norm", "generalization_gap"):
            assert f"seed_{seed}/{name}" in tags
    for stat in ("mean", "min", "q25", "median", "q75", "max"):
        assert f"ensemble/val_loss_{stat}" in tags
    # The best logged per-member validation loss is the member's score.
    for run in runs:
        values = [e.value for e in events.Scalars(f"seed_{run.seed}/val_loss")]
        assert len(values) == EPOCHS
        assert min(values) == pytest.approx(run.score, rel=1e-6)
    means = [e.value for e in events.Scalars("ensemble/val_loss_mean")]
    per_member = [[e.value for e in events.Scalars(f"seed_{s}/val_loss")] for s in SEEDS]
    assert means[-1] == pytest.approx(sum(v[-1] for v in per_member) / len(SEEDS), rel=1e-5)
    # Each seed also gets its own event file in its folder, as the sequential executor leaves.
    own = EventAccumulator(str(tmp_path / "vec" / f"seed_{SEEDS[0]}"))
    own.Reload()
    assert [e.value for e in own.Scalars("val_loss")] == pytest.approx(per_member[0], rel=1e-6)


def _count_checks(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Every qualification the executor runs (each builds a seed-0 template), recorded."""
    checked: list[Any] = []
    original = executor_module.check_job

    def counting(job: Any) -> Any:
        checked.append(job)
        return original(job)

    monkeypatch.setattr(executor_module, "check_job", counting)
    return checked


def test_multiseed_trainer_vectorized_executor_keeps_the_best_member(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lightning_landscape.multiseed.trainer import MultiSeedTrainer

    checked = _count_checks(monkeypatch)
    train, val = loaders()
    trainer = MultiSeedTrainer(
        seeds=SEEDS[:2],
        executor="vectorized",
        root_dir=str(tmp_path / "ms"),
        max_epochs=2,
        precision="64-true",
    )
    result = trainer.fit(PlainRegressor, train_dataloaders=train, val_dataloaders=val)
    assert [r.status for r in result.runs] == ["finished", "finished"]
    assert result.best_score == min(result.scores)
    best = PlainRegressor.load_from_checkpoint(result.best_model_path, weights_only=True)
    assert isinstance(best, PlainRegressor)
    assert all(r.extra["executor"] == "vectorized" for r in result.runs)
    # The job was qualified once in the run (the trainer's check), not again when the seeds started.
    assert len(checked) == 1


def test_executor_qualifies_a_job_once_and_a_job_it_was_not_shown_before_training(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    checked = _count_checks(monkeypatch)
    kwargs = {"max_epochs": 1, "logger": False, "precision": "64-true", **EXECUTOR_QUIET}
    shown = job(tmp_path / "a", PlainRegressor, kwargs)
    executor = VectorizedExecutor()
    started: list[int] = []
    results: list[SeedRun] = []
    executor.check(shown)
    executor.run(shown, [SeedTask(3), SeedTask(4)], lambda t: started.append(t.seed), results.append)
    assert checked == [shown]
    assert started == [3, 4] and [r.status for r in results] == ["finished", "finished"]
    # A job run without check() is still qualified first, and refused before any seed starts.
    unshown = job(tmp_path / "b", PlainRegressor, kwargs, mode="max")
    with pytest.raises(VectorizationError, match="mode='max'"):
        executor.run(unshown, [SeedTask(5)], lambda t: started.append(t.seed), results.append)
    assert checked == [shown, unshown] and started == [3, 4]
