r"""When is the outcome decided? Instability analysis (Frankle et al. 2020, "Linear Mode Connectivity and
the Lottery Ticket Hypothesis").

One parent is trained from one initialization; at each branch step :math:`k` two children are copied from
it (weights, optimizer and scheduler state, step counter) and trained to ``total_steps`` under different
data order and dropout noise. The barrier between the two children's end weights

.. math::

    B(k) = \max_t L((1-t)\,\theta_a^{(k)} + t\,\theta_b^{(k)})
        - \big((1-t)\,L(\theta_a^{(k)}) + t\,L(\theta_b^{(k)})\big)

against :math:`k` says after how many steps SGD noise no longer decides the basin: once :math:`B(k)
\approx 0` the children are linearly connected. The children share the parent's history, so no
permutation alignment is needed. The result lives in :mod:`~lightning_landscape.multiseed.instability_result`.
"""

from __future__ import annotations

import copy
import itertools
import logging
import math
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningDataModule, LightningModule, Trainer, seed_everything
from lightning.pytorch.utilities import move_data_to_device
from torch import nn
from torch.utils.data import DataLoader
from typing_extensions import override

from lightning_landscape._rng import kept_rng
from lightning_landscape.callbacks._probe import TrainingStepLoss, draw_batches
from lightning_landscape.curvature._checks import check_int
from lightning_landscape.curvature._inputs import LossFn
from lightning_landscape.landscape import linear_barrier
from lightning_landscape.landscape.directions import named_trainable
from lightning_landscape.multiseed.instability_result import InstabilityResult

#: Trainer arguments :func:`instability` sets itself.
RESERVED_TRAINER_KWARGS = ("max_steps", "default_root_dir")
#: What every Trainer of the study gets unless ``trainer_kwargs`` says otherwise.
TRAINER_DEFAULTS: dict[str, Any] = {
    "max_epochs": -1,
    "logger": False,
    "enable_checkpointing": False,
    "enable_progress_bar": False,
    "enable_model_summary": False,
    "num_sanity_val_steps": 0,
    "limit_val_batches": 0,
}
_SEED_ENV = ("PL_GLOBAL_SEED", "PL_SEED_WORKERS")
_LIGHTNING_LOGGERS = ("lightning.pytorch", "lightning.fabric")


def default_branch_steps(total_steps: int) -> list[int]:
    """0 and 1%, 3%, 10%, 30% of ``total_steps`` (rounded, repeats and zeros dropped).

    Example:
        >>> default_branch_steps(1000)
        [0, 10, 30, 100, 300]
    """
    steps = {0} | {round(total_steps * f) for f in (0.01, 0.03, 0.1, 0.3)}
    return sorted(s for s in steps if s < total_steps)


class _Snapshots(Callback):
    """Saves a full checkpoint (weights, optimizer, scheduler, loops) right after global step ``k``."""

    def __init__(self, steps: Sequence[int], folder: Path) -> None:
        self.pending = set(steps)
        self.folder = folder
        self.paths: dict[int, Path] = {}

    @override
    def on_train_batch_end(self, trainer: Trainer, pl_module: LightningModule, *args: Any) -> None:
        # Under gradient accumulation several batches end at one global step: the first is right after
        # the optimizer step.
        step = trainer.global_step
        if step in self.pending:
            self.pending.discard(step)
            path = self.folder / f"step_{step}.ckpt"
            trainer.save_checkpoint(path)
            self.paths[step] = path


