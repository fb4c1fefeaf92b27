"""Beta distribution CDF and inverse CDF in pure Python (no scipy at run time).

The ``beta`` noise schedule (Lee et al. 2024, "Beta Sampling is All You Need")
places steps at quantiles of a Beta(alpha, beta) distribution, so it needs the
inverse of the regularized incomplete beta function I_x(a, b).

* :func:`betainc` evaluates I_x(a, b) with the classical continued fraction
  (Abramowitz & Stegun 26.5.8; Press et al., *Numerical Recipes*, sec. 6.4),
  summed with the modified Lentz algorithm (Lentz 1976; Thompson & Barnett 1986).
* :func:`beta_ppf` inverts it with a bracketed Newton iteration that falls back
  to bisection whenever a Newton step leaves the bracket, so it always converges.
"""

from __future__ import annotations

import math

_TINY = 1e-300
_EPS = 1e-16


def _log_beta(a: float, b: float) -> float:
    return math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)


def _continued_fraction(a: float, b: float, x: float) -> float:
    """Value of 1 / (1 + d1/(1 + d2/(1 + ...))) for I_x(a, b), by modified Lentz.

    Coefficients (A&S 26.5.8): d_{2m+1} = -(a+m)(a+b+m)x / ((a+2m)(a+2m+1)),
    d_{2m} = m(b-m)x / ((a+2m-1)(a+2m)).
    """
    f = 1.0  # running value of the fraction 1 + d1/(1 + ...)
    c = 1.0
    d = 0.0
    for j in range(1, 10_000):
        m = j // 2
        if j % 2:  # odd term d_{2m+1}
            coef = -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))
        else:  # even term d_{2m}
            coef = m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m))
        d = 1.0 + coef * d
        d = 1.0 / (d if abs(d) > _TINY else _TINY)
        c = 1.0 + coef / c
        if abs(c) < _TINY:
            c = _TINY
        delta = c * d
        f *= delta
        if abs(delta - 1.0) < _EPS:
            break
    return 1.0 / f


def betainc(a: float, b: float, x: float) -> float:
    """Regularized incomplete beta function I_x(a, b) = CDF of Beta(a, b) at x."""
    if a <= 0 or b <= 0:
        raise ValueError("beta parameters must be positive")
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    # The fraction converges fast for x < (a+1)/(a+b+2); use I_x(a,b) = 1 - I_{1-x}(b,a) otherwise.
    if x > (a + 1.0) / (a + b + 2.0):
        return 1.0 - betainc(b, a, 1.0 - x)
    log_front = a * math.log(x) + b * math.log1p(-x) - _log_beta(a, b)
    return math.exp(log_front) / a * _continued_fraction(a, b, x)


def beta_pdf(a: float, b: float, x: float) -> float:
    """Density of Beta(a, b) at x (0 < x < 1)."""
    return math.exp((a - 1.0) * math.log(x) + (b - 1.0) * math.log1p(-x) - _log_beta(a, b))


def beta_ppf(p: float, a: float, b: float) -> float:
    """Inverse CDF (quantile) of Beta(a, b): the x in [0, 1] with I_x(a, b) = p."""
    p = float(p)
    if p <= 0.0:
        return 0.0
    if p >= 1.0:
        return 1.0
    lo, hi = 0.0, 1.0
    # Start from the small-x asymptote I_x ~ x^a / (a B(a,b)) (or its mirror), clamped into (0, 1).
    if p < 0.5:
        x = math.exp((math.log(p * a) + _log_beta(a, b)) / a)
    else:
        x = 1.0 - math.exp((math.log((1.0 - p) * b) + _log_beta(a, b)) / b)
    if not 0.0 < x < 1.0:
        x = 0.5
    for _ in range(300):
        f = betainc(a, b, x) - p
        if f == 0.0:
            return x
        if f < 0.0:
            lo = x
        else:
            hi = x
        step = f / beta_pdf(a, b, x)
        x_new = x - step
        if not lo < x_new < hi:  # Newton left the bracket: bisect instead
            x_new = 0.5 * (lo + hi)
        if abs(x_new - x) <= 1e-15 * x or hi - lo <= 1e-15 * max(lo, 1e-300):
            return x_new
        x = x_new
    return x
