"""MultiSeedTrainer on a real Trainer with a 1-16-1 MLP: selection, determinism, files, resume, faults."""

from __future__ import annotations

import csv
import filecmp
import json
import logging
import math
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import _tiny
import pytest
import torch
from _tiny import QUIET, DieOnceInWorker, TinyData, TinyRegressor, loaders, val_loss
from lightning.pytorch import LightningModule
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2
from torch import nn

from lightning_landscape.multiseed import MultiSeedResult, MultiSeedTrainer
from lightning_landscape.multiseed.paths import SUMMARY_JSON
from lightning_landscape.multiseed.record import write_summary_json

HERE = Path(__file__).parent
EPOCHS = 3


def fit(root: Path, seeds: Any = 3, model: Any = TinyRegressor, **kwargs: Any) -> MultiSeedResult:
    return _tiny.fit(root, seeds, model, epochs=EPOCHS, **kwargs)


def reload_score(path: str | Path, **model_kwargs: Any) -> float:
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    model = TinyRegressor(**model_kwargs)
    model.load_state_dict(checkpoint["state_dict"])
    return val_loss(model, loaders()[1])


def seed_dirs(root: Path) -> list[str]:
    return sorted(p.name for p in root.glob("seed_*")) if root.exists() else []


def test_best_seed_is_chosen_and_best_ckpt_reloads_to_its_score(tmp_path: Path) -> None:
    result = fit(tmp_path, seeds=3)
    assert [r.seed for r in result.runs] == [0, 1, 2]
    assert all(r.status == "finished" for r in result.runs)
    # Ground truth: every seed's checkpoint, reloaded outside Lightning, gives the recorded score.
    recomputed = {r.seed: reload_score(r.best_model_path) for r in result.runs}
    for run in result.runs:
        assert recomputed[run.seed] == pytest.approx(run.score, rel=1e-5, abs=1e-7)
    assert len(set(recomputed.values())) == 3, "distinct seeds must give distinct models"
    assert result.best_seed == min(recomputed, key=lambda s: recomputed[s])
    assert result.best_score == min(r.score for r in result.runs)
    assert result.best_model_path == str(tmp_path / "best.ckpt")
    assert filecmp.cmp(result.best_model_path, result.runs[result.best_seed].best_model_path, shallow=False)
    assert reload_score(result.best_model_path) == pytest.approx(result.best_score, rel=1e-5)
    best = TinyRegressor.load_from_checkpoint(result.best_model_path, weights_only=True)
    assert val_loss(best, loaders()[1]) == pytest.approx(result.best_score, rel=1e-5)
    scores = [r.score for r in result.runs]
    assert result.mean == pytest.approx(sum(scores) / 3)
    assert result.min == min(scores) and result.max == max(scores)


def test_mode_max_picks_the_highest(tmp_path: Path) -> None:
    result = fit(tmp_path, seeds=[4, 5], mode="max")
    assert result.best_score == max(r.score for r in result.runs)
    # Each seed's score is its own highest val_loss over the epochs.
    ea = EventAccumulator(str(tmp_path / f"seed_{result.best_seed}"))
    ea.Reload()
    assert result.best_score == pytest.approx(max(e.value for e in ea.Scalars("val_loss")), rel=1e-6)


def test_same_seed_same_score(tmp_path: Path) -> None:
    first = fit(tmp_path / "a", seeds=[0, 7])
    again = fit(tmp_path / "b", seeds=[7])
    assert again.runs[0].score == first.runs[1].score
    assert first.runs[0].score != first.runs[1].score


