"""The engine under both vectorized paths: K stacked members, one vmapped loss per step, per-member logs.

:class:`StackedEnsemble` is the LightningModule that :class:`SeedEnsemble` and the vectorized executor
subclass; a subclass says what one member's loss on a batch is (``_member_loss``) and how it is optimized.
The training loss is

.. math::

    L(\\theta_1, \\dots, \\theta_K)
    = \\sum_{k=1}^{K} \\frac{1}{B} \\sum_{i=1}^{B} \\ell(f_{\\theta_k}(x_{k,i}), y_{k,i}),

so :math:`\\partial L / \\partial \\theta_k` is member :math:`k`'s own single-run gradient, and an
elementwise optimizer (SGD, Adam, AdamW, ...) moves every member exactly as it would move one model.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from lightning.pytorch import LightningModule
from torch import Tensor, nn
from torch.func import functional_call, vmap
from typing_extensions import override

from lightning_landscape._torch import tree_map
from lightning_landscape.callbacks import tags
from lightning_landscape.curvature._checks import DEFAULT_TOL
from lightning_landscape.multiseed._lightning import attached_trainer
from lightning_landscape.multiseed.vectorized._allocator import tune_cpu_allocator
from lightning_landscape.multiseed.vectorized.data import member_batch_size
from lightning_landscape.multiseed.vectorized.members import stack_members, unstack_member
from lightning_landscape.multiseed.vectorized.qualify import (
    SEQUENTIAL_HINT,
    VectorizationError,
    check_buffers,
    check_clipping,
)

_SUMMARY_STATS = ("mean", "min", "q25", "median", "q75", "max")


def _summary(values: Tensor) -> dict[str, Tensor]:
    """mean/min/quartiles/max over the finite entries (a diverged member must not hide the others)."""
    finite = values[torch.isfinite(values)]
    if finite.numel() == 0:
        nan = values.new_tensor(math.nan)
        return dict.fromkeys(_SUMMARY_STATS, nan)
    q = torch.quantile(finite, finite.new_tensor([0.25, 0.5, 0.75]))
    return {
        "mean": finite.mean(),
        "min": finite.min(),
        "q25": q[0],
        "median": q[1],
        "q75": q[2],
        "max": finite.max(),
    }


class StackedEnsemble(LightningModule):
    """Stacked members, one vmapped loss per step, per-member logging, per-member best-so-far tracking.

    Subclasses call :meth:`_init_members` from their ``__init__`` and define :meth:`_member_loss`.
    """

    _base: nn.Module
    # See tune_cpu_allocator(); SeedEnsemble exposes it as an argument.
    _tune_cpu_allocator: bool = True

    def _init_members(
        self,
        nets: Sequence[nn.Module],
        seeds: Sequence[int],
        per_seed_data: bool,
        optimal_risk: float | None = None,
        hessian_every_n_steps: int = 0,
    ) -> None:
        check_buffers(nets[0])
        base, members, param_names, buffer_names = stack_members(nets)
        # The meta-device skeleton only lends its structure to functional_call; hiding it from nn.Module
        # keeps it out of parameters(), state_dict() and device moves.
        object.__setattr__(self, "_base", base)
        # The same module tree as one member, every tensor with a leading member dimension of size K.
        self.members = members
        self.seeds = [int(s) for s in seeds]
        self.per_seed_data = per_seed_data
        self.optimal_risk = optimal_risk
        self.hessian_every_n_steps = hessian_every_n_steps
        self._param_names = param_names
        self._buffer_names = buffer_names
        self._probed = False
        self._log_step = False
        self._probe_batch: Any = None
        self._train_sum: Tensor | None = None
        self._train_count = 0
        self._val_sum: Tensor | None = None
        self._val_count = 0
        self._track_best = False
        self.best_scores: Tensor | None = None
        self.best_epochs: list[int] = [-1] * len(self.seeds)
        self.best_steps: list[int] = [-1] * len(self.seeds)
        self._best_state: dict[str, Tensor] = {}
        self.history: list[dict[str, Any]] = []

    @property
    def num_members(self) -> int:
        """K, the number of members."""
        return len(self.seeds)

    # ---- the member loss ------------------------------------------------------------------------
    def _member_loss(self, net: Callable[..., Tensor], batch: Any) -> Tensor:
        raise NotImplementedError

    def _vmapped_losses(self) -> Callable[..., Tensor]:
        """``(params, buffers, batch) -> [K]`` losses: the function both the eager and compiled step run."""
        base = self._base

        def one(p: Any, b: Any, data: Any) -> Tensor:
            def net(*args: Any, **kwargs: Any) -> Tensor:
                return functional_call(base, (p, b), args, kwargs)

            return self._member_loss(net, data)

        in_dims = (0, 0, 0 if self.per_seed_data else None)
        return vmap(one, in_dims=in_dims, randomness="error")

    def member_losses(self, batch: Any) -> Tensor:
        """Each member's loss on ``batch`` (its slice ``batch[k]`` when ``per_seed_data``), shape ``[K]``.

        Raises:
            VectorizationError: on the first call, when the loss fails under ``vmap`` or is not a scalar.
        """
        params = dict(self.members.named_parameters())
        buffers = dict(self.members.named_buffers())
        if self._probed:
            return self._vmapped_losses()(params, buffers, batch)
        try:
            losses = self._vmapped_losses()(params, buffers, batch)
        except RuntimeError as err:
            raise VectorizationError(
                f"Cannot vectorize this model: its forward/loss failed under torch.func.vmap ({err}). "
                "Typical causes are data-dependent control flow (`if tensor > 0`, `.item()`), random "
                f"ops such as dropout, and in-place updates of buffers. {SEQUENTIAL_HINT}"
            ) from err
        if losses.shape != (self.num_members,):
            raise VectorizationError(
                f"The member loss must be a scalar, got shape {tuple(losses.shape[1:])} per member."
            )
        self._probed = True
        return losses

    def member_state_dict(self, k: int, best: bool = False) -> dict[str, Tensor]:
        """Parameters and buffers of member ``k`` (its best iterate if ``best``), named as in one net."""
        if best and self._best_state:
            return {name: t[k].detach().clone() for name, t in self._best_state.items()}
        tensors = {**dict(self.members.named_parameters()), **dict(self.members.named_buffers())}
        return {name: t[k].detach().clone() for name, t in tensors.items()}

    def member_module(self, k: int, best: bool = False) -> nn.Module:
        """A plain, independent ``nn.Module`` holding member ``k``'s current (or best) weights."""
        state = self.member_state_dict(k, best=best)
        return unstack_member(self._base, state, self._param_names, self._buffer_names)

    # ---- Lightning hooks --------------------------------------------------------------------------
    @override
    def setup(self, stage: str) -> None:
        trainer = attached_trainer(self)
        if self._tune_cpu_allocator and (trainer is None or trainer.strategy.root_device.type == "cpu"):
            tune_cpu_allocator()
        if trainer is not None:
            check_clipping(trainer.gradient_clip_val, trainer.gradient_clip_algorithm)

    def _seed_tag(self, k: int) -> str:
        return f"seed_{self.seeds[k]}"

    def _log_members(self, name: str, values: Tensor, batch_size: int, on_step: bool) -> None:
        on_epoch = not on_step
        values = values.detach()
        for k in range(self.num_members):
            self.log(
                f"{self._seed_tag(k)}/{name}",
                values[k],
                on_step=on_step,
                on_epoch=on_epoch,
                batch_size=batch_size,
            )
        for stat, value in _summary(values).items():
            self.log(
                f"ensemble/{name}_{stat}", value, on_step=on_step, on_epoch=on_epoch, batch_size=batch_size
            )

    @override
    def on_train_epoch_start(self) -> None:
        self._train_sum, self._train_count = None, 0

    def _training_losses(self, batch: Any) -> Tensor:
        """The members' training losses (the compiled step overrides this)."""
        return self.member_losses(batch)

    def _train_losses_logged(self, batch: Any) -> Tensor:
        """The members' training losses, with the epoch sums, the probe batch and the step's logging done."""
        losses = self._training_losses(batch)
        size = member_batch_size(batch, self.per_seed_data)
        detached = losses.detach() * size
        self._train_sum = detached if self._train_sum is None else self._train_sum + detached
        self._train_count += size
        if self._probe_batch is None and self.hessian_every_n_steps > 0:
            self._probe_batch = tree_map(lambda t: t.detach().clone() if isinstance(t, Tensor) else t, batch)
        # Per-member scalars cost K log calls: only pay them on steps the logger will write.
        self._log_step = (self.global_step + 1) % max(
            1, int(getattr(self.trainer, "log_every_n_steps", 50))
        ) == 0
        if self._log_step:
            self._log_members("train_loss", losses, size, on_step=True)
        return losses

    @override
    def training_step(self, batch: Any, batch_idx: int) -> Tensor | None:
        return self._train_losses_logged(batch).sum()

    @override
    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        if not self._log_step:
            return
        squares = [
            p.grad.detach().pow(2).reshape(self.num_members, -1).sum(1)
            for p in self.members.parameters()
            if p.grad is not None
        ]
        if squares:
            self._log_members("grad_norm", torch.stack(squares).sum(0).sqrt(), 1, on_step=True)

    @override
    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        n = self.hessian_every_n_steps
        if n > 0 and self._probe_batch is not None and self.global_step % n == 0:
            self._log_members(
                "hessian_eig_1", self.member_top_eigenvalues(self._probe_batch), 1, on_step=True
            )

    def member_top_eigenvalues(self, batch: Any, tol: float = DEFAULT_TOL) -> Tensor:
        """Top Hessian eigenvalue of each member's loss on ``batch`` (its slice when ``per_seed_data``).

        Computed with :func:`lightning_landscape.curvature.hessian_eigenvalues` on an unstacked copy of each
        member in turn, so the training state is untouched.

        Args:
            batch: one batch, ``[K, B, ...]`` when ``per_seed_data``.
            tol: relative tolerance of the Lanczos run.

        Returns:
            The K eigenvalues, on the members' device and dtype.
        """
        from lightning_landscape.curvature import hessian_eigenvalues

        values = []
        for k in range(self.num_members):
            data = batch
            if self.per_seed_data:
                data = tree_map(lambda t, k=k: t[k] if isinstance(t, Tensor) else t, batch)
            net = self.member_module(k)
            result = hessian_eigenvalues(
                net, lambda m, b: self._member_loss(m, b), [data], k=1, which="largest", tol=tol
            )
            values.append(result.eigenvalues[0])
        dtype = next(self.members.parameters()).dtype
        return torch.stack(values).to(self.device, dtype)

    @override
    def on_validation_epoch_start(self) -> None:
        self._val_sum, self._val_count = None, 0

    @override
    def validation_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        losses = self.member_losses(batch).detach()
        size = member_batch_size(batch, self.per_seed_data)
        # Weighted by batch size, as Lightning's epoch mean of a logged value is.
        self._val_sum = losses * size if self._val_sum is None else self._val_sum + losses * size
        self._val_count += size

    @override
    def on_validation_epoch_end(self) -> None:
        if self._val_sum is None or self._val_count == 0:
            return
        val = self._val_sum / self._val_count
        self._log_members("val_loss", val, self._val_count, on_step=False)
        if self._train_sum is not None and self._train_count > 0:
            train = self._train_sum / self._train_count
            self._log_members(tags.GENERALIZATION_GAP, val - train, self._val_count, on_step=False)
        if self.optimal_risk is not None:
            # Validation risk minus R*: the excess risk (an optimality gap is the training risk minus R*).
            self._log_members(tags.EXCESS_RISK, val - self.optimal_risk, self._val_count, on_step=False)
        if self.trainer.sanity_checking:
            return
        self.history.append(
            {"epoch": self.current_epoch, "step": self.global_step, "val_loss": val.cpu().tolist()}
        )
        if self._track_best:
            self._update_best(val)

    def _update_best(self, scores: Tensor) -> None:
        tensors = {**dict(self.members.named_parameters()), **dict(self.members.named_buffers())}
        if self.best_scores is None:
            self.best_scores = torch.full_like(scores, math.inf)
            self._best_state = {name: t.detach().clone() for name, t in tensors.items()}
        improved = scores < self.best_scores  # NaN never improves
        self.best_scores = torch.where(improved, scores, self.best_scores)
        for name, t in tensors.items():
            mask = improved.view(-1, *([1] * (t.dim() - 1)))
            self._best_state[name] = torch.where(mask, t.detach(), self._best_state[name])
        for k in improved.nonzero().flatten().tolist():
            self.best_epochs[k] = self.current_epoch
            self.best_steps[k] = self.global_step
