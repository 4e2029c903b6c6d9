"""Power iteration (shifts and deflation) against dense float64 eigenvalues, cold and warm-started."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from lightning_landscape.curvature import DenseOperator, hessian_eigenvalues
from lightning_landscape.curvature.algorithms.power import power_iteration
from tests.curvature.cases import case, dense_hessian, moved, rel_err, ritz_block, truth

pytestmark = pytest.mark.filterwarnings("ignore:enable_nested_tensor is True")

REL = 1e-4  # the accuracy asked for at tight tolerance


@pytest.mark.parametrize("name", ["relu_init", "cnn_bn", "transformer"])
def test_power_top3_and_smallest(name: str) -> None:
    c, ev = case(name), truth(name)
    top = hessian_eigenvalues(c.model, c.loss_fn, c.batches, k=3, tol=1e-4, backend="power", max_iter=3000)
    assert top.converged and top.backend == "power"
    assert rel_err(top.eigenvalues, ev.flip(0)[:3]) < REL
    low = hessian_eigenvalues(
        c.model, c.loss_fn, c.batches, which="smallest", tol=1e-4, backend="power", max_iter=3000
    )
    assert low.converged and rel_err(low.eigenvalues, ev[:1]) < REL


def test_power_on_trained_relu_is_honest() -> None:
    # Top-2 are well separated; the rest is a +-1e-4 cluster under a spectral radius of ~22, where power
    # iteration cannot resolve signs in any sane budget: it must then say converged=False.
    c, ev = case("relu_trained"), truth("relu_trained")
    top = hessian_eigenvalues(c.model, c.loss_fn, c.batches, k=2, tol=1e-5, backend="power", max_iter=3000)
    assert top.converged and rel_err(top.eigenvalues, ev.flip(0)[:2]) < REL
    low = hessian_eigenvalues(
        c.model, c.loss_fn, c.batches, which="smallest", tol=1e-5, backend="power", max_iter=200
    )
    assert not low.converged
    # Lanczos gets the same smallest value at tight tolerance.
    lz = hessian_eigenvalues(c.model, c.loss_fn, c.batches, which="smallest", tol=1e-6)
    assert lz.converged and rel_err(lz.eigenvalues, ev[:1]) < REL


@pytest.mark.parametrize("name", ["cnn_bn", "transformer"])
def test_power_warm_start(name: str) -> None:
    c = case(name)
    before = hessian_eigenvalues(c.model, c.loss_fn, c.batches, tol=1e-4, return_eigenvectors=True)
    moved(c)
    ev = torch.linalg.eigvalsh(dense_hessian(c))
    kwargs: dict[str, Any] = {"tol": 1e-4, "backend": "power", "max_iter": 3000}
    cold = hessian_eigenvalues(c.model, c.loss_fn, c.batches, **kwargs)
    warm = hessian_eigenvalues(c.model, c.loss_fn, c.batches, v0=ritz_block(before), **kwargs)
    for res in (cold, warm):
        assert res.converged and rel_err(res.eigenvalues, ev[-1:]) < REL
    assert warm.num_products < cold.num_products, (warm.num_products, cold.num_products)


def test_power_on_an_analytic_spectrum() -> None:
    # Algebraically largest and smallest, not largest magnitude: the shift by the spectral radius does that.
    op = DenseOperator(torch.diag(torch.tensor([-5.0, 3.0, 2.0, 0.5, -1.0], dtype=torch.float64)))
    res = power_iteration(op, k=2, which="both", tol=1e-10, max_iter=5000, return_eigenvectors=True)
    assert res.converged and res.backend == "power"
    torch.testing.assert_close(res.eigenvalues, torch.tensor([3.0, 2.0]).double(), rtol=1e-8, atol=0)
    assert res.smallest is not None
    torch.testing.assert_close(res.smallest, torch.tensor([-5.0, -1.0]).double(), rtol=1e-8, atol=0)
    assert res.num_products == op.num_products
