"""The one weights-only way to read a checkpoint: what loads, what is refused (naming the file), what fits."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from lightning_landscape.multiseed.checkpoints import (
    SafeCheckpointIO,
    check_checkpoint,
    load_checkpoint,
    load_weights,
    read_checkpoint,
    recorded_score,
    remove_stray_checkpoints,
)
from lightning_landscape.multiseed.record import RecordError
from lightning_landscape.multiseed.result import SeedRun


class _Marker:
    """Unpickling this touches a file: evidence that a load ran code."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> Any:
        return (Path.touch, (self.path,))


def _lightning_like(path: Path, score: float | None = 0.25, monitor: str = "val_loss") -> Path:
    callbacks = (
        {} if score is None else {"ModelCheckpoint{}": {"monitor": monitor, "best_model_score": score}}
    )
    torch.save({"state_dict": {"w": torch.ones(2)}, "callbacks": callbacks, "global_step": 4}, path)
    return path


def _torch_bytes() -> bytes:
    buffer = io.BytesIO()
    torch.save({"state_dict": {"w": torch.ones(100)}}, buffer)
    return buffer.getvalue()


def test_what_lightning_checkpoints_hold_loads_with_weights_only(tmp_path: Path) -> None:
    path = tmp_path / "plain.ckpt"
    hparams = {"lr": 0.1, "data_dir": Path("data/x"), "sizes": [1, 2]}
    torch.save({"state_dict": {"w": torch.ones(2)}, "hyper_parameters": hparams}, path)
    loaded = load_checkpoint(path)
    assert loaded["hyper_parameters"] == hparams and torch.equal(loaded["state_dict"]["w"], torch.ones(2))


@pytest.mark.parametrize(
    ("write", "match"),
    [
        (None, "the checkpoint is missing"),
        (lambda p: p.write_bytes(_torch_bytes()[:100]), "not a readable checkpoint"),  # truncated
        (lambda p: p.write_text("not a torch file"), "holds objects that torch refuses"),
        (
            lambda p: torch.save({"weights": torch.ones(1)}, p),
            r"not a Lightning checkpoint \(no 'state_dict'\)",
        ),
    ],
)
def test_an_unusable_file_is_refused_naming_it(tmp_path: Path, write: Any, match: str) -> None:
    path = tmp_path / "x.ckpt"
    if write is not None:
        write(path)
    with pytest.raises(RecordError, match=match) as info:
        load_checkpoint(path)
    assert str(path) in str(info.value)
    assert check_checkpoint(path, "val_loss", None) == str(info.value)


def test_a_crafted_file_runs_no_code_whichever_way_it_is_read(tmp_path: Path) -> None:
    marker, path = tmp_path / "pwned", tmp_path / "x.ckpt"
    torch.save({"state_dict": {}, "payload": _Marker(marker)}, path)
    for read in (read_checkpoint, load_checkpoint, lambda p: load_weights(p, nn.Linear(1, 1))):
        with pytest.raises(RecordError, match="holds objects that torch refuses"):
            read(path)
    with pytest.raises(Exception, match=r"weights_only|Unsupported global|not allowed"):
        SafeCheckpointIO().load_checkpoint(path)
    assert not marker.exists()


def test_check_checkpoint_compares_the_recorded_score(tmp_path: Path) -> None:
    path = _lightning_like(tmp_path / "x.ckpt", score=0.25)
    assert recorded_score(load_checkpoint(path), "val_loss") == 0.25
    assert recorded_score(load_checkpoint(path), "train_loss") is None
    assert check_checkpoint(path, "val_loss", 0.25) is None
    assert check_checkpoint(path, "val_loss", 0.25 * (1 + 1e-8)) is None  # within rel_tol 1e-6
    problem = check_checkpoint(path, "val_loss", 0.3)
    assert problem is not None and "holds val_loss=0.25, but the record says 0.3" in problem
    assert check_checkpoint(_lightning_like(tmp_path / "y.ckpt", score=None), "val_loss", 0.3) is None


@pytest.mark.parametrize("lightning", [True, False])
def test_load_weights_fills_a_copy_of_the_template(tmp_path: Path, lightning: bool) -> None:
    torch.manual_seed(0)
    source, template = nn.Linear(3, 2), nn.Linear(3, 2)
    before = [p.detach().clone() for p in template.parameters()]
    path = tmp_path / "w.ckpt"
    torch.save({"state_dict": source.state_dict()} if lightning else source.state_dict(), path)
    loaded = load_weights(path, template)
    assert loaded is not template
    for a, b in zip(loaded.state_dict().values(), source.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert all(torch.equal(a, b) for a, b in zip(before, template.parameters(), strict=True))
    with pytest.raises(ValueError, match=f"{path} does not fit the model"):
        load_weights(path, nn.Linear(2, 2))
    torch.save([1, 2], tmp_path / "list.ckpt")
    with pytest.raises(ValueError, match="holds no state dict"):
        load_weights(tmp_path / "list.ckpt", template)


def test_safe_checkpoint_io_writes_atomically_and_rebases_a_moved_folder(tmp_path: Path) -> None:
    old = tmp_path / "old" / "seed_0" / "checkpoints"
    new = tmp_path / "new" / "seed_0" / "checkpoints"
    state = {
        "dirpath": str(old),
        "best_model_path": str(old / "a.ckpt"),
        "best_k_models": {str(old / "a.ckpt"): 1},
    }
    SafeCheckpointIO().save_checkpoint({"state_dict": {}, "callbacks": {"cb": state}}, new / "last.ckpt")
    assert [p.name for p in new.iterdir()] == ["last.ckpt"]  # no temporary left
    loaded = SafeCheckpointIO(dirpath=new).load_checkpoint(new / "last.ckpt")["callbacks"]["cb"]
    real = str(new.resolve())
    assert loaded["dirpath"] == real and loaded["best_model_path"] == f"{real}/a.ckpt"
    assert list(loaded["best_k_models"]) == [f"{real}/a.ckpt"]
    with pytest.raises(FileNotFoundError):
        SafeCheckpointIO().load_checkpoint(new / "missing.ckpt")


def test_stray_top_k_files_are_removed_and_the_best_and_last_kept(tmp_path: Path) -> None:
    folder = tmp_path / "seed_3" / "checkpoints"
    folder.mkdir(parents=True)
    names = ["epoch=1-step=8.ckpt", "epoch=2-step=12.ckpt", "last.ckpt", "mine.ckpt"]
    for name in names:
        (folder / name).write_bytes(b"x")
    run = SeedRun(3, "finished", 0.1, best_model_path=str(folder / "epoch=1-step=8.ckpt"))
    assert [p.name for p in remove_stray_checkpoints(tmp_path, run)] == ["epoch=2-step=12.ckpt"]
    assert sorted(p.name for p in folder.iterdir()) == ["epoch=1-step=8.ckpt", "last.ckpt", "mine.ckpt"]
