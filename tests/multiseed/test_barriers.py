"""Barriers between seeds: a known double well from checkpoint files, and a real MultiSeedTrainer run whose
summary.json block and figures are read back and checked against the library."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from lightning_landscape.callbacks._probe import TrainingStepLoss
from lightning_landscape.landscape import linear_barrier
from lightning_landscape.multiseed.barriers import BARRIERS_PNG, INTERPOLATION_PNG, seed_barriers
from lightning_landscape.multiseed.checkpoints import load_weights
from lightning_landscape.multiseed.paths import SUMMARY_JSON
from lightning_landscape.multiseed.record import read_record
from tests.multiseed import _tiny

DT = torch.float64


class Well(nn.Module):
    """L(w) = (w0^2 - 1)^2 + (w1 - 0.3)^2: two basins at w0 = -1 and w0 = +1, barrier 1 between them."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(2, dtype=DT))

    def forward(self, x: Tensor) -> Tensor:
        return (self.w[0] ** 2 - 1) ** 2 + (self.w[1] - 0.3) ** 2 + 0 * x.sum()


def _save(path: Path, w: tuple[float, float]) -> Path:
    torch.save({"state_dict": {"w": torch.tensor(w, dtype=DT)}}, path)
    return path


def test_seed_barriers_of_a_double_well_from_checkpoint_files(tmp_path: Path) -> None:
    ckpts = {
        0: _save(tmp_path / "a.ckpt", (-1.0, 0.3)),
        3: _save(tmp_path / "b.ckpt", (-1.0, 0.3 + 1e-3)),  # same basin
        5: _save(tmp_path / "c.ckpt", (1.0, 0.3)),  # the other basin
    }
    res = seed_barriers(ckpts, Well(), lambda m, x: m(x), [torch.zeros(1, 1, dtype=DT)], best=3, full=True)
    i = {s: k for k, s in enumerate(res.seeds)}
    assert res.matrix[i[0], i[3]] == pytest.approx(0.0, abs=1e-6)
    # From the best (-1, 0.3 + d) to (1, 0.3): L(t) = ((2t - 1)^2 - 1)^2 + d^2 (1 - t)^2, chord (1 - t) d^2,
    # largest excess at t = 1/2 (on the grid of steps=11): 1 + d^2 / 4 - d^2 / 2.
    delta = 1e-3
    want = 1 - delta**2 / 4
    assert res.matrix[i[3], i[5]] == pytest.approx(want, abs=1e-9)
    assert res.matrix[i[0], i[5]] == pytest.approx(1.0, abs=1e-12)
    assert torch.equal(res.matrix, res.matrix.T)
    assert res.connected() == [0, 3]
    assert res.summary() == (
        "seeds 0, 3 share the best seed's basin: barrier < 0.01; seeds 5 lie beyond a barrier"
    )
    assert set(res.lines) == {0, 5}
    block = json.loads(json.dumps(res.to_dict()))  # JSON-able
    assert block["matrix"][i[3]][i[5]] == pytest.approx(want, abs=1e-9)
    paths = res.save_figures(tmp_path)
    assert [p.name for p in paths] == [BARRIERS_PNG, INTERPOLATION_PNG] and all(
        p.stat().st_size > 1000 for p in paths
    )
    best_only = seed_barriers(ckpts, Well, lambda m, x: m(x), [torch.zeros(1, 1, dtype=DT)], best=3)
    assert math.isnan(float(best_only.matrix[i[0], i[5]]))
    with pytest.raises(ValueError, match="does not fit the model"):
        load_weights(ckpts[0], nn.Linear(2, 1))
    with pytest.raises(ValueError, match="`best`"):
        seed_barriers(ckpts, Well(), lambda m, x: m(x), [torch.zeros(1, 1)], best=7)


