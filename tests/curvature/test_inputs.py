"""What the curvature functions take: batch sizes, the common checks, trainable parameters, generators."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_landscape.curvature._inputs import (
    batch_size,
    make_generator,
    trainable_parameters,
    validate_inputs,
)


def test_batch_size_is_the_first_tensor_depth_first() -> None:
    assert batch_size({"a": "text", "b": (torch.zeros(7, 2),)}) == 7
    assert batch_size([[torch.zeros(3)], torch.zeros(5)]) == 3
    assert batch_size(torch.tensor(3.0)) == 1
    with pytest.raises(TypeError, match="Each batch must be a tensor"):
        batch_size(("no", "tensor"))


def test_validate_inputs_returns_a_list_and_names_the_argument() -> None:
    model = nn.Linear(2, 1)
    loss = lambda m, b: m(b).sum()  # noqa: E731
    batches = (torch.ones(1, 2), torch.ones(3, 2))
    out = validate_inputs(model, loss, batches)
    assert isinstance(out, list) and len(out) == 2 and out[0] is batches[0]
    with pytest.raises(TypeError, match=r"`model` must be a torch\.nn\.Module"):
        validate_inputs("m", loss, batches)
    with pytest.raises(TypeError, match="`loss_fn` must be callable"):
        validate_inputs(model, None, batches)
    with pytest.raises(TypeError, match="`batches` must be a list or tuple"):
        validate_inputs(model, loss, {"x": torch.ones(1, 2)})
    with pytest.raises(ValueError, match="`batches` is empty"):
        validate_inputs(model, loss, [])
    model.requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        validate_inputs(model, loss, batches)


def test_trainable_parameters_and_generator() -> None:
    model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1))
    model[0].weight.requires_grad_(False)
    assert trainable_parameters(model) == [model[0].bias, model[1].weight, model[1].bias]
    a = torch.randn(4, generator=make_generator(3))
    b = torch.randn(4, generator=make_generator(3))
    assert torch.equal(a, b) and make_generator(3).device.type == "cpu"
