"""K seeds of one small network trained as a single vectorized model.

Each member is initialized exactly as a single run with its seed would be, the K copies are stacked
with :func:`torch.func.stack_module_state`, and one :func:`torch.func.vmap` of
:func:`torch.func.functional_call` does the forward and backward of all members per step. The
training loss is

.. math::

    L(\\theta_1, \\dots, \\theta_K)
    = \\sum_{k=1}^{K} \\frac{1}{B} \\sum_{i=1}^{B} \\ell(f_{\\theta_k}(x_{k,i}), y_{k,i}),

so :math:`\\partial L / \\partial \\theta_k` is member :math:`k`'s own single-run gradient, and an
elementwise optimizer (SGD, Adam, AdamW, ...) moves every member exactly as it would move one model.
"""

from __future__ import annotations

import copy
import ctypes
import math
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from lightning.fabric.utilities.seed import seed_everything
from lightning.pytorch import LightningModule
from lightning.pytorch.core.optimizer import LightningOptimizer
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn
from torch import Tensor, nn
from torch.func import functional_call, stack_module_state, vmap
from typing_extensions import override

from lightning_landscape._imports import import_object
from lightning_landscape._rng import rng_state, set_rng_state
from lightning_landscape._torch import (
    NormBase,
    dynamo_supported,
    functorch_config,
    has_triton,
    set_buffer,
    set_parameter,
    tree_leaves,
    tree_map,
)
from lightning_landscape.callbacks import tags
from lightning_landscape.curvature._checks import DEFAULT_TOL

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

_SEQUENTIAL_HINT = 'Use MultiSeedTrainer(executor="sequential") for this model instead.'
_SUMMARY_STATS = ("mean", "min", "q25", "median", "q75", "max")


class VectorizationError(ValueError):
    """The model cannot be trained as a vectorized seed ensemble; the message says why."""


