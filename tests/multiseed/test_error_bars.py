"""The error bars wired through the result, the plot and the CLI table (the statistics are tested in
test_statistics.py; here: the same numbers arrive where they are shown)."""

from __future__ import annotations

from pathlib import Path

import pytest

from lightning_landscape.cli.help import format_result
from lightning_landscape.multiseed import MultiSeedResult, SeedRun
from lightning_landscape.multiseed.report import plot_best_of_k
from lightning_landscape.multiseed.statistics import best_of_k_band, summary_intervals

SCORES = [0.31, 0.12, 0.25, 0.4, 0.18, 0.22, 0.35, 0.28]


def _result() -> MultiSeedResult:
    runs = [SeedRun(s, "finished", v, wall_time=1.0) for s, v in enumerate(SCORES)]
    runs += [SeedRun(8, "failed", error="boom"), SeedRun(9, "pruned", 0.05, extra={"pruned_rung": 0})]
    return MultiSeedResult(runs, "val_loss", "min", 1, 0.12, "x/best.ckpt", "x")


def test_result_band_and_intervals_are_the_statistics_of_the_finished_seeds() -> None:
    result = _result()
    curve = result.best_of_k(confidence=0.8)
    assert curve is not None and curve.confidence == 0.8
    # Failed and pruned seeds are left out: the band is that of the finished scores alone.
    assert (curve.expected_low, curve.expected_high) == best_of_k_band(SCORES, "min", 0.8)
    for k in range(1, 3):  # where both ends exist, the band holds the estimate
        row = curve.at(k)
        assert row["expected_low"] <= row["expected"] <= row["expected_high"]
    assert result.best_of_k(confidence=None).expected_low is None  # type: ignore[union-attr]
    assert result.summary_intervals(0.9) == summary_intervals(SCORES, 0.9)


def test_table_shows_the_band_and_the_intervals() -> None:
    result = _result()
    text = format_result(result)
    curve = result.best_of_k()
    assert curve is not None and curve.expected_high is not None and curve.expected_low is not None
    assert f"band {curve.expected_low[0]:.6g} .. {curve.expected_high[0]:.6g}" in text
    assert "band ? .. " in text  # k = K: no finite better end
    assert "pruned at rung 0" in text
    mean = summary_intervals(SCORES).mean
    assert f"mean {mean.low:.6g} .. {mean.high:.6g} (90%)" in text


def test_plot_draws_the_band_skipping_missing_ends(tmp_path: Path) -> None:
    curve = _result().best_of_k()
    assert curve is not None and None in curve.expected_low  # type: ignore[operator]
    path = plot_best_of_k(tmp_path, curve, "val_loss")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("confidence", [0.0, 1.0])
def test_bad_confidence_is_refused(confidence: float) -> None:
    with pytest.raises(ValueError, match="confidence"):
        _result().best_of_k(confidence=confidence)
