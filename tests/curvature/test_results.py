"""The result types: frozen, and the spectral density's moments and smoothing against closed forms."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from lightning_landscape.curvature.results import EigenResult, SpectralDensity, TraceResult

DT = torch.float64


def density(nodes: list[list[float]], weights: list[list[float]]) -> SpectralDensity:
    return SpectralDensity(torch.tensor(nodes, dtype=DT), torch.tensor(weights, dtype=DT), 0, 3)


def test_results_are_frozen() -> None:
    results = [
        EigenResult(torch.ones(1, dtype=DT)),
        TraceResult(1.0, 0.0, 1, 1, torch.ones(1, dtype=DT)),
        density([[1.0]], [[1.0]]),
    ]
    for result in results:
        field = dataclasses.fields(result)[0].name
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(result, field, None)


def test_moments_average_the_runs() -> None:
    # Run 1: nodes (-1, 2) with weights (1/3, 2/3); run 2: the single node 4.
    sd = density([[-1.0, 2.0], [4.0, 4.0]], [[1 / 3, 2 / 3], [1.0, 0.0]])
    assert sd.moment(1) == pytest.approx(((-1 / 3 + 4 / 3) + 4) / 2, rel=1e-15)
    assert sd.moment(2) == pytest.approx(((1 / 3 + 8 / 3) + 16) / 2, rel=1e-15)


def test_on_grid_is_the_gaussian_mixture() -> None:
    sd = density([[0.0, 2.0]], [[0.25, 0.75]])
    grid = torch.tensor([0.0, 1.0, 2.0], dtype=DT)
    _, got = sd.on_grid(grid=grid, sigma=0.5)

    def gauss(t: float, mu: float) -> float:
        return math.exp(-0.5 * ((t - mu) / 0.5) ** 2) / (0.5 * math.sqrt(2 * math.pi))

    want = [0.25 * gauss(t, 0.0) + 0.75 * gauss(t, 2.0) for t in (0.0, 1.0, 2.0)]
    torch.testing.assert_close(got, torch.tensor(want, dtype=DT), rtol=1e-13, atol=0)
    # The default grid spans the nodes with 6 sigma margins; the default sigma is 1% of their range.
    default_grid, dens = sd.on_grid(num_points=5)
    assert float(default_grid[0]) == pytest.approx(-0.12) and float(default_grid[-1]) == pytest.approx(2.12)
    assert dens.shape == (5,)


def test_on_grid_argument_errors() -> None:
    sd = density([[1.0, 2.0]], [[0.5, 0.5]])
    with pytest.raises(ValueError, match=r"`sigma` must be a finite number > 0, got -1.0"):
        sd.on_grid(sigma=-1.0)
    with pytest.raises(ValueError, match=r"`num_points` must be an integer >= 2, got 1"):
        sd.on_grid(num_points=1)
