"""Checks before the first seed trains: the run folder takes files, and the monitored metric is logged.

A configuration that cannot work should fail in seconds, not after the first seed's hours: the folder is
written to once, and one batch of training and one of validation (a throw-away ``Trainer`` in a scratch
folder) show which metrics the module logs.
"""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path

from lightning.pytorch import seed_everything
from lightning.pytorch.utilities import rank_zero_warn

from lightning_landscape._namespace import loaded_types, misconfiguration_types, namespace_of
from lightning_landscape.multiseed.config import MultiSeedConfig
from lightning_landscape.multiseed.executors import SeedJob
from lightning_landscape.multiseed.record import Record, RecordError

# Overrides that turn the user's Trainer into a one-batch probe of what gets logged.
_PREFLIGHT_DROP = (
    "max_epochs", "min_epochs", "max_steps", "min_steps", "max_time", "val_check_interval",
    "check_val_every_n_epoch", "limit_train_batches", "limit_val_batches", "num_sanity_val_steps",
    "logger", "enable_checkpointing", "callbacks", "default_root_dir", "enable_progress_bar",
    "enable_model_summary", "devices", "num_nodes", "strategy", "profiler", "overfit_batches",
)  # fmt: skip


def check_root_dir(root: Path) -> None:
    """Creates ``root`` if needed and writes a file into it once.

    Raises:
        ValueError: ``root`` exists and is not a folder, or cannot be written.

    Example:
        >>> import tempfile
        >>> with tempfile.NamedTemporaryFile() as file:
        ...     check_root_dir(Path(file.name))
        Traceback (most recent call last):
        ...
        ValueError: `root_dir` '...' exists and is not a directory
    """
    if root.exists() and not root.is_dir():
        raise ValueError(f"`root_dir` {str(root)!r} exists and is not a directory")
    try:
        root.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=root, prefix=".write-test-"):
            pass
    except OSError as err:
        raise ValueError(f"`root_dir` {str(root)!r} is not writable: {err}") from err


def preflight(job: SeedJob, config: MultiSeedConfig) -> None:
    """One batch of training and one of validation (seed ``config.seed_list[0]``), to learn before any seed
    trains whether ``config.monitor`` is logged at all.

    An error that may be the seed's own (anything but a ``MisconfigurationException``) is only warned
    about: the seeds then run and record their own errors.

    Raises:
        ValueError: ``monitor`` is never logged, or the configuration cannot train.
    """
    trainer_kwargs = config.trainer_kwargs
    kwargs = {k: v for k, v in trainer_kwargs.items() if k not in _PREFLIGHT_DROP}
    callbacks = trainer_kwargs.get("callbacks") or []
    callbacks = [callbacks] if isinstance(callbacks, loaded_types("Callback")) else list(callbacks)
    with tempfile.TemporaryDirectory(dir=config.root, prefix=".preflight-") as scratch:
        try:
            seed_everything(config.seed_list[0], workers=True, verbose=False)
            model = job.build_model()
            datamodule, train = job.build_data()
            trainer = namespace_of(model).Trainer(
                **kwargs,
                max_epochs=1,
                limit_train_batches=1,
                # A user who switched validation off keeps it off: the monitor must come from training.
                limit_val_batches=0 if trainer_kwargs.get("limit_val_batches") == 0 else 1,
                num_sanity_val_steps=0,
                logger=False,
                enable_checkpointing=False,
                enable_progress_bar=False,
                enable_model_summary=False,
                devices=1,
                default_root_dir=scratch,
                callbacks=copy.deepcopy(callbacks),
            )
            trainer.fit(model, train, job.val_dataloaders, datamodule=datamodule)
        except misconfiguration_types() as err:
            raise ValueError(f"the configuration cannot train (found before the first seed): {err}") from err
        except Exception as err:
            # Possibly seed-specific: let the seeds run and record their own errors.
            rank_zero_warn(f"MultiSeedTrainer pre-flight check raised {type(err).__name__}: {err}")
            return
    logged = sorted(trainer.callback_metrics)
    if config.monitor not in logged:
        raise ValueError(
            f"`monitor={config.monitor!r}` is never logged; the module logs {logged}. Pass one of these as"
            f" `monitor`, or log it with `self.log({config.monitor!r}, value)`."
        )


__all__ = ["check_root_dir", "preflight"]


def check_checkpoints_fit(
    record: Record, config: MultiSeedConfig, job: SeedJob, before: dict[str, str]
) -> None:
    """Refuses, before anything trains, to rank finished seeds whose checkpoints no longer fit the model.

    Under ``allow_config_change`` a rerun may change the model's arguments. Scores still compare, but the
    winner's checkpoint becomes ``best.ckpt``, and the test of the winner and the barriers load the
    checkpoints into this run's model: each asked-for finished seed's best checkpoint must hold the same
    parameter names and shapes as the model built now.

    Args:
        record: the adopted record.
        config: this run's configuration.
        job: builds this run's model (built once here, the global RNG left as it was).
        before: the fingerprint the record held, to name what changed.

    Raises:
        ValueError: naming the seeds whose checkpoints do not fit, the changed configuration keys and the
            first mismatching parameter.
    """
    from lightning_landscape.multiseed.checkpoints import load_checkpoint
    from lightning_landscape.multiseed.plan import config_changes
    from lightning_landscape.multiseed.vectorized.members import build_seeded

    finished = [record.runs[s] for s in config.seed_list if s in record.runs]
    finished = [r for r in finished if r.status == "finished" and r.best_model_path]
    if not finished:
        return
    (model,) = build_seeded(job.build_model, [config.seed_list[0]])
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    misfits: list[int] = []
    example = ""
    for run in finished:
        try:
            state = load_checkpoint(run.best_model_path)["state_dict"]
        except RecordError:
            continue  # an unreadable checkpoint: the plan sets that seed aside
        stored = {str(k): tuple(v.shape) for k, v in state.items() if hasattr(v, "shape")}
        if stored != shapes:
            misfits.append(run.seed)
            diff = sorted(set(stored) ^ set(shapes)) or [k for k in shapes if stored.get(k) != shapes[k]]
            key = diff[0]
            example = (
                example
                or f"{key}: {stored.get(key, 'missing')} in the checkpoint, {shapes.get(key, 'missing')} now"
            )
    if misfits:
        changed = config_changes(before, record.fingerprint) if before else []
        details = "; ".join(
            f"{k}: {before.get(k, '<unset>')} -> {record.fingerprint.get(k, '<unset>')}" for k in changed
        )
        raise ValueError(
            f"`root_dir` {str(config.root)!r}: allow_config_change=True, but the checkpoints of seeds"
            f" {misfits} do not fit this run's model ({details or 'the model changed'}; {example}),"
            " so their scores cannot be compared as one study: best.ckpt, the test of the winner and"
            " the barriers load them into this model. Nothing was trained. Use another root_dir for the"
            " new model, or restore its configuration."
        )
