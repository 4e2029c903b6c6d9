"""EdgeOfStabilityMonitor on a real Trainer: full-batch GD reaches the edge of stability; the logged (Adam
preconditioned) sharpness, batch sharpness and thresholds against dense float64 truths and closed forms;
refusals; training bit-identical with and without it; tags read back from TensorBoard."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch import Tensor, nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from lightning_landscape import EdgeOfStabilityMonitor
from lightning_landscape.callbacks import tags
from lightning_landscape.callbacks._lightning import batches_that_stepped
from tests.callbacks._cb_helpers import TinyRegression, make_loader
from tests.callbacks._events import read_scalars
from tests.oracle import dense_hessian

DT = torch.float64


class EdgeMLP(pl.LightningModule):
    """A 4-32-32-1 tanh MLP fit to random labels by full-batch gradient descent on the MSE (Cohen et al.)."""

    def __init__(self, lr: float) -> None:
        super().__init__()
        with torch.random.fork_rng():
            torch.manual_seed(0)
            self.net = nn.Sequential(
                nn.Linear(4, 32), nn.Tanh(), nn.Linear(32, 32), nn.Tanh(), nn.Linear(32, 1)
            ).double()
        self.lr = lr

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        x, y = batch
        return F.mse_loss(self.net(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.lr)


def _random_labels(n: int = 32) -> DataLoader:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, 4, generator=gen, dtype=DT)
    y = torch.randn(n, 1, generator=gen, dtype=DT)
    return DataLoader(TensorDataset(x, y), batch_size=n)


def test_full_batch_gd_climbs_to_the_edge_of_stability_and_stays(
    tmp_path: Path, trainer_kwargs: dict[str, Any]
) -> None:
    lr, steps, every = 0.2, 600, 10
    logger = TensorBoardLogger(tmp_path, name="tb")
    monitor = EdgeOfStabilityMonitor(every_n_steps=every, tol=1e-4)
    trainer = pl.Trainer(max_steps=steps, callbacks=[monitor], logger=logger, **trainer_kwargs)
    trainer.fit(EdgeMLP(lr), _random_labels())
    s = read_scalars(logger.log_dir)
    probe_steps = sorted(s[tags.STABILITY_RATIO])
    assert probe_steps == list(range(every - 1, steps, every))  # logging step = global step - 1
    assert list(s[tags.STABILITY_THRESHOLD].values()) == [pytest.approx(2 / lr)] * len(probe_steps)
    ratios = [s[tags.STABILITY_RATIO][k] for k in probe_steps]
    for k, r in zip(probe_steps, ratios, strict=True):
        assert r == pytest.approx(s[tags.STABILITY_SHARPNESS][k] * lr / 2, rel=1e-6)
    # Progressive sharpening from well below the edge, then held there (Cohen et al. 2021, Fig. 1).
    assert ratios[0] < 0.75
    last_third = ratios[2 * len(ratios) // 3 :]
    assert 0.85 <= min(last_third) and max(last_third) <= 1.15, (min(last_third), max(last_third))
    assert set(s[tags.STABILITY_CONVERGED].values()) == {1.0}
    assert tags.STABILITY_BATCH_SHARPNESS not in s
    assert float(trainer.callback_metrics[tags.STABILITY_RATIO]) == pytest.approx(ratios[-1], rel=1e-6)


class DenseRecorder(pl.Callback):
    """After the monitor at each probe step: the dense float64 truth from the optimizer state and weights."""

    def __init__(self, every: int, batches: list[Any]) -> None:
        self.every, self.batches = every, batches
        self.sharpness: dict[int, float] = {}
        self.batch_sharpness: dict[int, float] = {}
        self.lr: dict[int, float] = {}

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: Any, *args: Any) -> None:
        if trainer.global_step % self.every != 0:
            return
        step = batches_that_stepped(trainer)
        opt = trainer.optimizers[0]
        params = [p for p in pl_module.parameters() if p.requires_grad]
        H = dense_hessian(pl_module, _mse, self.batches)
        if isinstance(opt, (torch.optim.Adam, torch.optim.AdamW)):
            d = _adam_diag(opt, params)
            H = H / d.sqrt()[:, None] / d.sqrt()[None, :]
        self.sharpness[step] = float(torch.linalg.eigvalsh(H)[-1])
        self.lr[step] = float(opt.param_groups[0]["lr"])
        values = []
        for batch in self.batches:
            Hb = dense_hessian(pl_module, _mse, [batch])
            was = pl_module.training
            pl_module.eval()  # the probe's mode
            g = torch.cat([t.reshape(-1) for t in torch.autograd.grad(_mse(pl_module, batch), params)])
            pl_module.train(was)
            values.append(float(g @ Hb @ g / (g @ g)))
        self.batch_sharpness[step] = sum(values) / len(values)


def _mse(model: Any, batch: Any) -> Tensor:
    x, y = batch
    return F.mse_loss(model.net(x), y)


def _adam_diag(opt: torch.optim.Optimizer, params: list[Tensor]) -> Tensor:
    """Adam's P written out from its state (independent of adam_preconditioner), float64."""
    pieces = []
    for p in params:
        group = next(g for g in opt.param_groups if any(q is p for q in g["params"]))
        state = opt.state[p]
        t = float(state["step"])
        beta1, beta2 = group["betas"]
        v = state["exp_avg_sq"].to(DT)
        pieces.append(((1 - beta1**t) * ((v / (1 - beta2**t)).sqrt() + group["eps"])).reshape(-1))
    return torch.cat(pieces)


