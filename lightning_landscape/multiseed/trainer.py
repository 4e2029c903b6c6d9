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

import inspect
import logging
import os
import shutil
import time
from collections.abc import Callable
from typing import Any

from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from lightning_landscape._namespace import loaded_types
from lightning_landscape.multiseed._lightning import is_rank_zero
from lightning_landscape.multiseed.after_selection import run_after_selection
from lightning_landscape.multiseed.build import datamodule_builder, model_builder
from lightning_landscape.multiseed.checkpoints import check_checkpoint, remove_stray_checkpoints
from lightning_landscape.multiseed.config import MultiSeedConfig, config_parameters
from lightning_landscape.multiseed.executors import (
    CONFIG_ERROR_KEY,
    Executor,
    RayExecutor,
    SeedJob,
    SeedTask,
    SequentialExecutor,
)
from lightning_landscape.multiseed.halving import (
    RUNG_SCORES,
    after_rung,
    halving_block,
    run_halving,
    schedule_counts,
)
from lightning_landscape.multiseed.interrupt import (
    EXIT_INTERRUPTED_SIGINT,
    EXIT_INTERRUPTED_SIGTERM,
    MultiSeedInterrupted,
    interrupted,
    sigterm_raises,
)
from lightning_landscape.multiseed.lock import RunLock
from lightning_landscape.multiseed.paths import BEST_CHECKPOINT, atomic_write, seed_dir
from lightning_landscape.multiseed.plan import adopt, fingerprint, plan
from lightning_landscape.multiseed.preflight import check_checkpoints_fit, check_root_dir, preflight
from lightning_landscape.multiseed.progress import RunDisplay, progress_line
from lightning_landscape.multiseed.record import Record, read_record, remove_stale_temporaries, write_record
from lightning_landscape.multiseed.report import (
    plot_seeds,
    select_best,
    write_hparams,
    write_summary_csv,
)
from lightning_landscape.multiseed.result import MultiSeedResult, SeedRun

log = logging.getLogger(__name__)