def test_files_summary_csv_png_and_hparams(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO):
        result = fit(tmp_path, seeds=2)
    assert "best so far" in caplog.text and "[MultiSeedTrainer 2/2]" in caplog.text
    summary = json.loads((tmp_path / SUMMARY_JSON).read_text())
    assert summary["best_seed"] == result.best_seed and summary["best_score"] == result.best_score
    assert [r["status"] for r in summary["runs"]] == ["finished", "finished"]
    assert summary["stats"]["mean"] == pytest.approx(result.mean)
    rows = list(csv.DictReader((tmp_path / "summary.csv").open()))
    assert [float(r["score"]) for r in rows] == [r.score for r in result.runs]
    assert (tmp_path / "seeds.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(tmp_path.glob(".*.tmp"))
    for run in result.runs:
        folder = tmp_path / f"seed_{run.seed}"
        assert (folder / "checkpoints" / "last.ckpt").is_file()
        ea = EventAccumulator(str(folder))
        ea.Reload()
        assert len(ea.Scalars("val_loss")) == EPOCHS
        assert ea.Scalars("multiseed/score")[0].value == pytest.approx(run.score, rel=1e-6)
        content = ea.PluginTagToContent("hparams")
        start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
        hparams = {k: v.ListFields()[0][1] for k, v in start.session_start_info.hparams.items()}
        assert hparams["seed"] == run.seed and hparams["monitor"] == "val_loss" and hparams["hidden"] == 16


def test_summary_json_write_is_atomic(tmp_path: Path) -> None:
    write_summary_json(tmp_path, {"runs": [1]})
    with pytest.raises(TypeError):
        write_summary_json(tmp_path, {"runs": [1, object()]})  # fails half-way through json.dump
    assert json.loads((tmp_path / SUMMARY_JSON).read_text()) == {"runs": [1]}
    assert [p.name for p in tmp_path.iterdir()] == [SUMMARY_JSON]


def test_rerun_skips_finished_seeds(tmp_path: Path) -> None:
    first = fit(tmp_path, seeds=2)
    files = {p: p.stat().st_mtime_ns for p in (tmp_path / "seed_0").rglob("*") if p.is_file()}
    second = fit(tmp_path, seeds=3)
    assert {p: p.stat().st_mtime_ns for p in files} == files
    assert [r.wall_time for r in second.runs[:2]] == [r.wall_time for r in first.runs]
    assert [r.score for r in second.runs[:2]] == [r.score for r in first.runs]
    assert second.runs[2].status == "finished"
    assert second.runs[2].score == fit(tmp_path / "fresh", seeds=[2]).runs[0].score


def test_a_seed_that_raises_is_recorded_and_the_others_continue(tmp_path: Path) -> None:
    result = fit(tmp_path, seeds=3, model_kwargs={"fail_on_seed": 1})
    statuses = [r.status for r in result.runs]
    assert statuses == ["finished", "failed", "finished"]
    assert "broken on purpose" in result.runs[1].error
    assert result.best_seed in (0, 2)
    assert result.best_score == min(result.runs[0].score, result.runs[2].score)
    assert len(result.scores) == 2


def test_all_seeds_failing_raises_with_each_reason(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="all 2 seeds failed") as info:
        fit(tmp_path, seeds=2, model_kwargs={"nan": True})
    assert "seed 0:" in str(info.value) and "seed 1:" in str(info.value)
    # The last value, not the checkpoint's initial best (inf), says what went wrong.
    assert "never finite (last value nan)" in str(info.value) and "inf" not in str(info.value)
    summary = json.loads((tmp_path / SUMMARY_JSON).read_text())
    assert [r["status"] for r in summary["runs"]] == ["failed", "failed"]
    assert not (tmp_path / "best.ckpt").exists()


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"seeds": 0}, ValueError, "`seeds` must be at least 1"),
        ({"seeds": []}, ValueError, "`seeds` must be at least 1"),
        ({"seeds": [1, 2, 1]}, ValueError, r"duplicates \[1\]"),
        ({"seeds": [-1]}, ValueError, "`seeds` must lie in"),
        ({"seeds": "3"}, TypeError, "`seeds`"),
        ({"seeds": True}, TypeError, "`seeds`"),
        ({"seeds": [1.5]}, TypeError, "integers only"),
        ({"mode": "best"}, ValueError, "`mode` must be one of"),
        ({"executor": "dask"}, ValueError, "`executor` must be one of"),
        ({"monitor": ""}, ValueError, "`monitor`"),
        ({"cpus_per_seed": -1}, ValueError, "`cpus_per_seed` must be >= 0"),
        ({"gpus_per_seed": 1.5}, ValueError, "`gpus_per_seed` above 1"),
        ({"max_concurrent": 0}, ValueError, "`max_concurrent`"),
        ({"max_retries": -2}, ValueError, "`max_retries`"),
        ({"model_kwargs": [1]}, TypeError, "`model_kwargs`"),
        ({"default_root_dir": "x"}, ValueError, "`default_root_dir` is set by MultiSeedTrainer"),
        ({"enable_checkpointing": False}, ValueError, "`enable_checkpointing=False`"),
        ({"fast_dev_run": True}, ValueError, "`fast_dev_run=True`"),
        ({"logger": "tb"}, ValueError, "`logger` must be"),
        ({"callbacks": "x"}, TypeError, "`callbacks`"),
        ({"not_a_trainer_arg": 1}, TypeError, "not_a_trainer_arg"),
    ],
)
def test_bad_arguments_are_refused_at_construction(
    tmp_path: Path, kwargs: dict[str, Any], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        MultiSeedTrainer(root_dir=tmp_path / "run", **kwargs)
    assert not (tmp_path / "run").exists()


def test_a_logger_instance_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="one logger cannot be shared"):
        MultiSeedTrainer(root_dir=tmp_path, logger=TensorBoardLogger(tmp_path))