def _check_arguments(
    model: Any,
    datamodule: Any,
    train_dataloaders: Any,
    total_steps: Any,
    branch_steps: Any,
    seed: Any,
    child_seeds: Any,
    trainer_kwargs: Any,
    loss_fn: Any,
    num_batches: Any,
    barrier_steps: Any,
    tol: Any,
    rtol: Any,
    root_dir: Any,
) -> None:
    if not isinstance(model, LightningModule) and (isinstance(model, nn.Module) or not callable(model)):
        raise TypeError(
            f"`model` must be a LightningModule or a factory returning one, got {type(model).__name__}."
        )
    if (datamodule is None) == (train_dataloaders is None):
        raise ValueError("pass exactly one of `datamodule` and `train_dataloaders`.")
    if datamodule is not None and not isinstance(datamodule, LightningDataModule):
        raise TypeError(f"`datamodule` must be a LightningDataModule, got {type(datamodule).__name__}.")
    if train_dataloaders is not None and not isinstance(train_dataloaders, DataLoader):
        raise TypeError(
            f"`train_dataloaders` must be one DataLoader, got {type(train_dataloaders).__name__}."
        )
    check_int("total_steps", total_steps, minimum=1)
    if (
        isinstance(branch_steps, (str, bytes))
        or not isinstance(branch_steps, Sequence)
        or not branch_steps
        or any(isinstance(k, bool) or not isinstance(k, int) for k in branch_steps)
        or any(k < 0 or k >= total_steps for k in branch_steps)
        or any(a >= b for a, b in itertools.pairwise(branch_steps))
    ):
        raise ValueError(
            "`branch_steps` must be a non-empty, strictly increasing list of integers in "
            f"[0, total_steps={total_steps}), got {branch_steps!r}."
        )
    check_int("seed", seed, minimum=0)
    if (
        not isinstance(child_seeds, Sequence)
        or len(child_seeds) != 2
        or any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in child_seeds)
        or child_seeds[0] == child_seeds[1]
    ):
        raise ValueError(f"`child_seeds` must be two distinct integers >= 0, got {child_seeds!r}.")
    if trainer_kwargs is not None:
        if not isinstance(trainer_kwargs, dict):
            raise TypeError(f"`trainer_kwargs` must be a dict, got {type(trainer_kwargs).__name__}.")
        reserved = sorted(set(trainer_kwargs) & set(RESERVED_TRAINER_KWARGS))
        if reserved:
            raise ValueError(
                f"`trainer_kwargs` must not set {reserved}: `total_steps` and `root_dir` decide them."
            )
        if not isinstance(trainer_kwargs.get("callbacks", []), (list, tuple)):
            raise ValueError("`trainer_kwargs['callbacks']` must be a list of callbacks.")
    if loss_fn is not None and not callable(loss_fn):
        raise TypeError(f"`loss_fn` must be None or loss_fn(model, batch) -> Tensor, got {loss_fn!r}.")
    check_int("num_batches", num_batches, optional=True)
    check_int("barrier_steps", barrier_steps, minimum=2)
    for name, value in (("tol", tol), ("rtol", rtol)):
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not math.isfinite(value)
            or value < 0
        ):
            raise ValueError(f"`{name}` must be a finite number >= 0, got {value!r}.")
    if root_dir is not None and Path(root_dir).exists() and any(Path(root_dir).iterdir()):
        raise ValueError(f"`root_dir`={str(root_dir)!r} is not empty: give a new or empty folder.")


@contextmanager
def _study_scope(quiet: bool) -> Iterator[None]:
    """Global RNGs, Lightning's seed variables and (when ``quiet``) its log levels put back afterwards."""
    env = {name: os.environ.get(name) for name in _SEED_ENV}
    levels = {name: logging.getLogger(name).level for name in _LIGHTNING_LOGGERS}
    try:
        with kept_rng(), warnings.catch_warnings():
            if quiet:
                for name in _LIGHTNING_LOGGERS:
                    logging.getLogger(name).setLevel(logging.WARNING)
                # Resuming a child from a mid-epoch snapshot is the point of the study, not a mistake.
                warnings.filterwarnings("ignore", message=".*(mid-epoch|resuming from a checkpoint).*")
                warnings.filterwarnings("ignore", message=".*does not have many workers.*")
            yield
    finally:
        for name, value in env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


def _trainer(kwargs: dict[str, Any], folder: Path, max_steps: int, extra: Sequence[Callback] = ()) -> Trainer:
    options = {**TRAINER_DEFAULTS, **kwargs}
    callbacks = [copy.deepcopy(cb) for cb in options.pop("callbacks", None) or []]
    trainer = Trainer(
        **options, max_steps=max_steps, default_root_dir=str(folder), callbacks=[*callbacks, *extra]
    )
    if trainer.world_size > 1:
        raise ValueError(
            f"`trainer_kwargs` asks for {trainer.world_size} processes; instability runs single-process "
            "Trainers."
        )
    return trainer


def _distance(model_a: LightningModule, model_b: LightningModule) -> float:
    a, b = named_trainable(model_a), named_trainable(model_b)
    total = sum(float(((a[n].detach().double() - b[n].detach().double()) ** 2).sum()) for n in a)
    return math.sqrt(total)


