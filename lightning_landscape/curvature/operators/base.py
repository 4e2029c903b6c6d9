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

# Elements drawn at a time by random_vector (8 MB of float64; a multiple of 16).
_DRAW_CHUNK = 1 << 20


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


def matvec_into(op: LinearOperator, v: Tensor, out: Tensor, beta: float = 0.0) -> Tensor:
    """``out = H v + beta * out``, in place by operators that can (``op.matvec_into``), else from a copy.

    Example:
        >>> op = DenseOperator(2 * torch.eye(3, dtype=torch.float64))
        >>> out = torch.empty(3, dtype=torch.float64)
        >>> matvec_into(op, torch.ones(3, dtype=torch.float64), out).tolist()
        [2.0, 2.0, 2.0]
        >>> matvec_into(op, torch.ones(3, dtype=torch.float64), out, beta=0.5).tolist()
        [3.0, 3.0, 3.0]
    """
    into = getattr(op, "matvec_into", None)
    if into is not None:
        return into(v, out) if beta == 0.0 else into(v, out, beta=beta)
    hv = op.matvec(v)
    return out.copy_(hv) if beta == 0.0 else torch.add(hv, out, alpha=beta, out=out)


def random_vector(
    op: LinearOperator, gen: torch.Generator, rademacher: bool = False, out: Tensor | None = None
) -> Tensor:
    """A Gaussian (or Rademacher) vector from ``gen``, in the operator's dtype and on its device.

    Drawn in float64 on the CPU, so that one seed gives the same vector on every device and dtype; drawn
    in chunks (the same numbers as one draw), so that no float64 copy of a parameter-sized vector is ever
    made. With ``out`` (a flat tensor of ``num_params`` elements) the vector is written there.

    Example:
        >>> op = DenseOperator(torch.eye(3))
        >>> a = random_vector(op, torch.Generator().manual_seed(0))
        >>> b = random_vector(op, torch.Generator().manual_seed(0), out=torch.empty(3))
        >>> a.dtype, torch.equal(a, b)
        (torch.float32, True)
    """
    n = op.num_params
    if out is None:
        out = torch.empty(n, dtype=op.dtype, device=op.device)
    start = 0
    while start < n:
        # Every chunk but the last is a multiple of 16 and the last has at least 16 elements: torch draws
        # normals in groups of 16 (and a short tail apart), so the chunks then give the one-draw numbers.
        size = (n - start if n - start < _DRAW_CHUNK + 16 else _DRAW_CHUNK,)
        if rademacher:
            piece = torch.randint(0, 2, size, generator=gen, dtype=torch.float64) * 2 - 1
        else:
            piece = torch.randn(size, generator=gen, dtype=torch.float64)
        out[start : start + size[0]].copy_(piece)
        start += size[0]
    return out


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
