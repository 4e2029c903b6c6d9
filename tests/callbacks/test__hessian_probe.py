"""The Trainer-free probe engine: its numbers against dense float64 Hessians, warm starts, nothing left
behind, non-finite probes, the refusals before any work."""

from __future__ import annotations

import math
import re
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from lightning_landscape.callbacks._hessian_probe import HessianProbe, mode_dependent_kinds
from lightning_landscape.curvature import NonFiniteError
from tests._shared import assert_unchanged, mse_loss, snapshot
from tests.oracle import dense_hessian


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Dropout(0.5), nn.Linear(4, 2)).double()  # 26 params


def _batches() -> list[tuple[Tensor, Tensor]]:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(20, 3, generator=gen, dtype=torch.float64)
    y = torch.sin(x[:, :2]) + 0.1 * torch.randn(20, 2, generator=gen, dtype=torch.float64)
    return [(x[:12], y[:12]), (x[12:], y[12:])]  # unequal sizes: the weighting matters


def test_every_quantity_matches_the_dense_hessian() -> None:
    model, batches = _model(), _batches()
    probe = HessianProbe(k=3, smallest=True, trace=True, density=True, density_iter=10, tol=1e-9)
    probe_blocks = HessianProbe(k=2, smallest=True, tol=1e-9, params=["3"], blocks=["0", "3.weight"])
    result = probe.run(model, mse_loss, batches)
    block_result = probe_blocks.run(model, mse_loss, batches)

    full = dense_hessian(model, mse_loss, batches)  # eval mode: dropout off, as the probe's default
    eig = torch.linalg.eigvalsh(full)
    assert result.eigen.largest == pytest.approx(eig.flip(0)[:3].tolist(), rel=1e-7)
    assert result.eigen.smallest == pytest.approx(float(eig[0]), abs=1e-8)
    assert result.eigen.converged and result.eigen.largest_converged == (True, True, True)
    # Hutchinson with 100 Rademacher probes: Var(z'Hz) = 2 (||H||_F^2 - sum_i H_ii^2).
    std_err = math.sqrt(2 * (full.pow(2).sum() - full.diag().pow(2).sum()) / 100)
    assert result.trace is not None and abs(result.trace - float(full.trace())) < 5 * std_err
    assert result.density is not None and result.density.num_params == 26
    assert result.blocks == {}
    for block, names in [("0", ["0.weight", "0.bias"]), ("3.weight", ["3.weight"])]:
        want = torch.linalg.eigvalsh(dense_hessian(model, mse_loss, batches, names=names))
        got = block_result.blocks[block]
        assert got.largest == pytest.approx(want.flip(0)[:2].tolist(), rel=1e-7), block
        assert got.smallest == pytest.approx(float(want[0]), abs=1e-8), block
    head = torch.linalg.eigvalsh(dense_hessian(model, mse_loss, batches, names=["3.weight", "3.bias"]))
    assert block_result.eigen.largest == pytest.approx(head.flip(0)[:2].tolist(), rel=1e-7)
    # Every product of every operator is counted: the main one and one per block, none for free.
    assert result.num_products > 100 + 10
    assert block_result.num_products > 3 * 2


def test_a_probe_leaves_the_model_exactly_as_found() -> None:
    model, batches = _model(), _batches()
    model.train()
    for p in model.parameters():
        p.grad = torch.full_like(p, 0.5)
    model[0].bias.requires_grad_(False)
    before = snapshot(model)
    HessianProbe(k=2, smallest=True, trace=True, trace_samples=5, density=True, density_iter=5).run(
        model, mse_loss, batches
    )
    HessianProbe(k=1, train_mode=True, memory="recompute", blocks=["3"]).run(model, mse_loss, batches)
    assert_unchanged(model, before)


def test_warm_start_reuses_the_last_ritz_vectors() -> None:
    model, batches = _model(), _batches()
    cold = HessianProbe(k=2, smallest=True, tol=1e-8, warm_start=False)
    warm = HessianProbe(k=2, smallest=True, tol=1e-8)
    first = warm.run(model, mse_loss, batches)
    assert warm.warm_vectors is not None and warm.warm_vectors.shape == (4, 26)  # top-2, then bottom-2
    cold_result = cold.run(model, mse_loss, batches)
    assert cold.warm_vectors is None
    with torch.no_grad():  # a small step, as between two probes
        for p in model.parameters():
            p.add_(1e-3 * torch.randn_like(p))
    again = warm.run(model, mse_loss, batches)
    fresh = HessianProbe(k=2, smallest=True, tol=1e-8).run(model, mse_loss, batches)
    assert again.num_products < fresh.num_products
    assert again.eigen.largest == pytest.approx(fresh.eigen.largest, rel=1e-6)
    assert first.num_products == cold_result.num_products  # the first run starts cold like a cold one

    model[0].requires_grad_(False)  # fewer trainable parameters: the old vectors mean nothing
    warm.run(model, mse_loss, batches)
    assert warm.warm_vectors is not None and warm.warm_vectors.shape == (4, 10)


