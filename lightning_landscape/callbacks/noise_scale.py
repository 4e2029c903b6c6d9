r"""The gradient noise scale during training: which batch size the gradient noise says is worth paying for."""

from __future__ import annotations

import math
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks.callback import Callback
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import Tensor
from torch.optim import Optimizer
from torch.utils.hooks import RemovableHandle
from typing_extensions import override

from lightning_landscape.callbacks import tags as _tags
from lightning_landscape.callbacks._lightning import generate_state_key
from lightning_landscape.callbacks._noise_estimators import (
    DebiasedEMA,
    chunk_gradient_norms,
    unbiased_estimates,
)
from lightning_landscape.callbacks._probe import TrainingStepLoss, batch_size_of
from lightning_landscape.curvature._checks import check_int


class GradientNoiseScaleMonitor(Callback):
    r"""Log the simple gradient noise scale :math:`B_\mathrm{simple} = \mathrm{tr}(\Sigma) / |G|^2`.

    :math:`G` is the true gradient and :math:`\Sigma` the per-sample gradient covariance (McCandlish et al.
    2018, "An empirical model of large-batch training"): below :math:`B_\mathrm{simple}` a larger batch still
    buys almost proportionally faster progress, far above it the extra samples are spent on averaging noise
    that is already small. Both are estimated from two batch sizes :math:`B_s < B_b` with the unbiased
    estimators of the paper's appendix A (see :mod:`~._noise_estimators`):

    .. math::

        |\mathcal G|^2 = \frac{B_b |G_{B_b}|^2 - B_s |G_{B_s}|^2}{B_b - B_s}, \qquad
        \mathcal S = \frac{|G_{B_s}|^2 - |G_{B_b}|^2}{1/B_s - 1/B_b}.

    Where the two batch sizes come from, decided once at fit start:

    * **DDP and/or gradient accumulation** (``world_size * accumulate_grad_batches > 1``): :math:`B_s` is one
      micro-batch on one rank, :math:`B_b` the whole step (all micro-batches of all ranks), at no extra
      compute. Under DDP the local gradient is gone once the all-reduce has run, so it is read on its way in:
      a hook on each parameter's gradient (``Tensor.register_hook``, which fires before the gradient is
      accumulated and bucketed for the all-reduce) adds its squared norm; :math:`|G_{B_s}|^2` is the mean over
      micro-batches and ranks (one all-reduce of four numbers), :math:`|G_{B_b}|^2` the norm of the
      all-reduced ``.grad`` in ``on_before_optimizer_step`` (after AMP unscaling, before gradient clipping).
      Lightning's division of the loss by
      ``accumulate_grad_batches`` and the AMP loss scale are undone. Steps whose micro-batches differ in size
      (a short last batch) are skipped.
    * **One device, no accumulation**: the step's batch is cut into ``num_chunks`` equal chunks and the
      chunk gradients of the module's own ``training_step`` loss (logging silenced) are taken at once with
      ``torch.func`` (``vmap`` of ``grad`` over ``functional_call``): :math:`B_s` = the chunk size,
      :math:`B_b` = the samples used. This costs about one extra forward and backward of the batch per
      estimate (hence the default of one estimate every 50 steps: an estimate every 10 steps would cost about
      10 % of the compute of a fit), and memory for ``num_chunks`` gradients; ``num_chunks`` = the batch
      size gives per-sample gradients (BatchNorm needs at least 2 samples per chunk).

    Norms are taken in float32 or wider (as GPT-NeoX's ``gradient_noise_scale.py``, since squared
    half-precision norms overflow). Every ``every_n_steps`` optimizer steps one estimate of each is made; the
    logged values are exponential moving averages over the estimates with decay ``ema_decay``, bias-corrected
    as in Adam (the :math:`t`-th logged value is :math:`\sum_i \beta^{t-i} x_i / \sum_i \beta^{t-i}`; with the
    defaults, 0.9 every 50 steps, an estimate's weight halves after 6.6 estimates, about 330 steps).
    ``noise_scale/b_simple`` is the ratio of the two averages (GPT-NeoX's and the paper's choice: the ratio of
    single noisy estimates is biased), logged only while both are > 0. With ``log_raw`` the single-step
    estimates go to ``noise_scale/raw/...`` too.

    Tags (under ``noise_scale/<name>/`` with ``name``): ``noise_scale/b_simple``, ``noise_scale/grad_sq``,
    ``noise_scale/trace_cov``, written to every logger on global rank 0 at ``trainer.global_step`` of the
    step measured; ``b_simple`` also goes to ``trainer.callback_metrics``. The moving averages are saved in
    checkpoints. Automatic optimization only.

    Args:
        every_n_steps: Estimate on every this many optimizer steps (the first at step 0).
        ema_decay: The decay :math:`\beta \in [0, 1)` of the moving averages (0: no smoothing).
        num_chunks: Chunks the batch is cut into on one device (``>= 2``; at most the batch size is used).
        log_raw: Also log the single-step estimates.
        name: Tags under ``noise_scale/<name>/`` (letters, digits, ``_``, ``.``, ``-``); in ``state_key``.

    Raises:
        ValueError: For a bad ``every_n_steps``, ``ema_decay``, ``num_chunks`` or ``name``.
        MisconfigurationException: In ``setup``, under manual optimization.

    Example::

        >>> from lightning.pytorch import Trainer
        >>> from lightning_landscape import GradientNoiseScaleMonitor
        >>> monitor = GradientNoiseScaleMonitor(every_n_steps=20, num_chunks=16)
        >>> trainer = Trainer(callbacks=[monitor], logger=False, enable_checkpointing=False)
    """

    def __init__(
        self,
        every_n_steps: int = 50,
        ema_decay: float = 0.9,
        num_chunks: int = 8,
        log_raw: bool = False,
        name: str | None = None,
    ) -> None:
        check_int("every_n_steps", every_n_steps)
        if isinstance(ema_decay, bool) or not isinstance(ema_decay, (int, float)) or not 0 <= ema_decay < 1:
            raise ValueError(f"`ema_decay` must be a number in [0, 1), got {ema_decay!r}.")
        check_int("num_chunks", num_chunks, minimum=2)
        _tags.check_name(name)
        self.every_n_steps = every_n_steps
        self.ema_decay = float(ema_decay)
        self.num_chunks = num_chunks
        self.log_raw = bool(log_raw)
        self.name = name
        self._grad_sq = DebiasedEMA(self.ema_decay)
        self._trace_cov = DebiasedEMA(self.ema_decay)
        self._loss = TrainingStepLoss()
        self._source = "split"
        self._handles: list[RemovableHandle] = []
        self._armed = False
        self._sum_sq: Tensor | None = None
        self._sizes: list[int] = []
        self._batch: Any = None
        self.num_estimates = 0

    @property
    @override
    def state_key(self) -> str:
        named = {} if self.name is None else {"name": self.name}
        return generate_state_key(self, **named)

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit" and not pl_module.automatic_optimization:
            raise MisconfigurationException(
                "GradientNoiseScaleMonitor needs automatic optimization (it reads the step's micro-batches "
                f"and gradients); {type(pl_module).__name__}.automatic_optimization is False."
            )

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        micro = trainer.world_size * trainer.accumulate_grad_batches > 1
        self._source = "micro_batches" if micro else "split"
        self._remove_hooks()
        if micro:
            self._handles = [
                p.register_hook(self._on_grad) for p in pl_module.parameters() if p.requires_grad
            ]

    def _on_grad(self, grad: Tensor) -> None:
        if self._armed:
            sq = grad.detach().to(torch.promote_types(grad.dtype, torch.float32)).pow(2).sum()
            self._sum_sq = sq if self._sum_sq is None else self._sum_sq + sq.to(self._sum_sq)

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if trainer.global_step % self.every_n_steps != 0:
            return
        if not self._armed:
            self._armed, self._sum_sq, self._sizes = True, None, []
        self._sizes.append(batch_size_of(batch, strict=True))
        if self._source == "split":
            self._batch = batch

    @override
    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Optimizer
    ) -> None:
        if not self._armed:
            return
        try:
            if self._source == "split":
                estimate = self._split_estimate(pl_module)
            else:
                estimate = self._micro_batch_estimate(trainer, pl_module)
        finally:
            self._armed, self._sum_sq, self._batch = False, None, None
        if estimate is not None:
            self._record(trainer, pl_module, *estimate)

    def _split_estimate(self, pl_module: pl.LightningModule) -> tuple[float, float] | None:
        norms = chunk_gradient_norms(pl_module, self._loss, self._batch, self.num_chunks)
        if norms is None:
            return None
        return unbiased_estimates(norms.small_sq, norms.big_sq, norms.b_small, norms.b_big)

    def _micro_batch_estimate(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule
    ) -> tuple[float, float] | None:
        grads = [p.grad for p in pl_module.parameters() if p.requires_grad and p.grad is not None]
        if not grads:
            return None
        device = grads[0].device
        k = trainer.accumulate_grad_batches
        n = len(self._sizes)
        scaler = getattr(trainer.precision_plugin, "scaler", None)
        scale = float(scaler.get_scale()) if scaler is not None else 1.0
        local_sq = 0.0 if self._sum_sq is None else self._sum_sq.to(device, torch.float64)
        # Hooked gradients are of loss / k (Lightning's normalization) times the AMP scale: undo both.
        local = torch.stack(
            [
                torch.as_tensor(local_sq, dtype=torch.float64, device=device) * (k / scale) ** 2,
                torch.tensor(float(n), dtype=torch.float64, device=device),
                torch.tensor(float(sum(self._sizes)), dtype=torch.float64, device=device),
                torch.tensor(float(sum(s * s for s in self._sizes)), dtype=torch.float64, device=device),
            ]
        )
        total = trainer.strategy.reduce(local, reduce_op="sum")
        sum_sq, count, size_sum, size_sq_sum = (float(x) for x in total.tolist())
        # .grad is sum_j g_j / k over this rank's n micro-batches (averaged over ranks): k / n times the mean.
        big_sq = float(sum(g.detach().to(torch.float64).pow(2).sum() for g in grads)) * (k / n) ** 2
        if not (math.isfinite(sum_sq) and math.isfinite(big_sq)) or count < 2:
            return None
        if abs(size_sum**2 - count * size_sq_sum) > 1e-9 * size_sum**2:
            return None  # unequal micro-batches: the estimators assume one small batch size
        b_small = size_sum / count
        return unbiased_estimates(sum_sq / count, big_sq, b_small, size_sum)

    def _record(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, grad_sq: float, trace: float
    ) -> None:
        self._grad_sq.update(grad_sq)
        self._trace_cov.update(trace)
        self.num_estimates += 1
        g, t = self._grad_sq.value, self._trace_cov.value
        metrics = {
            _tags.noise_scale_tag(_tags.GRAD_SQ, self.name): g,
            _tags.noise_scale_tag(_tags.TRACE_COV, self.name): t,
        }
        b_tag = _tags.noise_scale_tag(_tags.B_SIMPLE, self.name)
        if g > 0 and t > 0:
            metrics[b_tag] = t / g
        if self.log_raw:
            metrics[_tags.noise_scale_tag(_tags.GRAD_SQ, self.name, raw=True)] = grad_sq
            metrics[_tags.noise_scale_tag(_tags.TRACE_COV, self.name, raw=True)] = trace
            if grad_sq > 0 and trace > 0:
                metrics[_tags.noise_scale_tag(_tags.B_SIMPLE, self.name, raw=True)] = trace / grad_sq
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=trainer.global_step)
        if b_tag in metrics:
            pl_module.log(b_tag, metrics[b_tag], logger=False, sync_dist=False)

    def _remove_hooks(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._remove_hooks()
        self._armed, self._sum_sq, self._batch = False, None, None

    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "grad_sq": self._grad_sq.state_dict(),
            "trace_cov": self._trace_cov.state_dict(),
            "num_estimates": self.num_estimates,
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._grad_sq.load_state_dict(state_dict.get("grad_sq", {}))
        self._trace_cov.load_state_dict(state_dict.get("trace_cov", {}))
        self.num_estimates = int(state_dict.get("num_estimates", 0))
