"""How seeds are run: one contract, three executors.

The contract: an executor gets a :class:`SeedJob` (everything the seeds share), the :class:`SeedTask`
list (which seeds, resumed or not) and two callbacks, ``on_start(task)`` before a seed trains and
``on_result(run)`` with its :class:`~lightning_landscape.multiseed.result.SeedRun` after, both called in
the driver process; it never writes the record itself (the trainer does, under the run's lock).

* :class:`SequentialExecutor` calls :func:`run_seed` for each task in this process;
* :class:`RayExecutor` calls :func:`run_seed` as one Ray task per seed;
* :class:`~lightning_landscape.multiseed.vectorized.VectorizedExecutor` trains all tasks as one ensemble.

:func:`run_seed` trains one seed from start to finish, or from its ``last.ckpt`` when one exists (the
driver has cleared the folder of a seed that starts afresh, so a ``last.ckpt`` there is this attempt's own:
a Ray retry resumes rather than starts over). It never raises for a failure of the seed itself; an
interruption (SIGTERM, Ctrl-C) propagates.
"""

from __future__ import annotations

import copy
import errno
import logging
import math
import os
import time
import traceback
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from lightning.pytorch import Callback, LightningDataModule, LightningModule, Trainer, seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from typing_extensions import override

from lightning_landscape._namespace import in_namespace, loaded_types, misconfiguration_types, namespace_of
from lightning_landscape._rng import rng_state, set_rng_state
from lightning_landscape.multiseed._lightning import plain_hparams
from lightning_landscape.multiseed.build import ObjectBuilder
from lightning_landscape.multiseed.checkpoints import SafeCheckpointIO
from lightning_landscape.multiseed.paths import (
    LAST_CHECKPOINT,
    checkpoint_dir,
    relative,
    seed_dir,
    seed_name,
)
from lightning_landscape.multiseed.progress import display_callbacks
from lightning_landscape.multiseed.result import SeedRun

log = logging.getLogger(__name__)

# Set in SeedRun.extra when the monitored key is missing: a configuration error, not a seed failure.
CONFIG_ERROR_KEY = "config_error"
_MISSING_MONITOR_TEXT = "could not find the monitored key"
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


class _GlobalRNGState(Callback):
    """Carries the global RNG states through a checkpoint, so a resumed seed draws what it would have.

    Lightning restores weights, optimizer and loops but not the global generators that shuffle the
    data and drive dropout. The states are captured when the checkpoint is written and set again as
    soon as it is loaded, before Lightning re-creates the training iterator (which draws the shuffle
    and prefetches a batch). A checkpoint written by ``ModelCheckpoint`` at the end of an epoch's
    validation makes Lightning repeat that validation on resume; the uninterrupted run drew nothing
    there, so the repeat is made RNG-neutral, and a checkpoint re-written during it keeps the loaded
    states.
    """

    def __init__(self) -> None:
        self._loaded: dict[str, Any] | None = None
        self._stash: dict[str, Any] | None = None

    @property
    @override
    def state_key(self) -> str:
        return "MultiSeedGlobalRNGState"

    @override
    def state_dict(self) -> dict[str, Any]:
        return self._loaded if self._loaded is not None else rng_state()

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        set_rng_state(state_dict)
        self._loaded = state_dict

    @override
    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._loaded is not None:
            self._stash = rng_state()

    @override
    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._stash is not None:
            set_rng_state(self._stash)
            self._stash = None

    @override
    def on_train_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._loaded = None


@dataclass
class SeedJob:
    """Everything the seeds share: sent once to each worker.

    Args:
        root_dir: the run's folder.
        monitor: the metric a :class:`ModelCheckpoint` tracks.
        mode: ``"min"`` or ``"max"``.
        trainer_kwargs: the user's ``Trainer`` arguments (callbacks are deep-copied per seed).
        model: builds the model.
        datamodule: builds the datamodule, or ``None``.
        train_dataloaders: passed to ``Trainer.fit`` as they are.
        val_dataloaders: passed to ``Trainer.fit`` as they are.
    """

    root_dir: str
    monitor: str
    mode: str
    trainer_kwargs: dict[str, Any]
    model: ObjectBuilder
    datamodule: ObjectBuilder | None = None
    train_dataloaders: Any = None
    val_dataloaders: Any = None

    def build_model(self) -> LightningModule:
        """A fresh model (of ``lightning.pytorch`` or ``pytorch_lightning``); call it right after
        ``seed_everything``."""
        model: LightningModule = self.model.build()  # of either package
        if not isinstance(model, loaded_types("LightningModule")):
            raise TypeError(f"`model` built a {type(model).__name__}, expected a LightningModule")
        return model

    def build_data(self) -> tuple[LightningDataModule | None, Any]:
        """``(datamodule, train_dataloaders)`` for ``Trainer.fit``: a new datamodule or the shared loaders."""
        datamodule = self.datamodule.build() if self.datamodule is not None else None
        train = self.train_dataloaders
        if isinstance(train, loaded_types("LightningDataModule")):
            datamodule, train = train, None
        return datamodule, train

    def trainer_args(self) -> tuple[dict[str, Any], list[Callback]]:
        """The user's Trainer arguments but ``callbacks``/``logger``, and fresh copies of the callbacks."""
        kwargs = dict(self.trainer_kwargs)
        callbacks = kwargs.pop("callbacks", None) or []
        kwargs.pop("logger", None)
        if isinstance(callbacks, loaded_types("Callback")):
            callbacks = [callbacks]
        return kwargs, copy.deepcopy(list(callbacks))

    def logger(self, name: str, namespace: ModuleType | None = None) -> TensorBoardLogger | bool:
        """A TensorBoardLogger (of ``namespace``, the model's Lightning package) writing into
        ``root_dir/<name>/``; ``False`` if logging is switched off."""
        if self.trainer_kwargs.get("logger", True) is False:
            return False
        logger_class = namespace.loggers.TensorBoardLogger if namespace is not None else TensorBoardLogger
        return logger_class(save_dir=self.root_dir, name=name, version="", default_hp_metric=False)


