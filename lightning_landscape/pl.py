"""The callbacks as ``pytorch_lightning.Callback`` subclasses, for ``pytorch_lightning``'s LightningCLI.

``from lightning_landscape import HessianEigenMonitor`` works in a ``pytorch_lightning.Trainer`` as it is:
the Trainer calls a callback's hooks by name. What checks the *type* of a callback against
``pytorch_lightning.Callback`` -- ``pytorch_lightning.cli.LightningCLI``
(``--trainer.callbacks+=lightning_landscape.pl.HessianEigenMonitor``) or a single callback passed without a
list -- wants the classes of this module instead. Each one is the monitor of
:mod:`lightning_landscape.callbacks` that also derives from ``pytorch_lightning.Callback``: same arguments,
same tags, same checkpoint state. Importing this module imports ``pytorch_lightning``.

Example:
    >>> import pytorch_lightning
    >>> from lightning_landscape.pl import HessianEigenMonitor
    >>> isinstance(HessianEigenMonitor(), pytorch_lightning.Callback)
    True
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning  # noqa: F401 - the namespace these classes are for; fails early where absent

from lightning_landscape import callbacks as _callbacks
from lightning_landscape._namespace import in_namespace

# Every callback class of lightning_landscape.callbacks (the monitors, LineProgressBar).
__all__ = [name for name in _callbacks.__all__ if isinstance(getattr(_callbacks, name), type)]


def __getattr__(name: str) -> Any:
    if name not in __all__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    cls = in_namespace(getattr(_callbacks, name), "pytorch_lightning")
    cls.__module__ = __name__  # pickled (Ray, ddp_spawn) by this module's name, found again here
    return cls


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
