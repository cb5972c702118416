"""Criticality, universality classes and depth asymptotics of single-input kernels (``docs/theory.md``, "Criticality", "Residual networks").

For one input the infinite-width kernel obeys ``K^(l+1) = C_b + C_W g(K^(l))`` with
``g(K) = <sigma(z)^2>_K`` (``z ~ N(0, K)``). The susceptibilities [PDLT §5.1] are

* ``chi_par(K)  = C_W g'(K) = (C_W / K) <sigma sigma' z>_K = (C_W / 2K^2) <sigma^2 (z^2 - K)>_K``,
* ``chi_perp(K) = C_W <sigma'(z)^2>_K``,

and ``(C_b, C_W)`` is *critical* when the fixed point ``K* = C_b + C_W g(K*)`` has
``chi_par(K*) = chi_perp(K*) = 1``. Public functions:

* :func:`susceptibilities` -- ``(chi_par, chi_perp)`` at any ``K > 0`` (arrays broadcast).
* :func:`critical_point` -- the critical ``(C_b, C_W, K*)`` and universality class of an
  activation (:class:`CriticalPoint`); never raises for activations without one.
* :func:`depth_flow` -- the single-input, equal-width leading-order recursion of ``K``, the
  NLO metric ``K1`` and the four-point vertex ``V`` through depth (:class:`DepthFlow`).
* :func:`asymptotic_law` -- the large-depth law of the class (:class:`AsymptoticLaw`).
* :func:`residual_susceptibilities`, :func:`residual_vertex_growth` -- residual MLPs (``docs/theory.md``, "Residual networks").
* :func:`residual_critical_point` -- the critical surface of residual blocks
  ``z' = gamma z + xi [b + W sigma(z)]`` (:class:`ResidualCriticalPoint`).
* :func:`residual_depth_flow` -- single-input finite-width flow of ``K``, ``K1`` and ``V`` through
  the depth of a residual network (:class:`ResidualDepthFlow`), for comparison with :func:`depth_flow`.

Numerics. Every Gaussian average is a 1-D Gauss-Hermite rule in ``x = z / sqrt(K)`` with
``m = 160 K + 300`` nodes (rounded up to a fixed ladder, at most 20000): relative error
``~1e-12`` or better for tanh, erf, sigmoid, softplus, GELU and SWISH at ``K <= 100``
(measured against adaptive ``scipy.integrate.quad``). Beyond ``K_ACCURATE ~ 123`` a fixed rule in
``x`` cannot resolve the activation's unit scale (``|z| ~ 1``, i.e. ``|x| ~ 1/sqrt(K)``), so the
averages switch to a composite Gauss-Legendre rule in ``z``: panels of width ``1/4`` near ``z = 0``
growing geometrically (by ``1/4`` of ``|z|``) up to width 2 and covering ``|z| <= 10 sqrt(K)`` (relative
error ~1e-12 against ``scipy.integrate.quad``, tests/test_reliability.py); variances above ``K_MAX``
are refused. ``chi_par`` and ``g''`` use the derivative-free Hermite forms
``g' = <sigma^2 He_2(x)> / 2K`` and ``g'' = <sigma^2 He_4(x)> / 4K^2`` (they converge faster
than the forms with ``sigma'``, and are right for kinked activations); ``chi_perp`` needs
``sigma'`` (autodiff). The scale-invariant family ``a_+ z Theta(z) + a_- z Theta(-z)``
(``act.relu_slopes``: relu, leaky relu, linear) uses closed forms: ``g = A_2 K``,
``<sigma'^2> = A_2``, ``<sigma^4> = 3 A_4 K^2`` with ``A_p = (a_+^p + a_-^p) / 2``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
import types
import warnings
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from scipy.optimize import brentq

from ._cache import frozen_lru
from ._activations import Activation, activation as _make_activation
from ._gaussian import gauss_hermite
from ._validate import count, device, float64, multiplier, nonneg_float, positive_float, real, warn
from ._warnings import AccuracyWarning
from ._results import result

__all__ = [
    "CLASSES",
    "CriticalPoint",
    "DepthFlow",
    "AsymptoticLaw",
    "susceptibilities",
    "critical_point",
    "depth_flow",
    "PhaseDiagram",
    "phase_diagram",
    "asymptotic_law",
    "residual_susceptibilities",
    "residual_vertex_growth",
    "ResidualCriticalPoint",
    "ResidualDepthFlow",
    "residual_critical_point",
    "residual_depth_flow",
]

#: Universality classes returned in :attr:`CriticalPoint.universality_class`.
CLASSES = ("scale-invariant", "K*=0", "half-stable", "none")

#: Gauss-Hermite node ladder (``m = 160 K + 300`` rounded up to the next rung); few rungs,
#: one batch shape and a cache keyed on the activation keep XLA compilations few.
_LADDER = (300, 600, 1200, 2400, 4800, 9600, 20000)
_NODES_PER_K, _NODES_MIN = 160, 300
#: Fixed batch of variances per compiled call (shorter batches are padded).
_BATCH = 16
#: Largest variance for which the rule still reaches ~1e-12 for tanh-like activations.
K_ACCURATE = (_LADDER[-1] - _NODES_MIN) / _NODES_PER_K
#: Largest variance accepted by the composite rule used above ``K_ACCURATE`` (its node count grows
#: like ``sqrt(K)``: 1.6e5 nodes at ``K = 1e6``).
K_MAX = 1e8
#: Smallest variance accepted (``<sigma^4>`` and the vertex are of order ``K^2``, which underflows below ~1.5e-154).
K_MIN = 1e-150
#: Composite rule above ``K_ACCURATE``: Gauss-Legendre nodes per panel, smallest and largest panel
#: width (in ``z``), geometric growth of the panel width with ``|z|``, and the range in standard deviations.
_PANEL_NODES, _PANEL_MIN, _PANEL_MAX, _PANEL_GROWTH, _RANGE_SD = 16, 0.25, 2.0, 0.25, 10.0

#: Default search range of the half-stable fixed point, and its log-spaced grid size.
K_SEARCH = (1e-2, 100.0)
_SEARCH_POINTS = 241


# ----------------------------------------------------------------------------- validation
def _act(spec) -> Activation:
    try:
        return _make_activation(spec)
    except ValueError as exc:
        msg = str(exc)
        raise ValueError(msg if msg.startswith("activation") else f"activation: {msg}") from exc


def _as_variance(K, name: str = "K") -> np.ndarray:
    try:
        if isinstance(K, (str, bytes)) or np.iscomplexobj(K) or np.asarray(K).dtype.kind in "bUSO":
            raise TypeError  # "1" was read as 1.0, True as 1.0
        arr = np.asarray(K, dtype=float)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{name}: expected a positive number or array, got {K!r}") from exc
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name}: must be finite, got {K!r}")
    if np.any(arr <= 0):
        raise ValueError(f"{name}: the pre-activation variance must be > 0, got min {float(np.min(arr))}")
    if np.any(arr < K_MIN):
        raise ValueError(f"{name}: variance {float(np.min(arr)):.3g} < {K_MIN:g}, where averages of order K^2 "
                         "(<sigma^4>, the vertex) underflow float64; use K >= 1e-150")
    return arr


def _as_kernel(K, name: str) -> float:
    """One pre-activation variance: a finite real number ``> 0`` (an array raises a ``TypeError`` naming ``name``)."""
    return float(_as_variance(real(K, name), name))


def _as_depth(depth, name: str = "depth") -> int:
    return count(depth, name, what="a positive integer (number of layers)")


def _real(value, name: str) -> float:
    """A real multiplier (``gamma``, ``xi``): finite, at most ``MAX_MULTIPLIER`` in magnitude."""
    return multiplier(real(value, name), name)


# ----------------------------------------------------------------------------- Gaussian moments
def _nodes(kmax: float) -> int:
    need = _NODES_PER_K * float(kmax) + _NODES_MIN
    for m in _LADDER:
        if m >= need:
            return m
    return _LADDER[-1]


@frozen_lru(32)
def _rule(m: int) -> tuple[np.ndarray, np.ndarray]:
    x, w = gauss_hermite(m)
    keep = w > 0  # far-tail weights underflow; dropping them avoids inf * 0
    return x[keep], w[keep]


def _moment_core(act: Activation, m: int) -> Callable:
    """Pure ``K (B,) -> (g, g', g'', <sigma^4>, <sigma'^2>)``, each ``(B,)``, with ``m`` nodes."""
    x_np, w_np = _rule(m)
    x, w = device(x_np), device(w_np)
    weighted = _weighted_moments(act)

    def moments(K):
        return weighted(K, jnp.broadcast_to(x, K.shape + x.shape), jnp.broadcast_to(w, K.shape + w.shape))

    return moments


#: Below this variance a smooth activation's ``g''`` comes from ``<(sigma^2)^(4)> / 4`` (derivatives by autodiff;
#: :func:`_g2_small_core`) instead of the Hermite form ``<sigma^2 He_4> / (4 K^2)``, whose sum of terms of order ``K``
#: cancels to order ``K^2``: relative error ~1.5e-16 / K (tanh: 1.5e-10 at K = 1e-6, 1.5e-6 at 1e-10; against
#: mpmath). Only the variances below it run the derivatives (they cost 2-5x the averages' time).
_G2_DERIVATIVE_K = 1e-2


def _weighted_moments(act: Activation) -> Callable:
    """Pure ``(K (B,), x (B, M), w (B, M)[, wc (B, M)]) -> (g, g', g'', <sigma^4>, <sigma'^2>)``: the averages over
    ``z = sqrt(K) x`` with the rule ``(x, w)`` for the standard normal in ``x`` (per variance); with ``wc``, other
    weights on the same nodes, three more outputs, ``g``, ``<sigma^4>``, ``<sigma'^2>`` under them (the composite
    rule's range check, :func:`_moments_composite`)."""
    d1 = act.derivative(1)

    def weighted(K, x, w, wc=None):
        z = jnp.sqrt(K)[:, None] * x
        s2 = act.fn(z) ** 2
        he2 = x * x - 1.0
        he4 = x**4 - 6.0 * x * x + 3.0
        p2 = d1(z) ** 2
        out = (jnp.sum(s2 * w, axis=1), jnp.sum(s2 * he2 * w, axis=1) / (2.0 * K),
               jnp.sum(s2 * he4 * w, axis=1) / (4.0 * K * K), jnp.sum(s2 * s2 * w, axis=1), jnp.sum(p2 * w, axis=1))
        if wc is None:
            return out
        return out + (jnp.sum(s2 * wc, axis=1), jnp.sum(s2 * s2 * wc, axis=1), jnp.sum(p2 * wc, axis=1))

    return weighted


