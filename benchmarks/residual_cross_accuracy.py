"""Accuracy of the residual chain's cross-layer expectations (smooth activations) at growing variances.

``ngp.ResMLP(3, 64, activation="tanh", C_W=c)`` on 5 standard-normal inputs of 3 features times ``scale``. For each
case: (A) ``K1`` and ``V`` of ``net.prior(X)`` with the isotropic Gauss-Hermite orders of the cross-layer
expectations (``ngp._residual_cumulants.CROSS_ORDERS``, default 128 / 64 / 40 nodes per dimension for 2 / 3 / 4
variables) raised step by step, each against the highest; (B) the trajectory covariance ``Y = Cov(s_a s_b, s_c s_e)``
of sampled four-variable problems of that prior (two inputs at a later layer, two at an earlier one) by the default
rule, against the four-point engine (``ngp._fourpoint.product_expectations`` at ``rtol = 1e-12``: calibrated
anisotropic rules, one input integrated in closed form, its own error estimate), relative to the Hoelder scale
``sqrt(E[(s_a s_b)^2] E[(s_c s_e)^2])``.

Usage: python benchmarks/residual_cross_accuracy.py [--samples 12] [--out NAME]. Writes
benchmarks/results/NAME.json (default residual_cross_accuracy).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)

from _kernel_setup import machine, write_result  # noqa: E402

CASES = ((0.5, 1.0), (0.7, 1.0), (1.0, 1.0), (1.0, 1.5), (2.0, 1.5))  # (input scale, C_W)
ORDERS = ({2: 128, 3: 64, 4: 40}, {2: 200, 3: 90, 4: 56}, {2: 256, 3: 110, 4: 64}, {2: 300, 3: 130, 4: 80},
          {2: 360, 3: 150, 4: 96})


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=12, help="four-variable problems per case in part B")
    ap.add_argument("--out", default="residual_cross_accuracy")
    args = ap.parse_args()
    import jax

    jax.config.update("jax_enable_x64", True)
    import numpy as np

    import ngp
    from ngp import _residual_cumulants as rc
    from ngp._activations import activation
    from ngp._fourpoint import product_expectations

    act = activation("tanh")
    default = dict(rc.CROSS_ORDERS)
    X0 = np.random.default_rng(0).normal(size=(5, 3))
    rows = []
    for scale, C_W in CASES:
        X = X0 * scale
        net = ngp.ResMLP(3, 64, activation="tanh", C_W=C_W)
        first = float(np.max(C_W * np.sum(X * X, axis=1) / X.shape[1]))
        got, problems = [], []
        record = rc._run_batches

        def recorded(a, dL, dR, C, m):
            if dL + dR == 4:
                problems.append(np.array(C))
            return record(a, dL, dR, C, m)

        for orders in ORDERS:
            rc.CROSS_ORDERS.clear()
            rc.CROSS_ORDERS.update(orders)
            rc._run_batches = recorded if orders == default else record
            t = time.perf_counter()
            p = net.prior(X, warn=False)
            K1, V = np.asarray(p.K1), np.asarray(p.V)
            got.append((orders[4], time.perf_counter() - t, K1, V))
            K = np.asarray(p.K)  # the same at every order
        rc._run_batches = record
        rc.CROSS_ORDERS.clear()
        rc.CROSS_ORDERS.update(default)
        K1_ref, V_ref = got[-1][2], got[-1][3]
        orders_rows = [{"nodes_per_dim_4d": m, "seconds": round(s, 2),
                        "K1_rel_diff": float(np.max(np.abs(K1 - K1_ref)) / np.max(np.abs(K1_ref))),
                        "V_rel_diff": float(np.max(np.abs(V - V_ref)) / np.max(np.abs(V_ref)))}
                       for m, s, K1, V in got[:-1]]
        # part B: Y of sampled four-variable problems, default rule against the four-point engine
        C = np.concatenate(problems)
        lam = np.linalg.eigvalsh(C)[:, -1]
        pick = np.argsort(lam)[:: max(1, C.shape[0] // args.samples)][: args.samples]
        xs, ws = rc._rule(4, default[4])
        Y_rule = rc._smooth_batch(act, 2, 2, C[pick], xs, ws)[:, 0]
        errs = []
        for y, c in zip(Y_rule, C[pick]):
            full = product_expectations(act, c, (1, 1, 1, 1), rtol=1e-12)[0][0]
            eL = product_expectations(act, c[:2, :2], (1, 1), rtol=1e-12)[0][0]
            eR = product_expectations(act, c[2:, 2:], (1, 1), rtol=1e-12)[0][0]
            hL = product_expectations(act, c[:2, :2], (2, 2), rtol=1e-12)[0][0]
            hR = product_expectations(act, c[2:, 2:], (2, 2), rtol=1e-12)[0][0]
            errs.append(abs(y - (full - eL * eR)) / np.sqrt(hL * hR))
        row = {"scale": scale, "C_W": C_W, "largest_first_layer_variance": first,
               "largest_K": float(np.max(np.diag(K))),
               "orders": orders_rows,
               "Y_problems": int(len(pick)), "Y_largest_eigenvalue": float(lam[pick].max()),
               "Y_rel_error_max": float(max(errs)), "Y_rel_error_median": float(np.median(errs))}
        rows.append(row)
        print(f"scale {scale} C_W {C_W}: first-layer variance {first:.2f}; default rule: K1 off by "
              f"{orders_rows[0]['K1_rel_diff']:.2e}, V by {orders_rows[0]['V_rel_diff']:.2e} of their largest entry "
              f"(against 96 nodes/dim); Y of {len(pick)} problems (eigenvalues up to {lam[pick].max():.2f}) off by "
              f"{max(errs):.1e} (median {np.median(errs):.1e}) of the Hoelder scale", flush=True)
    return write_result(args.out, {"machine": machine(), "cases": rows})


if __name__ == "__main__":
    sys.exit(main())
