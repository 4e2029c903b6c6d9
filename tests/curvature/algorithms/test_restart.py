"""Lanczos on a bounded basis (thick restart) against dense eigendecompositions.

Ground truth: ``torch.linalg.eigh`` of the matrix. What must hold with restarts as without: the values, the
residual bounds (an upper bound on the true ``||A v - theta v||`` of the returned vector), ``converged``;
and the basis never holds more than ``max_basis + 1`` vectors.
"""

from __future__ import annotations

import pytest
import torch

from lightning_landscape.curvature.algorithms.krylov import LanczosRun
from lightning_landscape.curvature.algorithms.lanczos import default_max_basis, lanczos
from lightning_landscape.curvature.operators.base import DenseOperator


def _matrix(n: int = 200, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    # Gaps at both ends, a near pair at the top, a cluster between (negative values: a saddle's).
    Q, _ = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=torch.float64))
    ends = torch.tensor([50.0, 40.0, 39.0, -20.0, -15.0], dtype=torch.float64)
    values = torch.cat([ends, torch.linspace(-5, 10, n - 5, dtype=torch.float64)])
    return (Q * values) @ Q.T


@pytest.mark.parametrize("which", ["largest", "smallest", "both"])
@pytest.mark.parametrize("max_basis", [7, 12])
def test_bounded_basis_gives_the_dense_values_and_honest_bounds(which: str, max_basis: int) -> None:
    A = _matrix()
    evals = torch.linalg.eigvalsh(A)
    res = lanczos(
        DenseOperator(A),
        k=2,
        which=which,
        tol=1e-8,
        max_basis=max_basis,
        max_iter=2000,
        return_eigenvectors=True,
    )
    want = evals[:2] if which == "smallest" else evals.flip(0)[:2]
    assert res.converged
    torch.testing.assert_close(res.eigenvalues, want, rtol=1e-7, atol=1e-9)
    if which == "both":
        assert res.smallest is not None
        torch.testing.assert_close(res.smallest, evals[:2], rtol=1e-7, atol=1e-9)
    assert res.eigenvectors is not None and res.residuals is not None
    for v, theta, bound in zip(res.eigenvectors, res.eigenvalues, res.residuals, strict=True):
        true = float(torch.linalg.vector_norm(A @ v - theta * v))
        assert true <= float(bound) * (1 + 1e-6) + 1e-12


def test_the_basis_never_outgrows_its_bound() -> None:
    A = _matrix()
    op = DenseOperator(A)
    run = LanczosRun(op, torch.ones(200, dtype=torch.float64), 100, max_basis=6)
    rows = set()
    while run.products < 60:
        run.step()
        rows.add(run.Q.shape[0])
        if run.can_restart:
            run.restart([run.steps - 2, run.steps - 1])
    assert rows == {11} and run.restarts > 0 and op.num_products == 60
    # The projected matrix is still Q^T A Q on the restarted basis (the invariant the bounds rest on).
    Q = run.Q[: run.steps]
    torch.testing.assert_close(Q @ A @ Q.T, run.M[: run.steps, : run.steps], rtol=0, atol=1e-10)


def test_small_models_keep_the_whole_basis() -> None:
    # Under 64 MiB of basis nothing restarts: the products are exactly those of plain Lanczos.
    assert default_max_basis(2_000, 1, 8) > 2_000
    A = _matrix()
    plain = lanczos(DenseOperator(A), k=1, tol=1e-10)
    big = lanczos(DenseOperator(A), k=1, tol=1e-10, max_basis=1000)
    assert plain.num_products == big.num_products
    torch.testing.assert_close(plain.eigenvalues, big.eigenvalues, rtol=0, atol=0)
