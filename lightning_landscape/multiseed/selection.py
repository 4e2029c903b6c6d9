r"""What picking the best of K retrains is worth: pure functions on the scores the seeds left.

**Best of k.** Sort the K observed validation scores best first, :math:`s_{(1)} \le \dots \le s_{(K)}`
(``mode="max"``: largest first; ties keep seed order, as the selection does). Draw k of the K seeds
uniformly without replacement; the best of them is :math:`s_{(i)}` exactly when seed :math:`(i)` is drawn
and the other :math:`k - 1` come from the :math:`K - i` worse ones:

.. math::

    P(\text{best of } k = s_{(i)}) = \binom{K - i}{k - 1} \Big/ \binom{K}{k}, \qquad
    \mathbb{E}[\text{best of } k] = \sum_{i=1}^{K} \binom{K - i}{k - 1} \Big/ \binom{K}{k} \; s_{(i)} .

This is the average over all :math:`\binom{K}{k}` subsets, computed without enumerating them and
without resampling noise. The same weights give the expected *test* score of the seed that validation
selects among k, :math:`\sum_i p_i \, t_{(i)}`, where :math:`t_{(i)}` is the test score of the seed
ranked :math:`i` by validation. Quantiles (the 10-90% range by default) are those of these discrete
distributions (numpy's ``"inverted_cdf"``: the smallest value whose cumulative weight reaches ``q``).

**Optimism.** The winner's validation score is the minimum of K noisy numbers, so it flatters the
winner; its test score does not. :func:`selection_optimism` reports both against the mean test score
of all seeds.

**Still improving.** :func:`still_improving` flags a seed whose best evaluation lies in the last
``fraction`` of its training: its rank reflects the budget, not the landscape.

**Critical points.** :func:`classify_point` calls a point a minimum or a saddle only when it is
near-critical, :math:`\|\nabla \mathcal{R}\| \le` ``grad_tol``; otherwise it is ``"not critical yet"``.

Example:
    >>> from lightning_landscape.multiseed.selection import best_of_k
    >>> curve = best_of_k([0.3, 0.1, 0.2], mode="min")
    >>> [round(v, 4) for v in curve.expected]  # k = 1, 2, 3
    [0.2, 0.1333, 0.1]
    >>> curve.q_high[0], curve.q_low[-1]
    (0.3, 0.1)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

from lightning_landscape.multiseed._checks import check_confidence, check_fraction, check_mode, check_scores

Mode = Literal["min", "max"]
PointKind = Literal["minimum", "saddle", "not critical yet", "unknown"]

#: The default share of training at the end within which a best score marks a seed "still improving".
STILL_IMPROVING_FRACTION = 0.1
#: The rows the CLI table and the study print (K itself is always added).
TABLE_KS = (1, 2, 5, 10)


def selection_weights(num_seeds: int, k: int) -> list[float]:
    """``P(the seed ranked i of K is the best of k drawn at random)`` for ``i = 1..K`` (index ``i - 1``).

    Raises:
        ValueError: unless ``1 <= k <= num_seeds``.

    Example:
        >>> selection_weights(4, 2)
        [0.5, 0.3333333333333333, 0.16666666666666666, 0.0]
    """
    if isinstance(num_seeds, bool) or not isinstance(num_seeds, int) or num_seeds < 1:
        raise ValueError(f"`num_seeds` must be an int >= 1, got {num_seeds!r}")
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= num_seeds:
        raise ValueError(f"`k` must be an int in [1, {num_seeds}], got {k!r}")
    total = math.comb(num_seeds, k)
    # Exact integers, one correctly rounded division each: no cancellation even for K in the thousands.
    return [math.comb(num_seeds - i, k - 1) / total for i in range(1, num_seeds + 1)]


def _weighted_quantile(values: Sequence[float], weights: Sequence[float], q: float) -> float:
    """numpy's ``inverted_cdf`` quantile of a discrete distribution: the smallest value with CDF >= q."""
    pairs = sorted(zip(values, weights, strict=True))
    cumulative = 0.0
    for value, weight in pairs:
        cumulative += weight
        # The weights sum to 1 up to rounding; a relative slack keeps q = 1 and exact ties on the right side.
        if cumulative >= q * (1 - 1e-12):
            return value
    return pairs[-1][0]


