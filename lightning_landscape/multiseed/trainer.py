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
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch import Callback, LightningDataModule, LightningModule, Trainer, seed_everything
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from lightning_landscape.multiseed.executors import (
    CHECKPOINT_DIR,
    CONFIG_ERROR_KEY,
    LAST_CHECKPOINT,
    ObjectBuilder,
    SeedJob,
    SeedTask,
    is_rank_zero,
    modules_without_reset,
    run_ray,
    run_sequential,
    seed_dir,
)
from lightning_landscape.multiseed.report import (
    BEST_CHECKPOINT,
    plot_seeds,
    read_summary,
    select_best,
    summary_dict,
    write_hparams,
    write_summary_csv,
    write_summary_json,
)
from lightning_landscape.multiseed.result import MultiSeedResult, SeedRun

Executor = Literal["sequential", "ray", "vectorized"]
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


def _trainer_parameters() -> set[str]:
    return set(inspect.signature(Trainer.__init__).parameters) - {"self"}


def _rebuild_kwargs(obj: Any) -> dict[str, Any] | None:
    """The saved ``__init__`` arguments of an instance, if they suffice to build another one."""
    if not hasattr(obj, "_hparams_initial"):
        return None
    kwargs = dict(obj.hparams_initial)
    try:
        inspect.signature(type(obj)).bind(**kwargs)
    except TypeError:
        return None
    return kwargs


def _model_builder(model: Any, model_kwargs: dict[str, Any] | None) -> ObjectBuilder:
    if isinstance(model, type):
        if not issubclass(model, LightningModule):
            raise TypeError(
                f"`model` must be a LightningModule class, factory or instance, got class {model!r}"
            )
        return ObjectBuilder("class", model, dict(model_kwargs or {}))
    if isinstance(model, LightningModule):
        if model_kwargs:
            raise TypeError(
                "`model_kwargs` applies to a LightningModule class or factory, not to an instance; pass"
                f" the class {type(model).__name__} with model_kwargs, or the instance alone"
            )
        kwargs = _rebuild_kwargs(model)
        if kwargs is not None:
            return ObjectBuilder("rebuild", type(model), kwargs)
        missing = modules_without_reset(model)
        if not missing:
            return ObjectBuilder("reset", model)
        raise TypeError(
            f"`model` instance of {type(model).__name__} cannot be re-created per seed: it saved no"
            " hyperparameters (call `self.save_hyperparameters()` in its __init__) and these submodules"
            f" own parameters but have no reset_parameters(): {missing}. Pass the class"
            " (with model_kwargs=...) or a zero-argument factory instead."
        )
    if callable(model):
        return ObjectBuilder("factory", model, dict(model_kwargs or {}))
    raise TypeError(
        "`model` must be a LightningModule class, a zero-argument factory or an instance,"
        f" got {type(model)!r}"
    )


def _datamodule_builder(datamodule: Any) -> ObjectBuilder | None:
    if datamodule is None:
        return None
    if isinstance(datamodule, type):
        if not issubclass(datamodule, LightningDataModule):
            raise TypeError(
                "`datamodule` must be a LightningDataModule class, factory or instance,"
                f" got class {datamodule!r}"
            )
        return ObjectBuilder("class", datamodule)
    if isinstance(datamodule, LightningDataModule):
        kwargs = _rebuild_kwargs(datamodule)
        return ObjectBuilder("rebuild", type(datamodule), kwargs) if kwargs is not None else (
            ObjectBuilder("copy", datamodule)
        )  # fmt: skip
    if callable(datamodule):
        return ObjectBuilder("factory", datamodule)
    raise TypeError(
        "`datamodule` must be a LightningDataModule class, a zero-argument factory, an instance or None,"
        f" got {type(datamodule)!r}"
    )


