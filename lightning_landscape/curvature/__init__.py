"""The curvature core: Hessian-vector products, extreme eigenvalues, trace and spectral density.

Pure PyTorch (no Lightning import): usable on any ``nn.Module`` and ``loss_fn(model, batch)``.

* :mod:`~.operator`: :class:`HessianOperator` (``matvec``, batched ``matmat``, a parameter block by name);
* algorithms on any operator, keyword-only options: :func:`lanczos`, :func:`power_iteration` (:mod:`~.eigen`),
  :func:`hutchinson`, :func:`hutchpp`, :func:`xtrace` (:mod:`~.trace`), :func:`slq` (:mod:`~.spectrum`) on
  the shared kernel :func:`lanczos_tridiagonal` (:mod:`~.krylov`);
* the optimizer's view: :class:`PreconditionedOperator` (:math:`D^{-1/2} H D^{-1/2}`),
  :func:`adam_preconditioner`, :func:`stability_threshold` (:mod:`~.preconditioned`);
* model-level functions that build one operator and call an algorithm: :func:`hessian_eigenvalues`,
  :func:`hessian_trace`, :func:`spectral_density` (:mod:`~.api`, the only module that knows pyhessian).
"""

from lightning_landscape.curvature._inputs import LossFn, batch_size
from lightning_landscape.curvature._params import ParamSelection, select_parameters
from lightning_landscape.curvature.api import hessian_eigenvalues, hessian_trace, spectral_density, trace_of
from lightning_landscape.curvature.eigen import EigenResult, lanczos, power_iteration
from lightning_landscape.curvature.krylov import DenseOperator, LinearOperator, lanczos_tridiagonal
from lightning_landscape.curvature.operator import HessianOperator, NonFiniteError
from lightning_landscape.curvature.preconditioned import (
    PreconditionedOperator,
    adam_preconditioner,
    stability_threshold,
)
from lightning_landscape.curvature.spectrum import SpectralDensity, slq
from lightning_landscape.curvature.trace import TraceResult, hutchinson, hutchpp, xtrace

__all__ = [
    # operators
    "DenseOperator",
    "HessianOperator",
    "LinearOperator",
    "LossFn",
    "NonFiniteError",
    "ParamSelection",
    "PreconditionedOperator",
    "adam_preconditioner",
    "batch_size",
    "select_parameters",
    # algorithms
    "lanczos",
    "lanczos_tridiagonal",
    "power_iteration",
    "hutchinson",
    "hutchpp",
    "xtrace",
    "slq",
    "trace_of",
    "stability_threshold",
    # results
    "EigenResult",
    "SpectralDensity",
    "TraceResult",
    # model-level
    "hessian_eigenvalues",
    "hessian_trace",
    "spectral_density",
]
