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
    # --- callbacks ---
    from lightning_landscape.callbacks import (
        GradientNoiseScaleMonitor,
        GradientNormMonitor,
        HessianEigenMonitor,
        LossLandscapeMonitor,
        RiskGapMonitor,
    )

    # --- curvature ---
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

    # --- landscape ---
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

    # --- multi-seed ---
    from lightning_landscape.multiseed import MultiSeedResult, MultiSeedTrainer, SeedRun
    from lightning_landscape.multiseed.ensemble import SeedEnsemble

# Where each public name lives: imported by __getattr__ on first access, then cached in the module.
_LAZY = {
    # callbacks
    "GradientNoiseScaleMonitor": "lightning_landscape.callbacks",
    "GradientNormMonitor": "lightning_landscape.callbacks",
    "HessianEigenMonitor": "lightning_landscape.callbacks",
    "LossLandscapeMonitor": "lightning_landscape.callbacks",
    "RiskGapMonitor": "lightning_landscape.callbacks",
    # multi-seed
    "MultiSeedResult": "lightning_landscape.multiseed",
    "MultiSeedTrainer": "lightning_landscape.multiseed",
    "SeedEnsemble": "lightning_landscape.multiseed.ensemble",
    "SeedRun": "lightning_landscape.multiseed",
    # curvature
    "EigenResult": "lightning_landscape.curvature",
    "HessianOperator": "lightning_landscape.curvature",
    "NonFiniteError": "lightning_landscape.curvature",
    "SpectralDensity": "lightning_landscape.curvature",
    "TraceResult": "lightning_landscape.curvature",
    "hessian_eigenvalues": "lightning_landscape.curvature",
    "hessian_trace": "lightning_landscape.curvature",
    "spectral_density": "lightning_landscape.curvature",
    # landscape
    "BarrierResult": "lightning_landscape.landscape",
    "LineResult": "lightning_landscape.landscape",
    "PlaneResult": "lightning_landscape.landscape",
    "hessian_directions": "lightning_landscape.landscape",
    "linear_barrier": "lightning_landscape.landscape",
    "loss_line": "lightning_landscape.landscape",
    "loss_plane": "lightning_landscape.landscape",
    "random_directions": "lightning_landscape.landscape",
    "trajectory_plane": "lightning_landscape.landscape",
}

__all__ = [
    "__version__",
    # callbacks
    "GradientNoiseScaleMonitor",
    "GradientNormMonitor",
    "HessianEigenMonitor",
    "LossLandscapeMonitor",
    "RiskGapMonitor",
    # multi-seed
    "MultiSeedResult",
    "MultiSeedTrainer",
    "SeedEnsemble",
    "SeedRun",
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


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'lightning_landscape' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