def test_a_non_finite_probe_raises_and_keeps_the_warm_start() -> None:
    model, batches = _model(), _batches()
    probe = HessianProbe(k=1)
    probe.run(model, mse_loss, batches)
    kept = probe.warm_vectors
    with pytest.raises(NonFiniteError):
        probe.run(model, lambda m, b: mse_loss(m, b) * float("nan"), batches)
    assert probe.warm_vectors is kept


def test_pyhessian_backend_matches_the_dense_hessian() -> None:
    model, batches = _model(), _batches()
    probe = HessianProbe(k=1, backend="pyhessian", tol=1e-6, max_iter=500, trace=True, trace_samples=4)
    result = probe.run(model, mse_loss, batches)
    top = float(torch.linalg.eigvalsh(dense_hessian(model, mse_loss, batches))[-1])
    assert result.eigen.largest[0] == pytest.approx(top, rel=1e-4)
    assert probe.warm_vectors is None and result.trace is not None


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"params": ["0"]}, "`params`=['0'] cannot be used with `backend`='pyhessian'"),
        ({"blocks": ["0"]}, "`blocks`=['0'] cannot be used with `backend`='pyhessian'"),
        ({"smallest": True}, "`backend`='pyhessian' computes the largest eigenvalues only"),
    ],
)
def test_pyhessian_refuses_what_it_cannot_compute(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=re.escape(match)):
        HessianProbe(backend="pyhessian", **kwargs)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"k": 0}, "`k` must be an integer >= 1, got 0."),
        ({"density_iter": 1}, "`density_iter` must be an integer >= 2, got 1."),
        ({"seed": -1}, "`seed` must be an integer >= 0, got -1."),
        ({"tol": -1.0}, "`tol` must be a finite number > 0, got -1.0."),
        ({"memory": "all"}, "`memory` must be one of ('auto', 'reuse', 'recompute'), got 'all'."),
        ({"train_mode": 1.5}, "`train_mode` must be None, False or True, got 1.5."),
        ({"params": ["a", 3]}, "`params` must be None, a regex (str) or a non-empty list"),
        ({"blocks": []}, "`blocks` must be None or a non-empty list of module names, got []."),
    ],
)
def test_argument_errors(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=re.escape(match)):
        HessianProbe(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"params": ["head"]}, r"`params`: the prefixes ['head'] selects no trainable parameter"),
        ({"blocks": ["0", "9"]}, r"`blocks`: the prefixes ['9'] selects no trainable parameter"),
        (
            {"k": 3, "blocks": ["3.bias"]},
            "`k`=3 must be below the 2 parameters of `blocks`=['3.bias'] (at most k=1).",
        ),
        ({"k": 26}, "`k`=26 must be below the 26 parameters of `params`=None (at most k=25)."),
    ],
)
def test_check_model_refuses_selections_that_do_not_fit(kwargs: dict[str, Any], match: str) -> None:
    probe = HessianProbe(**kwargs)
    with pytest.raises(ValueError, match=re.escape(match)):
        probe.check_model(_model())
    HessianProbe(k=25).check_model(_model())
    HessianProbe(k=9, blocks=["0", "3"]).check_model(_model())


def test_mode_dependent_kinds() -> None:
    model = nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.0), nn.BatchNorm1d(2, track_running_stats=False))
    assert mode_dependent_kinds(model) == []
    model.append(nn.BatchNorm1d(2)).append(nn.Dropout(0.1)).append(nn.AlphaDropout(0.2))
    assert mode_dependent_kinds(model) == ["AlphaDropout", "BatchNorm1d", "Dropout"]


class _Counting(HessianProbe):
    checkpointed = (("_last", -1), ("runs", 0))

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._last, self.runs = -1, 0


def test_state_dict_round_trip_keeps_counters_and_warm_vectors() -> None:
    """A checkpoint of the engine: its subclass's counters by name (leading ``_`` dropped) and the warm
    vectors on the CPU; a probe restored from it starts where the saved one would (same products, values)."""
    model, batches = _model(), _batches()
    saved = _Counting(k=2, smallest=True, tol=1e-8)
    saved.run(model, mse_loss, batches)
    saved._last, saved.runs = 7, 1
    state = saved.state_dict()
    assert set(state) == {"last", "runs", "warm_vectors"} and (state["last"], state["runs"]) == (7, 1)
    assert state["warm_vectors"].device.type == "cpu" and state["warm_vectors"] is not saved.warm_vectors
    restored = _Counting(k=2, smallest=True, tol=1e-8)
    restored.load_state_dict(state)
    assert (restored._last, restored.runs) == (7, 1)
    assert restored.warm_vectors is not None and torch.equal(restored.warm_vectors, saved.warm_vectors)
    a, b = saved.run(model, mse_loss, batches), restored.run(model, mse_loss, batches)
    assert a.num_products == b.num_products and a.eigen == b.eigen
    empty = _Counting()
    empty.load_state_dict({})  # an old checkpoint without the keys: the values before the first probe
    assert (empty._last, empty.runs, empty.warm_vectors) == (-1, 0, None)