@dataclass(frozen=True)
class BestOfK:
    """The expected best of k seeds drawn at random from K, for ``k = 1..K`` (index ``k - 1``).

    Attributes:
        mode: ``"min"`` or ``"max"``: what "best" means.
        ks: ``[1, ..., K]``.
        expected: expected best validation score of k seeds.
        q_low: the ``quantiles[0]`` quantile of the best of k (10% by default).
        q_high: the ``quantiles[1]`` quantile of the best of k (90% by default).
        quantiles: the two probabilities of ``q_low``/``q_high``.
        expected_test: expected test score of the seed that validation selects among k (``None``
            without test scores).
        test_low: its ``quantiles[0]`` quantile (``None`` without test scores).
        test_high: its ``quantiles[1]`` quantile (``None`` without test scores).
        confidence: the nominal coverage of the band on ``expected`` (``None``: no band).
        expected_low: the band's lower end per k (:func:`~.statistics.best_of_k_band`; ``None`` without a
            band; the better end's entry is ``None`` where no finite bound exists, always at ``k = K``).
        expected_high: the band's upper end per k.
    """

    mode: Mode
    ks: list[int]
    expected: list[float]
    q_low: list[float]
    q_high: list[float]
    quantiles: tuple[float, float] = (0.1, 0.9)
    expected_test: list[float] | None = None
    test_low: list[float] | None = None
    test_high: list[float] | None = None
    confidence: float | None = None
    expected_low: list[float | None] | None = None
    expected_high: list[float | None] | None = None

    def at(self, k: int) -> dict[str, float | None]:
        """The row of ``k``: expected best, its range, its band and (if known) the expected test score."""
        if not 1 <= k <= len(self.ks):
            raise ValueError(f"`k` must be in [1, {len(self.ks)}], got {k!r}")
        i = k - 1
        return {
            "k": k,
            "expected": self.expected[i],
            "q_low": self.q_low[i],
            "q_high": self.q_high[i],
            "expected_test": None if self.expected_test is None else self.expected_test[i],
            "expected_low": None if self.expected_low is None else self.expected_low[i],
            "expected_high": None if self.expected_high is None else self.expected_high[i],
        }

    def table_ks(self) -> list[int]:
        """The k shown in tables: 1, 2, 5, 10 where at most K, and K itself."""
        big_k = len(self.ks)
        return sorted({k for k in TABLE_KS if k <= big_k} | {big_k})

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BestOfK:
        known = set(cls.__dataclass_fields__)
        kwargs = {k: v for k, v in data.items() if k in known}
        if "quantiles" in kwargs:
            kwargs["quantiles"] = tuple(kwargs["quantiles"])
        return cls(**kwargs)


def rank_by_validation(scores: Sequence[float], mode: Mode = "min") -> list[int]:
    """Indices of ``scores`` best first; ties keep their order (the selection's tie rule).

    Example:
        >>> rank_by_validation([0.2, 0.1, 0.2, 0.05])
        [3, 1, 0, 2]
    """
    check_mode(mode)
    sign = 1.0 if mode == "min" else -1.0
    return sorted(range(len(scores)), key=lambda i: (sign * scores[i], i))


