"""Hutchinson, Hutch++ and XTrace: unbiased, exact where they must be, and XTrace's algebra by definition."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_landscape.curvature import (
    DenseOperator,
    HessianOperator,
    hessian_trace,
    hutchinson,
    hutchpp,
    xtrace,
)
from lightning_landscape.curvature.algorithms.trace import MIN_BUDGET, trace_of
from tests.curvature.cases import case, truth

pytestmark = pytest.mark.filterwarnings("ignore:enable_nested_tensor is True")

DTYPE = torch.float64


def decaying(n: int = 60, seed: int = 0) -> torch.Tensor:
    """A symmetric matrix with a few large eigenvalues and a long tail (like a network's Hessian)."""
    gen = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=DTYPE))
    ev = 10.0 * torch.arange(1, n + 1, dtype=DTYPE) ** -1.5 - 0.05
    return (Q * ev) @ Q.T


@pytest.mark.parametrize("name", ["relu_trained", "cnn_bn", "transformer"])
def test_trace_within_three_standard_errors(name: str) -> None:
    c, ev = case(name), truth(name)
    res = hessian_trace(c.model, c.loss_fn, c.batches, num_samples=60, seed=0)
    assert res.num_samples == 60 and res.num_products == 60 and res.samples.shape == (60,)
    assert res.std_error > 0
    assert abs(res.trace - float(ev.sum())) <= 3 * res.std_error
    # The standard error is that of the mean: the sample spread over sqrt(N).
    assert math.isclose(res.std_error, float(res.samples.std()) / math.sqrt(60), rel_tol=1e-12)


def test_trace_of_diagonal_hessian_is_exact() -> None:
    # z^T D z = tr D for every Rademacher z: zero variance, an analytic check of the estimator.
    w = torch.nn.Parameter(torch.tensor([1.0, -2.0, 3.0], dtype=torch.float64))
    model = torch.nn.Module()
    model.w = w
    res = hessian_trace(
        model, lambda m, b: (b * m.w**2).sum() / 2, [torch.tensor([1.0, 2.0, 5.0])], num_samples=5
    )
    assert res.trace == pytest.approx(8.0, abs=1e-12) and res.std_error == pytest.approx(0.0, abs=1e-12)


ESTIMATORS = {
    "hutchinson": lambda op, seed: hutchinson(op, num_samples=12, seed=seed),
    "hutchpp": lambda op, seed: hutchpp(op, num_products=12, seed=seed),
    "xtrace": lambda op, seed: xtrace(op, num_products=12, seed=seed),
}


@pytest.mark.parametrize("method", list(ESTIMATORS))
def test_unbiased_with_calibrated_standard_error(method: str) -> None:
    A = decaying()
    exact = float(A.trace())
    runs = [ESTIMATORS[method](DenseOperator(A), seed) for seed in range(300)]
    est = torch.tensor([r.trace for r in runs], dtype=DTYPE)
    spread = float(est.std())
    # Unbiased: the mean of 300 estimates is within 4 of its standard errors of the trace.
    assert abs(float(est.mean()) - exact) <= 4 * spread / math.sqrt(len(runs))
    # The reported standard error matches the spread of the estimates (within a factor 2 on average).
    reported = float(torch.tensor([r.std_error for r in runs]).mean())
    assert 0.5 * spread <= reported <= 2.0 * spread, (reported, spread)
    assert all(r.num_products == 12 and r.method == method for r in runs)


def test_variance_reduction_at_equal_budget() -> None:
    A = decaying()
    exact = float(A.trace())
    errors = {
        name: float(torch.tensor([abs(f(DenseOperator(A), s).trace - exact) for s in range(100)]).median())
        for name, f in ESTIMATORS.items()
    }
    # The top of the spectrum dominates Hutchinson's variance; the sketching estimators take it exactly.
    assert errors["hutchpp"] < 0.5 * errors["hutchinson"]
    assert errors["xtrace"] < 0.5 * errors["hutchinson"]


