r"""Training and validation risk at one set of weights, the generalization gap and the gaps to a known optimal
risk, at every validation run."""

from __future__ import annotations

import math
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks.callback import Callback
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import Tensor
from torchmetrics.aggregation import MeanMetric
from typing_extensions import override

from lightning_landscape.callbacks import tags as _tags
from lightning_landscape.callbacks._batches import (
    batch_size_of,
    check_dataloader,
    draw_batches,
    fixed_data_rng,
    iterate_fresh,
    probe_dataloader,
)
from lightning_landscape.callbacks._checks import check_choice, check_float, check_int, check_str
from lightning_landscape.callbacks._lightning import (
    epoch_value,
    generate_state_key,
    running_logged_keys,
)
from lightning_landscape.callbacks._probe import (
    MethodLoss,
    TrainingStepLoss,
    epoch_end_logging_step,
    logging_step,
    resolve_loss_fn,
    step_loss,
)
from lightning_landscape.callbacks._tensorboard import log_scalars, write_layout
from lightning_landscape.curvature import LossFn
from lightning_landscape.curvature._model_state import probe_context


class RiskGapMonitor(Callback):
    r"""Log the training and validation risk at the weights the validation ran at, and the gaps between them.

    With :math:`\ell(\theta; z)` the loss of one sample, the training and validation risks at the weights
    :math:`\theta` are :math:`\hat R_{\mathrm{train}}(\theta) = \frac{1}{n}\sum_{i=1}^{n} \ell(\theta; z_i)`
    and :math:`\hat R_{\mathrm{val}}(\theta)` (the same mean over the validation set). Logged at every
    validation run of ``fit`` (so with ``val_check_interval < 1`` each validation run gets its own gap):

    .. math::

        \texttt{risk/generalization\_gap} = \hat R_{\mathrm{val}}(\theta) - \hat R_{\mathrm{train}}(\theta),
        \qquad
        \texttt{risk/optimality\_gap} = \hat R_{\mathrm{train}}(\theta) - R^\star, \qquad
        \texttt{risk/excess\_risk} = \hat R_{\mathrm{val}}(\theta) - R^\star,

    where :math:`R^\star` is ``optimal_risk``, the infimum of the risk over the model class when it is known
    (e.g. ``0`` for a realizable teacher-student task). ``risk/optimality_gap`` always uses the *training*
    risk (how far optimization is from the optimum; wherever the package logs an ``optimality_gap`` it means
    this), ``risk/excess_risk`` the validation risk (an estimate of the excess population risk). This is the
    risk decomposition used in arXiv 2212.13111.

    **Both risks at one** :math:`\theta` (``train_risk="batches"``, the default). The training risk
    :math:`\hat R_{\mathrm{train}}` is evaluated at the weights the validation just ran at, on a fixed set of
    ``train_batches`` training batches (the first batches of a fresh pass over the train dataloader under
    ``seed``, drawn once when training starts, like the Hessian monitor's probe batches), or on the whole
    training set with ``full_train_risk=True``: the module's own ``training_step`` (logging silenced,
    optimizer calls inert) or ``loss_fn``, eval mode as validation, no gradients, batches weighted by their
    size, summed over DDP ranks. A full-batch model whose validation data are its training data has a gap of
    exactly 0. Epochs without a validation run (``val_key=None``, ``check_val_every_n_epoch > 1``) log
    ``risk/train`` and ``risk/optimality_gap`` at the epoch's end weights. A manual-optimization module needs
    ``loss_fn`` (its ``training_step`` steps the optimizers and may return nothing): it is refused in
    ``setup`` without one.

    **The running mean** (``train_risk="running_mean"``, an explicit choice): the batch-size-weighted mean of
    the losses ``training_step`` returned during the epoch (the tensor or a dict's ``"loss"``; under automatic
    optimization with the accumulation factor undone; summed over DDP ranks and kept in the ``state_dict`` for
    a mid-epoch resume); failing that, the value logged under ``train_key`` in the batch, or Lightning's epoch
    mean of ``train_key``. It averages over weights that moved during the epoch, so it is *not* the risk at
    the weights the validation ran at; its tags say so: ``risk/train_running_mean``,
    ``risk/generalization_gap_running_mean`` and ``risk/optimality_gap_running_mean``, logged once per epoch
    with the epoch's last validation risk.

    :math:`\hat R_{\mathrm{val}}` is the mean of the scalar losses ``validation_step`` returned (the tensor,
    or a dict's ``val_key`` or ``"loss"``), else the epoch mean of ``val_key`` as logged (for ``self.log`` in
    ``validation_step`` ``on_epoch=True`` is the default).

    The values go to every logger (at the step of the validation run's metrics, or of Lightning's epoch
    metrics) and to ``trainer.callback_metrics`` (via ``pl_module.log(..., logger=False)``), so they can be
    monitored. With ``name`` the tags are ``risk/<name>/...``, so two monitors do not overwrite each other.

    Args:
        train_key: For ``train_risk="running_mean"``: the key the module logs its training loss under (used
            when ``training_step`` returns no loss).
        val_key: The key the module logs its validation loss under; ``None`` logs no validation risk and
            no gap that needs it.
        full_train_risk: Evaluate the training risk over the whole training set instead of ``train_batches``.
        optimal_risk: The known optimal risk :math:`R^\star`; ``None`` logs neither gap to it.
        loss_fn: Import path ``"pkg.module:function"`` of ``loss_fn(model, batch)`` (or ``"self.<method>"``
            for ``module.<method>(batch)``) returning the mean loss of the batch; ``None`` uses the module's
            ``training_step``. Not used with ``train_risk="running_mean"``.
        seed: The seed the training batches are drawn (or the training set iterated) under.
        name: Tags under ``risk/<name>/`` instead of ``risk/`` (letters, digits, ``_``, ``.``, ``-``).
        train_risk: ``"batches"``: at the validation's weights (see above); ``"running_mean"``: the epoch's
            running mean of the step losses, under its own tags.
        train_batches: How many training batches form the training risk (``train_risk="batches"``, unless
            ``full_train_risk``).
        dataloader: The training dataloader the training risk is evaluated on: ``"train"`` (the only one), or
            ``"train:<name>"`` for the one under key (or index) ``<name>`` of several.

    Raises:
        ValueError: If an argument is invalid; at the end of the first epoch (or the sanity check) if a risk
            is neither logged with ``on_epoch=True`` nor returned by the step.
        MisconfigurationException: In ``setup``, for ``train_risk="batches"`` on a manual-optimization module
            without ``loss_fn``, or a ``loss_fn="self.<method>"`` the module does not have.

    Example::

        >>> from lightning.pytorch import Trainer
        >>> from lightning_landscape import RiskGapMonitor
        >>> monitor = RiskGapMonitor(train_key="train_loss", val_key="val_loss", optimal_risk=0.0)
        >>> trainer = Trainer(callbacks=[monitor], logger=False, enable_checkpointing=False)
        >>> RiskGapMonitor(train_risk="running_mean").running_mean
        True
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
        train_risk: Literal["batches", "running_mean"] = "batches",
        train_batches: int = 8,
        dataloader: str = "train",
    ) -> None:
        check_str("train_key", train_key)
        check_str("val_key", val_key, optional=True)
        check_float("optimal_risk", optimal_risk, optional=True)
        check_choice("train_risk", train_risk, ("batches", "running_mean"))
        check_int("train_batches", train_batches)
        if not check_dataloader(dataloader).startswith("train"):
            raise ValueError(
                f"`dataloader` must be 'train' or 'train:<name>' (a training dataloader), got {dataloader!r}"
            )
        if train_risk == "running_mean" and full_train_risk:
            raise ValueError(
                "`full_train_risk`=True evaluates the risk at the current weights: it cannot be combined "
                "with `train_risk`='running_mean'"
            )
        if loss_fn is not None and train_risk == "running_mean":
            raise ValueError(
                f"`loss_fn`={loss_fn!r} is not used with `train_risk`='running_mean' (the step losses are)"
            )
        check_int("seed", seed, minimum=0)
        _tags.check_name(name)
        self.train_key = train_key
        self.val_key = val_key
        self.full_train_risk = bool(full_train_risk)
        self.optimal_risk = None if optimal_risk is None else float(optimal_risk)
        self.loss_fn = loss_fn
        self.seed = seed
        self.name = name
        self.train_risk = train_risk
        self.train_batches = train_batches
        self.dataloader = dataloader
        self._loss_fn: LossFn | None = resolve_loss_fn(loss_fn) if loss_fn is not None else None
        self._batches: list[Any] | None = None
        self._logged_step = -1  # global step of the last at-weights log
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

    @property
    def running_mean(self) -> bool:
        """Whether the training risk is the epoch's running mean (``train_risk="running_mean"``)."""
        return self.train_risk == "running_mean"

    def _tag(self, quantity: str) -> str:
        return _tags.risk_tag(quantity, self.name)

    def _train_tag(self, quantity: str) -> str:
        """The tag of a quantity made from the training risk: ``..._running_mean`` when it is that."""
        return self._tag(f"{quantity}_{_tags.RUNNING_MEAN}" if self.running_mean else quantity)

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if isinstance(self._loss_fn, MethodLoss):
            self._loss_fn.check(pl_module)
        if not self.running_mean and not pl_module.automatic_optimization and self._loss_fn is None:
            raise MisconfigurationException(
                f"RiskGapMonitor cannot evaluate {type(pl_module).__name__}.training_step at fixed weights: "
                "it uses manual optimization (it steps the optimizers and may return no loss). Pass the "
                "training loss as `loss_fn` ('self.<method>' or 'pkg.module:function'), or choose "
                "`train_risk`='running_mean'."
            )

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
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.running_mean and not self.full_train_risk:
            loader = probe_dataloader(trainer, self.dataloader)
            self._batches = draw_batches(
                loader, self.train_batches, self.seed, to_device=trainer.strategy.batch_to_device
            )

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if not self.running_mean:
            return
        loss = step_loss(outputs)
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
        loss = step_loss(outputs, self.val_key)
        if loss is not None and self.val_key is not None:
            self._val_mean.update(loss.detach().to(self._val_mean.device), weight=batch_size_of(batch))

    @override
    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.val_key is None or trainer.state.fn != "fit":
            return
        value = _mean(self._val_mean)
        if value is None:
            value = epoch_value(trainer, self.val_key)
        if value is None:
            raise ValueError(_missing_message(trainer, "val_key", self.val_key, "validation_step"))
        if trainer.sanity_checking:
            return
        self._val_risk = value
        self._val_epoch = trainer.current_epoch
        if not self.running_mean:
            # The validation ran at these weights: the training risk is taken at them too, now.
            self._log(
                trainer, pl_module, self._train_risk_now(trainer, pl_module), value, logging_step(trainer)
            )
            self._logged_step = trainer.global_step

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not self.running_mean:
            if self._logged_step != trainer.global_step:  # no validation at these weights: the risk alone
                train_now = self._train_risk_now(trainer, pl_module)
                self._log(trainer, pl_module, train_now, None, epoch_end_logging_step(trainer))
                self._logged_step = trainer.global_step
            return
        train = _mean(self._train_mean)
        if train is None:
            train = epoch_value(trainer, self.train_key)
        if train is None:
            if self._num_logged == 0:
                raise ValueError(_missing_message(trainer, "train_key", self.train_key, "training_step"))
            return
        self._train_mean.reset()
        val = self._val_risk if self._val_epoch == trainer.current_epoch else None
        self._log(trainer, pl_module, train, val, epoch_end_logging_step(trainer))

    def _log(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, train: float, val: float | None, step: int
    ) -> None:
        metrics = {self._train_tag(_tags.TRAIN): train}
        if val is not None:
            metrics[self._tag(_tags.VAL)] = val
            metrics[self._train_tag(_tags.GENERALIZATION_GAP)] = val - train
        if self.optimal_risk is not None:
            metrics[self._train_tag(_tags.OPTIMALITY_GAP)] = train - self.optimal_risk
            if val is not None:
                metrics[self._tag(_tags.EXCESS_RISK)] = val - self.optimal_risk
        log_scalars(trainer, metrics, step)
        for tag, value in metrics.items():
            pl_module.log(tag, value, logger=False, sync_dist=False)
        self._num_logged += 1

    def _train_risk_now(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> float:
        """Mean loss at the current weights over the fixed batches or the whole (this rank's share of the)
        training set, summed over ranks; eval mode, no gradients, RNG and buffers untouched."""
        loss_fn = TrainingStepLoss(self._loss_fn)
        total = torch.zeros((), dtype=torch.float64, device=pl_module.device)
        count = torch.zeros((), dtype=torch.float64, device=pl_module.device)

        def add(batch: Any) -> None:
            nonlocal total, count
            size = batch_size_of(batch)
            with probe_context(pl_module, train_mode=False, grad=False):
                total += loss_fn(pl_module, batch).detach().to(torch.float64) * size
            count += size

        if self._batches is not None:
            for batch in self._batches:
                add(batch)
        else:
            dataloader = probe_dataloader(trainer, self.dataloader)
            with fixed_data_rng(dataloader, self.seed):
                for batch in iterate_fresh(dataloader):
                    add(trainer.strategy.batch_to_device(batch))
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
            "logged_step": self._logged_step,
            "train_sum": total,
            "train_weight": weight,
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._val_risk = state_dict.get("val_risk")
        self._val_epoch = int(state_dict.get("val_epoch", -1))
        self._num_logged = int(state_dict.get("num_logged", 0))
        self._logged_step = int(state_dict.get("logged_step", -1))
        self._train_mean.reset()
        weight = float(state_dict.get("train_weight", 0.0))
        self._pending_train_state = (float(state_dict.get("train_sum", 0.0)), weight) if weight > 0 else None


def _mean(metric: MeanMetric) -> float | None:
    """The metric's mean over all ranks, ``None`` if no rank saw a value (a collective under DDP)."""
    weight = torch.as_tensor(metric.metric_state["weight"]).clone()
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(weight)
    if float(weight) == 0:
        return None
    return float(metric.compute())


def _missing_message(trainer: pl.Trainer, argument: str, key: str, hook: str) -> str:
    logged = sorted({*trainer.callback_metrics, *running_logged_keys(trainer)})
    return (
        f"RiskGapMonitor: `{argument}`={key!r} was not logged as an epoch metric and `{hook}` returned no "
        f"scalar loss; return the loss from `{hook}` (or a dict with 'loss'), log it with "
        f"`self.log({key!r}, loss, on_epoch=True)`, or set `{argument}`. Logged: {logged}"
    )