def _g2_small_core(act: Activation, m: int) -> Callable:
    """Pure ``K (B,) -> g''(K)`` from ``<2 s s^(4) + 8 s' s^(3) + 6 s''^2> / 4`` with ``m`` nodes (smooth activations,
    small variances: :data:`_G2_DERIVATIVE_K`)."""
    x, w = (device(t) for t in _rule(m))
    s, d1, d2, d3, d4 = (act.derivative(k) for k in range(5))

    def g2(K):
        z = jnp.sqrt(K)[:, None] * x
        return 0.25 * jnp.sum((2.0 * s(z) * d4(z) + 8.0 * d1(z) * d3(z) + 6.0 * d2(z) ** 2) * w, axis=1)

    return g2


@functools.lru_cache(maxsize=64)
def _g2_small_jit(keyed: "_Keyed", m: int) -> Callable:
    return jax.jit(_g2_small_core(keyed.act, m))


def _panel_edges(K: float) -> np.ndarray:
    """Panel edges in ``z >= 0`` for the composite rule: width ``1/4`` near 0, growing by a quarter of
    ``|z|`` up to width 2, to ``10 sqrt(K)``."""
    end = _RANGE_SD * math.sqrt(K)
    edges, z = [0.0], 0.0
    while z < end:
        z = min(end, z + min(_PANEL_MAX, max(_PANEL_MIN, _PANEL_GROWTH * z)))
        edges.append(z)
    return np.asarray(edges)


def _composite_rule(K: float) -> tuple[np.ndarray, np.ndarray]:
    """``(x, w)``: nodes ``x = z / sqrt(K)`` and weights of ``E[f(z)]``, ``z ~ N(0, K)``, on panels in ``z``."""
    t, tw = np.polynomial.legendre.leggauss(_PANEL_NODES)
    e = _panel_edges(K)
    lo, hi = e[:-1, None], e[1:, None]
    z = (0.5 * (hi - lo) * t + 0.5 * (hi + lo)).ravel()
    wz = (0.5 * (hi - lo) * tw).ravel() * np.exp(-0.5 * z * z / K) / math.sqrt(2.0 * math.pi * K)
    z = np.concatenate([-z[::-1], z])
    wz = np.concatenate([wz[::-1], wz])
    return z / math.sqrt(K), wz


@functools.lru_cache(maxsize=32)
def _weighted_jit(keyed: "_Keyed") -> Callable:
    return jax.jit(_weighted_moments(keyed.act))


#: The composite rule's averages are checked against the same rule cut at this many standard deviations: where the
#: averages of positive integrands differ by more than :data:`_CONTAINED_RTOL` relative, the average's mass is not
#: within the rule's range (an activation growing like ``exp``: its average at ``K`` peaks near ``z = 2K``) and the
#: values are NaN. Polynomials pass (``x^3``: ``<sigma^4> ~ <z^12>`` loses ~3e-12 beyond 9 standard deviations).
_CONTAINED_SD, _CONTAINED_RTOL = 9.0, 1e-8


def _moments_composite(act: Activation, K: np.ndarray) -> tuple:
    """The averages of :func:`_weighted_moments` at large variances ``K`` (1-D), one compiled shape per
    power-of-two node count; NaN where the rule's range does not contain the average (:data:`_CONTAINED_SD`)."""
    rules = [_composite_rule(float(k)) for k in K]
    M = 1 << int(np.ceil(np.log2(max(x.size for x, _ in rules))))
    x = np.zeros((K.size, M))
    w = np.zeros((K.size, M))
    for i, (xi, wi) in enumerate(rules):
        x[i, :xi.size], w[i, :wi.size] = xi, wi
    wc = np.where(np.abs(x) <= _CONTAINED_SD, w, 0.0)
    out = [np.asarray(v) for v in _weighted_jit(_Keyed(act))(device(K), device(x), device(w), device(wc))]
    full, cut = out[:5], out[5:]
    with np.errstate(all="ignore"):
        # the averages of positive integrands (g, <sigma^4>, <sigma'^2>; g' and g'' cancel to ~0 in places)
        lost = np.any([np.abs(full[k] - c) > _CONTAINED_RTOL * np.abs(full[k]) for k, c in zip((0, 3, 4), cut)],
                      axis=0)
    return tuple(np.where(lost, np.nan, v) for v in full)


class _Keyed:
    """Hashable wrapper of an activation for the compilation caches.

    Two activations share compiled code when they have the same name, smoothness and function key
    (:func:`_fn_key`): the same code object with the same free values (closure cells, defaults and the globals its
    code reads), a module or a constant compared by value, a function by its own key (three levels deep), anything
    else by identity. So a ``lambda x: jnp.tanh(x)`` written again hits the same entry, while ``lambda x: jnp.tanh(s *
    x)`` over a global ``s`` rebound in a loop (a number or an array) does not: it was given the first ``s``'s
    results. An array changed in place is not seen.
    """

    __slots__ = ("act", "key")

    def __init__(self, act: Activation):
        self.act = act
        try:
            key = _fn_key(act.fn, 3)
            hash(key)
        except (TypeError, ValueError):  # unhashable constants, empty cells
            key = _Same(act.fn)
        self.key = (act.name, act.smooth, key)

    def __hash__(self):
        return hash(self.key)

    def __eq__(self, other):
        return isinstance(other, _Keyed) and self.key == other.key


class _Same:
    """A value compared by identity (held, so that its id is not reused)."""

    __slots__ = ("value",)

    def __init__(self, value):
        self.value = value

    def __hash__(self):
        return id(self.value)

    def __eq__(self, other):
        return isinstance(other, _Same) and other.value is self.value