def test_multiseed_trainer_writes_the_barrier_block_and_figures(tmp_path: Path) -> None:
    result = _tiny.fit(tmp_path, 3, epochs=2, barriers="all", barrier_tol=1e-3)
    summary = json.loads((tmp_path / SUMMARY_JSON).read_text())
    block = summary["barriers"]
    assert block["best_seed"] == result.best_seed and block["seeds"] == [0, 1, 2]
    assert all(v is not None for row in block["matrix"] for v in row)  # "all": every pair
    assert (tmp_path / BARRIERS_PNG).stat().st_size > 1000 and (
        tmp_path / INTERPOLATION_PNG
    ).stat().st_size > 1000
    best_row = block["matrix"][block["seeds"].index(result.best_seed)]
    shared = [s for s, v in zip(block["seeds"], best_row, strict=True) if s == result.best_seed or v < 1e-3]
    assert block["connected"] == shared
    aligned = block["aligned_matrix"]
    assert block["align"] == "weights" and block["align_error"] is None  # aligned by default
    best_aligned = aligned[block["seeds"].index(result.best_seed)]
    up_to_perm = [
        s for s, v in zip(block["seeds"], best_aligned, strict=True) if s == result.best_seed or v < 1e-3
    ]
    assert block["connected_up_to_permutation"] == up_to_perm
    head = (
        f"seeds {', '.join(map(str, up_to_perm))} are one basin" if len(up_to_perm) > 1 else "no other seed"
    )
    assert block["summary"].startswith(head)
    # The recorded value, recomputed from the checkpoints with the library on the same batches.
    train, _ = _tiny.loaders()
    with torch.random.fork_rng():
        torch.manual_seed(0)
        batches = [b for _, b in zip(range(4), train, strict=False)]
    runs = {r.seed: r for r in result.runs}
    other = next(s for s in (0, 1, 2) if s != result.best_seed)
    a = load_weights(runs[result.best_seed].best_model_path, _tiny.TinyRegressor())
    b = load_weights(runs[other].best_model_path, _tiny.TinyRegressor())
    want = linear_barrier(a, b, TrainingStepLoss(), batches, steps=11).barrier
    i, j = block["seeds"].index(result.best_seed), block["seeds"].index(other)
    assert block["matrix"][i][j] == pytest.approx(want, rel=1e-6, abs=1e-9)
    assert block["lines"][str(other)]["barrier"] == pytest.approx(want, rel=1e-6, abs=1e-9)
    want = linear_barrier(a, b, TrainingStepLoss(), batches, steps=11, align="weights").barrier
    assert aligned[i][j] == pytest.approx(want, rel=1e-6, abs=1e-9)
    # The RMS distance between the two seeds' outputs on those batches, by hand.
    with torch.no_grad():
        diff = torch.cat([(a.net(x) - b.net(x)).double() for x, _ in batches])
    rms = float(diff.pow(2).mean().sqrt())
    dist = block["functional_distance"]
    assert dist["kind"] == "rms" and dist["matrix"][i][j] == pytest.approx(rms, rel=1e-6)
    record = read_record(tmp_path)  # the record module validates the file with the block in it
    assert record is not None and record.extra["barriers"]["best_seed"] == result.best_seed


class _Mlp(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(2, 5), nn.ReLU(), nn.Linear(5, 1))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class _Sorted(_Mlp):
    def forward(self, x: Tensor) -> Tensor:
        return self.net[2](torch.sort(self.net[1](self.net[0](x)), dim=-1).values)  # no permutation symmetry


def _mse(model: nn.Module, batch: tuple[Tensor, Tensor]) -> Tensor:
    return nn.functional.mse_loss(model(batch[0]), batch[1])


def test_a_permuted_copy_is_one_basin_up_to_permutation(tmp_path: Path) -> None:
    torch.manual_seed(0)
    best, other = _Mlp().to(DT), _Mlp().to(DT)
    twin = _Mlp().to(DT)
    perm = torch.randperm(5)
    with torch.no_grad():
        twin.net[0].weight.copy_(best.net[0].weight[perm])
        twin.net[0].bias.copy_(best.net[0].bias[perm])
        twin.net[2].weight.copy_(best.net[2].weight[:, perm])
        twin.net[2].bias.copy_(best.net[2].bias)
    paths = {}
    for seed, m in ((0, best), (1, twin), (2, other)):
        paths[seed] = tmp_path / f"{seed}.ckpt"
        torch.save(m.state_dict(), paths[seed])
    x = torch.randn(64, 2, dtype=DT)
    with torch.no_grad():
        batches = [(x, best(x))]  # the best seed's function is the target: loss 0 at both ends
    res = seed_barriers(paths, _Mlp().to(DT), _mse, batches, best=0, full=True, align="weights", tol=1e-6)
    assert res.matrix[0, 1] > 1e-3 and abs(float(res.aligned[0, 1])) < 1e-9  # type: ignore[index]
    assert res.distances is not None and float(res.distances[0, 1]) < 1e-12 and res.distance_kind == "rms"
    want = float((best(x) - other(x)).pow(2).mean().sqrt())
    assert float(res.distances[0, 2]) == pytest.approx(want, rel=1e-12)
    assert 1 not in res.connected() and res.connected(aligned=True)[:2] == [0, 1]
    assert res.summary().startswith("seeds 0, 1")
    assert "are one basin up to permutation: aligned barrier < 1e-06" in res.summary()
    block = json.loads(json.dumps(res.to_dict()))
    assert block["aligned_matrix"][0][1] == pytest.approx(0.0, abs=1e-9) and block["align"] == "weights"
    assert (res.save_figures(tmp_path)[0]).stat().st_size > 1000
    # A module whose hidden units cannot be permuted: raw barriers, and the reason recorded.
    refused = seed_barriers(paths, _Sorted().to(DT), _mse, batches, best=0, align="weights")
    assert refused.aligned is None and refused.align is None and "sort" in str(refused.align_error)
    assert "raw barriers only" in refused.summary() or refused.connected() == [0, 1, 2]
