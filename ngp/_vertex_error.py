"""Numerical error estimate of the four-point vertex ``V``, propagated through depth.

The only approximate ingredient of ``V`` is the four-point expectation ``<f_a f_b f_c f_d>`` of each
dense step (``ngp._fourpoint``: exact for the relu family and closed forms, an error-estimated
quadrature otherwise). Its absolute error estimate ``e4`` enters the fresh term as ``C_W^2 e4`` and is
carried through the recursion ``V' = fresh + r J V J^T`` as a bound,

    E' = C_W^2 e4 + r |J| E |J|^T,

(``docs/theory.md``, "Finite-width recursions"; ``docs/four-point.md``). Errors of the two-point
expectations (closed forms, or Mehler series / 1-D quadrature at ~1e-14) are not included. ``NaN``
entries mean a rule without an estimate was used (an explicit ``four_point_order``).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from ._cumulants import DenseLayer, LayerCumulants, ScaledLayer
from ._finite import multisets, packed_positions, propagate

__all__ = ["packed_vertex_error"]


def packed_vertex_error(layer: LayerCumulants) -> np.ndarray:
    """``(P, P)`` estimated absolute numerical error of ``layer.vertex.packed()`` (remembered on the layer)."""
    cached = layer.__dict__.get("_packed_error")
    if cached is not None:
        return cached
    P = layer.pairs.P
    if layer.gaussian:
        out = np.zeros((P, P))
    elif isinstance(layer, ScaledLayer):
        out = layer.alpha**4 * packed_vertex_error(layer.prev)
    elif isinstance(layer, DenseLayer):
        layer._check("V")
        m = layer.map
        e4 = m.table.errors(multisets(layer.N))
        out = float(m.C_W) ** 2 * np.asarray(e4)[packed_positions(layer.pairs)]
        if not layer.prev.gaussian:
            J, H = m.JH
            prop, _ = propagate(jnp.abs(J), jnp.abs(H), packed_vertex_error(layer.prev), jnp.zeros(P),
                                layer.pairs, m.ratio)
            out = out + np.asarray(prop)
    else:
        layer._check("V")
        raise NotImplementedError(f"no vertex error estimate for a {type(layer).__name__}")
    layer.__dict__["_packed_error"] = out
    return out
