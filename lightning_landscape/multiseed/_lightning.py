"""Every use of a private Lightning member in ``multiseed/``, and the checkpoint I/O all seeds share.

Kept in one place so a Lightning upgrade that moves one of them breaks one small module (and its test)
rather than the executors. :class:`SafeCheckpointIO` is public Lightning API (a ``CheckpointIO`` plugin):
it is here because it is the one place a seed's checkpoint files are written and read.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins import TorchCheckpointIO
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.utilities.rank_zero import rank_zero_only
from typing_extensions import override

from lightning_landscape.multiseed.paths import atomic_write

try:  # Lightning raises it for a SIGTERM; a SystemExit without a code.
    from lightning.pytorch.utilities.exceptions import SIGTERMException
except ImportError:  # pragma: no cover - older Lightning
    SIGTERMException = SystemExit  # type: ignore[misc,assignment]

# What a Lightning checkpoint may hold besides tensors and plain containers: a path among the saved
# hyperparameters. Nothing here can run code: each is rebuilt from plain strings.
SAFE_CHECKPOINT_GLOBALS: list[Any] = [pathlib.PosixPath, pathlib.WindowsPath, pathlib.PurePosixPath]


def is_rank_zero() -> bool:
    """Whether this process is global rank zero (``rank_zero_only.rank`` is set by the strategy)."""
    return getattr(rank_zero_only, "rank", 0) == 0


def configure_optimizers(config: Any) -> tuple[list[Any], list[Any]]:
    """The optimizers and scheduler configs of a ``configure_optimizers()`` result, read by Lightning."""
    from lightning.pytorch.core.optimizer import _configure_optimizers

    optimizers, schedulers, _ = _configure_optimizers(config)
    return list(optimizers), list(schedulers)


def saved_hparams(obj: Any) -> dict[str, Any] | None:
    """``obj.hparams_initial`` if ``obj`` called ``save_hyperparameters()``, else ``None``."""
    if not hasattr(obj, "_hparams_initial"):
        return None
    return dict(obj.hparams_initial)


def plain_hparams(module: LightningModule) -> dict[str, Any]:
    """The module's scalar hyperparameters (what a TensorBoard hparams entry can show)."""
    hparams = getattr(module, "_hparams", None) or {}
    return {str(k): v for k, v in dict(hparams).items() if isinstance(v, (bool, int, float, str))}


def safe_torch_load(path: str | Path, map_location: Any = "cpu") -> Any:
    """``torch.load(path, weights_only=True)`` with the allow-list a Lightning checkpoint needs.

    Raises:
        pickle.UnpicklingError: the file holds an object outside the allow-list (nothing was run).
        RuntimeError, EOFError, ...: the file is not a readable torch file.
    """
    with torch.serialization.safe_globals(SAFE_CHECKPOINT_GLOBALS):
        return torch.load(path, map_location=map_location, weights_only=True)


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


def attached_trainer(module: LightningModule) -> Trainer | None:
    """The Trainer ``module`` is attached to, or ``None``: ``module.trainer`` raises when there is none.

    Example:
        >>> attached_trainer(LightningModule()) is None
        True
    """
    return module._trainer
