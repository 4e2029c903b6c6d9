"""Drop-in Lightning callbacks: gradient norms and noise scale, Hessian spectra, risk gaps, landscapes."""

from lightning_landscape.callbacks.grad_norm import GradientNormMonitor
from lightning_landscape.callbacks.hessian import HessianEigenMonitor
from lightning_landscape.callbacks.landscape import LossLandscapeMonitor
from lightning_landscape.callbacks.noise_scale import GradientNoiseScaleMonitor
from lightning_landscape.callbacks.risk_gap import RiskGapMonitor

__all__ = [
    "GradientNoiseScaleMonitor",
    "GradientNormMonitor",
    "HessianEigenMonitor",
    "LossLandscapeMonitor",
    "RiskGapMonitor",
]
