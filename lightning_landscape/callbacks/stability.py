r"""The sharpness the optimizer sees against the largest one its update survives: the edge of stability."""

from __future__ import annotations

from typing import Any, Literal, cast

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from lightning.pytorch.utilities.rank_zero import rank_zero_warn
from torch import Tensor
from torch.optim import SGD, Adam, AdamW, Optimizer, RMSprop
from typing_extensions import override

from lightning_landscape.callbacks import tags as _tags
from lightning_landscape.callbacks._checks import check_choice, check_int
from lightning_landscape.callbacks._lightning import generate_state_key
from lightning_landscape.callbacks._probe import MethodLoss, TrainingStepLoss, logging_step, resolve_loss_fn
from lightning_landscape.callbacks._probe_monitor import ProbeMonitor
from lightning_landscape.callbacks._tensorboard import log_scalars, write_layout
from lightning_landscape.curvature import (
    EigenResult,
    HessianOperator,
    LossFn,
    NonFiniteError,
    PreconditionedOperator,
    adam_preconditioner,
    select_parameters,
    stability_threshold,
)
from lightning_landscape.curvature._checks import DEFAULT_TOL
from lightning_landscape.curvature.batch_sharpness import batch_sharpness

_PLAIN = (SGD,)
_PRECONDITIONED = (Adam, AdamW, RMSprop)