class AdamRegression(TinyRegression):
    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=0.01, betas=(0.8, 0.99), eps=1e-4)


@pytest.mark.parametrize("module", [AdamRegression, TinyRegression], ids=["adam", "sgd"])
def test_logged_sharpness_equals_the_dense_preconditioned_truth(
    module: type[pl.LightningModule], tmp_path: Path, trainer_kwargs: dict[str, Any]
) -> None:
    every = 3
    loader = make_loader(n=16, batch_size=8)
    batches = list(loader)  # num_batches=2 of an unshuffled loader: both batches
    logger = TensorBoardLogger(tmp_path, name="tb")
    monitor = EdgeOfStabilityMonitor(every_n_steps=every, num_batches=2, batch_sharpness=True, tol=1e-10)
    recorder = DenseRecorder(every, batches)
    trainer = pl.Trainer(max_steps=9, callbacks=[monitor, recorder], logger=logger, **trainer_kwargs)
    trainer.fit(module(), loader)
    s = read_scalars(logger.log_dir)
    assert sorted(s[tags.STABILITY_SHARPNESS]) == sorted(recorder.sharpness) == [2, 5, 8]
    for step, truth in recorder.sharpness.items():
        # Lanczos at tol=1e-10 on 21 parameters; event files hold float32 (rel 1e-6).
        assert s[tags.STABILITY_SHARPNESS][step] == pytest.approx(truth, rel=1e-6)
        assert s[tags.STABILITY_BATCH_SHARPNESS][step] == pytest.approx(
            recorder.batch_sharpness[step], rel=1e-6
        )
        lr = recorder.lr[step]
        threshold = (2 + 2 * 0.8) / ((1 - 0.8) * lr) if module is AdamRegression else 2 / lr
        assert s[tags.STABILITY_THRESHOLD][step] == pytest.approx(threshold, rel=1e-6)
        assert s[tags.STABILITY_RATIO][step] == pytest.approx(truth / threshold, rel=1e-6)
    if module is AdamRegression:
        # The preconditioned sharpness is not the plain one: the test could tell them apart.
        plain = float(torch.linalg.eigvalsh(dense_hessian(trainer.lightning_module, _mse, batches))[-1])
        assert abs(plain - recorder.sharpness[8]) > 0.1 * plain


class Scheduled(TinyRegression):
    def __init__(self, make: Any) -> None:
        super().__init__()
        self.make = make

    def configure_optimizers(self) -> Any:
        opt = self.make(self.parameters())
        sched = torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.9)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


