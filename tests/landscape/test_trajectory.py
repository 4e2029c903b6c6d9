"""trajectory_plane recovers a path that lies in a plane."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_landscape.landscape.trajectory import trajectory_plane
from tests._shared import mse_loss
from tests.landscape.cases import DT, linear_case, mean_loss


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
        assert loss == pytest.approx(float(mean_loss(ref, mse_loss, case.batches)), abs=1e-12)
    assert plane.alphas[0] < plane.path[:, 0].min() and plane.alphas[-1] > plane.path[:, 0].max()


def test_bad_arguments_are_named() -> None:
    case = linear_case()
    m, f, b = case.model, case.loss_fn, case.batches
    with pytest.raises(ValueError, match="at least 3 iterates"):
        trajectory_plane([m.state_dict()], m, f, b)
    with pytest.raises(ValueError, match="`margin`"):
        trajectory_plane([m.state_dict()] * 3, m, f, b, margin=-1.0)
    with pytest.raises(ValueError, match="iterate 1 does not fit the model"):
        trajectory_plane([m.state_dict(), {"weight": torch.zeros(1)}, m.state_dict()], m, f, b)
