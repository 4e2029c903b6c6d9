"""The dense oracle itself, on closed forms where it could go wrong."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from tests.oracle import dense_hessian


class TiedLinears(nn.Module):
    """Two modules sharing one weight, as GPT-2's LM head shares its token embedding."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(1, 1, bias=False).double()
        self.b = nn.Linear(1, 1, bias=False).double()
        self.b.weight = self.a.weight


def test_a_tied_weight_is_one_variable_in_every_module_using_it() -> None:
    model = TiedLinears()
    assert [n for n, _ in model.named_parameters()] == ["a.weight"]
    with torch.no_grad():
        model.a.weight.fill_(0.5)

    def loss(m: nn.Module, x: Tensor) -> Tensor:
        return (m.a(x) * m.b(x)).sum()  # w^2 x^2: Hessian 2 x^2 = 18 (0 if b's use were a constant)

    x = torch.tensor([[3.0]], dtype=torch.float64)
    assert dense_hessian(model, loss, [x]).tolist() == [[18.0]]
    assert model.b.weight is model.a.weight and model.a.weight.item() == 0.5
