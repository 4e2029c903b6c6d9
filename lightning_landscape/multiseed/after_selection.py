"""After the selection: an honest score for the winner, the best-of-k curve, and the seeds not done yet.

:class:`~lightning_landscape.multiseed.MultiSeedTrainer` calls :func:`after_selection` once the best seed
is known and ``best.ckpt`` is written. The seed was chosen on validation, so its validation score
is the minimum of K noisy numbers and flatters it; a held-out test set does not know about the choice.
The mathematics lives in :mod:`lightning_landscape.multiseed.selection`; this module only decides which
checkpoints are tested, runs ``Trainer.test`` on them, and stores the numbers in the record.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lightning.pytorch import Callback, LightningDataModule, Trainer
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from lightning.pytorch.utilities.model_helpers import is_overridden

from lightning_landscape._namespace import namespace_of
from lightning_landscape.multiseed.checkpoints import load_checkpoint
from lightning_landscape.multiseed.config import MultiSeedConfig, TestWhich
from lightning_landscape.multiseed.executors import SeedJob
from lightning_landscape.multiseed.per_example import PerExampleCollector, judge, median_seed
from lightning_landscape.multiseed.result import MultiSeedResult, SeedRun
from lightning_landscape.multiseed.selection import BestOfK, selection_optimism, still_improving

#: ``(datamodule, dataloaders)`` for ``Trainer.test``.
TestData = tuple[LightningDataModule | None, Any]


def _step_of(path: str) -> int | None:
    if not path:
        return None
    try:
        step = load_checkpoint(path).get("global_step")
    except ValueError:
        return None
    return int(step) if isinstance(step, int) and not isinstance(step, bool) else None


def mark_still_improving(runs: Sequence[SeedRun], fraction: float) -> None:
    """Set ``run.still_improving`` for each finished run from its best and last checkpoints' steps."""
    for run in runs:
        if run.status != "finished":
            continue
        best = run.extra.get("best_step")
        if not isinstance(best, int):
            best = _step_of(run.best_model_path)
        last = run.extra.get("last_step")
        if not isinstance(last, int):
            last = _step_of(run.last_model_path)
        if best is None or last is None or best > last:
            run.still_improving = None
        else:
            run.still_improving = still_improving(best, last, fraction)


def _test_data(job: SeedJob, test_dataloaders: Any) -> TestData | None:
    """``(datamodule, dataloaders)`` for ``Trainer.test``, or ``None`` when there is no test split."""
    if test_dataloaders is not None:
        return None, test_dataloaders
    datamodule, _ = job.build_data()
    if datamodule is not None and is_overridden(
        "test_dataloader", datamodule, namespace_of(datamodule).LightningDataModule
    ):
        return datamodule, None
    return None


def score_on_test(
    job: SeedJob,
    run: SeedRun,
    test_monitor: str,
    data: TestData,
    trainer_kwargs: dict[str, Any],
    callbacks: list[Callback] | None = None,
) -> float | None:
    """The ``test_monitor`` that ``Trainer.test`` logs for ``run``'s best checkpoint (``weights_only`` load).

    ``callbacks`` join the test's ``Trainer`` (the noise floor's per-example collector).

    ``None`` (with a warning) when the model has no ``test_step`` or its test loop does not log
    ``test_monitor``: the seeds are trained by then, and their record stands without a test score.
    """
    from lightning_landscape.multiseed.vectorized.members import build_seeded

    # Built as the seed built it, with the global RNG left as it was; the weights come from the file.
    (model,) = build_seeded(job.build_model, [run.seed])
    namespace = namespace_of(model)
    if not is_overridden("test_step", model, namespace.LightningModule):
        rank_zero_warn(f"MultiSeedTrainer: {type(model).__name__} has no test_step; the winner is not tested")
        return None
    model.load_state_dict(load_checkpoint(run.best_model_path)["state_dict"])
    trainer: Trainer = namespace.Trainer(
        accelerator=trainer_kwargs.get("accelerator", "auto"),
        devices=1,
        precision=trainer_kwargs.get("precision"),
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=job.root_dir,
        callbacks=callbacks or [],
    )
    datamodule, loaders = data
    results = trainer.test(model, dataloaders=loaders, datamodule=datamodule, verbose=False)
    for entry in results:
        if test_monitor in entry:
            return float(entry[test_monitor])
    logged = sorted({k for entry in results for k in entry})
    rank_zero_warn(
        f"MultiSeedTrainer: `test_monitor={test_monitor!r}` is not logged by the test loop (it logs"
        f" {logged}); log it in test_step or pass test_monitor=<one of those>. No test score recorded."
    )
    return None


