"""The probe's loss closure (what it shadows on the module, and that it puts everything back), the one way
probe batches are drawn, and the batch size the risk monitor weighs by."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from lightning_landscape.callbacks._probe import (
    TrainingStepLoss,
    _InertStepper,
    batch_size_of,
    draw_batches,
    neutralized,
)
from lightning_landscape.curvature import batch_size
from tests.callbacks.zoo import TinyGAN


def test_neutralized_shadows_and_restores_instance_attributes() -> None:
    model = TinyGAN()
    own_log = object()
    model.__dict__["log"] = own_log  # a user's own instance attribute must survive the probe
    model.__dict__["optimizers"] = lambda use_pl_optimizer=True: [torch.optim.SGD(model.parameters(), lr=1.0)]
    with neutralized(model):
        assert model.log("x", 1.0) is None and model.manual_backward(torch.ones(())) is None
        assert model.toggle_optimizer(None) is None
        g_opt = model.optimizers()[0]
        assert isinstance(g_opt, _InertStepper) and g_opt.param_groups[0]["lr"] == 1.0
        for p in model.parameters():
            p.grad = torch.ones_like(p)
        before = [p.detach().clone() for p in model.parameters()]
        g_opt.step()
        g_opt.zero_grad()
        assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
        assert all(p.grad is not None for p in model.parameters())
    assert model.__dict__["log"] is own_log
    assert "manual_backward" not in model.__dict__ and "toggle_optimizer" not in model.__dict__
    assert not isinstance(model.optimizers()[0], _InertStepper)


def test_probe_loss_runs_with_autocast_off() -> None:
    model = TinyGAN().float()
    real = torch.randn(4, 2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert model.discriminator(real).dtype == torch.bfloat16  # what the training step would see
        inside = TrainingStepLoss(lambda m, b: m.discriminator(b))(model, real)
    assert inside.dtype == torch.float32


def _dataset(n: int = 20) -> TensorDataset:
    x = torch.arange(n, dtype=torch.float64)[:, None]
    return TensorDataset(x, 2 * x)


def test_draw_batches_is_the_seeded_first_pass_and_leaves_every_random_state_alone() -> None:
    own = torch.Generator().manual_seed(123)
    loader = DataLoader(_dataset(), batch_size=4, shuffle=True, generator=own)
    sampler = DistributedSampler(_dataset(), num_replicas=2, rank=0, shuffle=True, seed=0)
    sampler.set_epoch(5)
    sharded = DataLoader(_dataset(), batch_size=3, sampler=sampler)
    torch.manual_seed(99)
    np.random.seed(99)
    random.seed(99)
    before = (torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate(), own.get_state())

    first = draw_batches(loader, 2, seed=7)
    again = draw_batches(loader, 2, seed=7)
    shard = draw_batches(sharded, None, seed=7)

    assert torch.equal(torch.get_rng_state(), before[0])
    assert np.array_equal(np.random.get_state()[1], before[1]) and random.getstate() == before[2]
    # Independent truth: the same loader with a generator seeded with 7, iterated plainly; epoch 0 sampler.
    truth = list(
        DataLoader(_dataset(), batch_size=4, shuffle=True, generator=torch.Generator().manual_seed(7))
    )
    plain = DistributedSampler(_dataset(), num_replicas=2, rank=0, shuffle=True, seed=0)
    truth_shard = list(DataLoader(_dataset(), batch_size=3, sampler=plain))
    assert len(first) == 2 and len(shard) == len(truth_shard) == 4
    for got, want in [*zip(first, truth[:2], strict=True), *zip(again, truth[:2], strict=True)]:
        assert all(torch.equal(a, b) for a, b in zip(got, want, strict=True))
    for got, want in zip(shard, truth_shard, strict=True):
        assert all(torch.equal(a, b) for a, b in zip(got, want, strict=True))
    assert torch.equal(own.get_state(), before[3]) and sampler.epoch == 5


def test_draw_batches_moves_each_batch_and_refuses_an_empty_loader() -> None:
    moved = draw_batches(DataLoader(_dataset(8), batch_size=4), 5, seed=0, to_device=lambda b: ("moved", b))
    assert [m[0] for m in moved] == ["moved", "moved"]  # 5 asked, the loader has 2
    with pytest.raises(ValueError, match="the probe dataloader yielded no batch"):
        draw_batches(DataLoader(_dataset(0), batch_size=4), 1, seed=0)


@dataclass
class _Pair:
    x: Tensor
    y: Tensor


def test_batch_size_of_counts_as_lightning_does_and_never_fails() -> None:
    batch = {"x": torch.zeros(5, 3), "y": torch.zeros(5)}
    assert batch_size_of(batch) == batch_size(batch) == 5
    # Where the curvature core's strict size refuses, the risk monitor's weight still counts (or is 1).
    assert batch_size_of(_Pair(torch.zeros(6, 2), torch.zeros(6))) == 6
    assert batch_size_of(object()) == 1
    for no_tensor in (_Pair(torch.zeros(6, 2), torch.zeros(6)), object()):
        with pytest.raises(TypeError, match="Each batch must be a tensor"):
            batch_size(no_tensor)


def test_training_step_loss_takes_a_dict_and_refuses_what_is_not_a_scalar() -> None:
    class Step(nn.Module):
        def __init__(self, out: Any) -> None:
            super().__init__()
            self.out = out

        def training_step(self, batch: Any, batch_idx: int) -> Any:
            return self.out

    loss = TrainingStepLoss()(Step({"loss": torch.tensor([2.0])}), None)
    assert loss.shape == () and float(loss) == 2.0
    with pytest.raises(TypeError, match=r"Step.training_step must return a scalar loss tensor.*got Tensor"):
        TrainingStepLoss()(Step(torch.ones(3)), None)
    with pytest.raises(TypeError, match="got NoneType"):
        TrainingStepLoss()(Step(None), None)