def _fn_key(fn, depth: int):
    """What a function computes with: its code and the keys (:func:`_value_key`) of its free values."""
    code = getattr(fn, "__code__", None)
    if code is None or depth < 0:
        return _Same(fn)
    glob = getattr(fn, "__globals__", {})
    return (code,
            tuple(_value_key(c.cell_contents, depth) for c in (fn.__closure__ or ())),
            tuple(_value_key(d, depth) for d in (fn.__defaults__ or ())),
            tuple((g, _value_key(glob[g], depth)) for g in sorted(_code_names(code)) if g in glob))


def _value_key(v, depth: int):
    """A module or an immutable constant by value, a Python function by :func:`_fn_key` one level down, anything
    else (arrays, objects, compiled functions) by identity."""
    if _plain(v):
        return v
    if isinstance(v, types.FunctionType):
        return _fn_key(v, depth - 1)
    return _Same(v)


def _code_names(code) -> set:
    """The global (and attribute) names a code object and the code nested in it read."""
    names = set(code.co_names)
    for c in code.co_consts:
        if hasattr(c, "co_names"):
            names |= _code_names(c)
    return names


def _plain(v) -> bool:
    """A value whose equality says it acts the same in an activation: a module or an immutable constant."""
    if isinstance(v, (types.ModuleType, numbers.Number, str, bytes)) or v is None:
        return True
    return isinstance(v, tuple) and all(_plain(u) for u in v)


@functools.lru_cache(maxsize=128)
def _moment_jit(keyed: _Keyed, m: int) -> Callable:
    return jax.jit(_moment_core(keyed.act, m))


def _moment_fn(act: Activation, m: int) -> Callable:
    return _moment_jit(_Keyed(act), m)


def _moments(act: Activation, K: np.ndarray, *, nodes: int | None = None, check: bool = True) -> dict[str, np.ndarray]:
    """Single-input Gaussian averages at variances ``K`` (any shape, ``K > 0``).

    Returns a dict of arrays shaped like ``K``: ``g = <s^2>``, ``g1 = g'(K)``,
    ``g2 = g''(K)``, ``s4 = <s^4>``, ``sp2 = <s'^2>``. A non-finite average (the activation overflows)
    raises ``FloatingPointError`` with ``check``; without, it is returned as it is (for the caller to handle).
    """
    K = np.asarray(K, dtype=float)
    if act.relu_slopes is not None:
        ap, am = act.relu_slopes
        A2, A4 = 0.5 * (ap**2 + am**2), 0.5 * (ap**4 + am**4)
        return {
            "g": A2 * K,
            "g1": np.full_like(K, A2),
            "g2": np.zeros_like(K),
            "s4": 3.0 * A4 * K * K,
            "sp2": np.full_like(K, A2),
        }
    flat = K.reshape(-1)
    keys = ("g", "g1", "g2", "s4", "sp2")
    out = {k: np.empty_like(flat) for k in keys}
    large = flat > K_ACCURATE if nodes is None else np.zeros(flat.shape, dtype=bool)
    if np.any(flat[large] > K_MAX):
        raise ValueError(
            f"K: variance {float(np.max(flat)):.4g} > {K_MAX:g}; Gaussian averages of {act.name!r} at such variances "
            "need more than 1e6 quadrature nodes (the activation varies on the scale |z| ~ 1 of a Gaussian of "
            "width sqrt(K)); use K <= 1e8"
        )
    for start in range(0, int(np.sum(large)), _BATCH):
        part = np.nonzero(large)[0][start:start + _BATCH]
        for key, v in zip(keys, _moments_composite(act, flat[part])):
            out[key][part] = v
    small = np.nonzero(~large)[0]
    # One rung for the whole array (the one its largest variance needs): one compilation.
    m = int(nodes) if nodes is not None else (_nodes(float(np.max(flat[small]))) if small.size else _NODES_MIN)
    if small.size:
        for key, v in zip(keys, _batched(_moment_fn(act, m), flat[small])):
            out[key][small] = v
        tiny = small[flat[small] < _G2_DERIVATIVE_K] if act.smooth else small[:0]
        if tiny.size:  # g'' by the derivative form (no cancellation) at small variances
            (out["g2"][tiny],) = _batched(lambda Kb: (_g2_small_jit(_Keyed(act), m)(Kb),), flat[tiny])
    res = {k: v.reshape(K.shape) for k, v in out.items()}
    if check and not all(np.all(np.isfinite(v)) for v in res.values()):
        raise FloatingPointError(
            f"ngp.criticality: Gaussian averages of {act.name!r} are not finite at these variances "
            f"(the activation overflows, or beyond K ~ {K_ACCURATE:.0f} grows so fast that the average's mass lies "
            f"beyond the quadrature's {_RANGE_SD:.0f} standard deviations, as exp's does)"
        )
    return res


def _batched(fn, Ks: np.ndarray) -> list[np.ndarray]:
    """``fn``'s outputs (a tuple of ``(B,)`` arrays) at the variances ``Ks`` (1-D), in calls of :data:`_BATCH`
    variances (the last padded with 1: one batch shape per rung, one compilation)."""
    parts = []
    for start in range(0, Ks.size, _BATCH):
        Kb = np.ones(_BATCH)
        got = min(_BATCH, Ks.size - start)
        Kb[:got] = Ks[start:start + got]
        parts.append([np.asarray(v)[:got] for v in fn(device(Kb))])
    return [np.concatenate(col) for col in zip(*parts)]


def _scalar_or_array(a: np.ndarray):
    a = np.asarray(a, dtype=float)
    return float(a) if a.ndim == 0 else a


# ----------------------------------------------------------------------------- susceptibilities
@float64
def susceptibilities(activation, K, *, C_W: float = 1.0, C_b: float = 0.0):
    """Parallel and perpendicular susceptibilities of one layer at kernel ``K`` (``docs/theory.md``, "Criticality").

    ``chi_par = C_W g'(K)`` with ``g(K) = <sigma^2>_K``, ``chi_perp = C_W <sigma'^2>_K``;
    both are independent of ``C_b`` (accepted for symmetry with the kernel map, validated).

    Args:
        activation: a name from ``ngp.ACTIVATIONS``, an :class:`ngp.Activation` or a callable.
        K: pre-activation variance(s) ``> 0``, scalar or array of any shape.
        C_W: weight variance ``> 0``.
        C_b: bias variance ``>= 0`` (does not enter).

    Returns:
        ``(chi_par, chi_perp)``: floats for scalar ``K``, else arrays shaped like ``K``.
        Relative accuracy ~1e-12 for ``K <= 100`` (closed forms for the relu family), or ~1e-16 absolute where a
        value is that small (sin's ``chi_par ~ e^{-2K}``: 1.5e-16 for 4.3e-18 at ``K = 20``).
    """
    act = _act(activation)
    C_W = multiplier(positive_float(C_W, "C_W"), "C_W")
    multiplier(nonneg_float(C_b, "C_b"), "C_b")
    m = _moments(act, _as_variance(K))
    return _scalar_or_array(C_W * m["g1"]), _scalar_or_array(C_W * m["sp2"])


@float64
def residual_susceptibilities(activation, K, *, C_W: float = 1.0, C_b: float = 0.0, gamma: float, xi: float):
    """Susceptibilities of one residual block ``z' = gamma z + xi [b + W sigma(z)]`` (``docs/theory.md``, "Residual networks").

    The block's kernel map is ``K' = gamma^2 K + xi^2 (C_b + C_W g(K))``, hence
    ``chi_res = gamma^2 + xi^2 chi`` for both directions. A residual network is critical when
    ``chi_res_par = chi_res_perp = 1`` at its fixed point, e.g. a critical block
    (:func:`critical_point`) with ``gamma^2 + xi^2 = 1`` and ``C_b = 0``.

    Args:
        activation: as in :func:`susceptibilities`.
        K: as in :func:`susceptibilities`.
        C_W: as in :func:`susceptibilities`.
        C_b: as in :func:`susceptibilities`.
        gamma: skip-connection weight (real).
        xi: block weight (real).

    Returns:
        ``(chi_res_par, chi_res_perp)`` shaped like ``K``.
    """
    gamma, xi = _real(gamma, "gamma"), _real(xi, "xi")
    cp, cq = susceptibilities(activation, K, C_W=C_W, C_b=C_b)
    return (_scalar_or_array(gamma**2 + xi**2 * np.asarray(cp)),
            _scalar_or_array(gamma**2 + xi**2 * np.asarray(cq)))


