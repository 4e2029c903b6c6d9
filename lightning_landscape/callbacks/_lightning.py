"""Every access of the callbacks to a private member of Lightning, in one place (each one has a test).

A Lightning upgrade that renames one of these breaks here, and only here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks.callback import Callback


def batches_that_stepped(trainer: pl.Trainer) -> int:
    """The step Lightning logs the current batch's metrics at (``log_metrics(step=...)``)."""
    return int(trainer.fit_loop.epoch_loop._batches_that_stepped)


def load_val_dataloaders(trainer: pl.Trainer) -> None:
    """Load ``trainer.val_dataloaders`` before the first validation run (the sanity check's call)."""
    trainer.fit_loop.epoch_loop.val_loop.setup_data()


def running_epoch_metrics(trainer: pl.Trainer) -> dict[str, float]:
    """The epoch aggregates of everything logged with ``on_epoch=True`` in the running loop so far.

    The running loop's results hold only what was logged since it was last reset, so unlike
    ``trainer.callback_metrics`` they never hold a value left over from an earlier epoch.
    """
    results = trainer._results
    if results is None:
        return {}
    return {key: float(value) for key, value in results.metrics(False)["callback"].items()}


def running_logged_keys(trainer: pl.Trainer) -> set[str]:
    """Every key logged in the running loop so far, on step or on epoch (for error messages)."""
    results = trainer._results
    if results is None:
        return set()
    return {*results.metrics(False)["callback"], *results.metrics(True)["callback"]}


def generate_state_key(callback: Callback, **fields: Any) -> str:
    """``Callback._generate_state_key``: the class name and ``fields``, so two instances of one callback with
    different options keep separate states in a checkpoint."""
    return callback._generate_state_key(**fields)
