"""examples/instability.py end to end, tiny: the table, the figure and the JSON."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from examples.instability import main
from lightning_landscape.multiseed import InstabilityResult


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_instability_example_prints_the_table_and_writes_its_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    threads = torch.get_num_threads()
    args = [
        "--out",
        str(tmp_path),
        "--steps",
        "12",
        "--branch_steps",
        "0",
        "4",
        "--hidden",
        "4",
        "--grid_size",
        "64",
    ]
    res = main(args)
    out = capsys.readouterr().out
    assert "barrier" in out and "basin" in out
    assert (tmp_path / "instability.png").stat().st_size > 0
    assert InstabilityResult.load(tmp_path / "instability.json") == res
    assert json.loads((tmp_path / "instability.json").read_text())["branch_steps"] == [0, 4]
    assert torch.get_num_threads() == threads
