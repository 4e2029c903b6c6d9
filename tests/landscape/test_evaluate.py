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


class _Tricky(nn.Module):
    """What the point-by-point path must tell apart: a first layer on a view of the data applied twice, a
    weight applied twice to inputs that move, Linears on softmax rows and on one-hot rows (whose sums are the
    same at every point), weights tied between an embedding and the output."""

    def __init__(self) -> None:
        super().__init__()
        self.first = nn.Linear(4, 6)
        self.shared = nn.Linear(6, 6)
        self.head = nn.Linear(6, 5)
        self.route = nn.Linear(6, 5)
        self.emb = nn.Embedding(5, 6)
        self.out = nn.Linear(6, 5, bias=False)
        self.out.weight = self.emb.weight

    def forward(self, x: Tensor) -> Tensor:
        flat = x.flatten(1)
        h = torch.tanh(self.first(flat) + self.first(2 * flat))
        h = self.shared(torch.tanh(self.shared(h)))
        probs = torch.softmax(h, dim=1)
        tokens = probs.argmax(dim=1).clamp(max=4)
        hard = nn.functional.one_hot(h.argmax(dim=1), 6).to(h.dtype)  # moves, its sum never does
        return self.head(probs) + self.route(hard) + self.out(torch.tanh(self.emb(tokens) + h))


def _tricky_case() -> tuple[nn.Module, Any, list[Any]]:
    gen = torch.Generator().manual_seed(5)
    torch.manual_seed(5)
    model = _Tricky().to(DT)

    def loss_fn(m: nn.Module, batch: Any) -> Tensor:  # reads the first layer's weight outside the layer too
        return ce(m, batch) + 1e-2 * (m.first.weight**2).sum()

    x = torch.randn(9, 2, 2, generator=gen, dtype=DT)
    y = torch.randint(0, 5, (9,), generator=gen)
    return model, loss_fn, [(x[:5], y[:5]), (x[5:], y[5:])]


def _by_hand(
    model: nn.Module, loss_fn: Any, batches: list[Any], basis: list[dict[str, Tensor]], coeffs: Tensor
) -> Tensor:
    """The plain evaluation: a copy of the model, weights set to theta + sum_j c_j d_j, its own forward."""
    copy = __import__("copy").deepcopy(model).eval()
    params = named_trainable(copy)
    base = {n: p.detach().clone() for n, p in params.items()}
    out = []
    for coef in coeffs.tolist():
        with torch.no_grad():
            for n, p in params.items():
                p.copy_(base[n] + sum(c * d[n] for c, d in zip(coef, basis, strict=True)))
            out.append(float(mean_loss(copy, loss_fn, batches)))
    return torch.tensor(out, dtype=DT)


@pytest.mark.parametrize("rank", [1, 2, 3])
def test_in_place_points_equal_the_models_own_forward(rank: int) -> None:
    model, loss_fn, batches = _tricky_case()
    before = snapshot(model)
    basis = random_directions(model, rank, seed=6, normalization=None, ignore=None)
    weights = {n: p.detach() for n, p in named_trainable(model).items()}
    assert len(weights) == 9  # the tied weight once
    gen = torch.Generator().manual_seed(7)
    grid = torch.cartesian_prod(*[torch.linspace(-1, 1, 3, dtype=DT)] * rank).reshape(-1, rank)
    coeffs = torch.cat([grid, torch.randn(4, rank, generator=gen, dtype=DT)])  # rows, then scattered points
    ev = GridEvaluator(model, loss_fn, batches)
    got = ev.losses(weights, basis, coeffs)
    assert ev.path_last == "in_place" and not ev.vectorized_last
    torch.testing.assert_close(got, _by_hand(model, loss_fn, batches, basis, coeffs), rtol=0, atol=1e-12)
    loop = GridEvaluator(model, loss_fn, batches, vectorize=False)
    torch.testing.assert_close(got, loop.losses(weights, basis, coeffs), rtol=0, atol=1e-12)
    assert_unchanged(model, before)


@pytest.mark.parametrize("train_mode", [False, True], ids=["eval", "train"])
def test_in_place_plane_takes_the_first_layer_shortcut_and_equals_the_loop(train_mode: bool) -> None:
    from lightning_landscape.landscape import _affine

    case = conv_case()
    before = snapshot(case.model)
    calls: list[str] = []
    original = _affine.PointProducts._products

    def counting(self: Any, func: Any, name: str, *args: Any) -> Any:
        calls.append(name)
        return original(self, func, name, *args)

    d = random_directions(case.model, 2, seed=8)
    kwargs = {"directions": d, "steps": 4, "train_mode": train_mode}
    _affine.PointProducts._products = counting  # type: ignore[method-assign]
    try:
        fast = loss_plane(case.model, case.loss_fn, case.batches, **kwargs)
    finally:
        _affine.PointProducts._products = original  # type: ignore[method-assign]
    assert calls == ["conv.weight", "conv.weight"]  # once per batch, then combined at every point
    slow = loss_plane(case.model, case.loss_fn, case.batches, vectorize=False, **kwargs)
    torch.testing.assert_close(fast.losses, slow.losses, rtol=0, atol=1e-12)
    plain = GridEvaluator(case.model, case.loss_fn, case.batches, cache_products=False)
    weights = {n: p.detach() for n, p in named_trainable(case.model).items()}
    coeffs = torch.cartesian_prod(fast.alphas, fast.betas)
    plain.train_mode = train_mode
    torch.testing.assert_close(plain.losses(weights, d, coeffs), fast.losses.reshape(-1), rtol=0, atol=1e-12)
    assert_unchanged(case.model, before)


