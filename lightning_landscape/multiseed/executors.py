"""How seeds are run: the one per-seed function and the executors that call it.

:func:`run_seed` trains one seed from start to finish (or from its ``last.ckpt``) and returns a
:class:`~lightning_landscape.multiseed.result.SeedRun`; it never raises for a failure of the seed
itself. The executors only decide *where* it runs: :func:`run_sequential` in this process,
:func:`run_ray` as one Ray task per seed. Both report through the same two callbacks, so the files,
the results and the resume logic are the same whichever executor ran a seed.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import pickle
import random
import shutil
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from weakref import proxy

import numpy as np
import torch
from lightning.fabric.plugins import TorchCheckpointIO
from lightning.fabric.utilities.cloud_io import _is_local_file_protocol
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch import Callback, LightningDataModule, LightningModule, Trainer, seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities.rank_zero import rank_zero_only
from torch import nn
from typing_extensions import override

from lightning_landscape.multiseed.result import SeedRun

log = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
LAST_CHECKPOINT = "last.ckpt"
# Set in SeedRun.extra when the monitored key is missing: a configuration error, not a seed failure.
CONFIG_ERROR_KEY = "config_error"
_MISSING_MONITOR_TEXT = "could not find the monitored key"

BuildKind = Literal["class", "factory", "rebuild", "reset", "copy"]


def seed_dir(root_dir: str | Path, seed: int) -> Path:
    """The folder of one seed: ``root_dir/seed_<seed>``."""
    return Path(root_dir) / f"seed_{seed}"


def is_rank_zero() -> bool:
    return getattr(rank_zero_only, "rank", 0) == 0


@dataclass
class ObjectBuilder:
    """Builds a fresh model or datamodule for one seed, after the seed is set.

    Args:
        kind: ``"class"``/``"factory"``/``"rebuild"`` call ``target(**kwargs)``; ``"copy"`` deep-copies
            ``target``; ``"reset"`` deep-copies it and calls every submodule's ``reset_parameters()``.
        target: the class, factory or instance.
        kwargs: keyword arguments of the call.
    """

    kind: BuildKind
    target: Any
    kwargs: dict[str, Any] = field(default_factory=dict)

    def build(self) -> Any:
        if self.kind in ("class", "factory", "rebuild"):
            return self.target(**self.kwargs)
        obj = copy.deepcopy(self.target)
        if self.kind == "reset":
            reset_parameters(obj)
        return obj


def _resetter(module: nn.Module) -> Callable[[], None] | None:
    # nn.MultiheadAttention only has the underscored variant.
    for name in ("reset_parameters", "_reset_parameters"):
        fn = getattr(module, name, None)
        if callable(fn):
            return fn
    return None


def modules_without_reset(model: nn.Module) -> list[str]:
    """Names of submodules that own parameters but cannot re-initialize them."""
    return [
        name or type(model).__name__
        for name, module in model.named_modules()
        if any(True for _ in module.parameters(recurse=False)) and _resetter(module) is None
    ]


def reset_parameters(model: nn.Module) -> None:
    """Re-draws every parameter through its module's own initializer, in module order."""
    for module in model.modules():
        fn = _resetter(module)
        if fn is not None:
            fn()


def _rng_state() -> dict[str, Any]:
    # Plain tensors, ints and lists only, so the checkpoint still loads with weights_only=True.
    name, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    version, py_state, gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [
            str(name),
            torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            int(pos),
            int(has_gauss),
            float(cached),
        ],
        "python": [int(version), list(py_state), gauss],
    }


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    version, py_state, gauss = state["python"]
    random.setstate((version, tuple(py_state), gauss))


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
        return self._loaded if self._loaded is not None else _rng_state()

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        _set_rng_state(state_dict)
        self._loaded = state_dict

    @override
    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._loaded is not None:
            self._stash = _rng_state()

    @override
    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self._stash is not None:
            _set_rng_state(self._stash)
            self._stash = None

    @override
    def on_train_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self._loaded = None


class _SeedCheckpoint(ModelCheckpoint):
    """A ``ModelCheckpoint`` whose state is stored under a plain ``ModelCheckpoint``'s key.

    Lightning keys a callback's state by its class name; keeping the plain name lets a ``last.ckpt``
    written by a plain ``ModelCheckpoint`` (an earlier version) resume with its best score intact.
    """

    @override
    def _generate_state_key(self, **kwargs: Any) -> str:
        return f"{ModelCheckpoint.__qualname__}{kwargs!r}"


