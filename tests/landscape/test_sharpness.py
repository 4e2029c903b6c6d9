"""Adaptive sharpness against closed forms on quadratics, its ReLU-rescaling invariance (and the plain
sharpness's lack of it), and a model left exactly as found."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from lightning_landscape.landscape import SharpnessResult, adaptive_sharpness

DT = torch.float64


class Quadratic(nn.Module):
    """L(w) = 0.5 (w - w0)' A (w - w0), the parameter starting at ``w``."""

    def __init__(self, A: Tensor, w0: Tensor, w: Tensor) -> None:
        super().__init__()
        self.w = nn.Parameter(w.clone())
        self.register_buffer("A", A)
        self.register_buffer("w0", w0)

    def forward(self, batch: Any) -> Tensor:
        e = self.w - self.w0
        return 0.5 * e @ self.A @ e


def _quad_loss(model: nn.Module, batch: Any) -> Tensor:
    return model(batch)


def _spd(n: int, eigs: list[float], seed: int = 0) -> Tensor:
    gen = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=DT))
    return Q @ torch.diag(torch.tensor(eigs, dtype=DT)) @ Q.T


EIGS = [5.0, 2.0, 1.0, 0.5, 0.2, 0.1]
BATCH = [torch.zeros(1, dtype=DT)]


def test_worst_case_l2_at_a_minimum_is_half_rho_squared_lambda_max() -> None:
    A = _spd(6, EIGS)
    w0 = torch.linspace(-1, 1, 6, dtype=DT)
    rho = 0.3
    res = adaptive_sharpness(Quadratic(A, w0, w0), _quad_loss, BATCH, rho, elementwise_scale=None, steps=20)
    truth = 0.5 * rho**2 * EIGS[0]
    # A lower bound by construction; 20 power-iteration-like steps at lambda_2 / lambda_1 = 0.4 reach 1e-4.
    assert res.value <= truth * (1 + 1e-10)
    assert res.value == pytest.approx(truth, rel=1e-4)
    assert res.base_loss == 0.0 and res.kind == "worst" and res.p == 2 and res.num_evaluations == 21


def test_adaptive_worst_case_l2_is_the_top_eigenvalue_of_the_scaled_hessian() -> None:
    # With c = |w0| the ball is {C u : |u| <= rho}: the maximum is 0.5 rho^2 lambda_max(C A C).
    A = _spd(6, EIGS, seed=1)
    w0 = torch.tensor([1.0, -2.0, 0.5, 3.0, -0.3, 1.5], dtype=DT)
    rho = 0.05
    res = adaptive_sharpness(Quadratic(A, w0, w0), _quad_loss, BATCH, rho, steps=40)
    C = torch.diag(w0.abs())
    truth = 0.5 * rho**2 * float(torch.linalg.eigvalsh(C @ A @ C)[-1])
    assert res.value <= truth * (1 + 1e-10)
    assert res.value == pytest.approx(truth, rel=1e-3)


def test_worst_case_linf_of_a_diagonal_quadratic_is_the_corner() -> None:
    d = torch.tensor(EIGS, dtype=DT)
    w0 = torch.ones(6, dtype=DT)
    rho = 0.2
    res = adaptive_sharpness(
        Quadratic(torch.diag(d), w0, w0), _quad_loss, BATCH, rho, p="inf", elementwise_scale=None
    )
    assert res.value == pytest.approx(0.5 * rho**2 * float(d.sum()), rel=1e-12)
    assert res.p == "inf"
    # float("inf") is the same norm.
    again = adaptive_sharpness(Quadratic(torch.diag(d), w0, w0), _quad_loss, BATCH, rho, p=float("inf"))  # type: ignore[arg-type]
    assert again.p == "inf"


@pytest.mark.parametrize(("p", "factor"), [(2, 1.0), ("inf", 1.0 / 3.0)])
def test_average_matches_its_expectation(p: Any, factor: float) -> None:
    # E 0.5 delta' A delta = 0.5 rho^2 tr(A) E z_i^2: 1 for the Gaussian, 1/3 for uniform(-1, 1). Away from
    # the minimum the linear term cancels in the antithetic pairs.
    A = _spd(6, EIGS, seed=2)
    w0 = torch.zeros(6, dtype=DT)
    w = torch.full((6,), 0.7, dtype=DT)
    rho, samples = 0.1, 400
    model = Quadratic(A, w0, w)
    res = adaptive_sharpness(
        model, _quad_loss, BATCH, rho, p=p, kind="average", samples=samples, elementwise_scale=None
    )
    truth = 0.5 * rho**2 * float(torch.trace(A)) * factor
    # Standard error of the mean of 0.5 rho^2 z'Az over the 200 pairs (both members equal): for the Gaussian
    # Var z'Az = 2 tr(A^2); uniform entries have a smaller variance. 5 standard errors.
    se = 0.5 * rho**2 * math.sqrt(2 * float(torch.trace(A @ A))) / math.sqrt(samples / 2)
    assert abs(res.value - truth) < 5 * se
    assert res.base_loss == pytest.approx(0.5 * float(w @ A @ w), rel=1e-12)
    assert res.num_evaluations == samples + 1


def _relu_net() -> nn.Module:
    gen = torch.Generator().manual_seed(3)
    net = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3)).to(DT)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=DT))
    return net


def _rescaled(net: nn.Module, scales: Tensor) -> nn.Module:
    """Hidden unit j's incoming weights and bias times scales[j], outgoing weights divided by it."""
    other = _relu_net()
    other.load_state_dict(net.state_dict())
    with torch.no_grad():
        other[0].weight.mul_(scales[:, None])
        other[0].bias.mul_(scales)
        other[2].weight.div_(scales[None, :])
    return other


