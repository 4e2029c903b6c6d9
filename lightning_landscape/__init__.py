"""lightning-landscape: see the loss landscape you train on.

Drop-in Lightning callbacks (gradient norms, Hessian spectra, risk gaps), a multi-seed trainer,
and a framework-free curvature core.
"""

__version__ = "0.1.0"

# --- callbacks ---
from lightning_landscape.callbacks import GradientNormMonitor, HessianEigenMonitor, RiskGapMonitor

# --- multi-seed ---
from lightning_landscape.multiseed import MultiSeedResult, MultiSeedTrainer, SeedRun
from lightning_landscape.multiseed.ensemble import SeedEnsemble

# --- curvature ---
# isort: split
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

__all__ = [
    "__version__",
    # callbacks
    "GradientNormMonitor",
    "HessianEigenMonitor",
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
]
