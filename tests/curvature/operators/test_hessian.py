"""HessianOperator against dense float64 Hessians: memory modes, batches, weighting, frozen params, batched
products (matmat) and parameter blocks."""

from __future__ import annotations

import functools

import pytest
import torch
from torch import nn

from lightning_landscape.curvature import (
    HessianOperator,
    NonFiniteError,
    batch_size,
    hessian_eigenvalues,
    hessian_trace,
    select_parameters,
    spectral_density,
)
from lightning_landscape.curvature.operators import _graph as graph_module
from lightning_landscape.curvature.operators.inputs import OperatorInputs
from tests.curvature.cases import CASE_NAMES, case, dense_hessian, mse_loss

pytestmark = pytest.mark.filterwarnings("ignore:enable_nested_tensor is True")


@pytest.mark.parametrize("name", CASE_NAMES)
def test_products_equal_dense_hessian(name: str) -> None:
    c = case(name)
    want = dense_hessian(c)
    op = HessianOperator(c.model, c.loss_fn, c.batches, memory="reuse")
    assert op.memory == "reuse" and op.num_params == want.shape[0]
    got = op.dense()
    assert op.num_products == want.shape[0]
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("name", ["cnn_bn", "transformer"])
def test_recompute_equals_reuse(name: str) -> None:
    # The transformer's scaled-dot-product attention has no double backward on CPU unless the operator
    # falls back to the math kernel: this is that fallback, per product.
    c = case(name)
    gen = torch.Generator().manual_seed(1)
    reuse = HessianOperator(c.model, c.loss_fn, c.batches, memory="reuse")
    recompute = HessianOperator(c.model, c.loss_fn, c.batches, memory="recompute")
    assert recompute.memory == "recompute"
    for _ in range(3):
        v = torch.randn(reuse.num_params, generator=gen, dtype=torch.float64)
        torch.testing.assert_close(recompute.matvec(v), reuse.matvec(v), rtol=1e-10, atol=1e-12)


def test_auto_reuses_small_graphs_and_recomputes_large(monkeypatch: pytest.MonkeyPatch) -> None:
    c = case("relu_init")
    v = torch.ones(61, dtype=torch.float64)
    auto = HessianOperator(c.model, c.loss_fn, c.batches)
    assert auto.memory == "reuse"
    monkeypatch.setattr(graph_module, "_AUTO_MEMORY_FRACTION", 1e-12)
    starved = HessianOperator(c.model, c.loss_fn, c.batches, memory="auto")
    assert starved.memory == "recompute"
    torch.testing.assert_close(starved.matvec(v), auto.matvec(v), rtol=1e-12, atol=1e-14)


def test_batch_weighting_equals_one_big_batch() -> None:
    # The mean of per-batch means weighted by batch size is the mean over all samples.
    c = case("relu_trained")
    (x1, y1), (x2, y2) = c.batches
    split = HessianOperator(c.model, c.loss_fn, c.batches).dense()
    whole = HessianOperator(c.model, c.loss_fn, [(torch.cat([x1, x2]), torch.cat([y1, y2]))]).dense()
    torch.testing.assert_close(split, whole, rtol=1e-10, atol=1e-12)
    # Equal weights would be a different matrix: the weighting is not a no-op on this case.
    naive = 0.5 * (
        HessianOperator(c.model, c.loss_fn, c.batches[:1]).dense()
        + HessianOperator(c.model, c.loss_fn, c.batches[1:]).dense()
    )
    assert (naive - whole).abs().max() > 1e-3


def test_tensor_and_dict_batches_and_batch_size() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1)).double()
    x = torch.randn(10, 3, dtype=torch.float64)
    as_tensor = HessianOperator(model, lambda m, b: m(b).pow(2).mean(), [x[:6], x[6:]]).dense()
    as_dict = HessianOperator(model, lambda m, b: m(b["nested"][0]).pow(2).mean(), [{"nested": [x]}]).dense()
    torch.testing.assert_close(as_tensor, as_dict, rtol=1e-10, atol=1e-12)
    assert batch_size({"a": "text", "b": (torch.zeros(7, 2),)}) == 7
    assert batch_size(torch.tensor(3.0)) == 1


def test_frozen_parameters_are_left_out() -> None:
    c = case("relu_init")
    c.model[0].weight.requires_grad_(False)
    op = HessianOperator(c.model, c.loss_fn, c.batches)
    assert op.num_params == 61 - 20
    torch.testing.assert_close(op.dense(), dense_hessian(c), rtol=1e-10, atol=1e-12)


def test_mse_loss_module_and_unused_parameter() -> None:
    # nn.MSELoss breaks forward-over-reverse (pytorch#123996); our reverse-over-reverse products do not.
    # An unused parameter (the module's own, so first in parameters()) has a zero row/column.
    c = case("relu_init")
    c.model.register_parameter("unused", nn.Parameter(torch.ones(2, dtype=torch.float64)))
    criterion = nn.MSELoss()
    loss_fn = lambda m, b: criterion(m(b[0]), b[1])  # noqa: E731
    got = HessianOperator(c.model, loss_fn, c.batches).dense()
    assert got.shape == (63, 63) and got[:2].abs().max() == 0 and got[:, :2].abs().max() == 0
    torch.testing.assert_close(got[2:, 2:], dense_hessian(case("relu_init")), rtol=1e-10, atol=1e-12)


