r"""Extreme eigenvalues of a symmetric operator by Lanczos, on the one kernel :class:`~.krylov.LanczosRun`.

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

import torch
from torch import Tensor

from lightning_landscape.curvature._checks import DEFAULT_TOL, check_int
from lightning_landscape.curvature._inputs import make_generator
from lightning_landscape.curvature.algorithms._eigen import (
    Which,
    accepted,
    check_eigen_args,
    warm_start_vector,
    zero_floor,
)
from lightning_landscape.curvature.algorithms._three_term import three_term_lanczos
from lightning_landscape.curvature.algorithms.krylov import LanczosRun
from lightning_landscape.curvature.operators.base import LinearOperator, random_vector
from lightning_landscape.curvature.results import EigenResult


def default_max_iter(n: int, k: int) -> int:
    """Default Lanczos steps: ``min(n, max(100, 20 k))``."""
    return min(n, max(100, 20 * k))


# The basis may always hold this many bytes; past it, it is bounded at `2 need + 6` vectors (thick restarts),
# or not stored at all for one value per end (see `lanczos`).
BASIS_BYTES = 64 * 2**20


def default_max_basis(n: int, need: int, itemsize: int) -> int:
    """Default basis bound: ``max(2 need + 6, BASIS_BYTES // (n * itemsize))`` vectors.

    Small models keep the whole basis (no restart: the products are exactly those of plain Lanczos); large
    ones keep ``2 need + 6`` parameter-sized vectors (a top-5 of 16.8M float32 parameters: 16 x 67 MB)
    instead of one vector per product. A thick restart keeps the ``k + 2`` Ritz vectors nearest each wanted
    end, so a top-k gains ``k + 4`` new directions per cycle: with ``need + 6`` vectors (5 new per cycle)
    a top-5 of the 16.8M GPT-2 had not converged after the default 100 products, with ``2 need + 6`` it
    converges in 85.

    Example:
        >>> default_max_basis(10**8, 5, 4), default_max_basis(1000, 1, 8) > 1000
        (16, True)
    """
    return max(2 * need + 6, BASIS_BYTES // max(n * itemsize, 1))


def _block_settled(run: LanczosRun, which: str, theta: Tensor, k: int, tol: float, floor: float) -> bool:
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


def _block_found_more(run: LanczosRun, which: str, theta: Tensor, k: int) -> bool:
    """Did the newest block's extreme value land among the wanted ones (a further copy, or better)?"""
    t, _ = run.ritz(run.block_start)
    found = False
    if which in ("largest", "both"):
        found |= float(t[-1]) >= float(theta[-min(k, theta.numel())])
    if which in ("smallest", "both"):
        found |= float(t[0]) <= float(theta[min(k, theta.numel()) - 1])
    return found


def _keep(m: int, which: str, k: int) -> list[int]:
    """The Ritz indices (ascending values) a thick restart of an ``m``-vector basis keeps: ``k + 2`` at each
    wanted end, fewer if that would leave under two new vectors per restart (never under ``k``)."""
    ends = 2 if which == "both" else 1
    j = max(k, min(k + 2, (m - 2) // ends))
    keep: list[int] = []
    if which in ("largest", "both"):
        keep += list(range(m - j, m))
    if which in ("smallest", "both"):
        keep += list(range(j))
    return sorted(set(keep))


def lanczos(
    op: LinearOperator,
    *,
    k: int = 1,
    which: Which = "largest",
    tol: float = DEFAULT_TOL,
    max_iter: int | None = None,
    seed: int = 0,
    return_eigenvectors: bool = False,
    find_copies: bool = True,
    v0: Tensor | None = None,
    max_basis: int | None = None,
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
        max_basis: the most basis vectors kept (thick restart past it, keeping the ``k + 2`` Ritz vectors
            nearest each wanted end); ``0``: no stored basis (the three-term recurrence of
            :mod:`._three_term`: two parameter-sized vectors, ``k=1`` and no eigenvectors only). Default
            ``None``: :func:`default_max_basis`, unbounded for models under 64 MiB of basis; past that, no
            basis for ``k=1`` without eigenvectors (a top-1 or smallest-1 probe of a large model keeps two
            vectors, and the value of one eigenvalue cannot depend on its multiplicity, so no copies search
            is needed), and a bounded one otherwise. Residual bounds and ``converged`` mean the same on
            every path (without a basis to rounding, Paige 1980); the copies search (a second block) runs
            on an unbounded basis.

    Returns:
        An :class:`EigenResult` with per-value residual bounds; ``num_products`` counts this call's
        products.

    Raises:
        TypeError: if ``v0`` is not a tensor.
        ValueError: for ``k`` not in ``1..n-1``, ``tol <= 0``, a bad ``which``, ``max_iter`` or ``max_basis``
            (negative, or ``0`` with ``k > 1`` or ``return_eigenvectors``), or a ``v0`` with the wrong shape,
            non-finite entries, a zero row or rows that cancel.

    Example:
        >>> from lightning_landscape.curvature.operators.base import DenseOperator
        >>> op = DenseOperator(torch.diag(torch.arange(10.0, dtype=torch.float64)))
        >>> res = lanczos(op, k=2, which="both", tol=1e-8)
        >>> bottom = (res.smallest.round(decimals=8) + 0.0).tolist()  # + 0.0: no -0.0
        >>> res.eigenvalues.round(decimals=8).tolist(), bottom, res.converged
        ([9.0, 8.0], [0.0, 1.0], True)
        >>> bool(res.value_converged.all()), bool((res.residuals <= 1e-8 * 9).all())
        (True, True)
    """
    n = op.num_params
    check_eigen_args(n, k, which, tol, max_iter, v0)
    steps = default_max_iter(n, k) if max_iter is None else max_iter
    if max_basis is not None:
        check_int("max_basis", max_basis, minimum=0)
        if max_basis == 0 and (k != 1 or return_eigenvectors):
            raise ValueError(
                f"`max_basis=0` (no stored basis) finds one eigenvalue per end and no eigenvectors; got k={k}"
                f" and return_eigenvectors={return_eigenvectors}. Use max_basis >= {k + 3} or None."
            )
    gen = make_generator(seed)
    need = min(n, 2 * k if which == "both" else k)
    itemsize = torch.empty((), dtype=op.dtype).element_size()
    bound = default_max_basis(n, need, itemsize) if max_basis is None else max_basis
    if bound == 0 or (max_basis is None and k == 1 and not return_eigenvectors and bound < min(steps, n)):
        # One value per end, and a basis that would have to be bounded: keep no basis at all.
        ring = torch.empty(2, n, dtype=op.dtype, device=op.device)
        if v0 is None:
            random_vector(op, gen, out=ring[0])
        else:
            ring[0].copy_(warm_start_vector(op, v0, gen))
        return three_term_lanczos(op, ring, which, tol, steps)
    start = random_vector(op, gen) if v0 is None else warm_start_vector(op, v0, gen)
    run = LanczosRun(op, start, steps, max_basis=max(bound, need + 3))
    del start  # the run holds its own copy: one parameter-sized vector less for the whole run
    floor = zero_floor(op.dtype)
    converged = False
    ok = False
    m = 0
    while run.products < run.max_steps:
        run.step()
        m = run.steps
        if m >= n:
            converged = True
            break
        if run.broke_down:
            # Invariant subspace: its Ritz values are exact; continue in a fresh direction.
            run.new_block(gen)
            continue
        if m < need:
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
            if run.can_restart:
                run.restart(_keep(m, which, k))
            continue
        if not find_copies:
            converged = True
            break
        if run.block_start == 0:
            run.new_block(gen)
            continue
        if not _block_settled(run, which, theta, k, tol, floor):
            continue
        if _block_found_more(run, which, theta, k):
            run.new_block(gen)
            continue
        converged = True
        break
    if not converged:
        converged = ok
    theta, S = run.ritz()
    m = run.steps
    top = list(range(m - 1, m - 1 - min(k, m), -1))
    bottom = list(range(min(k, m)))
    residuals = run.bounds(S).to(torch.float64)
    if m >= n:  # the basis spans the space: the values are exact
        residuals = torch.zeros_like(residuals)
    good = accepted(theta, residuals, tol, floor, float(theta.abs().max()))
    # Each wanted end must have converged (and only the wanted ones: "smallest" asks nothing of the top).
    top_ok = which == "smallest" or bool(good[top].all())
    converged = converged and top_ok and (which == "largest" or bool(good[bottom].all()))
    if which == "smallest":
        return EigenResult(
            eigenvalues=theta[bottom].clone(),
            eigenvectors=run.vectors(S, bottom) if return_eigenvectors else None,
            num_products=run.products,
            converged=converged,
            backend="lanczos",
            residuals=residuals[bottom].clone(),
            value_converged=good[bottom].clone(),
        )
    both = which == "both"
    return EigenResult(
        eigenvalues=theta[top].clone(),
        smallest=theta[bottom].clone() if both else None,
        eigenvectors=run.vectors(S, top) if return_eigenvectors else None,
        smallest_eigenvectors=run.vectors(S, bottom) if return_eigenvectors and both else None,
        num_products=run.products,
        converged=converged,
        backend="lanczos",
        residuals=residuals[top].clone(),
        value_converged=good[top].clone(),
        smallest_residuals=residuals[bottom].clone() if both else None,
        smallest_converged=good[bottom].clone() if both else None,
    )


__all__ = ["default_max_iter", "lanczos"]