class UnresettableModule(LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(1))


class PlainRegressor(TinyRegressor):
    """Saves no hyperparameters: an instance can only be re-initialized through reset_parameters."""

    def __init__(self) -> None:
        LightningModule.__init__(self)
        self.lr, self.fail_on_seed, self.nan, self.seed = 0.05, -2, False, -1
        self.nan_from_epoch = -1
        self.net = nn.Sequential(nn.Linear(1, 16), nn.Tanh(), nn.Linear(16, 1))


@pytest.mark.parametrize(
    ("fit_kwargs", "error", "match"),
    [
        ({"model": 42}, TypeError, "`model` must be"),
        ({"model": nn.Linear}, TypeError, "`model` must be a LightningModule class"),
        ({"model": UnresettableModule()}, TypeError, "save_hyperparameters"),
        ({"model": TinyRegressor(), "model_kwargs": {"hidden": 4}}, TypeError, "`model_kwargs` applies"),
        ({"datamodule": 3}, TypeError, "`datamodule` must be"),
        ({"datamodule": TinyData}, ValueError, "either `datamodule` or `train_dataloaders`"),
        ({"root": "file/sub"}, ValueError, "`root_dir` .* is not writable"),
        ({"root": "file"}, ValueError, "`root_dir` .* is not a directory"),
        ({"monitor": "val_los"}, ValueError, r"`monitor='val_los'` is never logged.*'val_loss'"),
    ],
)
def test_bad_fit_inputs_fail_before_any_seed_trains(
    tmp_path: Path, fit_kwargs: dict[str, Any], error: type[Exception], match: str
) -> None:
    (tmp_path / "file").write_text("not a folder")
    root = tmp_path / fit_kwargs.pop("root", "run")
    train, val = loaders()
    model = fit_kwargs.pop("model", TinyRegressor)
    datamodule = fit_kwargs.pop("datamodule", None)
    trainer = MultiSeedTrainer(seeds=2, root_dir=root, max_epochs=1, **QUIET, **fit_kwargs)
    with pytest.raises(error, match=match):
        trainer.fit(model, datamodule=datamodule, train_dataloaders=train, val_dataloaders=val)
    assert seed_dirs(root) == []


def test_rerun_with_another_monitor_is_refused(tmp_path: Path) -> None:
    fit(tmp_path, seeds=1)
    with pytest.raises(ValueError, match="holds a run with monitor='val_loss'"):
        fit(tmp_path, seeds=1, monitor="train_loss")


def test_model_forms_give_the_same_seeded_models(tmp_path: Path) -> None:
    by_class = fit(tmp_path / "class", seeds=[3], model_kwargs={"hidden": 8}).runs[0].score
    instance = TinyRegressor(hidden=8)
    before = [p.detach().clone() for p in instance.parameters()]
    # Rebuilt from save_hyperparameters() after the seed is set: the very model the class path builds.
    assert fit(tmp_path / "instance", seeds=[3], model=instance).runs[0].score == by_class
    assert all(torch.equal(a, b) for a, b in zip(before, instance.parameters(), strict=True))
    assert (
        fit(tmp_path / "factory", seeds=[3], model=lambda: TinyRegressor(hidden=8)).runs[0].score == by_class
    )


def test_instance_without_hparams_is_reinitialized_per_seed(tmp_path: Path) -> None:
    class_scores = fit(tmp_path / "class", seeds=[0, 1], model=PlainRegressor).scores
    instance = PlainRegressor()
    before = [p.detach().clone() for p in instance.parameters()]
    reset_scores = fit(tmp_path / "reset", seeds=[0, 1], model=instance).scores
    # reset_parameters() draws in construction order, so each seed matches a freshly built module.
    assert reset_scores == class_scores and reset_scores[0] != reset_scores[1]
    assert all(torch.equal(a, b) for a, b in zip(before, instance.parameters(), strict=True))


def test_datamodule_class_and_instance(tmp_path: Path) -> None:
    expected = fit(tmp_path / "loaders", seeds=[2]).runs[0].score
    assert fit(tmp_path / "cls", seeds=[2], datamodule=TinyData).runs[0].score == expected
    assert fit(tmp_path / "inst", seeds=[2], datamodule=TinyData()).runs[0].score == expected


