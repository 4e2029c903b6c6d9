"""The probe context: what it shadows on the module, and that it puts everything back."""

from __future__ import annotations

import torch

from lightning_landscape.callbacks._probe import ProbeLoss, _InertStepper, neutralized
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
        inside = ProbeLoss(lambda m, b: m.discriminator(b))(model, real)
    assert inside.dtype == torch.float32
