"""Parameter selections (name prefixes, one regular expression): what they select and how they refuse."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_landscape.curvature import HessianOperator, hessian_eigenvalues, hessian_trace
from lightning_landscape.curvature._params import select_parameters
from tests.curvature.cases import case


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


def test_a_tied_parameter_is_selected_by_any_of_its_names() -> None:
    # As GPT-2's LM head shares its token embedding: listed once, under its first name.
    model = nn.Sequential(nn.Linear(2, 2), nn.Tanh(), nn.Linear(2, 2), nn.Linear(2, 2))
    model[3].weight = model[0].weight
    assert [n for n, _ in model.named_parameters()] == ["0.weight", "0.bias", "2.weight", "2.bias", "3.bias"]
    assert [(n, p) for n, p in select_parameters(model, ["3.weight"])] == [("0.weight", model[0].weight)]
    assert [n for n, _ in select_parameters(model, ["3"])] == ["0.weight", "3.bias"]
    assert [n for n, _ in select_parameters(model, r"^3\.")] == ["0.weight", "3.bias"]
    assert [n for n, _ in select_parameters(model, ["2", "3.weight"])] == ["0.weight", "2.weight", "2.bias"]
    assert [n for n, _ in select_parameters(model, ["0.bias"])] == ["0.bias"]
    # The block is the shared variable's: one operator over it, whichever name chose it.
    x = torch.randn(5, 2, generator=torch.Generator().manual_seed(0))

    def loss(m: nn.Module, b: torch.Tensor) -> torch.Tensor:
        return m(b).pow(2).mean()

    by_alias = HessianOperator(model, loss, [x], params=["3.weight"])
    by_name = HessianOperator(model, loss, [x], params=["0.weight"])
    v = torch.randn(4, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(by_alias.matvec(v), by_name.matvec(v), rtol=0, atol=0)