class MultiSeedTrainer:
    """Trains a LightningModule once per seed and keeps the seed that is best on ``monitor``.

    Each seed ``k`` gets ``seed_everything(k, workers=True)`` *before* its model and data are built, a
    fresh ``Trainer(**trainer_kwargs)`` in ``root_dir/seed_<k>/`` with a
    ``ModelCheckpoint(monitor, mode, save_last=True)`` under ``checkpoints/`` and a ``TensorBoardLogger``
    writing into the seed's folder, and deep copies of the user's callbacks. A seed's score is its
    checkpoint's ``best_model_score``; the same seed gives the same score on the same machine.

    After every seed ``root_dir/summary.json`` is rewritten atomically; it is the single source of
    truth. A rerun with the same ``root_dir`` skips finished seeds and continues an interrupted one from
    its ``last.ckpt`` (a SIGKILL loses at most the steps since that checkpoint; the global RNG states
    travel in the checkpoint, so a resumed seed ends as an uninterrupted one would when its last
    checkpoint was written at an epoch end). At the end: ``best.ckpt`` (a copy of the winner's best
    checkpoint), ``summary.csv``, ``seeds.png`` and a TensorBoard hparams entry per seed.

    A seed that raises or whose monitored value is never finite is recorded as ``"failed"`` and the
    others go on. A configuration that cannot work fails before the first seed trains.

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
        **trainer_kwargs: arguments of every seed's ``Trainer`` (``max_epochs``, ``callbacks``,
            ``accelerator``, ...). ``logger`` may be ``True``/``None`` (a TensorBoardLogger per seed) or
            ``False``; checkpointing cannot be switched off.

    Raises:
        ValueError: a bad ``seeds``, ``monitor``, ``mode``, ``executor``, resource or Trainer argument.
        TypeError: an argument of the wrong type, or an unknown Trainer argument.
        ImportError: ``executor="ray"`` without Ray installed.

    Example::

        from lightning_landscape import MultiSeedTrainer

        trainer = MultiSeedTrainer(seeds=5, monitor="val_loss", root_dir="runs/mlp", max_epochs=20)
        result = trainer.fit(MyModule, datamodule=MyDataModule)
        print(result.best_seed, result.best_score, result.mean, result.std)
        best = MyModule.load_from_checkpoint(result.best_model_path, weights_only=True)
    """

    def __init__(
        self,
        seeds: int | list[int] = 5,
        monitor: str = "val_loss",
        mode: Literal["min", "max"] = "min",
        root_dir: str | Path = "multiseed",
        executor: Executor = "sequential",
        model_kwargs: dict[str, Any] | None = None,
        ray_address: str | None = None,
        cpus_per_seed: float = 1.0,
        gpus_per_seed: float = 0.0,
        max_concurrent: int | None = None,
        max_retries: int = 3,
        **trainer_kwargs: Any,
    ) -> None:
        self.seeds = self._check_seeds(seeds)
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
        self.executor: Executor = executor
        self.model_kwargs = model_kwargs
        self.ray_address = ray_address
        self.cpus_per_seed = float(cpus_per_seed)
        self.gpus_per_seed = float(gpus_per_seed)
        self.max_concurrent = max_concurrent
        self.max_retries = max_retries
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
                model = job.model.build()
                datamodule = job.datamodule.build() if job.datamodule is not None else None
                train = job.train_dataloaders
                if isinstance(train, LightningDataModule):
                    datamodule, train = train, None
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

        Returns:
            The :class:`MultiSeedResult`, as recorded in ``root_dir/summary.json``.

        Raises:
            TypeError: ``model`` or ``datamodule`` cannot be built per seed.
            ValueError: ``root_dir`` is not writable, holds a run with another ``monitor``/``mode``,
                ``monitor`` is never logged, or the configuration cannot train.
            RuntimeError: every seed failed; the message lists each seed's reason.
        """
        model_builder = _model_builder(model, self.model_kwargs)
        data_builder = _datamodule_builder(datamodule)
        if datamodule is not None and train_dataloaders is not None:
            raise ValueError("pass either `datamodule` or `train_dataloaders`, not both")
        self._check_root_dir()
        root = self.root_dir
        job = SeedJob(
            root_dir=str(root),
            monitor=self.monitor,
            mode=self.mode,
            trainer_kwargs=dict(self.trainer_kwargs),
            model=model_builder,
            datamodule=data_builder,
            train_dataloaders=train_dataloaders,
            val_dataloaders=val_dataloaders,
        )
        runs, tasks = self._plan()
        if tasks and self.executor != "ray":
            # Ray seeds may need resources this driver lacks; a worker reports a missing monitor instead.
            self._preflight(job)
        self._write(runs)

        done = len(runs) - len(tasks)
        total = len(runs)

        def on_start(task: SeedTask) -> None:
            run = runs[task.seed]
            run.status = "running"
            run.extra["attempt_started"] = time.time()
            self._write(runs)

        def on_result(run: SeedRun) -> None:
            nonlocal done
            if CONFIG_ERROR_KEY in run.extra:
                runs[run.seed].status = "pending"
                self._write(runs)
                raise ValueError(
                    f"`monitor={self.monitor!r}` is never logged (seed {run.seed}):"
                    f" {run.extra[CONFIG_ERROR_KEY]}"
                )
            runs[run.seed] = run
            done += 1
            if run.status == "finished" and is_rank_zero():
                write_hparams(run.log_dir or seed_dir(root, run.seed), run, self.monitor, self.mode)
            self._write(runs)
            self._progress(run, runs, done, total)

        if tasks:
            self._execute(
                job, tasks, model, datamodule, train_dataloaders, val_dataloaders, on_start, on_result
            )
        return self._finish()

    def _plan(self) -> tuple[dict[int, SeedRun], list[SeedTask]]:
        """Reads ``summary.json`` (if any) and decides per seed: keep, resume or start afresh."""
        previous = read_summary(self.root_dir)
        known: dict[int, SeedRun] = {}
        if previous is not None:
            for name, value in (("monitor", self.monitor), ("mode", self.mode)):
                if previous.get(name) != value:
                    raise ValueError(
                        f"`root_dir` {str(self.root_dir)!r} holds a run with {name}={previous.get(name)!r};"
                        f" got `{name}={value!r}`. Use another root_dir or the same {name}."
                    )
            known = {int(r["seed"]): SeedRun.from_dict(r) for r in previous.get("runs", [])}
        runs: dict[int, SeedRun] = {}
        tasks: list[SeedTask] = []
        for seed in self.seeds:
            old = known.get(seed)
            folder = seed_dir(self.root_dir, seed)
            if (
                old is not None
                and old.status == "finished"
                and old.score is not None
                and Path(old.best_model_path).is_file()
            ):
                runs[seed] = old
                continue
            last = folder / CHECKPOINT_DIR / LAST_CHECKPOINT
            resume = old is not None and old.status == "running" and last.is_file()
            prior = 0.0
            if resume and old is not None:
                started = old.extra.get("attempt_started")
                # The interrupted attempt's time up to its last checkpoint is what the resume keeps.
                prior = old.wall_time + (max(0.0, last.stat().st_mtime - started) if started else 0.0)
            runs[seed] = SeedRun(seed=seed, status="pending", wall_time=prior, log_dir=str(folder))
            tasks.append(SeedTask(seed=seed, resume=resume, prior_wall_time=prior))
        return runs, tasks

    def _execute(
        self,
        job: SeedJob,
        tasks: list[SeedTask],
        model: Any,
        datamodule: Any,
        train_dataloaders: Any,
        val_dataloaders: Any,
        on_start: Callable[[SeedTask], None],
        on_result: Callable[[SeedRun], None],
    ) -> None:
        if self.executor == "sequential":
            run_sequential(job, tasks, on_start, on_result)
        elif self.executor == "ray":
            run_ray(
                job, tasks, on_start, on_result, address=self.ray_address, cpus_per_seed=self.cpus_per_seed,
                gpus_per_seed=self.gpus_per_seed, max_concurrent=self.max_concurrent,
                max_retries=self.max_retries,
            )  # fmt: skip
        else:
            from lightning_landscape.multiseed.vectorized import run_vectorized

            for task in tasks:
                on_start(task)
            results = run_vectorized(
                model,
                [t.seed for t in tasks],
                root_dir=self.root_dir,
                monitor=self.monitor,
                mode=self.mode,
                trainer_kwargs=dict(self.trainer_kwargs),
                model_kwargs=self.model_kwargs,
                datamodule=datamodule,
                train_dataloaders=train_dataloaders,
                val_dataloaders=val_dataloaders,
            )
            for run in results:
                on_result(run)

    def _write(self, runs: dict[int, SeedRun], best: SeedRun | None = None, best_path: str = "") -> None:
        if not is_rank_zero():
            return
        ordered = [runs[s] for s in self.seeds]
        summary = summary_dict(
            ordered,
            monitor=self.monitor,
            mode=self.mode,
            root_dir=self.root_dir,
            best=best,
            best_model_path=best_path,
        )
        write_summary_json(self.root_dir, summary)

    def _progress(self, run: SeedRun, runs: dict[int, SeedRun], done: int, total: int) -> None:
        best = select_best(list(runs.values()), self.mode)
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

    def _finish(self) -> MultiSeedResult:
        """Selects the best seed from what is on disk and writes best.ckpt, the summaries and the plot."""
        on_disk = read_summary(self.root_dir)
        assert on_disk is not None, "summary.json is written before any seed runs"
        runs = {int(r["seed"]): SeedRun.from_dict(r) for r in on_disk["runs"]}
        for run in runs.values():
            if run.status == "finished" and not Path(run.best_model_path).is_file():
                run.status, run.error = "failed", f"best checkpoint {run.best_model_path!r} is missing"
        ordered = [runs[s] for s in self.seeds]
        best = select_best(ordered, self.mode)
        if best is None:
            self._write(runs)
            reasons = "; ".join(f"seed {r.seed}: {r.error or r.status}" for r in ordered)
            raise RuntimeError(f"all {len(ordered)} seeds failed ({reasons})")
        best_path = self.root_dir / BEST_CHECKPOINT
        if is_rank_zero():
            tmp = best_path.with_name(f".{BEST_CHECKPOINT}.tmp")
            shutil.copyfile(best.best_model_path, tmp)
            os.replace(tmp, best_path)
            self._write(runs, best, str(best_path))
            write_summary_csv(self.root_dir, ordered)
            plot_seeds(self.root_dir, ordered, self.monitor, best)
        assert best.score is not None
        return MultiSeedResult(
            runs=ordered,
            monitor=self.monitor,
            mode=self.mode,
            best_seed=best.seed,
            best_score=float(best.score),
            best_model_path=str(best_path),
            root_dir=str(self.root_dir),
        )
