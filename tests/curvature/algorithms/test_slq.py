"""Stochastic Lanczos quadrature against the dense spectrum: weights, nodes, moments, the smoothed density."""

from __future__ import annotations

import math

import pytest
import torch

from lightning_landscape.curvature import DenseOperator, spectral_density
from lightning_landscape.curvature.algorithms.slq import slq
from tests.curvature.cases import case, truth

pytestmark = pytest.mark.filterwarnings("ignore:enable_nested_tensor is True")


@pytest.mark.parametrize("name", ["cnn_bn", "transformer"])
def test_slq_weights_density_and_moments(name: str) -> None:
    c, ev = case(name), truth(name)
    n = ev.numel()
    runs = 12
    sd = spectral_density(c.model, c.loss_fn, c.batches, num_iter=40, num_runs=runs, seed=0)
    assert sd.nodes.shape == sd.weights.shape == (runs, 40) and sd.num_params == n
    assert sd.num_products <= runs * 40
    torch.testing.assert_close(
        sd.weights.sum(dim=1), torch.ones(runs, dtype=torch.float64), rtol=0, atol=1e-12
    )
    assert torch.all(sd.weights >= 0)
    # Nodes are Ritz values: inside the spectrum.
    assert float(sd.nodes.min()) >= float(ev[0]) - 1e-9 and float(sd.nodes.max()) <= float(ev[-1]) + 1e-9
    # With 40 steps the extreme nodes have converged to the extreme eigenvalues.
    assert float(sd.nodes.max()) == pytest.approx(float(ev[-1]), rel=1e-6)

    grid, density = sd.on_grid(num_points=4000)
    assert float(torch.trapezoid(density, grid)) == pytest.approx(1.0, abs=1e-3)
    assert torch.all(density >= 0)

    # Moments: per run, sum_i w_i theta_i^p = v^T H^p v (p <= 2m-1), an unbiased estimate of tr(H^p)/n.
    # Each estimate is compared with the dense moment within 4 standard errors over the runs.
    for p in (1, 2):
        per_run = (sd.weights * sd.nodes**p).sum(dim=1)
        se = float(per_run.std()) / math.sqrt(runs)
        assert sd.moment(p) == pytest.approx(float(per_run.mean()), rel=1e-12)
        assert abs(sd.moment(p) - float((ev**p).mean())) <= 4 * se


def test_slq_exhausted_krylov_space_is_exact() -> None:
    # n = 4 < num_iter: each run's quadrature is exact, so the nodes are the eigenvalues and the
    # weighted moments equal v^T H^p v exactly; on average they match the spectrum.
    w = torch.nn.Parameter(torch.zeros(4, dtype=torch.float64))
    model = torch.nn.Module()
    model.w = w
    d = torch.tensor([3.0, 1.0, -2.0, 0.5], dtype=torch.float64)
    sd = spectral_density(model, lambda m, b: (b * m.w**2).sum() / 2, [d], num_iter=10, num_runs=3)
    assert sd.nodes.shape == (3, 4)
    for r in range(3):
        nz = sd.weights[r] > 1e-12
        assert torch.allclose(sd.nodes[r][nz].sort().values, d.sort().values, atol=1e-10)
        # For a Rademacher start vector every eigenvector of a diagonal matrix has weight 1/n.
        torch.testing.assert_close(sd.weights[r], torch.full((4,), 0.25, dtype=torch.float64))
    grid, dens = sd.on_grid(grid=torch.linspace(-10, 10, 20001), sigma=0.1)
    assert float(torch.trapezoid(dens, grid)) == pytest.approx(1.0, abs=1e-6)
    # Smoothed density peaks at the eigenvalues, each with mass 1/4.
    near = (grid - 3.0).abs() < 0.5
    assert float(torch.trapezoid(dens[near], grid[near])) == pytest.approx(0.25, abs=1e-4)


def test_slq_on_an_operator_counts_its_products() -> None:
    # Distinct eigenvalues and num_iter = n: every run spans the space, so its nodes are the eigenvalues.
    d = torch.tensor([4.0, 1.0, -2.0, 0.5, 3.0], dtype=torch.float64)
    op = DenseOperator(torch.diag(d))
    sd = slq(op, num_iter=5, num_runs=3, seed=2)
    assert sd.num_products == op.num_products == 15 and sd.num_params == 5
    for r in range(3):
        torch.testing.assert_close(sd.nodes[r], d.sort().values, rtol=0, atol=1e-10)