@float64
def residual_vertex_growth(*, gamma: float, xi: float, C_W: float = 1.0) -> float:
    """Per-block growth of ``V / K^2`` for **linear** residual blocks, one input, ``C_b = 0``.

    A block ``z' = gamma z + xi W z`` maps ``K -> s K`` with ``s = gamma^2 + xi^2 C_W`` and, at
    leading order in ``1/n`` (equal widths),
    ``V' / K'^2 = V / K^2 + 2 r (2 - r)`` with ``r = xi^2 C_W / s`` the fraction of the kernel
    refreshed by the block. A plain linear layer (``r = 1``) adds 2; a block with
    ``gamma^2 + xi^2 = 1``, ``C_W = 1`` adds ``2 xi^4 + 4 gamma^2 xi^2 = 2 xi^2 (2 - xi^2)``
    (``docs/theory.md``, "Residual networks"). So skip connections stretch the useful depth: ``L`` residual blocks
    accumulate the finite-width vertex of ``L r (2 - r)`` plain layers, i.e. the depth-to-width
    ratio that controls the ``1/n`` corrections shrinks by ``r (2 - r) ~ 2 xi^2`` for small
    ``xi``. The exact finite-width law behind it (tested by Monte Carlo) is
    ``E[G'^2] / E[G']^2 = (E[G^2] / E[G]^2) (1 + 2 r (2 - r) / n)`` for the empirical
    second moment ``G`` of a layer.

    For nonlinear blocks the growth is not a per-block constant of this simple form (a neuron's
    own past enters its metric); use :func:`residual_depth_flow`, which solves the full
    finite-width theory of residual networks for any activation.

    Args:
        gamma: skip weight; xi: block weight (not both zero); C_W: block weight variance ``> 0``.

    Returns:
        The increment of ``V / K^2`` per residual block.
    """
    gamma, xi = _real(gamma, "gamma"), _real(xi, "xi")
    C_W = multiplier(positive_float(C_W, "C_W"), "C_W")
    s = gamma**2 + xi**2 * C_W
    if s == 0:
        raise ValueError("gamma, xi: the block maps every kernel to 0 (gamma = xi = 0)")
    r = xi**2 * C_W / s
    return 2.0 * r * (2.0 - r)


# ----------------------------------------------------------------------------- critical point
@dataclasses.dataclass(frozen=True)
class CriticalPoint:
    """The critical initialisation of an activation and its universality class (``docs/theory.md``, "Criticality").

    Attributes:
        activation: name of the activation.
        universality_class: one of :data:`CLASSES`: ``"scale-invariant"``, ``"K*=0"``,
            ``"half-stable"`` or ``"none"``.
        exists: whether a critical ``(C_b, C_W)`` was found.
        reason: one sentence saying why (the class's defining property, or why there is none).
        C_b, C_W: critical bias and weight variances (``None`` if none exists).
        K_star: fixed-point kernel ``K*``; ``0.0`` for the ``K*=0`` class, ``None`` for the
            scale-invariant class (every ``K`` is a fixed point: the line is marginal) and when
            none exists.
        chi_parallel, chi_perp: susceptibilities at the point (the ``K -> 0`` limit, 1, for
            ``K*=0``); ``None`` if none exists.
        taylor: ``(sigma(0), sigma'(0), sigma''(0), sigma'''(0))`` by autodiff, ``None`` for the
            relu family and kinked callables.
        a1, b1: ``a1 = s3/s1 + 3/4 (s2/s1)^2``, ``b1 = s3/s1 + (s2/s1)^2`` (need ``s1 != 0``):
            ``chi_par ~ 1 + 2 a1 K``, ``chi_perp ~ 1 + b1 K`` near ``K = 0``.
        p_perp: ``b1 / a1``, perpendicular perturbations decay as ``l^(-p_perp)`` (``K*=0`` class).
        vertex_slope: slope ``A`` of the marginal law ``V / K^2 ~ A (l - 1)``:
            ``3 A_4 / A_2^2 - 1`` (scale-invariant, exact at leading order) or
            ``A* = C_W^2 Var_{K*}(sigma^2) / K*^2`` (half-stable, practical depths).
        f2: ``f''(K*)`` of the single-input map ``f(K) = C_b + C_W g(K)`` (half-stable).
        stable_side: ``"below"`` or ``"above"``: the side from which the half-stable fixed
            point attracts (``Delta_{l+1} = Delta_l + f2 Delta_l^2 / 2``).
        search_range: ``(K_min, K_max)`` searched for a half-stable point (``None`` if not searched): ``K_range``,
            or the part of it where the activation's Gaussian averages are finite (``reason`` says so).
    """

    activation: str
    universality_class: str
    exists: bool
    reason: str
    C_b: float | None = None
    C_W: float | None = None
    K_star: float | None = None
    chi_parallel: float | None = None
    chi_perp: float | None = None
    taylor: tuple[float, float, float, float] | None = None
    a1: float | None = None
    b1: float | None = None
    p_perp: float | None = None
    vertex_slope: float | None = None
    f2: float | None = None
    stable_side: str | None = None
    search_range: tuple[float, float] | None = None


@functools.lru_cache(maxsize=64)
def _taylor_keyed(keyed: _Keyed) -> tuple[float, float, float, float]:
    derivs = [keyed.act.derivative(k) for k in range(4)]
    vals = jax.jit(lambda z: jnp.stack([d(z) for d in derivs]))(jnp.zeros((1,)))
    return tuple(float(v) for v in np.asarray(vals)[:, 0])


def _taylor(act: Activation) -> tuple[float, float, float, float]:
    """``(sigma(0), sigma'(0), sigma''(0), sigma'''(0))`` by autodiff."""
    return _taylor_keyed(_Keyed(act))


def _half_stable_roots(act: Activation, k_range: tuple[float, float]) -> tuple[list[float], np.ndarray | None]:
    """Roots of ``g'(K) = <s'^2>_K`` (i.e. ``chi_par = chi_perp``) on a log grid of ``k_range``.

    Grid points where a Gaussian average of the activation is not finite (it overflows, e.g. ``exp`` or ``cosh``
    at large ``K``) count as outside the range. Returns the roots (ascending) and the grid points where every
    average is finite (``None`` when all are).
    """

    nodes = _nodes(k_range[1])

    def h(K, nodes=None):  # on K's own rule (the accurate one), or on the grid's
        m = _moments(act, np.atleast_1d(np.asarray(K, dtype=float)), nodes=nodes)
        return float((m["g1"] / m["sp2"] - 1.0)[0])

    grid = np.geomspace(k_range[0], k_range[1], _SEARCH_POINTS)
    with np.errstate(all="ignore"):  # NumPy's own, per thread (warnings.catch_warnings swaps the process's filters)
        m = _moments(act, grid, nodes=nodes, check=False)
        vals = m["g1"] / m["sp2"] - 1.0
    finite = np.isfinite(vals)
    for v in m.values():
        finite &= np.isfinite(v)
    roots = []
    for i in range(len(grid) - 1):
        a, b = vals[i], vals[i + 1]
        if not (finite[i] and finite[i + 1]):
            continue
        if a == 0.0:
            roots.append(float(grid[i]))
        elif a * b < 0:
            # a kinked callable's values by K's own rule may not change sign where the grid's do: then the grid's rule,
            # and if a single evaluation still rounds differently from the batched grid, the nearer grid point
            for args in ((), (nodes,)):
                if h(grid[i], *args) * h(grid[i + 1], *args) < 0:
                    roots.append(brentq(h, grid[i], grid[i + 1], args=args, xtol=1e-15, rtol=4 * np.finfo(float).eps,
                                        maxiter=200))
                    break
            else:
                roots.append(float(grid[i] if abs(a) <= abs(b) else grid[i + 1]))
    return roots, (None if np.all(finite) else grid[finite])


