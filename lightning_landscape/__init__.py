"""lightning-landscape: see the loss landscape you train on.

Drop-in Lightning callbacks (gradient norms, Hessian spectra, risk gaps), a multi-seed trainer,
and a framework-free curvature core.
"""

__version__ = "0.1.0"

# --- callbacks ---
from lightning_landscape.callbacks import GradientNormMonitor, HessianEigenMonitor, RiskGapMonitor

# --- multi-seed ---
from lightning_landscape.multiseed.ensemble import SeedEnsemble

# --- curvature ---

__all__ = [
    "__version__",
    # callbacks
    "GradientNormMonitor",
    "HessianEigenMonitor",
    "RiskGapMonitor",
    # multi-seed
    "SeedEnsemble",
    # curvature
]
