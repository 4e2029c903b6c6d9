"""Instability analysis against exact cases: a double well, a convex quadratic, full-batch determinism."""

from __future__ import annotations

import itertools
import json
import os
import tempfile
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_landscape._rng import rng_state
from lightning_landscape.multiseed import InstabilityResult, instability
from lightning_landscape.multiseed.instability import default_branch_steps

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
QUIET = {
    "enable_progress_bar": False,
    "enable_model_summary": False,
    "logger": False,
    "enable_checkpointing": False,
}


class Recorder(Callback):
    """Keeps every run's end weights by run folder (class-level: the study deep-copies callbacks)."""

    ends: ClassVar[dict[str, list[Tensor]]] = {}

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        run = "/".join(Path(trainer.default_root_dir).parts[-2:])
        Recorder.ends[run] = [p.detach().clone() for p in pl_module.parameters()]

    @classmethod
    def child(cls, k: int, seed: int) -> list[Tensor]:
        return cls.ends[f"branch_{k}/seed_{seed}"]


@pytest.fixture(autouse=True)
def _fresh_recorder() -> None:
    Recorder.ends = {}


class DoubleWell(LightningModule):
    r"""One weight :math:`w` from 0, per-sample loss :math:`(w^2 - 1)^2 + \xi w`: the samples' :math:`\xi`
    sum to 0, so the full loss is the double well :math:`(w^2 - 1)^2` with minima at :math:`\pm 1` and a
    ridge of height 1 at 0. The sign of the first sample decides the well."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros((), dtype=torch.float64))

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        (xi,) = batch
        return (self.w**2 - 1) ** 2 + xi.mean() * self.w

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=0.05)


def double_well(w: Tensor) -> Tensor:
    return (w**2 - 1) ** 2


def closed_form_barrier(a: float, b: float, ts: Tensor) -> float:
    w = (1 - ts) * a + ts * b
    fa, fb = (double_well(torch.tensor(v, dtype=torch.float64)) for v in (a, b))
    chord = (1 - ts) * fa + ts * fb
    return float((double_well(w) - chord).max())


def test_double_well_branching_at_zero_crosses_the_ridge_and_late_branching_does_not(tmp_path: Path) -> None:
    xi = torch.tensor([0.5, -0.5], dtype=torch.float64)
    loader = DataLoader(TensorDataset(xi), batch_size=1, shuffle=True)
    tempfile.tempdir = str(tmp_path / "tmp")  # the default root_dir must be removed
    os.makedirs(tempfile.tempdir)
    try:
        res = instability(
            DoubleWell, train_dataloaders=loader, total_steps=60, branch_steps=[0, 2, 10, 40],
            child_seeds=(3, 4), num_batches=None, trainer_kwargs={"callbacks": [Recorder()]},
        )  # fmt: skip
    finally:
        tempfile.tempdir = None
    assert not any((tmp_path / "tmp").iterdir())
    # Precondition of this case (seeds 3 and 4 shuffle the two samples differently on the first step):
    # branched at 0 the children fall into opposite wells, branched later into the parent's.
    ends = {k: [float(Recorder.child(k, c)[0]) for c in (3, 4)] for k in res.branch_steps}
    assert ends[0][0] * ends[0][1] < 0, ends
    assert all(a * b > 0 and abs(abs(a) - 1) < 0.1 for k, (a, b) in ends.items() if k > 0), ends
    ts = torch.tensor(res.ts, dtype=torch.float64)
    for i, k in enumerate(res.branch_steps):
        a, b = ends[k]
        # The exact loss along the segment and the exact barrier from the children's end weights.
        expected = double_well((1 - ts) * a + ts * b)
        torch.testing.assert_close(
            torch.tensor(res.curves[i], dtype=torch.float64), expected, rtol=0, atol=1e-12
        )
        assert res.barriers[i] == pytest.approx(closed_form_barrier(a, b, ts), abs=1e-12)
        assert res.distances[i] == pytest.approx(abs(a - b), abs=1e-12)
    assert 0.95 < res.barriers[0] <= 1.0  # the ridge at w = 0 (t = 1/2 is on the grid), end losses < 2e-3
    assert all(barrier <= 1e-12 for barrier in res.barriers[1:])  # both ends in one convex well
    assert res.stable_step == 2


def hadamard_design() -> tuple[Tensor, Tensor]:
    """8 inputs whose columns, with a column of ones, are orthonormal in the mean: ``X^T X / n = I``."""
    h = torch.tensor([[1.0]], dtype=torch.float64)
    for _ in range(3):
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    x = h[:, 1:4]
    y = torch.randn(8, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    return x, y


class LinearRegression(LightningModule):
    def __init__(self, momentum: float = 0.9, dropout: float = 0.0) -> None:
        super().__init__()
        self.linear = nn.Linear(3, 1).double()
        self.dropout = nn.Dropout(dropout)
        self.momentum = momentum

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        x, y = batch
        return nn.functional.mse_loss(self.linear(self.dropout(x)), y)

    def configure_optimizers(self) -> Any:
        opt = torch.optim.SGD(self.parameters(), lr=0.05, momentum=self.momentum)
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.5)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def test_convex_quadratic_has_no_barrier_and_the_exact_parabola() -> None:
    # For least squares with X^T X / n = I the loss along the segment is exactly
    # L(t) = (1 - t) L(a) + t L(b) - t (1 - t) |a - b|^2: never above the chord, so B = 0.
    x, y = hadamard_design()
    loader = DataLoader(TensorDataset(x, y), batch_size=2, shuffle=True)
    torch.manual_seed(11)
    model = LinearRegression()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng, env = rng_state(), os.environ.get("PL_GLOBAL_SEED")
    res = instability(
        model, train_dataloaders=loader, total_steps=12, branch_steps=[0, 4, 11], num_batches=None,
        barrier_steps=9, trainer_kwargs=QUIET,
    )  # fmt: skip
    after = rng_state()
    assert torch.equal(rng["torch"], after["torch"])
    assert rng["python"] == after["python"]
    assert torch.equal(rng["numpy"][1], after["numpy"][1]) and rng["numpy"][2:] == after["numpy"][2:]
    assert os.environ.get("PL_GLOBAL_SEED") == env
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # the instance untouched
    ts = torch.tensor(res.ts, dtype=torch.float64)
    for i in range(3):
        curve = torch.tensor(res.curves[i], dtype=torch.float64)
        loss_a, loss_b = res.child_losses[i]
        expected = (1 - ts) * loss_a + ts * loss_b - ts * (1 - ts) * res.distances[i] ** 2
        torch.testing.assert_close(curve, expected, rtol=0, atol=1e-12)
        assert abs(res.barriers[i]) <= 1e-12
        assert res.distances[i] > 1e-4  # the children saw different orders
    assert res.distances[0] > res.distances[2]


def test_full_batch_children_are_the_parent_with_its_optimizer_state() -> None:
    # One full batch: data order cannot differ, so both children must end exactly where one uninterrupted
    # run ends, which needs the momentum buffers and the scheduler's step count from the snapshot.
    x, y = hadamard_design()
    loader = DataLoader(TensorDataset(x, y), batch_size=8)
    res = instability(
        LinearRegression, train_dataloaders=loader, total_steps=10, branch_steps=[0, 4, 7], num_batches=None,
        trainer_kwargs={**QUIET, "callbacks": [Recorder()]},
    )  # fmt: skip
    torch.manual_seed(0)  # instability's default seed builds the same initial model
    straight = LinearRegression()
    Trainer(max_steps=10, **QUIET).fit(straight, loader)
    for k, c in itertools.product((0, 4, 7), (1, 2)):
        for got, want in zip(Recorder.child(k, c), straight.parameters(), strict=True):
            torch.testing.assert_close(got, want.detach(), rtol=0, atol=1e-12)
    assert res.distances == (0.0, 0.0, 0.0) and res.barriers == (0.0, 0.0, 0.0)
    # The check can fail: a restart at step 4 without the optimizer state ends elsewhere.
    torch.manual_seed(0)
    restarted = LinearRegression()
    Trainer(max_steps=4, **QUIET).fit(restarted, loader)
    Trainer(max_steps=6, **QUIET).fit(restarted, loader)
    gap = max(
        float((a - b).abs().max()) for a, b in zip(restarted.parameters(), straight.parameters(), strict=True)
    )
    assert gap > 1e-3


def test_children_differ_by_dropout_noise_alone() -> None:
    x, y = hadamard_design()
    loader = DataLoader(TensorDataset(x, y), batch_size=8)
    res = instability(
        lambda: LinearRegression(dropout=0.5), train_dataloaders=loader, total_steps=5, branch_steps=[0],
        trainer_kwargs=QUIET,
    )  # fmt: skip
    assert res.distances[0] > 1e-3


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"branch_steps": [0, 10]}, ValueError, "branch_steps"),
        ({"branch_steps": [3, 1]}, ValueError, "branch_steps"),
        ({"branch_steps": [-1]}, ValueError, "branch_steps"),
        ({"branch_steps": []}, ValueError, "branch_steps"),
        ({"branch_steps": [0.5]}, ValueError, "branch_steps"),
        ({"total_steps": 0}, ValueError, "total_steps"),
        ({"child_seeds": (1, 1)}, ValueError, "child_seeds"),
        ({"child_seeds": (1,)}, ValueError, "child_seeds"),
        ({"seed": -1}, ValueError, "seed"),
        ({"trainer_kwargs": {"max_steps": 3}}, ValueError, "trainer_kwargs"),
        ({"trainer_kwargs": {"default_root_dir": "x"}}, ValueError, "trainer_kwargs"),
        ({"num_batches": 0}, ValueError, "num_batches"),
        ({"barrier_steps": 1}, ValueError, "barrier_steps"),
        ({"tol": -0.1}, ValueError, "tol"),
        ({"rtol": float("nan")}, ValueError, "rtol"),
        ({"loss_fn": "mse"}, TypeError, "loss_fn"),
        ({"train_dataloaders": None}, ValueError, "train_dataloaders"),
        ({"train_dataloaders": [1, 2]}, TypeError, "train_dataloaders"),
        ({"quiet": 1}, TypeError, "quiet"),
    ],
)
def test_bad_arguments_are_refused_before_anything_runs(
    kwargs: dict[str, Any], error: type, match: str
) -> None:
    built = []
    x, y = hadamard_design()
    options: dict[str, Any] = {
        "train_dataloaders": DataLoader(TensorDataset(x, y), batch_size=8),
        "total_steps": 5,
        "branch_steps": [0],
        **kwargs,
    }
    with pytest.raises(error, match=match):
        instability(lambda: built.append(1) or LinearRegression(), **options)
    assert built == []


def test_a_busy_root_dir_and_a_non_module_are_refused(tmp_path: Path) -> None:
    (tmp_path / "old.txt").write_text("x")
    loader = DataLoader(TensorDataset(*hadamard_design()), batch_size=8)
    with pytest.raises(ValueError, match="root_dir"):
        instability(LinearRegression, train_dataloaders=loader, total_steps=2, root_dir=tmp_path)
    with pytest.raises(TypeError, match="model"):
        instability(nn.Linear(1, 1), train_dataloaders=loader, total_steps=2)  # type: ignore[arg-type]


def test_root_dir_keeps_the_snapshots_and_runs(tmp_path: Path) -> None:
    loader = DataLoader(TensorDataset(*hadamard_design()), batch_size=4, shuffle=True)
    instability(
        LinearRegression, train_dataloaders=loader, total_steps=4, branch_steps=[0, 2], root_dir=tmp_path,
        trainer_kwargs=QUIET,
    )  # fmt: skip
    assert (tmp_path / "parent" / "snapshots" / "step_2.ckpt").is_file()
    assert {p.name for p in tmp_path.iterdir()} == {"parent"}  # no logger, no checkpoints: nothing else


def test_default_branch_steps() -> None:
    assert default_branch_steps(1000) == [0, 10, 30, 100, 300]
    assert default_branch_steps(10) == [0, 1, 3]


def make_result(barriers: tuple[float, ...], steps: tuple[int, ...] = (0, 1, 10, 100)) -> InstabilityResult:
    n = len(steps)
    return InstabilityResult(
        branch_steps=steps, barriers=barriers, child_losses=((0.1, 0.3),) * n, distances=(1.0,) * n,
        ts=(0.0, 0.5, 1.0), curves=((0.1, 0.5, 0.3),) * n, total_steps=1000, seed=0, child_seeds=(1, 2),
        tol=0.01, rtol=0.5,
    )  # fmt: skip


def test_stable_step_is_where_every_later_barrier_stays_under_the_threshold() -> None:
    # threshold = 0.01 + 0.5 * mean(0.1, 0.3) = 0.11
    assert make_result((0.5, 0.1, 0.2, 0.05)).stable_step == 100  # 1 dips below, 10 is above again
    assert make_result((0.5, 0.2, 0.11, 0.0)).stable_step == 10  # at the threshold counts as stable
    assert make_result((0.0, 0.0, 0.0, 0.0)).stable_step == 0
    assert make_result((0.0, 0.0, 0.0, 0.2)).stable_step is None
    assert "not fixed" in make_result((0.0, 0.0, 0.0, 0.2)).summary()


def test_result_round_trips_through_json_and_plots_on_a_log_axis(tmp_path: Path) -> None:
    res = make_result((0.5, 0.1, 0.2, 0.05))
    path = res.save(tmp_path / "instability.json")
    data = json.loads(path.read_text())
    assert data["stable_step"] == 100 and data["kind"] == "instability"
    assert InstabilityResult.load(path) == res
    with pytest.raises(ValueError, match="instability"):
        InstabilityResult.from_dict({"kind": "barrier"})
    assert "step" in res.table() and len(res.table().splitlines()) == 6
    fig = res.plot()
    assert fig.axes[0].get_xscale() == "symlog"
    assert make_result((0.1, 0.2), steps=(0, 5)).plot().axes[0].get_xscale() == "linear"
