"""Fixed probe batches and a loss closure for any LightningModule.

A probe measures the loss landscape at the current weights on batches that stay the same for the whole run, so
that values logged at different steps describe one fixed empirical risk. Drawing those batches and evaluating
the loss must leave training exactly as it would have been without the probe: no global RNG stream, sampler
generator, sampler epoch, ``self.log`` result or logger sees any trace of it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from lightning_landscape._imports import import_object
from lightning_landscape.callbacks._lightning import batches_that_stepped
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


def logging_step(trainer: pl.Trainer) -> int:
    """The step Lightning logs the current batch's metrics at, so that our series line up with the user's."""
    return batches_that_stepped(trainer)


def epoch_end_logging_step(trainer: pl.Trainer) -> int:
    """The step Lightning logs epoch-end metrics at: it steps its counter back by one for them."""
    return max(logging_step(trainer) - 1, 0)


def step_loss(outputs: Any, key: str | None = None) -> Tensor | None:
    """The scalar loss a step returned: the tensor itself, or a dict's ``key`` or ``"loss"`` entry."""
    if isinstance(outputs, dict):
        outputs = outputs.get(key) if key is not None and key in outputs else outputs.get("loss")
    if isinstance(outputs, Tensor) and outputs.numel() == 1:
        return outputs.reshape(())
    return None