def resolve_factory(
    model: str | Mapping[str, Any] | Callable[..., nn.Module], model_kwargs: Mapping[str, Any] | None = None
) -> Callable[[], nn.Module]:
    """Turn a class path, a ``{"class_path", "init_args"}`` dict or a callable into a zero-arg factory.

    Raises:
        TypeError: if ``model`` is none of these.
        ValueError: if a class path cannot be imported.
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


class _GlobalRngGuard:
    """Restores every global RNG (and Lightning's seed variables) on exit: building K members calls
    ``seed_everything`` K times, which must not leak into the user's own seeding."""

    def __enter__(self) -> None:
        self._state = rng_state()
        self._env = {k: os.environ.get(k) for k in ("PL_GLOBAL_SEED", "PL_SEED_WORKERS")}

    def __exit__(self, *exc: object) -> None:
        set_rng_state(self._state)
        for key, value in self._env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def build_seeded(factory: Callable[[], Any], seeds: Sequence[int]) -> list[Any]:
    """``[factory() after seed_everything(s, workers=True) for s in seeds]``, global RNG left untouched.

    This is the definition of "member ``s`` starts as a single run with seed ``s``": the single run calls
    ``seed_everything(s, workers=True)`` and then builds its model.
    """
    built = []
    with _GlobalRngGuard():
        for seed in seeds:
            seed_everything(seed, workers=True, verbose=False)
            built.append(factory())
    return built


def buffer_updating_modules(net: nn.Module) -> list[str]:
    """Names of submodules that update buffers in train mode (batch-norm running statistics)."""
    found = []
    for name, module in net.named_modules():
        if isinstance(module, NormBase) and module.track_running_stats:
            found.append(f"{name or '<root>'} ({type(module).__name__})")
    return found


def _assign(module: nn.Module, name: str, tensor: Tensor, is_param: bool) -> None:
    owner_name, _, leaf = name.rpartition(".")
    owner = module.get_submodule(owner_name) if owner_name else module
    if is_param:
        set_parameter(owner, leaf, nn.Parameter(tensor, requires_grad=tensor.requires_grad))
    else:
        set_buffer(owner, leaf, tensor)


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


def _batch_size(batch: Any, per_seed: bool) -> int:
    leaves = [t for t in tree_leaves(batch) if isinstance(t, Tensor)]
    if not leaves:
        return 1
    return int(leaves[0].shape[1 if per_seed else 0]) if leaves[0].dim() > int(per_seed) else 1


class PerSeedLoader:
    """Zips one data loader per member into batches of shape ``[K, B, ...]`` for ``per_seed_data=True``.

    Member ``k`` sees exactly the batch stream of ``loaders[k]``; build each loader from its seed (e.g. a
    ``DataLoader(..., shuffle=True, generator=torch.Generator().manual_seed(seed))``) and the single run with
    that seed uses the same loader (iterated as ``for batch in loader``). Iteration stops with the shortest
    loader. It has no ``len`` on purpose: Lightning then iterates it to exhaustion, as a plain loop does,
    rather than stopping after ``len`` batches and skipping the sampler's final generator draw.

    Args:
        loaders: one iterable of batches per member, in member order.

    Example:
        >>> from torch.utils.data import DataLoader, TensorDataset
        >>> ds = TensorDataset(torch.rand(64, 1), torch.rand(64, 1))
        >>> gens = [torch.Generator().manual_seed(s) for s in (0, 1, 2)]
        >>> loaders = [DataLoader(ds, 32, shuffle=True, generator=g) for g in gens]
        >>> x, y = next(iter(PerSeedLoader(loaders)))  # member k's batch is x[k], y[k]
        >>> tuple(x.shape)
        (3, 32, 1)

        Train with ``SeedEnsemble(..., seeds=[0, 1, 2], per_seed_data=True)`` and
        ``trainer.fit(ensemble, train_dataloaders=PerSeedLoader(loaders))``.
    """

    def __init__(self, loaders: Sequence[Iterable[Any]]) -> None:
        if len(loaders) == 0:
            raise ValueError("`loaders` is empty; pass one data loader per ensemble member.")
        self.loaders = list(loaders)

    def __iter__(self) -> Iterator[Any]:
        iterators = [iter(loader) for loader in self.loaders]
        while True:
            batches = []
            for it in iterators:
                try:
                    batches.append(next(it))
                except StopIteration:
                    # Run every loader to its own end, as `for batch in loader` does: a shuffling
                    # sampler draws from its generator once more on exhaustion, and the next epoch's
                    # order depends on that draw.
                    for other in iterators:
                        for _ in other:
                            pass
                    return
            yield tree_map(lambda *xs: torch.stack(xs), *batches)


_ALLOCATOR_TUNED = False


def tune_cpu_allocator() -> bool:
    """Let glibc's malloc keep large freed blocks for reuse, once per process; ``True`` if in effect.

    A big ensemble's activations (``[K, B, width]``, tens of MB at K=300) exceed malloc's mmap threshold, so
    by default every step maps fresh pages from the OS, page-faults them in and unmaps them again: on a CPU
    that system time dominated the step (K=300 of (1,50,50,1), batch 1024: about 3x slower than with the
    blocks kept). Raising ``M_MMAP_THRESHOLD`` and ``M_TRIM_THRESHOLD`` to 1 GiB (what the environment
    variables ``MALLOC_MMAP_THRESHOLD_``/``MALLOC_TRIM_THRESHOLD_`` do at start-up) keeps them. The setting is
    process-wide: freed memory stays with the process instead of going back to the OS. No-op off glibc.
    """
    global _ALLOCATOR_TUNED
    if _ALLOCATOR_TUNED:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # from <malloc.h>
    _ALLOCATOR_TUNED = bool(mallopt(m_mmap_threshold, 1 << 30)) and bool(mallopt(m_trim_threshold, 1 << 30))
    return _ALLOCATOR_TUNED


class _StackedEnsemble(LightningModule):
    """The engine shared by :class:`SeedEnsemble` and the vectorized executor: stacked members, one
    vmapped loss per step, per-member logging, per-member best-so-far tracking."""

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
        bad = buffer_updating_modules(nets[0])
        if bad:
            raise VectorizationError(
                f"Cannot vectorize: the model updates buffers in train mode ({', '.join(bad)}: batch-norm "
                f"running statistics), which vmap cannot do per member. {_SEQUENTIAL_HINT}"
            )
        params, buffers = stack_module_state(list(nets))
        base = copy.deepcopy(nets[0]).to("meta")
        # The meta-device skeleton only lends its structure to functional_call; hiding it from nn.Module
        # keeps it out of parameters(), state_dict() and device moves.
        object.__setattr__(self, "_base", base)
        members = copy.deepcopy(base)
        for name, tensor in params.items():
            _assign(members, name, tensor.detach().clone().requires_grad_(True), is_param=True)
        for name, tensor in buffers.items():
            _assign(members, name, tensor.detach().clone(), is_param=False)
        # The same module tree as one member, every tensor with a leading member dimension of size K.
        self.members = members
        self.seeds = [int(s) for s in seeds]
        self.per_seed_data = per_seed_data
        self.optimal_risk = optimal_risk
        self.hessian_every_n_steps = hessian_every_n_steps
        self._param_names = list(params)
        self._buffer_names = list(buffers)
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
        """Each member's loss on ``batch`` (its slice ``batch[k]`` when ``per_seed_data``), shape ``[K]``."""
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
                f"ops such as dropout, and in-place updates of buffers. {_SEQUENTIAL_HINT}"
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
        net = copy.deepcopy(self._base)
        state = self.member_state_dict(k, best=best)
        for name in self._param_names:
            _assign(net, name, state[name].requires_grad_(True), is_param=True)
        for name in self._buffer_names:
            _assign(net, name, state[name], is_param=False)
        return net

    # ---- Lightning hooks --------------------------------------------------------------------------
    @override
    def setup(self, stage: str) -> None:
        trainer = self._trainer
        if self._tune_cpu_allocator and (trainer is None or trainer.strategy.root_device.type == "cpu"):
            tune_cpu_allocator()
        if trainer is not None and trainer.gradient_clip_val:
            algorithm = trainer.gradient_clip_algorithm or "norm"
            if algorithm != "value":
                raise VectorizationError(
                    f"gradient_clip_val={trainer.gradient_clip_val} with "
                    f"gradient_clip_algorithm={algorithm!r} clips by the norm over all members together, "
                    "which no single run does. Use "
                    f"gradient_clip_algorithm='value' (elementwise) or no clipping. {_SEQUENTIAL_HINT}"
                )

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
        size = _batch_size(batch, self.per_seed_data)
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
        size = _batch_size(batch, self.per_seed_data)
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


LossName = Literal["mse", "cross_entropy"]


def compile_unavailable(device: torch.device) -> str | None:
    """Why ``torch.compile`` (the inductor backend) cannot run on ``device`` here, or ``None`` if it can.

    Inductor generates C++ on a CPU (it needs a C++ compiler) and Triton kernels on a CUDA GPU (it needs the
    ``triton`` package); other devices and interpreters without TorchDynamo are not attempted.

    >>> compile_unavailable(torch.device("meta"))
    "torch.compile is not attempted on device type 'meta' (only cpu and cuda)"
    """
    import shutil

    if not dynamo_supported():
        version = sys.version.split()[0]
        return f"TorchDynamo does not support this interpreter (Python {version}, {sys.platform})"
    if device.type == "cpu":
        compiler = os.environ.get("CXX", "c++")
        if shutil.which(compiler) is None and shutil.which("g++") is None and shutil.which("clang++") is None:
            return f"inductor needs a C++ compiler on a CPU; none found (CXX={compiler!r}, g++, clang++)"
        return None
    if device.type == "cuda":
        return None if has_triton() else "inductor needs the `triton` package on a CUDA device"
    return f"torch.compile is not attempted on device type {device.type!r} (only cpu and cuda)"


def _recompute_masks() -> Any:
    """AOTAutograd's partitioner set to recompute cheap pointwise results in the backward graph.

    By default it saves e.g. a ReLU's ``x <= 0`` mask as a bool tensor for the backward graph; inductor's
    vectorized CPU code for that bool store was ~40x slower than the ReLU itself in torch 2.13 (K=64 of the
    (1,50,50,1) net: compiled step 2-3x slower than eager). Recomputing the mask from the saved activation
    instead made the compiled step faster than eager. Applied to every compile (and recompile) of the loss.
    """
    return functorch_config().patch(aggressive_recomputation=True)


def _fused_optimizer(cls: type[torch.optim.Optimizer], params: Sequence[Tensor], **kwargs: Any) -> Any:
    """``cls(params, fused=True, ...)`` where the device and dtype have a fused kernel, else the default."""
    try:
        return cls(params, fused=True, **kwargs)  # type: ignore[call-arg]
    except (RuntimeError, TypeError, ValueError):
        return cls(params, **kwargs)


class SeedEnsemble(_StackedEnsemble):
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
    (see :class:`PerSeedLoader`), otherwise all members see the same batch.

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
            (process-wide; see :func:`tune_cpu_allocator`): big ensembles otherwise spend most of a step
            page-faulting fresh memory.
        compile: the fast step: the vmapped training loss under :func:`torch.compile` (forward and
            backward graphs fused by inductor) and the optimizer's fused kernel (``fused=True``, one pass over
            the stacked tensors). ``"auto"`` (default) turns it on where inductor can run
            (:func:`compile_unavailable`: a C++ compiler on a CPU, Triton on a GPU) and otherwise trains
            eagerly, saying why; ``True`` requires it (error in ``setup`` if unavailable); ``False`` is the
            eager step. The first step is eager (it checks that the model vectorizes), the second compiles:
            the compile time is logged and kept in :attr:`compile_seconds`. Members follow their single runs
            to rounding either way; the compiled step rounds differently from the eager one (fused
            reductions), by about float32 epsilon per step.

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
        trainer = self._trainer
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
        device = self._trainer.strategy.root_device if self._trainer is not None else torch.device("cpu")
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
            with _recompute_masks():
                return self._compiled(params, buffers, batch)
        compiled = torch.compile(self._vmapped_losses())
        self._compile_started = time.perf_counter()
        try:
            with _recompute_masks():
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
        make = _fused_optimizer if self.compile_active else (lambda cls, p, **kw: cls(p, **kw))
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
