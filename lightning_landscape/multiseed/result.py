"""The outcome of a multi-seed run: one :class:`SeedRun` per seed and a :class:`MultiSeedResult`.

These plain dataclasses are shared by every executor (sequential, Ray, vectorized) and are what
``summary.json`` serializes, so a rerun can resume from the file alone.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, TypeGuard

from lightning_landscape.multiseed.selection import BestOfK, best_of_k
from lightning_landscape.multiseed.statistics import SummaryIntervals, summary_intervals

SeedStatus = Literal["finished", "failed", "pending", "running", "pruned"]
#: The largest seed: numpy's generators take seeds in ``[0, 2**32 - 1]``.
MAX_SEED = 2**32 - 1


def is_seed(value: Any) -> TypeGuard[int]:
    """Whether ``value`` can seed a run: an ``int`` (not a bool) in ``[0, MAX_SEED]``.

    Example:
        >>> is_seed(0), is_seed(2**32), is_seed(True), is_seed(1.0)
        (True, False, False, False)
    """
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_SEED


@dataclass
class SeedRun:
    """What one seed produced.

    Args:
        seed: the seed passed to ``seed_everything``.
        status: ``"finished"`` (a finite monitored score), ``"failed"`` (raised or non-finite),
            ``"pending"`` (not started), ``"running"`` (started, not finished: resumable) or ``"pruned"``
            (stopped by successive halving at a rung: ``extra["pruned_rung"]``, its score at that rung in
            ``score``; its folder is kept).
        score: the best monitored value of this seed, ``None`` unless finished.
        best_model_path: the seed's best checkpoint, ``""`` if none.
        last_model_path: the seed's last checkpoint (used to resume), ``""`` if none.
        wall_time: seconds spent on this seed (summed over resumed attempts).
        error: the error text of a failed seed.
        log_dir: the seed's TensorBoard log folder.
        test_score: the ``test_monitor`` of the seed's best checkpoint on the test set (``None``: not
            tested).
        still_improving: the best score came in the last 10% of training (its rank reflects the
            budget, not the landscape); ``None`` if unknown.
        extra: plain values beyond the fields above (the ensemble member index, where a resume
            started, ...). A new per-seed fact that the record should validate becomes a field with a
            default instead.

    Keys of a ``summary.json`` entry that this version does not know are kept aside and written back
    unchanged, so a record written by a newer release survives a rerun with this one.
    """

    seed: int
    status: SeedStatus = "pending"
    score: float | None = None
    best_model_path: str = ""
    last_model_path: str = ""
    wall_time: float = 0.0
    error: str = ""
    log_dir: str = ""
    test_score: float | None = None
    still_improving: bool | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    _carried: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        """The fields as plain values (without the carried unknown keys)."""
        data = asdict(self)
        del data["_carried"]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SeedRun:
        """The inverse of :meth:`to_dict`; unknown keys are carried, not dropped. No validation: see
        :func:`lightning_landscape.multiseed.record.read_record` for a file's content."""
        known = set(cls.__dataclass_fields__) - {"_carried"}
        run = cls(**{k: v for k, v in data.items() if k in known})
        run._carried = {k: v for k, v in data.items() if k not in known}
        return run


def finished_scores(runs: Sequence[SeedRun]) -> list[float]:
    """The scores of the finished runs, in the order given."""
    return [float(r.score) for r in runs if r.status == "finished" and r.score is not None]


def score_stats(scores: Sequence[float]) -> dict[str, float]:
    """Mean, sample standard deviation (``n - 1``; 0 for one score), min, median and max; NaN (std 0)
    without a score.

    Example:
        >>> score_stats([1.0, 2.0, 4.0])
        {'mean': 2.3333333333333335, 'std': 1.5275252316519468, 'min': 1.0, 'median': 2.0, 'max': 4.0}
    """
    if not scores:
        return {"mean": math.nan, "std": 0.0, "min": math.nan, "median": math.nan, "max": math.nan}
    return {
        "mean": statistics.fmean(scores),
        "std": statistics.stdev(scores) if len(scores) > 1 else 0.0,
        "min": min(scores),
        "median": statistics.median(scores),
        "max": max(scores),
    }


