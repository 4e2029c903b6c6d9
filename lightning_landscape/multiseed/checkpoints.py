"""Checkpoint files of a run folder: written atomically, and read one way, with ``weights_only=True``.

A run folder may live on storage others can write, so nothing loaded from it may run code:
:func:`safe_torch_load` is the one ``torch.load`` of the multi-seed trainer (the allow-list a Lightning
checkpoint needs, nothing more). On top of it, :func:`load_checkpoint` reads a Lightning checkpoint with
errors that name the file, :func:`check_checkpoint` says whether one can stand for a recorded score,
:func:`load_weights` puts a checkpoint's weights into a copy of a model, and :class:`SafeCheckpointIO`
is the plugin through which every seed's ``Trainer`` writes and reads its checkpoints.
"""

from __future__ import annotations

import copy
import math
import os
import pathlib
import pickle
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import torch
from lightning.fabric.plugins import TorchCheckpointIO
from torch import nn
from typing_extensions import override

from lightning_landscape.multiseed.paths import LAST_CHECKPOINT, atomic_write, checkpoint_dir
from lightning_landscape.multiseed.record import RecordError
from lightning_landscape.multiseed.result import SeedRun

# What a Lightning checkpoint may hold besides tensors and plain containers: a path among the saved
# hyperparameters. Nothing here can run code: each is rebuilt from plain strings.
SAFE_CHECKPOINT_GLOBALS: list[Any] = [pathlib.PosixPath, pathlib.WindowsPath, pathlib.PurePosixPath]
ModuleT = TypeVar("ModuleT", bound=nn.Module)


def safe_torch_load(path: str | Path, map_location: Any = "cpu") -> Any:
    """``torch.load(path, weights_only=True)`` with the allow-list a Lightning checkpoint needs.

    Raises:
        pickle.UnpicklingError: the file holds an object outside the allow-list (nothing was run).
        RuntimeError, EOFError, ...: the file is not a readable torch file.
    """
    with torch.serialization.safe_globals(SAFE_CHECKPOINT_GLOBALS):
        return torch.load(path, map_location=map_location, weights_only=True)


def read_checkpoint(path: str | Path) -> Any:
    """The content of a checkpoint file, loaded with ``weights_only=True`` (nothing in it can run code).

    Raises:
        RecordError: the file is missing, truncated, not a torch file, or holds objects outside the
            allow-list; the message names the file.
    """
    path = Path(path)
    try:
        return safe_torch_load(path)
    except FileNotFoundError as err:
        raise RecordError(f"{path}: the checkpoint is missing") from err
    except pickle.UnpicklingError as err:
        raise RecordError(
            f"{path}: holds objects that torch refuses to load with weights_only=True, so it was not used"
            f" (nothing in it was run): {str(err).splitlines()[0]}"
        ) from err
    except Exception as err:  # truncated or not a torch file at all
        raise RecordError(f"{path}: not a readable checkpoint ({type(err).__name__}: {err})") from err


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """A Lightning checkpoint of the run folder, loaded with ``weights_only=True``.

    Raises:
        RecordError: the file is missing, truncated, not a checkpoint, or holds objects outside the
            allow-list; the message names the file.
    """
    checkpoint = read_checkpoint(path)
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise RecordError(f"{path}: not a Lightning checkpoint (no 'state_dict')")
    return checkpoint


def recorded_score(checkpoint: Mapping[str, Any], monitor: str) -> float | None:
    """The best ``monitor`` value a Lightning checkpoint's ``ModelCheckpoint`` state holds, if any."""
    for state in (checkpoint.get("callbacks") or {}).values():
        if isinstance(state, dict) and state.get("monitor") == monitor and "best_model_score" in state:
            value = state["best_model_score"]
            try:
                return float(value)
            except (TypeError, ValueError):
                return None
    return None


def check_checkpoint(path: str | Path, monitor: str, score: float | None) -> str | None:
    """Why the checkpoint at ``path`` cannot stand for a seed with ``score``; ``None`` if it can.

    It must load with ``weights_only=True`` and, where its ``ModelCheckpoint`` state records the best
    ``monitor`` value, hold ``score``.
    """
    try:
        checkpoint = load_checkpoint(path)
    except RecordError as err:
        return str(err)
    held = recorded_score(checkpoint, monitor)
    if score is not None and held is not None and not math.isclose(held, score, rel_tol=1e-6, abs_tol=1e-12):
        return f"{path}: holds {monitor}={held!r}, but the record says {score!r}"
    return None


