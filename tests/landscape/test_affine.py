"""The cached first-layer products (under vmap, point by point) and the weights written in place per point."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch.nn import functional as F

from lightning_landscape.landscape._affine import AffineLayers, PointProducts, PointWeights

DT = torch.float64


def _grid(
    func: Any, x: torch.Tensor, W0: torch.Tensor, D: torch.Tensor, b: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, AffineLayers]:
    gen = torch.Generator().manual_seed(1)
    C = torch.randn(6, D.shape[0], generator=gen, dtype=DT)
    mode = AffineLayers()

    def at(c: torch.Tensor) -> torch.Tensor:
        mode.new_forward()
        return func(x, mode.placeholder("w", W0, D, c), b)

    with mode:
        got = torch.func.vmap(at)(C)
    want = torch.stack([func(x, W0 + torch.tensordot(c, D, dims=1), b) for c in C])
    return got, want, mode


def test_linear_on_the_data_equals_the_moved_weight() -> None:
    gen = torch.Generator().manual_seed(0)
    x, W0, D, b = (torch.randn(*s, generator=gen, dtype=DT) for s in [(5, 4), (3, 4), (2, 3, 4), (3,)])
    got, want, mode = _grid(F.linear, x, W0, D, b)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    assert len(mode.cache) == 1  # one cached product set served all six points


def test_conv_on_the_data_equals_the_moved_weight() -> None:
    gen = torch.Generator().manual_seed(0)
    x, W0, D, b = (
        torch.randn(*s, generator=gen, dtype=DT) for s in [(2, 1, 5, 5), (3, 1, 3, 3), (2, 3, 1, 3, 3), (3,)]
    )
    got, want, mode = _grid(F.conv2d, x, W0, D, b)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    assert len(mode.cache) == 1


def _moved(base: torch.Tensor, dirs: list[torch.Tensor], coef: list[float]) -> torch.Tensor:
    return base + sum(c * d for c, d in zip(coef, dirs, strict=True))


def test_point_weights_are_the_moved_weights_row_after_row() -> None:
    gen = torch.Generator().manual_seed(2)
    origin = {n: torch.randn(3, 4, generator=gen, dtype=DT) for n in ("both", "first", "last", "still")}
    dirs = {n: torch.randn(3, 3, 4, generator=gen, dtype=DT) for n in origin}
    dirs["first"][2] = 0  # the last direction does not move it
    dirs["last"][:2] = 0  # only the last moves it
    dirs["still"].zero_()
    weights = PointWeights(origin, dirs)
    assert weights.tensors["still"] is origin["still"] and "still" not in weights.names.values()
    points = [[0.5, -1.0, 0.25], [0.5, -1.0, 2.0], [0.0, 0.0, 0.0], [1.5, 0.5, -0.75], [1.5, 0.5, 3.0]]
    for coef in points:
        weights.move_to(coef)
        for name, base in origin.items():
            want = _moved(base, list(dirs[name]), coef)
            torch.testing.assert_close(weights.tensors[name], want, rtol=0, atol=1e-14)
    weights.move_to([0.0, 0.0, 0.0])  # the centre is the origin exactly
    assert all(torch.equal(weights.tensors[n], origin[n]) for n in origin)


def test_a_lazy_weight_is_written_only_when_asked() -> None:
    gen = torch.Generator().manual_seed(3)
    origin = {"w": torch.randn(2, 2, generator=gen, dtype=DT)}
    weights = PointWeights(origin, {"w": torch.randn(1, 2, 2, generator=gen, dtype=DT)})
    weights.move_to([1.0])
    weights.set_lazy({"w"})
    weights.move_to([2.0])
    torch.testing.assert_close(weights.tensors["w"], origin["w"] + weights.dirs["w"][0][1])  # still at 1.0
    weights.fill("w")
    torch.testing.assert_close(weights.tensors["w"], origin["w"] + 2 * weights.dirs["w"][0][1])


@pytest.mark.parametrize("func", [F.linear, F.conv2d], ids=["linear", "conv2d"])
@pytest.mark.parametrize("bias_moves", [True, False], ids=["moving-bias", "fixed-bias"])
def test_point_products_equal_the_call_on_the_written_weight(func: Any, bias_moves: bool) -> None:
    gen = torch.Generator().manual_seed(4)
    if func is F.linear:
        x, w0 = torch.randn(5, 4, generator=gen, dtype=DT), torch.randn(3, 4, generator=gen, dtype=DT)
    else:
        x, w0 = (
            torch.randn(2, 1, 5, 5, generator=gen, dtype=DT),
            torch.randn(3, 1, 3, 3, generator=gen, dtype=DT),
        )
    origin = {"w": w0, "b": torch.randn(3, generator=gen, dtype=DT)}
    stacked = {"w": torch.randn(2, *w0.shape, generator=gen, dtype=DT)}
    if bias_moves:
        stacked["b"] = torch.randn(2, 3, generator=gen, dtype=DT)
    weights = PointWeights(origin, stacked)
    products = PointProducts(weights)
    seen = products.watch(weights.names.values())
    bias = seen.get("b", weights.tensors["b"])
    for coef in [[0.5, 1.0], [0.5, -2.0], [1.0, 0.25], [-1.0, 0.0]]:
        weights.move_to(coef)
        products.new_forward(0)
        got = func(x, seen["w"], bias)
        assert type(got) is torch.Tensor
        want = func(
            x,
            _moved(w0, list(stacked["w"]), coef),
            _moved(origin["b"], list(stacked["b"]), coef) if bias_moves else origin["b"],
        )
        torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    assert [s[0] for s in products.state.values()] == ["cached"]
    x.mul_(2)  # the same tensor, modified in place: the shortcut is dropped, the values stay right
    weights.move_to([0.3, 0.3])
    products.new_forward(0)
    want = func(x, _moved(w0, list(stacked["w"]), [0.3, 0.3]), weights.tensors["b"])
    torch.testing.assert_close(func(x, seen["w"], bias), want, rtol=0, atol=1e-12)
    assert [s[0] for s in products.state.values()] == ["off"]