@dataclass
class SeedTask:
    """One seed to run: the seed, whether it resumes from ``last.ckpt``, and its earlier attempts' time."""

    seed: int
    resume: bool = False
    prior_wall_time: float = 0.0


OnStart = Callable[[SeedTask], None]
OnResult = Callable[[SeedRun], None]


def seed_checkpoints(
    job: SeedJob, seed: int, namespace: ModuleType | None = None
) -> tuple[ModelCheckpoint, ModelCheckpoint]:
    """The two plain ``ModelCheckpoint`` s of a seed: the best on ``monitor``, and ``last.ckpt``.

    ``last.ckpt`` comes from its own callback without a monitor, so it is rewritten at every save point
    (a ``save_last`` is rewritten only with the top-k file in Lightning >= 2.6). ``namespace`` is the
    model's Lightning package (``lightning.pytorch`` if not given).
    """
    folder = checkpoint_dir(job.root_dir, seed)
    checkpoint_class = namespace.callbacks.ModelCheckpoint if namespace is not None else ModelCheckpoint
    best = checkpoint_class(dirpath=folder, monitor=job.monitor, mode=job.mode)
    last = checkpoint_class(
        dirpath=folder, filename=LAST_CHECKPOINT.removesuffix(".ckpt"), monitor=None, save_top_k=1,
        enable_version_counter=False,
    )  # fmt: skip
    return best, last


def run_seed(job: SeedJob, task: SeedTask) -> SeedRun:
    """Trains one seed and reports what it produced; a failure of the seed is returned, not raised.

    Args:
        job: what all seeds share.
        task: the seed (for ``seed_everything(seed, workers=True)``, set before anything is built) and
            the time its earlier attempts took. The seed resumes from ``seed_<k>/checkpoints/last.ckpt``
            whenever that file exists.

    Returns:
        The seed's :class:`SeedRun`: ``"finished"`` with a finite score, or ``"failed"`` with the error.
        A missing monitored key is flagged in ``extra["config_error"]`` for the caller to stop the run;
        a seed whose last monitored value is not finite although its best is has ``extra["diverged"]``.
    """
    start = time.perf_counter()
    seed = task.seed
    folder = seed_dir(job.root_dir, seed)
    # Where ModelCheckpoint(dirpath=...) puts last.ckpt (it resolves its folder with realpath).
    resume_from = (
        Path(os.path.realpath(os.path.expanduser(checkpoint_dir(job.root_dir, seed)))) / LAST_CHECKPOINT
    )
    resumed = resume_from.is_file()
    prior_wall_time = task.prior_wall_time if resumed else 0.0
    run = SeedRun(seed=seed, status="running", log_dir=str(folder))
    if resumed:
        run.extra["resumed_from"] = relative(resume_from, job.root_dir)  # as every path in the record
    best: ModelCheckpoint | None = None
    last: ModelCheckpoint | None = None
    try:
        seed_everything(seed, workers=True, verbose=False)
        model = job.build_model()
        # The Trainer and what it checks by type come from the model's package (lightning.pytorch or
        # pytorch_lightning); seed_everything is the same in both (it sets the same global RNGs and env).
        namespace = namespace_of(model)
        best, last = seed_checkpoints(job, seed, namespace)
        datamodule, train_dataloaders = job.build_data()
        kwargs, user_callbacks = job.trainer_args()
        plugins = kwargs.pop("plugins", None) or []
        plugins = [plugins] if not isinstance(plugins, (list, tuple)) else list(plugins)
        checkpoint_io = in_namespace(SafeCheckpointIO, namespace.__name__)(dirpath=best.dirpath)
        rng_state_callback = in_namespace(_GlobalRNGState, namespace.__name__)()
        display = display_callbacks(namespace, kwargs, user_callbacks)
        trainer: Trainer = namespace.Trainer(
            **kwargs,
            default_root_dir=str(folder),
            callbacks=[best, last, rng_state_callback, *user_callbacks, *display],
            logger=job.logger(seed_name(seed), namespace),
            plugins=[*plugins, checkpoint_io],
        )
        trainer.fit(
            model,
            train_dataloaders=train_dataloaders,
            val_dataloaders=job.val_dataloaders,
            datamodule=datamodule,
            ckpt_path=resume_from if resumed else None,
        )
        run.extra["hparams"] = plain_hparams(model)
        final = trainer.callback_metrics.get(job.monitor)  # None when a resume had nothing left to train
        final_value = float(final) if final is not None else math.nan
        score = float(best.best_model_score) if best.best_model_score is not None else math.nan
        if not best.best_model_path:
            raise RuntimeError(
                f"no value of monitor={job.monitor!r} was ever checkpointed (did validation run?)"
            )
        if not math.isfinite(score):
            raise FloatingPointError(
                f"the monitored {job.monitor!r} was never finite (last value {final_value})"
            )
        if final is not None and not math.isfinite(final_value):
            # Finished with a finite best, but the run blew up later: the user should know.
            run.extra["diverged"] = True
        run.status = "finished"
        run.score = score
    except misconfiguration_types() as err:
        run.status = "failed"
        run.error = f"{type(err).__name__}: {err}"
        if _MISSING_MONITOR_TEXT in str(err):
            run.extra[CONFIG_ERROR_KEY] = str(err)
    except OSError as err:
        if err.errno in _NO_SPACE:
            raise  # a full disk fails every seed alike: stop the run (the seed resumes from last.ckpt)
        log.debug("seed %d failed:\n%s", seed, traceback.format_exc())
        run.status = "failed"
        run.error = f"{type(err).__name__}: {err}"
    except Exception as err:
        log.debug("seed %d failed:\n%s", seed, traceback.format_exc())
        run.status = "failed"
        run.error = f"{type(err).__name__}: {err}"
    run.best_model_path = str(best.best_model_path or "") if best is not None else ""
    run.last_model_path = str(last.best_model_path or "") if last is not None else ""
    run.wall_time = prior_wall_time + (time.perf_counter() - start)
    return run


