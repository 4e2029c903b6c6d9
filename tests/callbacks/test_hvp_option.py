"""``hvp=`` threaded from the monitor through the probe engine to the operator (issue 17)."""

from __future__ import annotations

import pytest
import torch

from lightning_landscape import HessianEigenMonitor
from lightning_landscape.callbacks._hessian_probe import HessianProbe
from tests.curvature.cases import case, truth


@pytest.mark.parametrize("hvp", ["finite_difference", "forward_over_reverse"])
def test_probe_takes_products_the_asked_way(hvp: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from lightning_landscape.curvature.operators import _methods

    c = case("cnn_bn")  # cross-entropy: forward-over-reverse can differentiate it
    seen: list[str] = []
    original = _methods.ProductMethods._finite_difference

    def spy(self: object, rows: torch.Tensor) -> torch.Tensor:
        seen.append("fd")
        return original(self, rows)  # type: ignore[arg-type]

    monkeypatch.setattr(_methods.ProductMethods, "_finite_difference", spy)
    result = HessianProbe(k=1, tol=1e-6, hvp=hvp).run(c.model, c.loss_fn, c.batches)  # type: ignore[arg-type]
    want = float(truth("cnn_bn")[-1])
    assert float(result.eigen.largest[0]) == pytest.approx(want, rel=1e-5)
    assert bool(seen) == (hvp == "finite_difference")


def test_bad_hvp_is_named_before_any_work() -> None:
    with pytest.raises(ValueError, match="`hvp`"):
        HessianProbe(hvp="jvp")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="`hvp`"):
        HessianEigenMonitor(hvp="jvp")  # type: ignore[arg-type]
