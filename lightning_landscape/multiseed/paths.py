"""Every name in a multi-seed run folder, and the one rule for paths read from it.

A run folder looks like::

    root_dir/
      summary.json          the record (see :mod:`~lightning_landscape.multiseed.record`)
      summary.csv, seeds.png
      best.ckpt             a copy of the winner's best checkpoint
      .lock                 held by the process that runs the seeds
      seed_<k>/             one seed: TensorBoard events and
        checkpoints/        its best checkpoint(s) and last.ckpt
      ensemble/             the vectorized executor's own logs

Paths stored in the record are relative to ``root_dir`` (``/`` separated), so the folder can be moved
or copied; :func:`inside` turns one back into a path and refuses any that leaves ``root_dir``.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any

SUMMARY_JSON = "summary.json"
SUMMARY_CSV = "summary.csv"
SEEDS_PNG = "seeds.png"
BEST_OF_K_PNG = "best_of_k.png"
BEST_CHECKPOINT = "best.ckpt"
LOCK_FILE = ".lock"
CHECKPOINT_DIR = "checkpoints"
LAST_CHECKPOINT = "last.ckpt"
ENSEMBLE_DIR = "ensemble"
SEED_PREFIX = "seed_"


def seed_name(seed: int) -> str:
    """The folder name of one seed, ``seed_<seed>``; also its TensorBoard run name."""
    return f"{SEED_PREFIX}{seed}"


def seed_dir(root_dir: str | Path, seed: int) -> Path:
    """The folder of one seed: ``root_dir/seed_<seed>``."""
    return Path(root_dir) / seed_name(seed)


def checkpoint_dir(root_dir: str | Path, seed: int) -> Path:
    """``root_dir/seed_<seed>/checkpoints``."""
    return seed_dir(root_dir, seed) / CHECKPOINT_DIR


def last_checkpoint(root_dir: str | Path, seed: int) -> Path:
    """``root_dir/seed_<seed>/checkpoints/last.ckpt``: where an interrupted seed resumes from."""
    return checkpoint_dir(root_dir, seed) / LAST_CHECKPOINT


class PathOutsideRootError(ValueError):
    """A path read from the run folder points outside it."""


def relative(path: str | Path, root_dir: str | Path) -> str:
    """``path`` as stored in the record: relative to ``root_dir``, ``/`` separated; ``""`` stays ``""``.

    Example:
        >>> relative("runs/a/seed_0/checkpoints/x.ckpt", "runs/a")
        'seed_0/checkpoints/x.ckpt'
    """
    if not str(path):
        return ""
    rel = os.path.relpath(os.path.abspath(path), os.path.abspath(root_dir))
    return PurePosixPath(Path(rel)).as_posix()


def inside(stored: str, root_dir: str | Path, what: str = "path") -> Path:
    """The path a record entry names, resolved inside ``root_dir``; ``""`` gives ``Path("")``.

    Raises:
        PathOutsideRootError: ``stored`` is absolute or leaves ``root_dir`` (``..``, a symlink out).

    Example:
        >>> inside("seed_0/checkpoints/x.ckpt", "runs/a").as_posix()
        'runs/a/seed_0/checkpoints/x.ckpt'
        >>> inside("../../x", "runs/a")
        Traceback (most recent call last):
        ...
        lightning_landscape.multiseed.paths.PathOutsideRootError: path '../../x' leaves root_dir 'runs/a'
    """
    if not stored:
        return Path("")
    pure = PurePosixPath(stored)
    root = Path(root_dir)
    if pure.is_absolute() or Path(stored).is_absolute():
        raise PathOutsideRootError(f"{what} {stored!r} is absolute; a run folder stores paths relative to it")
    candidate = root.joinpath(*pure.parts)
    real_root = os.path.realpath(root)
    real = os.path.realpath(candidate)
    if os.path.commonpath([real_root, real]) != real_root:
        raise PathOutsideRootError(f"{what} {stored!r} leaves root_dir {str(root)!r}")
    return candidate


def _permissions() -> int:
    # mkstemp creates 0600; the files we leave should get what the user's umask gives any other file.
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write(path: Path, write: Callable[[Any], Any], binary: bool = False) -> None:
    """Writes ``path`` through a temporary file next to it and :func:`os.replace`; permissions by umask.

    A symbolic link at ``path`` is replaced, never followed: nothing outside the folder is written.

    Raises:
        OSError: the write failed (a full disk, no permission); its ``filename`` is ``path``, and ``path``
            is left as it was.
    """
    tmp = ""
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") if binary else os.fdopen(fd, "w", newline="") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _permissions())
        os.replace(tmp, path)
    except BaseException as err:
        if tmp and os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(err, OSError) and err.errno is not None and err.filename != str(path):
            # Name the file the caller asked for, not the temporary one (or none, as a full disk says).
            raise type(err)(err.errno, err.strerror, str(path)) from err
        raise
