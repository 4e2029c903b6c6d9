r"""The one Lanczos kernel: full reorthogonalization, restartable blocks, several runs advanced together.

Lanczos builds an orthonormal basis :math:`Q_m` of the Krylov space
:math:`\operatorname{span}\{v, Hv, \dots, H^{m-1}v\}` and the projected matrix :math:`M = Q_m^\top H Q_m`
(tridiagonal for one Krylov sequence). :class:`LanczosRun` is one run; every Lanczos of the package is made
of it: :func:`~.lanczos.lanczos` (extreme eigenvalues, restarting blocks to find repeated ones) steps one
run, and :func:`lanczos_tridiagonal` (the kernel of stochastic Lanczos quadrature, :func:`~.slq.slq`)
steps several runs with one batched product per step.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from lightning_landscape.curvature._checks import check_int
from lightning_landscape.curvature.operators.base import (
    LinearOperator,
    apply_block,
    matvec_into,
    random_vector,
)

# Rows a bounded basis reserves (and adds at a time) beyond `max_basis + 1` for the copies search. Reserved
# rows are never written unless used (on the CPU they take no resident memory until then).
_COPIES_ROOM = 4


class LanczosRun:
    r"""Lanczos with full reorthogonalization (classical Gram-Schmidt, twice) and restartable blocks.

    :meth:`step` takes one step; on breakdown (an invariant subspace: its Ritz values are exact) it sets
    :attr:`broke_down` and the caller decides: stop there (quadrature) or :meth:`new_block` (extreme
    eigenvalues). A new block starts from a random vector orthogonal to the basis, also on request (to look
    for further copies of repeated eigenvalues, which one Krylov sequence cannot see). The projected matrix
    :math:`M = Q^\top H Q` stays exact: tridiagonal within blocks, plus the couplings :math:`f_e^\top q_j`
    between the residual :math:`f_e` left at the end :math:`e` of an earlier block and each later basis
    vector :math:`q_j`.

    With ``max_basis`` the basis is bounded (thick restart, Wu and Simon 2000): :meth:`restart` replaces the
    basis by chosen Ritz vectors :math:`Y = Q S_\mathrm{keep}` and the next Lanczos vector :math:`q`, and
    :math:`M` by the arrow matrix :math:`\operatorname{diag}(\theta_\mathrm{keep})` coupled to :math:`q`
    by :math:`\beta s_{m, \mathrm{keep}}`. :math:`HQ = QM + \beta q e^\top` holds on, so the residual
    bounds keep their meaning; memory stays at ``max_basis + 1`` parameter-sized vectors (the basis is held in
    the operator's dtype, on its device, never copied whole: :meth:`restart` rewrites it in column chunks).

    Args:
        op: a symmetric operator.
        v0: the start vector (any non-zero norm; normalized here).
        max_steps: the most steps (capped at ``n``).
        max_basis: the most basis vectors before a :meth:`restart` is possible (``None``: unbounded).

    Example:
        >>> from lightning_landscape.curvature.operators.base import DenseOperator
        >>> run = LanczosRun(DenseOperator(torch.diag(torch.arange(1.0, 5.0, dtype=torch.float64))),
        ...                  torch.ones(4, dtype=torch.float64), 4)
        >>> for _ in range(4):
        ...     run.step()
        >>> run.ritz()[0].round(decimals=8).tolist()
        [1.0, 2.0, 3.0, 4.0]
    """

    def __init__(self, op: LinearOperator, v0: Tensor, max_steps: int, max_basis: int | None = None) -> None:
        self.op = op
        self.max_steps = min(max_steps, op.num_params)
        self.max_basis = None if max_basis is None or max_basis >= self.max_steps else max(int(max_basis), 3)
        #: Products taken (``steps`` is the basis size, which a restart shrinks).
        self.products = 0
        self.restarts = 0
        # The basis grows as it goes (a whole parameter-sized vector per step): start small.
        # Bounded: room for the copies search too (a second block cannot restart), so that its few steps
        # need no torch.cat of the basis (old and new copies alive together: the peak of a bounded probe).
        bounded = 8 if self.max_basis is None else self.max_basis + 1 + _COPIES_ROOM
        self.capacity = min(self.max_steps + 1, bounded)
        self.Q = torch.empty(self.capacity, op.num_params, dtype=op.dtype, device=op.device)
        self.Q[0].copy_(v0).div_(torch.linalg.vector_norm(v0))
        self.alphas: list[float] = []
        self.betas: list[float] = []  # betas[j] couples step j and j+1 (0 at a block boundary)
        self.residual = 0.0  # |beta| of the last step: the factor of the residual bounds
        self.steps = 0
        self.broke_down = False  # the last step found an invariant subspace
        self.block_start = 0
        self.ends: list[tuple[int, Tensor]] = []  # (index, residual f_e kept orthogonal to later q)
        # The residual f of the last step is Q[steps] * _scale (1 until normalized: breakdown).
        self._scale = 1.0
        # M itself, kept up to date entry by entry (rebuilding it for every Ritz check costs more than the
        # small eigh); leading m x m block after m steps.
        self.M = torch.zeros(self.capacity, self.capacity, dtype=torch.float64)
        self._ritz_cache: dict[int, tuple[Tensor, Tensor]] = {}

    @property
    def current(self) -> Tensor:
        """The basis vector the next step multiplies."""
        return self.Q[self.steps]

    def _orthogonalize(self, w: Tensor, m: int) -> float:
        # Classical Gram-Schmidt, repeated once only where it is needed (Daniel, Gragg, Kaufman and Stewart
        # 1976): when the pass removed more than 1 - 1/sqrt(2) of w's norm. In place: one basis-sized read
        # per pass, no parameter-sized temporaries (this is most of a large model's non-product time).
        # Returns the norm of the result.
        basis = self.Q[:m]
        before = float(torch.linalg.vector_norm(w))
        for _ in range(2):
            w.addmv_(basis.T, basis @ w, alpha=-1.0)
            after = float(torch.linalg.vector_norm(w))
            if after > 0.7071 * before:
                break
            before = after
        return after

    def _grow(self) -> None:
        """Make row ``steps + 1`` exist: the next product is written there."""
        if self.steps + 1 >= self.capacity:
            double = self.capacity * 2 if self.max_basis is None else self.capacity + _COPIES_ROOM
            grow = min(double, self.max_steps + 1) - self.capacity
            extra = torch.empty(grow, self.op.num_params, dtype=self.op.dtype, device=self.op.device)
            self.Q = torch.cat([self.Q, extra])
            M = torch.zeros(self.capacity + grow, self.capacity + grow, dtype=torch.float64)
            M[: self.capacity, : self.capacity] = self.M
            self.M = M
            self.capacity += grow

    def step(self, w: Tensor | None = None) -> None:
        """One step; ``w`` is the product of :attr:`current` if the caller computed it (else taken here)."""
        j = self.steps
        self._grow()
        q = self.Q[j]
        self._ritz_cache.clear()
        for e, f in self.ends:
            c = float(torch.dot(f, q))
            if c != 0.0:
                self.M[e, j] += c
                self.M[j, e] += c
                f.sub_(q, alpha=c)
        # The product goes straight into the next basis row and is made the next Lanczos vector there, in
        # place: no parameter-sized temporary per step (each would cost its page faults on the CPU).
        nxt = self.Q[j + 1]
        if w is None:
            matvec_into(self.op, q, nxt)
        else:
            nxt.copy_(w)
        w = nxt
        self.products += 1
        alpha = float(torch.dot(w, q))
        previous = self.betas[j - 1] if j > self.block_start else 0.0
        if previous != 0.0:
            # w -= alpha q_j + beta q_{j-1} in one pass over the two (adjacent) rows.
            coeffs = torch.tensor([previous, alpha], dtype=self.op.dtype, device=self.op.device)
            w.addmv_(self.Q[j - 1 : j + 1].T, coeffs, alpha=-1.0)
        else:
            w.sub_(q, alpha=alpha)
        beta = self._orthogonalize(w, j + 1)
        self.alphas.append(alpha)
        self.M[j, j] = alpha
        self.steps += 1
        self.residual = beta
        self.broke_down = False
        self._scale = 1.0
        if self.steps >= self.op.num_params:
            self.residual = 0.0
            return
        scale = max(abs(a) for a in self.alphas) + max(self.betas, default=0.0)
        if beta <= 10 * torch.finfo(self.op.dtype).eps * max(scale, 1e-300):
            self.broke_down = True
        else:
            self.betas.append(beta)
            self.M[j, j + 1] = beta
            self.M[j + 1, j] = beta
            w.div_(beta)
            self._scale = beta

    @property
    def can_restart(self) -> bool:
        """Whether the basis is full and may be restarted (a bounded run, one block, no breakdown)."""
        return (
            self.max_basis is not None
            and self.steps >= self.max_basis
            and not self.ends
            and not self.broke_down
            and self.steps < self.op.num_params
        )

    def restart(self, keep: Sequence[int]) -> None:
        """Thick restart: keep the Ritz vectors of the columns ``keep`` of the eigenvectors of M and go on
        from the current Lanczos vector (see the class docstring)."""
        m = self.steps
        theta, S = self.ritz()
        idx = sorted(set(keep))
        kept = len(idx)
        assert 0 < kept < m
        coeffs = S[:, idx].T.to(device=self.op.device, dtype=self.op.dtype)  # [l, m]
        n = self.op.num_params
        chunk = max(1, (1 << 22) // max(m, 1))  # a few MB of temporaries at a time
        for a in range(0, n, chunk):
            self.Q[:kept, a : a + chunk] = coeffs @ self.Q[:m, a : a + chunk]
        self.Q[kept] = self.Q[m]
        b = self.residual * S[m - 1, idx]
        self.M.zero_()
        self.M[range(kept), range(kept)] = theta[idx]
        self.M[:kept, kept] = b
        self.M[kept, :kept] = b
        self.alphas = [float(t) for t in theta[idx]]
        # The three-term recurrence's previous vector is replaced by the couplings b (held in M; the full
        # reorthogonalization of the next step removes those components).
        self.betas = [0.0] * kept
        self.steps = kept
        self.restarts += 1
        self._ritz_cache.clear()

    def new_block(self, gen: torch.Generator) -> None:
        """Go on from a random vector (``gen``) orthogonal to the basis; the residual becomes an end."""
        m = self.steps
        assert m < self.op.num_params
        if len(self.betas) == m:
            self.betas[-1] = 0.0
            self.M[m - 1, m] = 0.0
            self.M[m, m - 1] = 0.0
        else:
            self.betas.append(0.0)
        self.ends.append((m - 1, self.Q[m] * self._scale))
        row = self.Q[m]
        random_vector(self.op, gen, out=row)
        row.div_(self._orthogonalize(row, m))
        self.block_start = m
        self.residual = 0.0
        self.broke_down = False

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
        """The unit Ritz vectors ``Q s`` of the columns ``idx`` of ``S`` (rows, operator dtype and device)."""
        coeffs = S[:, list(idx)].to(device=self.op.device, dtype=self.op.dtype)
        vecs = (self.Q[: self.steps].T @ coeffs).T
        return vecs / torch.linalg.vector_norm(vecs, dim=1, keepdim=True)


def lanczos_tridiagonal(op: LinearOperator, V0: Tensor, num_steps: int) -> tuple[Tensor, Tensor, Tensor]:
    r"""Lanczos with full reorthogonalization from each column of ``V0``, all runs advanced together.

    Run ``r`` builds an orthonormal basis of the Krylov space of ``V0[:, r]`` and its tridiagonal
    :math:`T^{(r)} = Q_r^\top H Q_r`; each step applies the operator to one vector of every run at once
    (:func:`~.operators.base.apply_block`). A run whose Krylov space turns out invariant (breakdown,
    :math:`\beta \approx 0`) stops there: its :math:`T^{(r)}` is exact and shorter.

    Args:
        op: a symmetric operator.
        V0: ``[n, r]`` start vectors (any non-zero norm; normalized here).
        num_steps: the most steps per run (``<= n``), one product per run and step.

    Returns:
        ``(alphas, betas, steps)``: ``[r, m]`` diagonals, ``[r, m - 1]`` off-diagonals (float64, CPU; zero
        past a run's end) and ``[r]`` the steps each run took.

    Raises:
        ValueError: for ``num_steps < 1``.

    Example:
        >>> from lightning_landscape.curvature.operators.base import DenseOperator
        >>> op = DenseOperator(torch.diag(torch.arange(1.0, 6.0, dtype=torch.float64)))
        >>> alphas, betas, steps = lanczos_tridiagonal(op, torch.ones(5, 1, dtype=torch.float64), 5)
        >>> T = torch.diag(alphas[0]) + torch.diag(betas[0], 1) + torch.diag(betas[0], -1)
        >>> torch.linalg.eigvalsh(T).round(decimals=6).tolist()
        [1.0, 2.0, 3.0, 4.0, 5.0]
    """
    check_int("num_steps", num_steps)
    n, r = V0.shape
    m = min(num_steps, n)
    V0 = V0.to(device=op.device, dtype=op.dtype)
    runs = [LanczosRun(op, V0[:, i], m) for i in range(r)]
    active = list(runs)
    while active:
        W = apply_block(op, torch.stack([run.current for run in active], dim=1))
        for i, run in enumerate(active):
            run.step(W[:, i])
        active = [run for run in active if not run.broke_down and run.steps < m]
    alphas = torch.zeros(r, m, dtype=torch.float64)
    betas = torch.zeros(r, max(m - 1, 0), dtype=torch.float64)
    for i, run in enumerate(runs):
        alphas[i, : run.steps] = torch.tensor(run.alphas, dtype=torch.float64)
        betas[i, : run.steps - 1] = torch.tensor(run.betas[: run.steps - 1], dtype=torch.float64)
    steps = torch.tensor([run.steps for run in runs], dtype=torch.long)
    return alphas, betas, steps


__all__ = ["LanczosRun", "lanczos_tridiagonal"]
