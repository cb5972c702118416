"""Numerical error estimates of ``V`` and ``K1``, propagated through depth.

The only approximate ingredient of ``V`` is the four-point expectation ``<f_a f_b f_c f_d>`` of each
dense step (``ngp._fourpoint``: exact for the relu family and closed forms, an error-estimated
quadrature otherwise). Its absolute error estimate ``e4`` enters the fresh term as ``C_W^2 e4`` and is
carried through the recursions ``V' = fresh + r J V J^T`` and ``K1' = r (J K1 + H:V / 2)`` as bounds,

    E' = C_W^2 e4 + r |J| E |J|^T,        E1' = r (|J| E1 + |H|:E / 2),

(``docs/theory.md``, "Finite-width recursions"; ``docs/four-point.md``). Errors of the two-point
expectations (closed forms, or Mehler series / 1-D quadrature at ~1e-14) are not included. ``NaN``
entries mean a rule without an estimate was used (an explicit ``four_point_order``) or a layer
without an error recursion (residual chains).

The same three views as the values (:class:`ngp._cumulants.Vertex`): the dense ``(P, P)`` matrix
(:func:`packed_vertex_error`), chosen components (:func:`component_errors`, a recursion closed on
the pairs ``{aa, bb, ab}`` like the values') and the two-input blocks behind ``K1``
(:func:`local2_error`, :func:`k1_error`, ``O(N^2)`` per layer; on a set of pairs closed under diagonals
with ``sel``, like ``_local2_at`` and ``_K1_at``).
"""

from __future__ import annotations

import functools

import numpy as np

from ._cumulants import (DenseLayer, LayerCumulants, ScaledLayer, closed_pairs, layer_rows, local_jacobian, local_quads,
                         remember, sub_rows)
from ._finite import multisets, packed_positions, propagate
from ._validate import quiet
from ._warnings import AccuracyWarning

__all__ = ["packed_vertex_error", "component_errors", "local2_error", "k1_error", "k1_error_packed"]


def _companion(layer: LayerCumulants):
    """The layers on a looser quadrature whose largest difference estimates its errors (residual chains), else
    ``None``."""
    return getattr(layer, "error_companions", None)


def _supported(layer: LayerCumulants, what: str) -> bool:
    """Whether ``layer`` has an error estimate (raises the layer's refusal for ``what`` first)."""
    layer._check(what)
    return layer.gaussian or isinstance(layer, (ScaledLayer, DenseLayer)) or _companion(layer) is not None


def _by_difference(layer: LayerCumulants, values) -> np.ndarray:
    """The largest ``|values(layer) - values(companion)|`` over the layer's companions plus ``layer.error_floor`` times
    the largest ``|values(layer)|``; the companions' own accuracy warnings are silenced (looser by design)."""
    fine = np.asarray(values(layer), dtype=float)
    diff = np.zeros(fine.shape)
    with quiet(AccuracyWarning):
        for comp in _companion(layer):
            comp.follow(layer)
            diff = np.maximum(diff, np.abs(fine - np.asarray(values(comp), dtype=float)))
    return diff + layer.error_floor * np.max(np.abs(fine), initial=0.0)


def _recursion(key: str, what: str, shape, power: int, values):
    """An error recursion over layers, remembered on each layer as ``key`` (on all pairs; on a subset
    ``sel`` of them for the latest ``sel``): NaN for layers without one, 0 for exactly Gaussian layers,
    ``alpha**power`` times the previous layer's for scaled ones, the difference from the companion for chain
    layers (``values(layer, sel)``: the quantity itself); the decorated function handles dense layers.
    ``shape(layer, S)`` is the result's shape with ``S`` pairs."""
    def decorate(dense):
        def compute(layer: LayerCumulants, sel) -> np.ndarray:
            S = layer.pairs.P if sel is None else len(sel)
            if not _supported(layer, what):
                return np.full(shape(layer, S), np.nan)
            if layer.gaussian:
                return np.zeros(shape(layer, S))
            if isinstance(layer, ScaledLayer):
                return layer.alpha**power * error(layer.prev, sel)
            if _companion(layer) is not None:
                return _by_difference(layer, lambda at: values(at, sel))
            return dense(layer, sel)

        @functools.wraps(dense)
        def error(layer: LayerCumulants, sel=None) -> np.ndarray:
            cached = layer.__dict__.get(key)
            if cached is not None:
                return cached if sel is None else cached[sel]
            if sel is not None:
                return remember(layer, key, sel, lambda s: compute(layer, s))
            out = compute(layer, None)
            layer.__dict__[key] = out
            return out
        return error
    return decorate


