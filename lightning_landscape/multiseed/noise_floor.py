r"""Is the winner better than a typical seed beyond the test set's own sampling noise? (Jordan 2023)

Two networks scored on the same n test examples differ by
:math:`\bar d = \frac1n \sum_i d_i`, :math:`d_i = \sigma (o_i - w_i)`, where :math:`w_i, o_i` are the
winner's and the other (median) seed's per-example values, per-example loss (``kind="loss"``) or 0/1
correctness (``kind="correct"``), and :math:`\sigma = +1` when lower is better (``mode="min"``),
:math:`-1` otherwise: :math:`\bar d > 0` is the winner's **lead**. A fresh test set of the same size
would give another :math:`\bar d`; the **noise floor** is the half-width :math:`h` of its
``confidence`` interval, and the lead is *beyond noise* when :math:`\bar d > h`.

* :func:`noise_floor` (per-example values known): a **paired bootstrap over test examples**, resampling
  the pairs :math:`(w_i, o_i)` together, so the correlation of the two seeds' errors (they err on the
  same hard examples) narrows the band as it should. :math:`h` is half the width of the central
  percentile interval of :math:`\bar d^*`; for large n it is
  :math:`z_{1-\alpha/2}\,\mathrm{sd}(d)/\sqrt n`, the analytic paired standard error.
* :func:`binomial_noise_floor` (only two accuracies and n): the **normal approximation of the difference
  of two independent binomial proportions**, with Agresti-Caffo's one added success and failure per
  arm, :math:`h = z_{1-\alpha/2} \sqrt{\tilde p_1(1-\tilde p_1)/(n+2) + \tilde p_2(1-\tilde p_2)/(n+2)}`.
  It ignores the pairing; seeds of one network err on mostly the same examples (positive correlation),
  so it over-states the noise: a "beyond noise" from it holds, a "not beyond noise" may be too cautious.
* :meth:`NoiseFloor.unknown`: neither is available (a loss without per-example values): the verdict is
  ``"unknown"``.

Example:
    >>> floor = binomial_noise_floor(0.93, 0.925, n_test=10_000)
    >>> floor.verdict_line()
    "winner's test lead 0.5 points; test-set noise +-0.6: not beyond noise"
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np

from lightning_landscape.multiseed._checks import check_confidence, check_mode
from lightning_landscape.multiseed._distributions import normal_quantile
from lightning_landscape.multiseed.selection import Mode

Kind = Literal["loss", "correct"]
Verdict = Literal["beyond noise", "not beyond noise", "unknown"]

#: Resample through a multinomial over the distinct differences when there are at most this many.
_FEW_DISTINCT = 64
#: Resampled indices held at once.
_CHUNK_ELEMENTS = 1 << 22


@dataclass(frozen=True)
class NoiseFloor:
    """The winner's test lead over the median seed against the test set's sampling noise.

    Attributes:
        lead: the winner's lead in the metric's units, positive when the winner is better (an accuracy
            difference as a fraction for ``kind="correct"``); ``None`` when unknown.
        half_width: the noise floor ``h`` (same units); ``None`` when unknown.
        verdict: ``"beyond noise"`` (``lead > h``), ``"not beyond noise"`` or ``"unknown"``.
        confidence: the coverage behind ``h``.
        kind: ``"loss"`` or ``"correct"``.
        method: ``"paired bootstrap"``, ``"binomial (unpaired, normal approximation)"`` or ``"unknown"``.
        n_test: the number of test examples (``None`` when unknown).
    """

    lead: float | None
    half_width: float | None
    verdict: Verdict
    confidence: float
    kind: Kind
    method: str
    n_test: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def unknown(cls, lead: float | None = None, kind: Kind = "loss", confidence: float = 0.9) -> NoiseFloor:
        """The floor when neither per-example values nor an accuracy are available.

        Example:
            >>> NoiseFloor.unknown(lead=0.012).verdict_line()
            "winner's test lead 0.012; test-set noise unknown"
        """
        return cls(lead, None, "unknown", confidence, kind, "unknown")

    def verdict_line(self) -> str:
        """One line for the report and the CLI; accuracies (``kind="correct"``) in percentage points.

        Example:
            >>> floor = NoiseFloor(0.008, 0.011, "not beyond noise", 0.9, "correct", "paired bootstrap")
            >>> floor.verdict_line()
            "winner's test lead 0.8 points; test-set noise +-1.1: not beyond noise"
        """
        scale, unit, digits = (100.0, " points", 2) if self.kind == "correct" else (1.0, "", 3)
        lead = "unknown" if self.lead is None else f"{_round(scale * self.lead, digits)}{unit}"
        if self.half_width is None:
            return f"winner's test lead {lead}; test-set noise unknown"
        return (
            f"winner's test lead {lead}; test-set noise +-{_round(scale * self.half_width, digits)}:"
            f" {self.verdict}"
        )


def _round(value: float, digits: int) -> str:
    """``value`` to ``digits`` significant digits."""
    return f"{value:.{digits}g}"


def _bootstrap_means(values: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """Means of ``n_boot`` resamples (with replacement) of ``values``."""
    n = values.size
    distinct, counts = np.unique(values, return_counts=True)
    if distinct.size <= _FEW_DISTINCT:
        # 0/1 correctness leaves at most three differences: resampling n examples is drawing how many
        # of each, one multinomial per resample, the same distribution as resampling indices.
        return rng.multinomial(n, counts / n, size=n_boot) @ distinct / n
    chunk = max(1, _CHUNK_ELEMENTS // n)
    return np.concatenate(
        [
            values[rng.integers(0, n, size=(min(chunk, n_boot - i), n))].mean(axis=1)
            for i in range(0, n_boot, chunk)
        ]
    )


def _check_values(name: str, values: Any, kind: Kind) -> np.ndarray:
    if isinstance(values, (str, bytes)):
        raise TypeError(f"`{name}` must be a sequence of per-example values, got {type(values).__name__}")
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise TypeError(f"`{name}` must be a sequence of per-example numbers: {err}") from None
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"`{name}` must be a non-empty 1-d sequence, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"`{name}` must hold finite numbers only")
    if kind == "correct" and not np.all((arr == 0) | (arr == 1)):
        raise ValueError(f"`{name}` must hold 0/1 correctness for kind='correct'")
    return arr


def _resolve_mode(kind: Any, mode: Any) -> Mode:
    if kind not in ("loss", "correct"):
        raise ValueError(f"`kind` must be 'loss' or 'correct', got {kind!r}")
    if mode is None:
        return "min" if kind == "loss" else "max"
    check_mode(mode)
    if kind == "correct" and mode != "max":
        raise ValueError("`mode` must be 'max' for kind='correct' (a correct answer is better)")
    return mode


def noise_floor(
    winner_values: Sequence[float],
    other_values: Sequence[float],
    *,
    kind: Kind = "loss",
    mode: Mode | None = None,
    confidence: float = 0.9,
    n_boot: int = 2000,
    seed: int = 0,
) -> NoiseFloor:
    """The paired-bootstrap noise floor of the winner's test lead (see the module docstring).

    Args:
        winner_values: the winner's per-example test values (loss, or 0/1 correctness), one per example.
        other_values: the median seed's values on the same examples, in the same order.
        kind: ``"loss"`` or ``"correct"``.
        mode: ``"min"`` or ``"max"``: which direction is better; ``None`` takes ``"min"`` for a loss and
            ``"max"`` for correctness.
        confidence: the coverage of the noise band, in ``(0, 1)``.
        n_boot: bootstrap resamples of the test examples.
        seed: seed of the resampling.

    Returns:
        A :class:`NoiseFloor` (``method="paired bootstrap"``).

    Raises:
        ValueError: for empty, non-finite or unequal-length values, non-0/1 values with
            ``kind="correct"``, an unknown ``kind``/``mode``, ``kind="correct"`` with ``mode="min"``, a
            ``confidence`` outside ``(0, 1)`` or ``n_boot < 10``.
        TypeError: for values that are not a sequence of numbers.

    Example:
        >>> winner = [1] * 90 + [0] * 10
        >>> other = [1] * 85 + [0] * 15
        >>> floor = noise_floor(winner, other, kind="correct")
        >>> round(floor.lead, 3), floor.verdict
        (0.05, 'beyond noise')
    """
    resolved = _resolve_mode(kind, mode)
    w = _check_values("winner_values", winner_values, kind)
    o = _check_values("other_values", other_values, kind)
    if w.shape != o.shape:
        raise ValueError(
            f"`winner_values` has {w.size} examples and `other_values` {o.size}: give both seeds'"
            " values on the same test examples"
        )
    conf = check_confidence("confidence", confidence)
    if isinstance(n_boot, bool) or not isinstance(n_boot, int) or n_boot < 10:
        raise ValueError(f"`n_boot` must be an int >= 10, got {n_boot!r}")
    sign = 1.0 if resolved == "min" else -1.0
    diff = sign * (o - w)
    boot = _bootstrap_means(diff, n_boot, np.random.default_rng(seed))
    alpha = (1.0 - conf) / 2.0
    low, high = np.quantile(boot, [alpha, 1.0 - alpha])
    lead = float(diff.mean())
    half = float(high - low) / 2.0
    verdict: Verdict = "beyond noise" if lead > half else "not beyond noise"
    return NoiseFloor(lead, half, verdict, conf, kind, "paired bootstrap", int(diff.size))


def binomial_noise_floor(
    acc_winner: float, acc_other: float, n_test: int, confidence: float = 0.9
) -> NoiseFloor:
    """The noise floor of an accuracy-like lead from the two accuracies alone (unpaired, conservative).

    Args:
        acc_winner: the winner's test accuracy, a fraction in ``[0, 1]``.
        acc_other: the median seed's test accuracy.
        n_test: the number of test examples both were scored on.
        confidence: the coverage of the noise band, in ``(0, 1)``.

    Returns:
        A :class:`NoiseFloor` (``kind="correct"``, ``method="binomial (unpaired, normal approximation)"``).

    Raises:
        ValueError: for an accuracy outside ``[0, 1]``, ``n_test < 1`` or a ``confidence`` outside
            ``(0, 1)``.

    Example:
        >>> binomial_noise_floor(0.95, 0.90, n_test=2000).verdict
        'beyond noise'
    """
    for name, acc in (("acc_winner", acc_winner), ("acc_other", acc_other)):
        if isinstance(acc, bool) or not isinstance(acc, (int, float)) or not 0.0 <= acc <= 1.0:
            raise ValueError(f"`{name}` must be an accuracy in [0, 1] (a fraction), got {acc!r}")
    if isinstance(n_test, bool) or not isinstance(n_test, int) or n_test < 1:
        raise ValueError(f"`n_test` must be an int >= 1, got {n_test!r}")
    conf = check_confidence("confidence", confidence)
    # Agresti-Caffo: one success and one failure added to each arm keeps the band honest near 0 and 1.
    p1 = (acc_winner * n_test + 1.0) / (n_test + 2.0)
    p2 = (acc_other * n_test + 1.0) / (n_test + 2.0)
    se = math.sqrt((p1 * (1.0 - p1) + p2 * (1.0 - p2)) / (n_test + 2.0))
    half = normal_quantile(0.5 + conf / 2.0) * se
    lead = float(acc_winner - acc_other)
    verdict: Verdict = "beyond noise" if lead > half else "not beyond noise"
    return NoiseFloor(
        lead, half, verdict, conf, "correct", "binomial (unpaired, normal approximation)", n_test
    )