def test_low_rank_is_exact_and_large_budget_is_exact() -> None:
    gen = torch.Generator().manual_seed(3)
    B = torch.randn(60, 5, generator=gen, dtype=DTYPE)
    A = B @ B.T  # rank 5
    exact = float(A.trace())
    assert hutchpp(DenseOperator(A), num_products=18).trace == pytest.approx(exact, rel=1e-12)  # sketch of 6
    res = xtrace(DenseOperator(A), num_products=14)  # 7 test vectors
    assert res.trace == pytest.approx(exact, rel=1e-10) and res.std_error <= 1e-10 * exact
    full = decaying()
    for f in (hutchpp, xtrace):
        op = DenseOperator(full)
        big = f(op, num_products=60)
        assert big.method == "exact" and big.std_error == 0.0 and op.num_products == 60
        assert big.trace == pytest.approx(float(full.trace()), rel=1e-12)


def test_xtrace_samples_match_the_definition() -> None:
    """Each exchangeable estimate, computed naively: the trace on the basis without omega_i, plus omega_i's
    Hutchinson term on its complement, rescaled to a sphere-normalized vector."""
    A, n, m, seed = decaying(), 60, 6, 5
    res = xtrace(DenseOperator(A), num_products=2 * m, seed=seed)
    gen = torch.Generator().manual_seed(seed)
    Om = torch.randn(m, n, generator=gen, dtype=DTYPE).T
    Om = math.sqrt(n) * Om / Om.norm(dim=0, keepdim=True)
    Y = A @ Om
    for i in range(m):
        Qi, _ = torch.linalg.qr(torch.cat([Y[:, :i], Y[:, i + 1 :]], dim=1))
        P = torch.eye(n, dtype=DTYPE) - Qi @ Qi.T
        w = P @ Om[:, i]
        w = w * math.sqrt((n - m + 1) / float(w @ w))
        want = float(torch.trace(Qi.T @ A @ Qi) + w @ A @ w)
        assert float(res.samples[i]) == pytest.approx(want, rel=1e-10, abs=1e-12), i


@pytest.mark.parametrize("method", ["hutchpp", "xtrace"])
@pytest.mark.parametrize("name", ["relu_trained", "cnn_bn"])
def test_model_trace_against_dense(name: str, method: str) -> None:
    c = case(name)
    exact = float(
        truth(name).sum()
    )  # the dense eigenvalues' sum, cached per process (shared with other tests)
    res = hessian_trace(c.model, c.loss_fn, c.batches, num_samples=30, method=method)  # type: ignore[arg-type]
    assert res.num_products == 30 and res.method == method
    assert abs(res.trace - exact) <= 5 * res.std_error + 1e-9 * abs(exact)


def test_estimators_batch_their_products() -> None:
    c = case("relu_init")
    op = HessianOperator(c.model, c.loss_fn, c.batches)
    calls: list[int] = []
    matmat = op.matmat
    op.matmat = lambda V: (calls.append(V.shape[1]), matmat(V))[1]  # type: ignore[method-assign]
    hutchinson(op, num_samples=40, block_size=16)
    assert calls == [16, 16, 8]
    with pytest.raises(ValueError, match="`num_products` must be an integer >= 4, got 3"):
        xtrace(op, num_products=3)
    with pytest.raises(ValueError, match="`method` must be one of"):
        hessian_trace(c.model, c.loss_fn, c.batches, method="exact")  # type: ignore[arg-type]


@pytest.mark.parametrize("method", list(MIN_BUDGET))
def test_trace_of_picks_the_estimator_and_checks_the_budget(method: str) -> None:
    A = decaying()
    direct = {"hutchinson": lambda: hutchinson(DenseOperator(A), num_samples=12, seed=4)}
    direct["hutchpp"] = lambda: hutchpp(DenseOperator(A), num_products=12, seed=4)
    direct["xtrace"] = lambda: xtrace(DenseOperator(A), num_products=12, seed=4)
    got = trace_of(DenseOperator(A), method=method, num_samples=12, seed=4)  # type: ignore[arg-type]
    assert got.method == method and got.trace == direct[method]().trace
    low = MIN_BUDGET[method] - 1
    with pytest.raises(ValueError, match=f"`num_samples` must be an integer >= {low + 1}, got {low}"):
        trace_of(DenseOperator(A), method=method, num_samples=low)  # type: ignore[arg-type]
