"""lightning-landscape: see the loss landscape you train on.

Drop-in Lightning callbacks (gradient norms, Hessian spectra, risk gaps, loss-landscape views), a multi-seed
trainer, and framework-free curvature and landscape cores.

The names below are imported on first use (PEP 562), so ``import lightning_landscape.curvature`` (or
``.landscape``) does not import Lightning; ``from lightning_landscape import HessianEigenMonitor`` works as
usual.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.2.0"

if TYPE_CHECKING:
    # What a static type checker reads, since it does not run __getattr__ (tests/test_imports.py checks
    # that these are exactly the names of __all__, and the objects __getattr__ returns).
    from lightning_landscape.callbacks import (
        EdgeOfStabilityMonitor,
        GradientNoiseScaleMonitor,
        GradientNormMonitor,
        HessianEigenMonitor,
        LossLandscapeMonitor,
        RiskGapMonitor,
    )
    from lightning_landscape.curvature import (
        EigenResult,
        HessianOperator,
        NonFiniteError,
        SpectralDensity,
        TraceResult,
        hessian_eigenvalues,
        hessian_trace,
        spectral_density,
    )
    from lightning_landscape.landscape import (
        BarrierResult,
        LineResult,
        PlaneResult,
        hessian_directions,
        linear_barrier,
        loss_line,
        loss_plane,
        random_directions,
        trajectory_plane,
    )
    from lightning_landscape.multiseed import (
        MultiSeedInterrupted,
        MultiSeedResult,
        MultiSeedTrainer,
        RecordError,
        RootDirBusyError,
        SeedRun,
    )
    from lightning_landscape.multiseed.vectorized import PerSeedLoader, SeedEnsemble, VectorizationError

__all__ = [
    "__version__",
    # callbacks
    "EdgeOfStabilityMonitor",
    "GradientNoiseScaleMonitor",
    "GradientNormMonitor",
    "HessianEigenMonitor",
    "LossLandscapeMonitor",
    "RiskGapMonitor",
    # multi-seed
    "MultiSeedInterrupted",
    "MultiSeedResult",
    "MultiSeedTrainer",
    "RecordError",
    "RootDirBusyError",
    "PerSeedLoader",
    "SeedEnsemble",
    "SeedRun",
    "VectorizationError",
    # curvature
    "EigenResult",
    "HessianOperator",
    "NonFiniteError",
    "SpectralDensity",
    "TraceResult",
    "hessian_eigenvalues",
    "hessian_trace",
    "spectral_density",
    # landscape
    "BarrierResult",
    "LineResult",
    "PlaneResult",
    "hessian_directions",
    "linear_barrier",
    "loss_line",
    "loss_plane",
    "random_directions",
    "trajectory_plane",
]

# Where a public name is looked up on first use, in this order: the Lightning-free floors first, so a
# curvature or landscape name never imports Lightning (each later floor imports the earlier ones anyway).
_HOMES = (
    "lightning_landscape.curvature",
    "lightning_landscape.landscape",
    "lightning_landscape.callbacks",
    "lightning_landscape.multiseed",
    "lightning_landscape.multiseed.vectorized",
)


def __getattr__(name: str) -> Any:
    if name in __all__:
        for home in _HOMES:
            module = importlib.import_module(home)
            if name in getattr(module, "__all__", ()):
                value = getattr(module, name)
                globals()[name] = value
                return value
    raise AttributeError(f"module 'lightning_landscape' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
