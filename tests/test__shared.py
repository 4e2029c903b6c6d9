"""The shared "model unchanged" check fails on each kind of change it claims to catch."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from torch import nn

from tests._shared import assert_unchanged, snapshot, torch_threads


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(2, 3), nn.BatchNorm1d(3), nn.Linear(3, 1))


@pytest.mark.parametrize("change", ["mode", "param", "buffer", "flag", "grad", "torch", "numpy", "python"])
def test_each_change_is_caught(change: str) -> None:
    model = _model()
    before = snapshot(model)
    assert_unchanged(model, before)
    if change == "mode":
        model[1].eval()
    elif change == "param":
        with torch.no_grad():
            model[0].weight[0, 0] += 1
    elif change == "buffer":
        model[1].running_mean.add_(1)
    elif change == "flag":
        model[2].bias.requires_grad_(False)
    elif change == "grad":
        model[0].weight.grad = torch.zeros_like(model[0].weight)
    elif change == "torch":
        torch.rand(1)
    elif change == "numpy":
        np.random.rand()
    else:
        random.random()
    with pytest.raises(AssertionError):
        assert_unchanged(model, before)


def test_torch_threads_restores_the_number_even_after_an_error() -> None:
    before = torch.get_num_threads()
    with torch_threads(2):
        with pytest.raises(KeyError), torch_threads(1):
            assert torch.get_num_threads() == 1
            raise KeyError
        assert torch.get_num_threads() == 2
    assert torch.get_num_threads() == before
