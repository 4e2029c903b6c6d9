r"""The Krylov kernel every solver shares: private generators, random vectors and Lanczos with full
reorthogonalization.

:class:`LinearOperator` is what the algorithms need of an operator (a :class:`HessianOperator`, or any
symmetric matrix wrapped to it); :func:`lanczos_tridiagonal` is the public kernel of stochastic Lanczos
quadrature (several independent runs advanced together, one :meth:`matmat` per step when the operator
has one), and ``_Lanczos`` the restartable single run behind :func:`~.eigen.lanczos`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Protocol

import torch
from torch import Tensor

from lightning_landscape.curvature._checks import check_int


class LinearOperator(Protocol):
    """What the solvers need: a symmetric ``matvec`` on flat vectors, its size, dtype and device."""

    num_params: int
    dtype: torch.dtype
    device: torch.device

    def matvec(self, v: Tensor) -> Tensor: ...


def apply_block(op: LinearOperator, V: Tensor) -> Tensor:
    """``H V`` for the columns of ``V`` (``[n, j]``): one ``matmat`` if the operator has one, else a loop."""
    matmat = getattr(op, "matmat", None)
    if matmat is not None:
        return matmat(V)
    return torch.stack([op.matvec(V[:, i]) for i in range(V.shape[1])], dim=1)


def random_vector(op: LinearOperator, gen: torch.Generator, rademacher: bool = False) -> Tensor:
    """A Gaussian (or Rademacher) vector from ``gen``, in the operator's dtype and on its device."""
    if rademacher:
        v = torch.randint(0, 2, (op.num_params,), generator=gen, dtype=torch.float64) * 2 - 1
    else:
        v = torch.randn(op.num_params, generator=gen, dtype=torch.float64)
    return v.to(device=op.device, dtype=op.dtype)


def _floor(dtype: torch.dtype) -> float:
    # Eigenvalues below sqrt(eps) * ||H|| are numerically zero: hold them to an absolute tolerance.
    return math.sqrt(torch.finfo(dtype).eps)


