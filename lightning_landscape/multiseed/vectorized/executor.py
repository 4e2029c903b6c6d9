"""The vectorized executor: all seeds of a qualifying LightningModule as one :func:`torch.func.vmap` ensemble.

Which modules qualify is :mod:`~lightning_landscape.multiseed.vectorized.qualify`'s job. Member ``k`` is
the module built right after ``seed_everything(seeds[k], workers=True)``, as the sequential executor builds
it, and is trained by the same optimizer and scheduler. All members see the same batches (one pass of the
shared loaders per epoch): with a deterministic loader each member's trajectory is its sequential run's, to
floating-point rounding; with a shuffling loader the members share one order (the seeds then vary the
initialization only). The score of a member is its best epoch-mean validation ``loss_on_batch`` (weighted
by batch size, as Lightning's epoch mean of a logged ``val_loss`` is), so ``mode`` must be ``"min"``. Its
best iterate is written as an ordinary checkpoint of the plain module,
``root_dir/seed_<s>/checkpoints/best.ckpt``, loadable by ``PlainModule.load_from_checkpoint`` alone.

``MultiSeedTrainer(executor="vectorized")`` runs it through :class:`VectorizedExecutor`, the same executor
contract as the sequential and Ray executors (:mod:`lightning_landscape.multiseed.executors`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import lightning
import lightning.pytorch
import torch
from lightning.pytorch import LightningModule, Trainer
from torch import Tensor, nn
from typing_extensions import override

from lightning_landscape.multiseed._lightning import plain_hparams
from lightning_landscape.multiseed.executors import Executor, OnResult, OnStart, SeedJob, SeedTask
from lightning_landscape.multiseed.paths import (
    BEST_CHECKPOINT,
    ENSEMBLE_DIR,
    atomic_write,
    checkpoint_dir,
    seed_dir,
)
from lightning_landscape.multiseed.progress import display_callbacks
from lightning_landscape.multiseed.result import SeedRun
from lightning_landscape.multiseed.vectorized.engine import StackedEnsemble
from lightning_landscape.multiseed.vectorized.members import build_seeded
from lightning_landscape.multiseed.vectorized.qualify import check_job, rebind_optimizer, single_optimizer


class _VectorizedModule(StackedEnsemble):
    """K seeds of a qualifying LightningModule, stacked; member ``k`` is ``templates[k].net``."""

    _template: Any

    def __init__(self, templates: Sequence[LightningModule], seeds: Sequence[int]) -> None:
        super().__init__()
        self._init_members([t.net for t in templates], seeds, per_seed_data=False)  # type: ignore[misc]
        object.__setattr__(self, "_template", templates[0])
        self._track_best = True

    @override
    def _member_loss(self, net: Callable[..., Tensor], batch: Any) -> Tensor:
        return self._template.loss_on_batch(net, batch)

    @override
    def on_fit_start(self) -> None:
        # Whatever the plain module keeps besides `net` (e.g. a loss module's weights) must follow us.
        for child_name, child in self._template.named_children():
            if child_name != "net":
                child.to(device=self.device)

    @override
    def configure_optimizers(self) -> Any:
        template = self._template
        template.trainer = self.trainer
        try:
            config = template.configure_optimizers()
        finally:
            template.trainer = None
        rebind_optimizer(single_optimizer(config), template.net, self.members)
        return config


def _checkpoint(module: LightningModule, epoch: int, step: int) -> dict[str, Any]:
    """An ordinary Lightning checkpoint of ``module`` (plain values only: loads with weights_only=True)."""
    hparams = dict(getattr(module, "hparams_initial", {}) or {})
    return {
        "epoch": max(epoch, 0),
        "global_step": max(step, 0),
        "pytorch-lightning_version": lightning.__version__,
        "state_dict": {k: v.detach().cpu().clone() for k, v in module.state_dict().items()},
        "loops": {},
        "callbacks": {},
        "optimizer_states": [],
        "lr_schedulers": [],
        "hparams_name": "kwargs",
        "hyper_parameters": hparams,
    }


def _export_member(ensemble: StackedEnsemble, template: LightningModule, k: int, path: Path) -> None:
    state = ensemble.member_state_dict(k, best=True)
    net: nn.Module = template.net  # type: ignore[assignment]
    params = dict(net.named_parameters())
    with torch.no_grad():
        for name, tensor in state.items():
            # `.data`, not copy_: a float64 ensemble must not be rounded into a float32 template.
            target = params[name] if name in params else net.get_buffer(name)
            target.data = tensor.to(target.device)
    path.parent.mkdir(parents=True, exist_ok=True)
    checkpoint = _checkpoint(template, ensemble.best_epochs[k], ensemble.best_steps[k])
    atomic_write(path, lambda f: torch.save(checkpoint, f), binary=True)


def _write_member_logs(folder: Path, ensemble: StackedEnsemble, k: int, monitor: str) -> None:
    """One event file per seed in ``seed_<s>/``, so TensorBoard shows the seeds as separate runs."""
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(log_dir=str(folder))
    try:
        for entry in ensemble.history:
            writer.add_scalar(monitor, entry["val_loss"][k], global_step=entry["step"])
            writer.add_scalar("epoch", entry["epoch"], global_step=entry["step"])
    finally:
        writer.close()


def run_vectorized(job: SeedJob, seeds: Sequence[int]) -> list[SeedRun]:
    """Train all ``seeds`` of ``job`` as one vectorized ensemble; one :class:`SeedRun` per seed.

    Member ``k`` is ``job.build_model()`` right after ``seed_everything(seeds[k], workers=True)``. The data
    is built once (``job.build_data()``) and shared by all members. Checkpoints go to
    ``seed_<s>/checkpoints/best.ckpt``, one event file per seed to ``seed_<s>/``, the ensemble's own
    TensorBoard logs to ``ensemble/``.

    Args:
        job: what the seeds share.
        seeds: the members' seeds.

    Returns:
        The runs in seed order: ``"finished"`` with the best finite score and its checkpoint, or
        ``"failed"`` when a member's score never was finite.

    Raises:
        ValueError: ``seeds`` is empty.
        VectorizationError: (a ``ValueError``) before training, see
            :func:`~lightning_landscape.multiseed.vectorized.qualify.check_job`; the message suggests
            ``executor="sequential"``.

    Users reach it through ``MultiSeedTrainer(executor="vectorized")`` (see its example), which builds the
    :class:`SeedJob` and writes the record.
    """
    if not seeds:
        raise ValueError("`seeds` is empty.")
    check_job(job)
    return _train(job, seeds)


def _train(job: SeedJob, seeds: Sequence[int]) -> list[SeedRun]:
    """:func:`run_vectorized` after the job passed :func:`check_job`."""
    root = Path(job.root_dir)
    templates = build_seeded(job.build_model, seeds)
    ensemble = _VectorizedModule(templates, seeds)
    datamodule, train_dataloaders = job.build_data()
    kwargs, _ = job.trainer_args()
    for owned in ("enable_checkpointing", "default_root_dir"):
        kwargs.pop(owned, None)
    logger = job.logger(ENSEMBLE_DIR)
    # The ensemble is a lightning.pytorch module: its Trainer and display come from that package.
    display = display_callbacks(lightning.pytorch, kwargs, [])
    trainer = Trainer(
        **kwargs, default_root_dir=str(root / ENSEMBLE_DIR), logger=logger, enable_checkpointing=False,
        callbacks=display,
    )  # fmt: skip
    start = time.perf_counter()
    trainer.fit(
        ensemble,
        train_dataloaders=train_dataloaders,
        val_dataloaders=job.val_dataloaders,
        datamodule=datamodule,
    )
    wall = time.perf_counter() - start

    runs = []
    scores = ensemble.best_scores
    for k, (seed, template) in enumerate(zip(seeds, templates, strict=True)):
        folder = seed_dir(root, seed)
        run = SeedRun(seed=seed, status="failed", log_dir=str(folder), wall_time=wall / len(seeds))
        run.extra.update(
            {
                "executor": "vectorized",
                "member": k,
                "ensemble_size": len(seeds),
                "ensemble_wall_time": wall,
                "last_step": int(trainer.global_step),
                "hparams": plain_hparams(template),
            }
        )
        score = float(scores[k]) if scores is not None else math.nan
        if scores is None:
            run.error = (
                f"no validation epoch ran, so {job.monitor!r} was never computed (did validation run?)"
            )
        elif not math.isfinite(score):
            run.error = f"the monitored {job.monitor!r} was never finite (best value {score})"
        else:
            path = checkpoint_dir(root, seed) / BEST_CHECKPOINT
            _export_member(ensemble, template, k, path)
            run.status, run.score, run.best_model_path = "finished", score, str(path)
            run.extra["best_epoch"] = ensemble.best_epochs[k]
            run.extra["best_step"] = ensemble.best_steps[k]
        if logger:
            _write_member_logs(folder, ensemble, k, job.monitor)
        runs.append(run)
    return runs


class VectorizedExecutor(Executor):
    """All tasks as one vectorized ensemble (:func:`run_vectorized`); a resumed task starts afresh.

    The job is qualified once per run: :meth:`check` remembers the job it passed, and :meth:`run` of that
    same job goes straight to training (a job it was not shown is checked first).
    """

    def __init__(self) -> None:
        self._checked: SeedJob | None = None

    @override
    def check(self, job: SeedJob) -> None:
        check_job(job)
        self._checked = job

    @override
    def run(self, job: SeedJob, tasks: Sequence[SeedTask], on_start: OnStart, on_result: OnResult) -> None:
        seeds = [t.seed for t in tasks]
        if not seeds:
            raise ValueError("`seeds` is empty.")
        if self._checked is not job:
            self.check(job)
        for task in tasks:
            on_start(task)
        for run in _train(job, seeds):
            on_result(run)
