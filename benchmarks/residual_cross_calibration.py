"""Which rule a residual chain's smooth cross-layer expectations should run on: cost and error of three policies.

``ngp.ResMLP(4, 64, activation=act, C_W=1.5, C_b=0.1, gamma=0.8, xi=0.6)`` on 6 standard-normal inputs of 3 features
times ``scale`` (0.7 and 1.0: largest first-layer variances 1.8 and 3.6), at ``four_point_rtol`` in ``--rtols``:

* ``current``: the library's rule choice (``ngp._residual_cumulants._smooth_calibrated``; since stop 80 the isotropic
  rule (``CROSS_ORDERS``) where the calibrated orders are all within it and the rule calibrated on ``sigma``,
  ``sigma'`` and ``sigma''`` is not smaller, the calibrated tensor rule otherwise; before, the isotropic rule wherever
  the calibrated orders were within it);
* ``calibrated``: every problem on its calibrated rule (the chain option ``cross_iso=False``, as the error companions);
* ``derivatives``: every problem on its calibrated rule, with orders calibrated on ``sigma``, ``sigma'`` and
  ``sigma''`` (the self-interaction integrands carry the derivatives; the library calibrates ``sigma`` only).

Errors: the largest ``|V - V_ref|`` and ``|K1 - K1_ref|`` over the three finite-width layers, relative to the largest
value, against the library at ``four_point_rtol = 1e-12``; seconds of the values (warm: each case runs once first).
A measurement for choosing the rule, not a test: the policies are swapped by patching module functions.

Usage: python benchmarks/residual_cross_calibration.py [--acts tanh,gelu] [--scales 0.7,1.0] [--rtols 1e-9,1e-7]
[--policies current,calibrated,derivatives] [--out NAME]. Writes benchmarks/results/NAME.json (default
residual_cross_calibration).
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time
import warnings

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)

from _kernel_setup import machine, ngp_revision, write_result  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--acts", default="tanh,gelu")
    ap.add_argument("--scales", default="0.7,1.0")
    ap.add_argument("--rtols", default="1e-9,1e-7")
    ap.add_argument("--policies", default="current,calibrated,derivatives")
    ap.add_argument("--out", default="residual_cross_calibration")
    args = ap.parse_args()
    import jax

    jax.config.update("jax_enable_x64", True)
    import numpy as np

    import ngp
    from ngp import _residual_cumulants as rc
    from ngp._activations import Activation

    warnings.simplefilter("ignore")
    smooth_calibrated, calibrated_orders = rc._smooth_calibrated, rc.calibrated_orders

    @functools.lru_cache(maxsize=None)
    def with_derivatives(act):
        return (act,) + tuple(Activation(f"{act.name}_d{k}", act.derivative(k)) for k in (1, 2))

    def derivative_orders(act, s, rtol):
        return functools.reduce(np.maximum, [calibrated_orders(a, s, rtol) for a in with_derivatives(act)])

    def use(policy):
        def patched(*a, iso=True, **k):
            return smooth_calibrated(*a, iso=iso and policy == "current", **k)

        rc._smooth_calibrated = patched
        rc.calibrated_orders = derivative_orders if policy == "derivatives" else calibrated_orders

    def values(net, X, **opts):
        prior = net.prior(X, **opts)
        return [(np.asarray(layer.V), np.asarray(layer.K1)) for layer in prior.layers[1:]]

    X0 = np.random.default_rng(0).normal(size=(6, 3))
    rows = []
    try:
        for act in args.acts.split(","):
            for scale in (float(s) for s in args.scales.split(",")):
                X = scale * X0
                net = ngp.ResMLP(4, 64, activation=act, C_W=1.5, C_b=0.1, gamma=0.8, xi=0.6)
                use("current")
                truth = values(net, X, four_point_rtol=1e-12)
                for rtol in (float(r) for r in args.rtols.split(",")):
                    for policy in args.policies.split(","):
                        use(policy)
                        values(net, X, four_point_rtol=rtol)  # compiles the kernels of new shapes
                        t = time.perf_counter()
                        got = values(net, X, four_point_rtol=rtol)
                        seconds = time.perf_counter() - t
                        row = {"activation": act, "scale": scale, "rtol": rtol, "policy": policy, "seconds": seconds}
                        for q, name in enumerate(("V", "K1")):
                            scl = max(float(np.max(np.abs(r[q]))) for r in truth)
                            row[name + "_error"] = max(float(np.max(np.abs(g[q] - r[q]))) for g, r in
                                                       zip(got, truth)) / scl
                        rows.append(row)
                        print(f"{act:5s} scale {scale} rtol {rtol:g} {policy:11s}: {seconds:6.1f} s, V error "
                              f"{row['V_error']:.1e}, K1 error {row['K1_error']:.1e}", flush=True)
    finally:
        rc._smooth_calibrated, rc.calibrated_orders = smooth_calibrated, calibrated_orders
    return write_result(args.out, {"machine": machine(), "revision": ngp_revision(ROOT), "rows": rows})


if __name__ == "__main__":
    sys.exit(main())
