"""The model-level functions: every argument checked once, with an error naming it, before any evaluation."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from lightning_landscape.curvature import (
    HessianOperator,
    NonFiniteError,
    api,
    hessian_eigenvalues,
    hessian_trace,
    spectral_density,
)
from lightning_landscape.curvature.operators import inputs as operator_module
from tests.curvature.cases import CountingLoss, case


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


@pytest.mark.parametrize("backend", ["lanczos", "power", "pyhessian"])
def test_non_finite_loss_is_reported_by_every_backend(backend: str) -> None:
    c = case("relu_init")
    with torch.no_grad():
        c.model[2].bias.fill_(float("inf"))
    with pytest.raises(NonFiniteError, match="loss is not finite"):
        hessian_eigenvalues(c.model, c.loss_fn, c.batches, backend=backend)  # type: ignore[arg-type]
    with pytest.raises(NonFiniteError, match="loss is not finite"):
        hessian_trace(c.model, c.loss_fn, c.batches, memory="recompute")


@pytest.mark.parametrize(
    ("call", "options"),
    [
        (hessian_eigenvalues, {"k": 2, "which": "both"}),
        (hessian_eigenvalues, {"backend": "power", "tol": 1e-2, "max_iter": 20}),
        (hessian_trace, {"num_samples": 6, "method": "xtrace"}),
        (spectral_density, {"num_iter": 5, "num_runs": 2}),
    ],
)
def test_inputs_are_checked_and_selected_once(
    monkeypatch: pytest.MonkeyPatch, call: Any, options: dict[str, Any]
) -> None:
    # The model, loss and batches are validated and the parameters selected by OperatorInputs.check, once;
    # the operator is built from its result, not from the raw arguments again.
    counts = {"validate": 0, "select": 0}

    def counted(name: str, fn: Any) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            counts[name] += 1
            return fn(*args, **kwargs)

        return wrapper

    monkeypatch.setattr(
        operator_module, "validate_inputs", counted("validate", operator_module.validate_inputs)
    )
    monkeypatch.setattr(
        operator_module, "select_parameters", counted("select", operator_module.select_parameters)
    )
    built: list[HessianOperator] = []
    from_inputs = HessianOperator.from_inputs.__func__  # type: ignore[attr-defined]

    def counting_from_inputs(cls: type[HessianOperator], *args: Any, **kwargs: Any) -> HessianOperator:
        op = from_inputs(cls, *args, **kwargs)
        built.append(op)
        return op

    monkeypatch.setattr(HessianOperator, "from_inputs", classmethod(counting_from_inputs))
    c = case("relu_init")
    call(c.model, c.loss_fn, c.batches, params=["0"], **options)
    assert counts == {"validate": 1, "select": 1} and len(built) == 1
    assert built[0].param_names == ["0.weight", "0.bias"] and built[0]._grads is None  # closed on the way out
    assert api.BACKENDS == ("lanczos", "power", "pyhessian")


def test_a_bad_option_is_refused_before_any_evaluation() -> None:
    c = case("relu_init")
    loss = CountingLoss()
    for call, kwargs in [
        (hessian_eigenvalues, {"memory": "lots"}),
        (hessian_eigenvalues, {"backend": "pyhessian", "memory": "lots"}),
        (hessian_trace, {"method": "xtrace", "num_samples": 3}),
        (spectral_density, {"num_runs": 0}),
    ]:
        with pytest.raises(ValueError):
            call(c.model, loss, c.batches, **kwargs)  # type: ignore[operator]
    assert loss.calls == 0