def _piecewise_linear_slopes(act: Activation) -> tuple[float, float] | None:
    """``(a_+, a_-)`` when ``act`` equals ``a_+ z Theta(z) + a_- z Theta(-z)`` (to 1e-12 relative) at 26 points
    ``|z|`` in ``[1e-3, 1e3]`` of either sign, else ``None``."""
    z = np.geomspace(1e-3, 1e3, 13)
    z = np.concatenate([z, -z])
    with np.errstate(all="ignore"):
        y = np.asarray(act.fn(jnp.asarray(z)), dtype=float)
    if y.shape != z.shape or not np.all(np.isfinite(y)):
        return None
    ap, am = float(y[0] / z[0]), float(y[13] / z[13])
    model = np.where(z > 0, ap, am) * z
    return (ap, am) if np.all(np.abs(y - model) <= 1e-12 * np.abs(model) + 1e-300) else None


@float64
def critical_point(activation, *, K_range: tuple[float, float] = K_SEARCH) -> CriticalPoint:
    """Critical initialisation ``(C_b, C_W)``, fixed point ``K*`` and universality class.

    Classification (``docs/theory.md``, "Criticality"):

    1. scale-invariant family (``act.relu_slopes`` set: relu, leaky relu, linear):
       ``C_b = 0``, ``C_W = 1 / A_2``, ``A_2 = (a_+^2 + a_-^2) / 2``; every ``K`` is a fixed point.
    2. smooth with ``sigma(0) = 0``, ``sigma'(0) != 0`` and ``a1 < 0`` (tanh, sin, erf): ``K* = 0``,
       ``C_b = 0``, ``C_W = 1 / sigma'(0)^2``; ``K^(l) ~ 1 / ((-a1) l)``.
    3. otherwise: a *half-stable* point is searched, the roots of ``chi_par(K) = chi_perp(K)``
       (``g'(K) = <sigma'^2>_K``, independent of ``C_W``) on a 241-point log grid of
       ``K_range`` (default ``[0.01, 100]``) refined by Brent's method to machine precision,
       then ``C_W = 1 / <sigma'^2>_{K*}`` and ``C_b = K* - C_W g(K*)``, accepted if ``C_b >= 0``
       (GELU, SWISH). If several are accepted the smallest ``K*`` is returned.
    4. else ``"none"`` (sigmoid, softplus, monomials ``z^p`` with ``p >= 2``) with the reason.

    Args:
        activation: a name, :class:`ngp.Activation` or JAX-traceable callable.
        K_range: ``(K_min, K_max)``, ``0 < K_min < K_max``, searched in step 3 (accuracy
            ~1e-12 up to ``K ~ 100``; an ``AccuracyWarning`` is issued beyond ``K ~ 123``). Where a Gaussian
            average of the activation overflows (e.g. ``exp``, ``cosh`` at large ``K``) the grid points count as
            outside the range: the result's ``search_range`` and ``reason`` say what was searched.

    Returns:
        :class:`CriticalPoint`. Never raises for activations without a critical point (bad arguments raise
        ``TypeError``/``ValueError``).
    """
    act = _act(activation)
    try:
        k_lo, k_hi = (float(v) for v in K_range)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"K_range: expected (K_min, K_max), got {K_range!r}") from exc
    if not (0 < k_lo < k_hi < math.inf):
        raise ValueError(f"K_range: expected 0 < K_min < K_max < inf, got {K_range!r}")
    name = act.name

    with np.errstate(all="ignore"):
        probe = np.asarray(act.fn(jnp.linspace(-5.0, 5.0, 21)), dtype=float)
    if probe.shape == (21,) and np.all(probe == probe[0]):  # chi_par = chi_perp = 0: 0/0 in the search ("overflow")
        return CriticalPoint(name, "none", False, f"the activation is constant ({probe[0] + 0.0:.6g} at 21 points in "
                             "[-5, 5]): chi_par = chi_perp = 0 at every K, nothing propagates")
    slopes, seen = act.relu_slopes, ""
    if slopes is None and not act.smooth:  # a kinked callable may be of the family: chi_par = chi_perp at every K
        slopes = _piecewise_linear_slopes(act)
        seen = " (a kinked callable, equal to it at 26 points)" if slopes is not None else ""
    if slopes is not None:
        ap, am = slopes
        A2, A4 = 0.5 * (ap**2 + am**2), 0.5 * (ap**4 + am**4)
        if A2 == 0:
            return CriticalPoint(name, "none", False, "the activation is identically zero (a_+ = a_- = 0)")
        return CriticalPoint(
            name, "scale-invariant", True,
            f"scale-invariant (a_+ z Theta(z) + a_- z Theta(-z){seen}): chi_par = chi_perp = C_W A_2 at every K, "
            "critical at C_b = 0, C_W = 1/A_2; every K is a fixed point (marginal), V/K^2 grows by "
            "3 A_4/A_2^2 - 1 per layer",
            C_b=0.0, C_W=1.0 / A2, K_star=None, chi_parallel=1.0, chi_perp=1.0,
            vertex_slope=3.0 * A4 / A2**2 - 1.0,
        )

    notes = []
    taylor = a1 = b1 = p_perp = None
    if act.smooth:
        taylor = _taylor(act)
        s0, s1, s2, s3 = taylor
        if s1 != 0:
            a1 = s3 / s1 + 0.75 * (s2 / s1) ** 2
            b1 = s3 / s1 + (s2 / s1) ** 2
            p_perp = b1 / a1 if a1 != 0 else None
        if abs(s0) < 1e-300 and s1 != 0 and a1 < 0:
            return CriticalPoint(
                name, "K*=0", True,
                f"sigma(0) = 0, sigma'(0) = {s1:.6g} != 0 and a1 = {a1:.6g} < 0: at C_b = 0, "
                "C_W = 1/sigma'(0)^2 the kernel flows to K* = 0 as 1/((-a1) l) with chi -> 1",
                C_b=0.0, C_W=1.0 / s1**2, K_star=0.0, chi_parallel=1.0, chi_perp=1.0,
                taylor=taylor, a1=a1, b1=b1, p_perp=p_perp,
            )
        if s0 != 0:
            notes.append(f"sigma(0) = {s0:.6g} != 0, so K = 0 is not a fixed point")
        elif s1 == 0:
            notes.append("sigma(0) = sigma'(0) = 0 (e.g. a monomial z^p, p >= 2): chi -> 0 at K = 0")
        elif a1 >= 0:
            notes.append(f"sigma(0) = 0 but a1 = {a1:.6g} >= 0, so K* = 0 is not attractive")
    else:
        notes.append("kinked callable (smooth=False): no Taylor classification, quadrature-only accuracy")

    if k_hi > K_ACCURATE and act.relu_slopes is None:
        warn(f"critical_point: K_range reaches K = {k_hi:g} > {K_ACCURATE:.0f}, where the search grid's quadrature "
             "loses digits (roots may be missed there)", AccuracyWarning)
    roots, searched = _half_stable_roots(act, (k_lo, k_hi))
    search_range = (k_lo, k_hi)
    if searched is not None:
        if searched.size:
            search_range = (float(searched[0]), float(searched[-1]))
            notes.append(f"the Gaussian averages of the activation overflow at some K in [{k_lo:g}, {k_hi:g}]; only "
                         f"the {searched.size} of {_SEARCH_POINTS} grid points in [{search_range[0]:.6g}, "
                         f"{search_range[1]:.6g}] where they are finite were searched")
        else:
            search_range = None
            notes.append(f"the Gaussian averages of the activation overflow everywhere in [{k_lo:g}, {k_hi:g}]; "
                         "nothing was searched")
    rejected = []
    for K_star in roots:
        m = _moments(act, np.array([K_star]))
        g, g1, g2, s4, sp2 = (float(m[k][0]) for k in ("g", "g1", "g2", "s4", "sp2"))
        C_W = 1.0 / sp2
        C_b = K_star - C_W * g
        if C_b < 0:
            if C_b > -1e-12 * K_star:
                C_b = 0.0
            else:
                rejected.append((K_star, C_b))
                continue
        f2 = C_W * g2
        return CriticalPoint(
            name, "half-stable", True,
            f"chi_par = chi_perp = 1 at the fixed point K* = {K_star:.12g} (C_b = {C_b:.6g} >= 0) with "
            f"f''(K*) = {f2:.3g} != 0: attracting from {'below' if f2 > 0 else 'above'} only, marginal "
            "at practical depths",
            C_b=C_b, C_W=C_W, K_star=K_star, chi_parallel=C_W * g1, chi_perp=C_W * sp2,
            taylor=taylor, a1=a1, b1=b1, p_perp=p_perp,
            vertex_slope=C_W**2 * (s4 - g * g) / K_star**2, f2=f2,
            stable_side="below" if f2 > 0 else "above", search_range=search_range,
        )
    if rejected:
        notes.append(
            "chi_par = chi_perp only at K = "
            + ", ".join(f"{k:.6g} (needs C_b = {cb:.3g} < 0)" for k, cb in rejected)
        )
    elif search_range is not None:
        notes.append(f"chi_par(K) = chi_perp(K) has no root for K in [{search_range[0]:.6g}, {search_range[1]:.6g}]")
    return CriticalPoint(
        name, "none", False, "no critical point: " + "; ".join(notes),
        taylor=taylor, a1=a1, b1=b1, p_perp=p_perp, search_range=search_range,
    )


