"""linear_barrier against closed forms: convex segments stay under their chord; a double well's barrier."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_landscape.landscape import linear_barrier
from lightning_landscape.landscape.barrier import BUFFER_MODES, reestimated
from tests._shared import mse_loss
from tests.landscape.cases import DT, DoubleWell, conv_case, linear_case


def test_barrier_between_two_minimizers_of_a_convex_loss_is_not_positive() -> None:
    # Least squares with more parameters than data: the minimizers form an affine set.
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 5, generator=gen, dtype=DT)
    y = torch.randn(3, 1, generator=gen, dtype=DT)
    w_min = torch.linalg.lstsq(x, y).solution.T  # [1, 5], min-norm solution
    null = torch.linalg.svd(x).Vh[-1]  # x @ null = 0
    a, b = nn.Linear(5, 1, bias=False).to(DT), nn.Linear(5, 1, bias=False).to(DT)
    with torch.no_grad():
        a.weight.copy_(w_min + 2.0 * null)
        b.weight.copy_(w_min - 3.0 * null)
    res = linear_barrier(a, b, mse_loss, [(x, y)], steps=11)
    assert res.loss_a < 1e-20 and res.loss_b < 1e-20
    assert res.barrier <= 1e-12
    # Not minimizers, still convex: the segment lies below its chord inside (0, 1).
    with torch.no_grad():
        b.weight.add_(torch.randn(1, 5, generator=gen, dtype=DT))
    res = linear_barrier(a, b, mse_loss, [(x, y)], steps=11)
    assert res.barrier <= 1e-12
    assert float(res.excess()[1:-1].max()) < -1e-6


def test_barrier_of_a_double_well_matches_its_closed_form() -> None:
    # L(t) - chord = v^2 - delta^2 v with v = 1 - (2t - 1)^2: the maximum 1 - delta^2 is at t = 1/2.
    delta = 0.4
    a, b = DoubleWell((-1.0, 0.3 - delta)), DoubleWell((1.0, 0.3 + delta))
    res = linear_barrier(a, b, lambda m, x: m(x), [torch.zeros(2, 1, dtype=DT)], steps=21)
    assert res.barrier == pytest.approx(1 - delta**2, abs=1e-12)
    assert res.t_max == pytest.approx(0.5)
    v = 1 - (2 * res.ts - 1) ** 2
    torch.testing.assert_close(res.excess(), v**2 - delta**2 * v, atol=1e-12, rtol=0)


def test_reestimated_statistics_are_the_plain_average_of_train_mode_batches() -> None:
    case = conv_case()
    clone = reestimated(case.model, case.loss_fn, case.batches, seed=0)
    assert clone is not case.model and BUFFER_MODES == ("interpolate", "reestimate")
    # BatchNorm with momentum=None keeps the cumulative average of the per-batch statistics.
    feats = [case.model.conv(x).transpose(0, 1).reshape(3, -1) for x, _ in case.batches]
    want_mean = torch.stack([f.mean(1) for f in feats]).mean(0)
    want_var = torch.stack([f.var(1, unbiased=True) for f in feats]).mean(0)
    torch.testing.assert_close(clone.bn.running_mean, want_mean.detach(), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(clone.bn.running_var, want_var.detach(), rtol=1e-12, atol=1e-14)
    assert not torch.equal(clone.bn.running_mean, case.model.bn.running_mean)  # the original is untouched


def test_bad_arguments_are_named() -> None:
    case = linear_case()
    m, f, b = case.model, case.loss_fn, case.batches
    with pytest.raises(ValueError, match="one architecture"):
        linear_barrier(m, nn.Linear(3, 3).to(DT), f, b)
    with pytest.raises(ValueError, match="`buffers`"):
        linear_barrier(m, linear_case(1).model, f, b, buffers="keep")  # type: ignore[arg-type]
