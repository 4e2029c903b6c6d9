"""The vectorized grid against the point-by-point loop; its cached products and fallback; no side effects."""

from __future__ import annotations

import warnings
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from lightning_landscape.landscape import (
    hessian_directions,
    linear_barrier,
    loss_line,
    loss_plane,
    random_directions,
    trajectory_plane,
)
from lightning_landscape.landscape._evaluate import GridEvaluator
from lightning_landscape.landscape.directions import named_trainable
from tests._shared import assert_unchanged, mse_loss, snapshot
from tests.landscape.cases import DT, ce, conv_case, linear_case, mean_loss


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
    assert ev.vectorized_last and ev.cache_products
    plain = GridEvaluator(case.model, case.loss_fn, case.batches, chunk_size=5, cache_products=False)
    torch.testing.assert_close(plain.losses(weights, d, coeffs), with_cache, atol=1e-12, rtol=0)
    assert plain.vectorized_last


def test_loss_vmap_cannot_run_falls_back_to_the_loop_with_one_warning() -> None:
    case = linear_case()

    def item_loss(model: nn.Module, batch: Any) -> Tensor:
        loss = mse_loss(model, batch)
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
    ref = loss_line(case.model, mse_loss, case.batches, direction=d, steps=5, quadratic=False)
    torch.testing.assert_close(line.losses, ref.losses, atol=1e-12, rtol=0)


def test_model_is_bit_identical_after_every_call(tmp_path: Any) -> None:
    case, other = conv_case(0), conv_case(1)
    model = case.model
    model.train()
    model.fc.eval()  # a mixed mode must survive too
    model.conv.weight.requires_grad_(True)
    model.fc.bias.requires_grad_(False)
    mean_loss(model, ce, case.batches).backward()  # .grad buffers present
    snap = snapshot(model)
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
        assert_unchanged(model, snap)


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_two_gloo_ranks_match_the_single_process_landscape(tmp_path: Any) -> None:
    import socket

    import torch.multiprocessing as mp

    from tests.landscape import _dist_landscape

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    mp.spawn(_dist_landscape.run, args=(port, str(tmp_path)), nprocs=2, join=True)
    _, _, batches = _dist_landscape.build()
    single = _dist_landscape.compute(batches)
    alone = _dist_landscape.compute(batches[:1])
    assert (alone["plane"] - single["plane"]).abs().max() > 1e-3  # the reduction is doing the work
    for rank in (0, 1):
        got = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        assert got["no_pl"], "the landscape core imported Lightning"
        for key in ("plane", "line", "barrier"):
            torch.testing.assert_close(got[key], single[key], atol=1e-12, rtol=0)
        assert got["slope"] == pytest.approx(single["slope"], abs=1e-12)
        assert got["curvature"] == pytest.approx(single["curvature"], abs=1e-12)
