r"""Gradient norms per layer and in total, in one fused pass, only on the steps that log."""

from __future__ import annotations

import math
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks.callback import Callback
from torch import Tensor
from torch.optim import Optimizer
from typing_extensions import override

from lightning_landscape._torch import COMPILED_PREFIX, foreach_norm
from lightning_landscape.callbacks import tags as _tags
from lightning_landscape.callbacks._checks import check_choice, check_int
from lightning_landscape.callbacks._lightning import generate_state_key
from lightning_landscape.callbacks._probe import logging_step
from lightning_landscape.callbacks._tensorboard import add_histogram, log_scalars, write_layout


class GradientNormMonitor(Callback):
    r"""Log the gradient :math:`p`-norm of the whole model and of each module (or parameter).

    For gradients :math:`g_1, \dots, g_n` of the parameters of a group (a module, a parameter, the model),

    .. math::

        \|g\|_p = \Big(\sum_i \|g_i\|_p^p\Big)^{1/p}, \qquad \|g\|_\infty = \max_i \|g_i\|_\infty .

    Norms are measured in ``on_before_optimizer_step``: after AMP unscaling and gradient accumulation, before
    gradient clipping, i.e. the gradient the optimizer is about to use. All per-parameter norms come from one
    fused ``torch._foreach_norm`` call and are combined on the device; on steps that do not log nothing is
    computed, so there is no host synchronisation there.

    Scalars go to every logger at the same step as the module's own step metrics (``grad_norm/total``,
    ``grad_norm/<name>``); ``grad_norm/total`` also goes to ``trainer.callback_metrics`` through
    ``pl_module.log(..., logger=False)`` so that ``ModelCheckpoint``/``EarlyStopping`` can monitor it. Every
    optimizer is covered, under automatic and manual optimization: with several (a GAN's generator and
    discriminator) each logs its own parameters under ``grad_norm/optimizer_<i>/total`` and
    ``grad_norm/optimizer_<i>/<name>`` (``i`` its index in ``configure_optimizers``), measured right before
    its own step; with one, the tags stay ``grad_norm/...``. Parameters of a submodule compiled with
    ``self.net = torch.compile(net)`` are named without the ``_orig_mod`` segment. With ``name`` every tag is
    ``grad_norm/<name>/...``, so two monitors (say an L2 and a max norm) do not overwrite each other.
    (Logging through ``pl_module.log(logger=True)`` on our own schedule would let Lightning drop the value and
    later re-log it as stale on its ``log_every_n_steps`` grid.)

    Args:
        norm_type: The :math:`p` of the norm, ``> 0``; ``inf`` (``float("inf")``, ``"inf"`` or YAML ``.inf``)
            for the max-norm.
        granularity: ``"module"`` for one norm per module owning parameters directly (e.g. ``net.0``),
            ``"parameter"`` for one per parameter (e.g. ``net.0.weight``).
        log_every_n_steps: Log every this many optimizer steps; ``None`` uses the Trainer's
            ``log_every_n_steps``, so the norms line up with the loss curve.
        histogram: Also write a TensorBoard histogram of the per-module (per-parameter) norms under
            ``grad_norm/histogram``.
        per_layer: Log the per-module (per-parameter) scalars; with ``False`` only ``grad_norm/total``.
        name: Tags under ``grad_norm/<name>/`` (letters, digits, ``_``, ``.``, ``-``); also part of the
            ``state_key``.

    Raises:
        ValueError: If ``norm_type``, ``granularity``, ``log_every_n_steps`` or ``name`` is invalid.

    Example::

        >>> from lightning.pytorch import Trainer
        >>> from lightning_landscape import GradientNormMonitor
        >>> max_norm = GradientNormMonitor(norm_type="inf", per_layer=False, name="max")
        >>> monitors = [GradientNormMonitor(), max_norm]
        >>> trainer = Trainer(callbacks=monitors, logger=False, enable_checkpointing=False)
    """

    _landscape_family = _tags.GRAD_NORM_SECTION

    def __init__(
        self,
        norm_type: float | Literal["inf"] = 2.0,
        granularity: Literal["module", "parameter"] = "module",
        log_every_n_steps: int | None = None,
        histogram: bool = False,
        per_layer: bool = True,
        name: str | None = None,
    ) -> None:
        try:
            norm = float(norm_type)
        except (TypeError, ValueError):
            norm = math.nan
        if not norm > 0:
            raise ValueError(f"`norm_type` must be a number > 0 or 'inf', got {norm_type!r}.")
        check_choice("granularity", granularity, ("module", "parameter"))
        check_int("log_every_n_steps", log_every_n_steps, optional=True)
        _tags.check_name(name)
        self.norm_type = norm
        self.granularity = granularity
        self.log_every_n_steps = log_every_n_steps
        self.histogram = bool(histogram)
        self.per_layer = bool(per_layer)
        self.name = name
        self._names: dict[int, str] = {}  # id(parameter) -> group name
        # Optimizer index (None with a single optimizer) -> the last logging step it logged at.
        self._last_logged: dict[int | None, int] = {}

    @property
    @override
    def state_key(self) -> str:
        named = {} if self.name is None else {"name": self.name}
        return generate_state_key(self, **named, norm_type=self.norm_type, granularity=self.granularity)

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._names = {}
        for name, param in pl_module.named_parameters():
            # A submodule compiled with ``self.net = torch.compile(net)`` keeps its parameters in `_orig_mod`.
            name = name.replace(COMPILED_PREFIX, "")
            if self.granularity == "module":
                name = name.rpartition(".")[0] or "root"
            self._names[id(param)] = name

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        write_layout(trainer)

    def _interval(self, trainer: pl.Trainer) -> int:
        if self.log_every_n_steps is not None:
            return self.log_every_n_steps
        # Set on the Trainer by its logger connector, not declared on the class.
        return int(getattr(trainer, "log_every_n_steps", 50))

    @override
    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Optimizer
    ) -> None:
        interval = self._interval(trainer)
        step = logging_step(trainer)
        index = self._optimizer_index(trainer, optimizer)
        # Lightning's own rule (`should_update_logs`): the batch that makes `step + 1` a multiple logs.
        if interval < 1 or (step + 1) % interval != 0 or step == self._last_logged.get(index, -1):
            return
        names: list[str] = []
        grads: list[Tensor] = []
        for group in optimizer.param_groups:
            for param in group["params"]:
                if param.grad is not None:
                    grads.append(param.grad.detach())
                    names.append(self._names.get(id(param), "unnamed"))
        if not grads:
            return
        total, group_names, group_norms = self._norms(grads, names)
        values = [total, *group_norms] if self.per_layer else [total]
        # One host transfer for every scalar of the step.
        numbers = torch.stack([v.to(torch.float64) for v in values]).tolist()
        total_tag = _tags.grad_norm_total_tag(self.name, index)
        metrics = {total_tag: numbers[0]}
        if self.per_layer:
            for layer, x in zip(group_names, numbers[1:], strict=True):
                metrics[_tags.grad_norm_tag(layer, self.name, index)] = x
        self._last_logged[index] = step
        log_scalars(trainer, metrics, step)
        pl_module.log(total_tag, numbers[0], logger=False, sync_dist=False)
        if self.histogram:
            tag = _tags.tag(_tags.GRAD_NORM_SECTION, _tags.HISTOGRAM, self.name, _tags.optimizer_part(index))
            add_histogram(trainer, tag, torch.stack(group_norms), step)

    @staticmethod
    def _optimizer_index(trainer: pl.Trainer, optimizer: Optimizer) -> int | None:
        """The optimizer's index in ``trainer.optimizers``; ``None`` when it is the only one."""
        optimizers = trainer.optimizers
        if len(optimizers) <= 1:
            return None
        for i, opt in enumerate(optimizers):
            if opt is optimizer or getattr(optimizer, "optimizer", None) is opt:
                return i
        return len(optimizers)  # pragma: no cover - an optimizer the trainer does not know

    def _norms(self, grads: list[Tensor], names: list[str]) -> tuple[Tensor, list[str], list[Tensor]]:
        """The total norm and the per-group norms, all still on the device."""
        per_param = foreach_norm(grads, self.norm_type)
        # Parameters may live on several devices or dtypes; combine in float32 on the first one's device.
        device = per_param[0].device
        stacked = torch.stack([n.to(device, torch.float32) for n in per_param])
        inf = math.isinf(self.norm_type)
        total = stacked.max() if inf else stacked.pow(self.norm_type).sum().pow(1.0 / self.norm_type)
        if self.granularity == "parameter" and len(set(names)) == len(names):
            return total, names, list(stacked.unbind())
        order: dict[str, int] = {}
        index = torch.tensor([order.setdefault(n, len(order)) for n in names], device=device)
        if inf:
            group = torch.zeros(len(order), device=device).scatter_reduce(0, index, stacked, "amax")
        else:
            group = torch.zeros(len(order), device=device).index_add(0, index, stacked.pow(self.norm_type))
            group = group.pow(1.0 / self.norm_type)
        return total, list(order), list(group.unbind())

    @override
    def state_dict(self) -> dict[str, Any]:
        steps = {str(k): v for k, v in self._last_logged.items()}
        return {"last_logged_step": max(self._last_logged.values(), default=-1), "last_logged_steps": steps}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        steps = state_dict.get("last_logged_steps")
        if isinstance(steps, dict):
            self._last_logged = {None if k == "None" else int(k): int(v) for k, v in steps.items()}
        else:
            self._last_logged = {None: int(state_dict.get("last_logged_step", -1))}