def best_of_k(
    scores: Sequence[float],
    mode: Mode = "min",
    test_scores: Sequence[float] | None = None,
    quantiles: tuple[float, float] = (0.1, 0.9),
    confidence: float | None = None,
) -> BestOfK:
    """The exact best-of-k curve of K finished seeds (see the module docstring for the formula).

    Args:
        scores: the K validation scores (the selection's monitor), finite.
        mode: ``"min"`` (lower is better) or ``"max"``.
        test_scores: the same seeds' test scores, in the same order, to get the expected test score of
            the validation-selected seed among k; ``None`` to skip.
        quantiles: the two probabilities of the reported range, ``0 <= low <= high <= 1``.
        confidence: the coverage of a band on the expected best of k, in ``(0, 1)`` (a studentized
            bootstrap over seeds, :func:`~.statistics.best_of_k_band`, with its defaults); ``None`` for no
            band.

    Returns:
        A :class:`BestOfK` for ``k = 1..K``.

    Raises:
        ValueError: for an empty or non-finite ``scores``, a ``test_scores`` of another length, an unknown
            ``mode``, bad ``quantiles`` or a ``confidence`` outside ``(0, 1)``.

    Example:
        >>> curve = best_of_k([1.0, 3.0], test_scores=[2.0, 2.5])
        >>> curve.expected, curve.expected_test
        ([2.0, 1.0], [2.25, 2.0])
        >>> banded = best_of_k([0.3, 0.1, 0.2, 0.25], confidence=0.9)
        >>> banded.expected_low[0] < banded.expected[0] < banded.expected_high[0]
        True
    """
    check_mode(mode)
    vals = check_scores("scores", scores)
    if not vals:
        raise ValueError("`scores` is empty: best-of-k needs at least one finished seed")
    tests = None if test_scores is None else check_scores("test_scores", test_scores)
    if tests is not None and len(tests) != len(vals):
        raise ValueError(f"`test_scores` has {len(tests)} values for {len(vals)} `scores`; give one per seed")
    if not (isinstance(quantiles, (tuple, list)) and len(quantiles) == 2):
        raise ValueError(f"`quantiles` must be a pair (low, high), got {quantiles!r}")
    for q in quantiles:
        check_fraction("quantiles", q)
    lo_q, hi_q = float(quantiles[0]), float(quantiles[1])
    if lo_q > hi_q:
        raise ValueError(f"`quantiles` must be ordered (low <= high), got {quantiles!r}")
    conf = None if confidence is None else check_confidence("confidence", confidence)

    order = rank_by_validation(vals, mode)
    ranked = [vals[i] for i in order]
    ranked_test = None if tests is None else [tests[i] for i in order]
    # "best" lies at the low end for min and the high end for max: the reported range is of the values.
    ks = list(range(1, len(vals) + 1))
    expected, q_low, q_high = [], [], []
    e_test: list[float] = []
    t_low: list[float] = []
    t_high: list[float] = []
    for k in ks:
        w = selection_weights(len(vals), k)
        expected.append(math.fsum(p * s for p, s in zip(w, ranked, strict=True)))
        q_low.append(_weighted_quantile(ranked, w, lo_q))
        q_high.append(_weighted_quantile(ranked, w, hi_q))
        if ranked_test is not None:
            e_test.append(math.fsum(p * t for p, t in zip(w, ranked_test, strict=True)))
            t_low.append(_weighted_quantile(ranked_test, w, lo_q))
            t_high.append(_weighted_quantile(ranked_test, w, hi_q))
    has_test = ranked_test is not None
    band_low: list[float | None] | None = None
    band_high: list[float | None] | None = None
    if conf is not None:
        # Imported here: statistics builds on this module (its weights, its checks).
        from lightning_landscape.multiseed.statistics import best_of_k_band

        band_low, band_high = best_of_k_band(vals, mode, conf)
    return BestOfK(
        mode=mode,
        ks=ks,
        expected=expected,
        q_low=q_low,
        q_high=q_high,
        quantiles=(lo_q, hi_q),
        expected_test=e_test if has_test else None,
        test_low=t_low if has_test else None,
        test_high=t_high if has_test else None,
        confidence=conf,
        expected_low=band_low,
        expected_high=band_high,
    )


