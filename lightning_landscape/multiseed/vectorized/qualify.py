"""What may be trained as a vectorized seed ensemble, and the refusal that names why not.

Every rule is checked before anything trains, and every refusal is a :class:`VectorizationError` (a
``ValueError``) whose message ends by pointing to the sequential executor. A LightningModule *qualifies*
for the vectorized executor when

* it has an ``nn.Module`` attribute ``net`` holding all trainable parameters;
* it has a method ``loss_on_batch(net, batch) -> Tensor`` (a scalar), and its ``training_step`` and
  ``validation_step`` compute ``self.loss_on_batch(self.net, batch)``;
* its ``configure_optimizers`` returns one elementwise optimizer (:data:`ELEMENTWISE_OPTIMIZERS`),
  optionally with a step-count-driven LR scheduler (not ``ReduceLROnPlateau``);
* ``net`` updates no buffers in train mode (no batch-norm running statistics), and its forward has no
  data-dependent control flow or random ops (found when the first step runs under ``vmap``).

The Trainer may not clip gradients by norm (one norm over all members, which no single run takes) nor run
callbacks (they would see the stacked ensemble), and the score must be minimized.
"""

from __future__ import annotations

from typing import Any

import torch
from lightning.pytorch import LightningModule
from torch import nn

from lightning_landscape._torch import NormBase
from lightning_landscape.multiseed._lightning import configure_optimizers
from lightning_landscape.multiseed.executors import SeedJob
from lightning_landscape.multiseed.vectorized.members import build_seeded

#: The end of every refusal: where a model that cannot be vectorized still trains.
SEQUENTIAL_HINT = 'Use MultiSeedTrainer(executor="sequential") for this model instead.'

#: Optimizers whose update of each tensor entry depends only on that entry's history (and the shared
#: step count), so one optimizer over stacked parameters acts on each member as on a lone model.
ELEMENTWISE_OPTIMIZERS: tuple[type[torch.optim.Optimizer], ...] = (
    torch.optim.SGD,
    torch.optim.Adam,
    torch.optim.AdamW,
    torch.optim.Adamax,
    torch.optim.Adagrad,
    torch.optim.RMSprop,
    torch.optim.NAdam,
    torch.optim.RAdam,
)


class VectorizationError(ValueError):
    """The model cannot be trained as a vectorized seed ensemble; the message says why."""


def buffer_updating_modules(net: nn.Module) -> list[str]:
    """Names of submodules that update buffers in train mode (batch-norm running statistics).

    Example:
        >>> buffer_updating_modules(nn.Sequential(nn.Linear(1, 4), nn.BatchNorm1d(4)))
        ['1 (BatchNorm1d)']
    """
    found = []
    for name, module in net.named_modules():
        if isinstance(module, NormBase) and module.track_running_stats:
            found.append(f"{name or '<root>'} ({type(module).__name__})")
    return found


def check_buffers(net: nn.Module) -> None:
    """Refuse a network that updates buffers in train mode: ``vmap`` cannot do that per member.

    Raises:
        VectorizationError: naming the modules (batch norm with running statistics).
    """
    bad = buffer_updating_modules(net)
    if bad:
        raise VectorizationError(
            f"Cannot vectorize: the model updates buffers in train mode ({', '.join(bad)}: batch-norm "
            f"running statistics), which vmap cannot do per member. {SEQUENTIAL_HINT}"
        )


def check_clipping(clip_val: Any, algorithm: Any) -> None:
    """Refuse gradient clipping by norm (the Trainer's ``gradient_clip_val``/``gradient_clip_algorithm``).

    One norm over all members' gradients couples them; clipping by value is elementwise and allowed.

    Raises:
        VectorizationError: ``clip_val`` is set and ``algorithm`` is not ``"value"`` (``None``: norm).

    Example:
        >>> check_clipping(0.5, "value")
        >>> check_clipping(None, None)
    """
    algorithm = algorithm or "norm"
    if clip_val and algorithm != "value":
        raise VectorizationError(
            f"gradient_clip_val={clip_val} with gradient_clip_algorithm={algorithm!r} clips by the norm over "
            "all members together, which no single run does. Use gradient_clip_algorithm='value' "
            f"(elementwise) or no clipping. {SEQUENTIAL_HINT}"
        )


def check_trainer_kwargs(trainer_kwargs: dict[str, Any]) -> None:
    """Refuse Trainer options that would couple the members or see the stacked ensemble.

    Raises:
        VectorizationError: clipping by norm, or Trainer callbacks.
    """
    check_clipping(trainer_kwargs.get("gradient_clip_val"), trainer_kwargs.get("gradient_clip_algorithm"))
    if trainer_kwargs.get("callbacks"):
        raise VectorizationError(
            "Trainer callbacks would see the stacked ensemble, not one seed's model; the vectorized executor "
            f"does not run them (got callbacks={trainer_kwargs['callbacks']!r}). {SEQUENTIAL_HINT}"
        )