@pytest.mark.parametrize(
    ("make", "formula"),
    [
        (lambda ps: torch.optim.SGD(ps, lr=0.05), lambda lr: 2 / lr),
        (lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9), lambda lr: (2 + 2 * 0.9) / lr),
        (
            lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.5, nesterov=True),
            lambda lr: (2 + 2 * 0.5) / ((1 + 2 * 0.5) * lr),
        ),
        (lambda ps: torch.optim.Adam(ps, lr=0.01), lambda lr: (2 + 2 * 0.9) / ((1 - 0.9) * lr)),
        (lambda ps: torch.optim.RMSprop(ps, lr=0.01), lambda lr: 2 / lr),
    ],
    ids=["sgd", "heavy_ball", "nesterov", "adam", "rmsprop"],
)
def test_thresholds_follow_the_scheduled_learning_rate(
    make: Any, formula: Any, tmp_path: Path, trainer_kwargs: dict[str, Any]
) -> None:
    logger = TensorBoardLogger(tmp_path, name="tb")
    trainer = pl.Trainer(
        max_steps=6, callbacks=[EdgeOfStabilityMonitor(every_n_steps=2)], logger=logger, **trainer_kwargs
    )
    model = Scheduled(make)
    trainer.fit(model, make_loader(n=64, batch_size=8))
    s = read_scalars(logger.log_dir)[tags.STABILITY_THRESHOLD]
    lr0 = make([nn.Parameter(torch.zeros(1))]).param_groups[0]["lr"]
    # At global step t the scheduler has stepped t times: the lr of the next step is lr0 * 0.9^t.
    assert s == {t - 1: pytest.approx(formula(lr0 * 0.9**t), rel=1e-6) for t in (2, 4, 6)}


class NAdamRegression(TinyRegression):
    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.NAdam(self.parameters(), lr=0.01)


class TwoGroups(TinyRegression):
    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(
            [{"params": self.net[0].parameters()}, {"params": self.net[3].parameters(), "lr": 0.02}], lr=0.01
        )


def test_refusals_before_training(trainer_kwargs: dict[str, Any]) -> None:
    def fit(model: pl.LightningModule, **kwargs: Any) -> pl.Trainer:
        trainer = pl.Trainer(
            max_steps=2, callbacks=[EdgeOfStabilityMonitor(**kwargs)], logger=False, **trainer_kwargs
        )
        trainer.fit(model, make_loader(n=16))
        return trainer

    model = NAdamRegression()
    with pytest.raises(MisconfigurationException, match=r"optimizer NAdam is not supported.*'SGD', 'Adam'"):
        fit(model)
    assert model.trainer.global_step == 0  # refused before the first step
    with pytest.raises(MisconfigurationException, match=r"`optimizer`=1 but the module has 1 optimizer"):
        fit(TinyRegression(), optimizer=1)
    with pytest.raises(MisconfigurationException, match=r"`group`=2 but Adam has 2 parameter group"):
        fit(TwoGroups(), group=2)
    with pytest.raises(MisconfigurationException, match=r"`params`"):
        fit(TinyRegression(), params=["nope"])
    # The second group's learning rate makes the threshold.
    trainer = fit(TwoGroups(), group=1, every_n_steps=2)
    assert float(trainer.callback_metrics[tags.STABILITY_THRESHOLD]) == pytest.approx(38 / 0.02)


class WarmUpFromZero(TinyRegression):
    def configure_optimizers(self) -> Any:
        opt = torch.optim.SGD(self.parameters(), lr=0.05)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 0.0 if step < 2 else 1.0)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def test_a_zero_learning_rate_logs_the_sharpness_only(tmp_path: Path, trainer_kwargs: dict[str, Any]) -> None:
    logger = TensorBoardLogger(tmp_path, name="tb")
    trainer = pl.Trainer(
        max_steps=3, callbacks=[EdgeOfStabilityMonitor(every_n_steps=1)], logger=logger, **trainer_kwargs
    )
    with pytest.warns(RuntimeWarning, match=r"no threshold at step 1 .*must be > 0.*\(Warned once\.\)"):
        trainer.fit(WarmUpFromZero(), make_loader(n=32))
    s = read_scalars(logger.log_dir)
    assert sorted(s[tags.STABILITY_SHARPNESS]) == [0, 1, 2]
    assert s[tags.STABILITY_THRESHOLD] == {1: pytest.approx(2 / 0.05), 2: pytest.approx(2 / 0.05)}


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"every_n_steps": 0}, "`every_n_steps` must be"),
        ({"optimizer": -1}, "`optimizer` must be"),
        ({"group": 1.5}, "`group` must be"),
        ({"dataloader": "test"}, "`dataloader` must be"),
        ({"name": "a/b"}, "`name` must be None"),
        ({"tol": 0}, "`tol` must be"),
    ],
)
def test_argument_errors(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=re.escape(match)):
        EdgeOfStabilityMonitor(**kwargs)