def after_selection(
    result: MultiSeedResult,
    extra: dict[str, Any],
    job: SeedJob,
    *,
    test: TestWhich,
    test_monitor: str,
    test_dataloaders: Any,
    trainer_kwargs: dict[str, Any],
    still_improving_fraction: float,
    confidence: float = 0.9,
) -> BestOfK | None:
    """Test the winner (or every seed), flag seeds still improving, and store best-of-k and optimism.

    Writes ``run.test_score`` and ``run.still_improving`` per seed, ``result.best_test_score`` and
    ``result.selection``, and the blocks ``extra["best_of_k"]`` (with its ``confidence`` band
    ``expected_low``/``expected_high`` per k), ``extra["stats_intervals"]`` (mean, median and std of the
    scores with their intervals, :func:`~.statistics.summary_intervals`), ``extra["selection"]`` and,
    with a test split and two finished seeds, ``extra["noise_floor"]`` (:func:`measure_noise_floor`).

    Returns:
        The best-of-k curve stored in ``extra["best_of_k"]`` (``None`` without a finished seed), for the
        caller to draw.
    """
    finished = result.finished
    mark_still_improving(finished, still_improving_fraction)
    data = _test_data(job, test_dataloaders) if test != "none" else None
    if data is not None:
        best = next(r for r in finished if r.seed == result.best_seed)
        targets = finished if test == "all" else [best]
        for run in targets:
            if run.test_score is None:  # a resumed run keeps the scores it has
                run.test_score = score_on_test(job, run, test_monitor, data, trainer_kwargs)
                if run.test_score is None:
                    break
    result.best_test_score = next((r.test_score for r in finished if r.seed == result.best_seed), None)
    curve = result.best_of_k(confidence=confidence)
    if curve is not None:
        extra["best_of_k"] = curve.to_dict()
        intervals = result.summary_intervals(confidence)
        if intervals is not None:
            extra["stats_intervals"] = intervals.to_dict()
    tested = [r.test_score for r in finished if r.test_score is not None]
    if result.best_test_score is not None and math.isfinite(result.best_score):
        numbers = selection_optimism(result.best_score, result.best_test_score, tested, result.mode)
        result.selection = {**numbers.to_dict(), "test_monitor": test_monitor, "seeds_tested": len(tested)}
        extra["selection"] = result.selection
    extra["still_improving"] = sorted(r.seed for r in finished if r.still_improving)
    if data is not None and result.best_test_score is not None:
        measure_noise_floor(result, extra, job, data, test_monitor, trainer_kwargs, confidence)
    return curve


def measure_noise_floor(
    result: MultiSeedResult,
    extra: dict[str, Any],
    job: SeedJob,
    data: TestData,
    test_monitor: str,
    trainer_kwargs: dict[str, Any],
    confidence: float = 0.9,
) -> None:
    """The winner's test lead over the median seed against the test set's noise (:mod:`~.per_example`):
    ``extra["noise_floor"]`` and ``result.noise_floor``; kept from the record when the same two seeds
    were judged before. Nothing with fewer than two finished seeds."""
    other = median_seed(result)
    if other is None:
        return
    old = extra.get("noise_floor")
    if (
        isinstance(old, dict)
        and old.get("winner") == result.best_seed
        and old.get("median_seed") == other.seed
    ):
        result.noise_floor = old
        return
    best = next(r for r in result.finished if r.seed == result.best_seed)
    measured = []
    for run in (best, other):
        collector = PerExampleCollector()
        score = score_on_test(job, run, test_monitor, data, trainer_kwargs, callbacks=[collector])
        measured.append((score, collector.per_example(), collector.examples))
    floor = judge(measured[0], measured[1], test_monitor, result.mode, confidence)
    block = {
        **floor.to_dict(), "winner": best.seed, "median_seed": other.seed, "test_monitor": test_monitor,
        "line": floor.verdict_line(),
    }  # fmt: skip
    extra["noise_floor"] = result.noise_floor = block


def run_after_selection(
    config: MultiSeedConfig,
    result: MultiSeedResult,
    extra: dict[str, Any],
    job: SeedJob,
    test_dataloaders: Any,
    trainer_kwargs: dict[str, Any],
    root_dir: Path,
) -> None:
    """Steps that run once the best seed is known and ``best.ckpt`` is written, under the run's lock.

    A step may add per-seed fields to ``result.runs`` (the same objects as the record's runs) and top-level
    blocks to ``extra`` (the record's); the record is written right after. Here: the held-out test of the
    winner (or of every seed), ``still_improving``, the best-of-k curve and the optimism
    (:func:`after_selection`); with ``barriers``: the loss barriers between the best seed's best checkpoint
    and the others' (``extra["barriers"]``, ``barriers.png``, ``interpolation.png``; see
    :mod:`~lightning_landscape.multiseed.barriers`); with ``soup``/``ensemble``: ``soup.ckpt`` and the
    ``combined`` block (:mod:`~lightning_landscape.multiseed.soup`).
    """
    from lightning_landscape.multiseed.barriers import barriers_after_selection
    from lightning_landscape.multiseed.report import plot_best_of_k
    from lightning_landscape.multiseed.soup import soup_and_ensemble

    curve = after_selection(
        result, extra, job, test=config.test, test_monitor=config.test_metric,
        test_dataloaders=test_dataloaders, trainer_kwargs=trainer_kwargs,
        still_improving_fraction=float(config.still_improving_fraction),
    )  # fmt: skip
    if curve is not None:
        plot_best_of_k(root_dir, curve, config.monitor)
    if result.noise_floor is not None:
        rank_zero_info(f"MultiSeedTrainer: noise floor: {result.noise_floor['line']}")
    if config.barriers_which is not None:
        which, tol = config.barriers_which, float(config.barrier_tol)
        block = barriers_after_selection(
            job, result.runs, result.best_seed, root_dir, which, tol, align=config.align
        )
        if block is not None:
            extra["barriers"] = block
            rank_zero_info(f"MultiSeedTrainer: {block['summary']}")
    combined = soup_and_ensemble(
        job, result, soup=config.soup, ensemble=config.ensemble, align=config.align,
        monitor=config.monitor, test_monitor=config.test_metric, test_dataloaders=test_dataloaders,
        trainer_kwargs=trainer_kwargs,
    )  # fmt: skip
    if combined is not None:
        extra["combined"] = combined
        result.combined = combined["rows"]


__all__ = [
    "after_selection",
    "mark_still_improving",
    "measure_noise_floor",
    "run_after_selection",
    "score_on_test",
]
