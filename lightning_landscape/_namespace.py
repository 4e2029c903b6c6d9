"""Which Lightning package an object belongs to: ``lightning.pytorch`` or ``pytorch_lightning``.

Lightning ships the same library under two import names: ``lightning.pytorch`` (with ``lightning.fabric``)
and the standalone ``pytorch_lightning`` (with ``lightning_fabric``). Their classes are distinct, so a
``pytorch_lightning.Trainer`` wants ``pytorch_lightning`` checkpoints, loggers and plugins, and an
``isinstance`` check against one package's ``LightningModule`` refuses the other's. Everything that must
pick a package asks here; nothing here imports a package that is not already loaded, so supporting
``pytorch_lightning`` costs nothing to those who do not use it.
"""

from __future__ import annotations

import functools
import importlib
import sys
from types import ModuleType
from typing import Any, TypeVar

NAMESPACES: dict[str, str] = {
    "lightning.pytorch": "lightning.fabric",
    "pytorch_lightning": "lightning_fabric",
}
"""Each Lightning package and the Fabric package that comes with it."""

T = TypeVar("T", bound=type)


def _package_of(module_name: str) -> str | None:
    for pytorch, fabric in NAMESPACES.items():
        for package in (pytorch, fabric):
            if module_name == package or module_name.startswith(package + "."):
                return pytorch
    return None


def namespace_of(obj: Any) -> ModuleType:
    """The Lightning package (``lightning.pytorch`` or ``pytorch_lightning``) that ``obj`` is built on.

    Args:
        obj: an instance or a class; the first class of its MRO that comes from a Lightning package
            decides.

    Returns:
        The package's top-level module.

    Raises:
        TypeError: nothing in ``obj``'s MRO comes from a Lightning package.

    Example:
        >>> from lightning.pytorch import LightningModule
        >>> namespace_of(LightningModule()).__name__
        'lightning.pytorch'
    """
    cls = obj if isinstance(obj, type) else type(obj)
    for klass in cls.__mro__:
        package = _package_of(klass.__module__)
        if package is not None:
            return importlib.import_module(package)
    raise TypeError(f"{cls.__qualname__} is not built on lightning.pytorch or pytorch_lightning")


def loaded_types(path: str) -> tuple[type[Any], ...]:
    """The class ``path`` (relative to the package, e.g. ``"callbacks.ModelCheckpoint"``) of every Lightning
    package already imported: what an ``isinstance`` check accepts from either package.

    A package that is not imported cannot have made an instance, so it is not imported here; a package
    without ``path`` (an older release) is left out.

    Args:
        path: the class's attribute path under ``lightning.pytorch``.

    Returns:
        One class per loaded package, ``lightning.pytorch``'s first.

    Example:
        >>> import lightning.pytorch
        >>> loaded_types("LightningModule")[0] is lightning.pytorch.LightningModule
        True
    """
    found = []
    for package in NAMESPACES:
        if package not in sys.modules:
            continue
        obj: Any = sys.modules[package]
        for part in path.split("."):
            obj = getattr(obj, part, None)
        if obj is not None:
            found.append(obj)
    return tuple(found)


def misconfiguration_types() -> tuple[type[Exception], ...]:
    """``MisconfigurationException`` of each loaded Fabric (``lightning.fabric``, ``lightning_fabric``).

    Example:
        >>> import lightning.pytorch
        >>> [t.__module__ for t in misconfiguration_types()][0]
        'lightning.fabric.utilities.exceptions'
    """
    names = [f"{fabric}.utilities.exceptions" for fabric in NAMESPACES.values()]
    return tuple(sys.modules[name].MisconfigurationException for name in names if name in sys.modules)


@functools.cache
def in_namespace(cls: T, namespace: str) -> T:
    """``cls`` (a subclass of a ``lightning.pytorch``/``lightning.fabric`` class) made acceptable to
    ``namespace``: a subclass that also derives from that package's class of the same name.

    ``pytorch_lightning.Trainer`` checks its plugins' and LightningCLI checks its callbacks' types against
    its own package; the subclass passes both checks and behaves exactly as ``cls``. It keeps ``cls``'s
    name, so checkpoint state keys (``Callback.state_key``) are the same in both packages.

    Args:
        cls: a class whose MRO holds a ``lightning.pytorch``/``lightning.fabric`` class.
        namespace: ``"lightning.pytorch"`` (``cls`` itself is returned) or ``"pytorch_lightning"``.

    Returns:
        The class to instantiate for a Trainer of ``namespace``.

    Raises:
        ValueError: ``namespace`` is not a Lightning package name.

    Example:
        >>> from lightning.pytorch import Callback
        >>> class Mine(Callback): ...
        >>> in_namespace(Mine, "lightning.pytorch") is Mine
        True
    """
    if namespace not in NAMESPACES:
        raise ValueError(f"`namespace` must be one of {list(NAMESPACES)}, got {namespace!r}")
    if namespace == "lightning.pytorch":
        return cls
    base = next(k for k in cls.__mro__ if _package_of(k.__module__) == "lightning.pytorch")
    own = base.__module__.replace("lightning.pytorch", "pytorch_lightning", 1).replace(
        "lightning.fabric", "lightning_fabric", 1
    )
    counterpart = getattr(importlib.import_module(own), base.__name__)
    namespace_dict = {"__module__": cls.__module__, "__qualname__": cls.__qualname__, "__doc__": cls.__doc__}
    return type(cls.__name__, (cls, counterpart), namespace_dict)  # type: ignore[return-value]
