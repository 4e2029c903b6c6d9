r"""Training and validation risk, the generalization gap and the optimality gap, once per epoch."""

from __future__ import annotations

import math
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks.callback import Callback
from typing_extensions import override

from lightning_landscape.callbacks import _tags
from lightning_landscape.callbacks._probe import (
    LossFn,
    TrainingStepLoss,
    batch_size_of,
    epoch_end_logging_step,
    fixed_data_rng,
    iterate_fresh,
    probe_dataloader,
    resolve_loss_fn,
)
from lightning_landscape.callbacks._tensorboard import log_scalars, write_layout


class RiskGapMonitor(Callback):
    r"""Log the empirical risks of an epoch and the gaps between them and to a known optimum.

    With :math:`\ell(\theta; z)` the loss of one sample, the training and validation risks at the weights
    :math:`\theta` are :math:`\hat R_{\mathrm{train}}(\theta) = \frac{1}{n}\sum_{i=1}^{n} \ell(\theta; z_i)`
    and :math:`\hat R_{\mathrm{val}}(\theta)` (the same mean over the validation set). Logged once per
    training epoch:

    .. math::

        \texttt{risk/generalization\_gap} = \hat R_{\mathrm{val}} - \hat R_{\mathrm{train}}, \qquad
        \texttt{risk/optimality\_gap} = \hat R_{\mathrm{opt\_of}} - R^\star ,

    where :math:`R^\star` is ``optimal_risk``, the infimum of the risk over the model class when it is known
    (e.g. ``0`` for a realizable teacher-student task), and :math:`\hat R_{\mathrm{opt\_of}}` is the training
    risk (default, ``optimality_of="train"``: how far optimization is from the optimum) or the validation risk
    (``optimality_of="val"``: an estimate of the excess population risk). This is the risk decomposition used
    in arXiv 2212.13111.

    By default :math:`\hat R_{\mathrm{train}}` is the epoch mean of ``train_key`` and :math:`\hat
    R_{\mathrm{val}}` the epoch mean of ``val_key``, exactly as Lightning aggregates them (log them with
    ``on_epoch=True``; for ``self.log`` in ``validation_step`` that is the default). The training mean then
    averages over weights that changed during the epoch; ``full_train_risk=True`` instead evaluates the risk
    on the whole training set at the weights of the epoch's end (eval mode, no gradients, the module's
    ``training_step`` with logging silenced or ``loss_fn``, batches weighted by their size, summed over DDP
    ranks).

    The values go to every logger at the step of Lightning's epoch metrics and to ``trainer.callback_metrics``
    (via ``pl_module.log(..., logger=False)``), so they can be monitored.

    Args:
        train_key: The key the module logs its training loss under.
        val_key: The key the module logs its validation loss under; ``None`` logs no validation risk and
            no gap.
        full_train_risk: Evaluate the training risk over the whole training set at the end of each epoch.
        optimal_risk: The known optimal risk :math:`R^\star`; ``None`` logs no optimality gap.
        optimality_of: Which risk the optimality gap is measured on: ``"train"`` or ``"val"``.
        loss_fn: For ``full_train_risk``: import path ``"pkg.module:function"`` of ``loss_fn(model, batch)``
            returning the mean loss of the batch; ``None`` uses the module's ``training_step``.
        seed: For ``full_train_risk``: the seed the training set is iterated under (random augmentations).

    Raises:
        ValueError: If an argument is invalid; at the end of the first epoch (or the sanity check) if a key is
            never logged with ``on_epoch=True``.

    Example::

        >>> from lightning.pytorch import Trainer
        >>> from lightning_landscape import RiskGapMonitor
        >>> monitor = RiskGapMonitor(train_key="train_loss", val_key="val_loss", optimal_risk=0.0)
        >>> trainer = Trainer(callbacks=[monitor])
    """

    _landscape_family = _tags.RISK_SECTION

    def __init__(
        self,
        train_key: str = "train_loss",
        val_key: str | None = "val_loss",
        full_train_risk: bool = False,
        optimal_risk: float | None = None,
        optimality_of: Literal["train", "val"] = "train",
        loss_fn: str | None = None,
        seed: int = 0,
    ) -> None:
        if not isinstance(train_key, str) or not train_key:
            raise ValueError(f"`train_key` must be a non-empty str, got {train_key!r}")
        if val_key is not None and (not isinstance(val_key, str) or not val_key):
            raise ValueError(f"`val_key` must be a non-empty str or None, got {val_key!r}")
        if optimal_risk is not None and (
            isinstance(optimal_risk, bool)
            or not isinstance(optimal_risk, (int, float))
            or not math.isfinite(optimal_risk)
        ):
            raise ValueError(f"`optimal_risk` must be a finite float or None, got {optimal_risk!r}")
        if optimality_of not in ("train", "val"):
            raise ValueError(f"`optimality_of` must be 'train' or 'val', got {optimality_of!r}")
        if optimality_of == "val" and optimal_risk is not None and val_key is None:
            raise ValueError("`optimality_of`='val' needs a `val_key`, got val_key=None")
        if loss_fn is not None and not full_train_risk:
            raise ValueError(f"`loss_fn`={loss_fn!r} is only used with `full_train_risk`=True")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"`seed` must be an int, got {seed!r}")
        self.train_key = train_key
        self.val_key = val_key
        self.full_train_risk = bool(full_train_risk)
        self.optimal_risk = None if optimal_risk is None else float(optimal_risk)
        self.optimality_of = optimality_of
        self.loss_fn = loss_fn
        self.seed = seed
        self._loss_fn: LossFn | None = resolve_loss_fn(loss_fn) if loss_fn is not None else None
        self._val_risk: float | None = None
        self._val_epoch = -1
        self._num_logged = 0

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(train_key=self.train_key, val_key=self.val_key)

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        write_layout(trainer)

    @override
    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.val_key is None or trainer.state.fn != "fit":
            return
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
            train = _epoch_value(trainer, self.train_key)
            if train is None:
                if self._num_logged == 0:
                    raise ValueError(_missing_message(trainer, "train_key", self.train_key, "training_step"))
                return
        assert train is not None
        metrics = {_tags.RISK_TRAIN: train}
        val = self._val_risk if self._val_epoch == trainer.current_epoch else None
        if val is not None:
            metrics[_tags.RISK_VAL] = val
            metrics[_tags.RISK_GENERALIZATION_GAP] = val - train
        if self.optimal_risk is not None:
            risk = train if self.optimality_of == "train" else val
            if risk is not None:
                metrics[_tags.RISK_OPTIMALITY_GAP] = risk - self.optimal_risk
        log_scalars(trainer, metrics, epoch_end_logging_step(trainer))
        for tag, value in metrics.items():
            pl_module.log(tag, value, logger=False, sync_dist=False)
        self._num_logged += 1

    @torch.no_grad()
    def _full_train_risk(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> float:
        """Mean loss over the whole (this rank's share of the) training set, summed over ranks."""
        loss_fn = self._loss_fn if self._loss_fn is not None else TrainingStepLoss()
        dataloader = probe_dataloader(trainer, "train")
        modes = {m: m.training for m in pl_module.modules()}
        pl_module.eval()
        total = torch.zeros((), dtype=torch.float64, device=pl_module.device)
        count = torch.zeros((), dtype=torch.float64, device=pl_module.device)
        try:
            with fixed_data_rng(dataloader, self.seed):
                for batch in iterate_fresh(dataloader):
                    batch = trainer.strategy.batch_to_device(batch)
                    size = batch_size_of(batch)
                    total += loss_fn(pl_module, batch).detach().to(torch.float64) * size
                    count += size
        finally:
            for module, mode in modes.items():
                module.training = mode
        if trainer.world_size > 1:
            total = trainer.strategy.reduce(total, reduce_op="sum")
            count = trainer.strategy.reduce(count, reduce_op="sum")
        return float(total / count)

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"val_risk": self._val_risk, "val_epoch": self._val_epoch, "num_logged": self._num_logged}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._val_risk = state_dict.get("val_risk")
        self._val_epoch = int(state_dict.get("val_epoch", -1))
        self._num_logged = int(state_dict.get("num_logged", 0))


