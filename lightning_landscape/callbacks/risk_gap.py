r"""Training and validation risk, the generalization gap and the gaps to a known optimal risk, per epoch."""

from __future__ import annotations

import math
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks.callback import Callback
from torch import Tensor
from torchmetrics.aggregation import MeanMetric
from typing_extensions import override

from lightning_landscape.callbacks import tags as _tags
from lightning_landscape.callbacks._checks import check_float, check_int, check_str
from lightning_landscape.callbacks._lightning import (
    generate_state_key,
    running_epoch_metrics,
    running_logged_keys,
)
from lightning_landscape.callbacks._probe import (
    MethodLoss,
    TrainingStepLoss,
    batch_size_of,
    epoch_end_logging_step,
    fixed_data_rng,
    iterate_fresh,
    probe_dataloader,
    resolve_loss_fn,
)
from lightning_landscape.callbacks._tensorboard import log_scalars, write_layout
from lightning_landscape.curvature import LossFn
from lightning_landscape.curvature._model_state import kept_modes


class RiskGapMonitor(Callback):
    r"""Log the empirical risks of an epoch and the gaps between them and to a known optimum.

    With :math:`\ell(\theta; z)` the loss of one sample, the training and validation risks at the weights
    :math:`\theta` are :math:`\hat R_{\mathrm{train}}(\theta) = \frac{1}{n}\sum_{i=1}^{n} \ell(\theta; z_i)`
    and :math:`\hat R_{\mathrm{val}}(\theta)` (the same mean over the validation set). Logged once per
    training epoch:

    .. math::

        \texttt{risk/generalization\_gap} = \hat R_{\mathrm{val}} - \hat R_{\mathrm{train}}, \qquad
        \texttt{risk/optimality\_gap} = \hat R_{\mathrm{train}} - R^\star, \qquad
        \texttt{risk/excess\_risk} = \hat R_{\mathrm{val}} - R^\star,

    where :math:`R^\star` is ``optimal_risk``, the infimum of the risk over the model class when it is known
    (e.g. ``0`` for a realizable teacher-student task). ``risk/optimality_gap`` always uses the *training*
    risk (how far optimization is from the optimum; wherever the package logs an ``optimality_gap`` it means
    this), ``risk/excess_risk`` the validation risk (an estimate of the excess population risk). This is the
    risk decomposition used in arXiv 2212.13111.

    The risks work with the module as it is. :math:`\hat R_{\mathrm{train}}` is the batch-size-weighted mean
    of the losses ``training_step`` returned during the epoch (the tensor or a dict's ``"loss"``; under
    automatic optimization with the accumulation factor undone), which the monitor keeps itself in a
    torchmetrics ``MeanMetric``: summed over DDP ranks, saved in its ``state_dict`` for a mid-epoch resume,
    and independent of how the module logs (Lightning's default ``self.log(..., on_step=True,
    on_epoch=False)`` needs no change). A manual-optimization ``training_step`` that returns nothing
    contributes the value it logged under ``train_key`` in that batch; failing both, the epoch mean Lightning
    computed for ``train_key`` (logged with ``on_epoch=True``; rank-local unless ``sync_dist=True``).
    :math:`\hat R_{\mathrm{val}}` likewise: the mean of the scalar losses ``validation_step`` returned (the
    tensor, or a dict's ``val_key`` or ``"loss"``), else the epoch mean of ``val_key`` as logged (for
    ``self.log`` in ``validation_step`` ``on_epoch=True`` is the default). The training mean averages over
    weights that changed during the epoch; ``full_train_risk=True`` instead evaluates the risk on the whole
    training set at the weights of the epoch's end (eval mode, no gradients, the module's ``training_step``
    with logging silenced or ``loss_fn``, batches weighted by their size, summed over DDP ranks).

    The values go to every logger at the step of Lightning's epoch metrics and to ``trainer.callback_metrics``
    (via ``pl_module.log(..., logger=False)``), so they can be monitored. With ``name`` the tags are
    ``risk/<name>/...``, so two monitors (say on two keys) do not overwrite each other.

    Args:
        train_key: The key the module logs its training loss under (used when it is logged on epoch).
        val_key: The key the module logs its validation loss under; ``None`` logs no validation risk and
            no gap that needs it.
        full_train_risk: Evaluate the training risk over the whole training set at the end of each epoch.
        optimal_risk: The known optimal risk :math:`R^\star`; ``None`` logs neither gap to it.
        loss_fn: For ``full_train_risk``: import path ``"pkg.module:function"`` of ``loss_fn(model, batch)``
            (or ``"self.<method>"`` for ``module.<method>(batch)``) returning the mean loss of the batch;
            ``None`` uses the module's ``training_step``.
        seed: For ``full_train_risk``: the seed the training set is iterated under (random augmentations).
        name: Tags under ``risk/<name>/`` instead of ``risk/`` (letters, digits, ``_``, ``.``, ``-``).

    Raises:
        ValueError: If an argument is invalid; at the end of the first epoch (or the sanity check) if a risk
            is neither logged with ``on_epoch=True`` nor returned by the step.

    Example::

        >>> from lightning.pytorch import Trainer
        >>> from lightning_landscape import RiskGapMonitor
        >>> monitor = RiskGapMonitor(train_key="train_loss", val_key="val_loss", optimal_risk=0.0)
        >>> trainer = Trainer(callbacks=[monitor], logger=False, enable_checkpointing=False)
    """

    _landscape_family = _tags.RISK_SECTION

    def __init__(
        self,
        train_key: str = "train_loss",
        val_key: str | None = "val_loss",
        full_train_risk: bool = False,
        optimal_risk: float | None = None,
        loss_fn: str | None = None,
        seed: int = 0,
        name: str | None = None,
    ) -> None:
        check_str("train_key", train_key)
        check_str("val_key", val_key, optional=True)
        check_float("optimal_risk", optimal_risk, optional=True)
        if loss_fn is not None and not full_train_risk:
            raise ValueError(f"`loss_fn`={loss_fn!r} is only used with `full_train_risk`=True")
        check_int("seed", seed, minimum=0)
        _tags.check_name(name)
        self.train_key = train_key
        self.val_key = val_key
        self.full_train_risk = bool(full_train_risk)
        self.optimal_risk = None if optimal_risk is None else float(optimal_risk)
        self.loss_fn = loss_fn
        self.seed = seed
        self.name = name
        self._loss_fn: LossFn | None = resolve_loss_fn(loss_fn) if loss_fn is not None else None
        self._val_risk: float | None = None
        self._val_epoch = -1
        self._num_logged = 0
        # Means of the losses the steps returned, in float64. A NaN loss is a real value and must reach the
        # mean: nan_strategy=nan keeps it ("disable" would, but drops the weights in torchmetrics 1.9).
        self._train_mean = MeanMetric(nan_strategy=math.nan)
        self._val_mean = MeanMetric(nan_strategy=math.nan)
        for metric in (self._train_mean, self._val_mean):
            metric.set_dtype(torch.float64)
        self._pending_train_state: tuple[float, float] | None = None

    @property
    @override
    def state_key(self) -> str:
        named = {} if self.name is None else {"name": self.name}
        return generate_state_key(self, **named, train_key=self.train_key, val_key=self.val_key)

    def _tag(self, quantity: str) -> str:
        return _tags.risk_tag(quantity, self.name)

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if isinstance(self._loss_fn, MethodLoss):
            self._loss_fn.check(pl_module)

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        write_layout(trainer)
        self._train_mean.to(pl_module.device).reset()
        self._val_mean.to(pl_module.device).reset()
        if self._pending_train_state is not None:
            # Restored from a checkpoint saved mid-epoch: the running epoch mean goes on where it was.
            total, weight = self._pending_train_state
            value = torch.tensor(total / weight, dtype=torch.float64, device=pl_module.device)
            self._train_mean.update(value, weight=weight)
            self._pending_train_state = None

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        loss = _scalar(outputs)
        if loss is None:
            # Manual optimization may return nothing: take what the module logged in this batch.
            logged = trainer.callback_metrics
            for key in (f"{self.train_key}_step", self.train_key):
                if isinstance(logged.get(key), Tensor):
                    self._train_mean.update(
                        logged[key].detach().double().to(self._train_mean.device), weight=batch_size_of(batch)
                    )
                    return
            return
        if pl_module.automatic_optimization:
            # Lightning hands on the loss divided by the accumulation factor; undo that.
            loss = loss * trainer.accumulate_grad_batches
        self._train_mean.update(loss.detach().to(self._train_mean.device), weight=batch_size_of(batch))

    @override
    def on_validation_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._val_mean.reset()

    @override
    def on_validation_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        loss = _scalar(outputs, self.val_key)
        if loss is not None and self.val_key is not None:
            self._val_mean.update(loss.detach().to(self._val_mean.device), weight=batch_size_of(batch))

    @override
    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.val_key is None or trainer.state.fn != "fit":
            return
        value = _mean(self._val_mean)
        if value is None:
            value = _epoch_value(trainer, self.val_key)
        if value is None:
            raise ValueError(_missing_message(trainer, "val_key", self.val_key, "validation_step"))
        if not trainer.sanity_checking:
            self._val_risk = value
            self._val_epoch = trainer.current_epoch

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.full_train_risk:
            train: float | None = self._full_train_risk(trainer, pl_module)
        else:
            train = _mean(self._train_mean)
            if train is None:
                train = _epoch_value(trainer, self.train_key)
            if train is None:
                if self._num_logged == 0:
                    raise ValueError(_missing_message(trainer, "train_key", self.train_key, "training_step"))
                return
        assert train is not None
        self._train_mean.reset()
        metrics = {self._tag(_tags.TRAIN): train}
        val = self._val_risk if self._val_epoch == trainer.current_epoch else None
        if val is not None:
            metrics[self._tag(_tags.VAL)] = val
            metrics[self._tag(_tags.GENERALIZATION_GAP)] = val - train
        if self.optimal_risk is not None:
            metrics[self._tag(_tags.OPTIMALITY_GAP)] = train - self.optimal_risk
            if val is not None:
                metrics[self._tag(_tags.EXCESS_RISK)] = val - self.optimal_risk
        log_scalars(trainer, metrics, epoch_end_logging_step(trainer))
        for tag, value in metrics.items():
            pl_module.log(tag, value, logger=False, sync_dist=False)
        self._num_logged += 1

    @torch.no_grad()
    def _full_train_risk(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> float:
        """Mean loss over the whole (this rank's share of the) training set, summed over ranks."""
        loss_fn = TrainingStepLoss(self._loss_fn)
        dataloader = probe_dataloader(trainer, "train")
        total = torch.zeros((), dtype=torch.float64, device=pl_module.device)
        count = torch.zeros((), dtype=torch.float64, device=pl_module.device)
        with kept_modes(pl_module), fixed_data_rng(dataloader, self.seed):
            for batch in iterate_fresh(dataloader):
                batch = trainer.strategy.batch_to_device(batch)
                size = batch_size_of(batch)
                total += loss_fn(pl_module, batch).detach().to(torch.float64) * size
                count += size
        if trainer.world_size > 1:
            total = trainer.strategy.reduce(total, reduce_op="sum")
            count = trainer.strategy.reduce(count, reduce_op="sum")
        return float(total / count)

    @override
    def state_dict(self) -> dict[str, Any]:
        # This rank's partial sums of the running epoch (a resumed run continues the same mean).
        state = self._train_mean.metric_state
        total, weight = (float(torch.as_tensor(state[k])) for k in ("mean_value", "weight"))
        return {
            "val_risk": self._val_risk,
            "val_epoch": self._val_epoch,
            "num_logged": self._num_logged,
            "train_sum": total,
            "train_weight": weight,
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._val_risk = state_dict.get("val_risk")
        self._val_epoch = int(state_dict.get("val_epoch", -1))
        self._num_logged = int(state_dict.get("num_logged", 0))
        self._train_mean.reset()
        weight = float(state_dict.get("train_weight", 0.0))
        self._pending_train_state = (float(state_dict.get("train_sum", 0.0)), weight) if weight > 0 else None


def _scalar(outputs: Any, key: str | None = None) -> Tensor | None:
    """The scalar loss a step returned: the tensor itself, or a dict's ``key`` or ``"loss"`` entry."""
    if isinstance(outputs, dict):
        outputs = outputs.get(key) if key is not None and key in outputs else outputs.get("loss")
    if isinstance(outputs, Tensor) and outputs.numel() == 1:
        return outputs.reshape(())
    return None


def _mean(metric: MeanMetric) -> float | None:
    """The metric's mean over all ranks, ``None`` if no rank saw a value (a collective under DDP)."""
    weight = torch.as_tensor(metric.metric_state["weight"]).clone()
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(weight)
    if float(weight) == 0:
        return None
    return float(metric.compute())


def _epoch_value(trainer: pl.Trainer, key: str) -> float | None:
    """Lightning's epoch aggregate of ``key`` in the running loop (``None``: not logged on epoch)."""
    epoch_metrics = running_epoch_metrics(trainer)
    for name in (key, f"{key}_epoch"):
        if name in epoch_metrics:
            return epoch_metrics[name]
    return None


def _missing_message(trainer: pl.Trainer, argument: str, key: str, hook: str) -> str:
    logged = sorted({*trainer.callback_metrics, *running_logged_keys(trainer)})
    return (
        f"RiskGapMonitor: `{argument}`={key!r} was not logged as an epoch metric and `{hook}` returned no "
        f"scalar loss; return the loss from `{hook}` (or a dict with 'loss'), log it with "
        f"`self.log({key!r}, loss, on_epoch=True)`, or set `{argument}`. Logged: {logged}"
    )
