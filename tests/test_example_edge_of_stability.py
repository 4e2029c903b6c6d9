"""examples/edge_of_stability.py end to end, tiny: the table and the figure."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from examples.edge_of_stability import main


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_edge_of_stability_example_prints_the_table_and_writes_the_figure(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    threads = torch.get_num_threads()
    rows = main(
        ["--out", str(tmp_path), "--steps", "20", "--every", "5", "--hidden", "8", "--grid_size", "64"]
    )
    out = capsys.readouterr().out
    assert "threshold 2/lr = 20" in out and "ratio" in out
    assert [row["step"] for row in rows] == [5, 10, 15, 20]
    for row in rows:
        assert row["threshold"] == pytest.approx(20.0)
        assert row["ratio"] == pytest.approx(row["sharpness"] / 20.0)
    assert (tmp_path / "edge_of_stability.png").stat().st_size > 0
    assert torch.get_num_threads() == threads
