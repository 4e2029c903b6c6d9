"""The one way a seed's model and data are built: from a class, a factory or an instance, after the seed.

Every executor builds through :class:`ObjectBuilder`, so "member ``k`` is the model built right after
``seed_everything(k, workers=True)``" means the same thing sequentially, on Ray and vectorized.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from torch import nn

from lightning_landscape._namespace import loaded_types
from lightning_landscape.multiseed._lightning import saved_hparams

BuildKind = Literal["class", "factory", "rebuild", "reset", "copy"]


@dataclass
class ObjectBuilder:
    """Builds a fresh model or datamodule for one seed, after the seed is set.

    Args:
        kind: ``"class"``/``"factory"``/``"rebuild"`` call ``target(**kwargs)``; ``"copy"`` deep-copies
            ``target``; ``"reset"`` deep-copies it and calls every submodule's ``reset_parameters()``.
        target: the class, factory or instance.
        kwargs: keyword arguments of the call.

    Example:
        >>> ObjectBuilder("factory", dict, {"a": 1}).build()
        {'a': 1}
    """

    kind: BuildKind
    target: Any
    kwargs: dict[str, Any] = field(default_factory=dict)

    def build(self) -> Any:
        """A new object; call it after ``seed_everything``."""
        if self.kind in ("class", "factory", "rebuild"):
            return self.target(**self.kwargs)
        obj = copy.deepcopy(self.target)
        if self.kind == "reset":
            reset_parameters(obj)
        return obj

    @property
    def target_type(self) -> Any:
        """The class or factory behind the built objects (the instance's class for an instance)."""
        return self.target if self.kind in ("class", "factory", "rebuild") else type(self.target)


def _resetter(module: nn.Module) -> Callable[[], None] | None:
    # nn.MultiheadAttention only has the underscored variant.
    for name in ("reset_parameters", "_reset_parameters"):
        fn = getattr(module, name, None)
        if callable(fn):
            return fn
    return None


def modules_without_reset(model: nn.Module) -> list[str]:
    """Names of submodules that own parameters but cannot re-initialize them."""
    return [
        name or type(model).__name__
        for name, module in model.named_modules()
        if any(True for _ in module.parameters(recurse=False)) and _resetter(module) is None
    ]


def reset_parameters(model: nn.Module) -> None:
    """Re-draws every parameter through its module's own initializer, in module order."""
    for module in model.modules():
        fn = _resetter(module)
        if fn is not None:
            fn()


def _rebuild_kwargs(obj: Any) -> dict[str, Any] | None:
    """The saved ``__init__`` arguments of an instance, if they suffice to build another one."""
    kwargs = saved_hparams(obj)
    if kwargs is None:
        return None
    try:
        inspect.signature(type(obj)).bind(**kwargs)
    except TypeError:
        return None
    return kwargs


def check_kwargs(target: Any, kwargs: dict[str, Any] | None, argument: str) -> None:
    """Refuses keyword arguments that ``target`` (a class or factory) does not take, before anything runs.

    Raises:
        TypeError: naming the unknown keys and the ones ``target`` takes.

    Example:
        >>> def make(hidden: int = 16): ...
        >>> check_kwargs(make, {"hidden": 8}, "model_kwargs")
        >>> check_kwargs(make, {"hiden": 8}, "model_kwargs")
        Traceback (most recent call last):
        ...
        TypeError: `model_kwargs` ['hiden'] are not arguments of make, which takes ['hidden']
    """
    if not kwargs:
        return
    try:
        params = inspect.signature(target).parameters
    except (TypeError, ValueError):  # a builtin without a signature: its own call will tell
        return
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return
    named = [n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    unknown = sorted(k for k in kwargs if k not in named)
    if unknown:
        name = getattr(target, "__qualname__", type(target).__name__)
        raise TypeError(f"`{argument}` {unknown} are not arguments of {name}, which takes {sorted(named)}")


def model_builder(model: Any, model_kwargs: dict[str, Any] | None) -> ObjectBuilder:
    """How to build ``model`` per seed: a class (with ``model_kwargs``), a factory or an instance.

    An instance is rebuilt from its saved hyperparameters, else re-initialized through its submodules'
    ``reset_parameters()``.

    Raises:
        TypeError: ``model`` is none of these, an instance cannot be re-created per seed, or
            ``model_kwargs`` names arguments the class or factory does not take.
    """
    if isinstance(model, type):
        if not issubclass(model, loaded_types("LightningModule")):
            raise TypeError(
                f"`model` must be a LightningModule class, factory or instance, got class {model!r}"
            )
        check_kwargs(model, model_kwargs, "model_kwargs")
        return ObjectBuilder("class", model, dict(model_kwargs or {}))
    if isinstance(model, loaded_types("LightningModule")):
        if model_kwargs:
            raise TypeError(
                "`model_kwargs` applies to a LightningModule class or factory, not to an instance; pass"
                f" the class {type(model).__name__} with model_kwargs, or the instance alone"
            )
        kwargs = _rebuild_kwargs(model)
        if kwargs is not None:
            return ObjectBuilder("rebuild", type(model), kwargs)
        missing = modules_without_reset(model)
        if not missing:
            return ObjectBuilder("reset", model)
        raise TypeError(
            f"`model` instance of {type(model).__name__} cannot be re-created per seed: it saved no"
            " hyperparameters (call `self.save_hyperparameters()` in its __init__) and these submodules"
            f" own parameters but have no reset_parameters(): {missing}. Pass the class"
            " (with model_kwargs=...) or a zero-argument factory instead."
        )
    if callable(model):
        check_kwargs(model, model_kwargs, "model_kwargs")
        return ObjectBuilder("factory", model, dict(model_kwargs or {}))
    raise TypeError(
        "`model` must be a LightningModule class, a zero-argument factory or an instance,"
        f" got {type(model)!r}"
    )


def datamodule_builder(
    datamodule: Any, datamodule_kwargs: dict[str, Any] | None = None
) -> ObjectBuilder | None:
    """How to build ``datamodule`` per seed: a class or factory (called with ``datamodule_kwargs``), or an
    instance (rebuilt from its hyperparameters, else copied).

    Raises:
        TypeError: ``datamodule`` is not a LightningDataModule class, factory, instance or ``None``, or
            ``datamodule_kwargs`` is given with an instance or names arguments the class does not take.
    """
    if datamodule is None:
        if datamodule_kwargs:
            raise TypeError("`datamodule_kwargs` needs a datamodule class or factory, got datamodule=None")
        return None
    kwargs = dict(datamodule_kwargs or {})
    if isinstance(datamodule, type):
        if not issubclass(datamodule, loaded_types("LightningDataModule")):
            raise TypeError(
                "`datamodule` must be a LightningDataModule class, factory or instance,"
                f" got class {datamodule!r}"
            )
        check_kwargs(datamodule, kwargs, "datamodule_kwargs")
        return ObjectBuilder("class", datamodule, kwargs)
    if isinstance(datamodule, loaded_types("LightningDataModule")):
        if kwargs:
            raise TypeError(
                "`datamodule_kwargs` applies to a LightningDataModule class or factory, not to an instance"
            )
        saved = _rebuild_kwargs(datamodule)
        return ObjectBuilder("rebuild", type(datamodule), saved) if saved is not None else (
            ObjectBuilder("copy", datamodule)
        )  # fmt: skip
    if callable(datamodule):
        check_kwargs(datamodule, kwargs, "datamodule_kwargs")
        return ObjectBuilder("factory", datamodule, kwargs)
    raise TypeError(
        "`datamodule` must be a LightningDataModule class, a zero-argument factory, an instance or None,"
        f" got {type(datamodule)!r}"
    )
