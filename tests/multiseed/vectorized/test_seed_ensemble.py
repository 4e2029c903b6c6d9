"""SeedEnsemble (arguments, its own step, its compiled step) against K plain single-seed loops (float64)."""

from __future__ import annotations

from typing import Any

import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch import Trainer, seed_everything
from torch import nn
from torch.utils.data import DataLoader

from lightning_landscape.multiseed.vectorized import SeedEnsemble, VectorizationError, compile_unavailable
from lightning_landscape.multiseed.vectorized.seed_ensemble import resolve_factory
from tests._shared import QUIET
from tests.multiseed.vectorized._cases import MLP, SEEDS, assert_same, data, single_run


def test_members_start_as_single_runs_and_leave_global_rng_alone() -> None:
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    ensemble = SeedEnsemble(MLP, {"width": 5}, seeds=SEEDS)
    assert torch.equal(torch.rand(3), expected_next)
    for k, seed in enumerate(SEEDS):
        seed_everything(seed, workers=True, verbose=False)
        single = MLP(width=5)
        assert_same(ensemble.member_module(k), single, atol=0.0)
    # Distinct seeds really give distinct members.
    assert not torch.equal(ensemble.members.body[0].weight[0], ensemble.members.body[0].weight[1])


def test_yaml_style_model_spec_builds_the_same_members() -> None:
    by_path = SeedEnsemble("torch.nn.Linear", {"in_features": 3, "out_features": 2}, seeds=[4, 8])
    by_dict = SeedEnsemble(
        {"class_path": "torch.nn.Linear", "init_args": {"in_features": 3, "out_features": 2}}, seeds=2
    )
    for k, seed in enumerate([4, 8]):
        seed_everything(seed, workers=True, verbose=False)
        assert_same(by_path.member_module(k), nn.Linear(3, 2), atol=0.0)
    seed_everything(1, workers=True, verbose=False)
    assert_same(by_dict.member_module(1), nn.Linear(3, 2), atol=0.0)
    assert by_path.hparams["model"] == "torch.nn.Linear"


def test_resolve_factory_builds_fresh_modules_and_names_bad_specs() -> None:
    factory = resolve_factory(
        {"class_path": "torch.nn.Linear", "init_args": {"in_features": 3}}, {"out_features": 2}
    )
    a, b = factory(), factory()
    assert isinstance(a, nn.Linear) and (a.in_features, a.out_features) == (3, 2)
    assert a is not b
    with pytest.raises(ValueError, match="needs a 'class_path' key"):
        resolve_factory({"init_args": {}})