@_recursion("_packed_error", "V", lambda layer, S: (S, layer.pairs.P), 4,
            lambda layer, sel: layer._packed if sel is None else layer._packed[sel])
def packed_vertex_error(layer: LayerCumulants, sel=None) -> np.ndarray:
    """``(P, P)`` estimated absolute numerical error of ``layer.vertex.packed()`` (remembered on the layer;
    rows ``sel`` of it with ``sel``)."""
    if sel is not None:
        return packed_vertex_error(layer)[sel]
    m = layer.map
    e4 = m.table.errors(multisets(layer.N))
    out = float(m.C_W) ** 2 * np.asarray(e4)[packed_positions(layer.pairs)]
    if not layer.prev.gaussian:
        J, H = m.JH
        prop, _ = propagate(np.abs(np.asarray(J)), np.abs(np.asarray(H)), packed_vertex_error(layer.prev),
                            np.zeros(layer.pairs.P), layer.pairs, m.ratio)
        out = out + np.asarray(prop)
    return out


def component_errors(layer: LayerCumulants, p, q) -> np.ndarray:
    """Estimated absolute numerical errors of ``layer._components_pq(p, q)`` (pair-index rows, ``p <= q``),
    by the component recursion of the values (their four-point values are computed first if needed)."""
    p, q = np.asarray(p, dtype=np.int64), np.asarray(q, dtype=np.int64)
    if p.size == 0:
        return np.zeros(p.shape)
    if not _supported(layer, "V"):
        return np.full(p.shape, np.nan)
    if layer.gaussian:
        return np.zeros(p.shape)
    if isinstance(layer, ScaledLayer):
        return layer.alpha**4 * component_errors(layer.prev, p, q)
    if "_packed_error" in layer.__dict__:
        return layer.__dict__["_packed_error"][p, q]
    if _companion(layer) is not None:
        return _by_difference(layer, lambda at: at._components_pq(p, q))
    pairs, m = layer.pairs, layer.map
    up, uq, quads, inverse = layer_rows(layer, p, q)
    out = float(m.C_W) ** 2 * np.asarray(m.table.errors(np.sort(quads, axis=1)), dtype=float)
    if not layer.prev.gaussian:
        J = np.abs(np.asarray(m.JH[0]))
        sub = component_errors(layer.prev, *sub_rows(pairs, up, uq)).reshape(up.size, 3, 3)
        out = out + m.ratio * np.einsum("us,ust,ut->u", J[up], sub, J[uq])
    return out[inverse]


@_recursion("_local2_error", "V", lambda layer, S: (S, 3, 3), 4, lambda layer, sel: layer._local2_at(sel))
def local2_error(layer: LayerCumulants, sel=None) -> np.ndarray:
    """``(S, 3, 3)`` estimated absolute numerical error of ``layer._local2_at(sel)`` (``sel``: pair indices
    closed under diagonals, ``None``: all pairs; remembered on the layer)."""
    pairs, m = layer.pairs, layer.map
    quads = np.sort(local_quads(pairs, sel), axis=1)
    out = float(m.C_W) ** 2 * np.asarray(m.table.errors(quads), dtype=float).reshape(-1, 3, 3)
    if not layer.prev.gaussian:
        Jl = np.asarray(local_jacobian(np.abs(np.asarray(m.JH[0])), pairs, sel))
        out = out + m.ratio * np.einsum("pst,ptu,pvu->psv", Jl, local2_error(layer.prev, sel), Jl)
    return out


@_recursion("_k1_error", "K1", lambda layer, S: (S,), 2, lambda layer, sel: layer._K1_at(sel))
def k1_error_packed(layer: LayerCumulants, sel=None) -> np.ndarray:
    """``(S,)`` estimated absolute numerical error of ``layer._K1_at(sel)`` (``sel``: pair indices closed
    under diagonals, ``None``: all pairs; remembered on the layer)."""
    pairs, m = layer.pairs, layer.map
    if layer.prev.gaussian:
        return np.zeros(pairs.P if sel is None else len(sel))
    J, H = (np.abs(np.asarray(t)) for t in m.JH)
    cols = pairs.cols
    if sel is not None:
        J, H, cols = J[sel], H[sel], closed_pairs(pairs, sel)
    E1 = k1_error_packed(layer.prev, sel)
    return m.ratio * (np.einsum("ps,ps->p", J, E1[cols]) + 0.5 * np.einsum("pst,pst->p", H, local2_error(layer.prev, sel)))


def k1_error(layer: LayerCumulants) -> np.ndarray:
    """``(N, N)`` estimated absolute numerical error of ``layer.K1``."""
    return np.asarray(layer.pairs.unpack(k1_error_packed(layer)))