def instability(
    model: LightningModule | Callable[[], LightningModule],
    datamodule: LightningDataModule | None = None,
    *,
    total_steps: int,
    train_dataloaders: DataLoader | None = None,
    branch_steps: Sequence[int] | None = None,
    seed: int = 0,
    child_seeds: tuple[int, int] = (1, 2),
    trainer_kwargs: dict[str, Any] | None = None,
    loss_fn: LossFn | None = None,
    num_batches: int | None = 4,
    barrier_steps: int = 11,
    tol: float = 0.01,
    rtol: float = 0.0,
    root_dir: str | Path | None = None,
    quiet: bool = True,
) -> InstabilityResult:
    r"""Train two children from one parent branched at each step :math:`k` and measure their barrier.

    After ``seed_everything(seed)`` the initial model is built (``model()`` for a factory, a deep copy of
    an instance), and one parent run trains it with a real ``Trainer`` to the last branch step, saving a
    full checkpoint (weights, optimizer and scheduler state, loop counters) right after each global step
    :math:`k > 0`. For every :math:`k` and each of the two ``child_seeds`` :math:`c`,
    ``seed_everything(c)`` is called (so the shuffle, the dropout masks and anything else drawn from the
    global generators differ between the children), and a fresh copy resumes from the step-:math:`k`
    checkpoint (at :math:`k = 0` from the initial model) to ``total_steps``. A data pipeline whose order
    comes from its own fixed generator gives both children the same data: then only dropout tells them
    apart. The barrier (:func:`~lightning_landscape.landscape.linear_barrier`, no alignment: the children
    share their history) is taken on ``num_batches`` fixed training batches
    (:func:`~lightning_landscape.callbacks._probe.draw_batches` under ``seed``), with the module's own
    ``training_step`` (logging silenced) as the loss unless ``loss_fn`` is given, in eval mode, on the
    device the Trainers ran on.

    Every Trainer gets :data:`TRAINER_DEFAULTS` (no logger, no checkpoints, no validation, no progress
    bar) updated by ``trainer_kwargs``; callbacks are deep-copied per run. The global random generators,
    Lightning's seed variables and log levels are as found afterwards.

    Args:
        model: a LightningModule (deep-copied, never trained itself) or a factory ``() -> LightningModule``
            (called once, after ``seed_everything(seed)``).
        datamodule: the data, or pass ``train_dataloaders`` (exactly one of them).
        total_steps: optimizer steps of every child.
        train_dataloaders: one training ``DataLoader``.
        branch_steps: strictly increasing steps in ``[0, total_steps)``; default
            :func:`default_branch_steps`.
        seed: seeds the initialization, the parent's data order and the probe batches.
        child_seeds: two distinct seeds, one per child.
        trainer_kwargs: more ``Trainer`` arguments (not ``max_steps`` nor ``default_root_dir``).
        loss_fn: ``loss_fn(model, batch) -> scalar tensor`` for the barrier; default ``training_step``.
        num_batches: probe batches (``None``: one whole pass over the training data).
        barrier_steps: points on each segment (odd keeps the midpoint).
        tol, rtol: a barrier counts as none when :math:`B(k) \le` ``tol`` ``+ rtol *`` the children's mean
            end loss (see :class:`InstabilityResult`).
        root_dir: keeps the runs' folders (``parent/``, ``branch_<k>/seed_<c>/``) and the snapshots there;
            must be new or empty. Default: a temporary folder, removed afterwards.
        quiet: Lightning's notices below a warning and its mid-epoch-resume warnings silenced.

    Returns:
        An :class:`InstabilityResult`.

    Raises:
        TypeError, ValueError: for bad arguments, before anything is trained.
        RuntimeError: if the parent or a child stopped before its last step (``max_epochs``, early stopping).
        NonFiniteError: if the loss along a segment is not finite.

    Example:
        >>> from examples.shallow_relu import ShallowReLU, ShallowReLUDataModule
        >>> data = ShallowReLUDataModule(batch_size=16, steps_per_epoch=4, val_size=8)
        >>> res = instability(lambda: ShallowReLU(hidden=[4]), data, total_steps=6, branch_steps=[0, 3])
        >>> res.branch_steps, len(res.barriers)
        ((0, 3), 2)
    """
    branch_steps = default_branch_steps(total_steps) if branch_steps is None else list(branch_steps)
    _check_arguments(
        model, datamodule, train_dataloaders, total_steps, branch_steps, seed, child_seeds,
        trainer_kwargs, loss_fn, num_batches, barrier_steps, tol, rtol, root_dir,
    )  # fmt: skip
    if not isinstance(quiet, bool):
        raise TypeError(f"`quiet` must be True or False, got {quiet!r}.")
    kwargs = dict(trainer_kwargs or {})
    data: dict[str, Any] = {"datamodule": datamodule, "train_dataloaders": train_dataloaders}
    keep = root_dir is not None
    root = Path(root_dir) if root_dir is not None else Path(tempfile.mkdtemp(prefix="instability-"))
    try:
        with _study_scope(quiet):
            seed_everything(seed, workers=True, verbose=False)
            initial = copy.deepcopy(model) if isinstance(model, LightningModule) else model()
            if not isinstance(initial, LightningModule):
                raise TypeError(f"`model` must return a LightningModule, got {type(initial).__name__}.")
            snapshots: dict[int, Path] = {}
            positive = [k for k in branch_steps if k > 0]
            if positive:
                snap = _Snapshots(positive, root / "parent" / "snapshots")
                parent_trainer = _trainer(kwargs, root / "parent", positive[-1], [snap])
                seed_everything(seed, workers=True, verbose=False)
                parent_trainer.fit(copy.deepcopy(initial), **data)
                if snap.pending:
                    raise RuntimeError(
                        f"the parent stopped at step {parent_trainer.global_step} before branch steps "
                        f"{sorted(snap.pending)}: check `max_epochs` or stopping callbacks in "
                        "`trainer_kwargs`."
                    )
                snapshots = snap.paths
            probe = TrainingStepLoss(loss_fn)
            batches: list[Any] | None = None
            rows = []
            for k in branch_steps:
                children = []
                for c in child_seeds:
                    trainer = _trainer(kwargs, root / f"branch_{k}" / f"seed_{c}", total_steps)
                    child = copy.deepcopy(initial)
                    seed_everything(c, workers=True, verbose=False)
                    trainer.fit(child, ckpt_path=snapshots.get(k), **data)
                    if trainer.global_step != total_steps:
                        raise RuntimeError(
                            f"the child of branch step {k}, seed {c} stopped at step {trainer.global_step} "
                            f"of {total_steps}: check `max_epochs` or stopping callbacks in `trainer_kwargs`."
                        )
                    children.append(child.to(trainer.strategy.root_device))
                if batches is None:  # after a fit: the datamodule has been set up
                    batches = _probe_batches(datamodule, train_dataloaders, num_batches, seed)
                device = trainer.strategy.root_device
                res = linear_barrier(
                    children[0], children[1], probe, move_data_to_device(batches, device), steps=barrier_steps
                )
                rows.append((res, _distance(children[0], children[1])))
    finally:
        if not keep:
            shutil.rmtree(root, ignore_errors=True)
    return InstabilityResult(
        branch_steps=tuple(branch_steps),
        barriers=tuple(r.barrier for r, _ in rows),
        child_losses=tuple((r.loss_a, r.loss_b) for r, _ in rows),
        distances=tuple(d for _, d in rows),
        ts=tuple(rows[0][0].ts.tolist()),
        curves=tuple(tuple(r.losses.tolist()) for r, _ in rows),
        total_steps=total_steps,
        seed=seed,
        child_seeds=(child_seeds[0], child_seeds[1]),
        tol=float(tol),
        rtol=float(rtol),
    )


def _probe_batches(
    datamodule: LightningDataModule | None, loader: DataLoader | None, num_batches: int | None, seed: int
) -> list[Any]:
    seed_everything(seed, workers=True, verbose=False)  # a loader built now may draw from the global RNG
    if loader is None:
        assert datamodule is not None
        loader = datamodule.train_dataloader()
    if not isinstance(loader, DataLoader):
        raise ValueError(
            f"the datamodule's train_dataloader() returned a {type(loader).__name__}; the barrier's probe "
            "batches need one DataLoader: pass `train_dataloaders`."
        )
    with torch.no_grad():
        return draw_batches(loader, num_batches, seed)


__all__ = ["RESERVED_TRAINER_KWARGS", "TRAINER_DEFAULTS", "default_branch_steps", "instability"]
