"""The files derived from the record: the winner's rule, summary.csv, the two figures."""

from __future__ import annotations

import csv
from pathlib import Path

from lightning_landscape.multiseed.report import plot_best_of_k, plot_seeds, select_best, write_summary_csv
from lightning_landscape.multiseed.result import SeedRun
from lightning_landscape.multiseed.selection import best_of_k

PNG = b"\x89PNG\r\n\x1a\n"


def test_select_best_takes_the_best_finished_score_and_the_earlier_seed_on_ties() -> None:
    runs = [
        SeedRun(4, "finished", 0.2),
        SeedRun(1, "failed", None),
        SeedRun(2, "finished", 0.1),
        SeedRun(9, "finished", 0.1),
        SeedRun(3, "running", None),
    ]
    assert select_best(runs, "min").seed == 2  # type: ignore[union-attr]
    assert select_best(runs, "max").seed == 4  # type: ignore[union-attr]
    assert select_best(runs[1:2], "min") is None


def test_summary_csv_has_one_row_per_seed_with_relative_paths(tmp_path: Path) -> None:
    runs = [
        SeedRun(
            0,
            "finished",
            0.5,
            best_model_path=str(tmp_path / "seed_0/checkpoints/b.ckpt"),
            still_improving=True,
        ),
        SeedRun(1, "failed", error="boom", log_dir=str(tmp_path / "seed_1")),
    ]
    rows = list(csv.DictReader(write_summary_csv(tmp_path, runs).open()))
    assert [(r["seed"], r["status"], r["score"]) for r in rows] == [
        ("0", "finished", "0.5"),
        ("1", "failed", ""),
    ]
    assert rows[0]["best_model_path"] == "seed_0/checkpoints/b.ckpt" and rows[1]["log_dir"] == "seed_1"
    assert rows[0]["still_improving"] == "True" and rows[1]["error"] == "boom"


def test_the_figures_are_pngs(tmp_path: Path) -> None:
    runs = [SeedRun(0, "finished", 0.5), SeedRun(1, "failed"), SeedRun(2, "finished", 0.25)]
    assert plot_seeds(tmp_path, runs, "val_loss", runs[2]).read_bytes()[:8] == PNG
    curve = best_of_k([0.5, 0.25], test_scores=[0.6, 0.3])
    assert plot_best_of_k(tmp_path, curve, "val_loss").read_bytes()[:8] == PNG
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best_of_k.png", "seeds.png"]
