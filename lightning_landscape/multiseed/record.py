"""The run folder's record: ``summary.json`` read, validated and written, in one place.

``summary.json`` is the single source of truth of a multi-seed run. It is

* **validated on read** against the schema below: a file that does not parse or does not fit raises
  :class:`RecordError` naming the file, the problem and the way out; nothing in it is trusted before that;
* **portable**: every path in it is relative to ``root_dir`` and resolved inside it
  (:func:`~lightning_landscape.multiseed.paths.inside`), so the folder can be moved or copied;
* **written atomically** (a temporary file and :func:`os.replace`, permissions by the umask);
* **open to extension**: top-level blocks and per-seed keys this version does not know are carried
  through read -> write unchanged (:attr:`Record.extra`, ``SeedRun._carried``);
* **written by one process**: the one holding :class:`~lightning_landscape.multiseed.lock.RunLock`, so
  every update is a read-modify-write by a single writer.

Schema (version 2)::

    {"version": 2, "monitor": str, "mode": "min" | "max",
     "fingerprint": {key: str, ...},            # the configuration the finished seeds were trained with
     "seeds": [int, ...],                       # the seeds of the last run, in order
     "best_seed": int | null, "best_score": float | null, "best_model_path": str,
     "stats": {...},                            # derived: mean, std, min, median, max
     "runs": [{"seed": int, "status": "finished" | "failed" | "pending" | "running" | "pruned",
               "score": float | null,           # finite; required when finished
               "best_model_path": str, "last_model_path": str, "log_dir": str,   # relative to root_dir
               "wall_time": float >= 0, "error": str, "extra": {...}}, ...],
     ...}                                       # other blocks (e.g. "barriers", "best_of_k") kept as they are

A file of another version is refused (:class:`RecordError` naming it).
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lightning_landscape.multiseed.paths import (
    BEST_CHECKPOINT,
    SUMMARY_JSON,
    PathOutsideRootError,
    atomic_write,
    inside,
    relative,
)
from lightning_landscape.multiseed.result import SeedRun, finished_scores, is_seed, score_stats

SUMMARY_VERSION = 2
_STATUSES = ("finished", "failed", "pending", "running", "pruned")
_PATH_FIELDS = ("best_model_path", "last_model_path", "log_dir")
# Top-level keys this module writes itself; every other key is carried through as it is.
_OWN_KEYS = frozenset(
    {"version", "monitor", "mode", "fingerprint", "seeds", "best_seed", "best_score",
     "best_model_path", "stats", "runs"}
)  # fmt: skip
# Per-seed keys checked by _check_run itself; any other SeedRun field is taken as stored, after the check
# FIELD_CHECKS names for it (a new optional field registers its check there).
_CHECKED_RUN_KEYS = frozenset({"seed", "status", "score", "wall_time", "error", "extra", *_PATH_FIELDS})
_RUN_FIELDS = frozenset(SeedRun.__dataclass_fields__) - {"_carried"}


def finite_or_none(value: Any) -> str | None:
    """``None`` if ``value`` is a finite number or ``None``, else what is wrong (a FIELD_CHECKS check)."""
    ok = value is None or _is_finite(value)
    return None if ok else f"must be a finite number or null, got {_short(value)}"


def _is_finite(value: Any) -> bool:
    """A number that a float holds finitely (an integer too large for a float is not one)."""
    if not _is_number(value):
        return False
    try:
        return math.isfinite(float(value))
    except OverflowError:
        return False


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else f"{text[:60]}... ({len(text)} characters)"


def _step_or_none(value: Any) -> str | None:
    ok = value is None or (_is_number(value) and isinstance(value, int) and 0 <= value < 2**63)
    return None if ok else f"must be an integer step in [0, 2**63) or null, got {_short(value)}"


def _time_or_none(value: Any) -> str | None:
    ok = value is None or (_is_finite(value) and value >= 0)
    return None if ok else f"must be a time (a number >= 0) or null, got {_short(value)}"


#: Checks of the per-seed ``extra`` keys this package writes; other keys are carried as they are.
EXTRA_CHECKS: dict[str, Callable[[Any], str | None]] = {
    "best_step": _step_or_none,
    "last_step": _step_or_none,
    "best_epoch": _step_or_none,
    "attempt_started": _time_or_none,
    "resumed_from": lambda v: None if isinstance(v, str) else f"must be a path, got {_short(v)}",
    "diverged": lambda v: None if isinstance(v, bool) else f"must be a bool, got {_short(v)}",
}
# Longest path and path component a run folder writes (PATH_MAX and NAME_MAX on Linux).
_MAX_PATH, _MAX_NAME = 4096, 255


def _path_problem(stored: str) -> str | None:
    """What makes ``stored`` unusable as a path on this machine, before any system call sees it."""
    if "\x00" in stored:
        return "holds a null byte"
    if len(stored.encode(errors="surrogateescape")) > _MAX_PATH:
        return f"is {len(stored)} characters long (at most {_MAX_PATH})"
    if any(len(part.encode(errors="surrogateescape")) > _MAX_NAME for part in stored.split("/")):
        return f"has a name longer than {_MAX_NAME} bytes"
    return None


#: Checks of the optional SeedRun fields: ``{field: check(value) -> problem or None}``.
FIELD_CHECKS: dict[str, Callable[[Any], str | None]] = {
    "test_score": finite_or_none,
    "still_improving": lambda v: (
        None if v is None or isinstance(v, bool) else f"must be a bool or null, got {v!r}"
    ),
}


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class RecordError(ValueError):
    """A file of the run folder cannot be trusted; the message names it and the way out."""


@dataclass
class Record:
    """What ``summary.json`` holds, validated; paths in :attr:`runs` are resolved (``root_dir/...``).

    Args:
        monitor: the metric that ranks the seeds.
        mode: ``"min"`` or ``"max"``.
        runs: every seed ever recorded in this folder, by seed (also those not asked for this time).
        fingerprint: the configuration the finished seeds were trained with (see
            :func:`~lightning_landscape.multiseed.plan.fingerprint`).
        extra: top-level blocks this version does not write itself, carried through unchanged. Steps
            after selection add theirs here (``record.extra["barriers"] = {...}``).
    """

    monitor: str
    mode: str
    runs: dict[int, SeedRun] = field(default_factory=dict)
    fingerprint: dict[str, str] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


def _fail(path: Path, problem: str) -> RecordError:
    return RecordError(
        f"{path}: {problem}. The file was not used. Restore it (e.g. from a copy of the run folder) or,"
        " to start a new record, move it away: seed folders it does not list are then set aside as"
        " seed_<k>.orphan-<time>/, never deleted."
    )


def _check_run(path: Path, i: int, data: Any, root_dir: Path) -> SeedRun:
    where = f"runs[{i}]"
    if not isinstance(data, dict):
        raise _fail(path, f"{where} must be an object, got {type(data).__name__}")
    seed = data.get("seed")
    if not is_seed(seed):
        raise _fail(path, f"{where}.seed must be an integer in [0, 2**32 - 1], got {seed!r}")
    status = data.get("status", "pending")
    if status not in _STATUSES:
        raise _fail(path, f"{where} (seed {seed}).status must be one of {_STATUSES}, got {status!r}")
    score = data.get("score")
    problem = finite_or_none(score)
    if problem:
        raise _fail(path, f"{where} (seed {seed}).score {problem}")
    if status == "finished" and score is None:
        raise _fail(path, f"{where} (seed {seed}) is 'finished' without a score")
    wall = data.get("wall_time", 0.0)
    if not _is_finite(wall) or wall < 0:
        raise _fail(path, f"{where} (seed {seed}).wall_time must be a number >= 0, got {_short(wall)}")
    for key in ("error", *_PATH_FIELDS):
        if not isinstance(data.get(key, ""), str):
            raise _fail(path, f"{where} (seed {seed}).{key} must be a string, got {data[key]!r}")
    extra = data.get("extra", {})
    if not isinstance(extra, dict):
        raise _fail(path, f"{where} (seed {seed}).extra must be an object, got {_short(extra)}")
    for key, check in EXTRA_CHECKS.items():
        problem = check(extra[key]) if key in extra else None
        if problem:
            raise _fail(path, f"{where} (seed {seed}).extra.{key} {problem}")
    paths: dict[str, Any] = {}
    for key in _PATH_FIELDS:
        stored = data.get(key, "")
        problem = _path_problem(stored)
        if problem:
            raise _fail(path, f"{where} (seed {seed}).{key} {problem}")
        try:
            paths[key] = str(inside(stored, root_dir, f"{where} (seed {seed}).{key}")) if stored else ""
        except PathOutsideRootError as err:
            raise _fail(path, str(err)) from err
    optional: dict[str, Any] = {}
    for key in sorted(_RUN_FIELDS - _CHECKED_RUN_KEYS):
        if key in data:
            problem = FIELD_CHECKS.get(key, lambda _: None)(data[key])
            if problem:
                raise _fail(path, f"{where} (seed {seed}).{key} {problem}")
            optional[key] = data[key]
    run = SeedRun(
        seed=seed, status=status, score=float(score) if score is not None else None,
        wall_time=float(wall), error=data.get("error", ""), extra=dict(extra), **paths, **optional,
    )  # fmt: skip
    run._carried = {k: v for k, v in data.items() if k not in _RUN_FIELDS}
    return run


def read_record(root_dir: str | Path) -> Record | None:
    """The validated record of ``root_dir``, or ``None`` if it has none yet.

    Raises:
        RecordError: ``summary.json`` does not parse or does not fit the schema (the message names it).
    """
    root = Path(root_dir)
    path = root / SUMMARY_JSON
    if path.is_symlink():
        # Read only what the folder itself holds: a link may lead anywhere (and a write would replace it).
        raise _fail(path, f"is a symbolic link (to {os.readlink(path)!r}), not the folder's own record")
    if not path.exists():
        return None
    if not path.is_file():
        raise _fail(path, "is not a regular file")
    try:
        data = json.loads(path.read_text(), parse_constant=_refuse_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as err:
        raise _fail(path, f"not valid JSON ({str(err)[:200]})") from err
    if not isinstance(data, dict):
        raise _fail(path, f"the top level must be an object, got {type(data).__name__}")
    version = data.get("version")
    if version != SUMMARY_VERSION:
        raise _fail(path, f"unknown version {version!r} (this release reads [{SUMMARY_VERSION}])")
    monitor, mode = data.get("monitor"), data.get("mode")
    if not isinstance(monitor, str) or not monitor:
        raise _fail(path, f"'monitor' must be a non-empty string, got {monitor!r}")
    if mode not in ("min", "max"):
        raise _fail(path, f"'mode' must be 'min' or 'max', got {mode!r}")
    fingerprint = data.get("fingerprint", {})
    if not isinstance(fingerprint, dict) or not all(isinstance(v, str) for v in fingerprint.values()):
        raise _fail(path, f"'fingerprint' must map names to strings, got {fingerprint!r}")
    items = data.get("runs", [])
    if not isinstance(items, list):
        raise _fail(path, f"'runs' must be a list, got {type(items).__name__}")
    runs: dict[int, SeedRun] = {}
    for i, item in enumerate(items):
        run = _check_run(path, i, item, root)
        if run.seed in runs:
            raise _fail(path, f"seed {run.seed} is listed twice in 'runs'")
        runs[run.seed] = run
    extra = {k: v for k, v in data.items() if k not in _OWN_KEYS}
    return Record(monitor=monitor, mode=mode, runs=runs, fingerprint=dict(fingerprint), extra=extra)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value")


def _json_safe(value: Any) -> Any:
    # JSON has no NaN/inf; null keeps the file readable by strict parsers.
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def _stored_run(run: SeedRun, root_dir: Path) -> dict[str, Any]:
    data = {**run._carried, **run.to_dict()}
    for key in _PATH_FIELDS:
        data[key] = relative(data[key], root_dir) if data[key] else ""
    return data


def record_dict(
    record: Record, root_dir: str | Path, seeds: Sequence[int], best: SeedRun | None = None
) -> dict[str, Any]:
    """The content of ``summary.json``: ``seeds`` first in the given order, then every other recorded seed."""
    root = Path(root_dir)
    asked = [record.runs[s] for s in seeds if s in record.runs]
    others = [record.runs[s] for s in sorted(record.runs) if s not in set(seeds)]
    stats = score_stats(finished_scores(asked))
    return _json_safe(
        {
            **record.extra,
            "version": SUMMARY_VERSION,
            "monitor": record.monitor,
            "mode": record.mode,
            "fingerprint": dict(record.fingerprint),
            "seeds": list(seeds),
            "best_seed": best.seed if best is not None else None,
            "best_score": best.score if best is not None else None,
            "best_model_path": BEST_CHECKPOINT if best is not None else "",
            "stats": stats,
            "runs": [_stored_run(r, root) for r in (*asked, *others)],
        }
    )


def write_record(
    record: Record, root_dir: str | Path, seeds: Sequence[int], best: SeedRun | None = None
) -> Path:
    """Writes ``root_dir/summary.json`` atomically (see :func:`record_dict`)."""
    return write_summary_json(root_dir, record_dict(record, root_dir, seeds, best))


def write_summary_json(root_dir: str | Path, summary: Mapping[str, Any]) -> Path:
    """Writes a ready ``summary.json`` content atomically: the old file or the new one, never half."""
    path = Path(root_dir) / SUMMARY_JSON
    atomic_write(path, lambda f: json.dump(summary, f, indent=2, allow_nan=False))
    return path


def remove_stale_temporaries(root_dir: str | Path) -> list[Path]:
    """Deletes what a killed writer left: ``.<name>.*.tmp`` files in ``root_dir`` and its checkpoint
    folders, and pre-flight scratch folders. Only called under the lock: no other writer is alive."""
    root = Path(root_dir)
    stale = [*root.glob(".*.tmp"), *root.glob("seed_*/checkpoints/.*.tmp"), *root.glob(".preflight-*")]
    for path in stale:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    return stale


__all__ = [
    "FIELD_CHECKS",
    "SUMMARY_VERSION",
    "Record",
    "RecordError",
    "finite_or_none",
    "read_record",
    "record_dict",
    "remove_stale_temporaries",
    "write_record",
    "write_summary_json",
]
