"""Multi-seed training: K independent retrains, the best kept."""

from lightning_landscape.multiseed.result import MultiSeedResult, SeedRun
from lightning_landscape.multiseed.trainer import MultiSeedTrainer

__all__ = ["MultiSeedResult", "MultiSeedTrainer", "SeedRun"]
