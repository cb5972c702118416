"""Independent numerical references used by several tests (scipy adaptive quadrature)."""

import math
import warnings

import numpy as np
from scipy import integrate, special


def gauss_pair(f, kaa, kbb, kab, *, smoothed=None, eps=1e-13):
    """<f(z_a) f(z_b)> by nested adaptive quadrature (or 1-D with a closed-form inner smoothing).

    z_a = sqrt(kaa) x; z_b | z_a ~ N(mu, s^2), mu = kab/kaa z_a, s^2 = kbb - kab^2/kaa.
    """
    sa = math.sqrt(kaa)
    c = kab / kaa
    s = math.sqrt(max(kbb - kab * kab / kaa, 0.0))
    phi = lambda x: math.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)

    def inner(za):
        mu = c * za
        if smoothed is not None:
            return smoothed(mu, s)
        if s == 0.0:
            return f(mu)
        val, _ = integrate.quad(lambda y: f(mu + s * y) * phi(y), -np.inf, np.inf, epsabs=eps, epsrel=eps, limit=200)
        return val

    val, _ = integrate.quad(lambda x: f(sa * x) * inner(sa * x) * phi(x), -40, 40, epsabs=eps, epsrel=eps,
                            limit=400, points=[0.0])
    return val


def relu_smoothed(mu, s):
    if s == 0:
        return max(mu, 0.0)
    r = mu / s
    return mu * special.ndtr(r) + s * math.exp(-0.5 * r * r) / math.sqrt(2 * math.pi)


def erf_smoothed(mu, s):
    return math.erf(mu / math.sqrt(1 + 2 * s * s))


def _phi(x):
    return math.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)


def quiet_quad(*args, **kwargs):
    """``scipy.integrate.quad`` without its ``IntegrationWarning`` (asked for tolerances at round-off, it warns that
    round-off stops it; the value is then good to round-off): no warning leaves the test."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", integrate.IntegrationWarning)
        return integrate.quad(*args, **kwargs)


def gauss_pair_sharp(f, kaa, kbb, kab, *, eps=1e-14):
    """<f(z_a) f(z_b)> by nested adaptive quadrature with both integrals split where their argument crosses 0
    (for large variances, where f(sqrt(K) x) turns sharply there and an unsplit rule can step over it).
    kaa > 0; the inner integral is over z_b | z_a ~ N(mu, s^2) on |y| <= 40 around its mean."""
    sa = math.sqrt(kaa)
    c = kab / kaa
    s = math.sqrt(max(kbb - kab * kab / kaa, 0.0))

    def inner(za):
        mu = c * za
        if s == 0.0:
            return f(mu)
        cross = [-mu / s] if abs(mu / s) < 40 else None
        return quiet_quad(lambda y: f(mu + s * y) * _phi(y), -40, 40, epsabs=eps, epsrel=eps, limit=500,
                          points=cross)[0]

    return quiet_quad(lambda x: f(sa * x) * inner(sa * x) * _phi(x), -40, 40, epsabs=eps, epsrel=eps, limit=500,
                      points=[0.0])[0]
