"""Lanczos without a stored basis (``max_basis=0``, the default for ``k=1`` on large models) against dense
eigenvalues: values within ``tol``, residual bounds that hold, and two parameter-sized vectors."""

from __future__ import annotations

import importlib

import pytest
import torch

from lightning_landscape.curvature import HessianOperator, hessian_eigenvalues
from lightning_landscape.curvature.algorithms.lanczos import lanczos
from lightning_landscape.curvature.operators.base import DenseOperator
from tests.curvature.cases import case, dense_hessian

# The module (the package exports the function under the same name).
lanczos_module = importlib.import_module("lightning_landscape.curvature.algorithms.lanczos")


def _matrix(n: int, dtype: torch.dtype, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    # Gaps at both ends, a near pair at the top, a cluster between (negative values: a saddle's).
    Q, _ = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=torch.float64))
    ends = torch.tensor([50.0, 40.0, 39.0, -20.0, -15.0], dtype=torch.float64)
    values = torch.cat([ends, torch.linspace(-5, 10, n - 5, dtype=torch.float64)])
    return ((Q * values) @ Q.T).to(dtype)


class _IntoOnly(DenseOperator):
    """Products only into the caller's buffer; counts the parameter-sized buffers it was handed."""

    def __init__(self, matrix: torch.Tensor) -> None:
        super().__init__(matrix)
        self.buffers: set[int] = set()

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        raise AssertionError("the recurrence must write its products in place")

    def matvec_into(self, v: torch.Tensor, out: torch.Tensor, beta: float = 0.0) -> torch.Tensor:
        self.num_products += 1
        self.buffers.update({v.data_ptr(), out.data_ptr()})
        return torch.addmv(out, self.matrix, v, beta=beta, out=out)


@pytest.mark.parametrize("which", ["largest", "smallest", "both"])
@pytest.mark.parametrize(("dtype", "tol"), [(torch.float64, 1e-8), (torch.float32, 1e-3)])
def test_values_and_bounds_against_dense_eigenvalues(which: str, dtype: torch.dtype, tol: float) -> None:
    A = _matrix(300, dtype)
    evals = torch.linalg.eigvalsh(A.double())
    op = _IntoOnly(A)
    res = lanczos(op, k=1, which=which, tol=tol, max_basis=0, max_iter=300)
    assert res.converged and res.eigenvectors is None
    assert len(op.buffers) == 2  # the ring: q_j, and q_{j-1} into which the product is added
    assert res.num_products == op.num_products < 300
    rounding = 50 * torch.finfo(dtype).eps * 50.0  # Paige: the bounds hold to a multiple of eps ||A||
    found = [(res.eigenvalues, res.residuals, evals[-1])] if which != "smallest" else []
    if which == "smallest":
        found.append((res.eigenvalues, res.residuals, evals[0]))
    if which == "both":
        assert res.smallest is not None and res.smallest_residuals is not None
        found.append((res.smallest, res.smallest_residuals, evals[0]))
    for value, bound, want in found:
        assert value.shape == bound.shape == (1,)
        assert abs(float(value) - float(want)) <= tol * abs(float(want))  # the extreme one, within tol
        # The bound is honest: the nearest eigenvalue lies within it.
        nearest = float((evals - float(value)).abs().min())
        assert nearest <= float(bound) + rounding


@pytest.mark.parametrize("name", ["relu_init", "relu_trained", "cnn_bn"])
def test_hessian_top_and_bottom_against_the_dense_oracle(name: str) -> None:
    c = case(name)
    evals = torch.linalg.eigvalsh(dense_hessian(c))
    scale = float(evals.abs().max())
    op = HessianOperator(c.model, c.loss_fn, c.batches)
    res = lanczos(op, k=1, which="both", tol=1e-6, max_basis=0)
    assert res.converged and res.smallest is not None
    torch.testing.assert_close(res.eigenvalues, evals[-1:], rtol=1e-6, atol=1e-6 * scale)
    torch.testing.assert_close(res.smallest, evals[:1], rtol=1e-6, atol=1e-6 * scale)


def test_large_models_default_to_no_basis_for_one_value(monkeypatch: pytest.MonkeyPatch) -> None:
    # A basis past BASIS_BYTES is what a large model has: k=1 then keeps no basis, k=2 a bounded one.
    monkeypatch.setattr(lanczos_module, "BASIS_BYTES", 0)
    calls: list[str] = []
    real = lanczos_module.three_term_lanczos
    monkeypatch.setattr(lanczos_module, "three_term_lanczos", lambda *a: calls.append(a[2]) or real(*a))
    c = case("relu_init")
    evals = torch.linalg.eigvalsh(dense_hessian(c))
    top = hessian_eigenvalues(c.model, c.loss_fn, c.batches, k=1, tol=1e-6)
    assert calls == ["largest"] and top.converged
    torch.testing.assert_close(top.eigenvalues, evals[-1:], rtol=1e-6, atol=1e-9)
    low = hessian_eigenvalues(c.model, c.loss_fn, c.batches, k=1, which="smallest", tol=1e-6)
    assert calls == ["largest", "smallest"] and low.converged
    torch.testing.assert_close(low.eigenvalues, evals[:1], rtol=1e-6, atol=1e-6 * float(evals[-1]))
    hessian_eigenvalues(c.model, c.loss_fn, c.batches, k=2, tol=1e-6)
    hessian_eigenvalues(c.model, c.loss_fn, c.batches, k=1, tol=1e-6, return_eigenvectors=True)
    assert len(calls) == 2  # k=2 and eigenvectors need the basis


def test_max_basis_errors() -> None:
    op = DenseOperator(_matrix(50, torch.float64))
    with pytest.raises(ValueError, match=r"`max_basis=0` .* got k=2"):
        lanczos(op, k=2, max_basis=0)
    with pytest.raises(ValueError, match="return_eigenvectors=True"):
        lanczos(op, k=1, max_basis=0, return_eigenvectors=True)
    with pytest.raises(ValueError, match="`max_basis` must be an integer >= 0, got -1"):
        lanczos(op, k=1, max_basis=-1)
    assert op.num_products == 0
