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
