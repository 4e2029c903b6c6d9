"""Parameter selections (name prefixes, one regular expression): what they select and how they refuse."""

from __future__ import annotations

import pytest

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
