"""Resume planning: which record a run continues, and what each asked-for seed does next.

Before any seed trains, :class:`~lightning_landscape.multiseed.MultiSeedTrainer` reads the record of
``root_dir`` and

1. :func:`adopt` s it when it is compatible: same ``monitor`` and ``mode``, and the same
   :func:`fingerprint` (the configuration the finished seeds' scores depend on), unless
   ``allow_config_change``; otherwise the run is refused, naming the difference;
2. :func:`plan` s each asked-for seed: keep it (finished, its best checkpoint on disk), resume it (from a
   ``last.ckpt`` that loads), or start it afresh. Work the record does not account for is set aside as
   ``seed_<k>.orphan-<time>/``, never deleted.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lightning.pytorch.utilities import rank_zero_warn

from lightning_landscape.multiseed._lightning import is_rank_zero
from lightning_landscape.multiseed.checkpoints import check_checkpoint
from lightning_landscape.multiseed.config import MultiSeedConfig
from lightning_landscape.multiseed.executors import SeedJob, SeedTask
from lightning_landscape.multiseed.paths import last_checkpoint, seed_dir
from lightning_landscape.multiseed.record import Record
from lightning_landscape.multiseed.result import SeedRun

# Trainer arguments that change what is shown or logged, never what a seed computes. Callbacks are left
# out too: most observe (ours leave training bit-identical), and one that steers (EarlyStopping) is the
# user's to keep.
_NOT_IN_FINGERPRINT = frozenset(
    {"enable_progress_bar", "enable_model_summary", "logger", "log_every_n_steps", "profiler", "callbacks"}
)


def describe(value: Any) -> str:
    """A stable text for one configuration value: JSON for plain values, the qualified name otherwise.

    Example:
        >>> describe({"b": 1, "a": [2]}), describe(Path)
        ('{"a": [2], "b": 1}', 'pathlib.Path')
    """
    if isinstance(value, type) or (callable(value) and hasattr(value, "__qualname__")):
        return f"{getattr(value, '__module__', '')}.{value.__qualname__}"
    try:
        return json.dumps(value, sort_keys=True, default=_name_of)
    except (TypeError, ValueError):
        return _name_of(value)


def _name_of(value: Any) -> str:
    kind = type(value)
    return f"<{kind.__module__}.{kind.__qualname__}>"


def config_changes(old: Mapping[str, str], new: Mapping[str, str]) -> list[str]:
    """The keys whose value differs between two fingerprints (a key on one side only counts).

    Example:
        >>> config_changes({"a": "1", "b": "2"}, {"a": "1", "b": "3", "c": "4"})
        ['b', 'c']
    """
    return sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))


def fingerprint(config: MultiSeedConfig, job: SeedJob) -> dict[str, str]:
    """What the finished seeds' scores depend on, key by key, as stable text."""
    out = {
        "executor": config.executor,
        "model": describe(job.model.target_type),
        "model.kwargs": describe(job.model.kwargs),
    }
    if job.datamodule is not None:
        out["datamodule"] = describe(job.datamodule.target_type)
        out["datamodule.kwargs"] = describe(job.datamodule.kwargs)
    for name, value in sorted(config.trainer_kwargs.items()):
        if name not in _NOT_IN_FINGERPRINT:
            out[f"trainer.{name}"] = describe(value)
    if config.prune_rungs is not None:  # successive halving: which seeds reach the end depends on it
        out["prune"] = describe(
            {"rungs": list(config.prune_rungs), "keep": float(config.prune_keep), "unit": config.prune_unit}
        )
    return out


