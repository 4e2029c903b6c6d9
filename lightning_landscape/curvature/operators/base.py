r"""What every algorithm needs of an operator, and the two helpers all of them use to apply one.

:class:`LinearOperator` is the protocol: a symmetric ``matvec`` on flat vectors, the size ``num_params``,
``dtype`` and ``device`` (``matmat`` and ``num_products`` are used when present). A
:class:`~.hessian.HessianOperator` is one; :class:`DenseOperator` wraps any symmetric matrix (for tests,
examples and checks of the solvers).
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import Tensor


class LinearOperator(Protocol):
    """What the solvers need: a symmetric ``matvec`` on flat vectors, its size, dtype and device."""

    num_params: int
    dtype: torch.dtype
    device: torch.device

    def matvec(self, v: Tensor) -> Tensor: ...


def apply_block(op: LinearOperator, V: Tensor) -> Tensor:
    """``H V`` for the columns of ``V`` (``[n, j]``): one ``matmat`` if the operator has one, else a loop.

    Example:
        >>> op = DenseOperator(2 * torch.eye(3, dtype=torch.float64))
        >>> apply_block(op, torch.ones(3, 2, dtype=torch.float64)).tolist(), op.num_products
        ([[2.0, 2.0], [2.0, 2.0], [2.0, 2.0]], 2)
    """
    matmat = getattr(op, "matmat", None)
    if matmat is not None:
        return matmat(V)
    return torch.stack([op.matvec(V[:, i]) for i in range(V.shape[1])], dim=1)


def matvec_into(op: LinearOperator, v: Tensor, out: Tensor) -> Tensor:
    """``out[:] = H v``, written in place by operators that can (``op.matvec_into``), else copied.

    Example:
        >>> op = DenseOperator(2 * torch.eye(3, dtype=torch.float64))
        >>> out = torch.empty(3, dtype=torch.float64)
        >>> matvec_into(op, torch.ones(3, dtype=torch.float64), out).tolist()
        [2.0, 2.0, 2.0]
    """
    into = getattr(op, "matvec_into", None)
    if into is not None:
        return into(v, out)
    return out.copy_(op.matvec(v))


def random_vector(op: LinearOperator, gen: torch.Generator, rademacher: bool = False) -> Tensor:
    """A Gaussian (or Rademacher) vector from ``gen``, in the operator's dtype and on its device.

    Drawn in float64 on the CPU, so that one seed gives the same vector on every device and dtype.
    """
    if rademacher:
        v = torch.randint(0, 2, (op.num_params,), generator=gen, dtype=torch.float64) * 2 - 1
    else:
        v = torch.randn(op.num_params, generator=gen, dtype=torch.float64)
    return v.to(device=op.device, dtype=op.dtype)


class DenseOperator:
    """A symmetric matrix as a :class:`LinearOperator` (for tests, examples and checks of the solvers).

    Example:
        >>> op = DenseOperator(torch.eye(3, dtype=torch.float64))
        >>> op.matvec(torch.ones(3, dtype=torch.float64)).tolist(), op.num_products
        ([1.0, 1.0, 1.0], 1)
    """

    def __init__(self, matrix: Tensor) -> None:
        self.matrix = matrix
        self.num_params = int(matrix.shape[0])
        self.dtype = matrix.dtype
        self.device = matrix.device
        self.num_products = 0

    def matvec(self, v: Tensor) -> Tensor:
        """The product ``matrix @ v``, counted in :attr:`num_products`."""
        self.num_products += 1
        return self.matrix @ v

    def matmat(self, V: Tensor) -> Tensor:
        """The products ``matrix @ V`` for the ``j`` columns of ``V``, counted as ``j``."""
        self.num_products += V.shape[1]
        return self.matrix @ V


__all__ = ["DenseOperator", "LinearOperator", "apply_block", "matvec_into", "random_vector"]