class EdgeOfStabilityMonitor(ProbeMonitor):
    r"""Log the sharpness the optimizer sees, its stability threshold and their ratio, on a schedule.

    On a quadratic, gradient descent with learning rate :math:`\eta` diverges along any direction of curvature
    above :math:`2/\eta`. Full-batch training of neural networks drives the sharpness up to that threshold
    and then holds it there while the loss keeps (non-monotonically) decreasing: the *edge of stability*
    (Cohen et al. 2021); adaptive methods do the same with the preconditioned sharpness (Cohen et al. 2022).
    Every ``every_n_steps`` optimizer steps the monitor logs, at the weights right after the step:

    .. math::

        \texttt{stability/sharpness} = \lambda_1(P^{-1} H), \qquad
        \texttt{stability/threshold} = \tau(\text{optimizer}, \eta), \qquad
        \texttt{stability/ratio} = \lambda_1(P^{-1} H) / \tau,

    with :math:`H` the Hessian of the mean loss over ``num_batches`` fixed probe batches (drawn once, as
    :class:`~lightning_landscape.HessianEigenMonitor` draws them) and

    * ``SGD``: :math:`P = I`; :math:`\tau = 2/\eta`, :math:`(2 + 2\beta)/\eta` with heavy-ball momentum
      :math:`\beta` (dampening and Nesterov as
      :func:`~lightning_landscape.curvature.stability_threshold` states);
    * ``Adam``/``AdamW``: :math:`P` the diagonal of the last update, bias-corrected, :math:`\epsilon`
      included (:func:`~lightning_landscape.curvature.adam_preconditioner`);
      :math:`\tau = (2 + 2\beta_1)/((1 - \beta_1)\eta)`, 38/eta at :math:`\beta_1 = 0.9`;
    * ``RMSprop``: :math:`P` from ``square_avg``; :math:`\tau = 2/\eta` (:math:`(2 + 2\beta)/\eta` with
      momentum).

    Another optimizer (or a subclass of these, which may change the update) is refused by class name before
    training starts. :math:`\lambda_1(P^{-1} H)` is the top Lanczos Ritz value of the symmetric
    :math:`P^{-1/2} H P^{-1/2}` (same eigenvalues), warm-started from the previous probe and held to ``tol``
    (``stability/converged`` is 1 when it met it).

    **The learning rate** is read from ``optimizer.param_groups[group]["lr"]`` at the probe. Lightning steps
    ``interval="step"`` schedulers before ``on_train_batch_end``, so :math:`\eta` is the rate of the *next*
    step: the one whose stability the ratio predicts. With several parameter groups of different learning
    rates, ``group`` says whose rate (and momentum) makes the threshold, while :math:`H` and :math:`P` cover
    every probed parameter (``params``): select the group's parameters with ``params`` for a ratio that is
    exact per group. A probe at learning rate 0 (e.g. the first step of a warm-up) logs the sharpness only.

    ``batch_sharpness=True`` also logs ``stability/batch_sharpness``, the mean over the probe batches of
    :math:`g_b^\top H_b g_b / \|g_b\|^2` (:math:`g_b, H_b` the gradient and Hessian of batch :math:`b`'s
    loss): the curvature along the step a mini-batch method actually takes, the quantity that sits at
    :math:`2/\eta` for SGD with small batches when :math:`\lambda_1` does not. It is not preconditioned.

    How to read the ratio: well below 1, the step is stable along every direction; near 1 the optimizer is at
    the edge of stability, where full-batch GD self-stabilizes (the loss oscillates along the top eigenvector
    but still decreases over longer times); transiently above 1 it is catapulting out of a sharp region (the
    loss spikes, then the sharpness drops below the threshold).

    Probing leaves training bit-identical (model, ``.grad``, modes, optimizer state, every RNG, logged
    metrics); under DDP the Hessian products are all-reduced (rank zero logs) and the batch sharpness is the
    mean over ranks. Under FSDP2 (``ModelParallelStrategy`` with ``fully_shard`` in ``configure_model``) the
    products are finite differences of the sharded gradients and an adaptive optimizer's state is gathered
    for the preconditioner (as :class:`~lightning_landscape.HessianEigenMonitor` does it);
    ``batch_sharpness`` is refused there (it differentiates twice). Values go to every logger at the step
    of the module's metrics of that batch and to ``trainer.callback_metrics``. With ``name`` the tags are
    ``stability/<name>/...``.

    Args:
        every_n_steps: Probe after every this many optimizer steps.
        num_batches: How many batches of the dataloader form the probe (1 for full-batch training).
        dataloader: ``"train"`` or ``"val"``: where the probe batches come from.
        optimizer: Index of the optimizer (in ``configure_optimizers`` order) whose update is measured.
        group: Index of the parameter group whose learning rate and momentum make the threshold.
        batch_sharpness: Also log ``stability/batch_sharpness``.
        loss_fn: Import path ``"pkg.module:function"`` of ``loss_fn(model, batch) -> Tensor`` or
            ``"self.<method>"``; ``None`` uses the module's ``training_step`` with its logging silenced.
        tol: Relative tolerance of the top eigenvalue, ``> 0``.
        max_iter: Most Lanczos steps; ``None`` for the default.
        train_mode: ``True``: the module's own train/eval flags; ``False`` or ``None``: eval mode.
        memory: ``"auto"``, ``"reuse"`` or ``"recompute"``: keep the gradient graph between products or not.
        seed: Seeds the probe batches' draw and the start vector.
        warm_start: Start each probe from the previous probe's Ritz vector.
        params: Probe only these parameters (name prefixes or one regex); ``None`` for all trainable ones.
        name: Tags under ``stability/<name>/`` (letters, digits, ``_``, ``.``, ``-``).

    Raises:
        ValueError: If an argument is invalid (checked in ``__init__``).
        MisconfigurationException: Before training under ``FSDPStrategy`` or DeepSpeed, with
            ``batch_sharpness`` under ``ModelParallelStrategy`` (and there for parameters not sharded plainly
            by ``fully_shard`` over all ranks, at fit start), for a manual-optimization module without
            ``loss_fn``, a ``params`` that selects nothing, an ``optimizer``/``group`` index out of range, an
            optimizer other than ``SGD``, ``Adam``, ``AdamW``, ``RMSprop`` (named), or probed parameters an
            adaptive optimizer does not hold.

    Example::

        >>> from lightning.pytorch import Trainer
        >>> from lightning_landscape import EdgeOfStabilityMonitor
        >>> monitor = EdgeOfStabilityMonitor(every_n_steps=10, batch_sharpness=True)
        >>> trainer = Trainer(callbacks=[monitor], logger=False, enable_checkpointing=False)
        >>> monitor.state_key
        "EdgeOfStabilityMonitor{'every_n_steps': 10, 'optimizer': 0, 'group': 0, 'name': None}"
    """

    monitor_name = "EdgeOfStabilityMonitor"
    checkpointed = (
        ("_last_probe_step", -1),
        ("num_probes", 0),
        ("num_skipped", 0),
    )

    _landscape_family = _tags.STABILITY_SECTION

    def __init__(
        self,
        every_n_steps: int = 100,
        num_batches: int = 1,
        dataloader: Literal["train", "val"] = "train",
        optimizer: int = 0,
        group: int = 0,
        batch_sharpness: bool = False,
        loss_fn: str | None = None,
        tol: float = DEFAULT_TOL,
        max_iter: int | None = None,
        train_mode: bool | None = None,
        memory: Literal["auto", "reuse", "recompute"] = "auto",
        seed: int = 0,
        warm_start: bool = True,
        params: str | list[str] | None = None,
        name: str | None = None,
    ) -> None:
        check_int("every_n_steps", every_n_steps)
        check_int("num_batches", num_batches)
        check_choice("dataloader", dataloader, ("train", "val"))
        check_int("optimizer", optimizer, minimum=0)
        check_int("group", group, minimum=0)
        _tags.check_name(name)
        super().__init__(
            k=1,
            tol=tol,
            max_iter=max_iter,
            train_mode=train_mode,
            memory=memory,
            seed=seed,
            warm_start=warm_start,
            params=params,
        )
        self.every_n_steps = every_n_steps
        self.num_batches = num_batches
        self.dataloader = dataloader
        self.optimizer = optimizer
        self.group = group
        self.batch_sharpness = bool(batch_sharpness)
        self.loss_fn = loss_fn
        self.name = name
        self._loss_fn: LossFn | None = resolve_loss_fn(loss_fn) if loss_fn is not None else None
        self._preconditioner_of: Optimizer | None = None  # set during a probe of an adaptive optimizer
        self._last_probe_step = -1
        self._warned_lr = False
        self.num_probes = 0
        self.num_skipped = 0
        self.last_metrics: dict[str, float] = {}
        """The values of the last probe by tag (also on ranks other than zero)."""
        self.threshold_formula: str | None = None
        """How the last threshold was computed, in words (e.g. ``'SGD: 2 / lr, lr=0.1'``)."""

    @property
    @override
    def state_key(self) -> str:
        return generate_state_key(
            self, every_n_steps=self.every_n_steps, optimizer=self.optimizer, group=self.group, name=self.name
        )

    def _tag(self, quantity: str) -> str:
        return _tags.stability_tag(quantity, self.name)

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._check_strategy(trainer)
        if self._sharded and self.batch_sharpness:
            raise MisconfigurationException(
                "EdgeOfStabilityMonitor: `batch_sharpness`=True cannot run under FSDP: it differentiates "
                "each batch's gradient again (torch.autograd.grad has no graph w.r.t. sharded parameters). "
                "Use batch_sharpness=False under ModelParallelStrategy, or strategy='ddp'."
            )
        if isinstance(self._loss_fn, MethodLoss):
            self._loss_fn.check(pl_module)
        if not self._sharded:  # sharded in configure_model, after this hook: checked at fit start
            self._check_model(pl_module)
        if not pl_module.automatic_optimization and self._loss_fn is None:
            raise MisconfigurationException(
                f"EdgeOfStabilityMonitor cannot probe {type(pl_module).__name__}.training_step: it uses "
                "manual optimization, so its training_step steps the optimizers itself. Pass the loss to "
                "probe as `loss_fn` ('self.<method>' or 'pkg.module:function')."
            )
        if trainer.optimizers:  # Lightning builds the optimizers after this hook; re-checked at fit start
            self._check_optimizers(trainer, pl_module)

    def _check_optimizers(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Refuse, before any step, an optimizer whose stability threshold is not known."""
        optimizers = trainer.optimizers
        if self.optimizer >= len(optimizers):
            raise MisconfigurationException(
                f"EdgeOfStabilityMonitor: `optimizer`={self.optimizer} but the module has {len(optimizers)} "
                f"optimizer(s): valid 0..{len(optimizers) - 1}."
            )
        opt = optimizers[self.optimizer]
        if type(opt) not in (*_PLAIN, *_PRECONDITIONED):
            valid = [cls.__name__ for cls in (*_PLAIN, *_PRECONDITIONED)]
            raise MisconfigurationException(
                f"EdgeOfStabilityMonitor: optimizer {type(opt).__name__} is not supported: its stability "
                f"threshold is not known. Valid: {valid} (torch.optim, exact class)."
            )
        if self.group >= len(opt.param_groups):
            raise MisconfigurationException(
                f"EdgeOfStabilityMonitor: `group`={self.group} but {type(opt).__name__} has "
                f"{len(opt.param_groups)} parameter group(s): valid 0..{len(opt.param_groups) - 1}."
            )
        if type(opt) in _PRECONDITIONED:
            held = {id(p) for g in opt.param_groups for p in g["params"]}
            missing = [n for n, p in select_parameters(pl_module, self.params) if id(p) not in held]
            if missing:
                raise MisconfigurationException(
                    f"EdgeOfStabilityMonitor: {type(opt).__name__} (optimizer {self.optimizer}) does not "
                    f"hold the probed parameters {missing[:5]}, so it has no preconditioner for them. Select "
                    "its parameters with `params` or pick its index with `optimizer`."
                )

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._sharded:
            self._check_model(pl_module)
        self._check_optimizers(trainer, pl_module)
        write_layout(trainer)

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        step = trainer.global_step
        if step == 0 or step % self.every_n_steps != 0 or step == self._last_probe_step:
            return
        self._probe(trainer, pl_module, logging_step(trainer))

    @override
    def _solve(self, op: HessianOperator, v0: Tensor | None, vectors: bool) -> EigenResult:
        """The engine's solve, on :math:`P^{-1/2} H P^{-1/2}` while an adaptive optimizer is probed."""
        if self._preconditioner_of is None:
            return super()._solve(op, v0, vectors)
        pre = PreconditionedOperator(op, adam_preconditioner(self._preconditioner_of, op.params))
        # The engine's solvers take any linear operator; its annotation names the one it builds itself.
        return super()._solve(cast(HessianOperator, pre), v0, vectors)

    def _probe(self, trainer: pl.Trainer, pl_module: pl.LightningModule, step: int) -> None:
        """One measurement at the current weights; all ranks run it (the products are all-reduced)."""
        if self._batches is None:
            return
        self._last_probe_step = trainer.global_step
        opt = trainer.optimizers[self.optimizer]
        loss_fn = TrainingStepLoss(self._loss_fn)
        self._preconditioner_of = opt if type(opt) in _PRECONDITIONED else None
        try:
            result = self.run(pl_module, loss_fn, self._batches)
            batch = (
                batch_sharpness(
                    pl_module, loss_fn, self._batches, self.params, bool(self.train_mode), self.seed
                )
                if self.batch_sharpness
                else None
            )
        except NonFiniteError as err:
            self.num_skipped += 1
            rank_zero_warn(
                f"EdgeOfStabilityMonitor: skipped the probe at step {trainer.global_step}, the loss or a "
                f"Hessian-vector product is not finite ({err}). Nothing was logged for it.",
                category=RuntimeWarning,
            )
            return
        finally:
            self._preconditioner_of = None
        sharpness = result.eigen.largest[0]
        metrics = {
            self._tag(_tags.SHARPNESS): sharpness,
            self._tag(_tags.CONVERGED): float(result.eigen.converged),
        }
        try:
            threshold, self.threshold_formula = stability_threshold(opt, self.group)
        except ValueError as err:  # a learning rate of 0 has no threshold
            if not self._warned_lr:
                self._warned_lr = True
                rank_zero_warn(
                    f"EdgeOfStabilityMonitor: no threshold at step {trainer.global_step} ({err}); the "
                    "sharpness is logged without threshold and ratio while that lasts. (Warned once.)",
                    category=RuntimeWarning,
                )
        else:
            metrics[self._tag(_tags.THRESHOLD)] = threshold
            metrics[self._tag(_tags.RATIO)] = sharpness / threshold
        if batch is not None:
            if trainer.world_size > 1:
                local = torch.tensor(batch, dtype=torch.float64, device=pl_module.device)
                batch = float(trainer.strategy.reduce(local, reduce_op="mean"))
            metrics[self._tag(_tags.BATCH_SHARPNESS)] = batch
        self.num_probes += 1
        self.last_metrics = metrics
        log_scalars(trainer, metrics, step)
        for tag, value in metrics.items():
            pl_module.log(tag, value, logger=False, sync_dist=False)
