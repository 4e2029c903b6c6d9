"""Lanczos on every case against dense float64 eigenvalues, on analytic operators, and warm-started."""

from __future__ import annotations

from typing import Any, Literal

import pytest
import torch

from lightning_landscape.curvature import EigenResult, HessianOperator, hessian_eigenvalues, lanczos
from lightning_landscape.curvature.algorithms import _eigen
from lightning_landscape.curvature.algorithms.lanczos import default_max_iter
from tests.curvature.cases import (
    CASE_NAMES,
    CountingLoss,
    DiagOperator,
    case,
    dense_hessian,
    moved,
    rel_err,
    ritz_block,
    truth,
)

pytestmark = pytest.mark.filterwarnings("ignore:enable_nested_tensor is True")

REL = 1e-4  # the accuracy asked for at tight tolerance


@pytest.mark.parametrize("name", CASE_NAMES)
def test_lanczos_top3_smallest_and_both(name: str) -> None:
    c, ev = case(name), truth(name)
    top = hessian_eigenvalues(c.model, c.loss_fn, c.batches, k=3, tol=1e-6, return_eigenvectors=True)
    assert top.converged and top.backend == "lanczos"
    assert rel_err(top.eigenvalues, ev.flip(0)[:3]) < REL
    assert torch.all(top.eigenvalues[:-1] >= top.eigenvalues[1:])  # descending
    assert top.num_products <= ev.numel()
    # Eigenvectors: unit norm, and H v = lambda v (checked with a fresh operator).
    op = HessianOperator(c.model, c.loss_fn, c.batches)
    assert top.eigenvectors is not None and top.eigenvectors.shape == (3, ev.numel())
    for lam, v in zip(top.eigenvalues.tolist(), top.eigenvectors, strict=True):
        assert abs(float(v.norm()) - 1) < 1e-10
        assert float((op.matvec(v) - lam * v).norm()) <= 1e-5 * abs(lam)

    low = hessian_eigenvalues(c.model, c.loss_fn, c.batches, k=1, which="smallest", tol=1e-6)
    assert low.converged and low.smallest is None
    assert rel_err(low.eigenvalues, ev[:1]) < REL

    both = hessian_eigenvalues(c.model, c.loss_fn, c.batches, k=1, which="both", tol=1e-6)
    assert both.smallest is not None and both.converged
    assert rel_err(both.eigenvalues, ev[-1:]) < REL and rel_err(both.smallest, ev[:1]) < REL
    # One Krylov run serves both ends: no more products than the two separate runs together.
    assert both.num_products <= top.num_products + low.num_products


@pytest.mark.parametrize("name", CASE_NAMES)
def test_lanczos_bottom3_ascending(name: str) -> None:
    # The ReLU cases repeat their smallest eigenvalue across hidden units: the copies must all be found.
    c, ev = case(name), truth(name)
    res = hessian_eigenvalues(c.model, c.loss_fn, c.batches, k=3, which="smallest", tol=1e-6)
    assert res.converged and rel_err(res.eigenvalues, ev[:3]) < REL
    assert torch.all(res.eigenvalues[:-1] <= res.eigenvalues[1:])


def test_lanczos_analytic_spectrum_and_max_iter() -> None:
    # Algebraically largest, not largest magnitude: -50 dominates in magnitude but is the smallest.
    values = torch.cat([torch.tensor([-50.0, 10.0, 9.0, 8.5]), torch.linspace(-1, 1, 496)])
    res = lanczos(DiagOperator(values), k=3, which="largest", tol=1e-8)
    assert res.converged
    assert torch.allclose(res.eigenvalues, torch.tensor([10.0, 9.0, 8.5], dtype=torch.float64), rtol=1e-8)
    both = lanczos(DiagOperator(values), k=1, which="both", tol=1e-8)
    assert both.converged and both.smallest is not None
    assert abs(float(both.eigenvalues[0]) - 10) < 1e-7 and abs(float(both.smallest[0]) + 50) < 5e-7
    # Starved of steps it says so instead of claiming accuracy.
    starved = lanczos(DiagOperator(values), k=3, which="largest", tol=1e-10, max_iter=4)
    assert not starved.converged and starved.num_products == 4


def test_lanczos_exhausted_krylov_space_is_exact_and_finds_copies() -> None:
    # A repeated top eigenvalue: the Krylov space of one vector is exhausted after 3 steps (3 distinct
    # values); the restart on breakdown finds the second copy.
    values = torch.tensor([5.0, 5.0, 2.0, 2.0, 2.0, -1.0])
    op = DiagOperator(values)
    res = lanczos(op, k=2, which="largest", tol=1e-10)
    assert res.converged
    assert torch.allclose(res.eigenvalues, torch.tensor([5.0, 5.0], dtype=torch.float64), atol=1e-12)
    full = lanczos(DiagOperator(values), k=5, which="smallest", tol=1e-10)
    assert torch.allclose(full.eigenvalues, values.sort().values[:5].double(), atol=1e-12)