@pytest.mark.parametrize(
    ("opt_name", "kwargs"),
    [
        ("sgd", {"optimizer": "sgd", "lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 1e-3}),
        (
            "adam",
            {
                "optimizer": "adam",
                "lr": 0.05,
                "betas": (0.8, 0.99),
                "weight_decay": 1e-3,
                "lr_scheduler": "step",
                "step_size": 1,
                "gamma": 0.5,
            },
        ),
    ],
)
def test_trajectories_match_separate_runs_float64(opt_name: str, kwargs: dict[str, Any]) -> None:
    loader = DataLoader(data(), batch_size=16)
    ensemble = SeedEnsemble(MLP, {"width": 5}, seeds=SEEDS, compile=False, **kwargs)
    trainer = Trainer(max_epochs=3, precision="64-true", logger=False, enable_checkpointing=False, **QUIET)
    trainer.fit(ensemble, loader)
    for k, seed in enumerate(SEEDS):
        single = single_run(seed, loader, 3, opt_name, lr=kwargs["lr"], step="lr_scheduler" in kwargs)
        assert_same(ensemble.member_module(k), single, atol=1e-12)
        # The members moved: equality is not the trivial one of untouched weights.
        seed_everything(seed, workers=True, verbose=False)
        start = MLP(width=5).double()
        assert (start.body[0].weight - single.body[0].weight).abs().max() > 1e-3


ADAM = {"optimizer": "adam", "lr": 0.05, "betas": (0.8, 0.99), "weight_decay": 1e-3}


@pytest.mark.slow
def test_compiled_step_matches_separate_runs_and_the_eager_step_float64() -> None:
    # The one torch.compile of the suite (~20 s on a CPU): compiled loss, fused Adam, our own step.
    if compile_unavailable(torch.device("cpu")) is not None:
        pytest.skip(compile_unavailable(torch.device("cpu")))
    loader = DataLoader(data(), batch_size=16)
    fits = {}
    for mode in (True, False):
        ensemble = SeedEnsemble(MLP, {"width": 5}, seeds=SEEDS, compile=mode, **ADAM)
        trainer = Trainer(
            max_epochs=3, precision="64-true", logger=False, enable_checkpointing=False, **QUIET
        )
        trainer.fit(ensemble, loader)
        fits[mode] = ensemble
    compiled, eager = fits[True], fits[False]
    assert compiled.compile_active and compiled._compiled is not None
    assert compiled.compile_seconds is not None and compiled.compile_seconds > 0
    assert not eager.compile_active and eager.compile_reason == "compile=False"
    assert compiled.trainer.optimizers[0].defaults["fused"] is True
    for k, seed in enumerate(SEEDS):
        single = single_run(seed, loader, 3, "adam", lr=ADAM["lr"])
        # Fused reductions and the fused Adam kernel round differently: 1e-10 in float64 after 9 steps.
        assert_same(compiled.member_module(k), single, atol=1e-10)
        assert_same(compiled.member_module(k), eager.member_module(k), atol=1e-10)
        assert_same(eager.member_module(k), single, atol=1e-12)


def test_value_clipping_takes_lightnings_automatic_loop_and_matches_clipped_single_runs() -> None:
    loader = DataLoader(data(), batch_size=16)
    ensemble = SeedEnsemble(MLP, {"width": 5}, seeds=SEEDS, optimizer="sgd", lr=0.1, compile=False)
    trainer = Trainer(
        max_epochs=2,
        precision="64-true",
        gradient_clip_val=0.05,
        gradient_clip_algorithm="value",
        logger=False,
        enable_checkpointing=False,
        **QUIET,
    )
    trainer.fit(ensemble, loader)
    assert ensemble.automatic_optimization
    clipped = 0
    for k, seed in enumerate(SEEDS):
        seed_everything(seed, workers=True, verbose=False)
        net = MLP(width=5).double()
        opt = torch.optim.SGD(net.parameters(), lr=0.1)
        for _ in range(2):
            for x, y in loader:
                opt.zero_grad()
                F.mse_loss(net(x), y).backward()
                clipped += sum(int((p.grad.abs() > 0.05).sum()) for p in net.parameters())  # type: ignore[union-attr]
                torch.nn.utils.clip_grad_value_(net.parameters(), 0.05)
                opt.step()
        assert_same(ensemble.member_module(k), net, atol=1e-12)
    assert clipped > 0  # the clip really acted


class _BnNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(1, 4), nn.BatchNorm1d(4), nn.Linear(4, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"loss": "hinge"}, ValueError, "`loss`='hinge'"),
        ({"loss": "nowhere.fn"}, ValueError, "`loss`='nowhere.fn' could not be imported"),
        ({"optimizer": "lbfgs"}, ValueError, "`optimizer`='lbfgs'"),
        ({"lr_scheduler": "plateau"}, ValueError, "`lr_scheduler`='plateau'"),
        ({"seeds": []}, ValueError, "`seeds`"),
        ({"seeds": [1, 1]}, ValueError, "duplicates"),
        ({"lr": 0.0}, ValueError, "`lr` must be positive"),
        ({"hessian_every_n_steps": -1}, ValueError, "`hessian_every_n_steps`"),
        ({"compile": "yes"}, ValueError, "`compile`='yes' is not True, False or 'auto'"),
        ({"model": 123}, TypeError, "`model` must be"),
        ({"model": "torch.nn.NoSuchThing"}, ValueError, "'torch.nn.NoSuchThing' could not be imported"),
        ({"model": _BnNet}, VectorizationError, "BatchNorm1d.*sequential"),
    ],
)
def test_bad_arguments_are_named(kwargs: dict[str, Any], error: type[Exception], match: str) -> None:
    args = {"model": MLP, **kwargs}
    with pytest.raises(error, match=match):
        SeedEnsemble(**args)
