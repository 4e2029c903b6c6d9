"""SeedEnsemble against K plain single-seed training loops (float64) and a real TensorBoard file."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch import Trainer, seed_everything
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_landscape.multiseed.ensemble import (
    PerSeedLoader,
    SeedEnsemble,
    VectorizationError,
    compile_unavailable,
)
from tests.oracle import dense_eigenvalues

SEEDS = [0, 5, 9]
QUIET = {"enable_progress_bar": False, "enable_model_summary": False, "num_sanity_val_steps": 0}


class MLP(nn.Module):
    def __init__(self, width: int = 5, depth: int = 1) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Linear(1, width), nn.ReLU()]
        for _ in range(depth - 1):
            layers += [nn.Linear(width, width), nn.ReLU()]
        self.body = nn.Sequential(*layers, nn.Linear(width, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def _data(n: int = 48) -> TensorDataset:
    g = torch.Generator().manual_seed(1)
    x = torch.rand(n, 1, generator=g, dtype=torch.float64)
    return TensorDataset(x, x**2 + 2 * x)


def _single_run(seed: int, loader: Any, epochs: int, opt_name: str, **kw: Any) -> nn.Module:
    """The documented single run: seed_everything, build, then a plain torch loop."""
    seed_everything(seed, workers=True, verbose=False)
    net = MLP(width=5).double()
    if opt_name == "sgd":
        opt: torch.optim.Optimizer = torch.optim.SGD(
            net.parameters(), lr=kw["lr"], momentum=0.9, nesterov=True, weight_decay=1e-3
        )
    else:
        opt = torch.optim.Adam(net.parameters(), lr=kw["lr"], betas=(0.8, 0.99), weight_decay=1e-3)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5) if kw.get("step") else None
    for _ in range(epochs):
        for x, y in loader:
            loss = F.mse_loss(net(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        if sched is not None:
            sched.step()
    return net


def _assert_same(a: nn.Module, b: nn.Module, atol: float) -> None:
    pa, pb = dict(a.named_parameters()), dict(b.named_parameters())
    assert pa.keys() == pb.keys()
    for name in pa:
        torch.testing.assert_close(pa[name].detach(), pb[name].detach(), rtol=0, atol=atol)


def test_members_start_as_single_runs_and_leave_global_rng_alone() -> None:
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    ensemble = SeedEnsemble(MLP, {"width": 5}, seeds=SEEDS)
    assert torch.equal(torch.rand(3), expected_next)
    for k, seed in enumerate(SEEDS):
        seed_everything(seed, workers=True, verbose=False)
        single = MLP(width=5)
        _assert_same(ensemble.member_module(k), single, atol=0.0)
    # Distinct seeds really give distinct members.
    assert not torch.equal(ensemble.members.body[0].weight[0], ensemble.members.body[0].weight[1])


def test_yaml_style_model_spec_builds_the_same_members() -> None:
    by_path = SeedEnsemble("torch.nn.Linear", {"in_features": 3, "out_features": 2}, seeds=[4, 8])
    by_dict = SeedEnsemble(
        {"class_path": "torch.nn.Linear", "init_args": {"in_features": 3, "out_features": 2}}, seeds=2
    )
    for k, seed in enumerate([4, 8]):
        seed_everything(seed, workers=True, verbose=False)
        _assert_same(by_path.member_module(k), nn.Linear(3, 2), atol=0.0)
    seed_everything(1, workers=True, verbose=False)
    _assert_same(by_dict.member_module(1), nn.Linear(3, 2), atol=0.0)
    assert by_path.hparams["model"] == "torch.nn.Linear"


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
    loader = DataLoader(_data(), batch_size=16)
    ensemble = SeedEnsemble(MLP, {"width": 5}, seeds=SEEDS, compile=False, **kwargs)
    trainer = Trainer(max_epochs=3, precision="64-true", logger=False, enable_checkpointing=False, **QUIET)
    trainer.fit(ensemble, loader)
    for k, seed in enumerate(SEEDS):
        single = _single_run(seed, loader, 3, opt_name, lr=kwargs["lr"], step="lr_scheduler" in kwargs)
        _assert_same(ensemble.member_module(k), single, atol=1e-12)
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
    loader = DataLoader(_data(), batch_size=16)
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
        single = _single_run(seed, loader, 3, "adam", lr=ADAM["lr"])
        # Fused reductions and the fused Adam kernel round differently: 1e-10 in float64 after 9 steps.
        _assert_same(compiled.member_module(k), single, atol=1e-10)
        _assert_same(compiled.member_module(k), eager.member_module(k), atol=1e-10)
        _assert_same(eager.member_module(k), single, atol=1e-12)


def test_value_clipping_takes_lightnings_automatic_loop_and_matches_clipped_single_runs() -> None:
    loader = DataLoader(_data(), batch_size=16)
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
        _assert_same(ensemble.member_module(k), net, atol=1e-12)
    assert clipped > 0  # the clip really acted


def test_per_seed_data_streams_match_separate_runs() -> None:
    data = _data()

    def loader(seed: int) -> DataLoader:
        return DataLoader(data, batch_size=12, shuffle=True, generator=torch.Generator().manual_seed(seed))

    ensemble = SeedEnsemble(
        MLP, {"width": 5}, seeds=SEEDS, optimizer="adam", lr=0.05, per_seed_data=True, compile=False
    )
    trainer = Trainer(max_epochs=2, precision="64-true", logger=False, enable_checkpointing=False, **QUIET)
    trainer.fit(ensemble, PerSeedLoader([loader(s) for s in SEEDS]))
    # Independent runs, each on its own seed's shuffled stream.
    for k, seed in enumerate(SEEDS):
        seed_everything(seed, workers=True, verbose=False)
        net = MLP(width=5).double()
        opt = torch.optim.Adam(net.parameters(), lr=0.05)
        own = loader(seed)
        for _ in range(2):
            for x, y in own:
                loss = F.mse_loss(net(x), y)
                opt.zero_grad()
                loss.backward()
                opt.step()
        _assert_same(ensemble.member_module(k), net, atol=1e-12)
    # Members differ in their data: seed 0's net trained on seed 5's stream would not match.
    assert not torch.allclose(ensemble.members.body[0].weight[0], ensemble.members.body[0].weight[1])


def test_per_member_tags_grad_norm_and_gaps_in_tensorboard(tmp_path: Path) -> None:
    data = _data(32)
    train = DataLoader(data, batch_size=16)
    val = DataLoader(_data(20), batch_size=8)
    ensemble = SeedEnsemble(
        MLP, {"width": 5}, seeds=SEEDS, optimizer="sgd", lr=0.1, optimal_risk=0.0, compile=False
    )
    logger = TensorBoardLogger(tmp_path, name="ens", version="")
    trainer = Trainer(
        max_epochs=2,
        precision="64-true",
        logger=logger,
        log_every_n_steps=1,
        enable_checkpointing=False,
        **QUIET,
    )
    trainer.fit(ensemble, train, val)
    events = EventAccumulator(logger.log_dir)
    events.Reload()
    tags = set(events.Tags()["scalars"])
    for seed in SEEDS:
        for name in ("train_loss", "grad_norm", "val_loss", "generalization_gap", "excess_risk"):
            assert f"seed_{seed}/{name}" in tags
    for stat in ("mean", "min", "q25", "median", "q75", "max"):
        assert f"ensemble/train_loss_{stat}" in tags
        assert f"ensemble/grad_norm_{stat}" in tags
    # Step-0 gradient norm of each member equals a plain single model's gradient norm on the first batch.
    x, y = next(iter(train))
    for seed in SEEDS:
        seed_everything(seed, workers=True, verbose=False)
        net = MLP(width=5).double()
        F.mse_loss(net(x), y).backward()
        norm = torch.sqrt(sum(p.grad.pow(2).sum() for p in net.parameters()))  # type: ignore[union-attr]
        logged = events.Scalars(f"seed_{seed}/grad_norm")
        assert logged[0].step == 0
        assert logged[0].value == pytest.approx(float(norm), rel=1e-6)
        assert len(events.Scalars(f"seed_{seed}/val_loss")) == 2
    # The logged summary is the summary of the logged members.
    last = [events.Scalars(f"seed_{s}/val_loss")[-1].value for s in SEEDS]
    assert events.Scalars("ensemble/val_loss_median")[-1].value == pytest.approx(sorted(last)[1], rel=1e-6)
    assert events.Scalars("ensemble/val_loss_max")[-1].value == pytest.approx(max(last), rel=1e-6)


def test_member_top_hessian_eigenvalue_matches_dense_hessian(tmp_path: Path) -> None:
    pytest.importorskip("lightning_landscape.curvature.eigen")
    x, y = _data(24).tensors
    ensemble = SeedEnsemble(MLP, {"width": 4}, seeds=[1, 2], hessian_every_n_steps=1, compile=False).double()
    eig = ensemble.member_top_eigenvalues((x, y), tol=1e-8)
    for k in range(2):
        net = ensemble.member_module(k)
        dense = dense_eigenvalues(net, lambda m, b: F.mse_loss(m(b[0]), b[1]), [(x, y)])
        assert float(eig[k]) == pytest.approx(float(dense[-1]), rel=1e-6)
    # And the schedule logs it per member.
    logger = TensorBoardLogger(tmp_path, name="h", version="")
    Trainer(max_steps=2, precision="64-true", logger=logger, log_every_n_steps=1, **QUIET).fit(
        ensemble, DataLoader(TensorDataset(x, y), batch_size=12)
    )
    events = EventAccumulator(logger.log_dir)
    events.Reload()
    assert {"seed_1/hessian_eig_1", "seed_2/hessian_eig_1", "ensemble/hessian_eig_1_max"} <= set(
        events.Tags()["scalars"]
    )


class _BnNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(1, 4), nn.BatchNorm1d(4), nn.Linear(4, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class _DropNet(MLP):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.dropout(self.body(x), 0.5, training=True)


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


def test_refusals_at_fit_time_name_the_reason() -> None:
    loader = DataLoader(_data(16), batch_size=8)
    with pytest.raises(VectorizationError, match=r"vmap.*dropout.*sequential"):
        Trainer(max_steps=1, logger=False, enable_checkpointing=False, **QUIET).fit(
            SeedEnsemble(_DropNet, seeds=2, compile=False), loader
        )
    ensemble = SeedEnsemble(MLP, seeds=2, compile=False)
    before = ensemble.members.body[0].weight.detach().clone()
    with pytest.raises(VectorizationError, match=r"gradient_clip_val=1\.0.*norm"):
        Trainer(max_steps=1, gradient_clip_val=1.0, logger=False, enable_checkpointing=False, **QUIET).fit(
            ensemble, loader
        )
    assert torch.equal(ensemble.members.body[0].weight.detach(), before)


_ALLOCATOR_SCRIPT = r"""
import ctypes, sys
import torch
from lightning.pytorch import Trainer
from torch.utils.data import DataLoader, TensorDataset
from lightning_landscape.multiseed.ensemble import SeedEnsemble

