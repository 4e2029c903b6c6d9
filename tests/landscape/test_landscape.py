"""The landscape library against analytic truths (float64): quadratics, convex segments, a double well,
the dense Hessian oracle, and the vectorized grid against the point-by-point loop."""

from __future__ import annotations

import math
import warnings
from typing import Any

import pytest
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from lightning_landscape.landscape import (
    BarrierResult,
    LineResult,
    PlaneResult,
    hessian_directions,
    linear_barrier,
    loss_line,
    loss_plane,
    random_directions,
    trajectory_plane,
)
from lightning_landscape.landscape._evaluate import GridEvaluator
from lightning_landscape.landscape.directions import flatten, named_trainable
from tests.curvature.cases import Case, dense_hessian

DT = torch.float64


def mse(model: nn.Module, batch: tuple[Tensor, Tensor]) -> Tensor:
    x, y = batch
    return F.mse_loss(model(x), y)


def ce(model: nn.Module, batch: tuple[Tensor, Tensor]) -> Tensor:
    x, y = batch
    return F.cross_entropy(model(x), y)


def linear_case(seed: int = 0) -> Case:
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = nn.Linear(3, 2).to(DT)
    batches = [
        (torch.randn(7, 3, generator=gen, dtype=DT), torch.randn(7, 2, generator=gen, dtype=DT)),
        (torch.randn(4, 3, generator=gen, dtype=DT), torch.randn(4, 2, generator=gen, dtype=DT)),
    ]
    return Case("linear", model, mse, batches)


def mean_loss(model: nn.Module, loss_fn: Any, batches: list[Any]) -> Tensor:
    sizes = [b[0].shape[0] for b in batches]
    return sum(loss_fn(model, b) * n for b, n in zip(batches, sizes, strict=True)) / sum(sizes)


