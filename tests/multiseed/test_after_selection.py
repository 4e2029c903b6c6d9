"""After the selection, on crafted results: still-improving flags, the best-of-k block, the optimism block."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from _tiny import TinyRegressor

from lightning_landscape.multiseed import MultiSeedResult, SeedRun
from lightning_landscape.multiseed.after_selection import after_selection, mark_still_improving
from lightning_landscape.multiseed.build import ObjectBuilder
from lightning_landscape.multiseed.executors import SeedJob
from lightning_landscape.multiseed.selection import best_of_k, selection_optimism, still_improving
from lightning_landscape.multiseed.statistics import best_of_k_band, summary_intervals


def _job(root: Path) -> SeedJob:
    return SeedJob(str(root), "val_loss", "min", {}, ObjectBuilder("class", TinyRegressor))


def test_still_improving_from_recorded_steps_or_the_checkpoints(tmp_path: Path) -> None:
    best, last = tmp_path / "best.ckpt", tmp_path / "last.ckpt"
    torch.save({"state_dict": {}, "global_step": 95}, best)
    torch.save({"state_dict": {}, "global_step": 100}, last)
    runs = [
        SeedRun(0, "finished", 0.1, extra={"best_step": 50, "last_step": 100}),
        SeedRun(1, "finished", 0.2, best_model_path=str(best), last_model_path=str(last)),
        SeedRun(2, "finished", 0.3, extra={"best_step": 7}),  # no last step anywhere: unknown
        SeedRun(3, "failed", still_improving=True),  # not finished: left alone
    ]
    mark_still_improving(runs, 0.1)
    assert [r.still_improving for r in runs] == [
        still_improving(50, 100),
        still_improving(95, 100),
        None,
        True,
    ]
    assert runs[0].still_improving is False and runs[1].still_improving is True


def test_the_blocks_of_the_record_without_a_test_set(tmp_path: Path) -> None:
    runs = [
        SeedRun(s, "finished", score, extra={"best_step": 1, "last_step": 10})
        for s, score in enumerate([0.3, 0.1, 0.2])
    ]
    result = MultiSeedResult(runs, "val_loss", "min", 1, 0.1, str(tmp_path / "best.ckpt"), str(tmp_path))
    extra: dict[str, object] = {}
    curve = after_selection(
        result, extra, _job(tmp_path), test="best", test_monitor="test_loss", test_dataloaders=None,
        trainer_kwargs={}, still_improving_fraction=0.1,
    )  # fmt: skip
    assert curve == best_of_k([0.3, 0.1, 0.2], confidence=0.9) and extra["best_of_k"] == curve.to_dict()
    # The band and the intervals are the statistics module's, on the same scores.
    assert (curve.expected_low, curve.expected_high) == best_of_k_band([0.3, 0.1, 0.2], "min", 0.9)
    assert extra["stats_intervals"] == summary_intervals([0.3, 0.1, 0.2], 0.9).to_dict()
    assert extra["still_improving"] == [] and "selection" not in extra  # no test split: nothing tested
    assert result.best_test_score is None and result.selection is None


def test_the_optimism_block_from_recorded_test_scores(tmp_path: Path) -> None:
    # A resumed run keeps the test scores it has: nothing is tested again, the numbers are derived.
    runs = [SeedRun(0, "finished", 0.1, test_score=0.15), SeedRun(1, "finished", 0.2, test_score=0.25)]
    result = MultiSeedResult(runs, "val_loss", "min", 0, 0.1, str(tmp_path / "best.ckpt"), str(tmp_path))
    extra: dict[str, object] = {}
    curve = after_selection(
        result, extra, _job(tmp_path), test="all", test_monitor="test_loss", test_dataloaders=[],
        trainer_kwargs={}, still_improving_fraction=0.1,
    )  # fmt: skip
    expected = selection_optimism(0.1, 0.15, [0.15, 0.25], "min")
    assert result.best_test_score == 0.15
    assert result.selection == {**expected.to_dict(), "test_monitor": "test_loss", "seeds_tested": 2}
    assert extra["selection"] == result.selection
    assert curve is not None and curve.expected_test == pytest.approx(
        best_of_k([0.1, 0.2], test_scores=[0.15, 0.25]).expected_test
    )
