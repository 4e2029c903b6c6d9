"""Bands on the expected best of k and intervals on mean, median, std: coverage by simulation from known
distributions (the true expected best of k in closed form or by quadrature), the jackknife against brute
force, and the wiring into BestOfK."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from lightning_landscape.multiseed.selection import BestOfK, best_of_k
from lightning_landscape.multiseed.statistics import (
    _band_max,
    _jackknife_se,
    _weights,
    best_of_k_band,
    median_order_statistics,
    summary_intervals,
)

K = 20
STUDIES = 400
K_CHECKED = K // 4


def _normal_expected_max(k: int) -> float:
    """E[max of k standard normals] = int x k phi(x) Phi(x)^(k-1) dx, by the trapezoid rule."""
    x = np.linspace(-12.0, 12.0, 48_001)
    phi = np.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)
    cdf = 0.5 * (1.0 + np.frompyfunc(math.erf, 1, 1)(x / math.sqrt(2)).astype(np.float64))
    return float(np.trapezoid(x * k * phi * cdf ** (k - 1), x))


def test_quadrature_of_the_normal_truth_matches_closed_forms():
    # E[max of 2] = 1/sqrt(pi), E[max of 3] = 3/(2 sqrt(pi)) (order statistics of the normal).
    assert _normal_expected_max(1) == pytest.approx(0.0, abs=1e-12)
    assert _normal_expected_max(2) == pytest.approx(1 / math.sqrt(math.pi), rel=1e-10)
    assert _normal_expected_max(3) == pytest.approx(1.5 / math.sqrt(math.pi), rel=1e-10)


def _coverage(data: np.ndarray, truth: np.ndarray, method: str = "studentized") -> np.ndarray:
    """Share of studies (rows of ``data``, mode "max") whose 90% band covers ``truth[k - 1]``."""
    rng = np.random.default_rng(123)
    hits = np.zeros(K_CHECKED)
    for start in range(0, len(data), 100):
        low, high = _band_max(data[start : start + 100], 0.9, method, 2000, rng, K_CHECKED)  # type: ignore[arg-type]
        hits += ((low <= truth) & (truth <= high)).sum(axis=0)
    return hits / len(data)


# The measured coverages (also in the statistics module docstring), k = 1..5, 400 studies of K = 20:
#   normal, max:       0.895 0.910 0.902 0.900 0.885   (percentile: 0.875 0.852 0.845 0.822 0.810)
#   exponential, max:  0.910 0.902 0.895 0.888 0.882   (percentile: 0.860 0.810 0.788 0.750 0.710)
#   exponential, min:  0.890 0.900 0.905 0.900 0.890   (percentile: 0.860 0.885 0.875 0.868 0.865)
@pytest.mark.parametrize("case", ["normal-max", "exponential-max", "exponential-min"])
def test_studentized_band_covers_the_true_expected_best_of_k(case):
    rng = np.random.default_rng({"normal-max": 1, "exponential-max": 2, "exponential-min": 3}[case])
    ks = np.arange(1, K_CHECKED + 1)
    if case == "normal-max":
        data = rng.standard_normal((STUDIES, K))
        truth = np.array([_normal_expected_max(k) for k in ks])
    elif case == "exponential-max":
        data = rng.exponential(size=(STUDIES, K))
        truth = np.cumsum(1.0 / ks)  # E[max of k Exp(1)] = H_k
    else:  # min of k Exp(1) is Exp(k): E = 1/k; mode "min" is "max" of the negated scores
        data = -rng.exponential(size=(STUDIES, K))
        truth = -1.0 / ks
    coverage = _coverage(data, truth)
    print(case, np.round(coverage, 3))
    assert np.all(coverage >= 0.85), coverage
    assert np.all(coverage <= 0.96), coverage  # not a uselessly wide band either


def test_percentile_bootstrap_undercovers_which_is_why_the_band_is_studentized():
    rng = np.random.default_rng(2)
    data = rng.exponential(size=(STUDIES, K))
    coverage = _coverage(data, np.cumsum(1.0 / np.arange(1, K_CHECKED + 1)), method="percentile")
    print("percentile, exponential-max", np.round(coverage, 3))
    assert coverage[-1] < 0.85


def test_public_band_is_the_simulated_core_and_min_mirrors_max():
    x = np.random.default_rng(0).normal(size=K)
    low, high = best_of_k_band(x.tolist(), "max", 0.9, seed=5)
    core_low, core_high = _band_max(x[None], 0.9, "studentized", 2000, np.random.default_rng(5), K)
    for public, core in ((low, core_low[0]), (high, core_high[0])):
        as_array = np.array([np.nan if v is None else v for v in public])
        np.testing.assert_allclose(as_array, np.where(np.isfinite(core), core, np.nan), rtol=1e-12)
    mlow, mhigh = best_of_k_band((-x).tolist(), "min", 0.9, seed=5)
    for a, b in zip(mlow, high, strict=True):
        assert (a is None and b is None) or a == pytest.approx(-b, rel=1e-12)
    for a, b in zip(mhigh, low, strict=True):
        assert (a is None and b is None) or a == pytest.approx(-b, rel=1e-12)


def test_band_brackets_the_estimate_and_is_equivariant_under_shift_and_scale():
    scores = np.random.default_rng(4).gamma(2.0, size=12)
    point = best_of_k(scores.tolist(), mode="min").expected
    low, high = best_of_k_band(scores.tolist(), "min", 0.9, seed=1)
    assert low[-1] is None and high[-1] == high[-2]  # k = K: no jackknife; the worse end carries over
    for k in range(K_CHECKED):
        assert low[k] is not None and high[k] is not None
        assert low[k] < point[k] < high[k]
    moved_low, moved_high = best_of_k_band((3.0 * scores + 100.0).tolist(), "min", 0.9, seed=1)
    for k in range(K_CHECKED):
        assert moved_low[k] == pytest.approx(3.0 * low[k] + 100.0, rel=1e-9)
        assert moved_high[k] == pytest.approx(3.0 * high[k] + 100.0, rel=1e-9)


def test_band_of_identical_scores_collapses_and_deterministic_in_seed():
    assert best_of_k_band([0.5] * 4, "max") == ([0.5, 0.5, 0.5, 0.5], [0.5, 0.5, 0.5, None])
    scores = [0.3, 0.1, 0.2, 0.25, 0.15, 0.4]
    assert best_of_k_band(scores, seed=3) == best_of_k_band(scores, seed=3)
    assert best_of_k_band(scores, seed=3) != best_of_k_band(scores, seed=4)


def test_jackknife_matches_brute_force_leave_one_out():
    rng = np.random.default_rng(7)
    for scores in (rng.normal(size=9), np.array([1.0, 2.0, 2.0, 3.0, 3.0, 3.0, 0.5])):
        n = len(scores)
        ranked = np.sort(scores)[::-1]
        got = _jackknife_se(ranked, _weights(n - 1, n - 1))
        loo = np.array([best_of_k(np.delete(scores, j).tolist(), mode="max").expected for j in range(n)])
        want = np.sqrt((n - 1) / n * ((loo - loo.mean(axis=0)) ** 2).sum(axis=0))
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"scores": []}, ValueError, "empty"),
        ({"scores": [0.1, math.inf]}, ValueError, "finite"),
        ({"scores": "0.1"}, TypeError, "scores"),
        ({"scores": [0.1], "mode": "best"}, ValueError, "mode"),
        ({"scores": [0.1], "confidence": 1.0}, ValueError, r"`confidence` must be a number in \(0, 1\)"),
        ({"scores": [0.1], "confidence": True}, ValueError, "confidence"),
        ({"scores": [0.1], "method": "bca"}, ValueError, "method"),
        ({"scores": [0.1], "n_boot": 5}, ValueError, "n_boot"),
    ],
)
def test_band_refuses_bad_input_naming_it(kwargs, error, match):
    with pytest.raises(error, match=match):
        best_of_k_band(**kwargs)


def test_best_of_k_carries_the_band_and_round_trips():
    scores = [0.3, 0.1, 0.2, 0.25, 0.15]
    plain = best_of_k(scores)
    assert plain.confidence is None and plain.expected_low is None and plain.at(1)["expected_low"] is None
    curve = best_of_k(scores, confidence=0.8)
    low, high = best_of_k_band(scores, "min", 0.8)
    assert (curve.confidence, curve.expected_low, curve.expected_high) == (0.8, low, high)
    assert curve.expected == plain.expected
    assert curve.at(2)["expected_low"] == low[1] and curve.at(2)["expected_high"] == high[1]
    again = BestOfK.from_dict(json.loads(json.dumps(curve.to_dict())))
    assert again == curve
    old = {
        k: v for k, v in plain.to_dict().items() if k not in ("confidence", "expected_low", "expected_high")
    }
    assert BestOfK.from_dict(old) == plain  # records written before the band still load
    with pytest.raises(ValueError, match="`confidence`"):
        best_of_k(scores, confidence=0)


# --- mean, median, standard deviation -----------------------------------------------------------------


def test_summary_intervals_cover_at_the_nominal_rate():
    rng = np.random.default_rng(11)
    hits = {"mean": 0, "median": 0, "std": 0, "median-exp": 0}
    for _ in range(STUDIES):
        normal = summary_intervals(rng.normal(2.0, 3.0, size=K).tolist(), 0.9)
        hits["mean"] += normal.mean.low <= 2.0 <= normal.mean.high
        hits["median"] += normal.median.low <= 2.0 <= normal.median.high
        hits["std"] += normal.std.low <= 3.0 <= normal.std.high
        skewed = summary_intervals(rng.exponential(size=K).tolist(), 0.9)
        hits["median-exp"] += skewed.median.low <= math.log(2) <= skewed.median.high
    coverage = {k: v / STUDIES for k, v in hits.items()}
    print(coverage)
    assert all(c >= 0.85 for c in coverage.values()), coverage


def test_summary_intervals_match_textbook_values():
    scipy_stats = pytest.importorskip("scipy.stats")
    x = np.random.default_rng(2).normal(size=15)
    s = summary_intervals(x.tolist(), 0.95)
    sd = x.std(ddof=1)
    t = scipy_stats.t.ppf(0.975, 14)
    assert (s.mean.low, s.mean.high) == pytest.approx(
        (x.mean() - t * sd / 15**0.5, x.mean() + t * sd / 15**0.5)
    )
    chi_hi, chi_lo = scipy_stats.chi2.ppf(0.975, 14), scipy_stats.chi2.ppf(0.025, 14)
    assert (s.std.low, s.std.high) == pytest.approx((sd * (14 / chi_hi) ** 0.5, sd * (14 / chi_lo) ** 0.5))
    assert s.median.estimate == np.median(x) and s.std.estimate == pytest.approx(sd)
    rank, level = median_order_statistics(15, 0.95)
    assert (s.median.low, s.median.high) == (np.sort(x)[rank - 1], np.sort(x)[15 - rank])
    assert level == pytest.approx(1 - 2 * scipy_stats.binom.cdf(rank - 1, 15, 0.5), rel=1e-12)
    assert level >= 0.95 > 1 - 2 * scipy_stats.binom.cdf(rank, 15, 0.5)  # the tightest that reaches 95%


def test_median_ranks_by_brute_force_enumeration():
    for n in (1, 2, 5, 8, 11):
        # P(Bin(n, 1/2) <= m) by counting all 2^n sign patterns.
        counts = np.bincount([bin(i).count("1") for i in range(2**n)], minlength=n + 1)
        cdf = np.cumsum(counts) / 2**n
        rank, level = median_order_statistics(n, 0.9)
        assert level == pytest.approx(1 - 2 * cdf[rank - 1], abs=1e-15)
        if level >= 0.9 and rank < (n + 1) // 2:
            assert 1 - 2 * cdf[rank] < 0.9
    assert median_order_statistics(4, 0.9) == (1, 0.875)  # too few seeds: the range, at its 87.5%


def test_summary_of_one_seed_and_bad_input():
    one = summary_intervals([0.7])
    assert (one.mean.low, one.std.low, one.median.low, one.median.high) == (None, None, 0.7, 0.7)
    assert json.loads(json.dumps(one.to_dict()))["mean"]["estimate"] == 0.7
    with pytest.raises(ValueError, match="empty"):
        summary_intervals([])
    with pytest.raises(ValueError, match="`confidence`"):
        summary_intervals([0.1, 0.2], confidence=90)
    with pytest.raises(ValueError, match="`n`"):
        median_order_statistics(0, 0.9)


def test_global_random_states_are_left_as_found():
    import random

    from lightning_landscape.multiseed.halving_simulation import halving_simulation
    from lightning_landscape.multiseed.noise_floor import noise_floor

    np_state, py_state = np.random.get_state(), random.getstate()
    best_of_k_band([0.3, 0.1, 0.2, 0.25], n_boot=50)
    noise_floor([1, 0, 1, 1], [0, 0, 1, 1], kind="correct", n_boot=50)
    halving_simulation([[3.0, 1.0], [2.0, 2.0], [1.0, 3.0]], rungs=[0], keep=0.5, mode="min", num_seeds=2)
    after = np.random.get_state()
    assert after[0] == np_state[0] and np.array_equal(after[1], np_state[1]) and after[2:] == np_state[2:]
    assert random.getstate() == py_state
