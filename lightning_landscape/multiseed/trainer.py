"""MultiSeedTrainer: train any LightningModule from K random initializations and keep the best.

A non-convex loss has many minima of unequal quality; the practitioner's remedy is to retrain from
several seeds and keep the run that is best on validation,

.. math::

    s^\\star = \\arg\\min_{s \\in S} \\; \\min_t \\; L_{\\mathrm{val}}(\\theta_t^{(s)}),

where :math:`\\theta_t^{(s)}` is the iterate of seed :math:`s` at checkpoint :math:`t` (``mode="max"``
takes the arg max). Each seed is an ordinary ``Trainer.fit`` with its own folder, checkpoints and
TensorBoard logs; ``summary.json`` records every seed and makes a rerun resume where it stopped.
"""

from __future__ import annotations

import copy
import inspect
import logging
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

from lightning.fabric.plugins import CheckpointIO
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch import Callback, LightningDataModule, LightningModule, Trainer, seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from lightning_landscape.multiseed._lightning import SIGTERMException, is_rank_zero
from lightning_landscape.multiseed.barriers import DEFAULT_TOL as BARRIER_TOL
from lightning_landscape.multiseed.build import datamodule_builder, model_builder
from lightning_landscape.multiseed.executors import (
    CONFIG_ERROR_KEY,
    Executor,
    RayExecutor,
    SeedJob,
    SeedTask,
    SequentialExecutor,
)
from lightning_landscape.multiseed.heldout import (
    TEST_CHOICES,
    TestWhich,
    after_selection,
    derive_test_monitor,
    names_test_set,
)
from lightning_landscape.multiseed.paths import (
    BEST_CHECKPOINT,
    LAST_CHECKPOINT,
    checkpoint_dir,
    last_checkpoint,
    seed_dir,
)
from lightning_landscape.multiseed.progress import RunDisplay
from lightning_landscape.multiseed.record import (
    Record,
    RunLock,
    check_checkpoint,
    config_changes,
    describe,
    read_record,
    remove_stale_temporaries,
    write_record,
)
from lightning_landscape.multiseed.report import (
    plot_best_of_k,
    plot_seeds,
    select_best,
    write_hparams,
    write_summary_csv,
)
from lightning_landscape.multiseed.result import MultiSeedResult, SeedRun
from lightning_landscape.multiseed.selection import STILL_IMPROVING_FRACTION

log = logging.getLogger(__name__)

ExecutorName = Literal["sequential", "ray", "vectorized"]
_EXECUTORS = ("sequential", "ray", "vectorized")
_MODES = ("min", "max")
# Trainer arguments the multi-seed trainer sets itself, with what to use instead.
_OWNED_TRAINER_ARGS = {
    "default_root_dir": "`root_dir` (each seed trains in root_dir/seed_<k>/)",
}
# Overrides that turn the user's Trainer into a one-batch probe of what gets logged.
_PREFLIGHT_DROP = (
    "max_epochs", "min_epochs", "max_steps", "min_steps", "max_time", "val_check_interval",
    "check_val_every_n_epoch", "limit_train_batches", "limit_val_batches", "num_sanity_val_steps",
    "logger", "enable_checkpointing", "callbacks", "default_root_dir", "enable_progress_bar",
    "enable_model_summary", "devices", "num_nodes", "strategy", "profiler", "overfit_batches",
)  # fmt: skip
# Trainer arguments that change what is shown or logged, never what a seed computes. Callbacks are left
# out too: most observe (ours leave training bit-identical), and one that steers (EarlyStopping) is the
# user's to keep.
_NOT_IN_FINGERPRINT = frozenset(
    {"enable_progress_bar", "enable_model_summary", "logger", "log_every_n_steps", "profiler", "callbacks"}
)
#: Exit codes: every asked-for seed finished (0), a seed failed or an error (1), a bad argument or a
#: refused run folder (2, the CLI), the run folder in use (3, the CLI), interrupted and resumable
#: (128 + the signal: 130 for Ctrl-C, 143 for SIGTERM).
EXIT_INTERRUPTED_SIGINT = 130
EXIT_INTERRUPTED_SIGTERM = 143


class MultiSeedInterrupted(SystemExit):
    """The run was interrupted (SIGTERM, Ctrl-C) with seeds unfinished; rerunning resumes it.

    A ``SystemExit`` with code ``128 + signal`` (143 for SIGTERM, 130 for Ctrl-C), so a script that does
    not catch it exits with that code, as a process killed by the signal would report it.
    """

    def __init__(self, message: str, code: int) -> None:
        super().__init__(code)
        self.message = message

    def __str__(self) -> str:
        return self.message


