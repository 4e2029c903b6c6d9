"""K seeds trained as one :func:`torch.func.vmap` ensemble: :class:`SeedEnsemble` and the vectorized executor.

Modules, one job each:

* :mod:`.qualify`: what may be vectorized; :class:`VectorizationError` names why not.
* :mod:`.members`: members built as their single runs, stacked, taken apart again.
* :mod:`.engine`: :class:`~.engine.StackedEnsemble`, the LightningModule both paths share (vmapped loss,
  per-member logs and best iterates).
* :mod:`.seed_ensemble`: :class:`SeedEnsemble`, configured by name, with its own (compiled) step.
* :mod:`.data`: :class:`PerSeedLoader`, one batch stream per member.
* :mod:`.executor`: :class:`VectorizedExecutor` and :func:`run_vectorized` for ``MultiSeedTrainer``.
* :mod:`._compile`, :mod:`._allocator`: what the fast step needs from inductor and from glibc's malloc.
"""

from lightning_landscape.multiseed.vectorized._allocator import tune_cpu_allocator
from lightning_landscape.multiseed.vectorized._compile import compile_unavailable
from lightning_landscape.multiseed.vectorized.data import PerSeedLoader
from lightning_landscape.multiseed.vectorized.executor import VectorizedExecutor, run_vectorized
from lightning_landscape.multiseed.vectorized.qualify import VectorizationError
from lightning_landscape.multiseed.vectorized.seed_ensemble import SeedEnsemble

__all__ = [
    # the seed ensemble, its data and its refusal
    "PerSeedLoader",
    "SeedEnsemble",
    "VectorizationError",
    # the executor
    "VectorizedExecutor",
    "run_vectorized",
    # the fast step's environment
    "compile_unavailable",
    "tune_cpu_allocator",
]
