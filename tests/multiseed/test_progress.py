"""What a person watching a run sees: each notice once, the bar over the seeds, and nothing left behind."""

from __future__ import annotations

import logging

import pytest

from lightning_landscape.multiseed.progress import OncePerRun, RunDisplay, progress_line
from lightning_landscape.multiseed.result import SeedRun

RANK_ZERO = "lightning.pytorch.utilities.rank_zero"


def _record(message: str, level: int = logging.INFO) -> logging.LogRecord:
    return logging.LogRecord(RANK_ZERO, level, "", 0, message, None, None)


def test_once_per_run_passes_each_notice_once_and_progress_and_warnings_always() -> None:
    f = OncePerRun()
    assert [f.filter(_record("GPU available: False")) for _ in range(3)] == [True, False, False]
    assert all(f.filter(_record("[MultiSeedTrainer 1/2] seed 0 finished")) for _ in range(2))
    assert all(f.filter(_record("careful", logging.WARNING)) for _ in range(2))


@pytest.mark.parametrize("quiet", [False, True])
def test_run_display_filters_while_open_and_restores_the_loggers(
    quiet: bool, capsys: pytest.CaptureFixture[str]
) -> None:
    logger = logging.getLogger(RANK_ZERO)
    level, filters = logger.level, list(logger.filters)
    with RunDisplay(total=3, done=1, monitor="val_loss", quiet=quiet) as display:
        assert display.filter in logger.filters
        assert (logger.level == logging.WARNING) is quiet
        assert (display.bar is None) is quiet
        display.update(2, SeedRun(2, "finished", 0.125))
    assert logger.level == level and logger.filters == filters
    err = capsys.readouterr().err
    assert ("Seeds" in err and "2/3" in err and "seed 2 val_loss=0.125" in err) is not quiet


def test_no_bar_when_every_seed_is_done() -> None:
    with RunDisplay(total=2, done=2, monitor="val_loss") as display:
        assert display.bar is None
        display.update(0, None)  # nothing to update, nothing raised


def test_the_progress_line_of_a_failed_seed_and_of_a_run_without_a_winner() -> None:
    failed = SeedRun(1, "failed", error="RuntimeError: boom", wall_time=0.25)
    line = progress_line(failed, 1, 3, None, "val_loss")
    assert line == "[MultiSeedTrainer 1/3] seed 1 failed: RuntimeError: boom in 0.2s; no seed finished yet"
    assert OncePerRun().filter(_record(line))  # the trainer's own lines always pass the filter
