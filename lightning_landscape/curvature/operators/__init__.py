"""Operators: what a curvature algorithm multiplies by.

* :mod:`~.base`: the :class:`LinearOperator` protocol every algorithm takes, :class:`DenseOperator` (a
  matrix), and the two helpers that apply an operator (``apply_block``, ``random_vector``);
* :mod:`~.hessian`: :class:`HessianOperator`, the Hessian of a loss over fixed batches (double backward);
* :mod:`~.ddp`: :class:`DDPHessianOperator`, the same with every product all-reduced across ranks;
* :mod:`~.fsdp`: :class:`FSDPHessianOperator`, finite differences of ``fully_shard``-ed gradients.
"""

from lightning_landscape.curvature.operators.base import DenseOperator, LinearOperator
from lightning_landscape.curvature.operators.ddp import DDPHessianOperator
from lightning_landscape.curvature.operators.fsdp import FSDPHessianOperator
from lightning_landscape.curvature.operators.hessian import (
    HessianOperator,
    HvpMethod,
    NonFiniteError,
)
from lightning_landscape.curvature.operators.inputs import MemoryMode, OperatorInputs

__all__ = [
    "DDPHessianOperator",
    "DenseOperator",
    "FSDPHessianOperator",
    "HessianOperator",
    "HvpMethod",
    "LinearOperator",
    "MemoryMode",
    "NonFiniteError",
    "OperatorInputs",
]
