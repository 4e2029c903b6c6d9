"""The preconditioned operator against a dense float64 P^-1 H, the Adam/RMSprop preconditioner against the
optimizer's own update, the stability thresholds against the dynamics of torch's optimizers on a quadratic."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from lightning_landscape.curvature import DenseOperator, HessianOperator, lanczos
from lightning_landscape.curvature.preconditioned import (
    PreconditionedOperator,
    adam_preconditioner,
    stability_threshold,
)
from tests.oracle import dense_hessian

DT = torch.float64


def _mlp_and_batch(seed: int = 0) -> tuple[nn.Module, tuple[Tensor, Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    model = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2)).to(DT)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=DT) * 0.7)
    x = torch.randn(32, 3, generator=gen, dtype=DT)
    y = torch.randn(32, 2, generator=gen, dtype=DT)
    return model, (x, y)


def _loss(model: nn.Module, batch: Any) -> Tensor:
    x, y = batch
    return F.mse_loss(model(x), y)


def _train(model: nn.Module, batch: Any, optimizer: torch.optim.Optimizer, steps: int) -> None:
    for _ in range(steps):
        optimizer.zero_grad()
        _loss(model, batch).backward()
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)


@pytest.mark.parametrize(
    "make",
    [
        lambda ps: torch.optim.Adam(ps, lr=0.01, eps=1e-4),
        lambda ps: torch.optim.AdamW(ps, lr=0.01, betas=(0.8, 0.95), weight_decay=0.1),
        lambda ps: torch.optim.Adam(ps, lr=0.01, amsgrad=True),
        lambda ps: torch.optim.RMSprop(ps, lr=0.002, centered=True),
    ],
    ids=["adam", "adamw", "amsgrad", "rmsprop_centered"],
)
def test_top_eigenvalue_equals_dense_p_inv_h(make: Any) -> None:
    model, batch = _mlp_and_batch()
    opt = make(model.parameters())
    _train(model, batch, opt, steps=5)
    op = HessianOperator(model, _loss, [batch])
    d = adam_preconditioner(opt, op.params)
    pre = PreconditionedOperator(op, d)
    res = lanczos(pre, k=2, tol=1e-10)
    assert res.converged

    H = dense_hessian(model, _loss, [batch])
    dd = d.to(DT)
    sym = H / dd.sqrt()[:, None] / dd.sqrt()[None, :]
    truth = torch.linalg.eigvalsh(sym).flip(0)
    # The same spectrum as the non-symmetric P^-1 H itself (eigenvalues real, since it is similar to `sym`).
    nonsym = torch.linalg.eigvals(H / dd[:, None])
    assert float(nonsym.imag.abs().max()) < 1e-8 * float(truth.abs().max())
    assert torch.allclose(
        nonsym.real.sort(descending=True).values, truth, rtol=1e-8, atol=1e-8 * float(truth[0])
    )
    # Tolerance: Lanczos at tol=1e-10 on a 27-dimensional operator; 1e-8 relative leaves room for rounding.
    assert torch.allclose(res.eigenvalues, truth[:2], rtol=1e-8, atol=0.0)
    # The preconditioned sharpness differs from the plain one (the test is not trivially passed by H).
    assert abs(float(truth[0]) - float(torch.linalg.eigvalsh(H)[-1])) > 1e-3 * float(truth[0])


def test_matmat_equals_matvec_columns() -> None:
    gen = torch.Generator().manual_seed(1)
    A = torch.randn(6, 6, generator=gen, dtype=DT)
    op = PreconditionedOperator(DenseOperator(A + A.T), torch.rand(6, generator=gen, dtype=DT) + 0.1)
    V = torch.randn(6, 3, generator=gen, dtype=DT)
    cols = torch.stack([op.matvec(V[:, i]) for i in range(3)], dim=1)
    assert torch.allclose(op.matmat(V), cols, rtol=1e-12, atol=1e-12)
    assert op.num_products == 6


@pytest.mark.parametrize(
    "make",
    [
        lambda ps: torch.optim.Adam(ps, lr=0.03, eps=1e-3),
        lambda ps: torch.optim.AdamW(ps, lr=0.03, betas=(0.5, 0.9)),
        lambda ps: torch.optim.Adam(ps, lr=0.03, amsgrad=True),
        lambda ps: torch.optim.RMSprop(ps, lr=0.01, eps=1e-3),
        lambda ps: torch.optim.RMSprop(ps, lr=0.01, centered=True),
    ],
    ids=["adam", "adamw", "amsgrad", "rmsprop", "rmsprop_centered"],
)
def test_preconditioner_is_the_one_of_the_optimizers_own_update(make: Any) -> None:
    # After step t: theta_t - theta_{t-1} == -lr m_t / d, m_t = exp_avg (Adam) or the gradient (RMSprop).
    model, batch = _mlp_and_batch(2)
    opt = make(model.parameters())
    _train(model, batch, opt, steps=3)
    params = list(model.parameters())
    before = [p.detach().clone() for p in params]
    opt.zero_grad()
    _loss(model, batch).backward()
    grads = torch.cat([p.grad.reshape(-1) for p in params])  # type: ignore[union-attr]
    opt.step()
    d = adam_preconditioner(opt, params)
    step = torch.cat([(p.detach() - b).reshape(-1) for p, b in zip(params, before, strict=True)])
    group = opt.param_groups[0]
    if isinstance(opt, torch.optim.RMSprop):
        m = grads
    else:
        m = torch.cat([opt.state[p]["exp_avg"].reshape(-1) for p in params])
    if isinstance(opt, torch.optim.AdamW):
        # Decoupled decay is applied before the Adam step: take it out of the observed step.
        step = step + group["lr"] * group["weight_decay"] * torch.cat([b.reshape(-1) for b in before])
    assert torch.allclose(step, -group["lr"] * m / d, rtol=1e-9, atol=1e-14)


def test_preconditioner_refuses_bad_input() -> None:
    w = nn.Parameter(torch.ones(2))
    with pytest.raises(ValueError, match="SGD is not supported"):
        adam_preconditioner(torch.optim.SGD([w], lr=0.1), [w])
    with pytest.raises(ValueError, match="NAdam is not supported"):
        adam_preconditioner(torch.optim.NAdam([w], lr=0.1), [w])
    opt = torch.optim.Adam([w], lr=0.1)
    with pytest.raises(ValueError, match="no Adam state yet"):
        adam_preconditioner(opt, [w])
    with pytest.raises(ValueError, match="not a parameter of the optimizer"):
        adam_preconditioner(opt, [nn.Parameter(torch.ones(1))])
    with pytest.raises(ValueError, match="`params` is empty"):
        adam_preconditioner(opt, [])
    with pytest.raises(TypeError, match=r"`optimizer` must be a torch\.optim\.Optimizer"):
        adam_preconditioner("adam", [w])  # type: ignore[arg-type]
    op = DenseOperator(torch.eye(2, dtype=DT))
    with pytest.raises(ValueError, match="`diag` must have"):
        PreconditionedOperator(op, torch.ones(3, dtype=DT))
    with pytest.raises(ValueError, match="`diag` must hold finite entries > 0"):
        PreconditionedOperator(op, torch.tensor([1.0, 0.0], dtype=DT))
    with pytest.raises(TypeError, match="`diag` must be a tensor"):
        PreconditionedOperator(op, [1.0, 1.0])  # type: ignore[arg-type]


def _w() -> nn.Parameter:
    return nn.Parameter(torch.zeros(1, dtype=DT))


@pytest.mark.parametrize(
    ("make", "want"),
    [
        (lambda: torch.optim.SGD([_w()], lr=0.1), 2 / 0.1),
        (lambda: torch.optim.SGD([_w()], lr=0.1, momentum=0.9), 3.8 / 0.1),
        (lambda: torch.optim.SGD([_w()], lr=0.1, momentum=0.9, dampening=0.5), 3.8 / 0.05),
        (lambda: torch.optim.SGD([_w()], lr=0.1, momentum=0.9, nesterov=True), 3.8 / (2.8 * 0.1)),
        (lambda: torch.optim.Adam([_w()], lr=1e-3), 38 / 1e-3),
        (lambda: torch.optim.AdamW([_w()], lr=1e-3, betas=(0.5, 0.99)), 3.0 / (0.5 * 1e-3)),
        (lambda: torch.optim.RMSprop([_w()], lr=1e-2), 2 / 1e-2),
        (lambda: torch.optim.RMSprop([_w()], lr=1e-2, momentum=0.5), 3.0 / 1e-2),
    ],
    ids=["sgd", "heavy_ball", "dampening", "nesterov", "adam", "adamw", "rmsprop", "rmsprop_momentum"],
)
def test_thresholds_of_hand_built_optimizers(make: Any, want: float) -> None:
    value, text = stability_threshold(make())
    assert value == pytest.approx(want, rel=1e-12)
    assert "lr=" in text


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"momentum": 0.9}, {"momentum": 0.6, "dampening": 0.3}, {"momentum": 0.9, "nesterov": True}],
    ids=["sgd", "heavy_ball", "dampening", "nesterov"],
)
def test_sgd_threshold_separates_convergence_from_divergence(kwargs: dict[str, Any]) -> None:
    # torch's own SGD on L(w) = lam w^2 / 2: bounded 2 % below the threshold, blowing up 2 % above it.
    lr = 0.1
    threshold, _ = stability_threshold(torch.optim.SGD([_w()], lr=lr, **kwargs))

    def final(lam: float) -> float:
        w = nn.Parameter(torch.ones(1, dtype=DT))
        opt = torch.optim.SGD([w], lr=lr, **kwargs)
        for _ in range(3000):
            opt.zero_grad()
            (0.5 * lam * w**2).sum().backward()
            opt.step()
            if abs(float(w.detach())) > 1e6:
                break
        return abs(float(w.detach()))

    assert final(0.98 * threshold) < 1.0
    assert final(1.02 * threshold) > 1e3


def test_adam_threshold_is_heavy_ball_with_frozen_preconditioner() -> None:
    # Adam with its preconditioner frozen (v fixed) is heavy-ball on m = EMA(g): simulate exactly that update.
    lr, beta1 = 0.01, 0.9
    threshold, _ = stability_threshold(torch.optim.Adam([_w()], lr=lr, betas=(beta1, 0.999)))

    def final(lam: float) -> float:
        w, m = 1.0, 0.0
        for _ in range(5000):
            m = beta1 * m + (1 - beta1) * lam * w
            w -= lr * m
            if abs(w) > 1e6:
                break
        return abs(w)

    assert final(0.98 * threshold) < 1.0
    assert final(1.02 * threshold) > 1e3


def test_threshold_follows_the_learning_rate_and_groups() -> None:
    a, b = _w(), _w()
    opt = torch.optim.SGD([{"params": [a]}, {"params": [b], "lr": 0.5, "momentum": 0.5}], lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    assert stability_threshold(opt)[0] == pytest.approx(20.0)
    assert stability_threshold(opt, group=1)[0] == pytest.approx(3.0 / 0.5)
    opt.step()
    sched.step()
    assert stability_threshold(opt)[0] == pytest.approx(40.0)


def test_threshold_refuses_bad_input() -> None:
    with pytest.raises(ValueError, match="Adagrad is not supported"):
        stability_threshold(torch.optim.Adagrad([_w()], lr=0.1))
    with pytest.raises(ValueError, match=r"`group` must be a parameter group index in 0\.\.0, got 1"):
        stability_threshold(torch.optim.SGD([_w()], lr=0.1), group=1)
    with pytest.raises(ValueError, match="`group` must be an integer >= 0"):
        stability_threshold(torch.optim.SGD([_w()], lr=0.1), group=-1)
    with pytest.raises(ValueError, match="learning rate of group 0 must be > 0"):
        stability_threshold(torch.optim.SGD([_w()], lr=0.0))
