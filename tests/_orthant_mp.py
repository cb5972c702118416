"""High-precision reference for truncated Gaussian moments (mpmath), independent of ngp._fourpoint.

``moment(S, m, T)`` = ``E[prod_i z_i^{m_i} prod_{k in T} Theta(z_k)]`` for ``z ~ N(0, S)``, by the
direct Stein recursion ``E[z_i g] = sum_k S_ik E[d_k g]`` (delta functions condition on ``z_k = 0``)
down to orthant probabilities; the four-variable orthant probability is Plackett's integral along
the path that decouples the *first* variable only (ngp uses the path that scales all
correlations and never forms it). Everything runs in ``mp.dps``-digit arithmetic, so the
cancellations of nearly singular blocks are harmless here.
"""

from __future__ import annotations

import itertools

import mpmath as mp


def _cond(S, k):
    """Covariance of the other variables given ``z_k = 0`` (dict of dicts keyed by variable)."""
    keys = [i for i in S if i != k]
    return {i: {j: S[i][j] - S[i][k] * S[k][j] / S[k][k] for j in keys} for i in keys}


def _corr(S, i, j):
    return S[i][j] / mp.sqrt(S[i][i] * S[j][j])


def orthant(S, T):
    T = sorted(T)
    n = len(T)
    if n == 0:
        return mp.mpf(1)
    if n == 1:
        return mp.mpf(1) / 2
    if n == 2:
        return mp.mpf(1) / 4 + mp.asin(_corr(S, *T)) / (2 * mp.pi)
    if n == 3:
        return mp.mpf(1) / 8 + sum(mp.asin(_corr(S, i, j)) for i, j in itertools.combinations(T, 2)) / (4 * mp.pi)
    if n == 4:
        a, rest = T[0], T[1:]
        sub = {i: {j: S[i][j] for j in T} for i in T}

        def path(t):
            St = {i: dict(sub[i]) for i in T}
            for j in rest:
                St[a][j] = St[j][a] = t * sub[a][j]
            total = mp.mpf(0)
            for j in rest:
                k, l = [x for x in rest if x != j]
                c = _cond(_cond(St, a), j)
                rho = _corr(sub, a, j)
                dens = 1 / (2 * mp.pi * mp.sqrt(1 - (t * rho) ** 2))
                total += rho * dens * (mp.mpf(1) / 4 + mp.asin(_corr(c, k, l)) / (2 * mp.pi))
            return total

        return orthant(sub, rest) / 2 + mp.quad(path, [0, 1])
    raise ValueError("at most four orthant variables")


def moment(S, m, T):
    """``S``: dict of dicts (variables -> covariance), ``m``: dict var -> power, ``T``: set."""
    m = {k: v for k, v in m.items() if v}
    if not m:
        return orthant(S, T)
    i = min(m)
    rest = dict(m)
    rest[i] -= 1
    total = mp.mpf(0)
    for j, pj in list(rest.items()):
        if pj:
            r2 = dict(rest)
            r2[j] -= 1
            total += S[i][j] * pj * moment(S, r2, T)
    for k in sorted(T):
        if rest.get(k, 0):
            continue  # z_k g(z) delta(z_k) = 0
        Sk = _cond(S, k)
        dens = 1 / mp.sqrt(2 * mp.pi * S[k][k])
        total += S[i][k] * dens * moment(Sk, {j: v for j, v in rest.items() if j != k}, set(T) - {k})
    return total


def as_dict(S):
    n = len(S)
    return {i: {j: mp.mpf(S[i][j]) for j in range(n)} for i in range(n)}


def relu_family_product(S, pattern, slopes=(1.0, 0.0)):
    """``E[prod_j sigma(z_j)^{p_j}]`` for ``sigma(z) = a_- z + (a_+ - a_-) relu(z)`` (the
    expansion in linear and relu factors, not ngp's sign flips)."""
    a_plus, a_minus = (mp.mpf(s) for s in slopes)
    u = len(pattern)
    Sd = S if isinstance(S, dict) else as_dict(S)
    total = mp.mpf(0)
    # sigma^p = sum_q binom(p, q) (a_- z)^(p-q) ((a_+ - a_-) relu z)^q ; z^(p-q) relu^q = z^p Theta (q >= 1)
    for qs in itertools.product(*[range(p + 1) for p in pattern]):
        coef = mp.mpf(1)
        for p, q in zip(pattern, qs):
            coef *= mp.binomial(p, q) * a_minus ** (p - q) * (a_plus - a_minus) ** q
        if coef == 0:
            continue
        T = {j for j in range(u) if qs[j] > 0}
        total += coef * moment(Sd, dict(enumerate(pattern)), T)
    return total
