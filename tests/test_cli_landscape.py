"""``lightning-landscape landscape``: a plane around a checkpoint, PNG + data, checked against the library."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lightning_landscape.cli import LandscapeCLI
from lightning_landscape.landscape import LineResult, PlaneResult, loss_plane, random_directions
from tests.callbacks._cb_helpers import TinyData, TinyRegression, mse_loss_fn

MODEL = "tests.callbacks._cb_helpers.TinyRegression"
DATA = "tests.callbacks._cb_helpers.TinyData"


def _checkpoint(tmp_path: Path) -> tuple[Path, TinyRegression]:
    torch.manual_seed(3)
    model = TinyRegression()
    path = tmp_path / "model.ckpt"
    torch.save({"state_dict": model.state_dict(), "epoch": 0}, path)
    return path, model


def test_landscape_subcommand_writes_the_plane_of_the_checkpoint(tmp_path: Path) -> None:
    path, model = _checkpoint(tmp_path)
    out = tmp_path / "out"
    args = ["landscape", f"--model={MODEL}", f"--data={DATA}", f"--ckpt_path={path}", "--steps=5"]
    LandscapeCLI(args=[*args, "--span=0.5", f"--out_dir={out}"])
    plane = PlaneResult.load(out / "landscape_plane.npz")
    assert (out / "landscape_plane.png").stat().st_size > 1000
    # Independently: the same directions (seed 0) and batch on the checkpoint's weights.
    batch = next(iter(TinyData().train_dataloader()))
    ref = loss_plane(
        model, mse_loss_fn, [batch], directions=random_directions(model, 2), span=(-0.5, 0.5), steps=5
    )
    torch.testing.assert_close(plane.losses, ref.losses, atol=1e-12, rtol=0)

    LandscapeCLI(args=[*args, "--mode=line", "--directions=hessian", f"--out_dir={out}"])
    line = LineResult.load(out / "landscape_line.npz")
    assert line.losses.shape == (5,) and line.curvature is not None and line.curvature > 0


def test_landscape_subcommand_refuses_a_checkpoint_of_another_model(tmp_path: Path) -> None:
    path = tmp_path / "other.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(3)}}, path)
    with pytest.raises(SystemExit) as exc:
        LandscapeCLI(args=["landscape", f"--model={MODEL}", f"--data={DATA}", f"--ckpt_path={path}"])
    assert exc.value.code == 2