@dataclass(frozen=True)
class SelectionOptimism:
    r"""How much the winner's validation score flatters it, signed so that positive means "flattered".

    With :math:`\sigma = +1` for ``mode="min"`` and :math:`-1` for ``"max"``, :math:`v^\star, t^\star` the
    selected seed's validation and test scores and :math:`\bar t` the mean test score of all seeds:

    .. math::

        \text{optimism} = \sigma (t^\star - v^\star), \quad
        \text{apparent gain} = \sigma (\bar t - v^\star), \quad
        \text{test gain} = \sigma (\bar t - t^\star) .

    The apparent gain is what validation promises for selecting; the test gain is what the held-out set
    confirms; their difference is the optimism.

    Attributes:
        val_score: :math:`v^\star`.
        test_score: :math:`t^\star`.
        mean_test_score: :math:`\bar t`.
        optimism: :math:`\sigma (t^\star - v^\star)`.
        apparent_gain: :math:`\sigma (\bar t - v^\star)`.
        test_gain: :math:`\sigma (\bar t - t^\star)`.
    """

    val_score: float
    test_score: float
    mean_test_score: float
    optimism: float
    apparent_gain: float
    test_gain: float

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def selection_optimism(
    selected_val: float, selected_test: float, all_test: Sequence[float], mode: Mode = "min"
) -> SelectionOptimism:
    """The optimism of selecting on validation (see :class:`SelectionOptimism`).

    Raises:
        ValueError: for an unknown ``mode``, a non-finite score or an empty ``all_test``.

    Example:
        >>> o = selection_optimism(0.10, 0.14, [0.14, 0.20, 0.26])
        >>> round(o.optimism, 6), round(o.apparent_gain, 6), round(o.test_gain, 6)
        (0.04, 0.1, 0.06)
    """
    check_mode(mode)
    (v, t) = check_scores("selected scores", [selected_val, selected_test])
    tests = check_scores("all_test", all_test)
    if not tests:
        raise ValueError("`all_test` is empty: give the test score of every tested seed")
    sign = 1.0 if mode == "min" else -1.0
    mean = math.fsum(tests) / len(tests)
    return SelectionOptimism(
        val_score=v,
        test_score=t,
        mean_test_score=mean,
        optimism=sign * (t - v),
        apparent_gain=sign * (mean - v),
        test_gain=sign * (mean - t),
    )


def still_improving(best_at: int, last_at: int, fraction: float = STILL_IMPROVING_FRACTION) -> bool:
    """``True`` when the best evaluation (step or epoch ``best_at``) lies in the last ``fraction`` of
    training, which ended at ``last_at``: ``best_at >= (1 - fraction) * last_at``.

    Args:
        best_at: when the best monitored value was reached (step or epoch, counted like ``last_at``).
        last_at: when training ended.
        fraction: the final share of training that counts as "the end".

    Raises:
        ValueError: for negative counts, ``best_at > last_at`` or a ``fraction`` outside ``[0, 1]``.

    Example:
        >>> still_improving(950, 1000), still_improving(899, 1000), still_improving(900, 1000)
        (True, False, True)
    """
    for name, value in (("best_at", best_at), ("last_at", last_at)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"`{name}` must be an int >= 0, got {value!r}")
    if best_at > last_at:
        raise ValueError(f"`best_at`={best_at} lies after the end of training `last_at`={last_at}")
    check_fraction("fraction", fraction)
    return best_at >= (1.0 - fraction) * last_at


def classify_point(
    grad_norm: float, eig_min: float, eig_max: float, grad_tol: float, eig_rtol: float
) -> PointKind:
    """The kind of an end point from its full gradient norm and its extreme Hessian eigenvalues.

    * ``"not critical yet"`` when ``grad_norm > grad_tol``: curvature says nothing about a point that
      is still moving;
    * ``"minimum"`` when near-critical and ``eig_min >= -eig_rtol * |eig_max|`` (flat directions within
      the relative tolerance count as non-negative);
    * ``"saddle"`` when near-critical with a clearly negative eigenvalue;
    * ``"unknown"`` when a needed number is missing (NaN).

    Raises:
        ValueError: for a negative or non-finite ``grad_tol``/``eig_rtol``.

    Example:
        >>> classify_point(1e-5, -1e-6, 2.0, grad_tol=1e-3, eig_rtol=1e-3)
        'minimum'
        >>> classify_point(1e-5, -0.5, 2.0, grad_tol=1e-3, eig_rtol=1e-3)
        'saddle'
        >>> classify_point(0.1, 0.3, 2.0, grad_tol=1e-3, eig_rtol=1e-3)
        'not critical yet'
    """
    for name, tol in (("grad_tol", grad_tol), ("eig_rtol", eig_rtol)):
        if (
            isinstance(tol, bool)
            or not isinstance(tol, (int, float))
            or not (math.isfinite(tol) and tol >= 0)
        ):
            raise ValueError(f"`{name}` must be a finite number >= 0, got {tol!r}")
    if math.isnan(grad_norm):
        return "unknown"
    if grad_norm > grad_tol:
        return "not critical yet"
    if math.isnan(eig_min) or math.isnan(eig_max):
        return "unknown"
    return "minimum" if eig_min >= -eig_rtol * abs(eig_max) else "saddle"
