r"""Extreme eigenvalues of a Hessian: Lanczos (default), power iteration, or pyhessian behind one interface.

Lanczos builds an orthonormal basis :math:`Q_m` of the Krylov space
:math:`\operatorname{span}\{v, Hv, \dots, H^{m-1}v\}` and the tridiagonal :math:`T_m = Q_m^\top H Q_m`.
The eigenvalues :math:`\theta_i` of :math:`T_m` (Ritz values) approximate the extreme eigenvalues of
:math:`H`; with :math:`T_m s_i = \theta_i s_i` the residual of the Ritz vector :math:`Q_m s_i` is
:math:`\|H Q_m s_i - \theta_i Q_m s_i\| = |\beta_{m} \, s_{i,m}|`, and for a symmetric :math:`H` some true
eigenvalue lies within that distance of :math:`\theta_i`. A value is accepted when this bound is at most
``tol * |theta_i|``: every returned value of a converged result is within ``tol`` relative of an
eigenvalue of :math:`H`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import torch
from torch import Tensor, nn

from lightning_landscape.curvature.operator import (
    HessianOperator,
    LossFn,
    MemoryMode,
    trainable_parameters,
    validate_inputs,
)

Which = Literal["largest", "smallest", "both"]
Backend = Literal["lanczos", "power", "pyhessian"]
_WHICH = ("largest", "smallest", "both")
_BACKENDS = ("lanczos", "power", "pyhessian")
_POWER_MAX_ITER = 1000


class LinearOperator(Protocol):
    """What the solvers need: a symmetric ``matvec`` on flat vectors, its size, dtype and device."""

    num_params: int
    dtype: torch.dtype
    device: torch.device

    def matvec(self, v: Tensor) -> Tensor: ...


@dataclass
class EigenResult:
    """Extreme eigenvalues of a Hessian.

    Attributes:
        eigenvalues: ``"largest"`` and ``"both"``: the top-k, descending; ``"smallest"``: the bottom-k,
            ascending (float64, CPU).
        smallest: for ``which="both"`` the bottom-k, ascending; otherwise ``None``.
        eigenvectors: ``[k, n]`` unit eigenvectors matching ``eigenvalues`` (parameters' dtype and device)
            when asked for, else ``None``.
        smallest_eigenvectors: for ``which="both"`` the ``[k, n]`` eigenvectors matching ``smallest``.
        num_products: Hessian-vector products spent.
        converged: every returned value met the residual bound ``tol * |value|``.
        backend: the solver that produced the values.
    """

    eigenvalues: Tensor
    smallest: Tensor | None = None
    eigenvectors: Tensor | None = None
    smallest_eigenvectors: Tensor | None = None
    num_products: int = 0
    converged: bool = False
    backend: str = "lanczos"


def make_generator(seed: int) -> torch.Generator:
    """A private CPU generator: random vectors are drawn on the CPU (identical on every device)."""
    gen = torch.Generator(device="cpu")
    gen.manual_seed(int(seed))
    return gen


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


def default_max_iter(n: int, k: int) -> int:
    """Default Lanczos steps: ``min(n, max(100, 20 k))``."""
    return min(n, max(100, 20 * k))


# Weight of the random part of a warm start, relative to the unit warm vector. It gives every eigendirection a
# component of about WARM_MIX / sqrt(n) whatever v0 is, so a v0 that is (nearly) an eigenvector of a
# non-extreme eigenvalue, or orthogonal to a top direction that appeared since, still leaves Lanczos a seed to
# grow the extreme directions from (a cold start has 1 / sqrt(n)); and no start is an exact eigenvector, whose
# one-dimensional Krylov space breaks down at the first step (that path works too: a random block follows).
# A good v0 starts with error components of about WARM_MIX instead of 1: a small weight keeps most of the
# saving, a wrong v0 costs about log(1 / WARM_MIX) steps more. The seed alone cannot stop the residual test
# from accepting a wrong eigenvalue early when the spectrum is flat around it (residual ~ WARM_MIX * spread):
# the guarantee comes from `find_copies`, whose block from a random vector on the complement must fail to
# find anything beyond the accepted values before the result stands.
WARM_MIX = 1e-2


def check_start_vector(v0: Any, num_params: int) -> None:
    """Validate a warm start ``v0``: a flat ``[n]`` vector or a ``[j, n]`` block of non-zero finite rows.

    Raises:
        TypeError: if ``v0`` is not a tensor.
        ValueError: for a wrong shape, non-finite entries, a zero row or rows that sum to zero.
    """
    if not isinstance(v0, Tensor):
        raise TypeError(f"`v0` must be None or a tensor of shape [n] or [j, n], got {type(v0).__name__}.")
    shape = tuple(v0.shape)
    if not (
        (v0.dim() == 1 and shape[0] == num_params)
        or (v0.dim() == 2 and shape[0] >= 1 and shape[1] == num_params)
    ):
        raise ValueError(
            f"`v0` must have shape [n] or [j, n] with n = {num_params} (the number of trainable parameters), "
            f"got {list(shape)}."
        )
    if v0.is_complex() or not v0.is_floating_point():
        raise ValueError(f"`v0` must be a real floating-point tensor, got dtype {v0.dtype}.")
    if not bool(torch.isfinite(v0).all()):
        raise ValueError("`v0` must be finite, got NaN or infinite entries.")
    rows = v0.detach().reshape(-1, num_params)
    norms = torch.linalg.vector_norm(rows, dim=1)
    if bool((norms == 0).any()):
        raise ValueError("`v0` must have non-zero rows, got a zero vector.")
    if rows.shape[0] > 1 and float(torch.linalg.vector_norm((rows / norms[:, None]).sum(0))) <= 1e-6 * len(
        rows
    ):
        raise ValueError(
            "`v0`: the normalized rows sum to zero; pass one of them or vectors that do not cancel."
        )


def warm_start_vector(op: LinearOperator, v0: Tensor, gen: torch.Generator) -> Tensor:
    """The start vector for a warm start: the normalized sum of ``v0``'s unit rows plus a small random part.

    ``v0`` must have passed :func:`check_start_vector`. One Gaussian vector is drawn from ``gen``.
    """
    rows = v0.detach().reshape(-1, op.num_params).to(device=op.device, dtype=op.dtype)
    warm = (rows / torch.linalg.vector_norm(rows, dim=1, keepdim=True)).sum(0)
    warm = warm / torch.linalg.vector_norm(warm)
    noise = random_vector(op, gen)
    return warm + WARM_MIX * noise / torch.linalg.vector_norm(noise)


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


def _block_settled(run: _Lanczos, which: str, theta: Tensor, k: int, tol: float, floor: float) -> bool:
    """Has the newest block resolved its extreme Ritz value(s) at the wanted end(s)?

    Its extreme Ritz value approaches the extreme eigenvalue of the complement (where further copies
    live) from inside. It counts as resolved once its within-block residual bound meets ``tol``, or is
    below a tenth of its distance to the wanted set (then it is clearly not another copy).
    """
    t, s = run.ritz(run.block_start)
    bounds = (run.residual * s[-1, :]).abs()
    scale = float(theta.abs().max())
    ends: list[tuple[int, float]] = []
    if which in ("largest", "both"):
        ends.append((-1, float(theta[-min(k, theta.numel())]) - float(t[-1])))
    if which in ("smallest", "both"):
        ends.append((0, float(t[0]) - float(theta[min(k, theta.numel()) - 1])))
    for i, distance in ends:
        value, bound = float(t[i]), float(bounds[i])
        if not (bound <= tol * max(abs(value), floor * scale) or bound <= 0.1 * distance):
            return False
    return True


def _block_found_more(run: _Lanczos, which: str, theta: Tensor, k: int) -> bool:
    """Did the newest block's extreme value land among the wanted ones (a further copy, or better)?"""
    t, _ = run.ritz(run.block_start)
    found = False
    if which in ("largest", "both"):
        found |= float(t[-1]) >= float(theta[-min(k, theta.numel())])
    if which in ("smallest", "both"):
        found |= float(t[0]) <= float(theta[min(k, theta.numel()) - 1])
    return found


def lanczos(
    op: LinearOperator,
    k: int = 1,
    which: Which = "largest",
    tol: float = 1e-3,
    max_iter: int | None = None,
    seed: int = 0,
    return_eigenvectors: bool = False,
    find_copies: bool = True,
    v0: Tensor | None = None,
) -> EigenResult:
    """Extreme eigenvalues of a symmetric operator by Lanczos with full reorthogonalization.

    Stops when each wanted Ritz value :math:`\\theta_i` has residual bound
    :math:`r_i \\le \\mathrm{tol} \\cdot \\max(|\\theta_i|, \\sqrt{\\epsilon}\\,\\|M\\|)`,
    or after ``max_iter`` steps (``converged`` then says whether the bounds hold), or when the basis spans
    the whole space (exact). One run serves both ends for ``which="both"``.

    One Krylov sequence sees a single direction of each eigenspace, so of an eigenvalue repeated ``r``
    times it finds one copy. With ``find_copies`` (default), once the wanted values have converged a new
    block starts from a random vector orthogonal to the basis: it runs on the complement, where the
    further copies live, until its extreme Ritz value is resolved. If that value joins the wanted set,
    another block follows; otherwise the result stands. This costs a few products more and makes the
    values right on networks with symmetric units (e.g. a shallow ReLU net, whose Hessian repeats
    eigenvalues across units).

    Args:
        op: the operator (e.g. a :class:`HessianOperator`).
        k: how many eigenvalues at each wanted end.
        which: ``"largest"`` (algebraic), ``"smallest"`` (algebraic) or ``"both"``.
        tol: relative tolerance per eigenvalue.
        max_iter: the most steps (one product each); default ``min(n, max(100, 20 k))``.
        seed: seeds the private generator of the start vectors.
        return_eigenvectors: also return the Ritz vectors.
        find_copies: look for further copies of repeated eigenvalues (see above).
        v0: warm start: a flat vector of length ``n`` or a ``[j, n]`` block (e.g. the Ritz vectors of an
            earlier call at nearby weights); the run starts from the normalized sum of its unit rows plus a
            random part of relative weight ``WARM_MIX`` (0.01) from the seeded generator. With
            ``find_copies`` (whose random block checks the complement) any ``v0`` gives the right values and
            a good one needs fewer products; without it a ``v0`` near a wrong eigenvector can stop there.
            ``None`` (default): a random start.

    Returns:
        An :class:`EigenResult`; ``num_products`` counts this call's products.

    Raises:
        TypeError: if ``v0`` is not a tensor.
        ValueError: if ``v0`` has the wrong shape, non-finite entries, a zero row or rows that cancel.
    """
    n = op.num_params
    if v0 is not None:
        check_start_vector(v0, n)
    steps = default_max_iter(n, k) if max_iter is None else max_iter
    gen = make_generator(seed)
    start = random_vector(op, gen) if v0 is None else warm_start_vector(op, v0, gen)
    run = _Lanczos(op, start, steps, gen)
    need = min(n, 2 * k if which == "both" else k)
    floor = _floor(op.dtype)
    converged = False
    ok = False
    m = 0
    while run.steps < run.max_steps:
        run.step()
        m = run.steps
        if m >= n:
            converged = True
            break
        if m < need or run.restarted:
            continue
        theta, S = run.ritz()
        values, bounds = theta.tolist(), run.bounds(S).tolist()
        scale = max(abs(x) for x in values)
        wanted: list[int] = []
        if which in ("largest", "both"):
            wanted += list(range(m - 1, m - 1 - min(k, m), -1))
        if which in ("smallest", "both"):
            wanted += list(range(min(k, m)))
        ok = all(bounds[i] <= tol * max(abs(values[i]), floor * scale) for i in wanted)
        if not ok:
            continue
        if not find_copies:
            converged = True
            break
        if run.block_start == 0:
            run.new_block()
            continue
        if not _block_settled(run, which, theta, k, tol, floor):
            continue
        if _block_found_more(run, which, theta, k):
            run.new_block()
            continue
        converged = True
        break
    if not converged:
        converged = ok
    theta, S = run.ritz()
    m = run.steps
    top = list(range(m - 1, m - 1 - min(k, m), -1))
    bottom = list(range(min(k, m)))
    num_products = run.steps
    if which == "smallest":
        return EigenResult(
            eigenvalues=theta[bottom].clone(),
            eigenvectors=run.vectors(S, bottom) if return_eigenvectors else None,
            num_products=num_products,
            converged=converged,
            backend="lanczos",
        )
    return EigenResult(
        eigenvalues=theta[top].clone(),
        smallest=theta[bottom].clone() if which == "both" else None,
        eigenvectors=run.vectors(S, top) if return_eigenvectors else None,
        smallest_eigenvectors=run.vectors(S, bottom) if return_eigenvectors and which == "both" else None,
        num_products=num_products,
        converged=converged,
        backend="lanczos",
    )


def _power_one(
    op: LinearOperator,
    shift: float,
    sign: float,
    found: list[Tensor],
    tol: float,
    max_iter: int,
    gen: torch.Generator,
    scale: float,
    start: Tensor | None = None,
) -> tuple[float, Tensor, bool]:
    """Dominant eigenpair of ``sign * H + shift * I`` on the complement of ``found``; returns H's value."""
    basis = torch.stack(found) if found else None

    def project(x: Tensor) -> Tensor:
        if basis is not None:
            x = x - basis.T @ (basis @ x)
        return x / torch.linalg.vector_norm(x)

    v = project(random_vector(op, gen) if start is None else start)
    theta = 0.0
    floor = _floor(op.dtype)
    for _ in range(max_iter):
        hv = op.matvec(v)
        theta = float(torch.dot(hv, v))
        residual = float(torch.linalg.vector_norm(project_raw(hv - theta * v, basis)))
        if residual <= tol * max(abs(theta), floor * max(scale, abs(theta))):
            return theta, v, True
        v = project(sign * hv + shift * v)
    return theta, v, False


def project_raw(x: Tensor, basis: Tensor | None) -> Tensor:
    """``x`` minus its component in the span of the (orthonormal) rows of ``basis``."""
    if basis is None:
        return x
    return x - basis.T @ (basis @ x)


def power_iteration(
    op: LinearOperator,
    k: int = 1,
    which: Which = "largest",
    tol: float = 1e-3,
    max_iter: int | None = None,
    seed: int = 0,
    return_eigenvectors: bool = False,
    v0: Tensor | None = None,
) -> EigenResult:
    """Extreme eigenvalues by power iteration with deflation (for comparison with Lanczos).

    A first run finds the dominant eigenvalue :math:`\\lambda_d` (largest magnitude) and so the spectral
    radius :math:`\\rho = |\\lambda_d|`. The algebraically largest values are then the dominant ones of
    :math:`H + \\rho I` and the smallest those of :math:`\\rho I - H`; each is found in turn on the
    orthogonal complement of those already found. A value is accepted when
    :math:`\\|Hv - \\theta v\\| \\le \\mathrm{tol}\\,|\\theta|` (the same guarantee as Lanczos).

    Args:
        op: the operator.
        k: how many eigenvalues at each wanted end.
        which: ``"largest"``, ``"smallest"`` or ``"both"``.
        tol: relative tolerance per eigenvalue.
        max_iter: the most iterations per eigenvalue (default 1000).
        seed: seeds the private generator of the start vectors.
        return_eigenvectors: also return the eigenvectors.
        v0: warm start, as in :func:`lanczos` (the normalized sum of its unit rows plus a small seeded random
            part): it starts the dominant run and the first run at each wanted end (power iteration on
            :math:`\rho I - H` damps the top components of a vector that holds both ends); runs deflated
            against values already found start at random. ``None``: all start at random.

    Raises:
        TypeError: if ``v0`` is not a tensor.
        ValueError: if ``v0`` has the wrong shape, non-finite entries, a zero row or rows that cancel.
    """
    if v0 is not None:
        check_start_vector(v0, op.num_params)
    iters = _POWER_MAX_ITER if max_iter is None else max_iter
    gen = make_generator(seed)
    start = getattr(op, "num_products", 0)
    first = None if v0 is None else warm_start_vector(op, v0, gen)
    lam_d, v_d, ok_d = _power_one(op, 0.0, 1.0, [], tol, iters, gen, 0.0, first)
    rho = abs(lam_d)
    all_ok = ok_d

    def end(sign: float) -> tuple[list[float], list[Tensor]]:
        nonlocal all_ok
        values: list[float] = []
        vectors: list[Tensor] = []
        if ok_d and sign * lam_d > 0:
            values.append(lam_d)
            vectors.append(v_d)
        while len(values) < k:
            lam, v, ok = _power_one(op, rho, sign, vectors, tol, iters, gen, rho, None if vectors else first)
            all_ok = all_ok and ok
            values.append(lam)
            vectors.append(v)
        return values, vectors

    top = bottom = None
    if which in ("largest", "both"):
        top = end(1.0)
    if which in ("smallest", "both"):
        bottom = end(-1.0)

    def pack(values: list[float], vectors: list[Tensor], descending: bool) -> tuple[Tensor, Tensor]:
        order = sorted(range(len(values)), key=lambda i: values[i], reverse=descending)
        vals = torch.tensor([values[i] for i in order], dtype=torch.float64)
        return vals, torch.stack([vectors[i] for i in order])

    num_products = getattr(op, "num_products", 0) - start
    if which == "smallest":
        assert bottom is not None
        vals, vecs = pack(*bottom, descending=False)
        return EigenResult(
            vals, None, vecs if return_eigenvectors else None, None, num_products, all_ok, "power"
        )
    assert top is not None
    vals, vecs = pack(*top, descending=True)
    small = small_vecs = None
    if bottom is not None:
        small, small_vecs = pack(*bottom, descending=False)
    return EigenResult(
        vals,
        small,
        vecs if return_eigenvectors else None,
        small_vecs if return_eigenvectors else None,
        num_products,
        all_ok,
        "power",
    )


def check_int(name: str, value: Any, minimum: int = 1, optional: bool = False) -> None:
    """A ``ValueError`` naming ``name`` unless ``value`` is an int >= ``minimum`` (or None if optional)."""
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        allowed = ("None or " if optional else "") + f"an integer >= {minimum}"
        raise ValueError(f"`{name}` must be {allowed}, got {value!r}.")


def check_k_tol(k: Any, tol: Any, num_params: int, max_iter: Any = None) -> None:
    """Validate ``k``, ``tol`` and ``max_iter`` against the number of parameters."""
    check_int("k", k)
    if k >= num_params:
        raise ValueError(
            f"`k` must be below the number of trainable parameters ({num_params}): valid 1..{num_params - 1},"
            f" got {k}."
        )
    if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not math.isfinite(tol) or tol <= 0:
        raise ValueError(f"`tol` must be a finite number > 0, got {tol!r}.")
    check_int("max_iter", max_iter, optional=True)


def hessian_eigenvalues(
    model: nn.Module,
    loss_fn: LossFn,
    batches: Sequence[Any],
    k: int = 1,
    which: Which = "largest",
    tol: float = 1e-3,
    max_iter: int | None = None,
    backend: Backend = "lanczos",
    return_eigenvectors: bool = False,
    train_mode: bool = False,
    memory: MemoryMode = "auto",
    seed: int = 0,
    v0: Tensor | None = None,
) -> EigenResult:
    """Extreme eigenvalues of the Hessian of a model's mean loss over fixed batches.

    The Hessian is the one of :class:`HessianOperator` (batch-size-weighted mean of
    ``loss_fn(model, batch)``, trainable parameters only, eval mode unless ``train_mode``). The model is
    left exactly as found.

    Args:
        model: the model.
        loss_fn: ``loss_fn(model, batch) -> scalar tensor``.
        batches: a non-empty list of batches on the model's device.
        k: how many eigenvalues at each wanted end, ``1 <= k < number of trainable parameters``.
        which: ``"largest"`` (algebraically largest, top-k descending), ``"smallest"`` (most negative
            first, bottom-k ascending: a negative value says the point is a saddle) or ``"both"`` (top-k in
            ``eigenvalues``, bottom-k in ``smallest``).
        tol: relative tolerance per eigenvalue (> 0): a converged value is within ``tol * |value|`` of an
            eigenvalue.
        max_iter: Lanczos: the most steps (default ``min(n, max(100, 20 k))``); power: the most iterations
            per eigenvalue (default 1000); pyhessian: its ``maxIter`` per eigenvalue (default 100).
        backend: ``"lanczos"`` (default), ``"power"`` (power iteration with deflation and shifts) or
            ``"pyhessian"`` (pyhessian 0.1's power iteration, ``which="largest"`` only; needs the
            ``pyhessian`` extra).
        return_eigenvectors: also return unit eigenvectors (flat, parameters' dtype and device).
        train_mode: evaluate the loss with the model's own train/eval flags instead of eval mode.
        memory: ``"auto"``, ``"reuse"`` or ``"recompute"`` (see :class:`HessianOperator`).
        seed: seeds the private generator of start vectors (the global RNG is never touched).
        v0: warm start (Lanczos and power only): a flat vector of length ``n`` (the number of trainable
            parameters) or a ``[j, n]`` block, typically the ``eigenvectors`` (and ``smallest_eigenvectors``)
            of an earlier call at nearby weights; the solver starts from the normalized sum of its unit rows
            plus a 1% random part, so the values are right from any ``v0`` and take fewer products from a good
            one (see :func:`lanczos`). ``backend="pyhessian"`` draws its own start and refuses a ``v0``.

    Returns:
        An :class:`EigenResult`.

    Raises:
        TypeError: for a non-module model, a non-callable ``loss_fn``, batches that are not a list or a
            ``v0`` that is not a tensor.
        ValueError: for ``k < 1``, ``k >=`` the number of trainable parameters, ``tol <= 0``, a bad
            ``which``, ``backend``, ``memory`` or ``max_iter``, empty batches, no trainable parameters, a
            non-scalar loss, ``which != "largest"`` with ``backend="pyhessian"``, or a ``v0`` of the wrong
            shape, not finite, with a zero row or given with ``backend="pyhessian"``.
        NonFiniteError: if the loss or a Hessian-vector product is not finite.

    Example::

        >>> model = nn.Sequential(nn.Linear(1, 20), nn.ReLU(), nn.Linear(20, 1))
        >>> x = torch.rand(64, 1)
        >>> loss_fn = lambda m, b: nn.functional.mse_loss(m(b[0]), b[1])
        >>> res = hessian_eigenvalues(model, loss_fn, [(x, x**2 + 2 * x)], k=3)
        >>> res.eigenvalues.shape
        torch.Size([3])
    """
    batches = validate_inputs(model, loss_fn, batches)
    n = sum(p.numel() for p in trainable_parameters(model))
    check_k_tol(k, tol, n, max_iter)
    if which not in _WHICH:
        raise ValueError(f"`which` must be one of {_WHICH}, got {which!r}.")
    if backend not in _BACKENDS:
        raise ValueError(f"`backend` must be one of {_BACKENDS}, got {backend!r}.")
    if v0 is not None:
        if backend == "pyhessian":
            raise ValueError(
                "`v0` is not supported with backend='pyhessian' (it draws its own start vectors); "
                "use backend='lanczos' or 'power', or v0=None."
            )
        check_start_vector(v0, n)
    if backend == "pyhessian":
        from lightning_landscape.curvature._pyhessian import pyhessian_eigenvalues

        return pyhessian_eigenvalues(
            model, loss_fn, batches, k, which, tol, max_iter, return_eigenvectors, train_mode, seed
        )
    op = HessianOperator(model, loss_fn, batches, memory=memory, train_mode=train_mode, seed=seed)
    solver: Callable[..., EigenResult] = lanczos if backend == "lanczos" else power_iteration
    try:
        result = solver(op, k, which, tol, max_iter, seed, return_eigenvectors, v0=v0)
    finally:
        op.close()
    result.num_products = op.num_products
    return result


__all__ = [
    "Backend",
    "EigenResult",
    "LinearOperator",
    "Which",
    "hessian_eigenvalues",
    "lanczos",
    "power_iteration",
]
