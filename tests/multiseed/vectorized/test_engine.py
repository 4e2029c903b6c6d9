"""The stacked engine under SeedEnsemble: per-member logs, per-member Hessians, the refusals it raises."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch import Trainer, seed_everything
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch.utils.data import DataLoader, TensorDataset

from lightning_landscape.multiseed.vectorized import SeedEnsemble, VectorizationError
from lightning_landscape.multiseed.vectorized.engine import StackedEnsemble
from tests._shared import QUIET, mse_loss
from tests.multiseed.vectorized._cases import MLP, SEEDS, data
from tests.oracle import dense_eigenvalues


def test_seed_ensemble_is_the_stacked_engine() -> None:
    ensemble = SeedEnsemble(MLP, {"width": 3}, seeds=SEEDS)
    assert isinstance(ensemble, StackedEnsemble)
    assert ensemble.num_members == len(SEEDS)
    # Every stacked tensor carries the member dimension first.
    assert all(t.shape[0] == len(SEEDS) for t in ensemble.members.state_dict().values())


def test_per_member_tags_grad_norm_and_gaps_in_tensorboard(tmp_path: Path) -> None:
    train = DataLoader(data(32), batch_size=16)
    val = DataLoader(data(20), batch_size=8)
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
    x, y = data(24).tensors
    ensemble = SeedEnsemble(MLP, {"width": 4}, seeds=[1, 2], hessian_every_n_steps=1, compile=False).double()
    eig = ensemble.member_top_eigenvalues((x, y), tol=1e-8)
    for k in range(2):
        net = ensemble.member_module(k)
        dense = dense_eigenvalues(net, mse_loss, [(x, y)])
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


class _DropNet(MLP):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.dropout(self.body(x), 0.5, training=True)


def test_refusals_at_fit_time_name_the_reason() -> None:
    loader = DataLoader(data(16), batch_size=8)
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
