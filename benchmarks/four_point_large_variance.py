"""The four-point error estimate at large first-layer variances: honest, loose, and not moved by the tolerance.

Usage: ``python benchmarks/four_point_large_variance.py [--inputs -0.8,-0.3,...] [--out four_point_large_variance]``.

A tanh network ``ngp.MLP(3, 32, C_W=10, C_b=1e-6)`` on six 1-D inputs up to 2.2 (first-layer variances up to
48.4, beyond ``ngp._gaussian.K_ACCURATE`` ~ 36, where the Mehler series and the 1-D rule are capped: what
``ngp regress`` met on statsmodels' ``engel`` data with the fitted ``C_W = 10``). For ``four_point_rtol`` in
{default, 1e-11, 1e-13}: the largest error estimate of ``V`` (``prior.V_error``) and the actual change of ``V``
against the ``1e-13`` run; and, independently, the first dense layer's four-point entries ``E tanh^4`` (one input)
and ``E tanh^2 tanh^2`` (two inputs, the largest variances) against mpmath quadrature (30 and 20 digits), with
their error estimates. ``--inputs`` replaces the six inputs (e.g. add engel's 4.27: variance 182). Results:
``benchmarks/results/<--out>.json``; docs/accuracy.md.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings

import jax

jax.config.update("jax_enable_x64", True)

import mpmath as mp  # noqa: E402
import numpy as np  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import _kernel_setup  # noqa: E402

import ngp  # noqa: E402

X = np.array([-0.8, -0.3, 0.1, 0.6, 1.4, 2.2])[:, None]


def _mp_one(s2: float) -> float:
    mp.mp.dps = 30
    s2 = mp.mpf(s2)
    f = lambda x: mp.tanh(x) ** 4 * mp.exp(-x * x / (2 * s2)) / mp.sqrt(2 * mp.pi * s2)  # noqa: E731
    return float(mp.quad(f, [-mp.inf, -5, -1, 0, 1, 5, mp.inf]))


def _mp_two(a: float, b: float, c: float) -> float:
    mp.mp.dps = 20
    a, b, c = mp.mpf(a), mp.mpf(b), mp.mpf(c)
    r, sa = mp.sqrt(b - c * c / a), mp.sqrt(a)

    def g(z1, z2):
        weight = mp.exp(-(z1 * z1 + z2 * z2) / 2) / (2 * mp.pi)
        return mp.tanh(sa * z1) ** 2 * mp.tanh(c / sa * z1 + r * z2) ** 2 * weight

    return float(mp.quad(g, [-mp.inf, -2, 0, 2, mp.inf], [-mp.inf, -2, 0, 2, mp.inf]))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--inputs", default=",".join(str(x) for x in X[:, 0]), help="comma-separated 1-D inputs")
    ap.add_argument("--out", default="four_point_large_variance")
    args = ap.parse_args()
    x = np.array([float(v) for v in args.inputs.split(",")])[:, None]
    warnings.simplefilter("ignore")
    net = ngp.MLP(3, 32, activation="tanh", C_W=10.0, C_b=1e-6)
    runs, V = {}, {}
    for rtol in (None, 1e-11, 1e-13):
        opts = {} if rtol is None else {"four_point_rtol": rtol}
        t = time.perf_counter()
        p = net.prior(x, **opts)
        V[rtol] = np.asarray(p.V)
        runs[str(rtol)] = {"seconds": time.perf_counter() - t, "max_V_error": float(np.nanmax(p.V_error)),
                           "max_abs_V": float(np.abs(V[rtol]).max())}
        layer = p.layers[1]._c  # the first dense layer with a vertex: its four-point table
        K0 = np.asarray(p.layers[0].K)
    for rtol in (None, 1e-11):
        runs[str(rtol)]["max_change_against_1e-13"] = float(np.abs(V[rtol] - V[1e-13]).max())
    table = layer.map.table
    entries = []
    j, i = (int(k) for k in np.argsort(np.diagonal(K0))[-2:])  # the two largest variances
    for row, ref in (([i, i, i, i], _mp_one(float(K0[i, i]))),
                     ([j, j, i, i], _mp_two(float(K0[j, j]), float(K0[i, i]), float(K0[j, i])))):
        ms = np.array([row])
        value, est = float(np.asarray(table(ms))[0]), float(np.asarray(table.errors(ms))[0])
        entries.append({"row": row, "value": value, "mpmath": ref, "actual_error": abs(value - ref),
                        "estimate": est})
    out = {"inputs": x[:, 0].tolist(), "first_layer_variances": np.diagonal(K0).tolist(), "runs": runs,
           "entries": entries}
    for k, r in runs.items():
        print(f"rtol {k}: max V_error {r['max_V_error']:.3g} (max |V| {r['max_abs_V']:.3g}), "
              f"change against 1e-13 {r.get('max_change_against_1e-13', 0.0):.3g}, {r['seconds']:.1f} s")
    for e in entries:
        print(f"entry {e['row']}: actual error {e['actual_error']:.3g}, estimate {e['estimate']:.3g}")
    return _kernel_setup.write_result(args.out, out)


if __name__ == "__main__":
    sys.exit(main())
