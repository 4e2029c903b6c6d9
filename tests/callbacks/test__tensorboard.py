"""Where the callbacks' numbers go: the custom-scalars charts of each monitor and the spectral-density
histogram (the layout and scalars read back from real event files are tested with each monitor)."""

from __future__ import annotations

import re
from typing import Any

import pytest
import torch

from lightning_landscape.callbacks import _tensorboard, tags


def test_layout_charts_of_named_monitors_and_blocks_match_only_their_tags() -> None:
    unnamed = _tensorboard._charts(tags.HESSIAN_SECTION, None, ["val"], ["net.0"])
    named = _tensorboard._charts(tags.HESSIAN_SECTION, "val", ["val"], [])
    logged = [
        tags.hessian_eig_tag(1),
        tags.hessian_eig_tag(1, name="val"),
        tags.hessian_eig_tag(1, block="net.0"),
        tags.hessian_tag(tags.CONVERGED),
        tags.hessian_tag(tags.CONVERGED, name="val"),
        tags.hessian_tag(tags.CONVERGED, block="net.0"),
    ]

    def matched(charts: dict[str, list[Any]]) -> dict[str, list[str]]:
        return {c: [t for t in logged if any(re.match(r, t) for r in spec[1])] for c, spec in charts.items()}

    assert matched(unnamed)["eigenvalues"] == ["hessian/eig_1"]
    assert matched(unnamed)["eigenvalues net.0"] == ["hessian/net.0/eig_1"]
    assert matched(unnamed)["converged"] == ["hessian/converged", "hessian/net.0/converged"]
    assert matched(named)["eigenvalues"] == ["hessian/val/eig_1"]
    assert matched(named)["converged"] == ["hessian/val/converged"]
    grad = _tensorboard._charts(tags.GRAD_NORM_SECTION, None, ["max"], [])
    names = ["grad_norm/total", "grad_norm/optimizer_1/total", "grad_norm/net.0", "grad_norm/max/total"]
    per_layer = [t for t in names if re.match(grad["per layer"][1][0], t)]
    assert per_layer == ["grad_norm/net.0"]


class _Writer:
    """Records ``add_histogram_raw`` calls as a ``SummaryWriter`` would receive them."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def add_histogram_raw(self, tag: str, **kwargs: Any) -> None:
        self.calls.append({"tag": tag, **kwargs})


@pytest.mark.parametrize(
    ("density", "expected"),
    [
        ([1.0, 1.0, 1.0, 1.0, 1.0], [2.0, 2.0, 2.0, 2.0, 2.0]),  # uniform on a uniform grid: equal buckets
        ([0.0, 0.0, 3.0, 0.0, 0.0], [0.0, 0.0, 10.0, 0.0, 0.0]),  # all the mass in one cell
        ([0.0, 1.0, 3.0, 0.0, -1.0], [0.0, 2.5, 7.5, 0.0, 0.0]),  # negative density clamped to zero
    ],
)
def test_density_histogram_counts_hold_the_number_of_eigenvalues(
    monkeypatch: pytest.MonkeyPatch, density: list[float], expected: list[float]
) -> None:
    writer = _Writer()
    monkeypatch.setattr(_tensorboard, "tensorboard_writers", lambda trainer: [writer])
    grid = torch.linspace(-1.0, 1.0, 5)
    _tensorboard.add_density(None, "hessian/density", grid, torch.tensor(density), total=10.0, step=7)  # type: ignore[arg-type]
    (call,) = writer.calls
    assert call["tag"] == "hessian/density" and call["global_step"] == 7
    assert call["bucket_counts"] == pytest.approx(expected)
    assert call["num"] == pytest.approx(10.0)
    assert call["bucket_limits"] == pytest.approx(grid.tolist())
    assert call["sum"] == pytest.approx(sum(c * g for c, g in zip(expected, grid.tolist(), strict=True)))
