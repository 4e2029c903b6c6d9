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

from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from lightning_landscape.curvature._checks import DEFAULT_TOL, check_choice, check_k_tol
from lightning_landscape.curvature._inputs import make_generator
from lightning_landscape.curvature.krylov import (
    LinearOperator,
    _floor,
    _Lanczos,
    random_vector,
)

Which = Literal["largest", "smallest", "both"]
Backend = Literal["lanczos", "power", "pyhessian"]
WHICH = ("largest", "smallest", "both")
BACKENDS = ("lanczos", "power", "pyhessian")
_POWER_MAX_ITER = 1000


@dataclass(frozen=True)
class EigenResult:
    r"""Extreme eigenvalues of a Hessian, each with its residual bound and whether it converged.

    Attributes:
        eigenvalues: ``"largest"`` and ``"both"``: the top-k, descending; ``"smallest"``: the bottom-k,
            ascending (float64, CPU).
        smallest: for ``which="both"`` the bottom-k, ascending; otherwise ``None``.
        eigenvectors: ``[k, n]`` unit eigenvectors matching ``eigenvalues`` (parameters' dtype and device)
            when asked for, else ``None``.
        smallest_eigenvectors: for ``which="both"`` the ``[k, n]`` eigenvectors matching ``smallest``.
        num_products: Hessian-vector products spent.
        converged: every returned value met the residual bound ``tol * |value|`` (all of ``value_converged``
            and ``smallest_converged``).
        backend: the solver that produced the values.
        residuals: per value of ``eigenvalues``, an upper bound on :math:`\|Hv - \lambda v\|` of its
            (Ritz) vector: some eigenvalue of :math:`H` lies within it (float64, CPU).
        value_converged: per value of ``eigenvalues``, whether its residual met the tolerance (bool).
        smallest_residuals: the same as ``residuals`` for ``smallest``.
        smallest_converged: the same as ``value_converged`` for ``smallest``.
    """

    eigenvalues: Tensor
    smallest: Tensor | None = None
    eigenvectors: Tensor | None = None
    smallest_eigenvectors: Tensor | None = None
    num_products: int = 0
    converged: bool = False
    backend: str = "lanczos"
    residuals: Tensor | None = None
    value_converged: Tensor | None = None
    smallest_residuals: Tensor | None = None
    smallest_converged: Tensor | None = None


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
    *,
    k: int = 1,
    which: Which = "largest",
    tol: float = DEFAULT_TOL,
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
        An :class:`EigenResult` with per-value residual bounds; ``num_products`` counts this call's
        products.

    Raises:
        TypeError: if ``v0`` is not a tensor.
        ValueError: for ``k`` not in ``1..n-1``, ``tol <= 0``, a bad ``which`` or ``max_iter``, or a ``v0``
            with the wrong shape, non-finite entries, a zero row or rows that cancel.

    Example:
        >>> from lightning_landscape.curvature.krylov import DenseOperator
        >>> op = DenseOperator(torch.diag(torch.arange(10.0, dtype=torch.float64)))
        >>> res = lanczos(op, k=2, which="both", tol=1e-8)
        >>> res.eigenvalues.round(decimals=8).tolist(), res.smallest.round(decimals=8).tolist(), res.converged
        ([9.0, 8.0], [0.0, 1.0], True)
        >>> bool(res.value_converged.all()), bool((res.residuals <= 1e-8 * 9).all())
        (True, True)
    """
    n = op.num_params
    check_k_tol(k, tol, n, max_iter)
    check_choice("which", which, WHICH)
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
    residuals = run.bounds(S).to(torch.float64)
    if m >= n:  # the basis spans the space: the values are exact
        residuals = torch.zeros_like(residuals)
    accepted = _accepted(theta, residuals, tol, floor, float(theta.abs().max()))
    converged = (
        converged and bool(accepted[top].all()) and (which == "largest" or bool(accepted[bottom].all()))
    )
    if which == "smallest":
        return EigenResult(
            eigenvalues=theta[bottom].clone(),
            eigenvectors=run.vectors(S, bottom) if return_eigenvectors else None,
            num_products=run.steps,
            converged=converged,
            backend="lanczos",
            residuals=residuals[bottom].clone(),
            value_converged=accepted[bottom].clone(),
        )
    both = which == "both"
    return EigenResult(
        eigenvalues=theta[top].clone(),
        smallest=theta[bottom].clone() if both else None,
        eigenvectors=run.vectors(S, top) if return_eigenvectors else None,
        smallest_eigenvectors=run.vectors(S, bottom) if return_eigenvectors and both else None,
        num_products=run.steps,
        converged=converged,
        backend="lanczos",
        residuals=residuals[top].clone(),
        value_converged=accepted[top].clone(),
        smallest_residuals=residuals[bottom].clone() if both else None,
        smallest_converged=accepted[bottom].clone() if both else None,
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
) -> tuple[float, Tensor, bool, float]:
    """Dominant eigenpair of ``sign * H + shift * I`` on the complement of ``found``.

    Returns H's value, the vector, whether it converged and its residual :math:`\\|Hv - \theta v\\|`.
    """
    basis = torch.stack(found) if found else None

    def project(x: Tensor) -> Tensor:
        if basis is not None:
            x = x - basis.T @ (basis @ x)
        return x / torch.linalg.vector_norm(x)

    v = project(random_vector(op, gen) if start is None else start)
    theta, residual = 0.0, float("inf")
    floor = _floor(op.dtype)
    for _ in range(max_iter):
        hv = op.matvec(v)
        theta = float(torch.dot(hv, v))
        residual = float(torch.linalg.vector_norm(project_raw(hv - theta * v, basis)))
        if residual <= tol * max(abs(theta), floor * max(scale, abs(theta))):
            return theta, v, True, residual
        v = project(sign * hv + shift * v)
    return theta, v, False, residual


def project_raw(x: Tensor, basis: Tensor | None) -> Tensor:
    """``x`` minus its component in the span of the (orthonormal) rows of ``basis``."""
    if basis is None:
        return x
    return x - basis.T @ (basis @ x)


_Found = tuple[list[float], list[Tensor], list[bool], list[float]]


def power_iteration(
    op: LinearOperator,
    *,
    k: int = 1,
    which: Which = "largest",
    tol: float = DEFAULT_TOL,
    max_iter: int | None = None,
    seed: int = 0,
    return_eigenvectors: bool = False,
    v0: Tensor | None = None,
) -> EigenResult:
    """Extreme eigenvalues by power iteration with deflation (for comparison with Lanczos).

    A first run finds the dominant eigenvalue :math:`\\lambda_d` (largest magnitude) and so the spectral
    radius :math:`\rho = |\\lambda_d|`. The algebraically largest values are then the dominant ones of
    :math:`H + \rho I` and the smallest those of :math:`\rho I - H`; each is found in turn on the
    orthogonal complement of those already found. A value is accepted when
    :math:`\\|Hv - \theta v\\| \\le \\mathrm{tol}\\,|\theta|` (the same guarantee as Lanczos).

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

    Returns:
        An :class:`EigenResult` whose ``residuals`` are the measured :math:`\\|Hv - \theta v\\|`.

    Raises:
        TypeError: if ``v0`` is not a tensor.
        ValueError: for ``k`` not in ``1..n-1``, ``tol <= 0``, a bad ``which`` or ``max_iter``, or a ``v0``
            with the wrong shape, non-finite entries, a zero row or rows that cancel.

    Example:
        >>> from lightning_landscape.curvature.krylov import DenseOperator
        >>> op = DenseOperator(torch.diag(torch.tensor([3.0, 1.0, -2.0], dtype=torch.float64)))
        >>> res = power_iteration(op, k=1, which="both", tol=1e-6)
        >>> round(float(res.eigenvalues[0]), 4), round(float(res.smallest[0]), 4), res.converged
        (3.0, -2.0, True)
    """
    check_k_tol(k, tol, op.num_params, max_iter)
    check_choice("which", which, WHICH)
    if v0 is not None:
        check_start_vector(v0, op.num_params)
    iters = _POWER_MAX_ITER if max_iter is None else max_iter
    gen = make_generator(seed)
    start = getattr(op, "num_products", 0)
    first = None if v0 is None else warm_start_vector(op, v0, gen)
    lam_d, v_d, ok_d, res_d = _power_one(op, 0.0, 1.0, [], tol, iters, gen, 0.0, first)
    rho = abs(lam_d)

    def end(sign: float) -> _Found:
        values: list[float] = []
        vectors: list[Tensor] = []
        oks: list[bool] = []
        residuals: list[float] = []
        if ok_d and sign * lam_d > 0:
            values.append(lam_d)
            vectors.append(v_d)
            oks.append(True)
            residuals.append(res_d)
        while len(values) < k:
            lam, v, ok, res = _power_one(
                op, rho, sign, vectors, tol, iters, gen, rho, None if vectors else first
            )
            values.append(lam)
            vectors.append(v)
            oks.append(ok)
            residuals.append(res)
        return values, vectors, oks, residuals

    def pack(found: _Found, descending: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        values, vectors, oks, residuals = found
        order = sorted(range(len(values)), key=lambda i: values[i], reverse=descending)
        return (
            torch.tensor([values[i] for i in order], dtype=torch.float64),
            torch.stack([vectors[i] for i in order]),
            torch.tensor([oks[i] for i in order], dtype=torch.bool),
            torch.tensor([residuals[i] for i in order], dtype=torch.float64),
        )

    top = pack(end(1.0), True) if which in ("largest", "both") else None
    bottom = pack(end(-1.0), False) if which in ("smallest", "both") else None
    num_products = getattr(op, "num_products", 0) - start
    main, other = (bottom, None) if top is None else (top, bottom)
    assert main is not None
    converged = ok_d and bool(main[2].all()) and (other is None or bool(other[2].all()))
    return EigenResult(
        eigenvalues=main[0],
        smallest=None if other is None else other[0],
        eigenvectors=main[1] if return_eigenvectors else None,
        smallest_eigenvectors=other[1] if return_eigenvectors and other is not None else None,
        num_products=num_products,
        converged=converged,
        backend="power",
        residuals=main[3],
        value_converged=main[2],
        smallest_residuals=None if other is None else other[3],
        smallest_converged=None if other is None else other[2],
    )


def _accepted(values: Tensor, bounds: Tensor, tol: float, floor: float, scale: float) -> Tensor:
    """Per value: does its residual bound meet ``tol * max(|value|, floor * scale)``?"""
    return bounds <= tol * torch.clamp(values.abs(), min=floor * scale)


__all__ = [
    "Backend",
    "EigenResult",
    "LinearOperator",
    "Which",
    "lanczos",
    "power_iteration",
]
