"""The vectorized executor: all seeds of a qualifying LightningModule as one :func:`torch.func.vmap` ensemble.

``MultiSeedTrainer(executor="vectorized")`` calls :func:`run_vectorized`. A LightningModule *qualifies* when

* it has an ``nn.Module`` attribute ``net`` holding all trainable parameters;
* it has a method ``loss_on_batch(net, batch) -> Tensor`` (a scalar), and its ``training_step`` and
  ``validation_step`` compute ``self.loss_on_batch(self.net, batch)``;
* its ``configure_optimizers`` returns one elementwise optimizer (SGD, Adam, AdamW, Adamax, Adagrad,
  RMSprop, NAdam, RAdam), optionally with a step-count-driven LR scheduler (not ``ReduceLROnPlateau``);
* ``net`` updates no buffers in train mode (no batch-norm running statistics), and its forward has no
  data-dependent control flow or random ops.

Member ``k`` is the module built right after ``seed_everything(seeds[k], workers=True)``, as the sequential
executor builds it, and is trained by the same optimizer and scheduler. All members see the same batches
(one pass of the shared loaders per epoch): with a deterministic loader each member's trajectory is its
sequential run's, to floating-point rounding; with a shuffling loader the members share one order (the
seeds then vary the initialization only). The score of a member is its best epoch-mean validation
``loss_on_batch`` (weighted by batch size, as Lightning's epoch mean of a logged ``val_loss`` is), so
``mode`` must be ``"min"``. Its best iterate is written as an ordinary checkpoint of the plain module,
``root_dir/seed_<s>/checkpoints/best.ckpt``, loadable by ``PlainModule.load_from_checkpoint`` alone.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import lightning
import torch
from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.core.optimizer import _configure_optimizers
from lightning.pytorch.loggers import TensorBoardLogger
from torch import Tensor, nn
from typing_extensions import override

from lightning_landscape.multiseed.ensemble import (
    _SEQUENTIAL_HINT,
    ELEMENTWISE_OPTIMIZERS,
    VectorizationError,
    _StackedEnsemble,
    build_seeded,
)
from lightning_landscape.multiseed.result import SeedRun

BEST_CHECKPOINT_NAME = "best.ckpt"


def _build_module(model: Any, model_kwargs: dict[str, Any] | None) -> Callable[[], LightningModule]:
    if isinstance(model, LightningModule):
        if model_kwargs:
            raise TypeError("`model_kwargs` applies to a LightningModule class or factory, not an instance.")
        kwargs = dict(getattr(model, "hparams_initial", {}) or {})
        cls = type(model)
        return lambda: cls(**kwargs)
    if callable(model):
        kwargs = dict(model_kwargs or {})
        return lambda: model(**kwargs)
    raise TypeError(f"`model` must be a LightningModule class, factory or instance, got {type(model)!r}.")


def check_qualifies(module: Any) -> None:
    """Raise :class:`VectorizationError` naming why ``module`` cannot run as a vectorized ensemble."""
    name = type(module).__name__
    if not isinstance(module, LightningModule):
        raise VectorizationError(f"`model` built a {name}, not a LightningModule. {_SEQUENTIAL_HINT}")
    net = getattr(module, "net", None)
    if not isinstance(net, nn.Module):
        raise VectorizationError(
            f"Cannot vectorize {name}: it has no nn.Module attribute `net` holding the trainable model "
            f"(found {type(net).__name__}). {_SEQUENTIAL_HINT}"
        )
    if not callable(getattr(module, "loss_on_batch", None)):
        raise VectorizationError(
            f"Cannot vectorize {name}: it has no method `loss_on_batch(net, batch) -> Tensor` that its "
            f"training_step/validation_step use. {_SEQUENTIAL_HINT}"
        )
    net_params = {id(p) for p in net.parameters()}
    outside = [n for n, p in module.named_parameters() if p.requires_grad and id(p) not in net_params]
    if outside:
        raise VectorizationError(
            f"Cannot vectorize {name}: trainable parameters outside `net`: {outside}. {_SEQUENTIAL_HINT}"
        )


def check_trainer_kwargs(trainer_kwargs: dict[str, Any]) -> None:
    """Refuse Trainer options that would couple the members or see the stacked ensemble."""
    clip = trainer_kwargs.get("gradient_clip_val")
    if clip and trainer_kwargs.get("gradient_clip_algorithm", "norm") != "value":
        raise VectorizationError(
            f"gradient_clip_val={clip!r} clips by the norm over all members together, which no single run "
            f"does. {_SEQUENTIAL_HINT}"
        )
    if trainer_kwargs.get("callbacks"):
        raise VectorizationError(
            "Trainer callbacks would see the stacked ensemble, not one seed's model; the vectorized executor "
            f"does not run them (got callbacks={trainer_kwargs['callbacks']!r}). {_SEQUENTIAL_HINT}"
        )


def _rebind_optimizer(optimizer: torch.optim.Optimizer, net: nn.Module, members: nn.Module) -> None:
    """Point ``optimizer`` (built for one ``net``) at the stacked ``members``, keeping its groups."""
    if not isinstance(optimizer, ELEMENTWISE_OPTIMIZERS) or type(optimizer) not in ELEMENTWISE_OPTIMIZERS:
        allowed = ", ".join(c.__name__ for c in ELEMENTWISE_OPTIMIZERS)
        raise VectorizationError(
            f"Cannot vectorize the optimizer {type(optimizer).__name__}: only elementwise optimizers act on "
            f"each member as on a lone model ({allowed}). {_SEQUENTIAL_HINT}"
        )
    if optimizer.state:
        raise VectorizationError("configure_optimizers returned an optimizer that already has state.")
    names = {id(p): n for n, p in net.named_parameters()}
    stacked = dict(members.named_parameters())
    for group in optimizer.param_groups:
        rebound = []
        for p in group["params"]:
            if id(p) not in names:
                raise VectorizationError(
                    "Cannot vectorize: the optimizer holds parameters outside `net`. " + _SEQUENTIAL_HINT
                )
            rebound.append(stacked[names[id(p)]])
        group["params"] = rebound


class _VectorizedModule(_StackedEnsemble):
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
        _rebind_optimizer(_single_optimizer(config), template.net, self.members)
        return config


def _scheduler_of(entry: Any) -> Any:
    return entry.get("scheduler") if isinstance(entry, dict) else getattr(entry, "scheduler", entry)


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


def _plain_hparams(module: LightningModule) -> dict[str, Any]:
    hparams = dict(getattr(module, "hparams_initial", {}) or {})
    return {str(k): v for k, v in hparams.items() if isinstance(v, (bool, int, float, str))}


def _write_member_logs(folder: Path, ensemble: _StackedEnsemble, k: int, monitor: str) -> None:
    """One event file per seed in ``seed_<s>/``, so TensorBoard shows the seeds as separate runs."""
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(log_dir=str(folder))
    try:
        for entry in ensemble.history:
            writer.add_scalar(monitor, entry["val_loss"][k], global_step=entry["step"])
            writer.add_scalar("epoch", entry["epoch"], global_step=entry["step"])
    finally:
        writer.close()


def run_vectorized(
    model: Any,
    seeds: list[int],
    *,
    root_dir: str | Path,
    monitor: str,
    mode: str,
    trainer_kwargs: dict[str, Any],
    model_kwargs: dict[str, Any] | None,
    datamodule: Any = None,
    train_dataloaders: Any = None,
    val_dataloaders: Any = None,
) -> list[SeedRun]:
    """Train all ``seeds`` of ``model`` as one vectorized ensemble; one :class:`SeedRun` per seed.

    Args:
        model: a qualifying LightningModule class, factory (called with ``model_kwargs``) or instance
            (rebuilt from its saved hyperparameters); see the module docstring.
        seeds: the seeds, one member each.
        root_dir: where ``seed_<s>/checkpoints/best.ckpt``, ``seed_<s>/`` event files and the ensemble's
            own TensorBoard logs (``ensemble/``) go.
        monitor: the name the plain module logs its validation loss under (the members' score).
        mode: must be ``"min"``: the score is a loss.
        trainer_kwargs: ``Trainer`` arguments for the one ensemble fit.
        model_kwargs: keyword arguments for a class or factory ``model``.
        datamodule: a LightningDataModule instance, class or factory (built once, shared by all members).
        train_dataloaders: training loaders (shared by all members).
        val_dataloaders: validation loaders (shared by all members).

    Returns:
        The runs in seed order: ``"finished"`` with the best finite score and its checkpoint, or
        ``"failed"`` when a member's score never was finite.

    Raises:
        VectorizationError: (a ``ValueError``) before training when the model does not qualify, ``mode`` is
            not ``"min"``, or the Trainer options couple the members; the message suggests
            ``executor="sequential"``.

    Example::

        runs = run_vectorized(MyModule, [0, 1, 2], root_dir="runs/vec", monitor="val_loss", mode="min",
                              trainer_kwargs={"max_epochs": 5}, model_kwargs=None,
                              train_dataloaders=train, val_dataloaders=val)
    """
    root = Path(root_dir)
    if mode != "min":
        raise VectorizationError(
            f"mode={mode!r}: the vectorized executor scores members by their validation loss "
            f"(loss_on_batch), which is minimized. {_SEQUENTIAL_HINT}"
        )
    if not seeds:
        raise ValueError("`seeds` is empty.")
    check_trainer_kwargs(trainer_kwargs)
    factory = _build_module(model, model_kwargs)
    templates = build_seeded(factory, seeds)
    check_qualifies(templates[0])
    _precheck_optimizer(templates[0])
    ensemble = _VectorizedModule(templates, seeds)

    if isinstance(datamodule, type) or (
        callable(datamodule) and not isinstance(datamodule, LightningDataModule)
    ):
        datamodule = datamodule()
    if isinstance(train_dataloaders, LightningDataModule):
        datamodule, train_dataloaders = train_dataloaders, None

    kwargs = dict(trainer_kwargs)
    logger: TensorBoardLogger | bool = False
    if kwargs.pop("logger", True) is not False:
        logger = TensorBoardLogger(save_dir=str(root), name="ensemble", version="", default_hp_metric=False)
    for owned in ("callbacks", "enable_checkpointing", "default_root_dir"):
        kwargs.pop(owned, None)
    trainer = Trainer(
        **kwargs, default_root_dir=str(root / "ensemble"), logger=logger, enable_checkpointing=False
    )
    start = time.perf_counter()
    trainer.fit(
        ensemble, train_dataloaders=train_dataloaders, val_dataloaders=val_dataloaders, datamodule=datamodule
    )
    wall = time.perf_counter() - start

    runs = []
    scores = ensemble.best_scores
    for k, (seed, template) in enumerate(zip(seeds, templates, strict=True)):
        folder = root / f"seed_{seed}"
        run = SeedRun(seed=seed, status="failed", log_dir=str(folder), wall_time=wall / len(seeds))
        run.extra.update(
            {
                "executor": "vectorized",
                "member": k,
                "ensemble_size": len(seeds),
                "ensemble_wall_time": wall,
                "hparams": _plain_hparams(template),
            }
        )
        score = float(scores[k]) if scores is not None else math.nan
        if scores is None:
            run.error = f"no validation epoch ran, so {monitor!r} was never computed (did validation run?)"
        elif not math.isfinite(score):
            run.error = f"the monitored {monitor!r} is not finite (best value {score})"
        else:
            _export_member(ensemble, template, k, folder / "checkpoints" / BEST_CHECKPOINT_NAME)
            run.status, run.score = "finished", score
            run.best_model_path = str(folder / "checkpoints" / BEST_CHECKPOINT_NAME)
            run.extra["best_epoch"] = ensemble.best_epochs[k]
            run.extra["best_step"] = ensemble.best_steps[k]
        if logger:
            _write_member_logs(folder, ensemble, k, monitor)
        runs.append(run)
    return runs


def _precheck_optimizer(template: LightningModule) -> None:
    """Refuse a non-elementwise optimizer before the Trainer starts. A ``configure_optimizers`` that needs
    the Trainer cannot run yet; it is checked at fit time instead."""
    try:
        config: Any = template.configure_optimizers()
    except Exception:
        return
    # Rebinding onto its own net checks the optimizer's type and parameters and changes nothing else.
    _rebind_optimizer(_single_optimizer(config), template.net, template.net)  # type: ignore[arg-type]


def _single_optimizer(config: Any) -> torch.optim.Optimizer:
    """The one optimizer of a ``configure_optimizers`` result; refuse several, and ReduceLROnPlateau."""
    optimizers, schedulers, _ = _configure_optimizers(config)
    if len(optimizers) != 1:
        raise VectorizationError(
            f"Cannot vectorize: configure_optimizers returned {len(optimizers)} optimizers; one is "
            f"supported. {_SEQUENTIAL_HINT}"
        )
    for sched in schedulers:
        if isinstance(_scheduler_of(sched), torch.optim.lr_scheduler.ReduceLROnPlateau):
            raise VectorizationError(
                "Cannot vectorize ReduceLROnPlateau: it reacts to one monitored value, not to each "
                f"member's. {_SEQUENTIAL_HINT}"
            )
    return optimizers[0]


def _export_member(ensemble: _StackedEnsemble, template: LightningModule, k: int, path: Path) -> None:
    state = ensemble.member_state_dict(k, best=True)
    net: nn.Module = template.net  # type: ignore[assignment]
    params = dict(net.named_parameters())
    with torch.no_grad():
        for name, tensor in state.items():
            # `.data`, not copy_: a float64 ensemble must not be rounded into a float32 template.
            target = params[name] if name in params else net.get_buffer(name)
            target.data = tensor.to(target.device)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(_checkpoint(template, ensemble.best_epochs[k], ensemble.best_steps[k]), path)
