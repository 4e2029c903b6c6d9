"""The result types: saved and loaded back exactly (.npz and .pt), plotted, refusing the wrong kind."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import Tensor

from lightning_landscape.landscape import linear_barrier, loss_line, loss_plane
from lightning_landscape.landscape.results import BarrierResult, LineResult, PlaneResult
from tests.landscape.cases import linear_case


def test_results_save_load_and_plot(tmp_path: Any) -> None:
    case = linear_case()
    plane = loss_plane(case.model, case.loss_fn, case.batches, steps=3)
    line = loss_line(case.model, case.loss_fn, case.batches, steps=3)
    barrier = linear_barrier(case.model, linear_case(1).model, case.loss_fn, case.batches, steps=3)
    for result, cls in ((plane, PlaneResult), (line, LineResult), (barrier, BarrierResult)):
        for suffix in (".npz", ".pt"):
            path = result.save(tmp_path / f"r{suffix}")
            back = cls.load(path)
            for key, value in result.to_dict().items():
                got = getattr(back, key, None) if key != "kind" else back.kind
                if isinstance(value, Tensor):
                    assert torch.equal(got, value), key
                else:
                    assert got == value, key
        fig = result.plot()
        assert fig.axes
    with pytest.raises(ValueError, match="holds a 'plane' result"):
        LineResult.load(plane.save(tmp_path / "p.npz"))
    with pytest.raises(ValueError, match=r"\.npz or \.pt"):
        plane.save(tmp_path / "p.json")
