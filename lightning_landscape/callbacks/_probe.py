"""Fixed probe batches and a loss closure for any LightningModule.

A probe measures the loss landscape at the current weights on batches that stay the same for the whole run, so
that values logged at different steps describe one fixed empirical risk. Drawing those batches and evaluating
the loss must leave training exactly as it would have been without the probe: no global RNG stream, sampler
generator, sampler epoch, ``self.log`` result or logger sees any trace of it.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from lightning.pytorch.utilities.data import extract_batch_size
from torch import Tensor, nn
from torch.utils.data import DataLoader

from lightning_landscape._imports import import_object
from lightning_landscape._rng import kept_rng
from lightning_landscape._torch import fresh_iterator, shutdown_workers
from lightning_landscape.callbacks._lightning import batches_that_stepped, load_val_dataloaders
from lightning_landscape.curvature import LossFn

if TYPE_CHECKING:
    import lightning.pytorch as pl


class MethodLoss:
    """``loss_fn(model, batch) = model.<method>(batch)``: a loss the module itself defines, picked by name.

    This is how a module with several losses (a GAN's discriminator and generator losses) says which one
    to probe: ``loss_fn="self.d_loss"``.
    """

    def __init__(self, method: str) -> None:
        self.method = method

    def __call__(self, model: nn.Module, batch: Any) -> Tensor:
        return getattr(model, self.method)(batch)

    def check(self, model: nn.Module, argument: str = "loss_fn") -> None:
        """A ``MisconfigurationException`` unless ``model`` has a callable ``method`` (run in ``setup``)."""
        from lightning.pytorch.utilities.exceptions import MisconfigurationException

        if not callable(getattr(model, self.method, None)):
            methods = sorted(n for n in dir(type(model)) if n.endswith("loss") and not n.startswith("_"))
            raise MisconfigurationException(
                f"`{argument}`='self.{self.method}': {type(model).__name__} has no method {self.method!r}; "
                f"methods ending in 'loss': {methods}"
            )


def resolve_loss_fn(path: str, argument: str = "loss_fn") -> LossFn:
    """``loss_fn(model, batch) -> Tensor`` from ``"pkg.mod:fn"``, ``"pkg.mod.fn"`` or ``"self.<method>"``.

    ``"self.<method>"`` calls ``model.<method>(batch)`` (see :class:`MethodLoss`); the others import a
    function.

    Raises:
        ValueError: If ``path`` is malformed, cannot be imported or does not name a callable.
    """
    if isinstance(path, str) and path.startswith("self."):
        method = path[len("self.") :]
        if not method.isidentifier():
            raise ValueError(
                f"`{argument}`={path!r} must name a method as 'self.<method>', e.g. 'self.d_loss'"
            )
        return MethodLoss(method)
    obj = import_object(path, argument, example="pkg.module:function")
    if not callable(obj):
        raise ValueError(
            f"`{argument}`={path!r} names a {type(obj).__name__}, not a callable loss_fn(model, batch)"
        )
    return obj


def _noop(*args: Any, **kwargs: Any) -> None:
    return None


class _InertStepper:
    """What ``self.optimizers()`` / ``self.lr_schedulers()`` hand out inside a probe: ``step`` and
    ``zero_grad`` do nothing, everything else is the real object's."""

    def __init__(self, wrapped: Any) -> None:
        self._wrapped = wrapped

    def step(self, *args: Any, **kwargs: Any) -> None:
        return None

    def zero_grad(self, *args: Any, **kwargs: Any) -> None:
        return None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._wrapped, name)


def _inert(method: Callable[..., Any]) -> Callable[..., Any]:
    def call(*args: Any, **kwargs: Any) -> Any:
        out = method(*args, **kwargs)
        if isinstance(out, (list, tuple)):
            return [_InertStepper(o) for o in out]
        return None if out is None else _InertStepper(out)

    return call


