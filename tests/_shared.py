"""Test helpers every floor uses, defined once: quiet Trainer settings, the MSE loss, "model unchanged".

Floor-specific models and data stay beside their tests (``tests/curvature/cases.py``,
``tests/callbacks/zoo.py``, ``tests/multiseed/_tiny.py``); what two floors need lives here.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

#: Trainer arguments that keep test output and time small (no bar, no summary, no sanity validation).
QUIET: dict[str, Any] = {
    "enable_progress_bar": False,
    "enable_model_summary": False,
    "num_sanity_val_steps": 0,
}


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """``n`` intra-op threads inside, the previous number restored after (tiny models on a shared machine:
    the dense oracle of a 450-parameter Transformer takes 1 s on one thread, over 20 s on two busy cores)."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def mse_loss(model: nn.Module, batch: tuple[Tensor, Tensor]) -> Tensor:
    """``loss_fn(model, batch)`` for ``(x, y)`` batches: the mean squared error of ``model(x)``."""
    x, y = batch
    return nn.functional.mse_loss(model(x), y)


def snapshot(model: nn.Module) -> dict[str, Any]:
    """What a probe could change: modes, parameters, buffers, flags, ``.grad`` (objects, values), RNGs."""
    return {
        "modes": [m.training for m in model.modules()],
        "state": {k: v.detach().clone() for k, v in model.state_dict(keep_vars=True).items()},
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "grad_ids": [None if p.grad is None else id(p.grad) for p in model.parameters()],
        "grads": [None if p.grad is None else p.grad.clone() for p in model.parameters()],
        "torch_rng": torch.get_rng_state(),
        "numpy_rng": np.random.get_state()[1].copy(),
        "python_rng": random.getstate(),
    }


def assert_unchanged(model: nn.Module, before: dict[str, Any]) -> None:
    """Fail naming what differs between ``model`` now and a :func:`snapshot` taken ``before``."""
    after = snapshot(model)
    assert after["modes"] == before["modes"], "train/eval modes changed"
    assert after["requires_grad"] == before["requires_grad"], "requires_grad flags changed"
    assert after["grad_ids"] == before["grad_ids"], ".grad tensors were replaced"
    assert after["state"].keys() == before["state"].keys(), "state_dict keys changed"
    for key, value in before["state"].items():
        assert torch.equal(after["state"][key], value), f"{key} changed"
    for a, b in zip(after["grads"], before["grads"], strict=True):
        assert (a is None and b is None) or (a is not None and b is not None and torch.equal(a, b)), (
            ".grad changed"
        )
    assert torch.equal(after["torch_rng"], before["torch_rng"]), "torch RNG moved"
    assert np.array_equal(after["numpy_rng"], before["numpy_rng"]), "NumPy RNG moved"
    assert after["python_rng"] == before["python_rng"], "Python RNG moved"
