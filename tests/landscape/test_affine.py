"""The cached first-layer products: under vmap, a layer on the data combines per-batch products per point."""

from __future__ import annotations

from typing import Any

import torch
from torch.nn import functional as F

from lightning_landscape.landscape._affine import AffineLayers

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
