"""The curvature core: Hessian-vector products, extreme eigenvalues, trace and spectral density.

Pure PyTorch (no Lightning import): usable on any ``nn.Module`` and ``loss_fn(model, batch)``.
"""

from lightning_landscape.curvature.eigen import (
    EigenResult,
    hessian_eigenvalues,
    lanczos,
    power_iteration,
)
from lightning_landscape.curvature.operator import HessianOperator, LossFn, NonFiniteError, batch_size
from lightning_landscape.curvature.spectrum import (
    SpectralDensity,
    TraceResult,
    hessian_trace,
    slq,
    spectral_density,
)

__all__ = [
    "EigenResult",
    "HessianOperator",
    "LossFn",
    "NonFiniteError",
    "SpectralDensity",
    "TraceResult",
    "batch_size",
    "hessian_eigenvalues",
    "hessian_trace",
    "lanczos",
    "power_iteration",
    "slq",
    "spectral_density",
]
