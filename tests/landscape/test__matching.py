"""The alignment internals on a two-layer MLP, where the spec and the permuted weights are known by hand."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_landscape.landscape._derive_spec import derive_spec
from lightning_landscape.landscape._matching import permute, scale
from lightning_landscape.landscape._permutation_spec import AxisEntry, PermutationSpec, refuse


def _mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)).double()


def test_derived_spec_of_an_mlp_is_the_hand_written_one() -> None:
    spec = derive_spec(_mlp())
    assert isinstance(spec, PermutationSpec)
    assert list(spec.sizes.values()) == [4]  # one hidden group of 4 units; input and output never permuted
    (group,) = spec.sizes
    axes = {(e.name, e.axis, e.role) for e in spec.entries}
    assert axes == {("0.weight", 0, "out"), ("0.bias", 0, "out"), ("2.weight", 1, "in")}
    assert all(e.group == group for e in spec.entries)
    assert spec.rescalable == (group,)  # behind a ReLU: positively homogeneous


def test_permute_and_scale_move_units_exactly() -> None:
    model = _mlp()
    spec = derive_spec(model)
    (group,) = spec.sizes
    state = {k: v.clone() for k, v in model.state_dict().items()}
    perm = torch.tensor([2, 0, 3, 1])
    moved = permute(state, spec, {group: perm})
    assert torch.equal(moved["0.weight"], state["0.weight"][perm])
    assert torch.equal(moved["0.bias"], state["0.bias"][perm])
    assert torch.equal(moved["2.weight"], state["2.weight"][:, perm])
    c = torch.tensor([0.5, 2.0, 3.0, 1.0], dtype=torch.float64)
    scaled = scale(state, spec, group, c)
    assert torch.allclose(scaled["0.weight"], state["0.weight"] * c[:, None])
    assert torch.allclose(scaled["2.weight"], state["2.weight"] / c[None, :])
    x = torch.randn(5, 3, dtype=torch.float64)
    for new in (moved, scaled):
        other = _mlp()
        other.load_state_dict(new)
        assert torch.allclose(other(x), model(x), atol=1e-12)


def test_refuse_names_the_place_and_the_way_out() -> None:
    err = refuse("node `view`", "reshapes a permuted axis")
    assert isinstance(err, ValueError)
    assert "node `view`" in str(err) and "reshapes a permuted axis" in str(err) and "nn.Flatten" in str(err)
    entry = AxisEntry(name="w", axis=0, group="g")
    assert entry.block == 1 and entry.role == "other"


def test_a_view_on_a_hidden_axis_is_refused_by_name() -> None:
    class Viewing(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(3, 4), nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.b(self.a(x).view(-1, 4))

    with pytest.raises(ValueError, match="view"):
        derive_spec(Viewing())
