"""Batched products and parameter blocks against the dense float64 Hessian."""

from __future__ import annotations

import functools

import pytest
import torch
from cases import CASE_NAMES, case, dense_hessian
from torch import nn

from lightning_landscape.curvature import (
    HessianOperator,
    hessian_eigenvalues,
    hessian_trace,
    select_parameters,
    spectral_density,
)

pytestmark = pytest.mark.filterwarnings("ignore:enable_nested_tensor is True")


@functools.cache
def _dense(name: str) -> torch.Tensor:
    """The dense float64 Hessian of case ``name`` (the cases are deterministic: computed once per process)."""
    return dense_hessian(case(name))


@pytest.mark.parametrize("memory", ["reuse", "recompute"])
@pytest.mark.parametrize("name", CASE_NAMES)
def test_matmat_equals_stacked_matvec(name: str, memory: str) -> None:
    c = case(name)
    op = HessianOperator(c.model, c.loss_fn, c.batches, memory=memory)  # type: ignore[arg-type]
    V = torch.randn(op.num_params, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    HV = op.matmat(V)
    stacked = torch.stack([op.matvec(V[:, i]) for i in range(5)], dim=1)
    assert HV.shape == (op.num_params, 5)
    assert float((HV - stacked).abs().max()) <= 1e-12 * max(1.0, float(stacked.abs().max()))
    assert op.num_products == 10
    # The per-vector loop gives the same products.
    loop = HessianOperator(c.model, c.loss_fn, c.batches, memory=memory, batched=False)  # type: ignore[arg-type]
    assert float((loop.matmat(V) - stacked).abs().max()) <= 1e-12 * max(1.0, float(stacked.abs().max()))


def test_matmat_rejects_wrong_shape() -> None:
    c = case("relu_init")
    op = HessianOperator(c.model, c.loss_fn, c.batches)
    with pytest.raises(ValueError, match=r"`V` must have shape \[num_params=61, j\], got \[61\]"):
        op.matmat(torch.zeros(61, dtype=torch.float64))
    assert op.matmat(torch.zeros(61, 0, dtype=torch.float64)).shape == (61, 0)


BLOCKS = [
    ("relu_trained", ["2"]),  # the output layer, by module prefix
    ("relu_trained", r"weight$"),  # both weight matrices, by regex
    ("cnn_bn", ["conv", "head.bias"]),  # a module and one parameter
    ("transformer", ["embedding", "transformer.encoder.layers.0.linear1"]),
]


def _block_index(model: nn.Module, selection: str | list[str]) -> torch.Tensor:
    """Flat indices of the selected parameters among all trainable ones (independent bookkeeping)."""
    names = {n for n, _ in select_parameters(model, selection)}
    idx, offset = [], 0
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if name in names:
            idx.extend(range(offset, offset + p.numel()))
        offset += p.numel()
    return torch.tensor(idx)


@pytest.mark.parametrize(("name", "selection"), BLOCKS)
def test_block_equals_dense_submatrix(name: str, selection: str | list[str]) -> None:
    c = case(name)
    full = _dense(name)
    idx = _block_index(c.model, selection)
    want = full[idx][:, idx]
    op = HessianOperator(c.model, c.loss_fn, c.batches, params=selection)
    assert op.num_params == idx.numel() < full.shape[0]
    assert float((op.dense() - want).abs().max()) <= 1e-10 * max(1.0, float(want.abs().max()))

    ev = torch.linalg.eigvalsh(want)
    k = min(2, idx.numel() - 1)
    res = hessian_eigenvalues(c.model, c.loss_fn, c.batches, k=k, which="both", tol=1e-8, params=selection)
    assert res.converged
    assert torch.allclose(res.eigenvalues, ev.flip(0)[:k], rtol=1e-6, atol=1e-9)
    assert res.smallest is not None and torch.allclose(res.smallest, ev[:k], rtol=1e-6, atol=1e-9)
    budget = idx.numel()  # a budget of n products: exact
    tr = hessian_trace(c.model, c.loss_fn, c.batches, num_samples=budget, method="xtrace", params=selection)
    assert abs(tr.trace - float(want.trace())) <= 1e-9 * max(1.0, float(want.diagonal().abs().sum()))
    sd = spectral_density(c.model, c.loss_fn, c.batches, num_iter=5, num_runs=2, params=selection)
    assert sd.num_params == idx.numel()


def test_block_names_and_slices() -> None:
    c = case("cnn_bn")
    op = HessianOperator(c.model, c.loss_fn, c.batches, params=["conv", "head.bias"])
    assert op.param_names == ["conv.weight", "conv.bias", "head.bias"]
    assert op.slices() == {
        "conv.weight": slice(0, 18),
        "conv.bias": slice(18, 20),
        "head.bias": slice(20, 23),
    }


def test_selection_errors_name_the_argument() -> None:
    c = case("relu_init")
    with pytest.raises(
        ValueError, match=r"`params`: the prefixes \['1'\] selects no trainable parameter.*0\.weight"
    ):
        HessianOperator(c.model, c.loss_fn, c.batches, params=["1"])  # the ReLU has no parameters
    with pytest.raises(ValueError, match=r"`params`: the regex 'nothing' selects no trainable parameter"):
        hessian_eigenvalues(c.model, c.loss_fn, c.batches, params="nothing")
    with pytest.raises(ValueError, match="`params` is not a valid regular expression"):
        hessian_trace(c.model, c.loss_fn, c.batches, params="(")
    with pytest.raises(ValueError, match="`params` must be None, a non-empty list"):
        HessianOperator(c.model, c.loss_fn, c.batches, params=[])
    # Prefixes stop at dots: "0" is the first layer, not "0x" and not a substring.
    assert [n for n, _ in select_parameters(c.model, ["0"])] == ["0.weight", "0.bias"]
    c.model[0].weight.requires_grad_(False)
    with pytest.raises(ValueError, match=r"matches only frozen parameters: \['0.weight'\]"):
        HessianOperator(c.model, c.loss_fn, c.batches, params=["0.weight"])
    with pytest.raises(ValueError, match="`params` is not supported with backend='pyhessian'"):
        hessian_eigenvalues(c.model, c.loss_fn, c.batches, params=["2"], backend="pyhessian")
