"""The Lightning side both Hessian monitors share, around the Trainer-free engine of :mod:`._hessian_probe`.

:class:`ProbeMonitor` refuses a strategy the probe cannot run under (:func:`~._lightning.sharded_refusal`),
notes whether the parameters are FSDP2 shards, checks the model against the probe's options (in ``setup``,
or at fit start under FSDP2, once ``configure_model`` has sharded the parameters) and draws the fixed probe
batches when training starts. :class:`~.hessian.HessianEigenMonitor` and
:class:`~.stability.EdgeOfStabilityMonitor` are its subclasses.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks.callback import Callback
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from typing_extensions import override

from lightning_landscape.callbacks._batches import draw_batches, probe_dataloader
from lightning_landscape.callbacks._hessian_probe import HessianProbe
from lightning_landscape.callbacks._lightning import sharded_refusal, sharding


class ProbeMonitor(HessianProbe, Callback):
    """A :class:`~._hessian_probe.HessianProbe` as a Lightning callback (the hooks its monitors share)."""

    #: The monitor's name in its error messages.
    monitor_name = "ProbeMonitor"
    dataloader: str
    num_batches: int
    seed: int
    _batches: list[Any] | None = None
    #: Whether the parameters are FSDP2 shards (``ModelParallelStrategy``); set by :meth:`_check_strategy`.
    _sharded: bool = False

    def _check_strategy(self, trainer: pl.Trainer) -> None:
        """Refuse a strategy the probe cannot run under; note whether the parameters are FSDP2 shards."""
        refusal = sharded_refusal(self.monitor_name, trainer.strategy)
        if refusal is not None:
            raise MisconfigurationException(refusal)
        self._sharded = sharding(trainer.strategy) == "model_parallel"

    def _check_model(self, pl_module: pl.LightningModule) -> None:
        """The engine's checks of the model (and of the shards under FSDP2), as Lightning's exception."""
        try:
            if self._sharded:
                self.check_sharded(pl_module)
            self.check_model(pl_module)
        except ValueError as err:
            raise MisconfigurationException(f"{self.monitor_name}: {err}") from err

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        loader = probe_dataloader(trainer, self.dataloader)
        self._batches = draw_batches(
            loader, self.num_batches, self.seed, to_device=trainer.strategy.batch_to_device
        )


__all__ = ["ProbeMonitor"]