def gradient(case: Case) -> Tensor:
    params = list(named_trainable(case.model).values())
    grads = torch.autograd.grad(mean_loss(case.model, case.loss_fn, case.batches), params)
    return torch.cat([g.reshape(-1) for g in grads])


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class ConvNet(nn.Module):
    """Conv first (the cached-products path of conv), BatchNorm, dropout: exercises modes and buffers."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)
        self.drop = nn.Dropout(0.3)
        self.fc = nn.Linear(3 * 4 * 4, 3)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.drop(torch.relu(self.bn(self.conv(x)))).flatten(1))


def conv_case(seed: int = 0) -> Case:
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = ConvNet().to(DT)
    with torch.no_grad():  # BatchNorm statistics away from their defaults
        model.bn.running_mean.uniform_(-0.5, 0.5)
        model.bn.running_var.uniform_(0.5, 1.5)
    x = torch.randn(10, 1, 4, 4, generator=gen, dtype=DT)
    y = torch.randint(0, 3, (10,), generator=gen)
    return Case("conv", model, ce, [(x[:6], y[:6]), (x[6:], y[6:])])


def test_plane_of_a_linear_model_is_the_exact_quadratic() -> None:
    case = linear_case()
    d1, d2 = random_directions(case.model, 2, normalization=None, ignore=None, seed=3)
    plane = loss_plane(case.model, case.loss_fn, case.batches, directions=(d1, d2), span=(-2, 1.5), steps=9)
    H, g = dense_hessian(case), gradient(case)
    v1, v2 = flatten(d1), flatten(d2)
    L0 = float(mean_loss(case.model, case.loss_fn, case.batches).detach())
    a = plane.alphas[:, None]
    b = plane.betas[None, :]
    exact = (
        L0
        + a * (g @ v1)
        + b * (g @ v2)
        + 0.5 * (a**2 * (v1 @ H @ v1) + 2 * a * b * (v1 @ H @ v2) + b**2 * (v2 @ H @ v2))
    )
    assert plane.losses.shape == (9, 9)
    torch.testing.assert_close(plane.losses, exact.detach(), atol=1e-10, rtol=0)
    assert plane.center_loss == pytest.approx(L0, abs=1e-12)
    assert float(plane.losses.std()) > 0.1  # the quadratic part is visible, not a flat check

    line = loss_line(case.model, case.loss_fn, case.batches, direction=d1, span=(-1, 2), steps=7)
    assert line.slope == pytest.approx(float(g @ v1), abs=1e-10)
    assert line.curvature == pytest.approx(float(v1 @ H @ v1), abs=1e-10)
    quad = line.quadratic()
    assert quad is not None
    torch.testing.assert_close(line.losses, quad, atol=1e-10, rtol=0)


@pytest.mark.parametrize("build", [linear_case, conv_case], ids=["linear", "conv"])
def test_vectorized_grid_equals_point_by_point_loop(build: Any) -> None:
    case = build()
    d1, d2 = random_directions(case.model, 2, seed=1)
    kwargs = {"directions": (d1, d2), "steps": 5}
    fast = loss_plane(case.model, case.loss_fn, case.batches, chunk_size=7, **kwargs)
    slow = loss_plane(case.model, case.loss_fn, case.batches, vectorize=False, **kwargs)
    torch.testing.assert_close(fast.losses, slow.losses, atol=1e-12, rtol=0)
    # Each point by hand: weights moved in a deep copy, the loss of the copy.
    ref = build()
    weights = named_trainable(ref.model)
    base = {n: p.detach().clone() for n, p in weights.items()}
    ref.model.eval()
    for i, a in enumerate(fast.alphas.tolist()):
        for j, b in enumerate(fast.betas.tolist()):
            with torch.no_grad():
                for n, p in weights.items():
                    p.copy_(base[n] + a * d1[n] + b * d2[n])
            want = float(mean_loss(ref.model, ref.loss_fn, ref.batches).detach())
            assert fast.losses[i, j] == pytest.approx(want, abs=1e-12)


def test_cached_first_layer_products_change_nothing_but_time() -> None:
    case = conv_case()
    d = random_directions(case.model, 2, seed=4)
    weights = {n: p.detach() for n, p in named_trainable(case.model).items()}
    coeffs = torch.cartesian_prod(torch.linspace(-1, 1, 4, dtype=DT), torch.linspace(-1, 1, 3, dtype=DT))
    ev = GridEvaluator(case.model, case.loss_fn, case.batches, chunk_size=5)
    with_cache = ev.losses(weights, d, coeffs)
    assert ev.vectorized_last
    ev.shortcut = False
    torch.testing.assert_close(ev.losses(weights, d, coeffs), with_cache, atol=1e-12, rtol=0)


def test_loss_vmap_cannot_run_falls_back_to_the_loop_with_one_warning() -> None:
    case = linear_case()

    def item_loss(model: nn.Module, batch: Any) -> Tensor:
        loss = mse(model, batch)
        if loss.item() > 1e9:  # data-dependent Python control flow: vmap cannot run it
            return loss * 0
        return loss

    d = random_directions(case.model, 1, normalization=None, ignore=None)[0]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        line = loss_line(case.model, item_loss, case.batches, direction=d, steps=5, quadratic=False)
        loss_line(case.model, item_loss, case.batches, direction=d, steps=5, quadratic=False)
    messages = [str(w.message) for w in caught if "point by point" in str(w.message)]
    assert len(messages) <= 1  # said once per process (0 if an earlier test already said it)
    ref = loss_line(case.model, mse, case.batches, direction=d, steps=5, quadratic=False)
    torch.testing.assert_close(line.losses, ref.losses, atol=1e-12, rtol=0)


def test_filter_normalization_is_exact() -> None:
    case = conv_case()
    weights = named_trainable(case.model)
    (d,) = random_directions(case.model, 1, normalization="filter", seed=7)
    for name in ("conv.weight", "fc.weight"):
        w = weights[name].detach()
        want = w.reshape(w.shape[0], -1).norm(dim=1)
        got = d[name].reshape(w.shape[0], -1).norm(dim=1)
        torch.testing.assert_close(got, want, atol=0, rtol=1e-13)
    for name in ("conv.bias", "bn.weight", "bn.bias", "fc.bias"):
        assert torch.count_nonzero(d[name]) == 0
    (layer,) = random_directions(case.model, 1, normalization="layer", seed=7, ignore=None)
    for name, w in weights.items():
        assert float(layer[name].norm()) == pytest.approx(float(w.detach().norm()), rel=1e-13)
    (whole,) = random_directions(case.model, 1, normalization="model", seed=7)
    kept = ("conv.weight", "fc.weight")
    assert math.sqrt(sum(float(whole[n].norm()) ** 2 for n in kept)) == pytest.approx(
        math.sqrt(sum(float(weights[n].norm()) ** 2 for n in kept)), rel=1e-13
    )
    # Same seed, same directions; another seed, other directions.
    again = random_directions(case.model, 1, seed=7)[0]
    other = random_directions(case.model, 1, seed=8)[0]
    assert torch.equal(again["fc.weight"], d["fc.weight"])
    assert not torch.equal(other["fc.weight"], d["fc.weight"])


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
    res = linear_barrier(a, b, mse, [(x, y)], steps=11)
    assert res.loss_a < 1e-20 and res.loss_b < 1e-20
    assert res.barrier <= 1e-12
    # Not minimizers, still convex: the segment lies below its chord inside (0, 1).
    with torch.no_grad():
        b.weight.add_(torch.randn(1, 5, generator=gen, dtype=DT))
    res = linear_barrier(a, b, mse, [(x, y)], steps=11)
    assert res.barrier <= 1e-12
    assert float(res.excess()[1:-1].max()) < -1e-6


class DoubleWell(nn.Module):
    def __init__(self, w: tuple[float, float]) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor(w, dtype=DT))

    def forward(self, x: Tensor) -> Tensor:
        return (self.w[0] ** 2 - 1) ** 2 + (self.w[1] - 0.3) ** 2 + 0 * x.sum()


def test_barrier_of_a_double_well_matches_its_closed_form() -> None:
    # L(t) - chord = v^2 - delta^2 v with v = 1 - (2t - 1)^2: the maximum 1 - delta^2 is at t = 1/2.
    delta = 0.4
    a, b = DoubleWell((-1.0, 0.3 - delta)), DoubleWell((1.0, 0.3 + delta))
    res = linear_barrier(a, b, lambda m, x: m(x), [torch.zeros(2, 1, dtype=DT)], steps=21)
    assert res.barrier == pytest.approx(1 - delta**2, abs=1e-12)
    assert res.t_max == pytest.approx(0.5)
    v = 1 - (2 * res.ts - 1) ** 2
    torch.testing.assert_close(res.excess(), v**2 - delta**2 * v, atol=1e-12, rtol=0)


def test_hessian_directions_are_the_dense_eigenvectors() -> None:
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    x = torch.randn(12, 4, generator=gen, dtype=DT)
    case = Case("mlp", MLP().to(DT), ce, [(x, torch.randint(0, 3, (12,), generator=gen))])
    dirs, values, converged = hessian_directions(case.model, case.loss_fn, case.batches, k=2, tol=1e-8)
    H = dense_hessian(case)
    evals = torch.linalg.eigvalsh(H)
    assert converged
    torch.testing.assert_close(values, evals.flip(0)[:2], rtol=1e-6, atol=1e-9)
    for d, lam in zip(dirs, values.tolist(), strict=True):
        v = flatten(d)
        assert float(v.norm()) == pytest.approx(1.0, abs=1e-10)
        torch.testing.assert_close(H @ v, lam * v, atol=1e-6 * abs(lam) + 1e-9, rtol=0)
    line = loss_line(case.model, case.loss_fn, case.batches, direction=dirs[0], span=(-0.1, 0.1), steps=5)
    assert line.curvature == pytest.approx(values[0].item(), rel=1e-6)


def test_trajectory_plane_recovers_a_planar_path() -> None:
    case = linear_case()
    theta = torch.cat([p.detach().reshape(-1) for p in case.model.parameters()])
    gen = torch.Generator().manual_seed(1)
    u, v = torch.linalg.qr(torch.randn(theta.numel(), 2, generator=gen, dtype=DT)).Q.T
    coords = torch.tensor([[2.0, 1.0], [1.0, -0.5], [0.5, 0.4], [0.0, 0.0]], dtype=DT)
    names = [n for n, _ in case.model.named_parameters()]
    iterates = []
    for a, b in coords.tolist():
        flat = theta + a * u + b * v
        state, offset = {}, 0
        for n, p in zip(names, case.model.parameters(), strict=True):
            state[n] = flat[offset : offset + p.numel()].reshape(p.shape).clone()
            offset += p.numel()
        iterates.append(state)
    plane = trajectory_plane(iterates, case.model, case.loss_fn, case.batches, steps=7)
    assert sum(plane.meta["explained_variance"]) == pytest.approx(1.0, abs=1e-12)
    assert plane.path is not None and plane.path_losses is not None
    # Distances between iterates are kept by the projection (the path lies in the plane).
    torch.testing.assert_close(
        torch.cdist(plane.path, plane.path), torch.cdist(coords, coords), atol=1e-10, rtol=0
    )
    for state, loss in zip(iterates, plane.path_losses.tolist(), strict=True):
        ref = nn.Linear(3, 2).to(DT)
        ref.load_state_dict(state)
        assert loss == pytest.approx(float(mean_loss(ref, mse, case.batches)), abs=1e-12)
    assert plane.alphas[0] < plane.path[:, 0].min() and plane.alphas[-1] > plane.path[:, 0].max()


def _snapshot(model: nn.Module) -> dict[str, Any]:
    return {
        "state": {k: v.clone() for k, v in model.state_dict().items()},
        "grads": [None if p.grad is None else p.grad.clone() for p in model.parameters()],
        "grad_ids": [id(p.grad) for p in model.parameters()],
        "modes": [m.training for m in model.modules()],
        "flags": [p.requires_grad for p in model.parameters()],
        "rng": torch.get_rng_state(),
    }


def _assert_same(model: nn.Module, snap: dict[str, Any]) -> None:
    now = _snapshot(model)
    for k, v in snap["state"].items():
        assert torch.equal(now["state"][k], v), k
    for a, b in zip(now["grads"], snap["grads"], strict=True):
        assert (a is None and b is None) or torch.equal(a, b)
    assert now["grad_ids"] == snap["grad_ids"]
    assert now["modes"] == snap["modes"] and now["flags"] == snap["flags"]
    assert torch.equal(now["rng"], snap["rng"])


def test_model_is_bit_identical_after_every_call(tmp_path: Any) -> None:
    case, other = conv_case(0), conv_case(1)
    model = case.model
    model.train()
    model.fc.eval()  # a mixed mode must survive too
    model.conv.weight.requires_grad_(True)
    model.fc.bias.requires_grad_(False)
    mean_loss(model, ce, case.batches).backward()  # .grad buffers present
    snap = _snapshot(model)
    calls = [
        lambda: random_directions(model, 2),
        lambda: hessian_directions(model, ce, case.batches, k=1),
        lambda: loss_line(model, ce, case.batches, steps=3),
        lambda: loss_line(model, ce, case.batches, towards=other.model, steps=3),
        lambda: loss_plane(model, ce, case.batches, steps=3),
        lambda: loss_plane(model, ce, case.batches, steps=3, train_mode=True),
        lambda: linear_barrier(model, other.model, ce, case.batches, steps=3),
        lambda: linear_barrier(model, other.model, ce, case.batches, steps=3, buffers="reestimate"),
        lambda: trajectory_plane(
            [other.model.state_dict(), model.state_dict(), other.model.state_dict()],
            model,
            ce,
            case.batches,
            steps=3,
        ),
    ]
    for call in calls:
        call()
        _assert_same(model, snap)


def test_results_save_load_and_plot(tmp_path: Any) -> None:
    case = linear_case()
    plane = loss_plane(case.model, case.loss_fn, case.batches, steps=3)
    line = loss_line(case.model, case.loss_fn, case.batches, steps=3)
    barrier = linear_barrier(case.model, linear_case(1).model, case.loss_fn, case.batches, steps=3)
    for result, cls in ((plane, PlaneResult), (line, LineResult), (barrier, BarrierResult)):
        for suffix in (".npz", ".pt"):
            path = result.save(tmp_path / f"r{suffix}")
            back = cls.load(path)
            for key, value in result.to_dict().items():
                got = getattr(back, key, None) if key != "kind" else back.kind
                if isinstance(value, Tensor):
                    assert torch.equal(got, value), key
                else:
                    assert got == value, key
        fig = result.plot()
        assert fig.axes
    with pytest.raises(ValueError, match="holds a 'plane' result"):
        LineResult.load(plane.save(tmp_path / "p.npz"))
    with pytest.raises(ValueError, match=r"\.npz or \.pt"):
        plane.save(tmp_path / "p.json")


def test_bad_arguments_are_named() -> None:
    case = linear_case()
    m, f, b = case.model, case.loss_fn, case.batches
    with pytest.raises(ValueError, match="`steps`"):
        loss_plane(m, f, b, steps=1)
    with pytest.raises(ValueError, match="`span`"):
        loss_plane(m, f, b, span=(1, -1))
    with pytest.raises(ValueError, match="`normalization`"):
        random_directions(m, normalization="unit")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="`direction`"):
        loss_line(m, f, b, direction={"weight": torch.zeros(2, 3, dtype=DT)})
    with pytest.raises(ValueError, match="one architecture"):
        linear_barrier(m, nn.Linear(3, 3).to(DT), f, b)
    with pytest.raises(ValueError, match="`buffers`"):
        linear_barrier(m, linear_case(1).model, f, b, buffers="keep")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="at least 3 iterates"):
        trajectory_plane([m.state_dict()], m, f, b)
    with pytest.raises(ValueError, match="`batches` is empty"):
        loss_plane(m, f, [])
