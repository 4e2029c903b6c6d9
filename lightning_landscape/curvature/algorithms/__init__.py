"""Algorithms on any operator (keyword-only options): they take an operator, never a model.

* :mod:`~.krylov`: the one Lanczos kernel (:class:`~.krylov.LanczosRun`, :func:`lanczos_tridiagonal`);
* :mod:`~.lanczos`: extreme eigenvalues (:func:`lanczos`; for one value per end on a large model without a
  stored basis, :mod:`~._three_term`), :mod:`~.power`: power iteration;
* :mod:`~.trace`: Hutchinson, Hutch++ and XTrace (:func:`trace_of` picks one by name);
* :mod:`~.slq`: stochastic Lanczos quadrature of the spectral density.
"""

from lightning_landscape.curvature.algorithms.krylov import lanczos_tridiagonal
from lightning_landscape.curvature.algorithms.lanczos import lanczos
from lightning_landscape.curvature.algorithms.power import power_iteration
from lightning_landscape.curvature.algorithms.slq import slq
from lightning_landscape.curvature.algorithms.trace import hutchinson, hutchpp, trace_of, xtrace

__all__ = [
    "hutchinson",
    "hutchpp",
    "lanczos",
    "lanczos_tridiagonal",
    "power_iteration",
    "slq",
    "trace_of",
    "xtrace",
]
