"""Four-point Gaussian expectations ``E[prod_j sigma(z_j)^{p_j}]`` with error estimates.

For a batch of covariance blocks ``C`` of shape ``(b, u, u)`` (``u`` distinct inputs, possibly
singular or nearly singular) and a multiplicity ``pattern`` ``(p_1, ..., p_u)``, this module computes

    E[ prod_j sigma(z_j)^{p_j} ],   z ~ N(0, C),

together with a per-entry estimate of its numerical error. Three rules (``docs/four-point.md``):

* **linear** (``relu_slopes == (a, a)``): Isserlis' theorem, exact.
* **relu family** (``relu_slopes = (a_+, a_-)``): exact reduction to Gaussian orthant
  probabilities along the Price path ``C(t) = D + t (C - D)``, ``D = diag(C)``,

      F(C) = F(D) + int_0^1 sum_{i<j} C_ij E_{C(t)}[d_i d_j f] dt,

  whose integrand is a closed form (arcsines and square roots; the four-variable orthant
  probability is removed by one integration by parts), integrated by tanh-sinh quadrature.
  The integrand is bounded for every ``t < 1``, so nearly singular blocks (correlations
  ``1 - 1e-12``, rank-deficient blocks, duplicated directions) keep full accuracy.
* **smooth activations**: an anisotropic tensor Gauss-Hermite rule in the eigen-coordinates
  of the block, with per-direction orders from a one-dimensional calibration of the
  activation. One input of power 1 is split into its regression on the others and an independent
  residual, which is integrated in closed form when the activation declares ``smoothed``
  (``E[sigma(mu + s w)]``), else from a per-entry table of that one-dimensional integral along the
  one direction the regression depends on (trapezoid rule, with its own error bound).
  The error estimate is the difference to a companion rule one order step lower in every
  direction; entries that miss the tolerance are recomputed at higher orders.

All functions are pure (arrays in, arrays out) and need float64 (``jax_enable_x64``) for the
stated accuracies.
"""

from __future__ import annotations

import functools
import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np

from ._activations import Activation
from ._cache import byte_lru, frozen_lru
from ._gaussian import gauss_hermite
from ._validate import device, device_if

__all__ = ["product_expectations", "multiset_expectations", "split_multisets", "fixed_rule_split",
           "fixed_rule_errors", "calibrated_orders", "tensor_rule", "tensor_rule_size", "rule_tiles", "bucket4",
           "LADDER", "PATTERNS", "RTOL"]

#: The multiplicity patterns of a sorted four-input multiset ``a <= b <= c <= d``.
PATTERNS = ((1, 1, 1, 1), (2, 1, 1), (1, 2, 1), (1, 1, 2), (3, 1), (1, 3), (2, 2), (4,))

_EPS = float(np.finfo(np.float64).eps)
_TWO_PI = 2.0 * math.pi
_INV_SQRT_2PI = 1.0 / math.sqrt(_TWO_PI)


def _pattern(pattern) -> tuple[int, ...]:
    p = tuple(int(k) for k in pattern)
    if not p or any(k < 1 for k in p):
        raise ValueError(f"pattern: expected positive multiplicities, got {pattern!r}")
    return p


def _as_blocks(C, u: int) -> np.ndarray:
    C = np.asarray(C, dtype=float)
    if C.ndim == 2:
        C = C[None]
    if C.ndim != 3 or C.shape[1:] != (u, u):
        raise ValueError(f"C: expected shape (b, {u}, {u}) for a pattern of {u} inputs, got {C.shape}")
    if not np.all(np.isfinite(C)):
        raise ValueError("C: contains non-finite values")
    return 0.5 * (C + np.swapaxes(C, 1, 2))


# ============================================================================ linear: Isserlis
def _isserlis(C, pattern):
    """``E[prod z]`` over the 4 (or 2) factors listed by ``pattern`` (exact)."""
    idx = [j for j, p in enumerate(pattern) for _ in range(p)]

    def pairings(items):
        if not items:
            yield []
            return
        a, rest = items[0], items[1:]
        for k in range(len(rest)):
            for tail in pairings(rest[:k] + rest[k + 1:]):
                yield [(a, rest[k])] + tail

    total = 0.0
    for pr in pairings(idx):
        term = 1.0
        for a, b in pr:
            term = term * C[:, a, b]
        total = total + term
    return total


# ============================================================================ relu family
#: tanh-sinh rule on t in (0, 1): t = 1 / (1 + exp(-pi sinh v)), v in [-V, V].
_TS_V = 4.0


@frozen_lru(8)
def _tanh_sinh(level: int):
    """Nodes ``t``, ``tau = 1 - t`` (accurate near 1), weights for step ``h = 2**-level``.

    Returns also ``coarse``: index arrays and weight factors of the rules with steps 2h, 4h
    (subsets of the nodes), for the error estimate.
    """
    h = 2.0 ** (-level)
    k = np.arange(-int(round(_TS_V / h)), int(round(_TS_V / h)) + 1)
    v = k * h
    e = np.pi * np.sinh(v)
    t = 1.0 / (1.0 + np.exp(-e))
    tau = 1.0 / (1.0 + np.exp(e))
    w = h * np.pi * np.cosh(v) * t * tau
    keep = w > 1e-300
    t, tau, w, k = t[keep], tau[keep], w[keep], k[keep]
    return t, tau, w, k


def _asin_over(x):
    return np.arcsin(np.clip(x, -1.0, 1.0))


def _safe_div(a, b):
    ok = b > 0
    return np.where(ok, a / np.where(ok, b, 1.0), 0.0)


def _relu_moment_1d(p: int) -> float:
    """``E[relu(x)^p]`` for ``x ~ N(0, 1)``."""
    return {0: 1.0, 1: _INV_SQRT_2PI, 2: 0.5, 3: 2 * _INV_SQRT_2PI, 4: 1.5}[p]


def _relu_integrand(r, t, tau, pattern):
    """Price-path integrand for ``E[prod_j relu(z_j)^{p_j}]`` with unit variances.

    ``r``: (b, u, u) correlation matrices; ``t``, ``tau = 1 - t``: (n,). Returns (b, n) and the
    t-independent constant (b,) (the four-variable orthant probability is integrated by parts).
    """
    u = len(pattern)
    p = list(pattern)
    rb = np.clip(r, -1.0, 1.0)[:, None, :, :]  # (b, 1, u, u)
    t_ = t[None, :]
    tau_ = tau[None, :]
    one_m_t2 = tau_ * (2.0 - tau_)  # 1 - t^2, accurate near t = 1

    def S(i, j):  # entries of C(t) = I + t (r - I)
        return np.ones_like(t_) * 1.0 if i == j else t_ * rb[..., i, j]

    def om(i, j):  # 1 - (t r_ij)^2, accurate near |r_ij| = 1
        rij = rb[..., i, j]
        return np.maximum((1.0 - rij) * (1.0 + rij), 0.0) + rij * rij * one_m_t2

    # conditional covariance given z_k = 0 (unit variances): S_ab - S_ak S_kb
    def S1(k, a, b):
        if a == b:
            return om(k, a)
        return S(a, b) - S(a, k) * S(k, b)

    def partial_corr(k, l, m, n):  # correlation of (m, n) given z_k = z_l = 0
        skl = S1(k, l, l)
        smn = S1(k, m, n) - _safe_div(S1(k, m, l) * S1(k, l, n), skl)
        smm = np.maximum(S1(k, m, m) - _safe_div(S1(k, m, l) ** 2, skl), 0.0)
        snn = np.maximum(S1(k, n, n) - _safe_div(S1(k, n, l) ** 2, skl), 0.0)
        return _safe_div(smn, np.sqrt(smm * snn))

    def orthant_given(k, l):  # P(rest > 0 | z_k = z_l = 0), rest = the other u - 2 inputs
        rest = [m for m in range(u) if m not in (k, l)]
        if len(rest) == 0:
            return 1.0
        if len(rest) == 1:
            return 0.5
        m, n = rest
        return 0.25 + _asin_over(partial_corr(k, l, m, n)) / _TWO_PI

    def orthant_given1(k):  # P(rest > 0 | z_k = 0)
        rest = [m for m in range(u) if m != k]
        if len(rest) == 1:
            return 0.5
        if len(rest) == 2:
            m, n = rest
            return 0.25 + _asin_over(_safe_div(S1(k, m, n), np.sqrt(om(k, m) * om(k, n)))) / _TWO_PI
        acc = 0.125
        for m, n in itertools.combinations(rest, 2):
            acc = acc + _asin_over(_safe_div(S1(k, m, n), np.sqrt(om(k, m) * om(k, n)))) / (4 * math.pi)
        return acc

    def orthant_all():  # u <= 3
        if u == 1:
            return 0.5
        if u == 2:
            return 0.25 + _asin_over(S(0, 1)) / _TWO_PI
        acc = 0.125
        for i, j in itertools.combinations(range(u), 2):
            acc = acc + _asin_over(S(i, j)) / (4 * math.pi)
        return acc

    def moment1(a):  # E[z_a Theta_all]
        acc = 0.0
        for k in range(u):
            acc = acc + S(a, k) * _INV_SQRT_2PI * orthant_given1(k)
        return acc

    def rest2(a, b):  # E[z_a z_b Theta_all] minus its S_ab P_all term
        acc = 0.0
        for k in range(u):
            if k == b:
                continue
            inner = 0.0
            for l in range(u):
                if l == k:
                    continue
                s_kl = om(k, l)
                inner = inner + _safe_div(S1(k, b, l), np.sqrt(_TWO_PI * s_kl)) * orthant_given(k, l)
            acc = acc + S(a, k) * _INV_SQRT_2PI * inner
        return acc

    integrand = 0.0
    beta0 = 0.0
    beta1 = 0.0
    for i, j in itertools.combinations(range(u), 2):
        coef = rb[..., i, j] * p[i] * p[j]
        m = list(p)
        m[i] -= 1
        m[j] -= 1
        poly = [k for k in range(u) for _ in range(m[k])]
        if len(poly) == 0:
            g = orthant_all()
        elif len(poly) == 1:
            g = moment1(poly[0])
        else:
            a, b = poly
            g = rest2(a, b)
            if u == 4:  # S_ab(t) P4(t) = (beta0 + beta1 t) P4(t): integrated by parts below
                if a == b:
                    beta0 = beta0 + coef
                else:
                    beta1 = beta1 + coef * rb[..., a, b]
            else:
                g = g + S(a, b) * orthant_all()
        integrand = integrand + coef * g
    const = 0.0
    if u == 4:
        # P4(t) = 1/16 + int_0^t h;  int_0^1 B P4 = (beta0 + beta1/2)/16 + int_0^1 h(t) int_t^1 B
        h = 0.0
        for i, j in itertools.combinations(range(u), 2):
            h = h + rb[..., i, j] / (_TWO_PI * np.sqrt(om(i, j))) * orthant_given(i, j)
        tail_B = beta0 * tau_ + beta1 * one_m_t2 / 2.0
        integrand = integrand + h * tail_B
        const = (beta0 + beta1 / 2.0) / 16.0
    const = np.broadcast_to(const, (r.shape[0], 1))[:, 0] if u == 4 else np.zeros(r.shape[:1], r.dtype)
    return np.broadcast_to(integrand, (r.shape[0], t.shape[0])), const


def _relu_unit(r, pattern, level):
    """``E[prod relu(z_j)^{p_j}]`` for unit-variance blocks ``r`` (b, u, u) (NumPy: the closed-form
    integrand is a few hundred elementwise operations, which XLA takes minutes to compile).

    Returns the tanh-sinh estimates at steps h, 2h, 4h (b, 3) and the magnitude of the summed
    terms (b,) (sets the round-off floor)."""
    t, tau, w, k = _tanh_sinh(level)
    base = float(np.prod([_relu_moment_1d(q) for q in pattern]))
    if len(pattern) == 1:
        v = np.full(r.shape[:1], base)
        return np.stack([v, v, v], axis=1), v
    I, const = _relu_integrand(r, t, tau, pattern)
    out = []
    for step in (1, 2, 4):
        sel = np.nonzero(k % step == 0)[0]
        out.append(base + const + step * (I[:, sel] @ np.asarray(w[sel])))
    mag = base + np.abs(const) + np.abs(I) @ np.asarray(w)
    return np.stack(out, axis=1), mag