class _Lanczos:
    """Lanczos with full reorthogonalization (classical Gram-Schmidt, twice) and restarted blocks.

    A new block starts from a random vector orthogonal to the basis, either on breakdown (invariant
    subspace) or when asked (to look for further copies of repeated eigenvalues, which one Krylov
    sequence cannot see). The projected matrix :math:`M = Q^\\top H Q` stays exact: tridiagonal within
    blocks, plus the couplings :math:`f_e^\\top q_j` between the residual :math:`f_e` left at the end
    :math:`e` of an earlier block and each later basis vector :math:`q_j`.
    """

    def __init__(self, op: LinearOperator, v0: Tensor, max_steps: int, gen: torch.Generator) -> None:
        self.op = op
        self.gen = gen
        self.max_steps = min(max_steps, op.num_params)
        self.capacity = min(self.max_steps + 1, 32)
        self.Q = torch.empty(self.capacity, op.num_params, dtype=op.dtype, device=op.device)
        self.Q[0] = v0 / torch.linalg.vector_norm(v0)
        self.alphas: list[float] = []
        self.betas: list[float] = []  # betas[j] couples step j and j+1 (0 at a block boundary)
        self.residual = 0.0  # |beta| of the last step: the factor of the residual bounds
        self.steps = 0
        self.restarted = False  # the last step ended on breakdown and opened a new block
        self.block_start = 0
        self.ends: list[tuple[int, Tensor]] = []  # (index, residual f_e kept orthogonal to later q)
        self.couplings: list[tuple[int, int, float]] = []
        self._w: Tensor | None = None
        # M itself, kept up to date entry by entry (rebuilding it for every Ritz check costs more than the
        # small eigh); leading m x m block after m steps.
        self.M = torch.zeros(self.capacity, self.capacity, dtype=torch.float64)
        self._ritz_cache: dict[int, tuple[Tensor, Tensor]] = {}

    def _orthogonalize(self, w: Tensor, m: int) -> Tensor:
        basis = self.Q[:m]
        for _ in range(2):
            w = w - basis.T @ (basis @ w)
        return w

    def _grow(self) -> None:
        if self.steps >= self.capacity:
            grow = min(self.capacity * 2, self.max_steps + 1) - self.capacity
            extra = torch.empty(grow, self.op.num_params, dtype=self.op.dtype, device=self.op.device)
            self.Q = torch.cat([self.Q, extra])
            M = torch.zeros(self.capacity + grow, self.capacity + grow, dtype=torch.float64)
            M[: self.capacity, : self.capacity] = self.M
            self.M = M
            self.capacity += grow

    def step(self) -> None:
        j = self.steps
        q = self.Q[j]
        self._ritz_cache.clear()
        for e, f in self.ends:
            c = float(torch.dot(f, q))
            if c != 0.0:
                self.couplings.append((e, j, c))
                self.M[e, j] += c
                self.M[j, e] += c
                f.sub_(c * q)
        w = self.op.matvec(q)
        alpha = float(torch.dot(w, q))
        w = w - alpha * q
        if j > self.block_start:
            w = w - self.betas[j - 1] * self.Q[j - 1]
        w = self._orthogonalize(w, j + 1)
        beta = float(torch.linalg.vector_norm(w))
        self.alphas.append(alpha)
        self.M[j, j] = alpha
        self.steps += 1
        self.residual = beta
        self.restarted = False
        self._w = w
        if self.steps >= self.op.num_params:
            self.residual = 0.0
            return
        self._grow()
        scale = max(abs(a) for a in self.alphas) + max(self.betas, default=0.0)
        if beta <= 10 * torch.finfo(self.op.dtype).eps * max(scale, 1e-300):
            # Invariant subspace: its Ritz values are exact; continue in a fresh direction.
            self.new_block()
            self.restarted = True
        else:
            self.betas.append(beta)
            self.M[j, j + 1] = beta
            self.M[j + 1, j] = beta
            self.Q[j + 1] = w / beta

    def new_block(self) -> None:
        """Continue from a random vector orthogonal to the basis (the current residual becomes an end)."""
        m = self.steps
        assert self._w is not None and m < self.op.num_params
        if len(self.betas) == m:
            self.betas[-1] = 0.0
            self.M[m - 1, m] = 0.0
            self.M[m, m - 1] = 0.0
        else:
            self.betas.append(0.0)
        self.ends.append((m - 1, self._w.clone()))
        u = self._orthogonalize(random_vector(self.op, self.gen), m)
        self.Q[m] = u / torch.linalg.vector_norm(u)
        self.block_start = m
        self.residual = 0.0

    def ritz(self, start: int = 0) -> tuple[Tensor, Tensor]:
        """Ritz values (ascending, float64 CPU) and eigenvectors (columns) of M, or of block ``start:``."""
        # A block after the first holds no coupling: every end lies before the block that it couples to.
        if start not in self._ritz_cache:
            self._ritz_cache[start] = torch.linalg.eigh(self.M[start : self.steps, start : self.steps])
        return self._ritz_cache[start]

    def bounds(self, S: Tensor) -> Tensor:
        """Upper bounds on ``||H Q s - theta Q s||`` for the Ritz vectors of M (columns of S)."""
        out = (self.residual * S[-1, :]).abs()
        for e, f in self.ends:
            out = out + float(torch.linalg.vector_norm(f)) * S[e, :].abs()
        return out

    def vectors(self, S: Tensor, idx: Sequence[int]) -> Tensor:
        coeffs = S[:, list(idx)].to(device=self.op.device, dtype=self.op.dtype)
        vecs = (self.Q[: self.steps].T @ coeffs).T
        return vecs / torch.linalg.vector_norm(vecs, dim=1, keepdim=True)