# ----------------------------------------------------------------------------- depth flow
@result
class DepthFlow:
    """Single-input, equal-width leading-order flow through depth (``docs/theory.md``, "Finite-width recursions", "Criticality").

    All arrays have shape ``(depth,)``; entry ``l - 1`` belongs to layer ``l``.

    Attributes:
        layers: ``1 .. depth``.
        K: infinite-width kernel ``K^(l)``.
        K1: NLO metric ``G^{1}(l)`` (the ``1/n`` correction to ``E[z^2]`` is ``K1 / n``).
        V: four-point vertex ``V^(l)`` (connected ``E[z_i^2 z_j^2] = V / n``, ``i != j``).
        chi_parallel, chi_perp: susceptibilities of the map *out of* layer ``l``, at ``K^(l)``.
        C_W, C_b: the hyperparameters used (every layer but the first, which is ``K0``).
    """

    layers: np.ndarray
    K: np.ndarray
    K1: np.ndarray
    V: np.ndarray
    chi_parallel: np.ndarray
    chi_perp: np.ndarray
    C_W: float
    C_b: float

    @property
    def V_over_K2(self) -> np.ndarray:
        """Normalised vertex ``V / K^2`` (``n`` times the excess kurtosis-like ratio)."""
        return self.V / self.K**2

    @property
    def K1_over_K(self) -> np.ndarray:
        """``K1 / K``: relative ``1/n`` shift of the two-point function (times ``n``)."""
        return self.K1 / self.K


@float64
def depth_flow(activation, *, C_W: float, C_b: float, K0: float, depth: int) -> DepthFlow:
    """Iterate the single-input leading-order recursions with equal widths (``docs/theory.md``, "Criticality").

    ``K^(1) = K0``, ``V^(1) = K1^(1) = 0`` and, for ``l = 1 .. depth - 1``,

    * ``K^(l+1) = C_b + C_W g(K)``,
    * ``V^(l+1) = C_W^2 Var_K(sigma^2) + chi_par(K)^2 V^(l)``,
    * ``K1^(l+1) = chi_par(K) K1^(l) + (C_W / 2) g''(K) V^(l)``,

    all at ``K = K^(l)``. These are the recursions of ``docs/theory.md``, "Finite-width recursions", with one input and ``n_l = n_{l-1}``.

    Args:
        activation: name, :class:`ngp.Activation` or callable.
        C_W: weight variance ``> 0`` (layers ``2 .. depth``).
        C_b: bias variance ``>= 0``.
        K0: first-layer kernel ``K^(1) = C_b^(1) + C_W^(1) |x|^2 / n0``, one number ``> 0``.
        depth: number of layers ``>= 1``.

    Returns:
        :class:`DepthFlow`. If ``K`` overflows the remaining layers are ``nan`` (with a warning).
    """
    act = _act(activation)
    C_W = multiplier(positive_float(C_W, "C_W"), "C_W")
    C_b = multiplier(nonneg_float(C_b, "C_b"), "C_b")
    K0 = _as_kernel(K0, "K0")
    depth = _as_depth(depth)
    if act.relu_slopes is not None:
        K, V, K1, cpar, cperp = _flow_closed(act, C_W, C_b, K0, depth)
    else:
        K, V, K1, cpar, cperp = _flow_quadrature(act, C_W, C_b, K0, depth)
    bad = ~(np.isfinite(K) & (K > 0) & np.isfinite(V) & np.isfinite(K1) & np.isfinite(cperp))
    if np.any(bad):
        first = int(np.argmax(bad))
        warn(f"depth_flow: the kernel or its averages left the finite range at layer {first + 1} "
             f"(K = {K[first]:.4g}); layers >= {first + 1} are nan", AccuracyWarning)
        for arr in (K, V, K1, cpar, cperp):
            arr[first:] = np.nan
    elif np.max(K) > K_ACCURATE:
        warn(f"depth_flow: the kernel reaches K = {np.max(K):.4g} > {K_ACCURATE:.0f}; the quadrature "
             "loses digits there", AccuracyWarning)
    return DepthFlow(np.arange(1, depth + 1), K, K1, V, cpar, cperp, C_W, C_b)


def _flow_closed(act, C_W, C_b, K0, depth):
    """Relu family: ``g = A_2 K``, ``Var(sigma^2) = (3 A_4 - A_2^2) K^2``, ``g'' = 0``."""
    ap, am = act.relu_slopes
    A2, A4 = 0.5 * (ap**2 + am**2), 0.5 * (ap**4 + am**4)
    K, V, K1 = np.empty(depth), np.empty(depth), np.empty(depth)
    K[0], V[0], K1[0] = K0, 0.0, 0.0
    cpar = C_W * A2
    with np.errstate(over="ignore", invalid="ignore"):
        for i in range(depth - 1):
            K[i + 1] = C_b + C_W * A2 * K[i]
            V[i + 1] = C_W**2 * (3 * A4 - A2**2) * K[i] ** 2 + cpar**2 * V[i]
            K1[i + 1] = cpar * K1[i]
    return K, V, K1, np.full(depth, cpar), np.full(depth, cpar)


#: Layers per compiled scan of the quadrature depth flow.
_CHUNK = 512


def _flow_fn(act: Activation, m: int, small: bool = False) -> Callable:
    return _flow_jit(_Keyed(act), m, small)


@functools.lru_cache(maxsize=32)
def _flow_jit(keyed: _Keyed, m: int, small: bool = False) -> Callable:
    """The flow's compiled chunk; ``small``: ``g''`` by the derivative form below :data:`_G2_DERIVATIVE_K` (only the
    branch a layer needs runs)."""
    moments = _moment_core(keyed.act, m)
    g2_small = _g2_small_core(keyed.act, m) if small else None

    def step(carry, _):
        K, V, K1, C_W, C_b = carry
        g, g1, g2, s4, sp2 = (v[0] for v in moments(K[None]))
        if g2_small is not None:
            g2 = jax.lax.cond(K < _G2_DERIVATIVE_K, lambda: g2_small(K[None])[0], lambda: g2)
        cpar, cperp = C_W * g1, C_W * sp2
        nxt = (C_b + C_W * g, C_W**2 * (s4 - g * g) + cpar**2 * V, cpar * K1 + 0.5 * C_W * g2 * V, C_W, C_b)
        return nxt, jnp.stack([K, V, K1, cpar, cperp])

    @jax.jit
    def run(state):
        carry, out = jax.lax.scan(step, state, None, length=_CHUNK)
        return carry, out

    return run


def _flow_quadrature(act, C_W, C_b, K0, depth):
    """Smooth activations: compiled scans of ``_CHUNK`` layers; the node count follows ``max K``."""
    state = tuple(device(v, dtype=float) for v in (K0, 0.0, 0.0, C_W, C_b))
    chunks = []
    done = 0
    while done < depth:
        m = _nodes(float(state[0]))
        while True:
            carry, out = _flow_fn(act, m)(state)
            out = np.asarray(out).T
            ks = out[0][np.isfinite(out[0])]
            m_need = _nodes(float(np.max(ks))) if ks.size else m
            if m_need <= m:
                break
            m = m_need
        if act.smooth and ks.size and np.min(ks) < _G2_DERIVATIVE_K:  # again, with g'' free of cancellation there
            carry, out = _flow_fn(act, m, True)(state)
            out = np.asarray(out).T
        chunks.append(out)
        state = carry
        done += _CHUNK
        if not np.all(np.isfinite(out[0])):
            break
    out = np.concatenate(chunks, axis=1)
    res = np.full((5, depth), np.nan)
    n = min(depth, out.shape[1])
    res[:, :n] = out[:, :n]
    return res[0], res[1], res[2], res[3], res[4]


