"""LossLandscapeMonitor in a real Trainer: scalars and images read back from real event files, files on
disk, training bit-identical with and without it, resume keeps the directions."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import torch
from lightning.pytorch import Trainer
from lightning.pytorch.loggers import TensorBoardLogger

from lightning_landscape.callbacks.landscape import LossLandscapeMonitor
from lightning_landscape.callbacks.tags import (
    LANDSCAPE_CENTER_LOSS,
    LANDSCAPE_IMAGE,
    LANDSCAPE_SHARPNESS,
    LANDSCAPE_TRAJECTORY_IMAGE,
)
from lightning_landscape.landscape import LineResult, PlaneResult, loss_line
from lightning_landscape.landscape.directions import named_trainable, unflatten
from tests.callbacks._cb_helpers import TinyRegression, make_loader, mse_loss_fn
from tests.callbacks._events import read_event_tags, read_scalars


def _trainer(
    tmp_path: Path, callbacks: list[Any], trainer_kwargs: dict[str, Any], epochs: int = 3
) -> Trainer:
    logger = TensorBoardLogger(tmp_path, name="tb")
    kwargs = {**trainer_kwargs, "default_root_dir": tmp_path}
    return Trainer(logger=logger, max_epochs=epochs, callbacks=callbacks, **kwargs)


def _fit(
    tmp_path: Path, callbacks: list[Any], trainer_kwargs: dict[str, Any], epochs: int = 3
) -> tuple[TinyRegression, Trainer]:
    torch.manual_seed(0)
    model = TinyRegression()
    trainer = _trainer(tmp_path, callbacks, trainer_kwargs, epochs)
    trainer.fit(model, train_dataloaders=make_loader(n=32, batch_size=8, shuffle=True))
    return model, trainer


def test_monitor_logs_scalars_images_and_files_and_changes_nothing(
    tmp_path: Path, trainer_kwargs: dict[str, Any]
) -> None:
    monitor = LossLandscapeMonitor(every_n_epochs=1, mode="line", steps=5, span=0.5, num_batches=2)
    model, trainer = _fit(tmp_path / "with", [monitor], trainer_kwargs)
    plain, _ = _fit(tmp_path / "without", [], trainer_kwargs)
    for a, b in zip(model.state_dict().values(), plain.state_dict().values(), strict=True):
        assert torch.equal(a, b)  # training bit-identical with and without the monitor

    log_dir = Path(trainer.log_dir)  # type: ignore[arg-type]
    scalars = read_scalars(log_dir)
    assert len(scalars[LANDSCAPE_SHARPNESS]) == 3 and len(scalars[LANDSCAPE_CENTER_LOSS]) == 3
    images = read_event_tags(log_dir)["images"]
    assert LANDSCAPE_IMAGE in images and LANDSCAPE_TRAJECTORY_IMAGE in images
    # The last frame, recomputed independently at the final weights along the run's own direction.
    last = LineResult.load(log_dir / "landscape" / "epoch_2.npz")
    assert monitor._directions is not None and monitor._batches is not None
    like = named_trainable(model)
    direction = unflatten(monitor._directions[0], like)
    ref = loss_line(model, mse_loss_fn, monitor._batches, direction=direction, span=(-0.5, 0.5), steps=5)
    torch.testing.assert_close(last.losses, ref.losses, atol=1e-12, rtol=0)
    step = max(scalars[LANDSCAPE_CENTER_LOSS])
    assert scalars[LANDSCAPE_CENTER_LOSS][step] == pytest.approx(ref.center_loss, rel=1e-6)
    assert scalars[LANDSCAPE_SHARPNESS][step] == pytest.approx(ref.sharpness(0.5), rel=1e-5, abs=1e-7)
    assert trainer.callback_metrics[LANDSCAPE_SHARPNESS] is not None
    trajectory = PlaneResult.load(log_dir / "landscape" / "trajectory.npz")
    assert trajectory.path is not None and trajectory.path.shape == (3, 2)
    assert (log_dir / "landscape" / "epoch_0.png").stat().st_size > 1000


def test_monitor_plane_along_hessian_directions_resumes_with_its_directions(
    tmp_path: Path, trainer_kwargs: dict[str, Any]
) -> None:
    monitor = LossLandscapeMonitor(every_n_epochs=1, mode="plane", directions="hessian", steps=3)
    _fit(tmp_path, [monitor], trainer_kwargs, epochs=1)
    state = monitor.state_dict()
    assert len(state["directions"]) == 2 and len(state["iterates"]) == 1
    restored = LossLandscapeMonitor(every_n_epochs=1, mode="plane", directions="hessian", steps=3)
    restored.load_state_dict(state)
    torch.manual_seed(1)
    model = TinyRegression()  # other weights: fresh directions would differ
    trainer = _trainer(tmp_path / "resumed", [restored], trainer_kwargs, epochs=1)
    trainer.fit(model, train_dataloaders=make_loader(n=16, batch_size=8))
    for a, b in zip(restored._directions or [], state["directions"], strict=True):
        assert torch.equal(a, b)
    assert len(restored._iterates) == 2  # the restored iterate and this epoch's (fit end adds no step)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"every_n_epochs": 0}, "`every_n_epochs` must be an integer >= 1, got 0."),
        ({"steps": 2}, "`steps` must be an integer >= 3, got 2."),
        ({"mode": "cube"}, "`mode` must be one of ('line', 'plane'), got 'cube'."),
        ({"directions": "pca"}, "`directions` must be one of ('random', 'hessian'), got 'pca'."),
        ({"dataloader": "test"}, "`dataloader` must be one of ('train', 'val'), got 'test'."),
        ({"span": 0.0}, "`span` must be a finite number > 0, got 0.0."),
        ({"span": True}, "`span` must be a finite number > 0, got True."),
        (
            {"sharpness_radius": float("inf")},
            "`sharpness_radius` must be None or a finite number > 0, got inf.",
        ),
        ({"loss_fn": "nodots"}, "import path"),
    ],
)
def test_argument_errors(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=re.escape(match)):
        LossLandscapeMonitor(**kwargs)
