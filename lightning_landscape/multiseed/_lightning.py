"""Every use of a private Lightning member in ``multiseed/``, each tested in its own test module.

Kept in one place so a Lightning upgrade that moves one of them breaks one small module (and its test)
rather than the executors.
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.utilities.rank_zero import rank_zero_only

try:  # Lightning raises it for a SIGTERM; a SystemExit without a code.
    from lightning.pytorch.utilities.exceptions import SIGTERMException
except ImportError:  # pragma: no cover - older Lightning
    SIGTERMException = SystemExit  # type: ignore[misc,assignment]


def is_rank_zero() -> bool:
    """Whether this process is global rank zero (``rank_zero_only.rank`` is set by the strategy)."""
    return getattr(rank_zero_only, "rank", 0) == 0


def configure_optimizers(config: Any) -> tuple[list[Any], list[Any]]:
    """The optimizers and scheduler configs of a ``configure_optimizers()`` result, read by Lightning."""
    from lightning.pytorch.core.optimizer import _configure_optimizers

    optimizers, schedulers, _ = _configure_optimizers(config)
    return list(optimizers), list(schedulers)


def saved_hparams(obj: Any) -> dict[str, Any] | None:
    """``obj.hparams_initial`` if ``obj`` called ``save_hyperparameters()``, else ``None``."""
    if not hasattr(obj, "_hparams_initial"):
        return None
    return dict(obj.hparams_initial)


def plain_hparams(module: LightningModule) -> dict[str, Any]:
    """The module's scalar hyperparameters (what a TensorBoard hparams entry can show)."""
    hparams = getattr(module, "_hparams", None) or {}
    return {str(k): v for k, v in dict(hparams).items() if isinstance(v, (bool, int, float, str))}


def attached_trainer(module: LightningModule) -> Trainer | None:
    """The Trainer ``module`` is attached to, or ``None``: ``module.trainer`` raises when there is none.

    Example:
        >>> attached_trainer(LightningModule()) is None
        True
    """
    return module._trainer