def _relu_unit_batched(r, pattern, level, chunk: int = 2048):
    """:func:`_relu_unit` over chunks of the batch (bounded memory)."""
    b = r.shape[0]
    q = np.empty((b, 3))
    mag = np.empty(b)
    for st in range(0, b, chunk):
        blk = r[st:st + chunk]
        k = blk.shape[0]
        a, m = _relu_unit(blk, pattern, level)
        q[st:st + k] = a[:k]
        mag[st:st + k] = m[:k]
    return q, mag


def _extrapolated_error(q, floor):
    """Error estimate of ``q[:, 0]`` from the nested estimates ``q`` (b, 3): the last difference,
    or its geometric extrapolation when convergence is clearly faster than linear (tanh-sinh:
    the error roughly squares when the step halves). ``floor`` (b,): round-off level."""
    d1 = np.abs(q[:, 0] - q[:, 1])
    d2 = np.abs(q[:, 1] - q[:, 2])
    fast = d1**3 <= d2 * d2 * floor  # d1 well below d2: the error roughly squares per halving
    extrap = np.minimum(d1 * d1 / np.where(d2 > 0, d2, 1.0), d1)
    return np.maximum(np.where(fast, extrap, d1), floor)


def _relu_family(C, pattern, slopes, *, rtol: float, max_level: int = 7):
    a_plus, a_minus = slopes
    u = len(pattern)
    d = np.sqrt(np.clip(np.diagonal(C, axis1=1, axis2=2), 0.0, None))  # (b, u)
    zero = np.any(d <= 0.0, axis=1)
    ds = np.where(d > 0, d, 1.0)
    r = C / (ds[:, :, None] * ds[:, None, :])
    eye = np.eye(u)
    r = np.clip(r * (1 - eye) + eye, -1.0, 1.0)
    scale = np.prod(d ** np.asarray(pattern, dtype=float), axis=1)
    # sigma(z) = a_+ relu(z) - a_- relu(-z): sum over sign flips of the inputs
    terms = []
    for s in itertools.product((1.0, -1.0), repeat=u):
        coef = 1.0
        for sj, pj in zip(s, pattern):
            coef *= (a_plus if sj > 0 else -a_minus) ** pj
        if coef != 0.0:
            terms.append((coef, np.asarray(s)))
    b = C.shape[0]
    val = np.zeros(b)
    err = np.zeros(b)
    for coef, s in terms:
        rs = r * np.outer(s, s)
        todo = np.arange(b)
        v_s = np.zeros(b)
        e_s = np.zeros(b)
        level = 3
        while todo.size and level <= max_level:
            q, mag = _relu_unit_batched(rs[todo], tuple(pattern), level)
            e = _extrapolated_error(q, 64 * _EPS * mag)
            v_s[todo] = q[:, 0]
            e_s[todo] = e
            todo = todo[e > rtol * mag]
            level += 1
        val += coef * v_s
        err += abs(coef) * e_s
    scale = np.asarray(scale)
    val = np.where(np.asarray(zero), 0.0, val * scale)
    err = np.where(np.asarray(zero), 0.0, err * scale)
    return val, err


# ============================================================================ smooth activations
#: One-dimensional rules available per direction, by node count: Gauss-Hermite (about 16% apart above
#: 8), then the trapezoid rules of :data:`_TRAPEZOID` (:func:`_rule1d`).
LADDER = (1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 14, 16, 19, 22, 26, 30, 35, 41, 48, 56, 65, 76, 88, 102,
          118, 136, 158, 184, 214, 250, 251, 253, 255, 383, 511, 767, 1023, 1535, 2047)
#: Trapezoid rules at the top of the ladder, node count -> half-width ``L`` of ``[-L, L]``. Gauss-Hermite
#: converges slowly for ``sigma(s x)`` at large scales ``s`` (poles at ``~1/s`` from the real axis for
#: tanh: 250 nodes leave 1e-7 in ``<tanh^4>`` at ``s = 2.1``, 4e-4 at ``s = 4``); the trapezoid rule
#: converges like ``exp(-pi^2 / (s h))`` in its step ``h`` (1e-15 and 1e-14 there with 255 nodes). The wide
#: rules above 255 nodes span [-10, 10]: a rule's truncation at 8 (``~8^(p-1) phi(8)``, 1e-12 relative for the
#: fourth power of gelu) is the same in every rule of that span, so no companion's difference would show it.
_TRAPEZOID = {251: 10.0, 253: 9.0, 255: 8.0, 383: 10.0, 511: 10.0, 767: 10.0, 1023: 10.0, 1535: 10.0, 2047: 10.0}
#: Ladder index of the 255-node rule. Rules with a direction above it (the wide rules, for directions of large
#: scale) are used only while the product of their node counts stays within :data:`_WIDE_NODES` (e.g. blocks of
#: inputs with one feature, whose other directions need a few nodes); beyond, every direction stays at or below it,
#: and a direction that cannot rise counts as capped (:func:`_raised`).
_NARROW_TOP = LADDER.index(255)
_WIDE_NODES = 2**21
_LADDER_NODES = np.asarray(LADDER, dtype=float)
#: Per-direction scales at which the one-dimensional calibration is done (geometric grid).
_S_GRID = tuple(float(x) for x in 0.01 * 1.2 ** np.arange(51))  # 0.01 ... ~91
#: Offsets and powers of the one-dimensional calibration integrands sigma(s (c + x))^p (a rule whose
#: integrated inputs include a higher power adds the powers up to it: :func:`_cal_powers`).
_CAL_OFFSETS = (0.5, 1.5)
_CAL_POWERS = (1, 2)


def _cal_powers(head_pattern) -> tuple:
    """Calibration powers for a rule over inputs of multiplicities ``head_pattern``: 1 and 2, and up to
    the largest multiplicity (a cube of gelu or swish converges more slowly than their squares)."""
    return tuple(range(1, max(max(head_pattern, default=1), max(_CAL_POWERS)) + 1))


@frozen_lru(64)
def _rule1d(m: int):
    """Nodes and probability weights of the ladder's ``m``-node rule for ``N(0, 1)``: Gauss-Hermite, or
    the trapezoid rule on ``[-L, L]`` (weights ``h phi(x)``) for the counts of :data:`_TRAPEZOID`."""
    if m in _TRAPEZOID:
        return _trapezoid(m, _TRAPEZOID[m])
    return gauss_hermite(m)


def _trapezoid(m: int, L: float):
    """Nodes and weights of the ``m``-node trapezoid rule on ``[-L, L]`` for ``N(0, 1)`` (the step from ``L`` and
    ``m``: the difference of two rounded nodes errs by ~``eps L / h``, 2e-13 relative at 2047 nodes)."""
    x = np.linspace(-L, L, m)
    return x, (2.0 * L / (m - 1)) * np.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)


@frozen_lru(64)
def _error_table(act: Activation, powers: tuple = _CAL_POWERS) -> np.ndarray:
    """One-dimensional calibration of the activation: ``(len(LADDER), len(_S_GRID))`` errors of the
    ``m``-node ladder rule for ``sigma(s (c + x))^p`` relative to ``E[sigma(s (c + x))^{2p}]^{1/2}``,
    worst over the calibration offsets ``c`` and ``powers`` ``p``, made non-decreasing in ``s`` (the
    reference is a trapezoid rule of step 0.0015 on [-12, 12], converged for every grid scale)."""
    rows = _error_rows(act, max(_CAL_TOP, max(powers)))
    return np.maximum.accumulate(rows[np.asarray(powers) - 1].max(axis=0), axis=1)


#: Powers whose calibration rows :func:`_error_rows` computes together (the four-point patterns' largest is 4).
_CAL_TOP = 4


@frozen_lru(16)
def _error_rows(act: Activation, top: int) -> np.ndarray:
    """:func:`_error_table`'s errors for each power ``p = 1 .. top`` alone, before the running maximum over the
    scales: ``(top, len(LADDER), len(_S_GRID))``, from one evaluation of the activation at every node, offset and
    scale (what the tables of every set of powers share)."""
    rules = [_rule1d(m) for m in LADDER] + [_trapezoid(16001, 12.0)]
    x = np.concatenate([r[0] for r in rules])
    starts = np.cumsum([0] + [r[0].size for r in rules[:-1]])  # each rule's first node
    w = np.concatenate([r[1] for r in rules])
    s = np.asarray(_S_GRID)
    c = np.asarray(_CAL_OFFSETS)
    z = s[None, :, None] * (c[:, None, None] + x[None, None, :])  # (offsets, scales, nodes)
    with jax.enable_x64(True):  # cached for the process: never from a float32 evaluation (it made later float64
        f = np.asarray(_jit_fn(act.fn)(device(z)))  # results' error estimates 33x larger)
    rows = np.zeros((top, len(LADDER), s.size))
    last = np.arange(x.size) >= starts[-1]  # the reference's nodes
    fp = f  # integer powers by products (numpy's general power is ~10x slower)
    for p in range(1, top + 1):
        if p > 1:
            fp = fp * f
        sums = np.add.reduceat(fp * w, starts, axis=-1)  # (offsets, scales, rules): each rule's nodes contiguous
        ref = sums[..., -1:]
        norm = np.sqrt(np.sum(np.square(fp[..., last]) * w[last], axis=-1))
        rel = np.abs(sums[..., :-1] - ref) / (norm[..., None] + 1e-300)  # (offsets, scales, ladder)
        rows[p - 1] = rel.max(axis=0).T
    return rows


@frozen_lru(64)
def _order_table(act: Activation, tol_exp: int, powers: tuple = _CAL_POWERS) -> np.ndarray:
    """Smallest ladder index per grid scale ``s`` such that the ``m``-point Gauss-Hermite rule
    integrates ``sigma(s (c + x))^p`` to ``10**tol_exp`` relative to ``E[sigma(s (c + x))^{2p}]^{1/2}``
    for every calibration offset ``c`` and power ``p`` (:func:`_error_table`)."""
    ok = _error_table(act, powers) <= 10.0 ** tol_exp
    first = np.where(ok.any(axis=0), np.argmax(ok, axis=0), len(LADDER) - 1)
    return np.maximum.accumulate(first)  # monotone in s


#: Tensor nodes whose weight is below ``_CUTOFF * rtol`` times the largest are dropped (the
#: dropped probability mass is ~20 times that).
_CUTOFF = 1e-5
#: The one-dimensional calibration tolerance is ``_CAL_FACTOR * rtol`` (the four-dimensional
#: error of the product rule is well below the worst one-dimensional proxy; measured).
_CAL_FACTOR = 3.0


def _orders(act: Activation, s: np.ndarray, rtol: float, powers: tuple = _CAL_POWERS) -> np.ndarray:
    """Ladder indices (same shape as ``s``) for per-direction scales ``s`` (calibrated on ``powers``)."""
    tol_exp = int(np.floor(np.log10(max(_CAL_FACTOR * rtol, 1e-15))))
    table = _order_table(act, tol_exp, powers)
    pos = np.searchsorted(np.asarray(_S_GRID), s, side="left")
    idx = table[np.clip(pos, 0, len(_S_GRID) - 1)]
    idx = np.where(s <= 0, 0, idx)
    return np.where(pos >= len(_S_GRID), len(LADDER) - 1, idx)


def _within_nodes(lad: np.ndarray) -> np.ndarray:
    """Rows of ladder indices ``lad`` (b, d) that may run: no wide rule, or at most :data:`_WIDE_NODES` nodes."""
    return (lad.max(axis=1, initial=0) <= _NARROW_TOP) | (np.prod(_LADDER_NODES[lad], axis=1) <= _WIDE_NODES)


