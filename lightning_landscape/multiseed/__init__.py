"""Multi-seed training: K independent retrains, the best kept."""

from lightning_landscape.multiseed.config import MultiSeedConfig
from lightning_landscape.multiseed.instability import instability
from lightning_landscape.multiseed.instability_result import InstabilityResult
from lightning_landscape.multiseed.lock import RootDirBusyError
from lightning_landscape.multiseed.record import RecordError
from lightning_landscape.multiseed.result import MultiSeedResult, SeedRun
from lightning_landscape.multiseed.trainer import MultiSeedInterrupted, MultiSeedTrainer

__all__ = [
    # the trainer, its configuration, and what it raises
    "MultiSeedConfig",
    "MultiSeedInterrupted",
    "MultiSeedTrainer",
    "RecordError",
    "RootDirBusyError",
    # what it returns
    "MultiSeedResult",
    "SeedRun",
    # when the basin is decided (instability analysis)
    "InstabilityResult",
    "instability",
]
