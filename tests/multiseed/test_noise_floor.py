"""The test-set noise floor: the paired bootstrap against the analytic paired standard error, the
binomial bound against its formula, verdicts on constructed predictors."""

from __future__ import annotations

import json
import math
from statistics import NormalDist

import numpy as np
import pytest

from lightning_landscape.multiseed.noise_floor import NoiseFloor, binomial_noise_floor, noise_floor


def test_two_identical_predictors_have_no_lead_and_are_not_beyond_noise():
    values = np.random.default_rng(0).integers(0, 2, size=500).tolist()
    floor = noise_floor(values, values, kind="correct")
    assert (floor.lead, floor.half_width, floor.verdict) == (0.0, 0.0, "not beyond noise")
    losses = np.random.default_rng(1).exponential(size=300).tolist()
    assert noise_floor(losses, losses).verdict == "not beyond noise"


def test_ten_points_more_on_2000_examples_is_beyond_noise():
    rng = np.random.default_rng(2)
    other = (rng.random(2000) < 0.7).astype(int)
    winner = other.copy()
    wrong = np.flatnonzero(winner == 0)
    winner[rng.choice(wrong, size=200, replace=False)] = 1  # right on 10% more of the examples
    floor = noise_floor(winner.tolist(), other.tolist(), kind="correct", n_boot=1000)
    assert floor.lead == pytest.approx(0.1, abs=1e-12)
    assert floor.verdict == "beyond noise" and floor.n_test == 2000
    # Swapped, the "winner" trails: a negative lead is never beyond noise.
    assert noise_floor(other.tolist(), winner.tolist(), kind="correct").verdict == "not beyond noise"


@pytest.mark.parametrize(("p10", "p01"), [(0.06, 0.05), (0.10, 0.02), (0.03, 0.03)])
def test_bootstrap_half_width_matches_the_analytic_paired_standard_error(p10, p01):
    # Pairs (winner right, other right) with P(1, 0) = p10, P(0, 1) = p01: d = w - o has
    # Var(d) = p10 + p01 - (p10 - p01)^2, so the half-width is z * sqrt(Var(d) / n).
    n = 5000
    u = np.random.default_rng(3).random(n)
    winner = np.where(u < p10, 1, np.where(u < p10 + p01, 0, (u > 0.6).astype(int)))
    other = np.where(u < p10, 0, np.where(u < p10 + p01, 1, winner))
    floor = noise_floor(winner.tolist(), other.tolist(), kind="correct", confidence=0.9, seed=1)
    analytic = NormalDist().inv_cdf(0.95) * math.sqrt((p10 + p01 - (p10 - p01) ** 2) / n)
    assert floor.half_width == pytest.approx(analytic, rel=0.15)
    # The unpaired binomial bound ignores the agreement on the other examples: it is wider.
    unpaired = binomial_noise_floor(float(winner.mean()), float(other.mean()), n_test=n)
    assert unpaired.half_width > 1.5 * floor.half_width


def test_loss_mode_and_many_distinct_values_use_the_index_bootstrap():
    rng = np.random.default_rng(4)
    other = rng.exponential(size=800)
    winner = other - 0.3 + 0.1 * rng.standard_normal(800)  # lower loss: a clear lead of 0.3
    floor = noise_floor(winner.tolist(), other.tolist(), kind="loss", n_boot=500)
    d = other - winner
    analytic = NormalDist().inv_cdf(0.95) * d.std() / math.sqrt(d.size)
    assert floor.lead == pytest.approx(d.mean(), rel=1e-12)
    assert floor.half_width == pytest.approx(analytic, rel=0.15)
    assert floor.verdict == "beyond noise"
    # mode="max" for a loss flips the sign: the "winner" now trails.
    assert noise_floor(winner.tolist(), other.tolist(), mode="max").lead == pytest.approx(-d.mean())


def test_binomial_bound_is_agresti_caffo():
    floor = binomial_noise_floor(0.9, 0.88, n_test=1000, confidence=0.95)
    p1, p2 = 901 / 1002, 881 / 1002
    want = NormalDist().inv_cdf(0.975) * math.sqrt((p1 * (1 - p1) + p2 * (1 - p2)) / 1002)
    assert floor.half_width == pytest.approx(want, rel=1e-12)
    assert floor.lead == pytest.approx(0.02) and floor.verdict == "not beyond noise"  # 0.02 < 0.027
    assert binomial_noise_floor(0.92, 0.88, n_test=1000, confidence=0.95).verdict == "beyond noise"
    assert binomial_noise_floor(1.0, 1.0, n_test=10).half_width > 0  # no zero-width band at the edge


def test_verdict_lines_and_plain_dicts():
    floor = NoiseFloor(0.008, 0.011, "not beyond noise", 0.9, "correct", "paired bootstrap", 10000)
    assert floor.verdict_line() == "winner's test lead 0.8 points; test-set noise +-1.1: not beyond noise"
    loss = NoiseFloor(0.0123, 0.00456, "beyond noise", 0.9, "loss", "paired bootstrap", 500)
    assert loss.verdict_line() == "winner's test lead 0.0123; test-set noise +-0.00456: beyond noise"
    unknown = NoiseFloor.unknown()
    assert unknown.verdict == "unknown"
    assert unknown.verdict_line() == "winner's test lead unknown; test-set noise unknown"
    assert json.loads(json.dumps(floor.to_dict()))["half_width"] == 0.011


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: noise_floor([1, 0], [1]), ValueError, "same test examples"),
        (lambda: noise_floor([], []), ValueError, "non-empty"),
        (lambda: noise_floor([0.5, 1], [1, 0], kind="correct"), ValueError, "0/1"),
        (lambda: noise_floor([1, 0], [1, 0], kind="accuracy"), ValueError, "`kind`"),
        (lambda: noise_floor([1, 0], [1, 0], kind="correct", mode="min"), ValueError, "`mode`"),
        (lambda: noise_floor([1.0, math.nan], [1.0, 0.0]), ValueError, "finite"),
        (lambda: noise_floor("10", "01"), TypeError, "winner_values"),
        (lambda: noise_floor([1, 0], [1, 0], confidence=1.5), ValueError, "`confidence`"),
        (lambda: noise_floor([1, 0], [1, 0], n_boot=0), ValueError, "`n_boot`"),
        (lambda: binomial_noise_floor(93.0, 92.0, 100), ValueError, "`acc_winner`"),
        (lambda: binomial_noise_floor(0.9, 0.8, 0), ValueError, "`n_test`"),
    ],
)
def test_bad_input_is_refused_by_name(call, error, match):
    with pytest.raises(error, match=match):
        call()