def _affordable(lad: np.ndarray) -> np.ndarray:
    """Initial ladder indices ``lad`` (b, d) with the rows beyond :data:`_WIDE_NODES` kept to the narrow rules."""
    return np.where(_within_nodes(lad)[:, None], lad, np.minimum(lad, _NARROW_TOP))


def _raised(lad: np.ndarray) -> np.ndarray:
    """The refined rule of rows ``lad`` (b, d): one ladder step up in every direction; where that would exceed
    :data:`_WIDE_NODES`, only the directions below the narrow top rise (if even that exceeds it, none). A direction
    whose index does not change is capped."""
    up = np.minimum(lad + 1, len(LADDER) - 1)
    part = np.maximum(lad, np.minimum(up, _NARROW_TOP))
    return np.where(_within_nodes(up)[:, None], up, np.where(_within_nodes(part)[:, None], part, lad))


@frozen_lru(64)
def _rule1d_by_weight(m: int):
    """The ``m``-point Gauss-Hermite weights in decreasing order and their positions in :func:`_gh`."""
    w = _rule1d(m)[1]
    order = np.argsort(-w, kind="stable")
    return w[order], order


def _last_counts(weights, w_last: int, thr: float, rest: float) -> np.ndarray:
    """Pruning of one more direction (``w_last``-point rule): for each partial node of weight
    ``weights[i]`` (n,), the number of that direction's nodes, in decreasing weight, with
    ``(weights[i] * w_j) * rest > thr``. The predicate is monotone in ``j``, so the kept ones are a
    prefix; its length is found by a search and fixed at the boundary with the exact predicate."""
    wsort, _ = _rule1d_by_weight(w_last)
    m = wsort.size

    def keep(ii, j):
        return (weights[ii] * wsort[np.clip(j, 0, m - 1)]) * rest > thr

    count = np.searchsorted(-wsort, -(thr / rest) / weights, side="left")
    ii = np.arange(weights.size)
    while True:
        up = (count < m) & keep(ii, count)
        down = (count > 0) & ~keep(ii, count - 1)
        if not (up.any() or down.any()):
            return count
        count = count + up.astype(count.dtype) - down.astype(count.dtype)


def _tensor_rule(orders: tuple, cutoff: float):
    """Tensor Gauss-Hermite rule with per-direction ``orders``, pruned to the nodes whose weight
    exceeds ``cutoff`` times the largest one, built direction by direction (never the full grid):
    a partial node of the first ``k`` directions is kept when its weight times the largest weight
    of the remaining directions exceeds the threshold. Returns node indices ``(n, d)`` (uint16, into
    each direction's :func:`_gh` nodes) and weights ``(n,)``, ``((w_1 w_2) w_3) w_4``."""
    ws = [_rule1d(m)[1] for m in orders]
    wmax = [float(w.max()) for w in ws]
    thr = cutoff * float(np.prod(wmax))
    idx = np.zeros((1, 0), dtype=np.uint16)
    weights = np.ones(1)
    for k, w in enumerate(ws):
        count = _last_counts(weights, len(w), thr, float(np.prod(wmax[k + 1:])))
        i = np.repeat(np.arange(weights.size), count)
        j = np.arange(i.size) - np.repeat(np.cumsum(count) - count, count)
        jj = _rule1d_by_weight(len(w))[1][j]
        idx = np.concatenate([idx[i], jj[:, None].astype(np.uint16)], axis=1)
        weights = weights[i] * w[jj]
    return idx, weights


@byte_lru(64 * 2**20)
def _prefix_rule(orders: tuple, cutoff: float):
    """:func:`_tensor_rule` for ``orders`` (the leading directions of a rule), cached: rules of
    different groups share their leading directions."""
    return _tensor_rule(orders, cutoff)


def calibrated_orders(act: Activation, scales, rtol: float) -> np.ndarray:
    """Node counts of the calibrated one-dimensional rules (:data:`LADDER`) that integrate a direction of scale
    ``s`` (``sigma(s (c + x))^p``, ``x ~ N(0, 1)``, ``p = 1, 2``) to ``rtol``, for ``scales`` of any shape (same
    shape out; docs/four-point.md, "Smooth activations: anisotropic Gauss-Hermite")."""
    return _LADDER_NODES[_orders(act, np.asarray(scales, dtype=float), rtol)].astype(int)


def tensor_rule(orders: tuple, cutoff: float):
    """Nodes ``(n, d)`` and weights ``(n,)`` of the tensor rule of the ladder's one-dimensional rules (:data:`LADDER`)
    with per-direction node counts ``orders`` for ``N(0, I_d)``, pruned to the nodes whose weight exceeds ``cutoff``
    times the largest (built as the four-point rules', not cached; docs/four-point.md)."""
    idx, w = _tensor_rule(tuple(int(m) for m in orders), cutoff)
    x = np.empty((w.size, len(orders)))  # C order: callers copy contiguous runs of nodes
    for j, m in enumerate(orders):
        x[:, j] = _rule1d(int(m))[0][idx[:, j]]
    return x, w


def _staircase(orders: tuple, cutoff: float):
    """The pruned rule ``orders`` (:func:`_tensor_rule`) as its leading directions' pruned rule (cached), sorted by
    decreasing weight, and per partial node the count of the last direction's nodes (by decreasing weight) it keeps:
    ``pidx`` (P, d-1), ``pw`` (P,), ``counts`` (P,) (non-increasing; partial nodes that keep none dropped)."""
    pidx, pw = _prefix_rule(orders[:-1], cutoff)
    thr = cutoff * float(np.prod([float(_rule1d(m)[1].max()) for m in orders]))
    o = np.argsort(-pw, kind="stable")
    pidx, pw = pidx[o], pw[o]
    counts = _last_counts(pw, orders[-1], thr, 1.0)
    keep = counts > 0
    return pidx[keep], pw[keep], counts[keep]


def tensor_rule_size(orders: tuple, cutoff: float) -> int:
    """The number of nodes of :func:`tensor_rule` ``(orders, cutoff)`` without building it: from the directions' log
    weights, meeting in the middle (the sums over the first half of the directions against the sorted sums over the
    other half), so time and memory go as the two halves' grids (``O(m^2)`` in 4-D), not as the pruned rule (building
    the leading directions' pruned rule took 3 GB and a minute for a rule capped from ``(1535, 1023, 511, 251)``).
    Exact up to nodes whose weight lies within rounding of the threshold; remembered per set of orders (whatever
    their order: the count is symmetric)."""
    return _rule_size(tuple(sorted(int(m) for m in orders)), float(cutoff))


@functools.lru_cache(maxsize=4096)
def _rule_size(orders: tuple, cutoff: float) -> int:
    h = len(orders) // 2
    a, b = _log_grid(orders[:h]), _log_grid(orders[h:])
    lthr = math.log(cutoff) + sum(float(np.log(_rule1d(m)[1].max())) for m in orders)
    a = a[a > lthr - b[-1]]
    return int(b.size * a.size - np.searchsorted(b, lthr - a, side="right").sum())


@byte_lru(64 * 2**20)
def _log_grid(orders: tuple) -> np.ndarray:
    """The sorted sums of the log weights of the one-dimensional rules ``orders`` over their tensor grid (nodes of
    zero weight left out)."""
    out = np.zeros(1)
    for m in orders:
        w = _rule1d(m)[1]
        out = (out[:, None] + np.log(w[w > 0])[None, :]).ravel()
    return np.sort(out)


#: Tolerance of the tabulated smoothing relative to ``rtol`` and the split input's Hoelder factor.
_TABLE_TOL = 1e-2
#: Trapezoid steps of the tabulated smoothing, ``h = _TABLE_H0 / 2**level`` on ``|w| <= _TABLE_W``: 25 nodes,
#: then 49 (the Gaussian factor alone errs by ``exp(-2 pi^2 / h^2)``, 6e-16 at 0.75; at 0.5 the first check
#: cost 73 nodes).
_TABLE_H0 = 0.75
_TABLE_W = 9.0
_TABLE_LEVELS = 6
#: Activation evaluations per call of the tabulation (bounds a call's length and its arrays of points).
_TABLE_CHUNK = 2**22
#: Embedded Gauss-Hermite pairs of the tabulation (:func:`_smoothed_table`): points with a residual std ``s`` in
#: ``(previous bound, bound]`` first take the ``fine``-node rule, kept when its change from the ``coarse``-node rule
#: is within the tolerance. ``s <= 1e-4``: nearly singular blocks (e.g. the first layer's kernel of inputs with
#: fewer than three features), 3 nodes against 1; up to 0.1 and 0.2: 10 against 6 and 16 against 10 (chosen on
#: tanh, whose poles lie pi / 2 from the real axis: on 1.6e5 table points of a 16 x 40 prediction these pairs met
#: its tolerance at every point of their ranges). Evaluations: fine + coarse (4, 16, 26; the trapezoid's 49).
_TABLE_PAIRS = ((1e-4, 3, 1), (0.1, 10, 6), (0.2, 16, 10))


def _table_per(nodes: int) -> int:
    """Points per call of a tabulation step with ``nodes`` activation calls per point (a power of 4, at least
    256, about ``_TABLE_CHUNK`` calls)."""
    return 4 ** max(4, int(math.log(_TABLE_CHUNK / nodes, 4)))


@functools.partial(jax.jit, static_argnums=(0,))
def _node_sums(fn, mu, s, w, pw, n):
    """``sum_{i < n} pw_i fn(mu + s w_i)`` for points ``mu``, ``s`` (P,) and nodes ``w``, ``pw`` (padded to a
    :func:`_node_pad` length): a loop over the nodes, each step elementwise over the points (vectorised; a
    reduction over a (P, M) array of a few nodes per point ran 1.2-2.4x slower in XLA:CPU), the node count ``n`` a
    run-time value (one compiled shape per point count and padded length)."""
    return jax.lax.fori_loop(0, n, lambda i, acc: acc + fn(mu + s * w[i]) * pw[i], jnp.zeros_like(mu))


def _node_pad(w: np.ndarray, pw: np.ndarray):
    """Nodes and weights by increasing weight (the loop of :func:`_node_sums` adds the large terms last: less
    rounding), zero-padded to 64 times a power of 4 (few compiled shapes), and the node count."""
    o = np.argsort(np.abs(pw), kind="stable")
    m = bucket4(w.size, 64)
    return _pad_rows(w[o], m), _pad_rows(pw[o], m), np.int32(w.size)


@frozen_lru(None)
def _table_rule(kind: str, k: int):
    """The tabulation's padded rules (:func:`_node_pad`), built once: ``("gh", m)`` the ``m``-node Gauss-Hermite
    rule; ``("trapezoid", level)`` the nodes that level of the trapezoid rule adds (all of level 0), with
    weights ``phi(w)`` (times the step in :func:`_smoothed_table`)."""
    if kind == "gh":
        return _node_pad(*gauss_hermite(k))
    h = _TABLE_H0 / 2**k
    half = int(round(_TABLE_W / h))
    w = h * np.arange(-half, half + 1)
    if k:
        w = w[1::2]  # the new midpoints
    return _node_pad(w, _INV_SQRT_2PI * np.exp(-0.5 * w * w))


def _by_pieces(call, arrays, per: int) -> list:
    """``call(*pieces)`` over the points of ``arrays`` (P,) each, in zero-padded calls of :func:`_pieces`
    sizes (``per`` points at most, all dispatched before any is read): a tuple of (P,) arrays, one per output
    of ``call``."""
    n = arrays[0].size
    pending = []
    for st, size in _pieces(n, per):
        k = min(size, n - st)
        pending.append((st, k, call(*(a[st:st + k] if k == size else _pad_rows(a[st:st + k], size) for a in arrays))))
    outs = None
    for st, k, out in pending:
        out = out if isinstance(out, tuple) else (out,)
        if outs is None:
            outs = tuple(np.zeros(n) for _ in out)
        for o, r in zip(outs, out):
            o[st:st + k] = np.asarray(r)[:k]
    return outs if outs is not None else ()