def _epoch_value(trainer: pl.Trainer, key: str) -> float | None:
    """The epoch aggregate Lightning computed for ``key`` in the running loop (``None``: not logged on epoch).

    The running loop's results hold only what was logged since it was last reset, so unlike
    ``trainer.callback_metrics`` this never returns a value left over from an earlier epoch.
    """
    results = trainer._results
    if results is None:
        return None
    epoch_metrics = results.metrics(False)["callback"]
    for name in (key, f"{key}_epoch"):
        if name in epoch_metrics:
            return float(epoch_metrics[name])
    return None


def _missing_message(trainer: pl.Trainer, argument: str, key: str, hook: str) -> str:
    logged = sorted(trainer.callback_metrics)
    results = trainer._results
    if results is not None:
        logged = sorted({*logged, *results.metrics(False)["callback"], *results.metrics(True)["callback"]})
    step_only = key in logged or f"{key}_step" in logged
    hint = (
        f"it was logged without on_epoch=True: use `self.log({key!r}, loss, on_epoch=True)` in `{hook}`"
        if step_only
        else f"log it with `self.log({key!r}, loss, on_epoch=True)` in `{hook}` or set `{argument}`"
    )
    return f"RiskGapMonitor: `{argument}`={key!r} was not logged as an epoch metric; {hint}. Logged: {logged}"