def _trainer_parameters() -> set[str]:
    return set(inspect.signature(Trainer.__init__).parameters) - {"self"}


class MultiSeedTrainer:
    """Trains a LightningModule once per seed and keeps the seed that is best on ``monitor``.

    Each seed ``k`` gets ``seed_everything(k, workers=True)`` *before* its model and data are built, a
    fresh ``Trainer(**trainer_kwargs)`` in ``root_dir/seed_<k>/`` with two plain ``ModelCheckpoint`` s under
    ``checkpoints/`` (the best on ``monitor``, and ``last.ckpt`` rewritten at every save point), a
    ``TensorBoardLogger`` writing into the seed's folder, and deep copies of the user's callbacks. A seed's
    score is its checkpoint's ``best_model_score``; the same seed gives the same score on the same machine.

    ``root_dir/summary.json`` is the single source of truth (:mod:`~lightning_landscape.multiseed.record`):
    rewritten atomically after every seed, validated when read, with paths relative to ``root_dir`` (the
    folder can be moved or copied). One process at a time runs a folder (an OS lock; a second one fails
    naming the holder's pid and host). A rerun with the same ``root_dir`` skips finished seeds and
    continues an interrupted one from its ``last.ckpt`` (a SIGKILL loses at most the steps since that
    checkpoint; the global RNG states travel in the checkpoint, so a resumed seed ends as an uninterrupted
    one would when its last checkpoint was written at an epoch end). Every file is loaded with
    ``weights_only=True``. Seeds recorded earlier but not asked for this time stay in the record
    untouched; the result and the ranking cover the seeds asked for. A rerun whose configuration (model
    class and arguments, datamodule, executor, Trainer arguments that change results; not the callbacks)
    differs from the
    one the finished seeds were trained with is refused, naming the keys, unless
    ``allow_config_change=True``. Finished work is never deleted: a seed folder the record does not
    account for is set aside as ``seed_<k>.orphan-<time>/``. At the end: ``best.ckpt`` (a copy of the
    winner's best checkpoint, checked to load and to hold the recorded score first), ``summary.csv``,
    ``seeds.png`` and a TensorBoard hparams entry per seed.

    A seed that raises or whose monitored value is never finite is recorded as ``"failed"`` and the
    others go on. A configuration that cannot work fails before the first seed trains. A SIGTERM or
    Ctrl-C stops the run with :class:`MultiSeedInterrupted` (exit code 143 or 130); rerun to resume.

    Args:
        seeds: how many seeds (``0 .. seeds-1``) or an explicit list of distinct integers.
        monitor: the logged metric that ranks the seeds.
        mode: ``"min"`` or ``"max"``: whether a lower or a higher ``monitor`` is better.
        root_dir: the folder of the run; reuse it to resume.
        executor: ``"sequential"`` (in this process), ``"ray"`` (one Ray task per seed; needs the
            ``ray`` extra) or ``"vectorized"`` (all seeds as one vectorized ensemble; see
            :mod:`lightning_landscape.multiseed.vectorized`).
        model_kwargs: keyword arguments for a model class or factory.
        ray_address: address of a Ray cluster; ``None`` starts a local one (unless Ray is already
            initialized in this process, which is then used as it is).
        cpus_per_seed: CPUs Ray reserves per seed.
        gpus_per_seed: GPUs Ray reserves per seed; a fraction lets several seeds share one GPU.
        max_concurrent: most seeds Ray runs at once; ``None`` leaves it to the cluster's resources.
        max_retries: how often Ray re-runs a seed whose worker process died.
        allow_config_change: rank seeds trained with another configuration together with the new ones
            (the record then holds the new configuration).
        test: after the selection, run ``Trainer.test`` on the best checkpoint of the winner
            (``"best"``), of every finished seed (``"all"``: also gives best-of-k's expected test score)
            or of none; only when there is a test split (``test_dataloaders=`` or the datamodule's).
        test_monitor: the test metric recorded as ``test_score``; default: ``monitor`` with ``val``
            replaced by ``test`` (``val_loss`` -> ``test_loss``).
        select_on_test: allow a ``monitor`` that names a test metric. Selecting on the test set makes
            the winner's test score optimistic, so it is refused unless asked for.
        still_improving_fraction: a seed whose best checkpoint lies in this final share of training
            is flagged ``still_improving``.
        quiet: no progress bar over the seeds and no Lightning notices below a warning (for scripts).
            Either way each of Lightning's banners and notices (and the model summary) appears once
            per run, not once per seed.
        barriers: after the selection, the loss barrier between the best seed's best checkpoint and each
            other finished seed's (``True`` or ``"best"``), or between every pair (``"all"``), on the
            first 4 train batches: the ``barriers`` block of ``summary.json``, ``barriers.png`` (heatmap),
            ``interpolation.png`` (the segments) and one summary line (seeds sharing the best basin).
        barrier_tol: the barrier (loss units) below which a seed shares the best seed's basin.
        **trainer_kwargs: arguments of every seed's ``Trainer`` (``max_epochs``, ``callbacks``,
            ``accelerator``, ...). ``logger`` may be ``True``/``None`` (a TensorBoardLogger per seed) or
            ``False``; checkpointing cannot be switched off.

    Raises:
        ValueError: a bad ``seeds``, ``monitor``, ``mode``, ``executor``, resource or Trainer argument.
        TypeError: an argument of the wrong type, or an unknown Trainer argument.
        ImportError: ``executor="ray"`` without Ray installed.

    Example:
        >>> import tempfile
        >>> from examples.shallow_relu import ShallowReLU, ShallowReLUDataModule  # in the repository
        >>> root = tempfile.mkdtemp()
        >>> trainer = MultiSeedTrainer(seeds=2, monitor="val_loss", root_dir=root, max_steps=20, quiet=True,
        ...                            enable_progress_bar=False, enable_model_summary=False)
        >>> data = ShallowReLUDataModule(batch_size=64, steps_per_epoch=10, val_size=256)
        >>> result = trainer.fit(ShallowReLU, datamodule=data)
        >>> result.best_seed in (0, 1), [run.status for run in result.runs]
        (True, ['finished', 'finished'])
        >>> best = ShallowReLU.load_from_checkpoint(result.best_model_path, weights_only=True)
    """

    def __init__(
        self,
        seeds: int | list[int] = 5,
        monitor: str = "val_loss",
        mode: Literal["min", "max"] = "min",
        root_dir: str | Path = "multiseed",
        executor: ExecutorName = "sequential",
        model_kwargs: dict[str, Any] | None = None,
        ray_address: str | None = None,
        cpus_per_seed: float = 1.0,
        gpus_per_seed: float = 0.0,
        max_concurrent: int | None = None,
        max_retries: int = 3,
        allow_config_change: bool = False,
        test: TestWhich = "best",
        test_monitor: str | None = None,
        select_on_test: bool = False,
        still_improving_fraction: float = STILL_IMPROVING_FRACTION,
        quiet: bool = False,
        barriers: bool | Literal["best", "all"] = False,
        barrier_tol: float = BARRIER_TOL,
        **trainer_kwargs: Any,
    ) -> None:
        self.seeds = self._check_seeds(seeds)
        if test not in TEST_CHOICES:
            raise ValueError(f"`test` must be one of {TEST_CHOICES}, got {test!r}")
        if test_monitor is not None and (not isinstance(test_monitor, str) or not test_monitor):
            raise ValueError(f"`test_monitor` must be None or a logged metric's name, got {test_monitor!r}")
        if isinstance(monitor, str) and names_test_set(monitor) and select_on_test is not True:
            raise ValueError(
                f"`monitor={monitor!r}` selects the seed on the test set, which makes the test score of the"
                " winner optimistic; monitor a validation metric, or pass select_on_test=True if you mean it"
            )
        if isinstance(still_improving_fraction, bool) or not (
            isinstance(still_improving_fraction, (int, float)) and 0 <= still_improving_fraction <= 1
        ):
            raise ValueError(
                f"`still_improving_fraction` must be a number in [0, 1], got {still_improving_fraction!r}"
            )
        if not isinstance(quiet, bool):
            raise TypeError(f"`quiet` must be True or False, got {quiet!r}")
        self.quiet = quiet
        self.test: TestWhich = test
        self.test_monitor = test_monitor or (derive_test_monitor(monitor) if isinstance(monitor, str) else "")
        self.still_improving_fraction = float(still_improving_fraction)
        self._job: SeedJob | None = None
        self._test_dataloaders: Any = None
        if not isinstance(monitor, str) or not monitor:
            raise ValueError(f"`monitor` must be the non-empty name of a logged metric, got {monitor!r}")
        if mode not in _MODES:
            raise ValueError(f"`mode` must be one of {_MODES}, got {mode!r}")
        if executor not in _EXECUTORS:
            raise ValueError(f"`executor` must be one of {_EXECUTORS}, got {executor!r}")
        if not isinstance(root_dir, (str, os.PathLike)) or not str(root_dir):
            raise TypeError(f"`root_dir` must be a path, got {root_dir!r}")
        if model_kwargs is not None and not isinstance(model_kwargs, dict):
            raise TypeError(f"`model_kwargs` must be a dict or None, got {type(model_kwargs).__name__}")
        if not isinstance(allow_config_change, bool):
            raise TypeError(f"`allow_config_change` must be True or False, got {allow_config_change!r}")
        if ray_address is not None and not isinstance(ray_address, str):
            raise TypeError(f"`ray_address` must be a string or None, got {ray_address!r}")
        self._check_resources(cpus_per_seed, gpus_per_seed, max_concurrent, max_retries)
        self._check_trainer_kwargs(trainer_kwargs)
        if executor == "ray":
            try:
                import ray  # noqa: F401
            except ImportError as err:
                raise ImportError(
                    "executor='ray' needs Ray: `pip install 'lightning-landscape[ray]'`"
                ) from err
        self.monitor = monitor
        self.mode: Literal["min", "max"] = mode
        self.root_dir = Path(root_dir)
        self.executor: ExecutorName = executor
        self.model_kwargs = model_kwargs
        self.ray_address = ray_address
        self.cpus_per_seed = float(cpus_per_seed)
        self.gpus_per_seed = float(gpus_per_seed)
        self.max_concurrent = max_concurrent
        self.max_retries = max_retries
        self.allow_config_change = allow_config_change
        if barriers not in (False, True, "best", "all"):
            raise ValueError(f"`barriers` must be False, True, 'best' or 'all', got {barriers!r}")
        if isinstance(barrier_tol, bool) or not isinstance(barrier_tol, (int, float)) or not barrier_tol >= 0:
            raise ValueError(f"`barrier_tol` must be a number >= 0, got {barrier_tol!r}")
        self.barriers: Literal["best", "all"] | None = "best" if barriers is True else (barriers or None)
        self.barrier_tol = float(barrier_tol)
        self.trainer_kwargs = trainer_kwargs

    @staticmethod
    def _check_seeds(seeds: Any) -> list[int]:
        if isinstance(seeds, bool):
            raise TypeError(f"`seeds` must be a count or a list of integers, got {seeds!r}")
        if isinstance(seeds, int):
            if seeds < 1:
                raise ValueError(f"`seeds` must be at least 1 (a count) or a non-empty list, got {seeds}")
            return list(range(seeds))
        if not isinstance(seeds, Sequence) or isinstance(seeds, str):
            raise TypeError(f"`seeds` must be a count or a list of integers, got {seeds!r}")
        if len(seeds) == 0:
            raise ValueError("`seeds` must be at least 1 (a count) or a non-empty list, got []")
        bad = [s for s in seeds if isinstance(s, bool) or not isinstance(s, int)]
        if bad:
            raise TypeError(f"`seeds` must hold integers only, got {bad!r} in {list(seeds)!r}")
        out_of_range = [s for s in seeds if not 0 <= s <= 2**32 - 1]
        if out_of_range:
            raise ValueError(f"`seeds` must lie in [0, 2**32 - 1] (numpy's range), got {out_of_range!r}")
        duplicates = sorted({s for s in seeds if list(seeds).count(s) > 1})
        if duplicates:
            raise ValueError(f"`seeds` must be distinct, got duplicates {duplicates} in {list(seeds)!r}")
        return [int(s) for s in seeds]

    @staticmethod
    def _check_resources(
        cpus_per_seed: float, gpus_per_seed: float, max_concurrent: int | None, max_retries: int
    ) -> None:
        for name, value in (("cpus_per_seed", cpus_per_seed), ("gpus_per_seed", gpus_per_seed)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise TypeError(f"`{name}` must be a number, got {value!r}")
            if value < 0:
                raise ValueError(f"`{name}` must be >= 0, got {value}")
        if gpus_per_seed > 1 and gpus_per_seed != int(gpus_per_seed):
            raise ValueError(
                f"`gpus_per_seed` above 1 must be a whole number (Ray's rule), got {gpus_per_seed}"
            )
        if max_concurrent is not None and (
            isinstance(max_concurrent, bool) or not isinstance(max_concurrent, int) or max_concurrent < 1
        ):
            raise ValueError(f"`max_concurrent` must be None or an integer >= 1, got {max_concurrent!r}")
        if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < -1:
            raise ValueError(
                f"`max_retries` must be an integer >= 0 (or -1: retry forever), got {max_retries!r}"
            )

    @staticmethod
    def _check_trainer_kwargs(trainer_kwargs: dict[str, Any]) -> None:
        unknown = sorted(set(trainer_kwargs) - _trainer_parameters())
        if unknown:
            raise TypeError(
                f"unknown Trainer argument(s) {unknown}: MultiSeedTrainer passes **trainer_kwargs to Trainer"
            )
        for name, instead in _OWNED_TRAINER_ARGS.items():
            if name in trainer_kwargs:
                raise ValueError(f"`{name}` is set by MultiSeedTrainer; use {instead}")
        if trainer_kwargs.get("enable_checkpointing") is False:
            raise ValueError(
                "`enable_checkpointing=False` cannot work: each seed's score and resume come from"
                " its checkpoints"
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
            items = [callbacks] if isinstance(callbacks, Callback) else callbacks
            if not isinstance(items, (list, tuple)) or not all(isinstance(c, Callback) for c in items):
                raise TypeError(f"`callbacks` must be a Callback or a list of Callbacks, got {callbacks!r}")
        plugins = trainer_kwargs.get("plugins")
        items = plugins if isinstance(plugins, (list, tuple)) else [plugins]
        if any(isinstance(p, CheckpointIO) for p in items):
            raise ValueError(
                "`plugins` must not hold a CheckpointIO: every seed writes its checkpoints atomically and"
                " reads them with weights_only=True through MultiSeedTrainer's own"
            )

    def _check_root_dir(self) -> None:
        root = self.root_dir
        if root.exists() and not root.is_dir():
            raise ValueError(f"`root_dir` {str(root)!r} exists and is not a directory")
        try:
            root.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=root, prefix=".write-test-"):
                pass
        except OSError as err:
            raise ValueError(f"`root_dir` {str(root)!r} is not writable: {err}") from err

    def _preflight(self, job: SeedJob) -> None:
        """One batch of training and one of validation, to learn before any seed trains whether
        ``monitor`` is logged at all."""
        kwargs = {k: v for k, v in self.trainer_kwargs.items() if k not in _PREFLIGHT_DROP}
        callbacks = self.trainer_kwargs.get("callbacks") or []
        callbacks = [callbacks] if isinstance(callbacks, Callback) else list(callbacks)
        with tempfile.TemporaryDirectory(dir=self.root_dir, prefix=".preflight-") as scratch:
            try:
                seed_everything(self.seeds[0], workers=True, verbose=False)
                model = job.build_model()
                datamodule, train = job.build_data()
                trainer = Trainer(
                    **kwargs,
                    max_epochs=1,
                    limit_train_batches=1,
                    # A user who switched validation off keeps it off: the monitor must come from training.
                    limit_val_batches=0 if self.trainer_kwargs.get("limit_val_batches") == 0 else 1,
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
            except MisconfigurationException as err:
                raise ValueError(
                    f"the configuration cannot train (found before the first seed): {err}"
                ) from err
            except Exception as err:
                # Possibly seed-specific: let the seeds run and record their own errors.
                rank_zero_warn(f"MultiSeedTrainer pre-flight check raised {type(err).__name__}: {err}")
                return
        logged = sorted(trainer.callback_metrics)
        if self.monitor not in logged:
            raise ValueError(
                f"`monitor={self.monitor!r}` is never logged; the module logs {logged}. Pass one of these as"
                f" `monitor`, or log it with `self.log({self.monitor!r}, value)`."
            )

    def fit(
        self,
        model: type[LightningModule] | Callable[[], LightningModule] | LightningModule,
        datamodule: type[LightningDataModule]
        | Callable[[], LightningDataModule]
        | LightningDataModule
        | None = None,
        train_dataloaders: Any = None,
        val_dataloaders: Any = None,
        test_dataloaders: Any = None,
    ) -> MultiSeedResult:
        """Trains every seed not yet finished in ``root_dir``, then selects and reports the best.

        Args:
            model: a LightningModule class (built with ``model_kwargs``), a zero-argument factory, or an
                instance (rebuilt per seed from its saved hyperparameters, else re-initialized through
                its submodules' ``reset_parameters()``).
            datamodule: a LightningDataModule class, factory or instance (rebuilt from its saved
                hyperparameters, else deep-copied per seed), or ``None``.
            train_dataloaders: as in ``Trainer.fit``; shared by all seeds.
            val_dataloaders: as in ``Trainer.fit``; shared by all seeds.
            test_dataloaders: the held-out test set for ``Trainer.test`` of the selected seed (``test``);
                without it the datamodule's ``test_dataloader`` is used when it has one.

        Returns:
            The :class:`MultiSeedResult` of the seeds asked for, as recorded in ``root_dir/summary.json``.
            Check ``result.failed``: a run in which some seeds failed still returns.

        Raises:
            TypeError: ``model`` or ``datamodule`` cannot be built per seed.
            ValueError: ``root_dir`` is not writable, holds a run with another ``monitor``/``mode`` or
                configuration, ``monitor`` is never logged, or the configuration cannot train.
            RecordError: (a ``ValueError``) a file in ``root_dir`` cannot be trusted; the message names it.
            RootDirBusyError: another process is running this ``root_dir``.
            MultiSeedInterrupted: (a ``SystemExit``) a SIGTERM or Ctrl-C stopped the run; rerun to resume.
            RuntimeError: every seed failed; the message lists each seed's reason.
        """
        if datamodule is not None and train_dataloaders is not None:
            model_builder(model, self.model_kwargs)
            datamodule_builder(datamodule)
            raise ValueError("pass either `datamodule` or `train_dataloaders`, not both")
        job = SeedJob(
            # Absolute: a Ray worker may run in another working directory.
            root_dir=os.path.abspath(self.root_dir),
            monitor=self.monitor,
            mode=self.mode,
            trainer_kwargs=dict(self.trainer_kwargs),
            model=model_builder(model, self.model_kwargs),
            datamodule=datamodule_builder(datamodule),
            train_dataloaders=train_dataloaders,
            val_dataloaders=val_dataloaders,
        )
        self._job, self._test_dataloaders = job, test_dataloaders
        executor = self._make_executor()
        self._check_root_dir()
        if not is_rank_zero():  # a DDP rank > 0 re-running the script: rank zero owns the folder
            return self._run(job, executor)
        with RunLock(self.root_dir):
            return self._run(job, executor)

    def _make_executor(self) -> Executor:
        if self.executor == "ray":
            return RayExecutor(
                address=self.ray_address, cpus_per_seed=self.cpus_per_seed, gpus_per_seed=self.gpus_per_seed,
                max_concurrent=self.max_concurrent, max_retries=self.max_retries,
            )  # fmt: skip
        if self.executor == "vectorized":
            from lightning_landscape.multiseed.vectorized import VectorizedExecutor

            return VectorizedExecutor()
        return SequentialExecutor()

    def _run(self, job: SeedJob, executor: Executor) -> MultiSeedResult:
        self._job = job  # the post-selection steps rebuild models and data from it
        if is_rank_zero():
            remove_stale_temporaries(self.root_dir)
        record = read_record(self.root_dir)
        record = self._adopt(record, self._fingerprint(job))
        tasks = self._plan(record)
        with RunDisplay(len(self.seeds), len(self.seeds) - len(tasks), self.monitor, self.quiet) as display:
            if tasks:
                executor.check(job)
                if self.executor != "ray":
                    # Ray seeds may need resources this driver lacks; a worker reports a missing monitor.
                    self._preflight(job)
            self._write(record)
            if tasks:
                self._execute(job, executor, tasks, record, display)
            return self._finish(record)

    def _fingerprint(self, job: SeedJob) -> dict[str, str]:
        """What the finished seeds' scores depend on, key by key, as stable text."""
        fingerprint = {
            "executor": self.executor,
            "model": describe(job.model.target_type),
            "model.kwargs": describe(job.model.kwargs),
        }
        if job.datamodule is not None:
            fingerprint["datamodule"] = describe(job.datamodule.target_type)
            fingerprint["datamodule.kwargs"] = describe(job.datamodule.kwargs)
        for name, value in sorted(self.trainer_kwargs.items()):
            if name not in _NOT_IN_FINGERPRINT:
                fingerprint[f"trainer.{name}"] = describe(value)
        return fingerprint

    def _adopt(self, record: Record | None, fingerprint: dict[str, str]) -> Record:
        """The record to continue: the one on disk if it is compatible, else a refusal naming the difference.

        While no seed has finished, nothing is ranked yet: the folder takes this run's settings.
        """
        if record is None or not any(r.status == "finished" for r in record.runs.values()):
            runs = record.runs if record is not None else {}
            extra = record.extra if record is not None else {}
            return Record(self.monitor, self.mode, runs=runs, fingerprint=fingerprint, extra=extra)
        root = str(self.root_dir)
        for name, value in (("monitor", self.monitor), ("mode", self.mode)):
            if getattr(record, name) != value:
                raise ValueError(
                    f"`root_dir` {root!r} holds a run with {name}={getattr(record, name)!r};"
                    f" got `{name}={value!r}`. Use another root_dir or the same {name}."
                )
        # A record from a release without fingerprints cannot tell: it takes this run's.
        changed = config_changes(record.fingerprint, fingerprint) if record.fingerprint else []
        if not record.fingerprint:
            record.fingerprint = fingerprint
        if changed and not self.allow_config_change:
            details = "; ".join(
                f"{k}: {record.fingerprint.get(k, '<unset>')} -> {fingerprint.get(k, '<unset>')}"
                for k in changed
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

    def _plan(self, record: Record) -> list[SeedTask]:
        """Decides per asked seed: keep (finished), resume (from a usable ``last.ckpt``) or start afresh.

        A fresh start clears the folder of an attempt the record lists as unfinished; a folder the record
        does not account for (no entry, or a finished entry whose checkpoint is gone) is set aside, never
        deleted. Seeds not asked for are left as they are.
        """
        tasks: list[SeedTask] = []
        for seed in self.seeds:
            old = record.runs.get(seed)
            folder = seed_dir(self.root_dir, seed)
            if old is not None and old.status == "finished":
                if Path(old.best_model_path).is_file():
                    continue
                self._set_aside(folder, f"its best checkpoint {old.best_model_path!r} is missing")
                old = None
            last = last_checkpoint(self.root_dir, seed)
            resume = False
            if old is not None and old.status == "running" and last.is_file():
                problem = check_checkpoint(last, self.monitor, None)
                if problem is None:
                    resume = True
                else:
                    self._set_aside(folder, problem)
            if not resume and folder.exists():
                if old is None:
                    self._set_aside(folder, "summary.json has no entry for it")
                elif is_rank_zero():
                    # The record's own unfinished attempt: a fresh start must not mix with its files.
                    shutil.rmtree(folder)
            prior = 0.0
            if resume and old is not None:
                started = old.extra.get("attempt_started")
                if (
                    isinstance(started, bool)
                    or not isinstance(started, (int, float))
                    or not math.isfinite(started)
                ):
                    started = None  # not a time this class wrote: the resume keeps the recorded time only
                # The interrupted attempt's time up to its last checkpoint is what the resume keeps.
                prior = old.wall_time + (max(0.0, last.stat().st_mtime - started) if started else 0.0)
            record.runs[seed] = SeedRun(seed=seed, status="pending", wall_time=prior, log_dir=str(folder))
            tasks.append(SeedTask(seed=seed, resume=resume, prior_wall_time=prior))
        return tasks

    def _set_aside(self, folder: Path, why: str) -> None:
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

    def _execute(
        self, job: SeedJob, executor: Executor, tasks: list[SeedTask], record: Record, display: RunDisplay
    ) -> None:
        runs = record.runs
        done = len(self.seeds) - len(tasks)
        # The user's own ModelCheckpoint may write into the same folder: then every file there is theirs too.
        own_checkpoints = any(isinstance(c, ModelCheckpoint) for c in job.trainer_args()[1])
        total = len(self.seeds)

        def on_start(task: SeedTask) -> None:
            run = runs[task.seed]
            run.status = "running"
            run.extra["attempt_started"] = time.time()
            self._write(record)

        def on_result(run: SeedRun) -> None:
            nonlocal done
            if CONFIG_ERROR_KEY in run.extra:
                runs[run.seed].status = "pending"
                self._write(record)
                raise ValueError(
                    f"`monitor={self.monitor!r}` is never logged (seed {run.seed}):"
                    f" {run.extra[CONFIG_ERROR_KEY]}"
                )
            runs[run.seed] = run
            done += 1
            if run.status == "finished" and is_rank_zero():
                write_hparams(run.log_dir or seed_dir(self.root_dir, run.seed), run, self.monitor, self.mode)
                if not own_checkpoints:
                    self._remove_strays(run)
            self._write(record)
            self._progress(run, done, total, record)
            display.update(run.seed, select_best([runs[s] for s in self.seeds], self.mode))

        try:
            executor.run(job, tasks, on_start, on_result)
        except (KeyboardInterrupt, SystemExit) as err:
            code = EXIT_INTERRUPTED_SIGTERM if isinstance(err, SIGTERMException) else EXIT_INTERRUPTED_SIGINT
            unfinished = [s for s in self.seeds if runs[s].status not in ("finished", "failed")]
            self._write(record)
            signal_name = "SIGTERM" if code == EXIT_INTERRUPTED_SIGTERM else "Ctrl-C"
            message = (
                f"MultiSeedTrainer interrupted ({signal_name})"
                f" with seeds {unfinished} unfinished; rerun the same command with root_dir="
                f"{str(self.root_dir)!r} to resume them (finished seeds are kept)."
            )
            log.error(message)
            raise MultiSeedInterrupted(message, code) from err

    def _remove_strays(self, run: SeedRun) -> None:
        """Deletes top-k files a kill left behind (written just before it, not yet in ``last.ckpt``)."""
        keep = {Path(run.best_model_path).name, LAST_CHECKPOINT}
        for path in checkpoint_dir(self.root_dir, run.seed).glob("epoch=*.ckpt"):
            if path.name not in keep:
                path.unlink()

    def _write(self, record: Record, best: SeedRun | None = None) -> None:
        if is_rank_zero():
            write_record(record, self.root_dir, self.seeds, best)

    def _progress(self, run: SeedRun, done: int, total: int, record: Record) -> None:
        best = select_best([record.runs[s] for s in self.seeds], self.mode)
        best_text = (
            f"best so far: seed {best.seed} ({self.monitor}={best.score:.6g})"
            if best
            else "no seed finished yet"
        )
        if run.status == "finished":
            head = f"seed {run.seed} finished: {self.monitor}={run.score:.6g}"
        else:
            head = f"seed {run.seed} failed: {run.error}"
        rank_zero_info(f"[MultiSeedTrainer {done}/{total}] {head} in {run.wall_time:.1f}s; {best_text}")

    def _finish(self, record: Record) -> MultiSeedResult:
        """Selects the best asked-for seed whose checkpoint holds up; writes best.ckpt, summaries, plot."""
        ordered = [record.runs[s] for s in self.seeds]
        best = None
        while True:
            best = select_best(ordered, self.mode)
            if best is None:
                break
            problem = check_checkpoint(best.best_model_path, self.monitor, best.score)
            if problem is None:
                break
            # Not counted as finished: the winner's file cannot stand for its score.
            best.status, best.error = "failed", f"best checkpoint unusable: {problem}"
            rank_zero_warn(f"MultiSeedTrainer: seed {best.seed} {best.error}; rerun to train it again")
        if best is None:
            self._write(record)
            reasons = "; ".join(f"seed {r.seed}: {r.error or r.status}" for r in ordered)
            raise RuntimeError(f"all {len(ordered)} seeds failed ({reasons})")
        best_path = self.root_dir / BEST_CHECKPOINT
        if is_rank_zero():
            tmp = best_path.with_name(f".{BEST_CHECKPOINT}.tmp")
            shutil.copyfile(best.best_model_path, tmp)
            os.replace(tmp, best_path)
        assert best.score is not None
        result = MultiSeedResult(
            runs=ordered,
            monitor=self.monitor,
            mode=self.mode,
            best_seed=best.seed,
            best_score=float(best.score),
            best_model_path=str(best_path),
            root_dir=str(self.root_dir),
        )
        self._after_selection(result, record)
        if is_rank_zero():
            self._write(record, best)
            write_summary_csv(self.root_dir, ordered)
            plot_seeds(self.root_dir, ordered, self.monitor, best)
        return result

    def _after_selection(self, result: MultiSeedResult, record: Record) -> None:
        """Steps that run once the best seed is known and ``best.ckpt`` is written, under the run's lock.

        A step may add per-seed fields to ``result.runs`` (the same objects as ``record.runs``) and
        top-level blocks to ``record.extra``; the record is written right after. Here: the held-out test
        of the winner (or of every seed), ``still_improving``, the best-of-k curve and the optimism; with
        ``barriers``: the loss barriers between the best seed's best checkpoint and the others'
        (``record.extra["barriers"]``, ``barriers.png``, ``interpolation.png``; see
        :mod:`~lightning_landscape.multiseed.barriers`).
        """
        if self._job is not None and is_rank_zero():
            after_selection(
                result, record.extra, self._job, test=self.test, test_monitor=self.test_monitor,
                test_dataloaders=self._test_dataloaders, trainer_kwargs=self.trainer_kwargs,
                still_improving_fraction=self.still_improving_fraction,
            )  # fmt: skip
            curve = result.best_of_k()
            if curve is not None:
                plot_best_of_k(self.root_dir, curve, self.monitor)
        if self.barriers is not None and is_rank_zero():
            from lightning_landscape.multiseed.barriers import barriers_after_selection

            block = barriers_after_selection(
                self._job, result.runs, result.best_seed, self.root_dir, self.barriers, self.barrier_tol
            )
            if block is not None:
                record.extra["barriers"] = block
                rank_zero_info(f"MultiSeedTrainer: {block['summary']}")