def _pieces(n: int, per: int, least: int = 4**4, whole: int = 4**6) -> list:
    """``(start, size)`` of calls covering ``n`` points, sizes ``least * 4**k`` up to ``per`` (few compiled
    shapes): calls of ``per`` points, then of the largest size that fits while more than ``whole`` points
    are left, and the rest in one call padded to the next size: at most ``whole`` points of padding
    (a call's fixed cost is worth a few thousand points), where one padded call for everything could
    waste 3/4 of its size."""
    out, st, size = [], 0, per
    while st < n:
        left = n - st
        if left <= min(whole, per):
            size = least
            while size < left:
                size *= 4
            out.append((st, size))
            break
        while size > left:
            size //= 4
        out.append((st, size))
        st += size
    return out


def _smoothed_table(fn, mu: np.ndarray, s: np.ndarray, tol: np.ndarray):
    """``E[fn(mu + s w)]``, ``w ~ N(0, 1)``, at points ``mu``, ``s``, ``tol`` (k,) by the trapezoid rule
    in ``w`` on ``|w| <= _TABLE_W`` (exponentially convergent for activations analytic in a strip
    around the real axis, unlike Gauss-Hermite at large ``s``), halving the step (nested: each level
    adds the midpoints) until the change from the previous step is below ``tol`` (absolute) or
    :data:`_TABLE_LEVELS` is reached. Returns the values, that change (an error bound: the error of
    the finer rule is about its square) and the number of activation evaluations, (k,) each. One
    compiled shape per number of points per call (powers of 4 up to about ``_TABLE_CHUNK`` evaluations) and padded
    node count (:func:`_node_pad`).

    Points with ``s`` up to the bounds of :data:`_TABLE_PAIRS` first take the fine rule of their embedded
    Gauss-Hermite pair, kept when its change from the coarse rule is below ``tol``; that change bounds its error
    (the coarse rule's error, which the fine rule's is far below: e.g. for 3 nodes against 1, ``~ s^2 |fn''| / 2``
    against ``~ s^6 max|fn^(6)| / 120``); the others go on to the trapezoid rule (the pair's evaluations counted)."""
    k = mu.size
    val, err, evals = np.zeros(k), np.full(k, np.inf), np.zeros(k)
    rest = [np.flatnonzero(~(s <= _TABLE_PAIRS[-1][0]))]  # past every pair (NaN too): the trapezoid rule
    used = [np.zeros(rest[0].size)]
    lo = -np.inf
    for hi, fine, coarse in _TABLE_PAIRS:
        i = np.flatnonzero((s > lo) & (s <= hi))
        lo = hi
        if not i.size:
            continue
        rf, rc = _table_rule("gh", fine), _table_rule("gh", coarse)
        q, qc = _by_pieces(lambda m, sg: (_node_sums(fn, m, sg, *rf), _node_sums(fn, m, sg, *rc)), (mu[i], s[i]),
                           _table_per(fine + coarse))
        d = np.abs(q - qc)
        val[i], err[i], evals[i] = q, d, fine + coarse  # the trapezoid rule overwrites the misses
        rest.append(i[~(d <= tol[i])])
        used.append(np.full(rest[-1].size, float(fine + coarse)))
    idx, used = np.concatenate(rest), np.concatenate(used)
    # the points still refining, with their data and running sums of phi(w) f(mu + s w) (compacted per level)
    am, asg, atol, sums = mu[idx], s[idx], tol[idx], np.zeros(idx.size)
    for level in range(_TABLE_LEVELS + 1 if idx.size else 0):
        h = _TABLE_H0 / 2**level
        rule = _table_rule("trapezoid", level)
        (add,) = _by_pieces(lambda m, sg: _node_sums(fn, m, sg, *rule), (am, asg), _table_per(int(rule[2])))
        new = sums + add
        used = used + int(rule[2])
        e = np.abs(h * new - 2 * h * sums) if level else np.full(idx.size, np.inf)
        if level == _TABLE_LEVELS:
            done = np.ones(idx.size, dtype=bool)
        else:  # level 0 has no error estimate yet; a NaN change ends the refinement, as before
            done = ~(e > atol) if level else np.zeros(idx.size, dtype=bool)
        if done.any():
            val[idx[done]], err[idx[done]], evals[idx[done]] = h * new[done], e[done], used[done]
        if done.all():
            break
        if level:
            keep = ~done
            idx, am, asg, atol, new, used = idx[keep], am[keep], asg[keep], atol[keep], new[keep], used[keep]
        sums = new
    return val, err, evals


#: Tile shape of :func:`_tile_kernel`: ``_TP`` partial nodes (leading directions) x ``_TM`` nodes of
#: the last direction.
_TP, _TM = 16, 16
#: Tiles per kernel call, and per call of the smaller shapes that take the rest of a chunk.
_TILES_LARGE = 8192
_TILES = 2048
_TILES_SMALL = 128
#: Jobs per chunk of :func:`_evaluate_rules`, and blocks of ``_TM`` tabulated values per chunk (bound the
#: per-job tables sent to the device).
_JOB_CHUNK = 4096
_STAB_BLOCKS = 4 * 4096


#: Activations (by name) whose kernel sums its products in their own fusion (``fused_sum`` of :func:`_tile_kernel`):
#: XLA:CPU (jax 0.10) ran erf's three factors 2.8x faster so (4.9 against 13.4 ns a node), and every other activation
#: measured as fast or faster by the contraction (tanh's ratio form 1.4 against 2.6 ns, gelu 6.3 against 23.7 ns, sin
#: 16.5 against 24.5, softplus 16.5 against 26.6, swish equal; ``benchmarks/tile_kernel.py``,
#: ``results/tile_kernel.json``).
_FUSED_SUM = frozenset({"erf"})

#: ``smoothed`` value of :func:`_tile_kernel` and :func:`_evaluate_rules` for a numerically tabulated
#: ``E[sigma(mu + s w)]`` (activations without a closed form; :func:`_smoothed_table`).
TABLE = "table"


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3, 4))
def _tile_kernel(fn, smoothed, split, factors, fused_sum, XP, PW, XL, WL, R, beta, sigma, stab, idx):
    """Rule sums by tiles. Tile ``t`` pairs block ``pb[t]`` of ``_TP`` partial nodes (coordinates ``XP``
    (nP, D-1, _TP) in the leading directions, weights ``PW`` (nP, _TP), 0 on padding) with block
    ``mb[t]`` of ``_TM`` nodes of the last direction (``XL``, ``WL`` (nM, _TM)), for job ``g[t]``: ridge
    rows ``R`` (J, n_rows, D), one factor ``fn(R_j . x)`` for each of the first ``factors`` rows (static; an
    input of power ``p`` is ``p`` equal rows: a factor per row is cheaper than a power chosen at run time),
    closed-form data ``beta`` (J, D), ``sigma`` (J,); with ``split = (kappa, h)`` a factor is
    ``h(exp(kappa a) exp(kappa b))`` (``a``, ``b``: the leading directions' and the last direction's terms of
    ``R_j . x``, one exponential per partial node and per last-direction node), with ``split = (kappa, h, n, d)``
    (``h = n / d``) a node's factors are the product of their numerators over that of their denominators (one
    division); the smoothed input (its mean ``beta`` along the last direction) is a factor of the last direction's
    weights: with ``smoothed == TABLE`` its values at those nodes are ``stab[sb[t]]`` (., _TM), or ``fn(beta_last x)``
    where ``sigma`` is 0; with a closed form ``smoothed(beta_last x, sigma)``. ``idx`` (T, 4): ``(pb, mb, sb, g)``
    per tile (one array: one transfer per call). Returns ``sum_{p, m} PW_p WL_m f(p, m)`` per tile (T,), by a
    contraction (``einsum``), or with ``fused_sum`` (static) by a sum over the products that XLA:CPU fuses with
    them: which is faster depends on how XLA compiles the activation (:data:`_FUSED_SUM`). The ``_TP x _TM``
    products are formed by broadcasting (no gather per node, which costs XLA:CPU more than the activation); padded
    nodes cost work, not accuracy."""
    D = R.shape[-1]
    pb, mb, sb, g = (idx[:, k] for k in range(4))
    X, P = XP[pb], PW[pb]  # (T, D-1, TP), (T, TP)
    xl, wl = XL[mb], WL[mb]  # (T, TM)
    Rg = R[g]  # (T, n_rows, D)

    def parts(c):  # sum_k c_k x_k for coefficients c (T, D): leading directions (T, TP, 1), last direction (T, 1, TM)
        return (sum(c[:, k, None] * X[:, k] for k in range(D - 1))[:, :, None],
                (c[:, D - 1, None] * xl)[:, None, :])

    def along(c):  # sum_k c_k x_k at the tile's nodes, (T, TP, TM)
        part, last = parts(c)
        return part + last

    def exps(c):  # exp(kappa sum_k c_k x_k) at the tile's nodes: one exponential per partial and per last node
        part, last = parts(c)
        return jnp.exp(split[0] * part) * jnp.exp(split[0] * last)

    if split is not None and len(split) == 4:  # h = n / d: numerators and denominators multiplied, one division
        n, d = split[2:]
        num = den = 1.0
        for j in range(factors):
            y = exps(Rg[:, j])
            num, den = num * n(y), den * d(y)
        vals = num / den
    else:
        vals = 1.0
        for j in range(factors):
            vals = vals * (fn(along(Rg[:, j])) if split is None else split[1](exps(Rg[:, j])))
    if smoothed == TABLE:  # tabulated values, or where the row's sigma is 0 the split input's own values
        direct = fn(beta[g][:, D - 1, None] * xl)
        wl = wl * jnp.where(sigma[g][:, None] == 0, direct, stab[sb])
    elif smoothed is not None:  # the closed form at the last direction's nodes, along which beta lies
        wl = wl * smoothed(beta[g][:, D - 1, None] * xl, sigma[g][:, None])
    if fused_sum:
        return jnp.sum(vals * P[:, :, None] * wl[:, None, :], axis=(1, 2))
    return jnp.einsum("tpm,tp,tm->t", vals, P, wl)


