"""The probe's result types: per-value convergence flags read from an EigenResult, named quantities."""

from __future__ import annotations

import torch

from lightning_landscape.callbacks._probe_results import Extremes, HessianProbeResult, extremes, result_values
from lightning_landscape.curvature import EigenResult


def test_extremes_read_per_value_flags_or_one_flag_for_all() -> None:
    per_value = EigenResult(
        eigenvalues=torch.tensor([3.0, 2.0, 1.0]),
        smallest=torch.tensor([-1.0, 0.5]),
        converged=False,
        value_converged=torch.tensor([True, False]),  # shorter: padded with their conjunction
        smallest_converged=torch.tensor([True, True]),
    )
    got = extremes(per_value, smallest=True)
    assert got == Extremes((3.0, 2.0, 1.0), (True, False, False), -1.0, True)
    assert not got.converged
    assert got.named() == [
        ("eig_1", 3.0, True),
        ("eig_2", 2.0, False),
        ("eig_3", 1.0, False),
        ("eig_min", -1.0, True),
    ]
    one_flag = extremes(
        EigenResult(eigenvalues=torch.tensor([2.0]), smallest=torch.tensor([0.0]), converged=True), False
    )
    assert (
        one_flag == Extremes((2.0,), (True,))
        and one_flag.converged
        and one_flag.named() == [("eig_1", 2.0, True)]
    )
    assert HessianProbeResult(one_flag).blocks == {}


def test_result_values_name_every_number() -> None:
    eigen = Extremes((3.0, 2.0), (True, True), -1.0, True)
    result = HessianProbeResult(eigen, {"layer": Extremes((5.0,), (False,))}, trace=4.0)
    assert result_values(result) == {
        "eig_1": 3.0,
        "eig_2": 2.0,
        "eig_min": -1.0,
        "layer/eig_1": 5.0,
        "trace": 4.0,
    }
