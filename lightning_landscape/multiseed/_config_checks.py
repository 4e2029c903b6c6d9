"""The checks of the multi-seed trainer's resource, pruning and Trainer arguments (config.py runs them)."""

from __future__ import annotations

import inspect
import itertools
import math
from collections.abc import Sequence
from typing import Any

from lightning.pytorch import Trainer

from lightning_landscape._namespace import loaded_types

PRUNE_UNITS = ("epochs", "steps")

OWNED_TRAINER_ARGS = {
    "default_root_dir": "`root_dir` (each seed trains in root_dir/seed_<k>/)",
}


def check_resources(cpus_per_seed: Any, gpus_per_seed: Any, max_concurrent: Any, max_retries: Any) -> None:
    for name, value in (("cpus_per_seed", cpus_per_seed), ("gpus_per_seed", gpus_per_seed)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise TypeError(f"`{name}` must be a number, got {value!r}")
        if value < 0:
            raise ValueError(f"`{name}` must be >= 0, got {value}")
    if gpus_per_seed > 1 and gpus_per_seed != int(gpus_per_seed):
        raise ValueError(f"`gpus_per_seed` above 1 must be a whole number (Ray's rule), got {gpus_per_seed}")
    if max_concurrent is not None and (
        isinstance(max_concurrent, bool) or not isinstance(max_concurrent, int) or max_concurrent < 1
    ):
        raise ValueError(f"`max_concurrent` must be None or an integer >= 1, got {max_concurrent!r}")
    if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < -1:
        raise ValueError(f"`max_retries` must be an integer >= 0 (or -1: retry forever), got {max_retries!r}")


def check_pruning(rungs: Any, keep: Any, unit: Any, executor: str, trainer_kwargs: dict[str, Any]) -> None:
    if unit not in PRUNE_UNITS:
        raise ValueError(f"`prune_unit` must be one of {PRUNE_UNITS}, got {unit!r}")
    if isinstance(keep, bool) or not isinstance(keep, (int, float)) or not 0 < keep <= 1:
        raise ValueError(f"`prune_keep` must be a fraction in (0, 1], e.g. 1/3, got {keep!r}")
    if rungs is None:
        return
    if isinstance(rungs, (str, bytes)) or not isinstance(rungs, Sequence) or not rungs:
        raise ValueError(
            f"`prune_rungs` must be None or a non-empty list of budgets in {unit}, got {rungs!r}"
        )
    if any(isinstance(r, bool) or not isinstance(r, int) or r < 1 for r in rungs):
        raise ValueError(f"`prune_rungs` must hold integers >= 1 ({unit}), got {list(rungs)!r}")
    if any(b <= a for a, b in itertools.pairwise(rungs)):
        raise ValueError(f"`prune_rungs` must be strictly increasing, got {list(rungs)!r}")
    if executor == "vectorized":
        raise ValueError(
            "`prune_rungs` needs executor='sequential' or 'ray': the vectorized executor trains all seeds"
            " as one ensemble and cannot stop some of them at a rung"
        )
    key, other = ("max_epochs", "max_steps") if unit == "epochs" else ("max_steps", "max_epochs")
    end = trainer_kwargs.get(key)
    if isinstance(end, bool) or not isinstance(end, int) or end <= rungs[-1]:
        raise ValueError(
            f"`prune_rungs={list(rungs)!r}` ({unit}) needs the Trainer's `{key}` set above the last rung"
            f" (the survivors' full budget), got {key}={end!r}"
        )
    if trainer_kwargs.get(other) not in (None, -1):
        raise ValueError(
            f"`prune_unit={unit!r}` counts in {key}; leave `{other}` unset,"
            f" got {other}={trainer_kwargs[other]!r}"
        )


def check_trainer_kwargs(trainer_kwargs: dict[str, Any]) -> None:
    """Refuses Trainer arguments that a per-seed ``Trainer`` cannot take or that would break the run.

    Raises:
        TypeError: an unknown Trainer argument, or ``callbacks`` that are not Callbacks.
        ValueError: ``default_root_dir``, ``enable_checkpointing=False``, ``fast_dev_run``, a logger
            instance, or a ``CheckpointIO`` plugin.
    """
    unknown = sorted(set(trainer_kwargs) - (set(inspect.signature(Trainer.__init__).parameters) - {"self"}))
    if unknown:
        raise TypeError(
            f"unknown Trainer argument(s) {unknown}: MultiSeedTrainer passes **trainer_kwargs to Trainer"
        )
    for name, instead in OWNED_TRAINER_ARGS.items():
        if name in trainer_kwargs:
            raise ValueError(f"`{name}` is set by MultiSeedTrainer; use {instead}")
    if trainer_kwargs.get("enable_checkpointing") is False:
        raise ValueError(
            "`enable_checkpointing=False` cannot work: each seed's score and resume come from its checkpoints"
        )
    if trainer_kwargs.get("fast_dev_run"):
        raise ValueError(
            f"`fast_dev_run={trainer_kwargs['fast_dev_run']!r}` disables checkpoints, so no seed would"
            " have a score; use limit_train_batches/max_steps for a short run"
        )
    logger = trainer_kwargs.get("logger")
    if logger not in (None, True, False):
        raise ValueError(
            f"`logger` must be True/None (a TensorBoardLogger per seed in root_dir/seed_<k>/) or False,"
            f" got {logger!r}: one logger cannot be shared by independent seeds"
        )
    callbacks = trainer_kwargs.get("callbacks")
    if callbacks is not None:
        callback_types = loaded_types("Callback")  # lightning.pytorch's or pytorch_lightning's
        items = [callbacks] if isinstance(callbacks, callback_types) else callbacks
        if not isinstance(items, (list, tuple)) or not all(isinstance(c, callback_types) for c in items):
            raise TypeError(f"`callbacks` must be a Callback or a list of Callbacks, got {callbacks!r}")
    plugins = trainer_kwargs.get("plugins")
    items = plugins if isinstance(plugins, (list, tuple)) else [plugins]
    if any(isinstance(p, loaded_types("plugins.CheckpointIO")) for p in items):
        raise ValueError(
            "`plugins` must not hold a CheckpointIO: every seed writes its checkpoints atomically and"
            " reads them with weights_only=True through MultiSeedTrainer's own"
        )