def _fit_adam(root: Path, callbacks: list[pl.Callback]) -> tuple[Any, pl.Trainer, Tensor]:
    pl.seed_everything(0)
    model = TinyRegression(dropout=0.2)
    model.configure_optimizers = lambda: torch.optim.Adam(model.parameters(), lr=0.01)  # type: ignore[method-assign]
    trainer = pl.Trainer(
        default_root_dir=root,
        max_steps=6,
        accelerator="cpu",
        devices=1,
        callbacks=callbacks,
        logger=TensorBoardLogger(root, name="tb") if callbacks else False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        log_every_n_steps=1,
    )
    trainer.fit(model, make_loader(n=32, batch_size=8, shuffle=True))
    return model, trainer, torch.get_rng_state()


def test_training_is_bit_identical_with_and_without_the_monitor(tmp_path: Path) -> None:
    monitor = EdgeOfStabilityMonitor(every_n_steps=2, num_batches=2, batch_sharpness=True, train_mode=True)
    model_a, trainer_a, rng_a = _fit_adam(tmp_path / "with", [monitor])
    model_b, trainer_b, rng_b = _fit_adam(tmp_path / "without", [])
    assert monitor.num_probes == 3
    assert torch.equal(rng_a, rng_b)
    for (name, x), y in zip(model_a.state_dict().items(), model_b.state_dict().values(), strict=True):
        assert torch.equal(x, y), name
    for p, q in zip(model_a.parameters(), model_b.parameters(), strict=True):
        assert (p.grad is None) == (q.grad is None) and (p.grad is None or torch.equal(p.grad, q.grad))
    sa, sb = trainer_a.optimizers[0].state_dict(), trainer_b.optimizers[0].state_dict()
    for key, fields in sa["state"].items():
        for field, value in fields.items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(sb["state"][key][field]))


def test_state_roundtrip_and_keys() -> None:
    a = EdgeOfStabilityMonitor()
    a._last_probe_step, a.num_probes, a.warm_vectors = 7, 3, torch.ones(1, 5)
    b = EdgeOfStabilityMonitor()
    b.load_state_dict(a.state_dict())
    assert (b._last_probe_step, b.num_probes) == (7, 3)
    assert b.warm_vectors is not None and torch.equal(b.warm_vectors, torch.ones(1, 5))
    assert EdgeOfStabilityMonitor(optimizer=1).state_key != EdgeOfStabilityMonitor().state_key
    assert tags.stability_tag(tags.RATIO, "d") == "stability/d/ratio"


@pytest.mark.slow
def test_ddp_two_processes_match_one_process(
    tmp_path: Path, trainer_kwargs: dict[str, Any], subprocess_env: dict[str, str]
) -> None:
    """Adam under DDP: the all-reduced preconditioned sharpness equals one process's on the same 8 samples;
    the batch sharpness is the mean of the two ranks' 4-sample shards, against dense float64 per shard."""
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).parent / "_ddp_stability.py"), str(tmp_path / "ddp")],
        env=subprocess_env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "rank 0 probes 3" in proc.stdout and "rank 1 probes 3" in proc.stdout, proc.stdout
    ddp = read_scalars(tmp_path / "ddp")

    pl.seed_everything(11)
    logger = TensorBoardLogger(tmp_path / "single", name="tb")
    monitor = EdgeOfStabilityMonitor(every_n_steps=2, num_batches=1, tol=1e-10)
    trainer = pl.Trainer(max_steps=6, callbacks=[monitor], logger=logger, **trainer_kwargs)
    model = AdamRegression()
    loader = make_loader(n=48, batch_size=8)
    trainer.fit(model, loader)
    single = read_scalars(logger.log_dir)
    for tag in (tags.STABILITY_SHARPNESS, tags.STABILITY_THRESHOLD, tags.STABILITY_RATIO):
        assert sorted(ddp[tag]) == sorted(single[tag]) == [1, 3, 5], tag
        for step, value in single[tag].items():
            assert ddp[tag][step] == pytest.approx(value, rel=1e-6), (tag, step)
    # The last probe's batch sharpness: each rank's shard of the first batch (samples r, r + 2, ...).
    x, y = next(iter(loader))
    params = [p for p in model.parameters() if p.requires_grad]
    values = []
    for rank in (0, 1):
        shard = (x[rank::2], y[rank::2])
        H = dense_hessian(model, _mse, [shard])
        model.eval()
        g = torch.cat([t.reshape(-1) for t in torch.autograd.grad(_mse(model, shard), params)])
        values.append(float(g @ H @ g / (g @ g)))
    assert ddp[tags.STABILITY_BATCH_SHARPNESS][5] == pytest.approx(sum(values) / 2, rel=1e-6)
