"""linear_barrier against closed forms: convex segments stay under their chord; a double well's barrier."""

from __future__ import annotations

import copy
from collections.abc import Iterator

import pytest
import torch
from torch import nn

from lightning_landscape.landscape import _repair, linear_barrier
from lightning_landscape.landscape.barrier import BUFFER_MODES, _point, reestimated
from lightning_landscape.landscape.directions import difference
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


# --- alignment and REPAIR (issue 18) ---


def _mlp(seed: int, width: int = 6, dtype: torch.dtype = DT) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(3, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 2)
    ).to(dtype)


def _permuted_copy(net: nn.Sequential, gen: torch.Generator) -> nn.Sequential:
    """The same function: both hidden layers' units shuffled, the first one's also rescaled by c > 0."""
    twin = copy.deepcopy(net)
    p1, p2 = torch.randperm(6, generator=gen), torch.randperm(6, generator=gen)
    c = torch.rand(6, generator=gen, dtype=DT) + 0.5
    with torch.no_grad():
        twin[0].weight.copy_(c[:, None] * net[0].weight[p1])
        twin[0].bias.copy_(c * net[0].bias[p1])
        twin[2].weight.copy_(net[2].weight[p2][:, p1] / c)
        twin[2].bias.copy_(net[2].bias[p2])
        twin[4].weight.copy_(net[4].weight[:, p2])
    return twin


@pytest.mark.parametrize("method", ["weights", "activations"])
def test_a_permuted_copy_has_aligned_barrier_zero_and_a_raw_barrier(method: str) -> None:
    gen = torch.Generator().manual_seed(0)
    net = _mlp(0)
    twin = _permuted_copy(net, gen)
    x = torch.randn(64, 3, generator=gen, dtype=DT)
    batches = [(x, torch.randn(64, 2, generator=gen, dtype=DT))]
    torch.testing.assert_close(twin(x), net(x), rtol=0, atol=1e-12)  # one function
    raw = linear_barrier(net, twin, mse_loss, batches, steps=11)
    aligned = linear_barrier(net, twin, mse_loss, batches, steps=11, align=method)
    assert raw.barrier > 1e-3 and raw.meta["align"] is None
    assert abs(aligned.barrier) < 1e-6 and aligned.meta["align"] == method
    assert float((aligned.losses - aligned.loss_a).abs().max()) < 1e-6  # flat: one point, not a valley
    assert aligned.loss_b == pytest.approx(raw.loss_b, abs=1e-12)  # alignment keeps b's function
    repaired = linear_barrier(net, twin, mse_loss, batches, steps=5, align=method, repair=True)
    assert abs(repaired.barrier) < 1e-6 and repaired.meta["repair"] is True


@pytest.mark.parametrize("method", [None, "weights", "activations"])
def test_a_convex_loss_stays_under_its_chord_with_or_without_alignment(method: str | None) -> None:
    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(20, 5, generator=gen, dtype=DT), torch.randn(20, 1, generator=gen, dtype=DT)
    a, b = nn.Linear(5, 1).to(DT), nn.Linear(5, 1).to(DT)  # linear regression: no hidden units to move
    res = linear_barrier(a, b, mse_loss, [(x, y)], steps=11, align=method)
    assert res.barrier <= 1e-12
    assert float(res.excess()[1:-1].max()) < -1e-6


def test_the_double_well_barrier_is_unchanged_by_alignment() -> None:
    delta = 0.4
    a, b = DoubleWell((-1.0, 0.3 - delta)), DoubleWell((1.0, 0.3 + delta))
    res = linear_barrier(a, b, lambda m, x: m(x), [torch.zeros(2, 1, dtype=DT)], steps=21, align="weights")
    assert res.barrier == pytest.approx(1 - delta**2, abs=1e-12)  # no hidden units: nothing to align away


def test_repair_moves_the_preactivations_onto_the_interpolated_statistics() -> None:
    gen = torch.Generator().manual_seed(2)
    a, b = _mlp(3), _mlp(4)
    x = torch.randn(128, 3, generator=gen, dtype=DT)
    batches = [(x[:64], x[:64, :2]), (x[64:], x[64:, :2])]
    names = _repair.repair_layers(a)
    assert names == ["0", "2"]  # the hidden layers, not the output layer
    stats_a, stats_b = (_repair.statistics(m, names, mse_loss, batches) for m in (a, b))
    delta, buffer_delta = difference(a, b)
    point = _point(a, delta, buffer_delta, 0.3)
    targets = _repair.interpolated_targets(stats_a, stats_b, 0.3)
    fixed = _repair.repaired(point, names, targets, mse_loss, batches)
    # Independent check: the statistics of the plain forward of every hidden preactivation.
    h0 = fixed[0](x)
    h2 = fixed[2](torch.relu(h0))
    for h, name in ((h0, "0"), (h2, "2")):
        torch.testing.assert_close(h.mean(0), targets[name][0], rtol=0, atol=1e-10)
        torch.testing.assert_close(h.std(0, unbiased=False), targets[name][1], rtol=0, atol=1e-10)
    torch.testing.assert_close(fixed[4].weight, point[4].weight, rtol=0, atol=0)  # the output layer stays
    res = linear_barrier(a, b, mse_loss, batches, steps=3, repair=True)
    plain = linear_barrier(a, b, mse_loss, batches, steps=3)
    assert res.loss_a == pytest.approx(plain.loss_a, abs=1e-10)  # the endpoints are their own statistics
    assert res.loss_b == pytest.approx(plain.loss_b, abs=1e-10)


@pytest.fixture
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny training on a shared machine; restored below
    try:
        with torch.random.fork_rng():
            yield
    finally:
        torch.set_num_threads(threads)


def test_repair_lowers_the_aligned_barrier_of_trained_networks_without_batchnorm(one_thread: None) -> None:
    # Two 8-32-32-1 ReLU nets fitted to one teacher; interpolating shrinks the hidden variance (Jordan et al.)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(512, 8, generator=gen)
    hidden = torch.tanh(x @ torch.randn(8, 16, generator=gen) / 8**0.5)
    batches = [(x, hidden @ torch.randn(16, 1, generator=gen) / 4)]
    nets = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        net = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 1))
        opt = torch.optim.Adam(net.parameters(), 3e-3)
        for _ in range(150):
            opt.zero_grad()
            mse_loss(net, batches[0]).backward()
            opt.step()
        nets.append(net)
    before = [p.detach().clone() for net in nets for p in net.parameters()]
    plain = linear_barrier(*nets, mse_loss, batches, steps=11, align="activations")
    repaired = linear_barrier(*nets, mse_loss, batches, steps=11, align="activations", repair=True)
    # Measured: end losses 0.012 and 0.009, aligned barrier 0.033, repaired 0.012.
    assert plain.barrier > 2 * max(plain.loss_a, plain.loss_b)  # a real barrier after alignment
    assert repaired.barrier < 0.6 * plain.barrier
    after = [p for net in nets for p in net.parameters()]
    assert all(torch.equal(p, q) for p, q in zip(before, after, strict=True))


def test_align_and_repair_arguments_are_named() -> None:
    case = linear_case()
    m, f, b = case.model, case.loss_fn, case.batches
    with pytest.raises(ValueError, match="`align`"):
        linear_barrier(m, linear_case(1).model, f, b, align="git")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="`repair`"):
        linear_barrier(m, linear_case(1).model, f, b, repair=1)  # type: ignore[arg-type]