def load_weights(path: str | Path, template: ModuleT) -> ModuleT:
    """A copy of ``template`` holding the weights of a checkpoint (``weights_only=True``).

    Args:
        path: a Lightning checkpoint or a plain ``torch.save`` state dict.
        template: a module of the checkpoint's architecture; it is left as it is.

    Returns:
        A deep copy of ``template`` with the checkpoint's parameters and buffers.

    Raises:
        ValueError: the file cannot be read (a :class:`RecordError` naming it) or holds no state dict that
            fits ``template``.

    Example:
        >>> import tempfile
        >>> from torch import nn
        >>> net = nn.Linear(2, 1)
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     torch.save({"state_dict": net.state_dict()}, f"{folder}/x.ckpt")
        ...     copy_ = load_weights(f"{folder}/x.ckpt", nn.Linear(2, 1))
        >>> torch.equal(copy_.weight, net.weight)
        True
    """
    loaded = read_checkpoint(path)
    state = loaded.get("state_dict", loaded) if isinstance(loaded, Mapping) else None
    if not isinstance(state, Mapping):
        raise ValueError(f"{path} holds no state dict")
    model = copy.deepcopy(template)
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise ValueError(f"{path} does not fit the model: {str(err).splitlines()[0]}") from err
    return model


def remove_stray_checkpoints(root_dir: str | Path, run: SeedRun) -> list[Path]:
    """Deletes the top-k files in a finished seed's checkpoint folder other than its best and ``last.ckpt``:
    what a kill left behind (written just before it, not yet in ``last.ckpt``). Returns what was deleted.
    """
    keep = {Path(run.best_model_path).name, LAST_CHECKPOINT}
    stray = [p for p in checkpoint_dir(root_dir, run.seed).glob("epoch=*.ckpt") if p.name not in keep]
    for path in stray:
        path.unlink()
    return stray


class SafeCheckpointIO(TorchCheckpointIO):
    """Writes a checkpoint to a temporary file and renames it into place; reads with ``weights_only=True``.

    A kill at any moment leaves the previous or the new file whole, never a half-written one (the rename
    is atomic within a folder), and a file in the run folder can never run code when a seed resumes from
    it: the folder may live on storage others can write.

    Args:
        dirpath: the seed's checkpoint folder. A ``ModelCheckpoint`` state saved for the same
            ``seed_<k>/checkpoints`` folder at another place (the run folder was moved or copied) is
            re-based onto it, so the resumed callback keeps its best score and files; Lightning would
            otherwise drop them for a changed ``dirpath``.
    """

    def __init__(self, dirpath: str | Path | None = None) -> None:
        super().__init__()
        self.dirpath = os.path.realpath(dirpath) if dirpath is not None else None

    @override
    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        target = Path(path)
        if "://" in str(path):  # remote storage: Lightning's own transactional write
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(target, lambda f: torch.save(checkpoint, f), binary=True)

    @override
    def load_checkpoint(
        self, path: Any, map_location: Callable[..., Any] | None = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"Checkpoint file not found: {path}")
        checkpoint = safe_torch_load(path, map_location=map_location or "cpu")
        if self.dirpath is not None:
            for state in (checkpoint.get("callbacks") or {}).values():
                if isinstance(state, dict):
                    _rebase(state, self.dirpath)
        return checkpoint


def _rebase(state: dict[str, Any], dirpath: str) -> None:
    old = state.get("dirpath")
    tail = Path(dirpath).parts[-2:]
    if not isinstance(old, str) or old == dirpath or Path(old).parts[-2:] != tail:
        return

    def moved(path: Any) -> Any:
        return dirpath + path[len(old) :] if isinstance(path, str) and path.startswith(old + os.sep) else path

    state["dirpath"] = dirpath
    for key in ("best_model_path", "kth_best_model_path", "last_model_path"):
        if key in state:
            state[key] = moved(state[key])
    if isinstance(state.get("best_k_models"), dict):
        state["best_k_models"] = {moved(k): v for k, v in state["best_k_models"].items()}


__all__ = [
    "SafeCheckpointIO",
    "check_checkpoint",
    "load_checkpoint",
    "load_weights",
    "read_checkpoint",
    "recorded_score",
    "remove_stray_checkpoints",
    "safe_torch_load",
]
