"""loss_line and loss_plane against closed forms: the exact quadratic of a linear model, the dense Hessian."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_landscape.landscape import loss_line, loss_plane, random_directions
from lightning_landscape.landscape.directions import flatten
from lightning_landscape.landscape.lines import plane_result
from tests.curvature.cases import dense_hessian
from tests.landscape.cases import DT, gradient, linear_case, mean_loss


def test_plane_of_a_linear_model_is_the_exact_quadratic() -> None:
    case = linear_case()
    d1, d2 = random_directions(case.model, 2, normalization=None, ignore=None, seed=3)
    plane = loss_plane(case.model, case.loss_fn, case.batches, directions=(d1, d2), span=(-2, 1.5), steps=9)
    H, g = dense_hessian(case), gradient(case)
    v1, v2 = flatten(d1), flatten(d2)
    L0 = float(mean_loss(case.model, case.loss_fn, case.batches).detach())
    a = plane.alphas[:, None]
    b = plane.betas[None, :]
    exact = (
        L0
        + a * (g @ v1)
        + b * (g @ v2)
        + 0.5 * (a**2 * (v1 @ H @ v1) + 2 * a * b * (v1 @ H @ v2) + b**2 * (v2 @ H @ v2))
    )
    assert plane.losses.shape == (9, 9)
    torch.testing.assert_close(plane.losses, exact.detach(), atol=1e-10, rtol=0)
    assert plane.center_loss == pytest.approx(L0, abs=1e-12)
    assert float(plane.losses.std()) > 0.1  # the quadratic part is visible, not a flat check

    line = loss_line(case.model, case.loss_fn, case.batches, direction=d1, span=(-1, 2), steps=7)
    assert line.slope == pytest.approx(float(g @ v1), abs=1e-10)
    assert line.curvature == pytest.approx(float(v1 @ H @ v1), abs=1e-10)
    quad = line.quadratic()
    assert quad is not None
    torch.testing.assert_close(line.losses, quad, atol=1e-10, rtol=0)


def test_segment_towards_another_model_interpolates_weights_and_buffers() -> None:
    # A linear model: the loss at alpha on the segment is the loss of the interpolated weights.
    a, b = linear_case(0), linear_case(1)
    line = loss_line(a.model, a.loss_fn, a.batches, towards=b.model, steps=5)
    assert line.meta["direction"] == "interpolation" and float(line.alphas[-1]) == 1.0
    for alpha, loss in zip(line.alphas.tolist(), line.losses.tolist(), strict=True):
        ref = nn.Linear(3, 2).to(DT)
        with torch.no_grad():
            for p, pa, pb in zip(ref.parameters(), a.model.parameters(), b.model.parameters(), strict=True):
                p.copy_((1 - alpha) * pa + alpha * pb)
        assert loss == pytest.approx(float(mean_loss(ref, a.loss_fn, a.batches).detach()), abs=1e-12)
    with pytest.raises(ValueError, match="either `direction` or `towards`"):
        loss_line(a.model, a.loss_fn, a.batches, towards=b.model, direction=random_directions(a.model, 1)[0])


def test_plane_result_holds_the_centre() -> None:
    from lightning_landscape.landscape._evaluate import GridEvaluator, state_tensors

    case = linear_case()
    d1, d2 = random_directions(case.model, 2, normalization=None, ignore=None, seed=3)
    weights, _ = state_tensors(case.model)
    axis = torch.tensor([-1.0, 0.0, 1.0], dtype=DT)
    evaluator = GridEvaluator(case.model, case.loss_fn, case.batches)
    plane = plane_result(evaluator, weights, None, d1, d2, axis, axis, {"directions": "given"})
    assert plane.center_loss == pytest.approx(float(plane.losses[1, 1]), abs=1e-14)
    assert plane.center_loss == pytest.approx(
        float(mean_loss(case.model, case.loss_fn, case.batches)), abs=1e-12
    )


def test_bad_arguments_are_named() -> None:
    case = linear_case()
    m, f, b = case.model, case.loss_fn, case.batches
    with pytest.raises(ValueError, match="`steps`"):
        loss_plane(m, f, b, steps=1)
    with pytest.raises(ValueError, match="`span`"):
        loss_plane(m, f, b, span=(1, -1))
    with pytest.raises(ValueError, match="`direction`"):
        loss_line(m, f, b, direction={"weight": torch.zeros(2, 3, dtype=DT)})
    with pytest.raises(ValueError, match="`batches` is empty"):
        loss_plane(m, f, [])
