"""The one Lanczos kernel against dense linear algebra: orthonormal bases, exact projections, breakdowns."""

from __future__ import annotations

import torch

from lightning_landscape.curvature import DenseOperator
from lightning_landscape.curvature._inputs import make_generator
from lightning_landscape.curvature.algorithms.krylov import LanczosRun, lanczos_tridiagonal
from tests.curvature.cases import DiagOperator

DT = torch.float64


def symmetric(n: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    A = torch.randn(n, n, generator=gen, dtype=DT)
    return (A + A.T) / 2


def test_run_builds_an_orthonormal_basis_and_its_exact_projection() -> None:
    A = symmetric(30)
    run = LanczosRun(DenseOperator(A), torch.ones(30, dtype=DT), 12)
    for _ in range(12):
        run.step()
    Q = run.Q[:12]
    torch.testing.assert_close(Q @ Q.T, torch.eye(12, dtype=DT), rtol=0, atol=1e-12)
    torch.testing.assert_close(run.M[:12, :12], Q @ A @ Q.T, rtol=0, atol=1e-10)
    # The residual bounds are the true residuals of the Ritz vectors (one Krylov sequence: equality).
    theta, S = run.ritz()
    X = run.vectors(S, range(12))
    true = torch.linalg.vector_norm(X @ A - theta[:, None] * X, dim=1)
    torch.testing.assert_close(run.bounds(S), true, rtol=1e-6, atol=1e-10)


def test_run_spanning_the_space_has_the_dense_eigenvalues() -> None:
    A = symmetric(20, seed=1)
    run = LanczosRun(DenseOperator(A), torch.randn(20, dtype=DT), 50)
    assert run.max_steps == 20
    while run.steps < run.max_steps:
        run.step()
    assert run.residual == 0.0
    torch.testing.assert_close(run.ritz()[0], torch.linalg.eigvalsh(A), rtol=0, atol=1e-10)


def test_breakdown_is_reported_and_a_new_block_finds_the_other_copy() -> None:
    # diag(5, 5, 2, 2, 2, -1) from a vector with equal components: 3 distinct values, so the Krylov space
    # is invariant after 3 steps; the run says so and leaves the choice to the caller.
    op = DiagOperator(torch.tensor([5.0, 5.0, 2.0, 2.0, 2.0, -1.0]))
    run = LanczosRun(op, torch.ones(6, dtype=DT), 6)
    for _ in range(3):
        run.step()
    assert run.broke_down and run.steps == 3
    torch.testing.assert_close(run.ritz()[0], torch.tensor([-1.0, 2.0, 5.0], dtype=DT), rtol=0, atol=1e-12)
    run.new_block(make_generator(0))
    assert run.block_start == 3 and not run.broke_down
    # The further blocks lie in the complement, where the second copies of 5 and 2 live.
    while run.steps < run.max_steps:
        run.step()
        if run.broke_down and run.steps < run.max_steps:
            run.new_block(make_generator(run.steps))
    torch.testing.assert_close(run.ritz()[0], op.values.sort().values, rtol=0, atol=1e-10)


def test_tridiagonal_runs_together_equal_runs_alone() -> None:
    A = symmetric(25, seed=2)
    V0 = torch.randn(25, 3, generator=torch.Generator().manual_seed(3), dtype=DT)
    op = DenseOperator(A)
    alphas, betas, steps = lanczos_tridiagonal(op, V0, 10)
    assert op.num_products == 30 and steps.tolist() == [10, 10, 10]
    for r in range(3):
        alone = LanczosRun(DenseOperator(A), V0[:, r], 10)
        for _ in range(10):
            alone.step()
        torch.testing.assert_close(alphas[r], torch.tensor(alone.alphas, dtype=DT), rtol=0, atol=1e-12)
        torch.testing.assert_close(betas[r], torch.tensor(alone.betas[:9], dtype=DT), rtol=0, atol=1e-12)


def test_tridiagonal_stops_a_run_at_breakdown() -> None:
    # A start vector in a 2-dimensional invariant subspace stops after 2 steps; its T is exact.
    op = DiagOperator(torch.tensor([3.0, 1.0, -2.0, 0.5]))
    V0 = torch.tensor([[1.0, 1.0], [1.0, 1.0], [0.0, 1.0], [0.0, 1.0]], dtype=DT)
    alphas, betas, steps = lanczos_tridiagonal(op, V0, 4)
    assert steps.tolist() == [2, 4] and op.num_products == 6
    T = torch.diag(alphas[0, :2]) + torch.diag(betas[0, :1], 1) + torch.diag(betas[0, :1], -1)
    torch.testing.assert_close(
        torch.linalg.eigvalsh(T), torch.tensor([1.0, 3.0], dtype=DT), rtol=0, atol=1e-12
    )
    assert float(alphas[0, 2:].abs().sum()) == 0.0 and float(betas[0, 1:].abs().sum()) == 0.0


class _IntoOnly(DenseOperator):
    """A dense operator whose products may only be written into the caller's buffer."""

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        raise AssertionError("LanczosRun must write its products in place (matvec_into)")

    def matvec_into(self, v: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        self.num_products += 1
        return torch.mv(self.matrix, v, out=out)


def test_run_writes_products_into_its_basis_and_keeps_it_exact() -> None:
    # The same steps as through matvec (DenseOperator: the copying fallback), then a copies block.
    values = torch.cat([torch.linspace(0.0, 1.0, 40, dtype=DT), torch.tensor([5.0, 5.0, 9.0], dtype=DT)])
    H = torch.diag(values)
    v0 = torch.ones(43, dtype=DT)
    into, plain = LanczosRun(_IntoOnly(H), v0, 20), LanczosRun(DenseOperator(H), v0, 20)
    for run in (into, plain):
        for _ in range(12):
            run.step()
        run.new_block(make_generator(0))  # after a regular step: the residual becomes an end
        for _ in range(6):
            run.step()
    torch.testing.assert_close(into.ritz()[0], plain.ritz()[0], rtol=0, atol=1e-12)
    Q = into.Q[: into.steps]
    torch.testing.assert_close(Q @ Q.T, torch.eye(into.steps, dtype=DT), rtol=0, atol=1e-12)
    m = into.steps
    torch.testing.assert_close(Q @ H @ Q.T, into.M[:m, :m], rtol=0, atol=1e-12)  # the exact projection
    assert into.op.num_products == 18  # type: ignore[attr-defined]
