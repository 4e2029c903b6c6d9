"""Resume planning on crafted run folders: which record is continued, and what each seed does next."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import torch
from _tiny import TinyRegressor

from lightning_landscape.multiseed import MultiSeedConfig
from lightning_landscape.multiseed.build import ObjectBuilder
from lightning_landscape.multiseed.executors import SeedJob
from lightning_landscape.multiseed.paths import last_checkpoint, seed_dir
from lightning_landscape.multiseed.plan import adopt, config_changes, describe, fingerprint, plan
from lightning_landscape.multiseed.record import Record
from lightning_landscape.multiseed.result import SeedRun


def _job(root: Path, **trainer_kwargs: object) -> SeedJob:
    model = ObjectBuilder("class", TinyRegressor, {"hidden": 4})
    return SeedJob(str(root), "val_loss", "min", dict(trainer_kwargs), model)


def test_the_fingerprint_holds_what_the_scores_depend_on(tmp_path: Path) -> None:
    trainer_kwargs = {"max_epochs": 2, "enable_progress_bar": False, "logger": False, "callbacks": []}
    config = MultiSeedConfig(root_dir=tmp_path, trainer_kwargs=trainer_kwargs)
    printed = fingerprint(config, _job(tmp_path, **trainer_kwargs))
    assert printed == {
        "executor": "sequential",
        "model": "_tiny.TinyRegressor",
        "model.kwargs": '{"hidden": 4}',
        "trainer.max_epochs": "2",
    }
    assert describe(object()) == '"<builtins.object>"'  # JSON text of the type's name
    assert config_changes(printed, {**printed, "trainer.max_epochs": "3"}) == ["trainer.max_epochs"]


def test_adopt_takes_a_compatible_record_and_refuses_another(tmp_path: Path) -> None:
    config = MultiSeedConfig(root_dir=tmp_path)
    new = adopt(None, config, {"a": "1"})
    assert (new.monitor, new.mode, new.fingerprint, new.runs) == ("val_loss", "min", {"a": "1"}, {})
    finished = {0: SeedRun(0, "finished", 0.5)}
    same = Record("val_loss", "min", runs=dict(finished), fingerprint={"a": "1"})
    assert adopt(same, config, {"a": "1"}) is same
    with pytest.raises(ValueError, match="holds a run with mode='max'"):
        adopt(Record("val_loss", "max", runs=dict(finished)), config, {"a": "1"})
    with pytest.raises(ValueError, match=r"another configuration \(a: 1 -> 2\)"):
        adopt(same, config, {"a": "2"})
    with pytest.warns(UserWarning, match="another configuration"):
        changed = adopt(same, MultiSeedConfig(root_dir=tmp_path, allow_config_change=True), {"a": "2"})
    assert changed.fingerprint == {"a": "2"}
    # Nothing finished: nothing ranked yet, the folder takes this run's settings.
    failed = Record("train_loss", "max", runs={0: SeedRun(0, "failed")}, extra={"x": 1})
    taken = adopt(failed, config, {"a": "3"})
    assert (taken.monitor, taken.mode, taken.extra, taken.runs[0].status) == (
        "val_loss",
        "min",
        {"x": 1},
        "failed",
    )


def test_plan_keeps_resumes_restarts_and_sets_aside(tmp_path: Path) -> None:
    root = tmp_path
    for seed in range(5):
        last_checkpoint(root, seed).parent.mkdir(parents=True)
    best0 = seed_dir(root, 0) / "checkpoints" / "best.ckpt"
    torch.save({"state_dict": {}}, best0)  # issue 22: a finished entry is kept only if its file loads
    kept = best0.read_bytes()
    torch.save({"state_dict": {}}, last_checkpoint(root, 1))
    started = time.time() - 100.0
    os.utime(last_checkpoint(root, 1), (started + 30.0, started + 30.0))
    last_checkpoint(root, 4).write_text("not a checkpoint")
    record = Record("val_loss", "min", runs={
        0: SeedRun(0, "finished", 0.1, best_model_path=str(best0)),
        1: SeedRun(1, "running", wall_time=5.0, extra={"attempt_started": started}),
        2: SeedRun(2, "finished", 0.2, best_model_path=str(seed_dir(root, 2) / "checkpoints" / "gone.ckpt")),
        # seed 3: a folder the record does not know
        4: SeedRun(4, "running"),
        7: SeedRun(7, "finished", 0.3),  # not asked for: left alone
    })  # fmt: skip
    with pytest.warns(UserWarning) as warned:
        tasks = plan(record, MultiSeedConfig(seeds=[0, 1, 2, 3, 4, 5], root_dir=root))
    assert [(t.seed, t.resume) for t in tasks] == [(1, True), (2, False), (3, False), (4, False), (5, False)]
    assert tasks[0].prior_wall_time == pytest.approx(5.0 + 30.0, abs=1e-3)
    assert record.runs[0].status == "finished" and best0.read_bytes() == kept
    assert [record.runs[s].status for s in (1, 2, 3, 4, 5)] == ["pending"] * 5
    assert record.runs[7].status == "finished"
    assert sorted(p.name.split(".orphan-")[0] for p in root.glob("seed_*.orphan-*")) == [
        "seed_2",
        "seed_3",
        "seed_4",
    ]
    messages = " ".join(str(w.message) for w in warned)
    assert "gone.ckpt' is missing" in messages and "no entry for it" in messages
    assert "not a readable checkpoint" in messages or "holds objects" in messages
    assert last_checkpoint(root, 1).is_file()  # the resumed seed keeps its files