class Executor(ABC):
    """The executor contract: run ``tasks`` of ``job``, reporting each through the two callbacks."""

    def check(self, job: SeedJob) -> None:  # noqa: B027 - optional hook, a no-op by default
        """Refuses (``ValueError``) a job this executor cannot run, before anything is written or trained."""

    @abstractmethod
    def run(self, job: SeedJob, tasks: Sequence[SeedTask], on_start: OnStart, on_result: OnResult) -> None:
        """Runs every task; ``on_start(task)`` before a seed trains, ``on_result(run)`` once it is done."""


class SequentialExecutor(Executor):
    """Runs the seeds one after another in this process."""

    @override
    def run(self, job: SeedJob, tasks: Sequence[SeedTask], on_start: OnStart, on_result: OnResult) -> None:
        for task in tasks:
            on_start(task)
            on_result(run_seed(job, task))


@dataclass
class RayExecutor(Executor):
    """Runs one Ray task per seed; results are handed to ``on_result`` in the driver as they arrive.

    Ray places the tasks by their resources (``cpus_per_seed``, ``gpus_per_seed``: fractions let small
    seeds share a GPU) and re-runs a task whose worker died up to ``max_retries`` times (the retry resumes
    from the seed's ``last.ckpt``); ``max_concurrent`` caps the tasks in flight. A Ray session already
    started by the caller is used as it is; otherwise one is started (``address=None``: a local cluster)
    and shut down afterwards.
    """

    address: str | None = None
    cpus_per_seed: float = 1.0
    gpus_per_seed: float = 0.0
    max_concurrent: int | None = None
    max_retries: int = 3

    @override
    def run(self, job: SeedJob, tasks: Sequence[SeedTask], on_start: OnStart, on_result: OnResult) -> None:
        import ray

        started_here = not ray.is_initialized()
        if started_here:
            ray.init(address=self.address)
        try:
            remote: Any = ray.remote(run_seed).options(
                num_cpus=self.cpus_per_seed, num_gpus=self.gpus_per_seed, max_retries=self.max_retries
            )
            job_ref = ray.put(job)
            queue = list(tasks)
            limit = self.max_concurrent or len(queue) or 1
            in_flight: dict[Any, SeedTask] = {}
            try:
                while queue or in_flight:
                    while queue and len(in_flight) < limit:
                        task = queue.pop(0)
                        on_start(task)
                        in_flight[remote.remote(job_ref, task)] = task
                    done, _ = ray.wait(list(in_flight), num_returns=1)
                    for ref in done:
                        task = in_flight.pop(ref)
                        try:
                            run = ray.get(ref)
                        except Exception as err:  # the worker died more often than max_retries allows
                            run = SeedRun(
                                seed=task.seed,
                                status="failed",
                                error=f"Ray task failed: {type(err).__name__}: {err}",
                                log_dir=str(seed_dir(job.root_dir, task.seed)),
                            )
                        on_result(run)
            finally:
                for ref in in_flight:
                    ray.cancel(ref, force=True)
        finally:
            if started_here:
                ray.shutdown()
