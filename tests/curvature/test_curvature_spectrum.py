"""Hutchinson trace and SLQ density against the dense spectrum."""

from __future__ import annotations

import math

import pytest
import torch
from cases import case, truth

from lightning_landscape.curvature import hessian_trace, spectral_density

pytestmark = pytest.mark.filterwarnings("ignore:enable_nested_tensor is True")


@pytest.mark.parametrize("name", ["relu_trained", "cnn_bn", "transformer"])
def test_trace_within_three_standard_errors(name: str) -> None:
    c, ev = case(name), truth(name)
    res = hessian_trace(c.model, c.loss_fn, c.batches, num_samples=60, seed=0)
    assert res.num_samples == 60 and res.num_products == 60 and res.samples.shape == (60,)
    assert res.std_error > 0
    assert abs(res.trace - float(ev.sum())) <= 3 * res.std_error
    # The standard error is that of the mean: the sample spread over sqrt(N).
    assert math.isclose(res.std_error, float(res.samples.std()) / math.sqrt(60), rel_tol=1e-12)


def test_trace_of_diagonal_hessian_is_exact() -> None:
    # z^T D z = tr D for every Rademacher z: zero variance, an analytic check of the estimator.
    w = torch.nn.Parameter(torch.tensor([1.0, -2.0, 3.0], dtype=torch.float64))
    model = torch.nn.Module()
    model.w = w
    res = hessian_trace(
        model, lambda m, b: (b * m.w**2).sum() / 2, [torch.tensor([1.0, 2.0, 5.0])], num_samples=5
    )
    assert res.trace == pytest.approx(8.0, abs=1e-12) and res.std_error == pytest.approx(0.0, abs=1e-12)


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