class _BestCheckpoint(_SeedCheckpoint):
    """``ModelCheckpoint(monitor, mode)`` that remembers where and when it last wrote a file."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.saved_at: tuple[int, str | None, str] | None = None

    @override
    def _save_checkpoint(self, trainer: Trainer, filepath: str) -> None:
        super()._save_checkpoint(trainer, filepath)
        self.saved_at = (trainer.global_step, _current_hook(trainer), filepath)


def _current_hook(trainer: Trainer) -> str | None:
    module = trainer.lightning_module
    return getattr(module, "_current_fx_name", None) if module is not None else None


class _LastCheckpoint(_SeedCheckpoint):
    """``last.ckpt``, rewritten at every save point, whether or not the best improved.

    Lightning >= 2.6 rewrites ``save_last`` only when the top-k checkpoint is saved, which leaves a resume
    behind by up to the whole run; this callback has no monitor, so it saves at every save point. It
    runs right after ``best`` (the same triggers, later in the callback list): when ``best`` has just
    written a file in this very hook at this step, that file already holds exactly this checkpoint
    (the loops, weights, optimizer and RNG states have not moved, and this callback's own state is
    reported as it will be after the save), so ``last.ckpt`` becomes a hard link to it (a copy where
    links are not possible) instead of a second serialization. Either way ``last.ckpt`` is replaced by
    a rename, never rewritten in place, so a kill leaves the previous or the new one whole, and a
    linked best file is never touched.

    Args:
        best: the seed's monitored checkpoint callback.
        dirpath: the folder of ``last.ckpt``.
    """

    def __init__(self, best: _BestCheckpoint, dirpath: Path) -> None:
        super().__init__(
            dirpath=dirpath, filename=LAST_CHECKPOINT.removesuffix(".ckpt"), monitor=None, save_top_k=1,
            enable_version_counter=False,
        )  # fmt: skip
        self._best = best
        self.reused = 0

    @override
    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        # Every save of this callback goes to the same path, so its state after any save is known in
        # advance; reporting it so makes the checkpoint `best` writes just before identical to ours.
        state["best_model_path"] = self.format_checkpoint_name({})
        return state

    def _can_reuse(self, trainer: Trainer) -> str | None:
        saved = self._best.saved_at
        if (
            saved is None
            or saved[:2] != (trainer.global_step, _current_hook(trainer))
            or self.save_weights_only != self._best.save_weights_only
            # An asynchronous or remote writer may not have the file complete on local disk yet.
            or type(trainer.strategy.checkpoint_io) is not TorchCheckpointIO
            or not _is_local_file_protocol(str(self.dirpath))
        ):
            return None
        return saved[2]

    @override
    def _save_checkpoint(self, trainer: Trainer, filepath: str) -> None:
        source = self._can_reuse(trainer)
        target = Path(filepath)
        tmp = target.with_name(f".{target.name}.tmp")
        if source is not None:
            if trainer.is_global_zero:
                tmp.unlink(missing_ok=True)
                try:
                    os.link(source, tmp)
                except OSError:
                    shutil.copyfile(source, tmp)
                os.replace(tmp, target)
            trainer.strategy.barrier()
            self.reused += 1
        else:
            trainer.save_checkpoint(tmp, self.save_weights_only)
            if trainer.is_global_zero:
                os.replace(tmp, target)
            trainer.strategy.barrier()
        self._last_global_step_saved = trainer.global_step
        self._last_checkpoint_saved = filepath
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.after_save_checkpoint(proxy(self))


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


def _checkpoint_loads_weights_only(path: Path) -> bool:
    try:
        torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        log.warning("%s holds objects torch refuses with weights_only=True; loading it in full", path)
        return False
    return True


def _plain_hparams(model: LightningModule) -> dict[str, Any]:
    hparams = getattr(model, "_hparams", None) or {}
    return {str(k): v for k, v in dict(hparams).items() if isinstance(v, (bool, int, float, str))}


def run_seed(job: SeedJob, seed: int, resume: bool = False, prior_wall_time: float = 0.0) -> SeedRun:
    """Trains one seed and reports what it produced; a failure of the seed is returned, not raised.

    Args:
        job: what all seeds share.
        seed: the seed for ``seed_everything(seed, workers=True)``, set before anything is built.
        resume: continue from ``seed_<k>/checkpoints/last.ckpt`` if it exists; otherwise the seed's
            folder is cleared and the seed starts afresh.
        prior_wall_time: seconds already spent on this seed by interrupted attempts.

    Returns:
        The seed's :class:`SeedRun`: ``"finished"`` with a finite score, or ``"failed"`` with the error.
        A missing monitored key is flagged in ``extra["config_error"]`` for the caller to stop the run.
    """
    start = time.perf_counter()
    folder = seed_dir(job.root_dir, seed)
    ckpt_dir = folder / CHECKPOINT_DIR
    last = ckpt_dir / LAST_CHECKPOINT
    resume_from = last if resume and last.is_file() else None
    if resume_from is None:
        prior_wall_time = 0.0
        if folder.exists() and is_rank_zero():
            # A fresh start must not mix its checkpoints and event files with an earlier attempt's.
            shutil.rmtree(folder)
    run = SeedRun(seed=seed, status="running", log_dir=str(folder))
    if resume_from is not None:
        run.extra["resumed_from"] = str(resume_from)
    checkpoint = _BestCheckpoint(dirpath=ckpt_dir, monitor=job.monitor, mode=job.mode)
    last_checkpoint = _LastCheckpoint(checkpoint, ckpt_dir)
    try:
        seed_everything(seed, workers=True, verbose=False)
        model = job.model.build()
        if not isinstance(model, LightningModule):
            raise TypeError(f"`model` built a {type(model).__name__}, expected a LightningModule")
        datamodule = job.datamodule.build() if job.datamodule is not None else None
        train_dataloaders = job.train_dataloaders
        if isinstance(train_dataloaders, LightningDataModule):
            datamodule, train_dataloaders = train_dataloaders, None
        kwargs = dict(job.trainer_kwargs)
        user_callbacks = kwargs.pop("callbacks", None) or []
        if isinstance(user_callbacks, Callback):
            user_callbacks = [user_callbacks]
        logger: TensorBoardLogger | bool = False
        if kwargs.pop("logger", True) is not False:
            logger = TensorBoardLogger(
                save_dir=job.root_dir, name=folder.name, version="", default_hp_metric=False
            )
        trainer = Trainer(
            **kwargs,
            default_root_dir=str(folder),
            callbacks=[checkpoint, last_checkpoint, _GlobalRNGState(), *copy.deepcopy(list(user_callbacks))],
            logger=logger,
        )
        trainer.fit(
            model,
            train_dataloaders=train_dataloaders,
            val_dataloaders=job.val_dataloaders,
            datamodule=datamodule,
            ckpt_path=resume_from,
            weights_only=_checkpoint_loads_weights_only(resume_from) if resume_from is not None else None,
        )
        run.extra["hparams"] = _plain_hparams(model)
        best = checkpoint.best_model_score
        if best is None:
            raise RuntimeError(
                f"no value of monitor={job.monitor!r} was ever checkpointed (did validation run?)"
            )
        score = float(best)
        if not math.isfinite(score):
            raise FloatingPointError(f"the monitored {job.monitor!r} is not finite (best value {score})")
        run.status = "finished"
        run.score = score
    except MisconfigurationException as err:
        run.status = "failed"
        run.error = f"{type(err).__name__}: {err}"
        if _MISSING_MONITOR_TEXT in str(err):
            run.extra[CONFIG_ERROR_KEY] = str(err)
    except Exception as err:
        log.debug("seed %d failed:\n%s", seed, traceback.format_exc())
        run.status = "failed"
        run.error = f"{type(err).__name__}: {err}"
    run.best_model_path = str(checkpoint.best_model_path or "")
    run.last_model_path = str(last_checkpoint.best_model_path or "")
    run.wall_time = prior_wall_time + (time.perf_counter() - start)
    return run


@dataclass
class SeedTask:
    """One seed to run: the seed, whether to resume it, and the time its earlier attempts took."""

    seed: int
    resume: bool = False
    prior_wall_time: float = 0.0


OnStart = Callable[[SeedTask], None]
OnResult = Callable[[SeedRun], None]


def run_sequential(job: SeedJob, tasks: Sequence[SeedTask], on_start: OnStart, on_result: OnResult) -> None:
    """Runs the seeds one after another in this process."""
    for task in tasks:
        on_start(task)
        on_result(run_seed(job, task.seed, task.resume, task.prior_wall_time))


def run_ray(
    job: SeedJob,
    tasks: Sequence[SeedTask],
    on_start: OnStart,
    on_result: OnResult,
    *,
    address: str | None = None,
    cpus_per_seed: float = 1.0,
    gpus_per_seed: float = 0.0,
    max_concurrent: int | None = None,
    max_retries: int = 3,
) -> None:
    """Runs one Ray task per seed; results are handed to ``on_result`` in the driver as they arrive.

    Ray places the tasks by their resources (``cpus_per_seed``, ``gpus_per_seed``: fractions let small
    seeds share a GPU) and re-runs a task whose worker died up to ``max_retries`` times; ``max_concurrent``
    caps the tasks in flight. A Ray session already started by the caller is used as it is; otherwise
    one is started (``address=None``: a local cluster) and shut down afterwards.
    """
    import ray

    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=address)
    try:
        remote: Any = ray.remote(run_seed).options(
            num_cpus=cpus_per_seed, num_gpus=gpus_per_seed, max_retries=max_retries
        )
        job_ref = ray.put(job)
        queue = list(tasks)
        limit = max_concurrent or len(queue) or 1
        in_flight: dict[Any, SeedTask] = {}
        try:
            while queue or in_flight:
                while queue and len(in_flight) < limit:
                    task = queue.pop(0)
                    on_start(task)
                    in_flight[remote.remote(job_ref, task.seed, task.resume, task.prior_wall_time)] = task
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