#: Exit codes: every asked-for seed finished (0), a seed failed or an error (1), a bad argument or a
#: refused run folder (2, the CLI), the run folder in use (3, the CLI), the run folder could not be written
#: (4, the CLI: a full disk), interrupted and resumable (128 + the signal: 130 for Ctrl-C, 143 for SIGTERM).


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
    and datamodule classes and arguments, executor, Trainer arguments that change results; not the
    callbacks) differs from the one the finished seeds were trained with is refused, naming the keys,
    unless ``allow_config_change=True`` (refused still when their checkpoints no longer fit the model).
    The record is checked against each seed's own checkpoints before it is believed, and finished work
    is never deleted: a seed folder that is not kept or resumed is set aside as
    ``seed_<k>.orphan-<time>/``; nothing is written outside ``root_dir`` or through a link (see
    :func:`~lightning_landscape.multiseed.plan.plan`). At the end: ``best.ckpt`` (a copy of the
    winner's best checkpoint, checked to load and to hold the recorded score first), ``summary.csv``,
    ``seeds.png`` and a TensorBoard hparams entry per seed.

    After the selection: the **noise floor** (is the winner's test lead beyond the test set's sampling
    noise? :mod:`~lightning_landscape.multiseed.per_example`, with the optional ``test_step`` hook returning
    ``{"per_example": values}``), the best-of-k band and the intervals of the mean, median and std. With
    ``prune_rungs``, **successive halving** (:mod:`~lightning_landscape.multiseed.halving`): only the
    survivors of the last rung train to the end and compete for the winner.

    A seed that raises or whose monitored value is never finite is recorded as ``"failed"`` and the
    others go on. A configuration that cannot work fails before the first seed trains. A SIGTERM or
    Ctrl-C, during training or the steps after it, stops the run with :class:`MultiSeedInterrupted`
    (exit code 143 or 130); rerun to resume.

    Args:
        *args: the fields of :class:`~lightning_landscape.multiseed.config.MultiSeedConfig` but
            ``trainer_kwargs`` (``seeds``, ``monitor``, ``mode``, ``root_dir``, ``executor``, ...), by
            position or by name. Each is typed, defaulted and documented there, once:
            ``inspect.signature(MultiSeedTrainer)`` and the ``lightning-landscape multiseed`` options are
            built from them.
        **kwargs: those fields by name, then the arguments of every seed's ``Trainer`` (``max_epochs``,
            ``callbacks``, ``accelerator``, ...). ``logger`` may be ``True``/``None`` (a TensorBoardLogger
            per seed) or ``False``; checkpointing cannot be switched off.

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
        >>> [run.status for run in result.runs]
        ['finished', 'finished']
        >>> result.best_seed == min(result.runs, key=lambda run: run.score).seed != max(
        ...     result.runs, key=lambda run: run.score).seed
        True
        >>> best = ShallowReLU.load_from_checkpoint(result.best_model_path, weights_only=True)
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        bound = _SIGNATURE.bind(None, *args, **kwargs)
        options = dict(bound.arguments)
        options.pop("self")
        self.config = MultiSeedConfig(**options)
        self.seeds = self.config.seed_list
        self.root_dir = self.config.root
        self.trainer_kwargs = self.config.trainer_kwargs

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
            model_builder(model, self.config.model_kwargs)
            datamodule_builder(datamodule)
            raise ValueError("pass either `datamodule` or `train_dataloaders`, not both")
        job = SeedJob(
            # Absolute: a Ray worker may run in another working directory.
            root_dir=os.path.abspath(self.root_dir),
            monitor=self.config.monitor,
            mode=self.config.mode,
            trainer_kwargs=dict(self.trainer_kwargs),
            model=model_builder(model, self.config.model_kwargs),
            datamodule=datamodule_builder(datamodule, self.config.datamodule_kwargs),
            train_dataloaders=train_dataloaders,
            val_dataloaders=val_dataloaders,
        )
        executor = self._make_executor()
        check_root_dir(self.root_dir)
        if not is_rank_zero():  # a DDP rank > 0 re-running the script: rank zero owns the folder
            return self._run(job, executor, test_dataloaders)
        with RunLock(self.root_dir):
            return self._run(job, executor, test_dataloaders)

    def _make_executor(self) -> Executor:
        if self.config.executor == "ray":
            config = self.config
            return RayExecutor(
                address=config.ray_address, cpus_per_seed=float(config.cpus_per_seed),
                gpus_per_seed=float(config.gpus_per_seed), max_concurrent=config.max_concurrent,
                max_retries=config.max_retries,
            )  # fmt: skip
        if self.config.executor == "vectorized":
            from lightning_landscape.multiseed.vectorized import VectorizedExecutor

            return VectorizedExecutor()
        return SequentialExecutor()

    def _run(self, job: SeedJob, executor: Executor, test_dataloaders: Any) -> MultiSeedResult:
        if is_rank_zero():
            remove_stale_temporaries(self.root_dir)
        on_disk = read_record(self.root_dir)
        before = dict(on_disk.fingerprint) if on_disk is not None else {}
        record = adopt(on_disk, self.config, fingerprint(self.config, job))
        if self.config.allow_config_change:
            check_checkpoints_fit(record, self.config, job, before)
        if self.config.prune_schedule is not None:
            return self._run_halving(job, executor, record, test_dataloaders)
        tasks = plan(record, self.config)
        done = len(self.seeds) - len(tasks)
        with RunDisplay(len(self.seeds), done, self.config.monitor, self.config.quiet) as display:
            if tasks:
                executor.check(job)
                if self.config.executor != "ray":
                    # Ray seeds may need resources this driver lacks; a worker reports a missing monitor.
                    preflight(job, self.config)
            self._write(record)
            if tasks:
                self._execute(job, executor, tasks, record, display)
            try:
                with sigterm_raises():  # the test, barriers and figures: no seed's Trainer catches it
                    return self._finish(record, job, test_dataloaders)
            except (KeyboardInterrupt, SystemExit) as err:
                if isinstance(err, MultiSeedInterrupted):
                    raise
                unfinished = [s for s in self.seeds if record.runs[s].status not in ("finished", "failed")]
                stop = interrupted(err, self.root_dir, unfinished)
                log.error(str(stop))
                raise stop from err

    def _run_halving(
        self, job: SeedJob, executor: Executor, record: Record, test_dataloaders: Any
    ) -> MultiSeedResult:
        """Successive halving (:mod:`~lightning_landscape.multiseed.halving`): rung by rung, then the
        selection among the seeds that reached the end."""
        config = self.config
        counts = schedule_counts(len(self.seeds), len(config.prune_rungs or []), float(config.prune_keep))
        runs = [record.runs.get(s) for s in self.seeds]
        done = sum(len(r.extra.get(RUNG_SCORES, [])) for r in runs if r is not None)
        open_work = any(r is None or r.status not in ("finished", "pruned", "failed") for r in runs)
        with RunDisplay(sum(counts), min(done, sum(counts)), config.monitor, config.quiet) as display:
            if open_work:
                executor.check(job)
                if config.executor != "ray":
                    preflight(job, config)

            def execute(rung_job: SeedJob, tasks: list[SeedTask], rung: int, last: bool) -> None:
                self._execute(rung_job, executor, tasks, record, display, rung=(rung, last))

            run_halving(record, config, job, execute, lambda: self._write(record))
            record.extra["halving"] = halving_block(record, config)
            return self._finish(record, job, test_dataloaders)

    def _execute(
        self,
        job: SeedJob,
        executor: Executor,
        tasks: list[SeedTask],
        record: Record,
        display: RunDisplay,
        rung: tuple[int, bool] | None = None,
    ) -> None:
        runs = record.runs
        done = display.done
        # The user's own ModelCheckpoint may write into the same folder: then every file there is theirs too.
        own_checkpoints = any(
            isinstance(c, loaded_types("callbacks.ModelCheckpoint")) for c in job.trainer_args()[1]
        )

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
                    f"`monitor={self.config.monitor!r}` is never logged (seed {run.seed}):"
                    f" {run.extra[CONFIG_ERROR_KEY]}"
                )
            if rung is not None:  # successive halving: a rung's result, pending until the next rung
                after_rung(run, runs.get(run.seed), *rung)
            runs[run.seed] = run
            done += 1
            display.done = done
            if run.status == "finished" and is_rank_zero():
                folder = run.log_dir or seed_dir(self.root_dir, run.seed)
                write_hparams(folder, run, self.config.monitor, self.config.mode)
                if not own_checkpoints:
                    remove_stray_checkpoints(self.root_dir, run)
            self._write(record)
            best = select_best([runs[s] for s in self.seeds], self.config.mode)
            if run.status == "pending" and rung is not None:
                rank_zero_info(
                    f"[MultiSeedTrainer {done}/{display.total}] seed {run.seed} reached rung {rung[0]}:"
                    f" {self.config.monitor}={run.score:.6g} in {run.wall_time:.1f}s"
                )
            else:
                rank_zero_info(progress_line(run, done, display.total, best, self.config.monitor))
            display.update(run.seed, best)

        try:
            executor.run(job, tasks, on_start, on_result)
        except (KeyboardInterrupt, SystemExit) as err:
            unfinished = [s for s in self.seeds if runs[s].status not in ("finished", "failed", "pruned")]
            self._write(record)
            stop = interrupted(err, self.root_dir, unfinished)
            log.error(str(stop))
            raise stop from err

    def _write(self, record: Record, best: SeedRun | None = None) -> None:
        if is_rank_zero():
            write_record(record, self.root_dir, self.seeds, best)

    def _finish(self, record: Record, job: SeedJob, test_dataloaders: Any) -> MultiSeedResult:
        """Selects the best asked-for seed whose checkpoint holds up; writes best.ckpt, summaries, plot."""
        ordered = [record.runs[s] for s in self.seeds]
        best = None
        while True:
            best = select_best(ordered, self.config.mode)
            if best is None:
                break
            problem = check_checkpoint(best.best_model_path, self.config.monitor, best.score)
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
            with open(best.best_model_path, "rb") as source:  # a link at best.ckpt is replaced, not followed
                atomic_write(best_path, lambda f: shutil.copyfileobj(source, f), binary=True)
        assert best.score is not None
        result = MultiSeedResult(
            runs=ordered,
            monitor=self.config.monitor,
            mode=self.config.mode,
            best_seed=best.seed,
            best_score=float(best.score),
            best_model_path=str(best_path),
            root_dir=str(self.root_dir),
        )
        if is_rank_zero():  # the held-out test, barriers, soups: after_selection.run_after_selection
            run_after_selection(
                self.config, result, record.extra, job, test_dataloaders, self.trainer_kwargs, self.root_dir
            )
        if is_rank_zero():
            self._write(record, best)
            write_summary_csv(self.root_dir, ordered)
            plot_seeds(self.root_dir, ordered, self.config.monitor, best)
        return result


_SIGNATURE = inspect.Signature(
    [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD), *config_parameters()]
)
MultiSeedTrainer.__init__.__signature__ = _SIGNATURE  # type: ignore[attr-defined]

__all__ = ["EXIT_INTERRUPTED_SIGINT", "EXIT_INTERRUPTED_SIGTERM", "MultiSeedInterrupted", "MultiSeedTrainer"]
