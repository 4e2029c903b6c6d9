"""pyhessian 0.1 behind hessian_eigenvalues: a loose cross-check against the dense truth, and its refusals."""

from __future__ import annotations

import pytest
import torch

from lightning_landscape.curvature import _pyhessian, hessian_eigenvalues
from lightning_landscape.curvature.operators.inputs import OperatorInputs
from tests.curvature.cases import CASE_NAMES, CountingLoss, case, dense_hessian, rel_err, truth

pytestmark = pytest.mark.filterwarnings("ignore:enable_nested_tensor is True")


@pytest.mark.parametrize("name", CASE_NAMES)
def test_pyhessian_cross_check(name: str) -> None:
    c, ev = case(name), truth(name)
    res = hessian_eigenvalues(c.model, c.loss_fn, c.batches, k=1, backend="pyhessian", tol=1e-3)
    assert res.backend == "pyhessian" and res.num_products > 0
    # pyhessian stops on a small change of the Rayleigh quotient: a loose cross-check only.
    assert rel_err(res.eigenvalues, ev[-1:]) < 1e-2
    # Its own stopping rule is not a residual bound; `converged` reports ours, so it must agree with it.
    ours = hessian_eigenvalues(c.model, c.loss_fn, c.batches, k=1, tol=1e-3)
    assert ours.converged and rel_err(ours.eigenvalues, ev[-1:]) < 1e-3


def test_pyhessian_rejects_smallest() -> None:
    c = case("relu_init")
    with pytest.raises(ValueError, match="`which` must be 'largest' with backend='pyhessian'"):
        hessian_eigenvalues(c.model, c.loss_fn, c.batches, which="smallest", backend="pyhessian")


def test_pyhessian_refuses_v0() -> None:
    c = case("relu_init")
    loss = CountingLoss(c.loss_fn)
    with pytest.raises(ValueError, match=r"`v0` is not supported with backend='pyhessian'"):
        hessian_eigenvalues(c.model, loss, c.batches, backend="pyhessian", v0=torch.ones(61))
    assert loss.calls == 0


def test_pyhessian_module_refuses_smallest_itself() -> None:
    c = case("relu_init")
    inputs = OperatorInputs.check(c.model, c.loss_fn, c.batches)
    with pytest.raises(ValueError, match="`which` must be 'largest' with backend='pyhessian'"):
        _pyhessian.pyhessian_eigenvalues(inputs, 1, "both", 1e-3, None, False, False, 0)


def test_pyhessian_residuals_are_ours_against_the_dense_hessian() -> None:
    c = case("relu_trained")
    H = dense_hessian(c)
    res = hessian_eigenvalues(
        c.model, c.loss_fn, c.batches, k=2, backend="pyhessian", return_eigenvectors=True
    )
    assert res.eigenvectors is not None and res.residuals is not None and res.value_converged is not None
    for lam, v, r in zip(res.eigenvalues.tolist(), res.eigenvectors, res.residuals.tolist(), strict=True):
        assert float((H @ v - lam * v).norm()) == pytest.approx(r, rel=1e-6, abs=1e-12)
    assert torch.equal(res.value_converged, res.residuals <= 1e-3 * res.eigenvalues.abs())
    assert res.converged == bool(res.value_converged.all())
