"""No side effects, ever: every backend and function leaves the model and the global RNG as found."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from cases import case
from torch import nn

from lightning_landscape.curvature import (
    HessianOperator,
    hessian_eigenvalues,
    hessian_trace,
    spectral_density,
)

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


def snapshot(model: nn.Module) -> dict[str, Any]:
    return {
        "modes": [m.training for m in model.modules()],
        "params": [p.detach().clone() for p in model.parameters()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "grad_ids": [None if p.grad is None else id(p.grad) for p in model.parameters()],
        "grads": [None if p.grad is None else p.grad.clone() for p in model.parameters()],
        "buffers": [b.clone() for b in model.buffers()],
        "torch_rng": torch.get_rng_state(),
        "numpy_rng": np.random.get_state()[1].copy(),
        "python_rng": random.getstate(),
    }


def assert_same(before: dict[str, Any], model: nn.Module) -> None:
    after = snapshot(model)
    assert after["modes"] == before["modes"]
    assert after["requires_grad"] == before["requires_grad"]
    assert after["grad_ids"] == before["grad_ids"]
    for a, b in zip(after["params"], before["params"], strict=True):
        assert torch.equal(a, b)
    for a, b in zip(after["grads"], before["grads"], strict=True):
        assert (a is None and b is None) or torch.equal(a, b)
        if a is not None:
            assert a.grad_fn is None  # no graph-holding gradient left behind
    for a, b in zip(after["buffers"], before["buffers"], strict=True):
        assert torch.equal(a, b)
    assert torch.equal(after["torch_rng"], before["torch_rng"])
    assert np.array_equal(after["numpy_rng"], before["numpy_rng"])
    assert after["python_rng"] == before["python_rng"]


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
