"""Members built as their single runs (RNG and seed variables left alone), stacked and taken apart exactly."""

from __future__ import annotations

import os
import random

import numpy as np
import pytest
import torch
from lightning.pytorch import seed_everything
from torch import nn

from lightning_landscape.multiseed.vectorized.members import build_seeded, stack_members, unstack_member


class _WithBuffer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 2)
        self.register_buffer("scale", torch.rand(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x) * self.scale


def test_build_seeded_is_seed_everything_then_build_and_leaves_every_rng_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PL_GLOBAL_SEED", "77")
    monkeypatch.delenv("PL_SEED_WORKERS", raising=False)
    torch.manual_seed(5)
    np.random.seed(5)
    random.seed(5)

    def draw() -> tuple[torch.Tensor, float, float]:
        return torch.rand(2), float(np.random.rand()), random.random()

    expected = draw()
    torch.manual_seed(5)
    np.random.seed(5)
    random.seed(5)

    built = build_seeded(draw, [3, 8, 3])
    after = draw()
    assert torch.equal(after[0], expected[0]) and after[1:] == expected[1:]
    assert os.environ["PL_GLOBAL_SEED"] == "77" and "PL_SEED_WORKERS" not in os.environ
    for seed, got in zip([3, 8, 3], built, strict=True):
        seed_everything(seed, workers=True, verbose=False)
        reference = draw()
        assert torch.equal(got[0], reference[0]) and got[1:] == reference[1:]
    assert not torch.equal(built[0][0], built[1][0])


def test_stack_then_unstack_gives_each_member_back_exactly() -> None:
    torch.manual_seed(0)
    nets = [_WithBuffer() for _ in range(3)]
    skeleton, members, params, buffers = stack_members(nets)
    assert params == ["lin.weight", "lin.bias"] and buffers == ["scale"]
    assert skeleton.lin.weight.device.type == "meta"
    assert members.lin.weight.shape == (3, 2, 3) and members.lin.weight.requires_grad
    assert not members.scale.requires_grad
    x = torch.rand(4, 3)
    for k, net in enumerate(nets):
        state = {name: t[k].detach().clone() for name, t in members.state_dict().items()}
        back = unstack_member(skeleton, state, params, buffers)
        assert type(back) is _WithBuffer and back.lin.weight.requires_grad
        for name, tensor in net.state_dict().items():
            assert torch.equal(back.state_dict()[name], tensor), name
        assert torch.equal(back(x), net(x))
    # The stack owns its tensors: training it leaves the source networks untouched.
    source = nets[0].lin.weight.detach().clone()
    with torch.no_grad():
        members.lin.weight.add_(1.0)
    assert torch.equal(nets[0].lin.weight, source)
