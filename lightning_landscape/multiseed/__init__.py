"""Multi-seed training: K independent retrains, the best kept."""

from lightning_landscape.multiseed.result import MultiSeedResult, SeedRun

__all__ = ["MultiSeedResult", "SeedRun"]
