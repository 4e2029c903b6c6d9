"""The curvature core: Hessian-vector products, extreme eigenvalues, trace and spectral density.

Pure PyTorch (no Lightning import): usable on any ``nn.Module`` and ``loss_fn(model, batch)``.

* :mod:`~.operators`: :class:`HessianOperator` (``matvec``, batched ``matmat``, a parameter block by name; its
  all-reducing subclass under ``torch.distributed``) and :class:`DenseOperator`, on the
  :class:`LinearOperator` protocol;
* :mod:`~.algorithms` on any operator, keyword-only options: :func:`lanczos`, :func:`power_iteration`,
  :func:`hutchinson`, :func:`hutchpp`, :func:`xtrace`, :func:`trace_of`, :func:`slq`, all Lanczos on the one
  kernel (:func:`lanczos_tridiagonal`);
* the optimizer's view: :class:`PreconditionedOperator` (:math:`D^{-1/2} H D^{-1/2}`),
  :func:`adam_preconditioner`, :func:`stability_threshold` (:mod:`~.preconditioned`);
* :mod:`~.results`: :class:`EigenResult`, :class:`TraceResult`, :class:`SpectralDensity`;
* :mod:`~.api`: model-level functions that check their arguments once, build one operator and call an
  algorithm: :func:`hessian_eigenvalues`, :func:`hessian_trace`, :func:`spectral_density` (the only module
  that knows pyhessian).
"""

from lightning_landscape.curvature._inputs import LossFn, batch_size
from lightning_landscape.curvature._params import ParamSelection, select_parameters
from lightning_landscape.curvature.algorithms import (
    hutchinson,
    hutchpp,
    lanczos,
    lanczos_tridiagonal,
    power_iteration,
    slq,
    trace_of,
    xtrace,
)
from lightning_landscape.curvature.api import hessian_eigenvalues, hessian_trace, spectral_density
from lightning_landscape.curvature.batch_sharpness import batch_sharpness
from lightning_landscape.curvature.operators import (
    DenseOperator,
    HessianOperator,
    HvpMethod,
    LinearOperator,
    NonFiniteError,
)
from lightning_landscape.curvature.preconditioned import (
    PreconditionedOperator,
    adam_preconditioner,
    stability_threshold,
)
from lightning_landscape.curvature.results import EigenResult, SpectralDensity, TraceResult

__all__ = [
    # operators
    "DenseOperator",
    "HessianOperator",
    "HvpMethod",
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
    "batch_sharpness",
    "hessian_eigenvalues",
    "hessian_trace",
    "spectral_density",
]