# ----------------------------------------------------------------------------- asymptotic laws
@result
class AsymptoticLaw:
    """Large-depth law of a universality class, evaluated at the given layers.

    Attributes:
        layers: layer indices ``l`` (shape ``(D,)``).
        K: predicted kernel ``K^(l)`` (``nan`` where the law does not fix it).
        V_over_K2: predicted normalised vertex ``V^(l) / K^(l)^2`` (equal widths).
        description: the law in words.
    """

    layers: np.ndarray
    K: np.ndarray
    V_over_K2: np.ndarray
    description: str


#: Gauss-Hermite nodes of the phase diagram (picture accuracy, not 1e-12).
_PHASE_NODES = 400
#: Kernels are clipped here while iterating (larger means "diverged").
_PHASE_K_MAX = 100.0


@result
class PhaseDiagram:
    """Result of :func:`phase_diagram`: arrays shaped like the broadcast of ``C_b`` and ``C_W``.

    Attributes:
        C_b, C_W: the grid.
        K: the kernel after ``depth`` layers (clipped to ``[1e-12, 100]`` while iterating).
        chi_perp: the perpendicular susceptibility ``C_W <sigma'(z)^2>_K`` at that kernel.
        diverged: where the kernel reached 100 (or overflowed) on the way.
    """

    C_b: np.ndarray
    C_W: np.ndarray
    K: np.ndarray
    chi_perp: np.ndarray
    diverged: np.ndarray


def _real_array(value, name: str) -> np.ndarray:
    """``value`` as a float array; anything that is not real numbers (strings, booleans, complex, ragged lists)
    raises a ``TypeError`` naming ``name``."""
    if np.iscomplexobj(value):
        raise TypeError(f"{name}: expected real numbers, got complex values")
    try:
        raw = np.asarray(value) if not isinstance(value, (str, bytes)) else None
    except (TypeError, ValueError):
        raw = None
    if raw is None or raw.dtype.kind not in "iuf":
        raise TypeError(f"{name}: expected real numbers (a number or an array), got {value!r}")
    return raw.astype(float)


@float64
def phase_diagram(activation, *, C_b, C_W, depth: int, K0: float = 1.0) -> PhaseDiagram:
    """Single-input kernel flow ``K^(l+1) = C_b + C_W g(K^(l))`` from ``K^(1) = K0`` on a grid of
    ``(C_b, C_W)`` (any broadcastable arrays), and ``chi_perp`` at the last layer (``docs/criticality.md``).

    A 400-node Gauss-Hermite rule (picture accuracy, ~1e-6 relative at ``K <~ 10``; use
    :func:`depth_flow` for one point at full accuracy); kernels reaching 100 are marked ``diverged``.
    :func:`ngp.plot.plot_phase_diagram` draws it.

    Args:
        activation: name, :class:`ngp.Activation` or callable.
        C_b: bias variances ``>= 0``.
        C_W: weight variances ``> 0``.
        depth: number of layers ``>= 1``.
        K0: first-layer kernel, one number ``> 0``.
    """
    act = _act(activation)
    cb, cw = _real_array(C_b, "C_b"), _real_array(C_W, "C_W")
    if not (np.all(np.isfinite(cb)) and np.all(cb >= 0)):
        raise ValueError("C_b: bias variances must be finite and >= 0")
    if not (np.all(np.isfinite(cw)) and np.all(cw > 0)):
        raise ValueError("C_W: weight variances must be finite and > 0")
    try:
        CB, CW = np.broadcast_arrays(cb, cw)
    except ValueError:
        raise ValueError(f"C_b, C_W: shapes {cb.shape} and {cw.shape} do not broadcast; for a grid pass e.g. "
                         "C_b[:, None] and C_W[None, :]") from None
    depth = _as_depth(depth)
    K0 = _as_kernel(K0, "K0")
    K = np.full(CB.shape, K0)
    diverged = np.zeros(CB.shape, dtype=bool)
    with np.errstate(all="ignore"):  # diverging kernels are marked below
        for _ in range(depth - 1):
            K = CB + CW * _moments(act, K, nodes=_PHASE_NODES, check=False)["g"]  # non-finite: diverged
            diverged |= ~np.isfinite(K) | (K >= _PHASE_K_MAX)
            K = np.clip(np.nan_to_num(K, nan=_PHASE_K_MAX, posinf=_PHASE_K_MAX), 1e-12, _PHASE_K_MAX)
        chi_perp = CW * _moments(act, K, nodes=_PHASE_NODES, check=False)["sp2"]
    return PhaseDiagram(CB.copy(), CW.copy(), K, chi_perp, diverged)


def asymptotic_law(point: CriticalPoint, depth, *, K0: float | None = None) -> AsymptoticLaw:
    """The depth law of ``point``'s universality class (``docs/theory.md``, "Criticality").

    * scale-invariant: ``K^(l) = K^(1)`` (``K0``; ``nan`` if not given) and
      ``V / K^2 = (3 A_4 / A_2^2 - 1)(l - 1)``, exact at leading order for every ``l``.
    * ``K*=0``: ``K^(l) ~ 1 / ((-a1) l)`` and ``V / K^2 ~ (2/3) l`` (universal; corrections
      ``O(log l / l)``, so only reached at ``l ~ 10^3 - 10^4``).
    * half-stable: marginal at practical depths, ``K^(l) ~ K*`` and
      ``V / K^2 ~ A* (l - 1)`` (``A* = point.vertex_slope``). The true ``1/l`` asymptotics
      (``V ~ (A*/5) l K*^2``) set in only at ``l >~ 10^4 - 10^5`` because ``f''(K*)`` is tiny.

    Args:
        point: a :class:`CriticalPoint` with ``exists=True``.
        depth: an int ``D`` (layers ``1 .. D``) or an array of real layer indices ``>= 1``.
        K0: first-layer kernel (one number ``> 0``) for the scale-invariant class (checked, and unused, for the
            others).

    Raises:
        ValueError: ``point`` has no critical point, or bad ``depth``.
    """
    if not isinstance(point, CriticalPoint):
        raise TypeError(f"point: expected a CriticalPoint (from critical_point), got {type(point).__name__}")
    if not point.exists:
        raise ValueError(f"point: {point.activation!r} has no critical point ({point.reason})")
    if isinstance(depth, (numbers.Integral, np.integer)) and not isinstance(depth, bool):
        layers = np.arange(1, _as_depth(depth) + 1, dtype=float)
    else:
        layers = _real_array(depth, "depth").reshape(-1)
        if layers.size == 0 or not np.all(np.isfinite(layers)) or np.any(layers < 1):
            raise ValueError(f"depth: expected an int >= 1 or layer indices >= 1, got {depth!r}")
    cls = point.universality_class
    k0 = np.nan if K0 is None else _as_kernel(K0, "K0")  # checked for every class (the others do not read it)
    if cls == "scale-invariant":
        K = np.full_like(layers, k0)
        v = point.vertex_slope * (layers - 1)
        desc = f"scale-invariant: K constant, V/K^2 = {point.vertex_slope:.10g} (l - 1) exactly"
    elif cls == "K*=0":
        K = 1.0 / (-point.a1 * layers)
        v = 2.0 / 3.0 * layers
        desc = f"K*=0: K ~ 1/({-point.a1:.6g} l), V/K^2 ~ (2/3) l"
    else:
        K = np.full_like(layers, point.K_star)
        v = point.vertex_slope * (layers - 1)
        desc = (f"half-stable: marginal at practical depths, K ~ K* = {point.K_star:.6g}, "
                f"V/K^2 ~ {point.vertex_slope:.5g} (l - 1); 1/l asymptotics only at l >~ 1e4")
    return AsymptoticLaw(layers, K, v, desc)