@byte_lru(64 * 2**20)
def rule_tiles(orders: tuple, cutoff: float, D: int):
    """The pruned rule ``orders`` (:func:`_tensor_rule`) as tiles for :func:`_tile_kernel` (cached):
    partial nodes of the leading directions sorted by decreasing weight, in blocks of ``_TP``
    (``XP`` (nP, D-1, _TP), real directions last, padded leading directions at 0; ``PW`` (nP, _TP)),
    the last direction's nodes by decreasing weight in blocks of ``_TM`` (``XL``, ``WL`` (nM, _TM)),
    and the tiles ``(pb, mb)`` that cover every kept node (a staircase: block ``pb`` pairs with the
    last-direction blocks its heaviest partial node keeps). A tile's other nodes keep their weights:
    the rule evaluated is the pruned rule plus some of the nodes it drops (each weighing less than
    ``cutoff`` times the largest). Also returns the number of nodes with nonzero weight in the tiles."""
    d = len(orders)
    lead, m_last = orders[:-1], orders[-1]
    pidx, pw, counts = _staircase(orders, cutoff)
    P = pw.size
    nP, nM = -(-P // _TP), -(-m_last // _TM)
    XP = np.zeros((nP * _TP, D - 1))
    for k, m in enumerate(lead):
        XP[:P, D - d + k] = _rule1d(m)[0][pidx[:, k]]
    PW = np.zeros(nP * _TP)
    PW[:P] = pw
    wsort, order = _rule1d_by_weight(m_last)
    XL, WL = np.zeros(nM * _TM), np.zeros(nM * _TM)
    XL[:m_last], WL[:m_last] = _rule1d(m_last)[0][order], wsort
    need = -(-counts[::_TP] // _TM)  # last-direction blocks per partial block (its first node keeps most)
    pb = np.repeat(np.arange(nP), need)
    mb = np.arange(pb.size) - np.repeat(np.cumsum(need) - need, need)
    real_p = np.minimum(P - pb * _TP, _TP)
    real_m = np.minimum(m_last - mb * _TM, _TM)
    return (XP.reshape(nP, _TP, D - 1).transpose(0, 2, 1).copy(), PW.reshape(nP, _TP), XL.reshape(nM, _TM),
            WL.reshape(nM, _TM), pb, mb, int(np.sum(real_p * real_m)))


def _job_tables(act_fn, beta, sigma, stol, jobs: dict, rows: np.ndarray):
    """The tabulated smoothing of every job (one tabulation for all): ``E[sigma(beta_last x + sigma w)]``
    at the nodes ``x`` of the job's last direction (by decreasing weight), in blocks of ``_TM`` nodes:
    ``(n_blocks, _TM)``, job ``g``'s blocks from ``boff[g]`` (``boff`` (G + 1,)); with the table's error
    bound and its evaluations, ``(G,)`` each (jobs in the order of ``jobs``: rule by rule, row by row; ``rows``
    (G,) their rows, concatenated).

    Jobs whose row has ``sigma == 0`` (the split input a combination of the others: e.g. four inputs of a
    rank-3 kernel) get no blocks: :func:`_tile_kernel` evaluates ``sigma(beta_last x)`` itself, exactly (one
    evaluation per node, counted here; no error)."""
    sizes = [r.size for r in jobs.values()]
    m_all = np.repeat([o[-1] for o in jobs], sizes)  # nodes per job
    m = np.where(sigma[rows] != 0, m_all, 0)  # table points per job
    rep = np.repeat(rows, m)  # the row of every table point
    start = np.cumsum(m) - m  # job g's points: [start[g], start[g] + m[g])
    within = np.arange(rep.size) - np.repeat(start, m)  # a point's node of its job's last direction
    # the last direction's nodes (by decreasing weight) of every order it takes, one after another
    lasts = sorted({o[-1] for o in jobs})
    x_cat = np.concatenate([_rule1d(k)[0][_rule1d_by_weight(k)[1]] for k in lasts])
    x_off = dict(zip(lasts, np.cumsum([0] + lasts[:-1])))
    first = np.repeat([x_off[o[-1]] for o in jobs], sizes)  # job g's nodes: x_cat[first[g]:first[g] + m_all[g]]
    mu = beta[rep, -1] * x_cat[np.repeat(first, m) + within]
    val, err, evals = _smoothed_table(act_fn, mu, sigma[rep], stol[rep])
    boff = np.concatenate([[0], np.cumsum(-(-m // _TM))])
    stab = np.zeros((max(boff[-1], 1), _TM))
    stab.reshape(-1)[np.repeat(boff[:-1] * _TM, m) + within] = val
    err_g, evals_g = np.zeros(rows.size), m_all.astype(float)
    has = m > 0
    if has.any():
        err_g[has], evals_g[has] = np.maximum.reduceat(err, start[has]), np.add.reduceat(evals, start[has])
    return stab, boff, err_g, evals_g


def bucket4(n: int, least: int = 4096) -> int:
    """``n`` rounded up to ``least`` times a power of 4 (few compiled shapes)."""
    s = least
    while s < n:
        s *= 4
    return s


def _kernel_rows(head_pattern, R, beta, D: int):
    """The factor rows of :func:`_tile_kernel` for ridge rows ``R`` (b, u_h, d) of inputs of multiplicities
    ``head_pattern`` and closed-form means ``beta`` (b, d), ``d <= D``: ``Rk`` (b, n_rows, D) (an input of
    power ``p`` is ``p`` equal rows, first; real directions last, padded leading directions 0; ``n_rows =
    max(D, sum(head_pattern))``), the number of factor rows ``sum(head_pattern)``, ``bk`` (b, D)."""
    b, _, d = R.shape
    rep = np.repeat(np.arange(len(head_pattern)), head_pattern)  # the rows of R, one per factor
    Rk = np.zeros((b, max(D, rep.size), D))
    Rk[:, :rep.size, D - d:] = R[:, rep]
    bk = np.zeros((b, D))
    bk[:, D - d:] = beta
    return Rk, rep.size, bk


def _evaluate_rules(act_fn, smoothed, Rk, factors: int, beta, sigma, jobs: dict, cutoff: float, stol=None,
                    bounds=None, split=None, split_ok=None, ratio=None, ratio_ok=None, flat: bool = False,
                    fused_sum: bool = False):
    """Sums of several rules, each for its own entries: ``jobs`` maps ``orders`` (per direction, ``d <= D``
    of them: the last ``d`` directions) to row indices (k,) into the rows ``Rk`` (b, n_rows, D), the first
    ``factors`` of them factors, ``beta`` (b, D) (:func:`_kernel_rows`; rows of several patterns with the same
    number of factors may share a call), ``sigma`` (b,). Returns
    ``{orders: (sum w f (k,), bound on sum w |f| (k,), nodes evaluated, smoothing error (k,),
    smoothing evaluations (k,))}``. ``bounds`` (two (b,) arrays, default ones): Hölder bounds of
    ``E|f|`` and of ``E|f_h|``, ``f_h`` the integrand without the tabulated factor. ``smoothed ==
    TABLE``: the closed-form input's mean ``beta`` lies along the last direction and its smoothed
    values are tabulated at that direction's nodes to ``stol`` (b,) (absolute); the smoothing error is
    the table's error times the bound on ``E|f_h|``. ``split`` (an activation's ``exp_split``): used by the
    jobs whose rows have ``split_ok`` (b,); in its ratio form (``ratio``, the activation's ``exp_ratio``) by
    those that also have ``ratio_ok`` (b,). A job is one rule for one row; the jobs' tiles (:func:`rule_tiles`)
    share kernel calls (those of one kernel form), dispatched before their results are read back. ``flat``: the same
    five as (G,) arrays over the jobs in the order of ``jobs`` (nodes per job), and ``{orders: first job}``.
    ``fused_sum``: the kernel's form of its sums (:data:`_FUSED_SUM`)."""
    b, _, D = Rk.shape
    offs = np.cumsum([0] + [rows.size for rows in jobs.values()])
    rows = np.concatenate(list(jobs.values())).astype(int)  # job g: row rows[g]
    G = rows.size
    if bounds is None:
        bounds = (np.ones(b), np.ones(b))
    if smoothed == TABLE:
        stab, boff, st_err, st_evals = _job_tables(act_fn, beta, sigma, stol, jobs, rows)
    else:  # no table: one zero block serves every tile
        stab, boff, st_err, st_evals = np.zeros((1, _TM)), np.zeros(G + 1, int), np.zeros(G), np.zeros(G)
    cap = _STAB_BLOCKS if smoothed == TABLE else 1
    rules = [rule_tiles(o, cutoff, D) for o in jobs]
    nP = np.array([r[0].shape[0] for r in rules])
    pbase = 1 + np.cumsum(nP) - nP  # block 0: zero weights, for padded tiles
    # the last direction's blocks depend on its order only: once per distinct order (a few hundred blocks)
    last = {}
    for o, r in zip(jobs, rules):
        last.setdefault(o[-1], r)
    mstart = dict(zip(last, np.cumsum([0] + [r[2].shape[0] for r in last.values()])))
    nPt, nMt = bucket4(1 + nP.sum()), bucket4(sum(r[2].shape[0] for r in last.values()), 256)  # few shapes
    XP = np.zeros((nPt, D - 1, _TP))
    PW = np.zeros((nPt, _TP))
    XL, WL = np.zeros((nMt, _TM)), np.zeros((nMt, _TM))
    for r, p0 in zip(rules, pbase):
        XP[p0:p0 + r[0].shape[0]], PW[p0:p0 + r[0].shape[0]] = r[0], r[1]
    for m, r in last.items():
        XL[mstart[m]:mstart[m] + r[2].shape[0]], WL[mstart[m]:mstart[m] + r[2].shape[0]] = r[2], r[3]
    mbase = [mstart[o[-1]] for o in jobs]
    nt = np.array([r[4].size for r in rules])
    put = device_if(G > _JOB_CHUNK or np.diff(offs) @ nt > _TILES_SMALL)  # more than one kernel call
    XP, PW, XL, WL = (put(a) for a in (XP, PW, XL, WL))
    tpb = np.concatenate([r[4] + p0 for r, p0 in zip(rules, pbase)])
    tmb_local = np.concatenate([r[5] for r in rules])
    tmb = np.concatenate([r[5] + m0 for r, m0 in zip(rules, mbase)])
    tstart = np.cumsum(nt) - nt
    rule_of_job = np.repeat(np.arange(len(rules)), np.diff(offs))
    if smoothed is not None and smoothed != TABLE:  # the closed form: once per tile and last-direction node
        st_evals = (nt * _TM)[rule_of_job].astype(float)
    Rp, bp, sg = Rk[rows], beta[rows], sigma[rows]
    out = np.zeros(G)
    pending = []

    def collect():
        for (g0, jt), res in zip([p[0] for p in pending], jax.device_get([p[1] for p in pending])):
            out[g0:g0 + _JOB_CHUNK] += np.bincount(jt, weights=np.asarray(res)[:jt.size], minlength=_JOB_CHUNK)[
                :min(_JOB_CHUNK, G - g0)]
        pending.clear()

    # each job's kernel form, from its row alone (0: direct, 1: split by h, 2: the split's ratio form); the tiles of
    # each form share calls of their own
    form = np.zeros(G, np.int8)
    if split is not None and split_ok is not None:
        ok = split_ok[rows]
        form[ok] = 1
        if ratio is not None and ratio_ok is not None:
            form[ok & ratio_ok[rows]] = 2
    kernels = (None, split, None if ratio is None else (*split, *ratio))
    g0 = 0
    while g0 < G:  # chunks of at most _JOB_CHUNK jobs and _STAB_BLOCKS table blocks
        g1 = min(G, g0 + _JOB_CHUNK, max(g0 + 1, int(np.searchsorted(boff, boff[g0] + cap, side="right")) - 1))
        J = g1 - g0
        u = rule_of_job[g0:g1]
        cnt = nt[u]
        jt = np.repeat(np.arange(J, dtype=np.int32), cnt)  # job (within the chunk) of every tile
        first = np.repeat(np.cumsum(cnt) - cnt, cnt)
        ti = np.repeat(tstart[u], cnt) + np.arange(jt.size) - first
        tiles = np.zeros((jt.size, 4), np.int32)  # per tile (pb, mb, sb, g)
        tiles[:, 0], tiles[:, 1], tiles[:, 3] = tpb[ti], tmb[ti], jt
        if smoothed == TABLE:
            blocks = np.diff(boff[g0:g1 + 1])[jt] > 0  # no blocks: the kernel's own values (sigma 0)
            tiles[:, 2] = np.where(blocks, boff[g0:g1][jt] - boff[g0] + tmb_local[ti], 0)
            stc = _pad_rows(stab[boff[g0]:boff[g1]], cap)
        else:
            stc = stab
        per_job = [put(_pad_rows(a[g0:g1], _JOB_CHUNK)) for a in (Rp, bp, sg)] + [put(stc)]
        tform = form[g0:g1][jt]
        for f in np.unique(tform):
            grp = tiles[tform == f]
            st = 0
            while st < grp.shape[0]:  # calls of three shapes; padding: tile 0, zero weight
                rest = grp.shape[0] - st
                T = _TILES_LARGE if rest >= _TILES_LARGE * 3 // 4 else _TILES if rest > _TILES // 2 else _TILES_SMALL
                call = _tile_kernel(act_fn, smoothed, kernels[f], factors, fused_sum, XP, PW, XL, WL, *per_job,
                                    _pad_rows(grp[st:st + T], T))
                pending.append(((g0, grp[st:st + T, 3]), call))
                st += T
        if len(pending) > 64:
            collect()
        g0 = g1
    collect()
    mag_b, head_b = bounds
    nodes = [r[6] for r in rules]
    per_job = (out, mag_b[rows], np.repeat(nodes, np.diff(offs)).astype(float), head_b[rows] * st_err, st_evals)
    if flat:
        return per_job, dict(zip(jobs, offs[:-1].tolist()))
    return {o: tuple(a[offs[u]:offs[u + 1]] if k != 2 else nodes[u] for k, a in enumerate(per_job))
            for u, o in enumerate(jobs)}


def _pad_rows(a: np.ndarray, B: int) -> np.ndarray:
    """``a`` padded with zero rows to ``B`` rows (fixed call shapes)."""
    out = np.zeros((B,) + a.shape[1:], a.dtype)
    out[:a.shape[0]] = a
    return out


def _eig_sqrt(C):
    """``R`` with ``R R^T = C`` (b, u, u), columns ordered by decreasing eigenvalue; and the eigen data."""
    lam, U = np.linalg.eigh(np.asarray(C))
    lam = np.clip(lam, 0.0, None)[:, ::-1]
    U = U[:, :, ::-1]
    return U * np.sqrt(lam)[:, None, :], lam, U


#: Residual variances of the split input up to this many ulps of its variance are rounding noise of the regression
#: (as negative ones are) and taken as 0: the split input is then a combination of the others (e.g. four inputs of
#: a rank-3 kernel; in a 16 x 40 prediction 97% of the nonzero residuals of such blocks were within 64 ulps).
#: Taking ``s^2 <= 64 eps C`` as 0 changes ``E[sigma(mu + s w)]`` by ``s^2 |sigma''| / 2``, 7e-15 ``C |sigma''|``
#: at most.
_RESIDUAL_ZERO = 64.0


def _smooth_setup(act: Activation, C: np.ndarray, pattern: tuple):
    """Coordinates of the smooth rule: ridge rows ``R`` (b, u_h, d), closed-form input data
    ``beta`` (b, d), ``sigma`` (b,), the pattern of the integrated inputs, and the closed-form flag.

    An input of power 1 is split into its regression on the others, ``beta . x``, plus an independent
    residual of std ``sigma``, which is integrated in closed form (``act.smoothed``) or, without one,
    from a table; either is needed along one direction only: the coordinates are rotated so that ``beta`` lies
    along the first direction (the others span its orthogonal complement, ordered by the head's variance)."""
    u = len(pattern)
    ones = [j for j, p in enumerate(pattern) if p == 1]
    if u >= 2 and ones:
        last = ones[-1]
        head = [j for j in range(u) if j != last]
        Ch = C[:, head][:, :, head]
        R, lam, U = _eig_sqrt(Ch)
        thr = 1e-13 * np.maximum(lam[:, :1], 1e-300)
        inv_sqrt = np.where(lam > thr, 1.0 / np.sqrt(np.where(lam > thr, lam, 1.0)), 0.0)
        c_lh = C[:, last, head]  # (b, u-1)
        beta = np.einsum("bj,bjk->bk", c_lh, U) * inv_sqrt
        res = C[:, last, last] - np.sum(beta * beta, axis=1)  # the residual variance, up to rounding
        sigma = np.sqrt(np.where(res > _RESIDUAL_ZERO * _EPS * C[:, last, last], res, 0.0))
        R, beta = _rotate_to_beta(R, beta)
        return R, beta, sigma, tuple(pattern[j] for j in head), True
    R, _, _ = _eig_sqrt(C)
    b, d = R.shape[0], R.shape[2]
    return R, np.zeros((b, d)), np.zeros(b), tuple(pattern), False


def _rotate_to_beta(R, beta):
    """``R Q``, ``beta Q`` with ``Q`` (b, d, d) orthogonal, ``Q[:, :, 0] = beta / |beta|`` and the other
    columns the eigenvectors of ``R^T R`` restricted to ``beta``'s orthogonal complement, by decreasing
    eigenvalue (rows with ``beta = 0`` keep their coordinates). Then ``beta Q = (|beta|, 0, ...)``."""
    b, _, d = R.shape
    nb = np.linalg.norm(beta, axis=1)
    ok = nb > 0
    e = np.where(ok[:, None], beta / np.where(ok, nb, 1.0)[:, None], 0.0)
    ee = e[:, :, None] * e[:, None, :]
    P = np.eye(d) - ee
    M = P @ np.swapaxes(R, 1, 2) @ R @ P - ee  # e: eigenvalue -1, below every vector orthogonal to it
    lam, V = np.linalg.eigh(M)
    Q = np.concatenate([e[:, :, None], V[:, :, :0:-1]], axis=2)  # e, then the others largest first
    Q = np.where(ok[:, None, None], Q, np.eye(d))
    return R @ Q, np.einsum("bk,bkl->bl", beta, Q)


@functools.lru_cache(maxsize=64)
def _jit_fn(fn):
    return jax.jit(fn)


#: How the per-direction scale is formed from the ridge coefficients ``R[:, j, k]`` of the
#: inputs ``j`` along direction ``k``: "l1" (sum over inputs) or "max".
_SCALE_NORM = "max"


def _direction_scale(R, beta=None):
    """Per-direction scale of the integrand (b, d): the inputs' coefficients along each direction."""
    A = np.abs(R)
    if beta is not None:
        A = np.concatenate([A, np.abs(beta)[:, None, :]], axis=1)
    if _SCALE_NORM == "l1":
        return A.sum(axis=1)
    if _SCALE_NORM == "l2":
        return np.sqrt((A * A).sum(axis=1))
    return A.max(axis=1)


def _fourth_moments_all(act: Activation, Cs: list) -> list:
    """``E[sigma(z_j)^4]`` (b, u) for the inputs of each of the blocks ``Cs`` (b, u, u) (one activation call
    for all: few distinct variances, padded to :func:`bucket4` ``(n, 64)`` of them, so that new inputs seldom
    compile the call again)."""
    x, w = gauss_hermite(200)
    kd = [np.sqrt(np.clip(np.diagonal(np.asarray(C), axis1=1, axis2=2), 0.0, None)) for C in Cs]  # (b, u)
    sd, inv = np.unique(np.concatenate([k.ravel() for k in kd]), return_inverse=True)
    n = sd.size
    z = np.concatenate([sd, np.zeros(bucket4(n, 64) - n)])[:, None] * x
    m4 = (np.asarray(_jit_fn(act.fn)(z)) ** 4 @ w)[:n][inv.reshape(-1)]  # one call: NumPy in
    return [m.reshape(k.shape) for m, k in zip(np.split(m4, np.cumsum([k.size for k in kd])[:-1]), kd)]


def _fourth_moments(act: Activation, C: np.ndarray) -> np.ndarray:
    """``E[sigma(z_j)^4]`` (b, u) for the inputs of the blocks ``C`` (b, u, u)."""
    return _fourth_moments_all(act, [C])[0]


def _holder_scale(act: Activation, C: np.ndarray, pattern: tuple) -> np.ndarray:
    """``prod_j E[sigma(z_j)^4]^{p_j / 4}``: bounds ``|E prod sigma^p|``; sets the relative tolerance."""
    return np.prod(_fourth_moments(act, C) ** (np.asarray(pattern) / 4.0), axis=1)


#: Largest convergence ratio per ladder step assumed by :func:`_tail_factor` (the factor is then 19).
_RHO_MAX = 0.95
#: Calibration errors below this are rounding: no convergence ratio is read from them.
_RHO_FLOOR = 1e-14


def _tail_factor(act: Activation, lad: np.ndarray, s: np.ndarray, powers: tuple = _CAL_POWERS) -> np.ndarray:
    """Factor turning the difference ``|Q_k - Q_(k-1)|`` of a rule and its companion one ladder step
    lower into an estimate of the error of ``Q_k``: with geometric convergence ``err_k = rho err_(k-1)``,
    ``err_k = rho / (1 - rho) |Q_k - Q_(k-1)|``. ``rho`` per direction is read from the one-dimensional
    calibration (:func:`_error_table`) at the direction's order and scale, the worst direction counts,
    and the factor is at least 1. Slowly converging rules (large variances of saturating activations)
    get factors of several; rows ``lad`` (b, d) of ladder indices, ``s`` (b, d) direction scales."""
    table = _error_table(act, powers)
    pos = np.clip(np.searchsorted(np.asarray(_S_GRID), s, side="left"), 0, len(_S_GRID) - 1)
    fine = table[lad, pos]
    prev = table[np.maximum(lad - 1, 0), pos]
    ok = (fine > _RHO_FLOOR) & (prev > 0) & (lad > 0) & (s > 0)
    rho = np.where(ok, np.minimum(fine / np.where(prev > 0, prev, 1.0), _RHO_MAX), 0.0).max(axis=1)
    return np.maximum(1.0, rho / (1.0 - rho))


def _calibrated_error(act: Activation, lad: np.ndarray, s: np.ndarray, powers: tuple = _CAL_POWERS) -> np.ndarray:
    """Worst one-dimensional calibration error (relative) over the directions of rows ``lad`` (b, d)
    of ladder indices at scales ``s`` (b, d)."""
    pos = np.clip(np.searchsorted(np.asarray(_S_GRID), s, side="left"), 0, len(_S_GRID) - 1)
    return np.where(s > 0, _error_table(act, powers)[lad, pos], 0.0).max(axis=1)


#: Limits of the exponential split (:class:`_SmoothRows`): node coordinates at most ``_SPLIT_NODE`` (the ladder's
#: largest is 30.7, Gauss-Hermite with 250 nodes), exponents at most ``_SPLIT_EXP`` (a product of two stays
#: finite); its absolute error per factor, at most ``_SPLIT_ULPS`` ulps, is added to the estimate and kept below
#: ``_SPLIT_SHARE`` of the tolerance.
_SPLIT_NODE = 32.0
_SPLIT_EXP = 350.0
_SPLIT_ULPS = 4.0
_SPLIT_SHARE = 0.1
#: Largest sum of a node's exponents (each input's bound times its power) for the ratio form of the split: the
#: product of up to eight denominators, each at most ``2 max(1, y)``, stays below the largest double (e^709.78).
_RATIO_EXP = 690.0


def _first_orders(act: Activation, R: np.ndarray, beta, head_pattern, rtol: float):
    """The first round's rule of the smooth rule's rows (:func:`_smooth_setup`'s ridge rows ``R`` (b, u_h, d), ``beta``
    (b, d) where an input is split off, else ``None``): per-direction scales ``s`` and ladder indices ``lad``, (b, d)
    each (also what :func:`rule_nodes` counts)."""
    s = _direction_scale(R, beta)
    return s, _affordable(_orders(act, s, rtol, _cal_powers(head_pattern)))


class _SmoothRows:
    """The smooth rule for one pattern's blocks ``C`` (b, u, u) (``m4``: :func:`_fourth_moments`): coordinates,
    per-entry ladder indices and results, refined round by round. A round asks for rule sums
    (:meth:`request`) and takes them back (:meth:`receive`); :func:`_smooth_joint` serves the rounds of
    several patterns with shared rule passes."""

    def __init__(self, act: Activation, C: np.ndarray, pattern, rtol: float, max_rounds: int, m4: np.ndarray):
        b = C.shape[0]
        self.act, self.rtol, self.rounds_left = act, rtol, max_rounds
        self.scale = np.prod(m4 ** (np.asarray(pattern) / 4.0), axis=1)
        R, beta, sigma, self.head_pattern, closed = _smooth_setup(act, C, pattern)
        # rows whose kernel may use act.exp_split: exp(kappa R_j . x) in range at every node (|x| <= _SPLIT_NODE),
        # and the split's error (_SPLIT_ULPS ulps per factor, absolute: relative to an input's <sigma^4>^(1/4)
        # m_j, the sum over the inputs, the tabulated one included, of p_j _SPLIT_ULPS eps / m_j times the
        # Hoelder bound) below _SPLIT_SHARE * rtol; that error is added to the rows' estimates (``split_err``)
        # (the same error counted for its ratio form, act.exp_ratio, used where the products of a node's
        # denominators stay finite: the inputs' exponents, times their powers, sum to at most _RATIO_EXP)
        self.split_ok, self.split_err = np.zeros(b, dtype=bool), np.zeros(b)
        self.ratio_ok = np.zeros(b, dtype=bool)
        if act.exp_split is not None:
            err = _SPLIT_ULPS * _EPS * np.sum(np.asarray(pattern) * np.maximum(m4, 1e-300) ** -0.25, axis=1)
            reach = abs(act.exp_split[0]) * _SPLIT_NODE * np.abs(R).sum(axis=2)  # (b, u_h) per input
            self.split_ok = (err <= _SPLIT_SHARE * rtol) & (reach.max(axis=1, initial=0.0) <= _SPLIT_EXP)
            self.split_err = np.where(self.split_ok, err * self.scale, 0.0)
            if act.exp_ratio is not None:
                self.ratio_ok = self.split_ok & (reach @ np.asarray(self.head_pattern, dtype=float) <= _RATIO_EXP)
        self.cal = _cal_powers(self.head_pattern)
        s, lad = _first_orders(act, R, beta if closed else None, self.head_pattern, rtol)  # (b, d) each
        if closed:  # beta's direction (the first) last: the smoothed input is evaluated (or tabulated) along it
            perm = np.concatenate([1 + np.argsort(-lad[:, 1:], axis=1, kind="stable"),
                                   np.zeros((b, 1), dtype=int)], axis=1)
        else:  # the largest order last: it fills the kernel's tiles along the last direction
            perm = np.argsort(lad, axis=1, kind="stable")
        self.lad = np.take_along_axis(lad, perm, axis=1)
        self.R = np.take_along_axis(R, perm[:, None, :], axis=2)
        self.beta = np.take_along_axis(beta, perm, axis=1)
        self.s = np.take_along_axis(s, perm, axis=1)
        self.sigma = sigma
        self.smoothed = (act.smoothed or TABLE) if closed else None
        # the table's error bound times sum w |f_h| (~ the other inputs' Hoelder factor) stays below
        # _TABLE_TOL * rtol * scale
        split = [j for j, p in enumerate(pattern) if p == 1][-1] if closed else 0
        self.stol = _TABLE_TOL * rtol * m4[:, split] ** 0.25
        # Hoelder bounds of E|f| (round-off floor) and of E|f_h| (times the table's error bound)
        head_p = np.asarray(pattern, dtype=float) / 4.0
        if closed:
            head_p[split] = 0.0
        self.head_scale = np.prod(m4 ** head_p, axis=1)
        self.val = np.zeros(b)
        self.err = np.full(b, np.inf)
        self.nodes_used = np.zeros(b)
        self.smooth_evals = np.zeros(b)
        self.todo = np.arange(b)
        # a refined row whose rule rose one ladder step in every direction has its previous rule as companion:
        # that value (``prev``) is reused instead of evaluating the companion again
        self.reuse = np.zeros(b, dtype=bool)
        self.prev = np.zeros(b)

    def request(self) -> dict:
        """This round's rule sums, ``{orders: rows (k,)}`` (empty when done). Every distinct rule (a group's
        rule, or its companion one step lower) is asked for once per row."""
        todo, lad = self.todo, self.lad
        if not todo.size or self.rounds_left <= 0:
            return {}
        self.rounds_left -= 1
        # groups of rows with the same ladder indices, in the order of their first row (as listed in todo)
        code = lad[todo] @ (len(LADDER) ** np.arange(lad.shape[1]))  # one integer per row of ladder indices
        _, first, inv = np.unique(code, return_index=True, return_inverse=True)
        order = np.argsort(first, kind="stable")
        rank = np.empty_like(order)
        rank[order] = np.arange(order.size)
        grp = rank[inv.reshape(-1)]
        rows = todo[np.argsort(grp, kind="stable")]  # grouped; within a group in todo's order
        counts = np.bincount(grp, minlength=order.size)
        starts = np.cumsum(counts) - counts
        # row i of ``rows`` reads rule slot[k][i] (k = 0 fine, 1 coarse) at position pos[k][i] of its jobs
        # (rows that reuse their previous value run no companion)
        jobs, sizes, ids = {}, {}, {}
        slot = np.zeros((2, rows.size), dtype=int)
        pos = np.zeros((2, rows.size), dtype=int)
        fresh = ~self.reuse[rows]
        for gi in range(order.size):
            key = lad[todo[first[order[gi]]]]
            sl = np.arange(starts[gi], starts[gi] + counts[gi])
            for k, orders in enumerate((tuple(LADDER[j] for j in key), tuple(LADDER[max(j - 1, 0)] for j in key))):
                if k:
                    sl = sl[fresh[sl]]
                    if not sl.size:
                        continue
                jobs.setdefault(orders, []).append(rows[sl])
                slot[k, sl] = ids.setdefault(orders, len(ids))
                pos[k, sl] = sizes.get(orders, 0) + np.arange(sl.size)
                sizes[orders] = sizes.get(orders, 0) + sl.size
        self._round = rows, slot, pos, fresh, sizes
        return {o: np.concatenate(r) for o, r in jobs.items()}

    def receive(self, flat, first: dict):
        """Takes the sums asked for by :meth:`request` (``flat``: sum, magnitude, nodes, table error, table
        evaluations per job, :func:`_evaluate_rules` with ``flat``; ``first``: the job of this request's first row of
        each rule), sets values and error estimates, and raises the ladder indices of the rows that miss the
        tolerance."""
        rows, slot, pos, fresh, sizes = self._round
        act, lad, s, cal = self.act, self.lad, self.s, self.cal
        joff = np.array([first[o] for o in sizes])  # by rule id (the order of ``sizes``)
        fine, coarse = joff[slot[0]] + pos[0], joff[slot[1]] + pos[1]
        q, mag, n_fine, serr, sev = (a[fine] for a in flat)
        qc = np.where(fresh, flat[0][coarse], self.prev[rows])  # reused rows: their previous rule, no new nodes
        n_coarse, sev_c = (np.where(fresh, flat[i][coarse], 0.0) for i in (2, 4))
        self.prev[rows] = q
        lr, sr = lad[rows], s[rows]
        e = np.abs(q - qc) * _tail_factor(act, lr, sr, cal) + 64 * _EPS * mag + serr + self.split_err[rows]
        self.smooth_evals[rows] += sev + sev_c
        nxt = _raised(lr)
        stuck = nxt == lr  # directions that cannot refine
        # a direction cannot refine (no convergence to trust), or runs the 255-node rule, whose truncation at 8 its
        # companion (253 nodes on [-9, 9]) shows only in part
        capped = (stuck | (lr == _NARROW_TOP)).any(axis=1)
        if capped.any():
            e = np.where(capped, np.maximum(e, _calibrated_error(act, lr, sr, cal) * self.scale[rows]), e)
        self.val[rows] = q
        self.err[rows] = e
        self.nodes_used[rows] += n_fine + n_coarse
        more = ~stuck.all(axis=1) & (e > self.rtol * self.scale[rows])
        todo = rows[more]
        self.todo = todo
        if todo.size:  # refine: one ladder step up in every direction that is not capped
            # where every direction rises, the companion of the next round is this round's rule
            self.reuse[todo] = (nxt[more] == lr[more] + 1).all(axis=1)
            lad[todo] = nxt[more]

    def stats(self) -> dict:
        """Per entry: ``"nodes"`` (rule and companion nodes) and ``"evaluations"`` (activation calls)."""
        return {"nodes": self.nodes_used,
                "evaluations": self.nodes_used * len(self.head_pattern) + self.smooth_evals}


def _smooth_joint(act: Activation, items, *, rtol: float, max_rounds: int = 7):
    """The smooth rule for several patterns' blocks, ``items`` ``[(C (b, u, u), pattern), ...]``, whose
    integrands have the same form (the same ``smoothed`` treatment and number of factors, e.g. every pattern
    of a four-input multiset with an input of power 1): each round runs the rules every pattern asks for in
    one :func:`_evaluate_rules` pass (one tabulation, shared kernel calls). Returns the patterns'
    :class:`_SmoothRows` (values ``val``, estimates ``err``, Hölder scales ``scale``, :meth:`_SmoothRows.stats`)."""
    Cs = [np.asarray(C, dtype=float) for C, _ in items]
    parts = [_SmoothRows(act, C, p, rtol, max_rounds, m)
             for C, (_, p), m in zip(Cs, items, _fourth_moments_all(act, Cs))]
    if len({(p.smoothed, sum(p.head_pattern)) for p in parts}) > 1:
        raise ValueError("patterns of one joint run need the same smoothing and number of factors")
    D = max([3] + [p.R.shape[2] for p in parts])  # padded directions (one compiled shape for every pattern)
    rows = [_kernel_rows(p.head_pattern, p.R, p.beta, D) for p in parts]
    Rk, bk = np.concatenate([r[0] for r in rows]), np.concatenate([r[2] for r in rows])
    sigma, stol, scale, head_scale, split_ok, ratio_ok = (
        np.concatenate([getattr(p, a) for p in parts])
        for a in ("sigma", "stol", "scale", "head_scale", "split_ok", "ratio_ok"))
    off = np.cumsum([0] + [p.val.size for p in parts])
    while True:
        asks = [p.request() for p in parts]
        if not any(asks):
            return parts
        jobs = {}
        for ask, o0 in zip(asks, off):
            for o, r in ask.items():
                jobs.setdefault(o, []).append(r + o0)
        flat, first = _evaluate_rules(act.fn, parts[0].smoothed, Rk, rows[0][1], bk, sigma,
                                      {o: np.concatenate(r) for o, r in jobs.items()}, _CUTOFF * rtol, stol,
                                      (scale, head_scale), act.exp_split, split_ok, act.exp_ratio, ratio_ok,
                                      flat=True, fused_sum=act.name in _FUSED_SUM)
        for p, ask in zip(parts, asks):  # each pattern's rows follow the earlier patterns' in every rule
            if ask:
                p.receive(flat, {o: first[o] for o in ask})
                for o, r in ask.items():
                    first[o] += r.size


def _smooth(act: Activation, C, pattern, *, rtol: float, max_rounds: int = 7, stats: dict | None = None):
    """The smooth rule for one pattern: ``(values, error estimates, Hölder scales)``, (b,) each."""
    (p,) = _smooth_joint(act, [(C, pattern)], rtol=rtol, max_rounds=max_rounds)
    if stats is not None:
        stats.update(p.stats())
    return p.val, p.err, p.scale


#: Default relative tolerance (relative to ``prod_j E[sigma(z_j)^4]^{p_j/4}``).
RTOL = 1e-9

#: Seconds per node of the first round's rules (:func:`rule_nodes`) as a smooth activation's four-point values run,
#: their companions, refinement rounds, tables and host work included, for activations whose split input is tabulated
#: (tanh, swish, sigmoid, user callables): 4.4-7.6 ns for tanh priors of 16-64 inputs at depths 3-6, warm, 2 cores
#: (``benchmarks/four_point_cost.py``, ``docs/four-point.md``, "Cost"; small calls cost more per node, their fixed
#: cost).
NODE_SECONDS = 5e-9
#: The same for activations whose split input has a closed form (``Activation.smoothed``: erf, gelu): 9.7-18.9 ns
#: for erf, 25.8 ns for gelu (24 and 32 inputs, depth 3); a middle value: their estimates were 0.58-1.54 of the time.
SMOOTHED_NODE_SECONDS = 1.5e-8
#: Multisets (evenly spaced rows) over which :func:`rule_nodes` averages: within 1.3% of the mean over every row at 12
#: and 24 inputs (128 rows: up to 23%), in ~7 ms.
COST_SAMPLE = 512


def rule_nodes(act: Activation, K, ms, *, rtol: float = RTOL, sample: int | None = COST_SAMPLE):
    """Mean node count of the first round's calibrated rules (no companion, no refinement) of the smooth rule over the
    sorted multiset rows ``ms`` (M, 4) of the kernel ``K`` (N, N) (over ``sample`` evenly spaced rows; ``None``: all),
    and the same with each multiset's block divided by its largest variance where that exceeds 1: ``(nodes, nodes at
    variances up to 1)``. For smooth activations integrated by quadrature (``docs/four-point.md``, "Cost")."""
    K = np.asarray(K, dtype=float)
    ms = np.asarray(ms).reshape(-1, 4)
    if sample is not None and ms.shape[0] > sample:
        ms = ms[np.linspace(0, ms.shape[0] - 1, sample).astype(int)]
    cutoff = _CUTOFF * rtol
    total = np.zeros(2)
    for pattern, (_, idx) in split_multisets(ms).items():
        C = K[idx[:, :, None], idx[:, None, :]]
        top = np.max(np.diagonal(C, axis1=1, axis2=2), axis=1)
        for k, block in enumerate((C, C / np.maximum(top, 1.0)[:, None, None])):
            R, beta, _, head, closed = _smooth_setup(act, block, pattern)
            _, lad = _first_orders(act, R, beta if closed else None, head, rtol)
            rules, count = np.unique(lad, axis=0, return_counts=True)
            total[k] += sum(tensor_rule_size(tuple(LADDER[j] for j in r), cutoff) * int(c)
                            for r, c in zip(rules.tolist(), count))
    return float(total[0] / ms.shape[0]), float(total[1] / ms.shape[0])


def max_rule_nodes(act: Activation, variance: float, *, rtol: float = RTOL) -> int:
    """At least the node count of any first-round rule (:func:`rule_nodes`) of a multiset whose inputs have variances up
    to ``variance``: a direction's scale is at most the largest standard deviation, and a rule has three directions
    with powers up to 2 (four distinct inputs, one split off: :func:`_smooth_setup`), at most two (patterns
    ``(2, 1, 1)``, ``(2, 2)``, ...) or one direction with powers up to 4 (``(3, 1)``, ``(4,)``); the larger of the
    isotropic three-direction rule at the scale ``sqrt(variance)`` calibrated on powers 1 and 2 and the one-direction
    rule calibrated on powers 1 to 4 (at variance 2.8, tanh: 2.2e5 nodes, where one rule for every direction and
    power gave 4.2e6 against 2.9e3 on average)."""
    s = math.sqrt(max(float(variance), 0.0))
    three = _affordable(_orders(act, np.full((1, 3), s), rtol, (1, 2)))[0]
    one = _orders(act, np.full((1, 1), s), rtol, (1, 2, 3, 4))[0, 0]
    return max(tensor_rule_size(tuple(LADDER[j] for j in three), _CUTOFF * rtol), LADDER[one])


#: The fixed rule is used for an entry only when its calibrated error is this factor below the tolerance.
FIXED_MARGIN = 0.1
#: Relative error floor of the fixed rule (rounding in its high-order nodes and weights, pruning;
#: measured up to 2.5e-13 against this module's rule at rtol 1e-13).
FIXED_FLOOR = 1e-12


def fixed_rule_errors(act: Activation, C, pattern, order: int) -> np.ndarray:
    """Calibrated error estimate ``(b,)`` (absolute) of the isotropic ``order``-point tensor
    Gauss-Hermite rule in the eigen-coordinates of ``C`` (the engine's fixed rule,
    ``ngp._finite.FOUR_POINT_ORDERS``) for ``E[prod_j sigma(z_j)^{p_j}]``: the Hölder scale times the
    worst one-dimensional calibration error (:func:`_error_table`, on the powers up to the pattern's
    largest: :func:`_cal_powers`) of the largest ladder order ``<= order`` over the directions' scales, at
    least :data:`FIXED_FLOOR`. ``inf`` for activations that are not smooth or have ``relu_slopes`` (no
    calibration)."""
    pattern = _pattern(pattern)
    C = _as_blocks(C, len(pattern))
    if act.relu_slopes is not None or not act.smooth:
        return np.full(C.shape[0], np.inf)
    return _fixed_rule_relative(act, C, pattern, order) * _holder_scale(act, C, pattern)


def _fixed_rule_relative(act: Activation, C: np.ndarray, pattern: tuple, order: int) -> np.ndarray:
    """:func:`fixed_rule_errors` relative to the Hölder scale (a smooth activation, blocks ``C`` (b, u, u))."""
    R, _, _ = _eig_sqrt(C)
    s = _direction_scale(R)  # (b, d)
    li = max(0, int(np.searchsorted(np.asarray(LADDER), int(order), side="right")) - 1)
    table = _error_table(act, _cal_powers(pattern))[li]  # (scales,): sigma^4 oscillates faster than sigma^2
    pos = np.searchsorted(np.asarray(_S_GRID), s, side="left")
    e = np.where(pos >= len(_S_GRID), np.inf, table[np.clip(pos, 0, len(_S_GRID) - 1)])
    e = np.where(s <= 0, 0.0, e).max(axis=1)
    return np.maximum(e, FIXED_FLOOR)


def fixed_rule_split(act: Activation, K, ms, orders: dict, *, rtol: float = RTOL):
    """Which sorted multiset rows ``ms`` (M, 4) the engine's fixed rule (``orders``: nodes per
    dimension by the number of distinct inputs) already computes to ``FIXED_MARGIN * rtol`` by the
    calibration: returns ``ok`` (M,) bool and the calibrated error estimates (M,) (absolute).

    Only patterns without an input of power 1, ``(2, 2)`` and ``(4,)``, can stay on the fixed rule: the
    others integrate that input in closed form or from a table, which is faster at every variance
    (``docs/four-point.md``, "Which rule runs when"); activations with a closed-form ``smoothed`` (erf,
    gelu) never stay on it."""
    K = np.asarray(K, dtype=float)
    ms = np.asarray(ms)
    ok = np.zeros(ms.shape[0], dtype=bool)
    est = np.full(ms.shape[0], np.inf)
    if act.relu_slopes is not None or not act.smooth or act.smoothed is not None:
        return ok, est
    for pattern, (rows, idx) in split_multisets(ms).items():
        if 1 in pattern:
            continue
        C = K[idx[:, :, None], idx[:, None, :]]
        scale = _holder_scale(act, C, pattern)
        e = _fixed_rule_relative(act, C, pattern, orders[len(pattern)]) * scale  # fixed_rule_errors
        est[rows] = e
        ok[rows] = e <= FIXED_MARGIN * rtol * scale
    return ok, est


# ============================================================================ public functions


def product_expectations(act: Activation, C, pattern, *, rtol: float = RTOL, stats: dict | None = None):
    """``E[prod_j sigma(z_j)^{p_j}]`` for ``z ~ N(0, C)`` over a batch of covariance blocks.

    Args:
        act: the activation; dispatch is on what it declares: ``relu_slopes`` (exact rules:
            Isserlis for ``a_+ == a_-``, the orthant reduction otherwise), else ``smooth``
            (quadrature; one input of power 1 in closed form with ``smoothed``, else from a table).
        C: ``(b, u, u)`` (or ``(u, u)``) positive semi-definite covariance blocks of ``u``
            distinct inputs; singular and nearly singular blocks are allowed.
        pattern: ``u`` positive multiplicities ``p_j``.
        rtol: target error relative to the bound ``prod_j E[sigma(z_j)^4]^{p_j/4}`` of the result
            (the relu family is always computed to ~1e-13 or better).
        stats: optional dict; receives ``"nodes"`` and ``"evaluations"`` (activation calls) per
            entry for the quadrature rule.

    Returns:
        ``(values, errors)``, NumPy arrays of shape ``(b,)``: the expectations and estimates of
        their absolute numerical errors (see ``docs/four-point.md``).

    Raises:
        ValueError: bad shapes, or a kinked activation (``smooth=False``) without ``relu_slopes``.
    """
    pattern = _pattern(pattern)
    u = len(pattern)
    C = _as_blocks(C, u)
    _check_rtol(rtol)
    b = C.shape[0]
    if stats is not None:
        stats["nodes"] = np.zeros(b)
        stats["evaluations"] = np.zeros(b)
    if act.relu_slopes is not None:
        a_plus, a_minus = (float(x) for x in act.relu_slopes)
        if a_plus == a_minus:
            terms = _isserlis(C, pattern) * a_plus ** sum(pattern)
            val = np.asarray(terms)
            mag = np.asarray(_isserlis(np.abs(C), pattern)) * abs(a_plus) ** sum(pattern)
            return val, 16 * _EPS * mag
        return _relu_family(C, pattern, (a_plus, a_minus), rtol=min(rtol, 1e-12))
    if not act.smooth:
        raise ValueError(
            f"activation {act.name!r} is declared non-smooth and has no closed form (relu_slopes): "
            "its four-point expectations cannot be integrated accurately by quadrature."
        )
    val, err, _ = _smooth(act, C, pattern, rtol=rtol, stats=stats)
    return val, err


def _check_rtol(rtol: float):
    if not (0 < rtol < 1):
        raise ValueError(f"rtol: expected a number in (0, 1), got {rtol!r}")


def split_multisets(ms) -> dict:
    """Group sorted multiset rows ``ms`` (M, 4) by multiplicity pattern.

    Returns ``{pattern: (rows, idx)}`` with ``rows`` (m,) positions in ``ms`` and ``idx`` (m, u)
    the distinct inputs in order (e.g. ``a <= a <= c <= d`` -> pattern ``(2, 1, 1)``, ``(a, c, d)``).
    """
    ms = np.asarray(ms)
    a, b, c, d = (ms[:, i] for i in range(4))
    eq = (ms[:, 1:] == ms[:, :-1]).astype(int)
    code = eq[:, 0] * 4 + eq[:, 1] * 2 + eq[:, 2]
    layout = {
        0: ((a, b, c, d), (1, 1, 1, 1)),
        4: ((a, c, d), (2, 1, 1)),
        2: ((a, b, d), (1, 2, 1)),
        1: ((a, b, c), (1, 1, 2)),
        6: ((a, d), (3, 1)),
        3: ((a, b), (1, 3)),
        5: ((a, c), (2, 2)),
        7: ((a,), (4,)),
    }
    out = {}
    for key, (cols, pattern) in layout.items():
        rows = np.nonzero(code == key)[0]
        if rows.size:
            out[pattern] = (rows, np.stack([col[rows] for col in cols], axis=1))
    return out


def multiset_expectations(act: Activation, K, ms, *, rtol: float = RTOL, stats: dict | None = None):
    """``<s_a s_b s_c s_d>_K`` for every sorted multiset row ``(a, b, c, d)`` of ``ms`` (M, 4).

    Drop-in for the engine's four-point term: ``K`` is the ``(N, N)`` kernel of the layer's
    pre-activations, ``s = act.fn``. Returns ``(values, errors)``, both ``(M,)`` (see
    :func:`product_expectations`; ``stats`` receives per-row ``"nodes"``/``"evaluations"``).
    """
    K = np.asarray(K, dtype=float)
    ms = np.asarray(ms)
    if ms.ndim != 2 or ms.shape[1] != 4:
        raise ValueError(f"ms: expected shape (M, 4), got {ms.shape}")
    if K.ndim != 2 or K.shape[0] != K.shape[1]:
        raise ValueError(f"K: expected a square matrix, got shape {K.shape}")
    _check_rtol(rtol)
    vals = np.empty(ms.shape[0])
    errs = np.empty(ms.shape[0])
    if stats is not None:
        stats["nodes"] = np.zeros(ms.shape[0])
        stats["evaluations"] = np.zeros(ms.shape[0])
    groups = {}  # patterns whose smooth rules share rule passes: with or without a split input
    for pattern, (rows, idx) in split_multisets(ms).items():
        C = K[idx[:, :, None], idx[:, None, :]]
        if act.relu_slopes is None and act.smooth:
            groups.setdefault(1 in pattern and len(pattern) > 1, []).append((rows, C, pattern))
            continue
        st = {} if stats is not None else None
        v, e = product_expectations(act, C, pattern, rtol=rtol, stats=st)
        vals[rows] = v
        errs[rows] = e
        if stats is not None:
            stats["nodes"][rows] = st["nodes"]
            stats["evaluations"][rows] = st["evaluations"]
    for group in groups.values():
        parts = _smooth_joint(act, [(C, pattern) for _, C, pattern in group], rtol=rtol)
        for (rows, _, _), part in zip(group, parts):
            vals[rows] = part.val
            errs[rows] = part.err
            if stats is not None:
                for key, v in part.stats().items():
                    stats[key][rows] = v
    return vals, errs