@contextmanager
def neutralized(module: nn.Module) -> Iterator[None]:
    """Run the module's own hooks as a probe: nothing they do may reach training.

    Inside the block ``self.log`` / ``self.log_dict`` do nothing (the values never reach the logger, the
    progress bar or ``trainer.callback_metrics``); ``self.manual_backward``, ``toggle_optimizer`` and
    ``untoggle_optimizer`` do nothing; the optimizers and schedulers ``self.optimizers()`` and
    ``self.lr_schedulers()`` return never step. Instance attributes shadow the bound methods, and deleting
    them afterwards restores the class methods. Autocast is off, so the loss is computed in the parameters'
    dtype, and ``torch.compile`` directives are ignored (``torch.compiler.set_stance("force_eager")``): the
    compiled graphs of aot_autograd have no double backward, the eager code they were compiled from has.
    """
    d = module.__dict__
    shadows: dict[str, Any] = {name: _noop for name in _SILENCED}
    for name in ("optimizers", "lr_schedulers"):
        method = getattr(module, name, None)
        if callable(method):
            shadows[name] = _inert(method)
    saved = {name: d[name] for name in shadows if name in d}
    d.update(shadows)
    try:
        with contextlib.ExitStack() as stack:
            set_stance = getattr(torch.compiler, "set_stance", None)
            if set_stance is not None:  # torch >= 2.6; older torch is refused for compiled modules in setup
                stack.enter_context(set_stance("force_eager"))
            for device_type in _autocast_device_types(module):
                stack.enter_context(torch.autocast(device_type, enabled=False))
            yield
    finally:
        for name in shadows:
            if name in saved:
                d[name] = saved[name]
            else:
                d.pop(name, None)


_SILENCED = ("log", "log_dict", "manual_backward", "toggle_optimizer", "untoggle_optimizer")


def _autocast_device_types(module: nn.Module) -> list[str]:
    types = {p.device.type for p in module.parameters()} | {"cpu"}
    return sorted(t for t in types if t in ("cpu", "cuda", "xpu", "mps", "hpu"))


class TrainingStepLoss:
    """``loss_fn(model, batch)`` evaluated :func:`neutralized`; by default the module's own ``training_step``.

    ``training_step`` may return the loss tensor or a dict holding it under ``"loss"``; ``batch_idx`` is 0.
    """

    def __init__(self, loss_fn: LossFn | None = None) -> None:
        self.loss_fn = loss_fn

    def __call__(self, model: nn.Module, batch: Any) -> Tensor:
        with neutralized(model):
            if self.loss_fn is not None:
                return self.loss_fn(model, batch)
            out = model.training_step(batch, 0)  # type: ignore[operator]
        if isinstance(out, dict):
            out = out.get("loss")
        if not isinstance(out, Tensor) or out.numel() != 1:
            raise TypeError(
                f"{type(model).__name__}.training_step must return a scalar loss tensor or a dict with "
                f"'loss' to be probed, got {type(out).__name__}; pass `loss_fn='pkg.module:function'` instead"
            )
        return out.reshape(())


def _generators(dataloader: DataLoader) -> list[torch.Generator]:
    found: list[torch.Generator] = []
    owners = [
        dataloader,
        getattr(dataloader, "sampler", None),
        getattr(getattr(dataloader, "batch_sampler", None), "sampler", None),
    ]
    for owner in owners:
        gen = getattr(owner, "generator", None)
        if isinstance(gen, torch.Generator) and all(gen is not g for g in found):
            found.append(gen)
    return found


def _epoch_samplers(dataloader: DataLoader) -> list[Any]:
    owners = [
        getattr(dataloader, "sampler", None),
        getattr(getattr(dataloader, "batch_sampler", None), "sampler", None),
    ]
    found: list[Any] = []
    for owner in owners:
        if owner is not None and isinstance(getattr(owner, "epoch", None), int) and owner not in found:
            found.append(owner)
    return found


@contextmanager
def fixed_data_rng(dataloader: DataLoader, seed: int) -> Iterator[None]:
    """Iterate ``dataloader`` under ``seed`` and put every random state it touches back afterwards.

    Seeding (rather than only saving and restoring) makes the probe batches the same whenever they are drawn,
    so a resumed run probes the very batches of the original run. The global generators are snapshot and
    restored by :func:`~lightning_landscape._rng.kept_rng` (the one RNG snapshot of the package); CUDA
    generators are left alone: samplers and worker seeds draw from the CPU generator.
    """
    generators = _generators(dataloader)
    generator_states = [g.get_state() for g in generators]
    samplers = _epoch_samplers(dataloader)
    epochs = [s.epoch for s in samplers]
    try:
        with kept_rng(cuda=False):
            torch.default_generator.manual_seed(seed)
            random.seed(seed)
            np.random.seed(seed % 2**32)
            for g in generators:
                g.manual_seed(seed)
            for s in samplers:
                s.epoch = 0
            yield
    finally:
        for g, state in zip(generators, generator_states, strict=True):
            g.set_state(state)
        for s, epoch in zip(samplers, epochs, strict=True):
            s.epoch = epoch