def adopt(record: Record | None, config: MultiSeedConfig, fingerprint: dict[str, str]) -> Record:
    """The record to continue: the one on disk if it is compatible, else a refusal naming the difference.

    While no seed has finished, nothing is ranked yet: the folder takes this run's settings.

    Raises:
        ValueError: the record holds finished seeds of another ``monitor``, ``mode`` or configuration
            (the last unless ``config.allow_config_change``).
    """
    # Finished work: a finished or pruned seed, or one that completed a rung of successive halving.
    if record is None or not any(
        r.status in ("finished", "pruned") or "rung_done" in r.extra for r in record.runs.values()
    ):
        runs = record.runs if record is not None else {}
        extra = record.extra if record is not None else {}
        return Record(config.monitor, config.mode, runs=runs, fingerprint=fingerprint, extra=extra)
    root = str(config.root)
    for name, value in (("monitor", config.monitor), ("mode", config.mode)):
        if getattr(record, name) != value:
            raise ValueError(
                f"`root_dir` {root!r} holds a run with {name}={getattr(record, name)!r};"
                f" got `{name}={value!r}`. Use another root_dir or the same {name}."
            )
    # A record without a fingerprint cannot tell: it takes this run's.
    changed = config_changes(record.fingerprint, fingerprint) if record.fingerprint else []
    if not record.fingerprint:
        record.fingerprint = fingerprint
    if changed and not config.allow_config_change:
        details = "; ".join(
            f"{k}: {record.fingerprint.get(k, '<unset>')} -> {fingerprint.get(k, '<unset>')}" for k in changed
        )
        raise ValueError(
            f"`root_dir` {root!r} holds seeds trained with another configuration ({details}). Their"
            " scores would not compare with new ones: use another root_dir, restore the configuration,"
            " or pass allow_config_change=True to rank them together anyway."
        )
    if changed:
        rank_zero_warn(f"MultiSeedTrainer: ranking seeds of another configuration together ({changed})")
        record.fingerprint = fingerprint
    return record


def plan(record: Record, config: MultiSeedConfig) -> list[SeedTask]:
    """Decides per asked seed: keep (finished), resume (from a usable ``last.ckpt``) or start afresh.

    A fresh start clears the folder of an attempt the record lists as unfinished; a folder the record
    does not account for (no entry, or a finished entry whose checkpoint is gone) is set aside, never
    deleted. Seeds not asked for are left as they are. Each planned seed is entered in ``record.runs``
    as ``"pending"``.

    Returns:
        The seeds to run, in the asked order.
    """
    root = config.root
    tasks: list[SeedTask] = []
    for seed in config.seed_list:
        old = record.runs.get(seed)
        folder = seed_dir(root, seed)
        if old is not None and old.status == "pruned":
            continue  # stopped by successive halving: its folder is kept as it is
        if old is not None and old.status == "finished":
            if Path(old.best_model_path).is_file():
                continue
            set_aside(folder, f"its best checkpoint {old.best_model_path!r} is missing")
            old = None
        last = last_checkpoint(root, seed)
        resume = False
        if old is not None and old.status == "running" and last.is_file():
            problem = check_checkpoint(last, config.monitor, None)
            if problem is None:
                resume = True
            else:
                set_aside(folder, problem)
        if not resume and folder.exists():
            if old is None:
                set_aside(folder, "summary.json has no entry for it")
            elif is_rank_zero():
                # The record's own unfinished attempt: a fresh start must not mix with its files.
                shutil.rmtree(folder)
        prior = _prior_wall_time(old, last) if resume and old is not None else 0.0
        record.runs[seed] = SeedRun(seed=seed, status="pending", wall_time=prior, log_dir=str(folder))
        tasks.append(SeedTask(seed=seed, resume=resume, prior_wall_time=prior))
    return tasks


def _prior_wall_time(old: SeedRun, last: Path) -> float:
    """The interrupted attempts' time up to the last checkpoint: what a resume keeps."""
    started = old.extra.get("attempt_started")
    if isinstance(started, bool) or not isinstance(started, (int, float)) or not math.isfinite(started):
        started = None  # not a time the trainer wrote: the resume keeps the recorded time only
    return old.wall_time + (max(0.0, last.stat().st_mtime - started) if started else 0.0)


def set_aside(folder: Path, why: str) -> None:
    """Renames ``folder`` to ``<name>.orphan-<time>`` (never deletes it) and warns with ``why``."""
    if not folder.exists() or not is_rank_zero():
        return
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target = folder.with_name(f"{folder.name}.orphan-{stamp}")
    n = 1
    while target.exists():
        n += 1
        target = folder.with_name(f"{folder.name}.orphan-{stamp}-{n}")
    os.replace(folder, target)
    rank_zero_warn(
        f"MultiSeedTrainer: {why}; {folder} was set aside as {target.name} and the seed starts afresh"
    )


__all__ = ["adopt", "config_changes", "describe", "fingerprint", "plan", "set_aside"]
