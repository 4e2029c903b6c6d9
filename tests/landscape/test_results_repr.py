"""Jupyter display of the landscape results: ``_repr_png_`` renders ``plot()`` to a real PNG and leaks no
figure."""

from __future__ import annotations

import io
from typing import Any

import matplotlib.image as mpimg
import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch

from lightning_landscape.landscape import BarrierResult, LineResult, PlaneResult

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# plot() draws on Figure(figsize=(5, 4)) at matplotlib's default 100 dpi.
EXPECTED_SHAPE = (400, 500)


def _line(quadratic: bool) -> LineResult:
    alphas = torch.linspace(-1.0, 1.0, 21, dtype=torch.float64)
    losses = 0.5 + 0.1 * alphas + 0.75 * alphas**2
    if quadratic:
        return LineResult(alphas, losses, 0.5, slope=0.1, curvature=1.5, meta={"direction": "given"})
    return LineResult(alphas, losses, 0.5)


def _plane(with_path: bool) -> PlaneResult:
    axis = torch.linspace(-1.0, 1.0, 9, dtype=torch.float64)
    losses = 1.0 + axis[:, None] ** 2 + 2.0 * axis[None, :] ** 2
    if with_path:
        path = torch.tensor([[-0.8, 0.6], [-0.3, 0.2], [0.0, 0.0]], dtype=torch.float64)
        return PlaneResult(axis, axis, losses, 1.0, path=path, path_losses=torch.tensor([2.3, 1.2, 1.0]))
    return PlaneResult(axis, axis, losses, 1.0)


def _barrier() -> BarrierResult:
    ts = torch.linspace(0.0, 1.0, 11, dtype=torch.float64)
    losses = 0.2 + 0.1 * ts + torch.sin(torch.pi * ts)
    excess = losses - (0.2 + 0.1 * ts)
    index = int(excess.argmax())
    return BarrierResult(ts, losses, 0.2, 0.3, float(excess[index]), float(ts[index]))


CASES = {
    "line": lambda: _line(quadratic=False),
    "line-quadratic": lambda: _line(quadratic=True),
    "plane": lambda: _plane(with_path=False),
    "plane-path": lambda: _plane(with_path=True),
    "barrier": _barrier,
}


@pytest.mark.parametrize("name", list(CASES))
def test_repr_png_is_the_plot_as_a_png(name: str) -> None:
    result: Any = CASES[name]()
    before = result.to_dict()
    figures = plt.get_fignums()

    data = result._repr_png_()

    assert isinstance(data, bytes)
    assert data.startswith(PNG_SIGNATURE)
    image = mpimg.imread(io.BytesIO(data), format="png")
    assert image.shape[:2] == EXPECTED_SHAPE
    # Something was drawn: a blank canvas has a single colour.
    assert len(np.unique(image.reshape(-1, image.shape[-1]), axis=0)) > 10
    assert plt.get_fignums() == figures
    after = result.to_dict()
    for key, value in before.items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(value, after[key]), key
        else:
            assert value == after[key], key


def test_repr_png_matches_a_savefig_of_plot() -> None:
    """The bytes are the plot itself, not another drawing: same pixels as ``plot().savefig``."""
    result = _line(quadratic=True)
    buffer = io.BytesIO()
    result.plot().savefig(buffer, format="png")
    expected = mpimg.imread(io.BytesIO(buffer.getvalue()), format="png")
    shown = mpimg.imread(io.BytesIO(result._repr_png_()), format="png")
    np.testing.assert_array_equal(shown, expected)


def test_results_display_as_images_in_ipython() -> None:
    """IPython's display formatter (what a Jupyter kernel runs) picks the PNG up."""
    formatters = pytest.importorskip("IPython.core.formatters")
    png = formatters.PNGFormatter()
    for name in ("line-quadratic", "plane-path", "barrier"):
        out = png(CASES[name]())
        assert isinstance(out, bytes) and out.startswith(PNG_SIGNATURE), name
