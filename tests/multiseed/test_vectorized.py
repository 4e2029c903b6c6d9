"""The vectorized executor against K separate Lightning fits of the same plain module (float64)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule, Trainer, seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_landscape.multiseed.build import model_builder
from lightning_landscape.multiseed.ensemble import VectorizationError
from lightning_landscape.multiseed.executors import SeedJob
from lightning_landscape.multiseed.vectorized import run_vectorized

SEEDS = [3, 11, 42]
EPOCHS = 4
QUIET = {"enable_progress_bar": False, "enable_model_summary": False}


class TinyRegressor(LightningModule):
    """Qualifies: `net` holds all parameters and both steps use `loss_on_batch`."""

    def __init__(self, hidden: int = 6, lr: float = 0.08, optimizer: str = "adam") -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = nn.Sequential(nn.Linear(2, hidden), nn.Tanh(), nn.Linear(hidden, 1))

    def loss_on_batch(self, net: Any, batch: Any) -> torch.Tensor:
        x, y = batch
        return F.mse_loss(net(x), y)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        loss = self.loss_on_batch(self.net, batch)
        self.log("train_loss", loss)
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self.log("val_loss", self.loss_on_batch(self.net, batch))

    def configure_optimizers(self) -> Any:
        if self.hparams.optimizer == "lbfgs":
            return torch.optim.LBFGS(self.parameters(), lr=self.hparams.lr)
        if self.hparams.optimizer == "sgd":
            return torch.optim.SGD(self.parameters(), lr=self.hparams.lr, momentum=0.9)
        opt = torch.optim.Adam(self.parameters(), lr=self.hparams.lr)
        return {
            "optimizer": opt,
            "lr_scheduler": torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5),
        }


def _loaders() -> tuple[DataLoader, DataLoader]:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(40, 2, generator=g, dtype=torch.float64)
    y = (x**2).sum(1, keepdim=True) + 2 * x[:, :1]
    # 20 validation samples in batches of 8: the uneven last batch checks the size-weighted epoch mean.
    return DataLoader(TensorDataset(x[:20], y[:20]), batch_size=8), DataLoader(
        TensorDataset(x[20:], y[20:]), batch_size=8
    )


def _sequential(seed: int, tmp: Path, **hparams: Any) -> tuple[float, dict[str, torch.Tensor]]:
    train, val = _loaders()
    seed_everything(seed, workers=True, verbose=False)
    model = TinyRegressor(**hparams)
    ckpt = ModelCheckpoint(dirpath=tmp / f"seq_{seed}", monitor="val_loss", mode="min")
    trainer = Trainer(
        max_epochs=EPOCHS,
        precision="64-true",
        logger=False,
        callbacks=[ckpt],
        num_sanity_val_steps=0,
        **QUIET,
    )
    trainer.fit(model, train, val)
    state = torch.load(ckpt.best_model_path, weights_only=True)["state_dict"]
    return float(ckpt.best_model_score), state  # type: ignore[arg-type]


def _job(
    root: Path, model: Any, trainer_kwargs: dict[str, Any], mode: str = "min", **hparams: Any
) -> SeedJob:
    train, val = _loaders()
    return SeedJob(
        root_dir=str(root),
        monitor="val_loss",
        mode=mode,
        trainer_kwargs=trainer_kwargs,
        model=model_builder(model, hparams or None),
        train_dataloaders=train,
        val_dataloaders=val,
    )


def _vectorized(tmp: Path, **hparams: Any) -> list[Any]:
    kwargs = {"max_epochs": EPOCHS, "precision": "64-true", "log_every_n_steps": 1, **QUIET}
    return run_vectorized(_job(tmp / "vec", TinyRegressor, kwargs, **hparams), SEEDS)


@pytest.mark.slow
def test_matches_sequential_fits_and_exports_plain_checkpoints(tmp_path: Path) -> None:
    runs = _vectorized(tmp_path)
    assert [r.seed for r in runs] == SEEDS
    _, val = _loaders()
    for run in runs:
        assert run.status == "finished", run.error
        score, state = _sequential(run.seed, tmp_path)
        assert run.score == pytest.approx(score, rel=1e-10, abs=1e-12)
        # An ordinary Lightning checkpoint: plain values only, loadable by the plain class alone.
        path = Path(run.best_model_path)
        assert path == tmp_path / "vec" / f"seed_{run.seed}" / "checkpoints" / "best.ckpt"
        raw = torch.load(path, weights_only=True)
        assert {"state_dict", "hyper_parameters", "pytorch-lightning_version", "epoch", "global_step"} <= set(
            raw
        )
        assert raw["state_dict"].keys() == state.keys()
        for name, tensor in state.items():
            torch.testing.assert_close(raw["state_dict"][name], tensor, rtol=0, atol=1e-12)
        # load_from_checkpoint builds float32 parameters, so the reloaded score agrees to float32 rounding.
        plain = TinyRegressor.load_from_checkpoint(path, weights_only=True)
        assert plain.hparams.hidden == 6
        assert _val_score(plain.double(), val) == pytest.approx(run.score, rel=1e-6)
        exact = TinyRegressor().double()
        exact.load_state_dict(raw["state_dict"])
        assert _val_score(exact, val) == pytest.approx(run.score, rel=1e-12)


def _val_score(model: TinyRegressor, val: DataLoader) -> float:
    with torch.no_grad():
        total = sum(float(model.loss_on_batch(model.net, b)) * len(b[0]) for b in val)
    return total / len(val.dataset)  # type: ignore[arg-type]


def test_sgd_momentum_members_match_sequential(tmp_path: Path) -> None:
    runs = _vectorized(tmp_path, optimizer="sgd", lr=0.05)
    for run in runs[:2]:
        score, state = _sequential(run.seed, tmp_path, optimizer="sgd", lr=0.05)
        assert run.score == pytest.approx(score, rel=1e-10)
        exported = torch.load(run.best_model_path, weights_only=True)["state_dict"]
        for name, tensor in state.items():
            torch.testing.assert_close(exported[name], tensor, rtol=0, atol=1e-12)


def test_per_member_tags_in_tensorboard(tmp_path: Path) -> None:
    runs = _vectorized(tmp_path)
    events = EventAccumulator(str(tmp_path / "vec" / "ensemble"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    for seed in SEEDS:
        for name in ("val_loss", "train_loss", "grad_norm", "generalization_gap"):
            assert f"seed_{seed}/{name}" in tags
    for stat in ("mean", "min", "q25", "median", "q75", "max"):
        assert f"ensemble/val_loss_{stat}" in tags
    # The best logged per-member validation loss is the member's score.
    for run in runs:
        values = [e.value for e in events.Scalars(f"seed_{run.seed}/val_loss")]
        assert len(values) == EPOCHS
        assert min(values) == pytest.approx(run.score, rel=1e-6)
    means = [e.value for e in events.Scalars("ensemble/val_loss_mean")]
    per_member = [[e.value for e in events.Scalars(f"seed_{s}/val_loss")] for s in SEEDS]
    assert means[-1] == pytest.approx(sum(v[-1] for v in per_member) / len(SEEDS), rel=1e-5)
    # Each seed also gets its own event file in its folder, as the sequential executor leaves.
    own = EventAccumulator(str(tmp_path / "vec" / f"seed_{SEEDS[0]}"))
    own.Reload()
    assert [e.value for e in own.Scalars("val_loss")] == pytest.approx(per_member[0], rel=1e-6)


class _NoNet(TinyRegressor):
    def __init__(self) -> None:
        super().__init__()
        self.body = self.net
        del self.net


class _NoLoss(LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Linear(2, 1)


class _Bn(TinyRegressor):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(2, 4), nn.BatchNorm1d(4), nn.Linear(4, 1))


class _Branchy(TinyRegressor):
    def loss_on_batch(self, net: Any, batch: Any) -> torch.Tensor:
        x, y = batch
        out = net(x)
        if out.sum() > 0:  # data-dependent control flow
            out = out * 2
        return F.mse_loss(out, y)


@pytest.mark.parametrize(
    ("model", "trainer_kwargs", "mode", "match"),
    [
        (_NoNet, {}, "min", "no nn.Module attribute `net`"),
        (_NoLoss, {}, "min", "loss_on_batch"),
        (_Bn, {}, "min", "BatchNorm1d|batch-norm"),
        (lambda: TinyRegressor(optimizer="lbfgs"), {}, "min", "LBFGS.*elementwise"),
        (TinyRegressor, {"gradient_clip_val": 1.0}, "min", "gradient_clip_val=1.0"),
        (TinyRegressor, {}, "max", "mode='max'"),
        (TinyRegressor, {"callbacks": [ModelCheckpoint()]}, "min", "callbacks"),
        (_Branchy, {}, "min", "data-dependent control flow"),
    ],
)
def test_refusals_name_the_reason_and_suggest_sequential(
    tmp_path: Path, model: Any, trainer_kwargs: dict[str, Any], mode: str, match: str
) -> None:
    kwargs = {"max_epochs": 1, "logger": False, **QUIET, **trainer_kwargs}
    with pytest.raises(VectorizationError, match=match) as info:
        run_vectorized(_job(tmp_path, model, kwargs, mode=mode), [0, 1])
    assert 'executor="sequential"' in str(info.value)
    assert isinstance(info.value, ValueError)
    # Refused before any member was trained or exported.
    assert not list(tmp_path.glob("seed_*/checkpoints/*.ckpt"))


def test_multiseed_trainer_vectorized_executor_keeps_the_best_member(tmp_path: Path) -> None:
    from lightning_landscape.multiseed.trainer import MultiSeedTrainer

    train, val = _loaders()
    trainer = MultiSeedTrainer(
        seeds=SEEDS[:2],
        executor="vectorized",
        root_dir=str(tmp_path / "ms"),
        max_epochs=2,
        precision="64-true",
    )
    result = trainer.fit(TinyRegressor, train_dataloaders=train, val_dataloaders=val)
    assert [r.status for r in result.runs] == ["finished", "finished"]
    assert result.best_score == min(result.scores)
    best = TinyRegressor.load_from_checkpoint(result.best_model_path, weights_only=True)
    assert isinstance(best, TinyRegressor)
    assert all(r.extra["executor"] == "vectorized" for r in result.runs)