@dataclass
class MultiSeedResult:
    """All seeds of one multi-seed run and the one kept.

    Args:
        runs: one entry per seed, in seed order.
        monitor: the metric the best seed was chosen by.
        mode: ``"min"`` or ``"max"``.
        best_seed: the winner among the finished seeds.
        best_score: its monitored value.
        best_model_path: the copy ``root_dir/best.ckpt`` of the winner's best checkpoint.
        root_dir: the folder holding ``seed_<k>/``, ``summary.json``, ``summary.csv``, ``seeds.png``.
        best_test_score: the winner's score on the held-out test set, ``None`` if not tested.
        selection: the optimism of the selection (see
            :class:`~lightning_landscape.multiseed.selection.SelectionOptimism`), ``None`` if not tested.
        combined: the soup and ensemble rows beside the best seed (``soup``/``ensemble``; see
            :mod:`~lightning_landscape.multiseed.soup`), empty when not asked for.
        noise_floor: the winner's test lead over the median seed against the test set's sampling noise
            (the ``noise_floor`` block of ``summary.json``, with its one-line ``"line"``; see
            :mod:`~lightning_landscape.multiseed.per_example`), ``None`` if not measured.
    """

    runs: list[SeedRun]
    monitor: str
    mode: Literal["min", "max"]
    best_seed: int
    best_score: float
    best_model_path: str
    root_dir: str
    best_test_score: float | None = None
    selection: dict[str, Any] | None = None
    combined: list[dict[str, Any]] = field(default_factory=list)
    noise_floor: dict[str, Any] | None = None

    def best_of_k(
        self, quantiles: tuple[float, float] = (0.1, 0.9), confidence: float | None = 0.9
    ) -> BestOfK | None:
        """The exact expected best ``monitor`` of k seeds drawn from the finished ones, k = 1..K, with its
        range, its ``confidence`` band (``expected_low``/``expected_high``, a studentized bootstrap over
        seeds, :func:`~.statistics.best_of_k_band`; ``None`` skips it), and the expected test score of the
        validation-selected seed when every finished seed has one (``test="all"``); ``None`` without a
        finished seed. See :mod:`~.selection`."""
        finished = [r for r in self.finished if r.score is not None]
        if not finished:
            return None
        tests = [r.test_score for r in finished]
        return best_of_k(
            [float(r.score) for r in finished],  # type: ignore[arg-type]
            mode=self.mode,
            test_scores=None if any(t is None for t in tests) else [float(t) for t in tests],  # type: ignore[arg-type]
            quantiles=quantiles,
            confidence=confidence,
        )

    @property
    def scores(self) -> list[float]:
        """Scores of the finished seeds, in seed order."""
        return finished_scores(self.runs)

    @property
    def finished(self) -> list[SeedRun]:
        return [r for r in self.runs if r.status == "finished"]

    @property
    def failed(self) -> list[SeedRun]:
        return [r for r in self.runs if r.status == "failed"]

    @property
    def mean(self) -> float:
        return self.summary_stats()["mean"]

    @property
    def std(self) -> float:
        """Sample standard deviation (``n - 1``); 0 for a single finished seed."""
        return self.summary_stats()["std"]

    @property
    def min(self) -> float:
        return self.summary_stats()["min"]

    @property
    def median(self) -> float:
        return self.summary_stats()["median"]

    @property
    def max(self) -> float:
        return self.summary_stats()["max"]

    def summary_stats(self) -> dict[str, float]:
        """The statistics of the finished seeds' scores (see :func:`score_stats`)."""
        return score_stats(self.scores)

    def summary_intervals(self, confidence: float = 0.9) -> SummaryIntervals | None:
        """Mean, median and standard deviation of the finished seeds' scores with ``confidence``
        intervals (:func:`~.statistics.summary_intervals`); ``None`` without a finished seed."""
        scores = self.scores
        return summary_intervals(scores, confidence) if scores else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "monitor": self.monitor,
            "mode": self.mode,
            "best_seed": self.best_seed,
            "best_score": self.best_score,
            "best_model_path": self.best_model_path,
            "root_dir": self.root_dir,
            "stats": self.summary_stats(),
            "best_test_score": self.best_test_score,
            "selection": self.selection,
            "noise_floor": self.noise_floor,
            "runs": [r.to_dict() for r in self.runs],
        }
