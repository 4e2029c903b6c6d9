"""No side effects, ever: every backend and function leaves the model and the global RNG as found, through
the restore tools of _model_state."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from lightning_landscape.curvature import (
    HessianOperator,
    hessian_eigenvalues,
    hessian_trace,
    spectral_density,
)
from lightning_landscape.curvature._model_state import (
    ModelState,
    kept_modes,
    math_attention,
    probe_context,
    swapped_buffers,
)
from tests._shared import assert_unchanged
from tests._shared import snapshot as shared_snapshot
from tests.curvature.cases import case

pytestmark = pytest.mark.filterwarnings("ignore:enable_nested_tensor is True")


def prepared(name: str) -> nn.Module:
    """A model in a deliberately awkward state: mixed modes, a frozen parameter, some .grad set."""
    c = case(name)
    model = c.model
    model.train()
    modules = list(model.modules())
    modules[len(modules) // 2].eval()  # mixed train/eval flags
    params = list(model.parameters())
    params[-1].requires_grad_(False)  # frozen (excluded from the Hessian, but must stay frozen)
    params[0].grad = torch.full_like(params[0], 0.5)
    params[1].grad = None
    return model


def assert_same(before: dict[str, Any], model: nn.Module) -> None:
    """:func:`tests._shared.assert_unchanged`, plus what it does not see: non-persistent buffers and
    graph-holding ``.grad`` tensors."""
    assert_unchanged(model, before)
    for a, b in zip(model.buffers(), before["buffers"], strict=True):
        assert torch.equal(a, b), "a buffer changed"
    for p in model.parameters():
        assert p.grad is None or p.grad.grad_fn is None, "a graph-holding gradient was left behind"


def snapshot(model: nn.Module) -> dict[str, Any]:
    return {**shared_snapshot(model), "buffers": [b.clone() for b in model.buffers()]}


def loss_of(name: str) -> tuple[Callable[..., torch.Tensor], list[Any]]:
    c = case(name)
    return c.loss_fn, c.batches


CALLS: dict[str, Callable[[nn.Module, Any, list[Any], bool], Any]] = {
    "lanczos_both": lambda m, f, b, t: hessian_eigenvalues(m, f, b, k=2, which="both", train_mode=t),
    "lanczos_recompute": lambda m, f, b, t: hessian_eigenvalues(m, f, b, memory="recompute", train_mode=t),
    "power_both": lambda m, f, b, t: hessian_eigenvalues(
        m, f, b, which="both", backend="power", tol=1e-2, max_iter=30, train_mode=t
    ),
    "pyhessian": lambda m, f, b, t: hessian_eigenvalues(m, f, b, k=2, backend="pyhessian", train_mode=t),
    "trace": lambda m, f, b, t: hessian_trace(m, f, b, num_samples=3, train_mode=t),
    "density": lambda m, f, b, t: spectral_density(m, f, b, num_iter=4, num_runs=2, train_mode=t),
    "operator": lambda m, f, b, t: HessianOperator(m, f, b, train_mode=t).matvec(
        torch.ones(sum(p.numel() for p in m.parameters() if p.requires_grad), dtype=torch.float64)
    ),
}


@pytest.mark.parametrize("call", list(CALLS))
@pytest.mark.parametrize("name", ["cnn_bn", "transformer"])
@pytest.mark.parametrize("train_mode", [False, True])
def test_no_side_effects(call: str, name: str, train_mode: bool) -> None:
    # cnn_bn: BatchNorm running stats (train mode would update them); transformer: dropout (train mode
    # would draw from the global RNG) and scaled-dot-product attention.
    model = prepared(name)
    loss_fn, batches = loss_of(name)
    random.seed(1)
    np.random.seed(1)
    torch.manual_seed(1)
    before = snapshot(model)
    CALLS[call](model, loss_fn, batches, train_mode)
    assert_same(before, model)


def test_no_side_effects_after_errors() -> None:
    model = prepared("cnn_bn")
    _, batches = loss_of("cnn_bn")
    before = snapshot(model)

    def exploding(m: nn.Module, batch: Any) -> torch.Tensor:
        m.train()  # a loss that tampers with the mode and then fails
        raise RuntimeError("boom")

    for backend in ("lanczos", "pyhessian"):
        with pytest.raises(RuntimeError, match="boom"):
            hessian_eigenvalues(model, exploding, batches, backend=backend)  # type: ignore[arg-type]
        assert_same(before, model)


def test_train_mode_dropout_is_a_fixed_function() -> None:
    # In train mode the dropout masks come from a private RNG seeded per batch: products are repeatable
    # (the operator is a fixed symmetric matrix), while a different seed gives a different Hessian.
    model = prepared("transformer")
    loss_fn, batches = loss_of("transformer")
    op = HessianOperator(model, loss_fn, batches, train_mode=True, memory="recompute", seed=0)
    v = torch.linspace(-1, 1, op.num_params, dtype=torch.float64)
    torch.testing.assert_close(op.matvec(v), op.matvec(v), rtol=0, atol=0)
    other = HessianOperator(model, loss_fn, batches, train_mode=True, memory="recompute", seed=1)
    assert (other.matvec(v) - op.matvec(v)).abs().max() > 1e-6
    u = torch.cos(torch.arange(op.num_params, dtype=torch.float64))
    assert float(u @ op.matvec(v)) == pytest.approx(float(v @ op.matvec(u)), rel=1e-9)


def test_model_state_restores_values_grads_flags_and_modes() -> None:
    model = prepared("cnn_bn")
    before = snapshot(model)
    grads = [p.grad for p in model.parameters()]
    state = ModelState(model)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    for p in model.parameters():
        p.requires_grad_(True)
        p.grad = torch.ones_like(p)
    model.eval()
    state.restore()
    assert_same(before, model)
    assert all(p.grad is g for p, g in zip(model.parameters(), grads, strict=True))  # the objects themselves


def test_kept_modes_and_swapped_buffers_and_probe_context() -> None:
    model = prepared("cnn_bn")
    before = snapshot(model)
    modes = [m.training for m in model.modules()]
    with kept_modes(model):
        assert not any(m.training for m in model.modules())
    with kept_modes(model, train_mode=True):
        assert [m.training for m in model.modules()] == modes
    _, batches = loss_of("cnn_bn")
    with swapped_buffers(model), kept_modes(model):
        model.train()
        model(batches[0]["x"])  # a train-mode forward updates the running statistics of the copies
        moved = [b.clone() for b in model.buffers()]
    assert any(not torch.equal(a, b) for a, b in zip(moved, before["buffers"], strict=True))
    with probe_context(model, train_mode=True, grad=False):
        assert not torch.is_grad_enabled()
        torch.rand(3)  # the global RNG is forked
        model(batches[0]["x"])
    assert_same(before, model)


def test_math_attention_gives_a_double_backward() -> None:
    # Inside the guard scaled-dot-product attention runs its math kernel: second derivatives exist and match
    # the explicit softmax(q k^T / sqrt(d)) v formula.
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 4, 3, generator=gen, dtype=torch.float64) for _ in range(3))
    q.requires_grad_(True)

    def explicit(q: torch.Tensor) -> torch.Tensor:
        return torch.softmax(q @ k.transpose(-1, -2) / 3**0.5, dim=-1) @ v

    with math_attention():
        out = nn.functional.scaled_dot_product_attention(q, k, v)
        (g,) = torch.autograd.grad(out.pow(2).sum(), q, create_graph=True)
        (h,) = torch.autograd.grad(g.sum(), q)
    (g_ref,) = torch.autograd.grad(explicit(q).pow(2).sum(), q, create_graph=True)
    (h_ref,) = torch.autograd.grad(g_ref.sum(), q)
    torch.testing.assert_close(h, h_ref, rtol=1e-10, atol=1e-12)
