"""The few distribution functions the seed statistics need, in plain Python (no scipy dependency).

Student's t and chi-square quantiles invert their CDFs, which are regularized incomplete beta and gamma
functions evaluated by the classical series and Lentz continued fractions (Numerical Recipes, 3rd ed.,
6.2 and 6.4); bisection in float64 then finds the quantile to a relative ``1e-12``. The binomial
CDF at ``p = 1/2`` is an exact integer sum. The normal quantile is the standard library's.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from statistics import NormalDist

_EPS = 1e-15
_TINY = 1e-300
_MAX_ITER = 500


def normal_quantile(p: float) -> float:
    """The ``p`` quantile of the standard normal distribution.

    Example:
        >>> round(normal_quantile(0.95), 6)
        1.644854
    """
    return NormalDist().inv_cdf(p)


def _lentz(coefficient: Callable[[int], tuple[float, float]]) -> float:
    """Evaluate the continued fraction ``b0 + a1/(b1 + a2/(b2 + ...))`` by the modified Lentz method."""
    b0 = coefficient(0)[1]
    f = b0 if b0 != 0 else _TINY
    c, d = f, 0.0
    for m in range(1, _MAX_ITER):
        a, b = coefficient(m)
        d = b + a * d
        d = 1.0 / (d if abs(d) > _TINY else _TINY)
        c = b + a / c
        c = c if abs(c) > _TINY else _TINY
        delta = c * d
        f *= delta
        if abs(delta - 1.0) < _EPS:
            break
    return f


def _incomplete_beta(x: float, a: float, b: float) -> float:
    """The regularized incomplete beta function ``I_x(a, b)``."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    if x > (a + 1.0) / (a + b + 2.0):  # the continued fraction converges fast only below this point
        return 1.0 - _incomplete_beta(1.0 - x, b, a)
    log_front = a * math.log(x) + b * math.log1p(-x) - math.log(a)
    log_front -= math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)

    def coefficient(m: int) -> tuple[float, float]:
        if m == 0:
            return 0.0, 1.0
        j = m // 2
        if m % 2:
            return -(a + j) * (a + b + j) * x / ((a + 2 * j) * (a + 2 * j + 1)), 1.0
        return j * (b - j) * x / ((a + 2 * j - 1) * (a + 2 * j)), 1.0

    return math.exp(log_front) / _lentz(coefficient)


def _incomplete_gamma(a: float, x: float) -> float:
    """The regularized lower incomplete gamma function ``P(a, x)``."""
    if x <= 0.0:
        return 0.0
    log_front = a * math.log(x) - x - math.lgamma(a)
    if x < a + 1.0:  # the series
        term = total = 1.0 / a
        n = a
        for _ in range(_MAX_ITER):
            n += 1.0
            term *= x / n
            total += term
            if abs(term) < abs(total) * _EPS:
                break
        return total * math.exp(log_front)

    def coefficient(m: int) -> tuple[float, float]:  # Q(a, x) = e^.. / (x + 1 - a - 1(1-a)/(x + 3 - a - ...))
        if m == 0:
            return 0.0, x + 1.0 - a
        return -m * (m - a), x + 2.0 * m + 1.0 - a

    return 1.0 - math.exp(log_front) / _lentz(coefficient)


def _bisect(cdf: Callable[[float], float], p: float, low: float, high: float) -> float:
    """The ``x`` with ``cdf(x) = p`` for an increasing ``cdf``, from ``[low, high]`` (widened as needed)."""
    while cdf(high) < p:
        low, high = high, 2.0 * high
    for _ in range(200):
        mid = 0.5 * (low + high)
        if cdf(mid) < p:
            low = mid
        else:
            high = mid
        if high - low <= 1e-12 * max(abs(high), 1e-300):
            break
    return 0.5 * (low + high)


def _check_p(p: float) -> None:
    if not 0.0 < p < 1.0:
        raise ValueError(f"a quantile's probability must lie in (0, 1), got {p!r}")


def t_quantile(p: float, df: int) -> float:
    """The ``p`` quantile of Student's t distribution with ``df`` degrees of freedom.

    Example:
        >>> round(t_quantile(0.95, 19), 4)
        1.7291
    """
    _check_p(p)
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    if p == 0.5:
        return 0.0

    def cdf(t: float) -> float:
        return 1.0 - 0.5 * _incomplete_beta(df / (df + t * t), 0.5 * df, 0.5)

    return _bisect(cdf, p, 0.0, 4.0)


def chi2_quantile(p: float, df: int) -> float:
    """The ``p`` quantile of the chi-square distribution with ``df`` degrees of freedom.

    Example:
        >>> round(chi2_quantile(0.05, 19), 4), round(chi2_quantile(0.95, 19), 4)
        (10.117, 30.1435)
    """
    _check_p(p)
    return _bisect(lambda x: _incomplete_gamma(0.5 * df, 0.5 * x), p, 0.0, float(df) + 10.0)


def binomial_half_cdf(k: int, n: int) -> float:
    """``P(X <= k)`` for ``X ~ Binomial(n, 1/2)``, exactly (integer sums, one rounding).

    Example:
        >>> binomial_half_cdf(1, 3)
        0.5
    """
    if k < 0:
        return 0.0
    return sum(math.comb(n, i) for i in range(min(k, n) + 1)) / 2**n
