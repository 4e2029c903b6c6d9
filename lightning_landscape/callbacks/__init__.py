"""Drop-in Lightning callbacks: gradient norms and noise scale, Hessian spectra, edge of stability, risk gaps,
landscapes; a progress bar for logs."""

from lightning_landscape.callbacks.grad_norm import GradientNormMonitor
from lightning_landscape.callbacks.hessian import HessianEigenMonitor
from lightning_landscape.callbacks.landscape import LossLandscapeMonitor
from lightning_landscape.callbacks.noise_scale import GradientNoiseScaleMonitor
from lightning_landscape.callbacks.progress import LineProgressBar, progress_bar
from lightning_landscape.callbacks.risk_gap import RiskGapMonitor
from lightning_landscape.callbacks.stability import EdgeOfStabilityMonitor

__all__ = [
    "EdgeOfStabilityMonitor",
    "GradientNoiseScaleMonitor",
    "GradientNormMonitor",
    "HessianEigenMonitor",
    "LineProgressBar",
    "LossLandscapeMonitor",
    "RiskGapMonitor",
    "progress_bar",
]
