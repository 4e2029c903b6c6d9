"""Every access of the callbacks to a private member of Lightning, in one place (each one has a test).

A Lightning upgrade that renames one of these breaks here, and only here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from lightning_landscape._namespace import loaded_types

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


def is_sharded(strategy: Any) -> bool:
    """Whether ``strategy`` shards the parameters (FSDP, DeepSpeed, model parallel), of either package.

    Example:
        >>> from lightning.pytorch.strategies import SingleDeviceStrategy
        >>> is_sharded(SingleDeviceStrategy("cpu"))
        False
    """
    sharded = ("strategies.FSDPStrategy", "strategies.DeepSpeedStrategy", "strategies.ModelParallelStrategy")
    return isinstance(strategy, tuple(t for path in sharded for t in loaded_types(path)))


def sharding(strategy: Any) -> str | None:
    """How ``strategy`` shards the parameters: ``"model_parallel"`` (``ModelParallelStrategy``: FSDP2's
    ``fully_shard`` and/or tensor parallelism, applied in ``configure_model``), ``"fsdp"`` (``FSDPStrategy``,
    FSDP1), ``"deepspeed"``, or ``None`` (not sharded), of either package.

    Example:
        >>> from lightning.pytorch.strategies import DDPStrategy
        >>> sharding(DDPStrategy()) is None
        True
    """
    for kind, path in (
        ("model_parallel", "strategies.ModelParallelStrategy"),
        ("fsdp", "strategies.FSDPStrategy"),
        ("deepspeed", "strategies.DeepSpeedStrategy"),
    ):
        if isinstance(strategy, tuple(loaded_types(path))):
            return kind
    return None


def sharded_refusal(monitor: str, strategy: Any) -> str | None:
    """Why ``monitor`` cannot run under ``strategy``, saying what to use instead; ``None`` where it can (one
    device, DDP, and ``ModelParallelStrategy``, whose layout is checked at fit start, once the parameters
    are sharded).

    Example:
        >>> from lightning.pytorch.strategies import FSDPStrategy
        >>> print(sharded_refusal("HessianEigenMonitor", FSDPStrategy())[:60])
        HessianEigenMonitor does not support FSDPStrategy (FSDP1): i
    """
    kind, name = sharding(strategy), type(strategy).__name__
    instead = (
        "Use ModelParallelStrategy with torch.distributed.fsdp.fully_shard in configure_model (FSDP2, which "
        "this monitor supports) or strategy='ddp'."
    )
    if kind == "deepspeed":
        return (
            f"{monitor} does not support DeepSpeed ({name}): ZeRO partitions the parameters inside its own "
            f"engine, so no probe can move them or take a product on them. {instead}"
        )
    if kind == "fsdp":
        return (
            f"{monitor} does not support FSDPStrategy (FSDP1): it flattens each wrapped module's parameters "
            "into one FlatParameter cut into per-rank pieces, with no parameter layout left to move or take "
            f"products on (and Lightning runs it on CUDA only). {instead}"
        )
    return None


def generate_state_key(callback: Callback, **fields: Any) -> str:
    """``Callback._generate_state_key``: the class name and ``fields``, so two instances of one callback with
    different options keep separate states in a checkpoint."""
    return callback._generate_state_key(**fields)


def epoch_value(trainer: pl.Trainer, key: str) -> float | None:
    """Lightning's epoch aggregate of ``key`` in the running loop (``None``: not logged on epoch)."""
    epoch_metrics = running_epoch_metrics(trainer)
    for name in (key, f"{key}_epoch"):
        if name in epoch_metrics:
            return epoch_metrics[name]
    return None