class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
                 "fordblks", "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2

def mmapped_bytes_while_holding_64mb() -> int:
    block = torch.empty(16 * 2**20)  # 64 MiB of float32
    held = libc.mallinfo2().hblkhd
    del block
    return held

tune = sys.argv[1] == "1"
before = mmapped_bytes_while_holding_64mb()
x = torch.rand(32, 1)
ensemble = SeedEnsemble("torch.nn.Linear", {"in_features": 1, "out_features": 1}, seeds=2,
                        tune_cpu_allocator=tune, compile=False)
Trainer(max_steps=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False).fit(ensemble, DataLoader(TensorDataset(x, 2 * x), batch_size=16))
print(before, mmapped_bytes_while_holding_64mb())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc only")
@pytest.mark.parametrize("tune", [True, False])
def test_cpu_allocator_keeps_large_blocks_only_when_asked(tune: bool) -> None:
    # Process-wide malloc settings: observed in a fresh interpreter through glibc's own mallinfo2.
    out = subprocess.run(
        [sys.executable, "-c", _ALLOCATOR_SCRIPT, "1" if tune else "0"],
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    before, after = (int(v) for v in out.stdout.split()[-2:])
    assert before >= 64 * 2**20  # by default a 64 MiB block is mmapped (and unmapped when freed)
    if tune:
        assert after < 64 * 2**20  # kept on the heap for reuse
    else:
        assert after >= 64 * 2**20