def test_lanczos_finds_copies_of_repeated_eigenvalues() -> None:
    # relu_init: top-5 = 12.3, 3.56, then 3.45 repeated (one per always-active hidden unit).
    c, ev = case("relu_init"), truth("relu_init")
    assert float(ev[-3] - ev[-5]) < 1e-12  # the repeat is real
    op = HessianOperator(c.model, c.loss_fn, c.batches)
    plain = lanczos(op, k=5, tol=1e-6, find_copies=False)
    assert rel_err(plain.eigenvalues, ev.flip(0)[:5]) > 0.1  # one Krylov sequence sees one copy
    full = lanczos(HessianOperator(c.model, c.loss_fn, c.batches), k=5, tol=1e-6)
    assert full.converged and rel_err(full.eigenvalues, ev.flip(0)[:5]) < REL


def test_seed_reproducible_and_private() -> None:
    c = case("cnn_bn")
    a = hessian_eigenvalues(c.model, c.loss_fn, c.batches, k=2, tol=1e-3, seed=3)
    b = hessian_eigenvalues(c.model, c.loss_fn, c.batches, k=2, tol=1e-3, seed=3)
    assert isinstance(a, EigenResult)
    assert torch.equal(a.eigenvalues, b.eigenvalues) and a.num_products == b.num_products


# --- warm start -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "k", "which"),
    [
        ("relu_init", 1, "largest"),
        ("relu_init", 1, "both"),
        ("cnn_bn", 1, "largest"),
        ("cnn_bn", 1, "both"),
        ("cnn_bn", 3, "largest"),
        ("transformer", 1, "largest"),
        ("transformer", 1, "both"),
    ],
)
def test_warm_start_same_values_fewer_products(name: str, k: int, which: Literal["largest", "both"]) -> None:
    # The previous probe's Ritz vectors, then the weights move a little: the warm start must reach the
    # dense truth of the *new* Hessian as the cold start does, with fewer products.
    c = case(name)
    before = hessian_eigenvalues(
        c.model, c.loss_fn, c.batches, k=k, which=which, tol=1e-6, return_eigenvectors=True
    )
    moved(c)
    ev = torch.linalg.eigvalsh(dense_hessian(c))
    assert rel_err(before.eigenvalues, ev.flip(0)[:k]) > 2 * REL  # the Hessian did change
    cold = hessian_eigenvalues(c.model, c.loss_fn, c.batches, k=k, which=which, tol=1e-6)
    warm = hessian_eigenvalues(
        c.model, c.loss_fn, c.batches, k=k, which=which, tol=1e-6, v0=ritz_block(before)
    )
    for res in (cold, warm):
        assert res.converged and rel_err(res.eigenvalues, ev.flip(0)[:k]) < REL
        if which == "both":
            assert res.smallest is not None and rel_err(res.smallest, ev[:k]) < REL
    assert warm.num_products < cold.num_products, (warm.num_products, cold.num_products)


