"""Independent numerical references used by several tests (scipy adaptive quadrature)."""

import math

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
