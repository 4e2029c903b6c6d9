"""Bad input: a clear error naming the argument, the bad value and what is valid, before any product."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from cases import case
from torch import nn

from lightning_landscape.curvature import (
    HessianOperator,
    NonFiniteError,
    hessian_eigenvalues,
    hessian_trace,
    spectral_density,
)


class CountingLoss:
    """A loss that counts its calls: errors about arguments must come before any evaluation."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, model: nn.Module, batch: Any) -> torch.Tensor:
        self.calls += 1
        x, y = batch
        return nn.functional.mse_loss(model(x), y)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"k": 0}, r"`k` must be an integer >= 1, got 0"),
        ({"k": 2.5}, r"`k` must be an integer >= 1, got 2.5"),
        ({"k": 61}, r"`k` must be below the number of trainable parameters \(61\): valid 1..60, got 61"),
        ({"tol": 0.0}, r"`tol` must be a finite number > 0, got 0.0"),
        ({"tol": -1e-3}, r"`tol` must be a finite number > 0, got -0.001"),
        ({"tol": float("nan")}, r"`tol` must be a finite number > 0, got nan"),
        ({"which": "middle"}, r"`which` must be one of \('largest', 'smallest', 'both'\), got 'middle'"),
        (
            {"backend": "arpack"},
            r"`backend` must be one of \('lanczos', 'power', 'pyhessian'\), got 'arpack'",
        ),
        ({"memory": "lots"}, r"`memory` must be one of \('auto', 'reuse', 'recompute'\), got 'lots'"),
        ({"max_iter": 0}, r"`max_iter` must be None or an integer >= 1, got 0"),
        ({"which": "both", "backend": "pyhessian"}, r"`which` must be 'largest' with backend='pyhessian'"),
    ],
)
def test_eigenvalue_argument_errors(kwargs: dict[str, Any], match: str) -> None:
    c = case("relu_init")
    loss = CountingLoss()
    with pytest.raises(ValueError, match=match):
        hessian_eigenvalues(c.model, loss, c.batches, **kwargs)
    assert loss.calls == 0


def test_input_errors() -> None:
    c = case("relu_init")
    with pytest.raises(ValueError, match="`batches` is empty"):
        hessian_eigenvalues(c.model, c.loss_fn, [])
    with pytest.raises(TypeError, match=r"`batches` must be a list or tuple of batches.*got Tensor"):
        hessian_eigenvalues(c.model, c.loss_fn, torch.zeros(3, 1))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"`model` must be a torch.nn.Module, got str"):
        hessian_trace("model", c.loss_fn, c.batches)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="`loss_fn` must be callable"):
        spectral_density(c.model, 3, c.batches)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"Each batch must be a tensor or a tuple/list/dict.*got str"):
        HessianOperator(c.model, c.loss_fn, ["not a batch"])
    frozen = case("relu_init").model.requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        hessian_eigenvalues(frozen, c.loss_fn, c.batches)
    with pytest.raises(ValueError, match=r"`loss_fn` must return a scalar tensor, got \(40, 1\)"):
        hessian_eigenvalues(c.model, lambda m, b: m(b[0]), c.batches)
    with pytest.raises(ValueError, match=r"`num_samples` must be an integer >= 1, got 0"):
        hessian_trace(c.model, c.loss_fn, c.batches, num_samples=0)
    with pytest.raises(ValueError, match=r"`num_iter` must be an integer >= 1, got 0"):
        spectral_density(c.model, c.loss_fn, c.batches, num_iter=0)
    with pytest.raises(ValueError, match=r"`num_runs` must be an integer >= 1, got -1"):
        spectral_density(c.model, c.loss_fn, c.batches, num_runs=-1)
    sd = spectral_density(c.model, c.loss_fn, c.batches, num_iter=5, num_runs=1)
    with pytest.raises(ValueError, match=r"`sigma` must be a finite number > 0, got -1.0"):
        sd.on_grid(sigma=-1.0)
    with pytest.raises(ValueError, match=r"`num_points` must be an integer >= 2, got 1"):
        sd.on_grid(num_points=1)


@pytest.mark.parametrize("backend", ["lanczos", "power", "pyhessian"])
def test_non_finite_loss_is_reported_by_every_backend(backend: str) -> None:
    c = case("relu_init")
    with torch.no_grad():
        c.model[2].bias.fill_(float("inf"))
    with pytest.raises(NonFiniteError, match="loss is not finite"):
        hessian_eigenvalues(c.model, c.loss_fn, c.batches, backend=backend)  # type: ignore[arg-type]
    with pytest.raises(NonFiniteError, match="loss is not finite"):
        hessian_trace(c.model, c.loss_fn, c.batches, memory="recompute")