# ----------------------------------------------------------------------------- residual networks
@dataclasses.dataclass(frozen=True)
class ResidualCriticalPoint:
    """Critical initialisation of residual blocks ``z' = gamma z + xi [b + W sigma(z)]``.

    The block maps a single-input kernel as ``f(K) = gamma^2 K + xi^2 (C_b + C_W g(K))``, with
    susceptibilities ``chi_res = gamma^2 + xi^2 chi`` (:func:`residual_susceptibilities`).
    Criticality, ``f(K*) = K*`` and ``chi_res_par = chi_res_perp = 1``, needs ``chi_par = chi_perp``
    of the branch at ``K*`` (so ``K*`` is the MLP's) and fixes
    ``xi^2 (C_b, C_W) = (1 - gamma^2) (C_b*, C_W*)`` in terms of the MLP's critical point: for every
    ``gamma^2 < 1`` and ``xi != 0`` one point; ``gamma^2 + xi^2 = 1`` is the MLP's own ``(C_b*, C_W*)``.

    Attributes:
        activation: activation name.
        gamma, xi: the block weights.
        exists: whether a critical ``(C_b, C_W)`` exists for these ``gamma, xi``.
        reason: one sentence saying why (or why not).
        C_b, C_W: critical bias and weight variances (``None`` if none).
        K_star: fixed point (``None`` for the scale-invariant class, where every ``K`` is one).
        scale: ``(1 - gamma^2) / xi^2``, the factor applied to the MLP's ``(C_b*, C_W*)``.
        mlp: the plain-network :class:`CriticalPoint`.
    """

    activation: str
    gamma: float
    xi: float
    exists: bool
    reason: str
    C_b: float | None = None
    C_W: float | None = None
    K_star: float | None = None
    scale: float | None = None
    mlp: CriticalPoint | None = None


@float64
def residual_critical_point(activation, *, gamma: float, xi: float,
                            K_range: tuple[float, float] = K_SEARCH) -> ResidualCriticalPoint:
    """The critical ``(C_b, C_W)`` of residual blocks with skip weight ``gamma`` and branch weight ``xi``.

    ``(C_b, C_W) = (1 - gamma^2) / xi^2 * (C_b*, C_W*)`` with ``(C_b*, C_W*, K*)`` from
    :func:`critical_point` (see :class:`ResidualCriticalPoint`). There is none when the MLP has
    none, when ``xi = 0``, or when ``gamma^2 >= 1``: then ``chi_res >= 1 + xi^2 chi > 1`` and every
    block adds ``xi^2 G > 0`` to the kernel (``gamma^2 = 1`` networks stay bounded only over
    ``~1 / xi^2`` blocks, the usual ``xi^2 ~ 1 / depth`` scaling).

    Args:
        activation: name, :class:`ngp.Activation` or callable.
        gamma: weight of the skip path (real).
        xi: weight of the block (real).
        K_range: search range of half-stable fixed points (:func:`critical_point`).
    """
    gamma, xi = _real(gamma, "gamma"), _real(xi, "xi")
    mlp = critical_point(activation, K_range=K_range)
    name = mlp.activation
    if not mlp.exists:
        return ResidualCriticalPoint(name, gamma, xi, False, "the branch has no critical point: " + mlp.reason, mlp=mlp)
    if xi == 0:
        return ResidualCriticalPoint(name, gamma, xi, False, "xi = 0: the block is the identity map times gamma",
                                     mlp=mlp)
    if gamma * gamma >= 1:
        return ResidualCriticalPoint(
            name, gamma, xi, False,
            f"gamma^2 = {gamma * gamma:.6g} >= 1: chi_res = gamma^2 + xi^2 chi exceeds 1 for any C_W > 0 and the "
            "kernel grows by xi^2 G per block; keep xi^2 ~ 1/depth or use gamma^2 < 1", mlp=mlp)
    scale = (1.0 - gamma * gamma) / (xi * xi)
    return ResidualCriticalPoint(
        name, gamma, xi, True,
        f"(C_b, C_W) = (1 - gamma^2)/xi^2 = {scale:.6g} times the {mlp.universality_class} MLP point: "
        "gamma^2 + xi^2 chi = 1 for both susceptibilities at the MLP's K*",
        C_b=scale * mlp.C_b, C_W=scale * mlp.C_W, K_star=mlp.K_star, scale=scale, mlp=mlp)


@result
class ResidualDepthFlow(DepthFlow):
    """Single-input finite-width flow of a residual network (docs/theory.md, residual networks).

    Entry ``l - 1`` describes the *output* of a network with ``l`` weight layers (``ngp.ResMLP``
    with ``depth = l``): ``l = 1`` the first layer (``K0``), ``l = 2`` one hidden layer and the
    readout, ``l >= 3`` ``l - 2`` residual blocks and the readout. ``K``, ``K1``, ``V`` follow the
    conventions of :class:`DepthFlow` (``V`` and ``K1`` carry ``1/n``); ``chi_parallel`` and
    ``chi_perp`` are the block susceptibilities ``gamma^2 + xi^2 chi`` at the last hidden layer.

    Attributes (besides :class:`DepthFlow`'s):
        gamma, xi: the block weights.
        hidden_K: the kernel of the last hidden layer (the residual stream), ``(depth,)``.
    """

    gamma: float = 0.0
    xi: float = 1.0
    hidden_K: np.ndarray | None = None


@float64
def residual_depth_flow(activation, *, C_W: float, C_b: float, gamma: float, xi: float, K0: float,
                        depth: int, **options) -> ResidualDepthFlow:
    """Finite-width ``K``, ``K1``, ``V`` of single-input residual networks of depth ``1 .. depth``.

    One chain of residual blocks (``C_W``, ``C_b``, ``gamma``, ``xi`` in every block and the
    readout) is followed layer by layer; after each layer the output of a readout is recorded.
    The theory is the full ``O(1/n)`` one of :mod:`ngp._residual_cumulants` (including a neuron's
    self-interaction through its metric), not the MLP recursion with a skip term. ``gamma = 0``,
    ``xi = 1`` reproduces :func:`depth_flow`. Cost grows as ``depth^2`` (cross-layer terms).

    Args:
        activation: name, :class:`ngp.Activation` or callable.
        C_W: weight variance ``> 0``.
        C_b: bias variance ``>= 0``.
        gamma: weight of the skip path (real).
        xi: weight of the block (real).
        K0: first-layer kernel, one number ``> 0``.
        depth: number of weight layers of the deepest network (``>= 1``).
        **options: quadrature options of :mod:`ngp._residual_cumulants`.
    """
    from ._residual_cumulants import chain_start, readout, residual_step

    act = _act(activation)
    C_W = multiplier(positive_float(C_W, "C_W"), "C_W")
    C_b = multiplier(nonneg_float(C_b, "C_b"), "C_b")
    gamma, xi = _real(gamma, "gamma"), _real(xi, "xi")
    K0 = _as_kernel(K0, "K0")
    depth = _as_depth(depth)
    K, K1, V, hidden = (np.full(depth, np.nan) for _ in range(4))
    K[0], K1[0], V[0], hidden[0] = K0, 0.0, 0.0, K0
    cpar, cperp = np.full(depth, np.nan), np.full(depth, np.nan)
    state = chain_start(act, np.array([[K0]]), n=1, **options)
    for l in range(2, depth + 1):
        out = readout(state, C_W=C_W, C_b=C_b)
        K[l - 1], K1[l - 1], V[l - 1] = out.K[0, 0], out.K1[0, 0], out.V[0, 0]
        hidden[l - 1] = state.K[0, 0]
        cp, cq = residual_susceptibilities(act, state.K[0, 0], C_W=C_W, C_b=C_b, gamma=gamma, xi=xi)
        cpar[l - 1], cperp[l - 1] = cp, cq
        if l < depth:
            state = residual_step(state, C_W=C_W, C_b=C_b, gamma=gamma, xi=xi)
            if not np.isfinite(state.K[0, 0]) or state.K[0, 0] > K_ACCURATE:
                warnings.warn(f"residual_depth_flow: the residual stream reaches K = {state.K[0, 0]:.4g} at layer "
                              f"{l + 1}; the remaining layers are nan", AccuracyWarning, stacklevel=2)
                break
    return ResidualDepthFlow(np.arange(1, depth + 1), K, K1, V, cpar, cperp, C_W, C_b,
                             gamma=gamma, xi=xi, hidden_K=hidden)