def test_train_mode_batchnorm_uses_batch_statistics_and_keeps_buffers() -> None:
    c = case("cnn_bn")
    before = {k: v.clone() for k, v in c.model.state_dict().items()}
    train = HessianOperator(c.model, c.loss_fn, c.batches, train_mode=True, memory="recompute").dense()
    torch.testing.assert_close(train, dense_hessian(c, train_mode=True), rtol=1e-9, atol=1e-11)
    evalm = HessianOperator(c.model, c.loss_fn, c.batches).dense()
    assert (train - evalm).abs().max() > 1e-3  # batch vs running statistics: really different
    for k, v in c.model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_non_finite_loss_and_product() -> None:
    c = case("relu_init")
    nan_loss = lambda m, b: mse_loss(m, b) * float("nan")  # noqa: E731
    with pytest.raises(NonFiniteError, match="loss is not finite"):
        HessianOperator(c.model, nan_loss, c.batches, memory="reuse")
    op = HessianOperator(c.model, nan_loss, c.batches, memory="recompute")
    with pytest.raises(NonFiniteError, match="loss is not finite"):
        op.matvec(torch.ones(61, dtype=torch.float64))
    # A finite loss whose gradient is 0/0 at the point: the product is NaN.
    model = nn.Linear(2, 1, bias=False).double()
    nn.init.zeros_(model.weight)
    op = HessianOperator(
        model, lambda m, b: m.weight.norm() + m(b).sum() * 0, [torch.ones(1, 2, dtype=torch.float64)]
    )
    with pytest.raises(NonFiniteError, match="Hessian-vector product is not finite"):
        op.matvec(torch.ones(2, dtype=torch.float64))


def test_operator_argument_errors() -> None:
    c = case("relu_init")
    with pytest.raises(ValueError, match="`memory` must be one of"):
        HessianOperator(c.model, c.loss_fn, c.batches, memory="fast")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="`loss_fn` must return a scalar tensor, got \\(40, 1\\)"):
        HessianOperator(c.model, lambda m, b: m(b[0]), c.batches)
    op = HessianOperator(c.model, c.loss_fn, c.batches)
    with pytest.raises(ValueError, match="`v` must have num_params=61 elements, got 3"):
        op.matvec(torch.ones(3))


@pytest.mark.parametrize(("name", "memory"), [("relu_init", "reuse"), ("cnn_bn", "recompute")])
def test_matvec_into_equals_matvec_and_writes_out(name: str, memory: str) -> None:
    c = case(name)
    want = dense_hessian(c)
    op = HessianOperator(c.model, c.loss_fn, c.batches, memory=memory)  # type: ignore[arg-type]
    v = torch.randn(op.num_params, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    out = torch.full((op.num_params,), float("nan"), dtype=torch.float64)
    assert op.matvec_into(v, out) is out
    torch.testing.assert_close(out, want @ v, rtol=1e-9, atol=1e-11)  # the dense float64 oracle
    torch.testing.assert_close(out, op.matvec(v), rtol=0, atol=0)
    # out = Hv + beta * out, the product added piece by piece (reuse) or after the fact (recompute).
    before = torch.randn(op.num_params, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    out.copy_(before)
    assert op.matvec_into(v, out, beta=-0.5) is out
    torch.testing.assert_close(out, want @ v - 0.5 * before, rtol=1e-9, atol=1e-11)
    assert op.num_products == 3


def test_matvec_into_rejects_a_bad_out() -> None:
    c = case("relu_init")
    op = HessianOperator(c.model, c.loss_fn, c.batches)
    v = torch.ones(61, dtype=torch.float64)
    bad = [
        torch.empty(60, dtype=torch.float64),
        torch.empty(61, dtype=torch.float32),
        torch.empty(122, dtype=torch.float64)[::2],
        torch.empty(61, 1, dtype=torch.float64),
    ]
    for out in bad:
        with pytest.raises(ValueError, match="`out` must be a contiguous flat tensor of num_params=61"):
            op.matvec_into(v, out)
    with pytest.raises(ValueError, match="`v` must have num_params=61 elements, got 3"):
        op.matvec_into(torch.ones(3), torch.empty(61, dtype=torch.float64))
    assert op.num_products == 0


def test_from_checked_inputs_equals_the_constructor() -> None:
    c = case("cnn_bn")
    inputs = OperatorInputs.check(c.model, c.loss_fn, c.batches, "recompute", ["conv", "head.bias"])
    assert inputs.names == ["conv.weight", "conv.bias", "head.bias"] and inputs.num_params == 23
    built = HessianOperator.from_inputs(inputs)
    direct = HessianOperator(c.model, c.loss_fn, c.batches, memory="recompute", params=["conv", "head.bias"])
    assert type(built) is HessianOperator and built.memory == "recompute"
    assert built.param_names == direct.param_names
    torch.testing.assert_close(built.dense(), direct.dense(), rtol=0, atol=0)


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