def test_vectorized_executor_dispatch(tmp_path: Path) -> None:
    result = fit(tmp_path, seeds=2, executor="vectorized")
    assert [r.extra.get("executor") for r in result.runs] == ["vectorized"] * 2
    scores = {r.seed: r.score for r in result.runs}
    assert scores[0] != scores[1]
    assert result.best_seed == min(scores, key=lambda s: scores[s])  # type: ignore[arg-type,return-value]
    assert (tmp_path / "best.ckpt").is_file() and (tmp_path / SUMMARY_JSON).is_file()


@pytest.mark.slow
def test_ray_executor_matches_sequential(tmp_path: Path) -> None:
    ray = pytest.importorskip("ray")
    marker = tmp_path / "worker_died"
    # The same callback in both runs; it only ever kills a Ray worker, once, in seed 2, at step 5: after
    # the end-of-epoch-1 checkpoint (4 batches per epoch), so the retry has a last.ckpt to resume from.
    trainer = {"callbacks": [DieOnceInWorker(seed=2, marker=str(marker), step=5)]}
    expected = fit(tmp_path / "seq", seeds=3, trainer=trainer).scores
    path = os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])
    ray.init(num_cpus=2, include_dashboard=False, runtime_env={"env_vars": {"PYTHONPATH": path}})
    try:
        result = fit(
            tmp_path / "ray", seeds=3, executor="ray", max_concurrent=2, max_retries=1, trainer=trainer
        )
    finally:
        ray.shutdown()
    assert marker.exists(), "the worker of seed 2 was not killed: the retry went untested"
    # Ray re-ran seed 2 after its worker died; the retry resumed and gives the uninterrupted score.
    assert result.runs[2].extra["resumed_from"].endswith("last.ckpt")
    assert "resumed_from" not in result.runs[1].extra
    assert result.scores == pytest.approx(expected, rel=1e-6)
    assert [r.status for r in result.runs] == ["finished"] * 3
    assert (tmp_path / "ray" / "best.ckpt").is_file() and (tmp_path / "ray" / "seeds.png").is_file()
    ea = EventAccumulator(str(tmp_path / "ray" / "seed_1"))
    ea.Reload()
    assert "multiseed/score" in ea.Tags()["scalars"]


def _job(root: Path, record: Path, kill: bool) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DROP": "0.2"}
    env.pop("MULTISEED_KILL_SEED", None)
    if kill:
        # 4 batches per epoch: the last checkpoint before step 10 is the end of epoch 2 (step 8).
        env.update(MULTISEED_KILL_SEED="1", MULTISEED_KILL_STEP="10")
    cmd = [sys.executable, str(HERE / "_kill_job.py"), str(root), str(record)]
    return subprocess.run(cmd, cwd=HERE, env=env, capture_output=True, text=True, timeout=240)


def _result(proc: subprocess.CompletedProcess[str]) -> dict[str, float]:
    line = next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))
    return json.loads(line[len("RESULT ") :])


@pytest.mark.slow
def test_sigkill_mid_seed_then_rerun_resumes(tmp_path: Path) -> None:
    reference = _job(tmp_path / "ref", tmp_path / "ref.txt", kill=False)
    assert reference.returncode == 0, reference.stderr[-3000:]

    root, record = tmp_path / "run", tmp_path / "run.txt"
    killed = _job(root, record, kill=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    summary = json.loads((root / SUMMARY_JSON).read_text())
    assert [r["status"] for r in summary["runs"]] == ["finished", "running", "pending"]
    seed0 = {p: p.stat().st_mtime_ns for p in (root / "seed_0").rglob("*") if p.is_file()}
    wall0 = summary["runs"][0]["wall_time"]
    record.write_text("")

    rerun = _job(root, record, kill=False)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert {p: p.stat().st_mtime_ns for p in seed0} == seed0, "finished seed 0 was retrained"
    final = json.loads((root / SUMMARY_JSON).read_text())
    assert final["runs"][0]["wall_time"] == wall0
    starts = [tuple(map(int, line.split())) for line in record.read_text().splitlines()]
    # The rerun's training attempts: seed 1 from its step-8 last.ckpt, seed 2 from scratch, no seed 0
    # (the first line is the monitor pre-flight, which checkpoints nothing).
    assert starts[1:] == [(1, 8), (2, 0)]
    assert final["runs"][1]["extra"]["resumed_from"].endswith("last.ckpt")
    assert _result(rerun) == _result(reference)
    assert not math.isnan(final["best_score"])
