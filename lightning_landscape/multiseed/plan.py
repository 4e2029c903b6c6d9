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
from lightning_landscape.multiseed.checkpoints import check_checkpoint, load_checkpoint, recorded_score
from lightning_landscape.multiseed.config import MultiSeedConfig
from lightning_landscape.multiseed.executors import SeedJob, SeedTask
from lightning_landscape.multiseed.paths import LAST_CHECKPOINT, checkpoint_dir, last_checkpoint, seed_dir
from lightning_landscape.multiseed.record import Record, RecordError
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

    The record is not taken on its word: a ``"finished"`` entry is kept only when its best checkpoint lies
    in the seed's own folder, loads with ``weights_only=True`` and holds the recorded score at a step no
    later than ``last.ckpt``'s. Any other seed whose folder holds a ``last.ckpt`` that loads (and whose best
    checkpoint, as ``last.ckpt`` names it, holds up) is resumed: a finished one has nothing left to
    train, so its score comes from its own files. A seed recorded as ``"failed"`` starts afresh. A folder
    that holds a checkpoint is never deleted: one that is not resumed is set aside as
    ``seed_<k>.orphan-<time>/`` with a warning; a folder without any checkpoint (logs of an attempt that
    saved none) is cleared. Seeds not asked for are left as they are. Each planned seed is entered in
    ``record.runs`` as ``"pending"``.

    Returns:
        The seeds to run, in the asked order.

    Raises:
        RecordError: a seed folder or its ``checkpoints`` folder is a symbolic link (the run writes only
            into its own folders).
    """
    root = config.root
    tasks: list[SeedTask] = []
    for seed in config.seed_list:
        refuse_links(root, seed)
        old = record.runs.get(seed)
        folder = seed_dir(root, seed)
        if old is not None and old.status == "pruned":
            continue  # stopped by successive halving: its folder is kept as it is
        last = last_checkpoint(root, seed)
        why = ""
        if old is not None and old.status == "finished":
            problem = verify_finished(old, root, config.monitor)
            if problem is None:
                continue
            why = f"summary.json calls it finished, but {problem}"
        elif old is None:
            why = "summary.json has no entry for it"
        elif old.status == "failed":
            why = f"it failed ({(old.error or 'no error recorded').strip().splitlines()[-1][:200]})"
        resume = False
        if old is not None and old.status != "failed" and last.is_file():
            problem = check_checkpoint(last, config.monitor, None) or verify_last(
                last, root, seed, config.monitor
            )
            if problem is None:
                resume = True
                if why:
                    rank_zero_warn(f"MultiSeedTrainer: seed {seed}: {why}; it resumes from {last}")
            else:
                why = problem
        if not resume and folder.exists() and is_rank_zero():
            if old is not None and old.status in ("pending", "running") and not _holds_checkpoint(folder):
                # The record's own unfinished attempt without a checkpoint: nothing to keep.
                shutil.rmtree(folder)
            else:
                set_aside(folder, why or "its last.ckpt is missing")
        prior = _prior_wall_time(old, last) if resume and old is not None else 0.0
        record.runs[seed] = SeedRun(seed=seed, status="pending", wall_time=prior, log_dir=str(folder))
        tasks.append(SeedTask(seed=seed, resume=resume, prior_wall_time=prior))
    return tasks


def refuse_links(root: Path, seed: int) -> None:
    """Refuses a seed folder (or its ``checkpoints`` folder) that is a symbolic link, by name.

    Raises:
        RecordError: naming the link and the way out.
    """
    for path in (seed_dir(root, seed), checkpoint_dir(root, seed)):
        if path.is_symlink():
            raise RecordError(
                f"{path}: is a symbolic link (to {os.readlink(path)!r}); a run writes only into its own"
                " folders, never through a link. Replace it with the folder itself, or remove it, and rerun."
            )


def _holds_checkpoint(folder: Path) -> bool:
    return any(p.is_file() for p in folder.rglob("*.ckpt"))


def _step(checkpoint: Mapping[str, Any]) -> int | None:
    step = checkpoint.get("global_step")
    return step if isinstance(step, int) and not isinstance(step, bool) else None


def verify_finished(run: SeedRun, root: Path, monitor: str) -> str | None:
    """Why a ``"finished"`` entry cannot be believed; ``None`` when its own files bear it out.

    Its best checkpoint must be a file in ``seed_<k>/checkpoints/``, load with ``weights_only=True``, hold
    the recorded score, and have been written at a step no later than that folder's ``last.ckpt``'s.
    """
    folder = checkpoint_dir(root, run.seed)
    best = Path(run.best_model_path)
    if not run.best_model_path or os.path.realpath(best.parent) != os.path.realpath(folder):
        return f"its best checkpoint {run.best_model_path!r} is not in {folder}"
    if not best.is_file() or best.is_symlink():
        return f"its best checkpoint {str(best)!r} is missing"
    problem = check_checkpoint(best, monitor, run.score)
    if problem is not None:
        return problem
    last = folder / LAST_CHECKPOINT
    if last.is_file():
        try:
            best_step, last_step = _step(load_checkpoint(best)), _step(load_checkpoint(last))
        except RecordError:
            return None  # the best checkpoint stands; a resume would need last.ckpt, a finished seed does not
        if best_step is not None and last_step is not None and best_step > last_step:
            return f"its best checkpoint (step {best_step}) is newer than its last.ckpt (step {last_step})"
    return None


def verify_last(last: Path, root: Path, seed: int, monitor: str) -> str | None:
    """Why a resume from ``last`` would not stand; ``None`` when the best checkpoint it names holds up.

    A resumed seed takes its best checkpoint and score from ``last.ckpt``'s own ``ModelCheckpoint``
    state: that file (by name, in the seed's ``checkpoints/`` folder) must load and hold the same score.
    """
    checkpoint = load_checkpoint(last)
    for state in (checkpoint.get("callbacks") or {}).values():
        if not (isinstance(state, dict) and state.get("monitor") == monitor):
            continue
        path, score = state.get("best_model_path"), recorded_score(checkpoint, monitor)
        if not path or score is None:
            return None  # no best yet: the resume finds one or fails the seed
        best = checkpoint_dir(root, seed) / Path(str(path)).name
        if not best.is_file() or best.is_symlink():
            return f"{last} names the best checkpoint {best.name!r}, which is missing"
        return check_checkpoint(best, monitor, score)
    return None


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
        f"MultiSeedTrainer: {folder.name}: {why}; {folder} was set aside as {target.name} (nothing in it was"
        " deleted) and the seed starts afresh"
    )


__all__ = [
    "adopt", "config_changes", "describe", "fingerprint", "plan", "refuse_links", "set_aside",
    "verify_finished", "verify_last",
]  # fmt: skip