def iterate_fresh(dataloader: DataLoader) -> Iterator[Any]:
    """A new iterator over ``dataloader`` that shares nothing with the training loop's iterator.

    ``iter(dataloader)`` would hand out (and later reset) the cached iterator of a loader with
    ``persistent_workers=True``; the private ``_get_iterator`` always builds a fresh one.
    """
    it = fresh_iterator(dataloader)
    try:
        yield from it
    finally:
        shutdown_workers(it)


def probe_dataloader(trainer: pl.Trainer, which: Literal["train", "val"]) -> DataLoader:
    """The (distributed-sampler-wrapped) train or first val dataloader the Trainer itself iterates.

    Raises:
        ValueError: If there is no such dataloader or it is not a single ``DataLoader``.
    """
    if which == "val" and trainer.val_dataloaders is None:
        # The val loop loads its dataloaders lazily; this is the same call the sanity check makes.
        load_val_dataloaders(trainer)
    loaders: Any = trainer.train_dataloader if which == "train" else trainer.val_dataloaders
    if isinstance(loaders, (list, tuple)) and len(loaders) > 0:
        loaders = loaders[0]
    if not isinstance(loaders, DataLoader):
        raise ValueError(
            f"the probe needs a single {which} DataLoader, found {type(loaders).__name__}; "
            f"pass `dataloader='{'val' if which == 'train' else 'train'}'` or give the Trainer one DataLoader"
        )
    return loaders


def draw_batches(
    dataloader: Iterable[Any],
    num_batches: int | None,
    seed: int,
    to_device: Callable[[Any], Any] | None = None,
) -> list[Any]:
    """The first ``num_batches`` batches (all if ``None``) of a fresh pass over ``dataloader`` under ``seed``:
    the one way the package draws probe batches (monitors, seed barriers, ``lightning-landscape landscape``).

    The global generators, the loader's own generators and its samplers' epochs are seeded for the draw and
    put back afterwards (:func:`fixed_data_rng`), so the same batches come back whenever they are drawn.

    Args:
        dataloader: a ``DataLoader`` (or any iterable of batches).
        num_batches: how many batches; ``None`` for a whole pass.
        seed: seeds the draw.
        to_device: moves each batch (a monitor passes ``trainer.strategy.batch_to_device``).

    Raises:
        ValueError: If the dataloader yields no batch.
    """
    batches: list[Any] = []
    with fixed_data_rng(dataloader, seed):  # type: ignore[arg-type]
        it = iterate_fresh(dataloader)  # type: ignore[arg-type]
        try:
            for batch in it:
                batches.append(to_device(batch) if to_device is not None else batch)
                if num_batches is not None and len(batches) >= num_batches:
                    break
        finally:
            it.close()  # type: ignore[attr-defined]
    if not batches:
        raise ValueError("the probe dataloader yielded no batch")
    return batches


def batch_size_of(batch: Any, strict: bool = False) -> int:
    """Number of samples in ``batch`` as Lightning counts them (``extract_batch_size``), 1 if it cannot tell
    (``strict``: Lightning's error instead, for callers whose arithmetic needs the true count, such as the
    gradient noise scale's micro-batch sizes).

    The weight :class:`~lightning_landscape.callbacks.risk_gap.RiskGapMonitor` gives a step's loss, so that
    its epoch means are the ones Lightning computes for ``self.log(..., on_epoch=True)`` (any nesting,
    dataclasses; never an error). The curvature operator weighs its fixed batches by
    :func:`~lightning_landscape.curvature.batch_size` instead (leading dimension of the first tensor, an
    error for a batch without one): the two callers need those two semantics, and there is no third.
    """
    if strict:
        return int(extract_batch_size(batch))
    try:
        return int(extract_batch_size(batch))
    except Exception:
        return 1


def logging_step(trainer: pl.Trainer) -> int:
    """The step Lightning logs the current batch's metrics at, so that our series line up with the user's."""
    return batches_that_stepped(trainer)


def epoch_end_logging_step(trainer: pl.Trainer) -> int:
    """The step Lightning logs epoch-end metrics at: it steps its counter back by one for them."""
    return max(logging_step(trainer) - 1, 0)