def _ce(model: nn.Module, batch: Any) -> Tensor:
    x, y = batch
    return F.cross_entropy(model(x), y)


def _data() -> list[Any]:
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(32, 4, generator=gen, dtype=DT)
    y = torch.randint(0, 3, (32,), generator=gen)
    return [(x[:16], y[:16]), (x[16:], y[16:])]


@pytest.mark.parametrize(("p", "kind"), [(2, "worst"), ("inf", "worst"), (2, "average"), ("inf", "average")])
def test_adaptive_sharpness_is_invariant_to_relu_rescaling_plain_is_not(p: Any, kind: Any) -> None:
    net = _relu_net()
    other = _rescaled(net, torch.tensor([4.0, 0.25, 1.0, 10.0, 0.5, 2.0], dtype=DT))
    batches = _data()
    assert torch.allclose(net(batches[0][0]), other(batches[0][0]), rtol=1e-12, atol=1e-12)  # same function
    rho = 0.05 if p == 2 else 0.01
    kwargs: dict[str, Any] = {"p": p, "kind": kind, "samples": 8}
    a = adaptive_sharpness(net, _ce, batches, rho, **kwargs)
    b = adaptive_sharpness(other, _ce, batches, rho, **kwargs)
    assert a.value > 0 if kind == "worst" else a.value != 0
    assert b.value == pytest.approx(a.value, rel=1e-9, abs=1e-13)
    assert b.base_loss == pytest.approx(a.base_loss, rel=1e-12)
    plain_a = adaptive_sharpness(net, _ce, batches, rho, elementwise_scale=None, **kwargs)
    plain_b = adaptive_sharpness(other, _ce, batches, rho, elementwise_scale=None, **kwargs)
    assert abs(plain_b.value - plain_a.value) > 0.05 * abs(plain_a.value)


def test_model_batches_and_rng_left_exactly_as_found() -> None:
    torch.manual_seed(5)
    net = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Dropout(0.3), nn.Linear(6, 3)).to(
        DT
    )
    net[4].bias.requires_grad_(False)  # a frozen parameter stays frozen and unperturbed
    net.train()
    net[1].eval()  # a submodule with its own flag
    batches = _data()
    _ce(net, batches[0]).backward()
    before_state = {k: v.clone() for k, v in net.state_dict().items()}
    grads = [(p, p.grad, None if p.grad is None else p.grad.clone()) for p in net.parameters()]
    flags = [(p, p.requires_grad) for p in net.parameters()]
    modes = [(m, m.training) for m in net.modules()]
    data = [(x.clone(), y.clone()) for x, y in batches]
    rng = torch.get_rng_state()
    for kind in ("worst", "average"):
        for train_mode in (False, True):
            res = adaptive_sharpness(net, _ce, batches, 0.05, kind=kind, train_mode=train_mode)  # type: ignore[arg-type]
            assert isinstance(res, SharpnessResult) and math.isfinite(res.value)
    assert torch.equal(torch.get_rng_state(), rng)
    for k, v in net.state_dict().items():
        assert torch.equal(v, before_state[k]), k
    for p, g, value in grads:
        assert p.grad is g and (g is None or torch.equal(g, value))
    assert all(p.requires_grad == flag for p, flag in flags)
    assert all(m.training == training for m, training in modes)
    for (x, y), (x0, y0) in zip(batches, data, strict=True):
        assert torch.equal(x, x0) and torch.equal(y, y0)


def test_frozen_parameters_are_not_perturbed() -> None:
    # Only b is trainable in L = 0.5 |a|^2 + 0.5 |b|^2 (a frozen): plain worst case rho |b| + rho^2 / 2.
    class Two(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Parameter(torch.tensor([3.0, 4.0], dtype=DT), requires_grad=False)
            self.b = nn.Parameter(torch.tensor([0.6, 0.8], dtype=DT))

    model = Two()
    res = adaptive_sharpness(
        model, lambda m, _: 0.5 * (m.a @ m.a + m.b @ m.b), BATCH, 0.1, elementwise_scale=None
    )
    assert res.value == pytest.approx(0.1 * 1.0 + 0.005, rel=1e-12)


def test_bad_input_is_refused_by_name() -> None:
    net, batches = _relu_net(), _data()
    with pytest.raises(ValueError, match="`rho` must be a finite number > 0"):
        adaptive_sharpness(net, _ce, batches, 0.0)
    with pytest.raises(ValueError, match="`p` must be 2 or 'inf'"):
        adaptive_sharpness(net, _ce, batches, 0.1, p=1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="`kind` must be one of"):
        adaptive_sharpness(net, _ce, batches, 0.1, kind="max")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="`steps` must be an integer >= 1"):
        adaptive_sharpness(net, _ce, batches, 0.1, steps=0)
    with pytest.raises(ValueError, match="`samples` must be an integer >= 1"):
        adaptive_sharpness(net, _ce, batches, 0.1, kind="average", samples=0)
    with pytest.raises(ValueError, match="`elementwise_scale` must be 'abs' or None"):
        adaptive_sharpness(net, _ce, batches, 0.1, elementwise_scale="filter")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="`batches` must be a list"):
        adaptive_sharpness(net, _ce, batches[0][0], 0.1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="`batches` is empty"):
        adaptive_sharpness(net, _ce, [], 0.1)
    with pytest.raises(TypeError, match=r"`model` must be a torch\.nn\.Module"):
        adaptive_sharpness("net", _ce, batches, 0.1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="not finite"):
        adaptive_sharpness(net, lambda m, b: _ce(m, b) * float("nan"), batches, 0.1)
