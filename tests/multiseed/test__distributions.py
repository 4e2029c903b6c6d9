"""The plain-Python t, chi-square and binomial functions against closed forms and scipy."""

from __future__ import annotations

import itertools
import math

import pytest

from lightning_landscape.multiseed._distributions import (
    binomial_half_cdf,
    chi2_quantile,
    normal_quantile,
    t_quantile,
)

PS = [1e-6, 0.001, 0.025, 0.05, 0.1, 0.3, 0.5, 0.7, 0.9, 0.95, 0.975, 0.999, 1 - 1e-6]


@pytest.mark.parametrize("p", PS)
def test_quantiles_match_closed_forms(p):
    assert t_quantile(p, 1) == pytest.approx(math.tan(math.pi * (p - 0.5)), rel=1e-9, abs=1e-12)  # Cauchy
    assert t_quantile(p, 2) == pytest.approx((2 * p - 1) / math.sqrt(2 * p * (1 - p)), rel=1e-9, abs=1e-12)
    assert chi2_quantile(p, 2) == pytest.approx(-2 * math.log1p(-p), rel=1e-9)  # Exp(1/2)
    assert chi2_quantile(p, 1) == pytest.approx(normal_quantile(0.5 + p / 2) ** 2, rel=1e-8)


def test_quantiles_match_scipy():
    stats = pytest.importorskip("scipy.stats")
    for p, df in itertools.product(PS, [3, 5, 10, 19, 50, 299, 3000]):
        assert t_quantile(p, df) == pytest.approx(stats.t.ppf(p, df), rel=1e-9, abs=1e-12)
        assert chi2_quantile(p, df) == pytest.approx(stats.chi2.ppf(p, df), rel=1e-9)


def test_binomial_half_cdf_counts_exactly():
    for n in range(1, 13):
        counts = [0] * (n + 1)
        for pattern in range(2**n):
            counts[bin(pattern).count("1")] += 1
        for k in range(-1, n + 2):
            assert binomial_half_cdf(k, n) == sum(counts[: max(0, k + 1)]) / 2**n


def test_quantile_refuses_probabilities_outside_the_open_unit_interval():
    with pytest.raises(ValueError, match=r"\(0, 1\)"):
        t_quantile(1.0, 3)
    with pytest.raises(ValueError, match=r"\(0, 1\)"):
        chi2_quantile(0.0, 3)