def check_qualifies(module: Any) -> None:
    """Raise :class:`VectorizationError` naming why ``module`` cannot run as a vectorized ensemble."""
    name = type(module).__name__
    if not isinstance(module, LightningModule):
        raise VectorizationError(
            f"`model` built a {name}, not a lightning.pytorch LightningModule (the vectorized ensemble is"
            f" one; a pytorch_lightning module runs sequentially or on Ray). {SEQUENTIAL_HINT}"
        )
    net = getattr(module, "net", None)
    if not isinstance(net, nn.Module):
        raise VectorizationError(
            f"Cannot vectorize {name}: it has no nn.Module attribute `net` holding the trainable model "
            f"(found {type(net).__name__}). {SEQUENTIAL_HINT}"
        )
    if not callable(getattr(module, "loss_on_batch", None)):
        raise VectorizationError(
            f"Cannot vectorize {name}: it has no method `loss_on_batch(net, batch) -> Tensor` that its "
            f"training_step/validation_step use. {SEQUENTIAL_HINT}"
        )
    net_params = {id(p) for p in net.parameters()}
    outside = [n for n, p in module.named_parameters() if p.requires_grad and id(p) not in net_params]
    if outside:
        raise VectorizationError(
            f"Cannot vectorize {name}: trainable parameters outside `net`: {outside}. {SEQUENTIAL_HINT}"
        )


def _scheduler_of(entry: Any) -> Any:
    return entry.get("scheduler") if isinstance(entry, dict) else getattr(entry, "scheduler", entry)


def single_optimizer(config: Any) -> torch.optim.Optimizer:
    """The one optimizer of a ``configure_optimizers`` result; refuse several, and ReduceLROnPlateau."""
    optimizers, schedulers = configure_optimizers(config)
    if len(optimizers) != 1:
        raise VectorizationError(
            f"Cannot vectorize: configure_optimizers returned {len(optimizers)} optimizers; one is "
            f"supported. {SEQUENTIAL_HINT}"
        )
    for sched in schedulers:
        if isinstance(_scheduler_of(sched), torch.optim.lr_scheduler.ReduceLROnPlateau):
            raise VectorizationError(
                "Cannot vectorize ReduceLROnPlateau: it reacts to one monitored value, not to each "
                f"member's. {SEQUENTIAL_HINT}"
            )
    return optimizers[0]


def rebind_optimizer(optimizer: torch.optim.Optimizer, net: nn.Module, members: nn.Module) -> None:
    """Point ``optimizer`` (built for one ``net``) at the stacked ``members``, keeping its groups.

    Raises:
        VectorizationError: the optimizer is not elementwise, already has state, or holds parameters
            outside ``net``.
    """
    if not isinstance(optimizer, ELEMENTWISE_OPTIMIZERS) or type(optimizer) not in ELEMENTWISE_OPTIMIZERS:
        allowed = ", ".join(c.__name__ for c in ELEMENTWISE_OPTIMIZERS)
        raise VectorizationError(
            f"Cannot vectorize the optimizer {type(optimizer).__name__}: only elementwise optimizers act on "
            f"each member as on a lone model ({allowed}). {SEQUENTIAL_HINT}"
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
                    "Cannot vectorize: the optimizer holds parameters outside `net`. " + SEQUENTIAL_HINT
                )
            rebound.append(stacked[names[id(p)]])
        group["params"] = rebound


def _check_optimizer(template: LightningModule) -> None:
    """Refuse a non-elementwise optimizer before the Trainer starts. A ``configure_optimizers`` that needs
    the Trainer cannot run yet; it is checked at fit time instead."""
    try:
        config: Any = template.configure_optimizers()
    except Exception:
        return
    # Rebinding onto its own net checks the optimizer's type and parameters and changes nothing else.
    rebind_optimizer(single_optimizer(config), template.net, template.net)  # type: ignore[arg-type]


def check_job(job: SeedJob) -> LightningModule:
    """Refuses a job the vectorized executor cannot run; returns the module it built to find out.

    The module is built as seed 0 would build it (:func:`build_seeded`, global RNG left alone).

    Raises:
        VectorizationError: ``mode`` is not ``"min"``, the Trainer options couple the members, or the
            model does not qualify (see the module docstring).
    """
    if job.mode != "min":
        raise VectorizationError(
            f"mode={job.mode!r}: the vectorized executor scores members by their validation loss "
            f"(loss_on_batch), which is minimized. {SEQUENTIAL_HINT}"
        )
    check_trainer_kwargs(job.trainer_kwargs)
    template = build_seeded(job.build_model, [0])[0]
    check_qualifies(template)
    _check_optimizer(template)
    return template
