"""Drop-in Lightning callbacks: gradient norms, Hessian eigenvalues, risk gaps, loss-landscape views."""

from lightning_landscape.callbacks.grad_norm import GradientNormMonitor
from lightning_landscape.callbacks.hessian import HessianEigenMonitor
from lightning_landscape.callbacks.landscape import LossLandscapeMonitor
from lightning_landscape.callbacks.risk_gap import RiskGapMonitor

__all__ = ["GradientNormMonitor", "HessianEigenMonitor", "LossLandscapeMonitor", "RiskGapMonitor"]
