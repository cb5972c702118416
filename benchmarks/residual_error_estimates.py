"""How well a residual chain's error estimates (``V_error``, ``K1_error``) cover its quadrature error, and their cost.

``ngp.ResMLP(4, 64, activation=act, C_W=1.5, C_b=0.1, gamma=0.8, xi=0.6)`` on 6 standard-normal inputs of 3
features times ``scale``. The estimates are the difference from a companion chain on looser rules
(``ngp._residual_cumulants.companion_options``: calibrated rules at 100 times ``four_point_rtol``, fixed rules at half
the nodes) plus a tenth of the tolerance times the largest value. For each case, every entry of ``V`` and ``K1`` of
the three finite-width layers (two chain layers, the readout) at ``four_point_rtol`` in ``--rtols`` against a
reference: the same network at ``four_point_rtol = 1e-12`` (smooth activations), or with the relu family's fixed
cross-layer rules at (384, 128, 64) nodes for (2, 3, 4) variables instead of (96, 48, 32) (an independent check of
their algebraic convergence, not a converged value: the reference's own error is part of the "error"). Reported,
relative to the largest ``|value|`` of each quantity: the largest error, the largest estimate, the entries whose error
exceeds their estimate (and by how much, largest ratio), and the seconds of the values and of the estimates (warm
kernels: each case runs once before it is timed).

Usage: python benchmarks/residual_error_estimates.py [--acts tanh,gelu,relu] [--scales 1.0,1.5] [--rtols 1e-9,1e-7]
[--out NAME]. Writes benchmarks/results/NAME.json (default residual_error_estimates).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)

from _kernel_setup import machine, ngp_revision, write_result  # noqa: E402

RELU_REFERENCE = {2: 384, 3: 128, 4: 64}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--acts", default="tanh,gelu,relu")
    ap.add_argument("--scales", default="1.0,1.5")
    ap.add_argument("--rtols", default="1e-9,1e-7")
    ap.add_argument("--out", default="residual_error_estimates")
    args = ap.parse_args()
    import jax

    jax.config.update("jax_enable_x64", True)
    import numpy as np

    import ngp
    from ngp import _residual_cumulants as rc

    warnings.simplefilter("ignore")
    X0 = np.random.default_rng(0).normal(size=(6, 3))
    rows = []
    for act in args.acts.split(","):
        relu = act in ("relu", "leaky_relu")
        for scale in (float(s) for s in args.scales.split(",")):
            X = scale * X0
            net = ngp.ResMLP(4, 64, activation=act, C_W=1.5, C_b=0.1, gamma=0.8, xi=0.6)
            t = time.perf_counter()
            if relu:
                saved = dict(rc.RELU_ORDERS)
                rc.RELU_ORDERS.update(RELU_REFERENCE)
                try:
                    ref = net.prior(X)
                    truth = [(np.asarray(layer.V), np.asarray(layer.K1)) for layer in ref.layers[1:]]
                finally:
                    rc.RELU_ORDERS.clear()
                    rc.RELU_ORDERS.update(saved)
            else:
                ref = net.prior(X, four_point_rtol=1e-12)
                truth = [(np.asarray(layer.V), np.asarray(layer.K1)) for layer in ref.layers[1:]]
            t_ref = time.perf_counter() - t
            kmax = float(np.max(np.diag(np.asarray(ref.layers[0].K))))
            for rtol in ([None] if relu else [float(r) for r in args.rtols.split(",")]):
                opts = {} if rtol is None else {"four_point_rtol": rtol}
                for rep in range(2):  # the first run compiles the kernels of new shapes
                    t = time.perf_counter()
                    prior = net.prior(X, **opts)
                    vals = [(np.asarray(layer.V), np.asarray(layer.K1)) for layer in prior.layers[1:]]
                    t_val = time.perf_counter() - t
                    t = time.perf_counter()
                    ests = [(np.asarray(layer.V_error), np.asarray(layer.K1_error)) for layer in prior.layers[1:]]
                    t_err = time.perf_counter() - t
                row = {"activation": act, "scale": scale, "first_layer_variance_max": kmax, "rtol": rtol,
                       "reference": "rules x(4,2.7,2)" if relu else "four_point_rtol=1e-12",
                       "seconds_values": t_val, "seconds_errors": t_err, "seconds_reference": t_ref}
                for q, name in enumerate(("V", "K1")):
                    err = np.concatenate([np.abs(v[q] - r[q]).ravel() for v, r in zip(vals, truth)])
                    est = np.concatenate([e[q].ravel() for e in ests])
                    scl = max(float(np.max(np.abs(r[q]))) for r in truth)
                    under = err > est
                    row[name] = {"entries": int(err.size), "error_max": float(err.max() / scl),
                                 "estimate_max": float(est.max() / scl), "estimate_median": float(np.median(est) / scl),
                                 "under": int(under.sum()),
                                 "under_error_max": float(err[under].max() / scl) if under.any() else 0.0,
                                 "under_ratio_max": float(np.max(err[under] / est[under])) if under.any() else 0.0}
                rows.append(row)
                print(f"{act:5s} scale {scale} (K <= {kmax:.2f}) rtol {rtol}: values {t_val:.1f} s, errors "
                      f"{t_err:.1f} s (reference {t_ref:.1f} s); " + "; ".join(
                          f"{n}: error {row[n]['error_max']:.1e} estimate {row[n]['estimate_max']:.1e} under "
                          f"{row[n]['under']}/{row[n]['entries']} (to {row[n]['under_error_max']:.1e}, "
                          f"x{row[n]['under_ratio_max']:.2g})" for n in ("V", "K1")), flush=True)
    return write_result(args.out, {"machine": machine(), "revision": ngp_revision(ROOT), "rows": rows})


if __name__ == "__main__":
    sys.exit(main())