def test_warm_start_from_wrong_vectors_is_still_right() -> None:
    # relu_init: top-5 = 12.3, 3.56, then 3.45 repeated. Start from exact eigenvectors of the wrong
    # eigenvalues: of lambda_2 alone (Lanczos would stop at 3.56 without the random part), of the bottom of
    # the spectrum, and a block from the bulk.
    c = case("relu_init")
    ev, vecs = torch.linalg.eigh(dense_hessian(c))
    n = ev.numel()
    starts = {
        "second": vecs[:, -2],
        "bottom": vecs[:, 0],
        "bulk": vecs[:, n // 2 - 2 : n // 2 + 2].T.contiguous(),
    }
    for label, v0 in starts.items():
        top = hessian_eigenvalues(c.model, c.loss_fn, c.batches, k=1, tol=1e-6, v0=v0)
        assert top.converged and rel_err(top.eigenvalues, ev[-1:]) < REL, label
        top5 = hessian_eigenvalues(c.model, c.loss_fn, c.batches, k=5, tol=1e-6, v0=v0)
        assert top5.converged and rel_err(top5.eigenvalues, ev.flip(0)[:5]) < REL, label
        low = hessian_eigenvalues(c.model, c.loss_fn, c.batches, which="smallest", tol=1e-6, v0=-v0)
        assert low.converged and rel_err(low.eigenvalues, ev[:1]) < REL, label
        power = hessian_eigenvalues(
            c.model, c.loss_fn, c.batches, tol=1e-4, backend="power", max_iter=3000, v0=v0
        )
        assert power.converged and rel_err(power.eigenvalues, ev[-1:]) < REL, label
    # The same v0 gives the same result: the random part comes from the seeded private generator.
    a = hessian_eigenvalues(c.model, c.loss_fn, c.batches, k=2, tol=1e-3, v0=starts["bulk"], seed=5)
    b = hessian_eigenvalues(c.model, c.loss_fn, c.batches, k=2, tol=1e-3, v0=starts["bulk"], seed=5)
    assert torch.equal(a.eigenvalues, b.eigenvalues) and a.num_products == b.num_products


def test_warm_start_breakdown_opens_a_random_block(monkeypatch: pytest.MonkeyPatch) -> None:
    # Without the random part, an exact eigenvector spans an invariant subspace: Lanczos breaks down at the
    # first step and must go on from a fresh random block to find the true top.
    values = torch.cat([torch.tensor([-50.0, 10.0, 9.0, 8.5]), torch.linspace(-1, 1, 496)])
    e9 = torch.zeros(500, dtype=torch.float64)
    e9[2] = 1.0
    monkeypatch.setattr(_eigen, "WARM_MIX", 0.0)
    res = lanczos(DiagOperator(values), k=2, tol=1e-8, v0=e9)
    assert res.converged
    assert torch.allclose(res.eigenvalues, torch.tensor([10.0, 9.0], dtype=torch.float64), rtol=1e-8)
    monkeypatch.undo()
    # With it (the default) the same start converges too, from a proper Krylov sequence.
    mixed = lanczos(DiagOperator(values), k=2, tol=1e-8, v0=e9)
    assert mixed.converged
    assert torch.allclose(mixed.eigenvalues, torch.tensor([10.0, 9.0], dtype=torch.float64), rtol=1e-8)


def test_warm_start_near_a_wrong_eigenvector_in_a_flat_spectrum() -> None:
    # Top 1.1 above a flat bulk near 1.0, v0 = an eigenvector of 1.0: the residual of the start is only
    # ~0.01 * the spread of the bulk, so the residual test alone accepts 1.0 at once. The random block of
    # the copy search (on by default) finds 1.1 beyond it.
    gen = torch.Generator().manual_seed(1)
    bulk = 1.0 - 0.01 * torch.rand(498, generator=gen, dtype=torch.float64)
    values = torch.cat([torch.tensor([1.1, 1.0], dtype=torch.float64), bulk])
    e1 = torch.zeros(500, dtype=torch.float64)
    e1[1] = 1.0
    res = lanczos(DiagOperator(values), k=1, tol=1e-3, v0=e1)
    assert res.converged and abs(float(res.eigenvalues[0]) - 1.1) < 1e-3 * 1.1
    trusting = lanczos(DiagOperator(values), k=1, tol=1e-3, v0=e1, find_copies=False)
    assert abs(float(trusting.eigenvalues[0]) - 1.0) < 1e-3  # documented: without the check, v0 is trusted


@pytest.mark.parametrize(
    ("v0", "error", "match"),
    [
        ([1.0] * 61, TypeError, r"`v0` must be None or a tensor of shape \[n\] or \[j, n\], got list"),
        (torch.ones(60), ValueError, r"`v0` must have shape \[n\] or \[j, n\] with n = 61 .* got \[60\]"),
        (torch.ones(2, 62), ValueError, r"`v0` must have shape .* got \[2, 62\]"),
        (torch.ones(0, 61), ValueError, r"`v0` must have shape .* got \[0, 61\]"),
        (torch.ones(1, 1, 61), ValueError, r"`v0` must have shape .* got \[1, 1, 61\]"),
        (torch.ones(61, dtype=torch.long), ValueError, r"`v0` must be a real floating-point tensor"),
        (torch.full((61,), float("nan")), ValueError, r"`v0` must be finite"),
        (
            torch.stack([torch.ones(61), torch.zeros(61)]),
            ValueError,
            r"`v0` must have non-zero rows",
        ),
        (
            torch.stack([torch.ones(61), -torch.ones(61)]),
            ValueError,
            r"`v0`: the normalized rows sum to zero",
        ),
    ],
)
def test_bad_v0_errors_before_any_product(v0: Any, error: type[Exception], match: str) -> None:
    c = case("relu_init")
    loss = CountingLoss(c.loss_fn)
    with pytest.raises(error, match=match):
        hessian_eigenvalues(c.model, loss, c.batches, v0=v0)
    with pytest.raises(error, match=match):
        hessian_eigenvalues(c.model, loss, c.batches, backend="power", v0=v0)
    assert loss.calls == 0
    op = DiagOperator(torch.linspace(0, 1, 61))
    with pytest.raises(error, match=match):
        lanczos(op, v0=v0)
    assert op.num_products == 0


def test_default_max_iter() -> None:
    assert default_max_iter(50, 1) == 50 and default_max_iter(10_000, 1) == 100
    assert default_max_iter(10_000, 7) == 140