def lanczos_tridiagonal(op: LinearOperator, V0: Tensor, num_steps: int) -> tuple[Tensor, Tensor, Tensor]:
    """Lanczos with full reorthogonalization from each column of ``V0``, all runs advanced together.

    Run ``r`` builds an orthonormal basis of the Krylov space of ``V0[:, r]`` and its tridiagonal
    :math:`T^{(r)} = Q_r^\top H Q_r`; each step applies the operator to one vector of every run at once
    (:func:`apply_block`). A run whose Krylov space turns out invariant (breakdown, :math:`\beta \approx 0`)
    stops there: its :math:`T^{(r)}` is exact and shorter.

    Args:
        op: a symmetric operator.
        V0: ``[n, r]`` start vectors (any non-zero norm; normalized here).
        num_steps: the most steps per run (``<= n``), one product per run and step.

    Returns:
        ``(alphas, betas, steps)``: ``[r, m]`` diagonals, ``[r, m - 1]`` off-diagonals (float64, CPU; zero
        past a run's end) and ``[r]`` the steps each run took.

    Example:
        >>> from lightning_landscape.curvature.krylov import DenseOperator
        >>> op = DenseOperator(torch.diag(torch.arange(1.0, 6.0, dtype=torch.float64)))
        >>> alphas, betas, steps = lanczos_tridiagonal(op, torch.ones(5, 1, dtype=torch.float64), 5)
        >>> T = torch.diag(alphas[0]) + torch.diag(betas[0], 1) + torch.diag(betas[0], -1)
        >>> torch.linalg.eigvalsh(T).round(decimals=6).tolist()
        [1.0, 2.0, 3.0, 4.0, 5.0]
    """
    check_int("num_steps", num_steps)
    n, r = V0.shape
    m = min(num_steps, n)
    Q = torch.zeros(m, n, r, dtype=op.dtype, device=op.device)
    q = V0.to(device=op.device, dtype=op.dtype)
    q = q / torch.linalg.vector_norm(q, dim=0, keepdim=True)
    alphas = torch.zeros(r, m, dtype=torch.float64)
    betas = torch.zeros(r, max(m - 1, 0), dtype=torch.float64)
    steps = torch.zeros(r, dtype=torch.long)
    active = torch.ones(r, dtype=torch.bool)
    eps = torch.finfo(op.dtype).eps
    for j in range(m):
        idx = active.nonzero().flatten()
        Q[j, :, idx] = q[:, idx]
        w = apply_block(op, q[:, idx])
        alpha = (w * q[:, idx]).sum(0)
        w = w - alpha * q[:, idx]
        if j > 0:
            w = w - betas[idx, j - 1].to(w) * Q[j - 1][:, idx]
        basis = Q[: j + 1][:, :, idx]  # [j + 1, n, a]
        for _ in range(2):  # classical Gram-Schmidt, twice, per run
            w = w - torch.einsum("jna,ja->na", basis, torch.einsum("jna,na->ja", basis, w))
        beta = torch.linalg.vector_norm(w, dim=0)
        alphas[idx, j] = alpha.double().cpu()
        steps[idx] += 1
        if j == m - 1:
            break
        scale = alphas[idx, : j + 1].abs().amax(1) + (betas[idx, :j].amax(1) if j > 0 else 0.0)
        done = beta.double().cpu() <= 10 * eps * scale.clamp_min(1e-300)
        keep = ~done
        betas[idx[keep], j] = beta[keep.to(beta.device)].double().cpu()
        q = q.clone()
        q[:, idx[keep]] = w[:, keep.to(w.device)] / beta[keep.to(beta.device)]
        active[idx[done]] = False
        if not bool(active.any()):
            break
    return alphas, betas, steps


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
        self.num_products += 1
        return self.matrix @ v

    def matmat(self, V: Tensor) -> Tensor:
        self.num_products += V.shape[1]
        return self.matrix @ V
