"""SeedEnsemble: K seeds of one small network trained as a single vectorized model, with its own fast step.

Each member is initialized exactly as a single run with its seed would be, the K copies are stacked
(:mod:`~lightning_landscape.multiseed.vectorized.members`), and one :func:`torch.func.vmap` of
:func:`torch.func.functional_call` does the forward and backward of all members per step
(:class:`~lightning_landscape.multiseed.vectorized.engine.StackedEnsemble`). This module adds what a user
configures: the model and loss by name, the optimizer and scheduler, and the compiled step.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any, Literal

import torch
import torch.nn.functional as F
from lightning.pytorch.core.optimizer import LightningOptimizer
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn
from torch import Tensor, nn
from typing_extensions import override

from lightning_landscape._imports import import_object
from lightning_landscape.multiseed._lightning import attached_trainer
from lightning_landscape.multiseed.vectorized._compile import (
    compile_unavailable,
    fused_optimizer,
    recompute_masks,
)
from lightning_landscape.multiseed.vectorized.engine import StackedEnsemble
from lightning_landscape.multiseed.vectorized.members import build_seeded


def resolve_factory(
    model: str | Mapping[str, Any] | Callable[..., nn.Module], model_kwargs: Mapping[str, Any] | None = None
) -> Callable[[], nn.Module]:
    """Turn a class path, a ``{"class_path", "init_args"}`` dict or a callable into a zero-arg factory.

    Args:
        model: the class or callable, its import path, or a ``{"class_path", "init_args"}`` dict.
        model_kwargs: keyword arguments of the call (over the dict's ``init_args``).

    Returns:
        A function that builds one model per call.

    Raises:
        TypeError: if ``model`` is none of these.
        ValueError: if a class path cannot be imported.

    Example:
        >>> spec = {"class_path": "torch.nn.Linear", "init_args": {"in_features": 2}}
        >>> resolve_factory(spec, {"out_features": 3})()
        Linear(in_features=2, out_features=3, bias=True)
    """
    kwargs = dict(model_kwargs or {})
    if isinstance(model, Mapping):
        if "class_path" not in model:
            raise ValueError(f"`model`={dict(model)!r} as a dict needs a 'class_path' key (and 'init_args').")
        kwargs = {**dict(model.get("init_args") or {}), **kwargs}
        model = str(model["class_path"])
    if isinstance(model, str):
        model = import_object(model, "model", example="package.module.Name")
    if not callable(model):
        raise TypeError(
            f"`model` must be an nn.Module class, a callable returning one, or a class path; got {model!r}."
        )
    factory: Callable[..., nn.Module] = model
    return lambda: factory(**kwargs)


class SeedEnsemble(StackedEnsemble):
    """K independent seeds of one network, trained together by one vmapped forward/backward per step.

    Member ``k`` starts from exactly the weights of a single run with seed ``seeds[k]``, where a single run
    means::

        seed_everything(seed, workers=True)
        net = model(**model_kwargs)
        opt = torch.optim.<optimizer>(net.parameters(), lr=lr, ...)     # same hyperparameters
        for x, y in batches:                                           # per_seed_data: that seed's stream
            loss = loss_fn(net(x), y)                                  # mean over the batch
            opt.zero_grad(); loss.backward(); opt.step()
        # scheduler.step() after every epoch (or every step with scheduler_interval="step")

    and every member follows that run's trajectory to floating-point rounding (float64: ~1e-12). Batches are
    ``(x, y)``; with ``per_seed_data=True`` each tensor carries a leading member dimension ``[K, B, ...]``
    (see :class:`~lightning_landscape.multiseed.vectorized.PerSeedLoader`), otherwise all members see the
    same batch.

    Logged: ``seed_<s>/train_loss`` and ``seed_<s>/grad_norm`` (per step, on logging steps),
    ``seed_<s>/val_loss`` and ``seed_<s>/generalization_gap`` (validation loss minus the epoch's mean
    training loss), ``seed_<s>/excess_risk`` (validation loss minus ``optimal_risk``, when given),
    ``seed_<s>/hessian_eig_1`` (every ``hessian_every_n_steps``), and for each quantity the ensemble summary
    ``ensemble/<name>_{mean,min,q25,median,q75,max}`` over the finite members.

    Args:
        model: an ``nn.Module`` class or callable returning a module, or its import path
            (``"torch.nn.Linear"``); YAML may also give ``{"class_path": ..., "init_args": ...}``.
        model_kwargs: keyword arguments for ``model``.
        loss: ``"mse"``, ``"cross_entropy"`` or the import path of ``loss(output, target) -> scalar``.
        seeds: the members' seeds, or a count ``n`` meaning ``0, ..., n-1``.
        optimizer: ``"sgd"``, ``"adam"`` or ``"adamw"`` (all elementwise).
        lr: learning rate.
        momentum: SGD momentum.
        nesterov: SGD Nesterov momentum.
        weight_decay: weight decay (L2 for SGD/Adam, decoupled for AdamW).
        betas: Adam/AdamW betas.
        eps: Adam/AdamW epsilon.
        lr_scheduler: ``"none"``, ``"step"`` (StepLR with ``step_size``, ``gamma``) or ``"exponential"``
            (ExponentialLR with ``gamma``).
        step_size: StepLR period.
        gamma: decay factor of the scheduler.
        scheduler_interval: step the scheduler every ``"epoch"`` or every ``"step"``.
        per_seed_data: batches carry one slice per member ``[K, B, ...]`` instead of one shared batch.
        optimal_risk: the minimal achievable risk, to log ``seed_<s>/excess_risk``.
        hessian_every_n_steps: log each member's top Hessian eigenvalue on the first training batch every
            this many steps (0: never); one Lanczos run per member.
        tune_cpu_allocator: on a CPU under glibc, let malloc keep large freed blocks for reuse
            (process-wide; see :func:`~lightning_landscape.multiseed.vectorized.tune_cpu_allocator`): big
            ensembles otherwise spend most of a step page-faulting fresh memory.
        compile: the fast step: the vmapped training loss under :func:`torch.compile` (forward and
            backward graphs fused by inductor) and the optimizer's fused kernel (``fused=True``, one pass over
            the stacked tensors). ``"auto"`` (default) turns it on where inductor can run
            (:func:`~lightning_landscape.multiseed.vectorized.compile_unavailable`: a C++ compiler on a CPU,
            Triton on a GPU) and otherwise trains eagerly, saying why; ``True`` requires it (error in
            ``setup`` if unavailable); ``False`` is the eager step. The first step is eager (it checks that
            the model vectorizes), the second compiles: the compile time is logged and kept in
            :attr:`compile_seconds`. Members follow their single runs to rounding either way; the compiled
            step rounds differently from the eager one (fused reductions), by about float32 epsilon per
            step.

    The step itself runs without Lightning's automatic-optimization closure (``zero_grad``, backward,
    ``optimizer.step()`` and the scheduler are called from ``training_step``; hooks such as
    ``on_before_optimizer_step`` still fire). That saves a few hundred microseconds per step; most of
    Lightning's remaining per-step cost (about 1-2 ms of CPU on a slow core, ``benchmarks/ensemble.py``) is
    its loop around ``training_step``. A Trainer that clips gradients by value or accumulates batches gets
    Lightning's automatic loop, which supports those.

    Raises:
        ValueError: for an unknown ``loss``/``optimizer``/``lr_scheduler``, an empty or duplicated seed list,
            a negative ``hessian_every_n_steps``, or a non-positive ``lr``.
        VectorizationError: (a ``ValueError``) when the network updates buffers in train mode (batch
            norm), fails under ``vmap`` (data-dependent control flow, dropout), or the Trainer clips
            gradients by norm.

    Example:
        >>> from lightning.pytorch import Trainer
        >>> from torch.utils.data import DataLoader, TensorDataset
        >>> def mlp() -> nn.Module:
        ...     return nn.Sequential(nn.Linear(1, 8), nn.ReLU(), nn.Linear(8, 1))
        >>> ensemble = SeedEnsemble(mlp, loss="mse", seeds=[0, 7], optimizer="adam", lr=0.01, compile=False)
        >>> x = torch.rand(64, 1)
        >>> loader = DataLoader(TensorDataset(x, x**2), batch_size=16)
        >>> Trainer(max_steps=4, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        ...         enable_model_summary=False).fit(ensemble, loader)
        >>> net_7 = ensemble.member_module(1)  # a plain nn.Module with seed 7's weights
        >>> type(net_7).__name__
        'Sequential'
    """

    def __init__(
        self,
        model: str | dict[str, Any] | Callable[..., nn.Module],
        model_kwargs: dict[str, Any] | None = None,
        loss: str = "mse",
        seeds: list[int] | int = 5,
        optimizer: Literal["sgd", "adam", "adamw"] = "adam",
        lr: float = 1e-3,
        momentum: float = 0.0,
        nesterov: bool = False,
        weight_decay: float = 0.0,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        lr_scheduler: Literal["none", "step", "exponential"] = "none",
        step_size: int = 1,
        gamma: float = 0.1,
        scheduler_interval: Literal["epoch", "step"] = "epoch",
        per_seed_data: bool = False,
        optimal_risk: float | None = None,
        hessian_every_n_steps: int = 0,
        tune_cpu_allocator: bool = True,
        compile: bool | Literal["auto"] = "auto",
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=[] if isinstance(model, (str, dict)) else ["model"])
        seed_list = list(range(seeds)) if isinstance(seeds, int) and not isinstance(seeds, bool) else seeds
        if not isinstance(seed_list, list) or not seed_list or not all(isinstance(s, int) for s in seed_list):
            raise ValueError(f"`seeds` must be a positive int or a non-empty list of ints, got {seeds!r}.")
        if len(set(seed_list)) != len(seed_list):
            raise ValueError(f"`seeds` has duplicates: {seed_list!r}; each member needs its own seed.")
        if optimizer not in ("sgd", "adam", "adamw"):
            raise ValueError(f"`optimizer`={optimizer!r} is not one of 'sgd', 'adam', 'adamw'.")
        if lr_scheduler not in ("none", "step", "exponential"):
            raise ValueError(f"`lr_scheduler`={lr_scheduler!r} is not one of 'none', 'step', 'exponential'.")
        if scheduler_interval not in ("epoch", "step"):
            raise ValueError(f"`scheduler_interval`={scheduler_interval!r} is not 'epoch' or 'step'.")
        if not lr > 0:
            raise ValueError(f"`lr` must be positive, got {lr!r}.")
        if hessian_every_n_steps < 0:
            raise ValueError(f"`hessian_every_n_steps` must be >= 0, got {hessian_every_n_steps!r}.")
        if compile not in (True, False, "auto"):
            raise ValueError(f"`compile`={compile!r} is not True, False or 'auto'.")
        self._compile_mode = compile
        #: Whether the compiled step is in use (decided in ``setup``), and why not when it is not.
        self.compile_active = False
        self.compile_reason = "not set up yet"
        #: Wall time of the first compiled step (compilation included), in seconds; ``None`` before it.
        self.compile_seconds: float | None = None
        self._compiled: Callable[..., Tensor] | None = None
        self._compile_started: float | None = None
        self._criterion = self._resolve_loss(loss)
        self._optimizer_name = optimizer
        self._tune_cpu_allocator = tune_cpu_allocator
        nets = build_seeded(resolve_factory(model, model_kwargs), seed_list)
        if not all(isinstance(net, nn.Module) for net in nets):
            raise TypeError(f"`model` must build an nn.Module, got {type(nets[0]).__name__}.")
        self._init_members(nets, seed_list, per_seed_data, optimal_risk, hessian_every_n_steps)

    @staticmethod
    def _resolve_loss(loss: str) -> Callable[[Tensor, Tensor], Tensor]:
        if loss == "mse":
            return F.mse_loss
        if loss == "cross_entropy":
            return F.cross_entropy
        if isinstance(loss, str) and "." in loss:
            fn = import_object(loss, "loss", example="package.module.fn")
            if isinstance(fn, type):
                fn = fn()
            if not callable(fn):
                raise ValueError(f"`loss`={loss!r} does not name a callable.")
            return fn
        raise ValueError(f"`loss`={loss!r} is not 'mse', 'cross_entropy' or an import path 'pkg.module.fn'.")

    @override
    def _member_loss(self, net: Callable[..., Tensor], batch: Any) -> Tensor:
        x, y = batch
        return self._criterion(net(x), y)

    # ---- the fast step ---------------------------------------------------------------------------
    @property
    def automatic_optimization(self) -> bool:
        """``False`` (our own step) unless the Trainer clips gradients, accumulates batches or holds a
        ``ReduceLROnPlateau`` scheduler (which needs Lightning's monitored value)."""
        trainer = attached_trainer(self)
        if trainer is None:
            return True
        plateau = any(config.reduce_on_plateau for config in trainer.lr_scheduler_configs)
        return bool(trainer.gradient_clip_val) or trainer.accumulate_grad_batches > 1 or plateau

    @automatic_optimization.setter
    def automatic_optimization(self, value: bool) -> None:
        raise AttributeError("SeedEnsemble chooses its optimization loop itself; see its docstring.")

    @override
    def setup(self, stage: str) -> None:
        super().setup(stage)
        trainer = attached_trainer(self)
        device = trainer.strategy.root_device if trainer is not None else torch.device("cpu")
        if self._compile_mode is False:
            self.compile_active, self.compile_reason = False, "compile=False"
            return
        reason = compile_unavailable(device)
        if reason is not None and self._compile_mode is True:
            raise RuntimeError(f"`compile`=True, but {reason}. Use compile='auto' or False.")
        self.compile_active = reason is None
        self.compile_reason = "compiled" if reason is None else reason
        if reason is not None:
            rank_zero_info(f"SeedEnsemble trains eagerly: {reason}.")

    @override
    def _training_losses(self, batch: Any) -> Tensor:
        if not (self.compile_active and self._probed):
            return super()._training_losses(batch)
        params = dict(self.members.named_parameters())
        buffers = dict(self.members.named_buffers())
        if self._compiled is not None:
            with recompute_masks():
                return self._compiled(params, buffers, batch)
        compiled = torch.compile(self._vmapped_losses())
        self._compile_started = time.perf_counter()
        try:
            with recompute_masks():
                losses = compiled(params, buffers, batch)
        except Exception as err:
            if self._compile_mode is True:
                raise RuntimeError(f"`compile`=True, but torch.compile failed on this model: {err}") from err
            self.compile_active, self.compile_reason = False, f"torch.compile failed: {err}"
            self._compile_started = None
            rank_zero_warn(f"SeedEnsemble falls back to eager training: torch.compile failed ({err}).")
            return super()._training_losses(batch)
        self._compiled = compiled
        return losses

    @override
    def training_step(self, batch: Any, batch_idx: int) -> Tensor | None:
        if self.automatic_optimization:
            return super().training_step(batch, batch_idx)
        opt = self.optimizers()
        assert isinstance(opt, LightningOptimizer)
        loss = self._train_losses_logged(batch).sum()
        opt.zero_grad()
        self.manual_backward(loss)
        opt.step()
        self._step_schedulers("step", batch_idx)
        return None

    @override
    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        super().on_train_batch_end(outputs, batch, batch_idx)
        if self._compile_started is not None and self.compile_seconds is None:
            # Forward and backward graphs are both compiled by now (the backward one on first use).
            self.compile_seconds = time.perf_counter() - self._compile_started
            rank_zero_info(f"SeedEnsemble: torch.compile took {self.compile_seconds:.1f} s (second step).")
        trainer = self.trainer
        if not self.automatic_optimization and (
            trainer.is_last_batch or batch_idx + 1 == trainer.num_training_batches
        ):
            # Where Lightning's automatic loop steps an epoch-interval scheduler: after the last batch.
            self._step_schedulers("epoch", trainer.current_epoch)

    def _step_schedulers(self, interval: str, index: int) -> None:
        # Every scheduler configure_optimizers returned (a subclass's own too), on the interval and
        # frequency it was configured with, as Lightning's automatic loop steps them.
        for config in self.trainer.lr_scheduler_configs:
            if config.interval == interval and (index + 1) % config.frequency == 0:
                config.scheduler.step()  # type: ignore[call-arg]

    @override
    def configure_optimizers(self) -> Any:
        hp: Any = self.hparams
        params = list(self.members.parameters())
        make = fused_optimizer if self.compile_active else (lambda cls, p, **kw: cls(p, **kw))
        opt: torch.optim.Optimizer
        if self._optimizer_name == "sgd":
            opt = make(
                torch.optim.SGD,
                params,
                lr=hp.lr,
                momentum=hp.momentum,
                nesterov=hp.nesterov,
                weight_decay=hp.weight_decay,
            )
        else:
            cls = torch.optim.Adam if self._optimizer_name == "adam" else torch.optim.AdamW
            opt = make(cls, params, lr=hp.lr, betas=tuple(hp.betas), eps=hp.eps, weight_decay=hp.weight_decay)
        if hp.lr_scheduler == "none":
            return opt
        sched: torch.optim.lr_scheduler.LRScheduler
        if hp.lr_scheduler == "step":
            sched = torch.optim.lr_scheduler.StepLR(opt, step_size=hp.step_size, gamma=hp.gamma)
        else:
            sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=hp.gamma)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": hp.scheduler_interval}}
