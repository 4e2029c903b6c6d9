"""Multi-seed training: K independent retrains, the best kept."""

from lightning_landscape.multiseed.instability import instability
from lightning_landscape.multiseed.instability_result import InstabilityResult
from lightning_landscape.multiseed.record import RecordError, RootDirBusyError
from lightning_landscape.multiseed.result import MultiSeedResult, SeedRun
from lightning_landscape.multiseed.trainer import MultiSeedInterrupted, MultiSeedTrainer

__all__ = [
    "MultiSeedInterrupted",
    "MultiSeedResult",
    "MultiSeedTrainer",
    "RecordError",
    "RootDirBusyError",
    "SeedRun",
    "InstabilityResult",
    "instability",
]
