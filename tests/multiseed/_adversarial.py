"""What the adversarial run-folder tests share: a tiny model that can signal itself after training, a run
through the public API only, and snapshots that tell whether a file was kept, moved or lost.

Run as a script it is the subprocess of the signal tests: it reruns a finished folder whose post-selection
steps (the test of the winner, the barriers, the figures) send the process ``SIGNAL`` at ``SIGNAL_AT``.

Usage: python _adversarial.py ROOT_DIR   (env: SIGNAL_AT=test|barriers|report, SIGNAL=<signum>)
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
from pathlib import Path
from typing import Any

import torch
from _tiny import QUIET, TinyRegressor, loaders
from lightning.pytorch import Callback, LightningModule, Trainer
from torch import Tensor
from typing_extensions import override

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
EPOCHS = 2


def _signal_once(phase: str) -> None:
    if os.environ.get("SIGNAL_AT") == phase and not os.environ.get("_SIGNAL_SENT"):
        os.environ["_SIGNAL_SENT"] = "1"
        os.kill(os.getpid(), int(os.environ["SIGNAL"]))


class SignalModel(TinyRegressor):
    """``TinyRegressor`` with a ``test_step``; with ``SIGNAL_AT`` set it signals itself in that phase."""

    @override
    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        if self._trainer is None:  # the barriers evaluate training_step outside any Trainer
            _signal_once("barriers")
        return super().training_step(batch, batch_idx)

    @override
    def test_step(self, batch: Any, batch_idx: int) -> None:
        _signal_once("test")
        self.log("test_loss", self.loss_on_batch(self.net, batch))


class RetrainBlocked(RuntimeError):
    """Raised by :class:`NoTraining`: the run tried to train a batch."""


class NoTraining(Callback):
    """Fails any seed that trains a batch: a rerun of a finished folder must resume or refuse, not retrain
    (a seed that is legitimately set aside then shows up as failed with ``RetrainBlocked``)."""

    @override
    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, *args: Any) -> None:
        raise RetrainBlocked("this rerun tried to train a batch")


def run(root: Path, seeds: Any = 2, **kwargs: Any) -> Any:
    """A ``MultiSeedTrainer(...).fit(...)`` on the tiny data (public API only); ``trainer={...}`` adds Trainer
    arguments, ``model=`` and ``model_kwargs=`` choose the model, ``test_loader=True`` passes a test set."""
    from lightning_landscape.multiseed import MultiSeedTrainer

    trainer_kwargs = {"max_epochs": EPOCHS, "logger": False, **QUIET, **kwargs.pop("trainer", {})}
    model = kwargs.pop("model", SignalModel)
    train, val = loaders()
    test = val if kwargs.pop("test_loader", False) else None
    kwargs.setdefault("quiet", True)
    trainer = MultiSeedTrainer(seeds=seeds, root_dir=root, **kwargs, **trainer_kwargs)
    return trainer.fit(model, train_dataloaders=train, val_dataloaders=val, test_dataloaders=test)


def summary(root: Path) -> dict[str, Any]:
    return json.loads((root / "summary.json").read_text())


def write_summary(root: Path, data: Any) -> None:
    (root / "summary.json").write_text(json.dumps(data, indent=2))


def checkpoints(root: Path) -> dict[str, tuple[int, int, int]]:
    """Every checkpoint file of the folder (symlinks not followed, ``best.ckpt`` left out: it is a copy the
    run rewrites) as ``{relative path: (inode, size, mtime_ns)}``: its identity, kept by a move."""
    found = {}
    for folder, _, files in os.walk(root, followlinks=False):
        for name in files:
            path = Path(folder) / name
            if path.suffix == ".ckpt" and not path.is_symlink() and path != root / "best.ckpt":
                st = path.stat()
                found[str(path.relative_to(root))] = (st.st_ino, st.st_size, st.st_mtime_ns)
    return found


def lost(before: dict[str, tuple[int, int, int]], root: Path) -> list[str]:
    """The checkpoints of ``before`` whose file is nowhere in ``root`` any more (kept or set aside counts)."""
    now = set(checkpoints(root).values())
    return sorted(name for name, ident in before.items() if ident not in now)


def tree(folder: Path) -> dict[str, Any]:
    """Content of every entry under ``folder`` (links as their target), to tell whether anything changed."""
    out: dict[str, Any] = {}
    for path in sorted(folder.rglob("*")):
        key = str(path.relative_to(folder))
        if path.is_symlink():
            out[key] = ("link", os.readlink(path))
        elif path.is_file():
            out[key] = (hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns)
        else:
            out[key] = "dir"
    return out


def stored_score(path: str | Path, monitor: str = "val_loss") -> float | None:
    """The best ``monitor`` a Lightning checkpoint's own ModelCheckpoint state holds (the ground truth a
    record is checked against)."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    for state in (checkpoint.get("callbacks") or {}).values():
        if isinstance(state, dict) and state.get("monitor") == monitor and "best_model_score" in state:
            return float(state["best_model_score"])
    return None


class Marker:
    """Unpickling this touches a file: evidence that a load ran code from the run folder."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> Any:
        return (Path.touch, (self.path,))


def crafted(path: Path, marker: Path) -> None:
    """Replaces ``path`` with a checkpoint-looking file whose unpickling would touch ``marker``."""
    torch.save({"state_dict": {}, "payload": Marker(marker)}, path)


def finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


if __name__ == "__main__":
    # A rerun of a finished folder: nothing to train, so every second goes to the post-selection steps.
    if os.environ.get("SIGNAL_AT") == "report":
        from matplotlib.figure import Figure

        savefig = Figure.savefig

        def signalling_savefig(self: Figure, *args: Any, **kwargs: Any) -> Any:
            _signal_once("report")
            return savefig(self, *args, **kwargs)

        Figure.savefig = signalling_savefig  # type: ignore[method-assign]
    from _adversarial import run as run_job  # the classes under their importable name (the fingerprint)

    result = run_job(Path(sys.argv[1]), barriers=True, test="best", test_loader=True)
    print("RESULT", json.dumps({str(r.seed): r.score for r in result.runs}))
    sys.exit(0)