def test_in_place_float32_mlp_within_float32_rounding_of_the_loop() -> None:
    torch.manual_seed(9)
    model = nn.Sequential(nn.Linear(20, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))
    gen = torch.Generator().manual_seed(9)
    batch = (torch.randn(32, 20, generator=gen), torch.randint(0, 4, (32,), generator=gen))
    d = random_directions(model, 2, seed=9)
    fast = loss_plane(model, ce, [batch], directions=d, steps=7)
    slow = loss_plane(model, ce, [batch], directions=d, steps=7, vectorize=False)
    # float32 weights summed in another order: a few ulps of the loss
    torch.testing.assert_close(fast.losses, slow.losses, rtol=1e-5, atol=0)


def test_in_place_gpt2_equals_the_loop() -> None:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        n_layer=1, n_embd=16, n_head=2, vocab_size=32, n_positions=8, bos_token_id=0, eos_token_id=0
    )
    model = transformers.GPT2LMHeadModel(config).to(DT)
    tokens = torch.randint(0, 32, (2, 8), generator=torch.Generator().manual_seed(0))

    def lm(m: nn.Module, b: Tensor) -> Tensor:
        return m(input_ids=b, labels=b).loss

    before = snapshot(model)
    d = random_directions(model, 2, seed=1)
    fast = loss_plane(model, lm, [tokens], directions=d, steps=3)
    slow = loss_plane(model, lm, [tokens], directions=d, steps=3, vectorize=False)
    torch.testing.assert_close(fast.losses, slow.losses, rtol=0, atol=1e-12)
    copy = __import__("copy").deepcopy(model).eval()
    params = named_trainable(copy)
    assert "lm_head.weight" not in params  # tied to the token embedding: moved once, seen twice
    base = {n: p.detach().clone() for n, p in params.items()}
    with torch.no_grad():
        for n, p in params.items():
            p.copy_(base[n] + float(fast.alphas[0]) * d[0][n] + float(fast.betas[2]) * d[1][n])
        want = float(lm(copy, tokens))
    assert float(fast.losses[0, 2]) == pytest.approx(want, abs=1e-12)
    assert_unchanged(model, before)


def test_in_place_shortcut_failure_falls_back_with_one_warning_and_errors_pass_through() -> None:
    from lightning_landscape.landscape import _affine

    case = linear_case()
    d = random_directions(case.model, 1, normalization=None, ignore=None)[0]
    ref = loss_line(case.model, case.loss_fn, case.batches, direction=d, steps=5, quadratic=False)
    original = _affine.PointProducts._products

    def broken(*args: Any) -> Any:
        raise RuntimeError("no products today")

    _affine.PointProducts._products = broken  # type: ignore[method-assign]
    try:
        with pytest.warns(RuntimeWarning, match="no products today"):
            line = loss_line(case.model, case.loss_fn, case.batches, direction=d, steps=5, quadratic=False)
    finally:
        _affine.PointProducts._products = original  # type: ignore[method-assign]
    torch.testing.assert_close(line.losses, ref.losses, atol=1e-12, rtol=0)

    def not_scalar(model: nn.Module, batch: Any) -> Tensor:
        return model(batch[0])

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the loss's own error, no warning about products
        with pytest.raises(ValueError, match="scalar"):
            loss_line(case.model, not_scalar, case.batches, direction=d, steps=5, quadratic=False)


def test_in_place_on_inference_tensors_keeps_the_shortcut_by_checksum() -> None:
    torch.manual_seed(10)
    model = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3)).to(DT)
    gen = torch.Generator().manual_seed(10)
    with torch.inference_mode():  # batches drawn under inference mode keep no version counter
        batch = (torch.randn(8, 6, generator=gen, dtype=DT), torch.randint(0, 3, (8,), generator=gen))
    d = random_directions(model, 2, seed=10)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fast = loss_plane(model, ce, [batch], directions=d, steps=4)
    slow = loss_plane(model, ce, [batch], directions=d, steps=4, vectorize=False)
    torch.testing.assert_close(fast.losses, slow.losses, rtol=0, atol=1e-12)
