"""Before the first seed: the folder takes files, the monitor is logged, or the run is refused naming why."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import torch
from _tiny import QUIET, TinyRegressor, loaders

from lightning_landscape.multiseed import MultiSeedConfig
from lightning_landscape.multiseed.build import ObjectBuilder
from lightning_landscape.multiseed.executors import SeedJob
from lightning_landscape.multiseed.preflight import check_root_dir, preflight


def _run(root: Path, monitor: str, **trainer_kwargs: Any) -> None:
    train, val = loaders()
    kwargs = {"max_epochs": 3, **QUIET, **trainer_kwargs}
    config = MultiSeedConfig(seeds=[4], monitor=monitor, root_dir=root, trainer_kwargs=kwargs)
    job = SeedJob(str(root), monitor, "min", kwargs, ObjectBuilder("class", TinyRegressor), None, train, val)
    root.mkdir(exist_ok=True)
    preflight(job, config)


def test_check_root_dir_creates_the_folder_and_refuses_what_cannot_be_one(tmp_path: Path) -> None:
    check_root_dir(tmp_path / "a" / "b")
    assert (tmp_path / "a" / "b").is_dir() and not list((tmp_path / "a" / "b").iterdir())
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="exists and is not a directory"):
        check_root_dir(tmp_path / "file")
    with pytest.raises(ValueError, match="is not writable"):
        check_root_dir(tmp_path / "file" / "sub")
    if os.geteuid() != 0:  # root writes anywhere
        (tmp_path / "ro").mkdir(mode=0o500)
        with pytest.raises(ValueError, match="is not writable"):
            check_root_dir(tmp_path / "ro")


def test_a_logged_monitor_passes_and_leaves_no_files(tmp_path: Path) -> None:
    _run(tmp_path / "run", "val_loss")
    _run(tmp_path / "run", "train_loss")
    assert list((tmp_path / "run").iterdir()) == []


def test_a_monitor_never_logged_is_refused_naming_what_is(tmp_path: Path) -> None:
    with pytest.raises(
        ValueError, match=r"`monitor='val_los'` is never logged; the module logs \[.*'val_loss'"
    ):
        _run(tmp_path / "run", "val_los")
    assert list((tmp_path / "run").iterdir()) == []


@pytest.mark.skipif(torch.backends.mps.is_available(), reason="needs an accelerator that is not there")
def test_a_configuration_that_cannot_train_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="the configuration cannot train"):
        _run(tmp_path / "run", "val_loss", accelerator="mps")
