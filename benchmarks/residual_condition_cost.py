"""Cost of the residual chain's calibrated cross-layer rules in a posterior, next to the fixed isotropic rule.

``ngp.ResMLP(3, 64, activation="tanh")`` conditioned on ``--train`` standard-normal inputs of 3 features (targets
``sin(x_1)`` plus noise, noise variance 0.01) and predicting at ``--test`` more: seconds of ``ngp.condition`` with
the evidence and of ``predict``, for the default calibrated rules and for the fixed isotropic Gauss-Hermite rule
(the chain option ``cross_orders``, 40 nodes per dimension in 4-D; the default before), in the same process, and
the differences of the evidence and of the posterior mean and variance between the two (the fixed rule is not
converged at these variances: ``benchmarks/residual_cross_accuracy.py``). The calibrated run goes first, so it
also pays the compilation of the shared kernels.

Usage: python benchmarks/residual_condition_cost.py [--train 12] [--test 5] [--out NAME]. Writes
benchmarks/results/NAME.json (default residual_condition_cost).
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

from _kernel_setup import machine, write_result  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--train", type=int, default=12)
    ap.add_argument("--test", type=int, default=5)
    ap.add_argument("--out", default="residual_condition_cost")
    args = ap.parse_args()
    import jax

    jax.config.update("jax_enable_x64", True)
    import numpy as np

    import ngp
    from ngp import _residual_cumulants as rc

    rng = np.random.default_rng(0)
    X = rng.normal(size=(args.train + args.test, 3))
    y = np.sin(X[:, :1]) + 0.1 * rng.normal(size=(X.shape[0], 1))
    net = ngp.ResMLP(3, 64, activation="tanh")
    first = float(np.max(np.sum(X * X, axis=1) / X.shape[1]))

    def run(fixed: bool):
        cross = rc._cross_layers
        if fixed:
            rc._cross_layers = lambda act, S_k, earlier, pairs, options: cross(
                act, S_k, earlier, pairs, {**options, "cross_orders": dict(rc.CROSS_ORDERS)})
        try:
            with warnings.catch_warnings(record=True) as said:
                warnings.simplefilter("always")
                t = time.perf_counter()
                cond = ngp.condition(net, X[:args.train], y[:args.train], noise=0.01)
                evidence = float(np.asarray(cond.log_evidence))
                t_cond = time.perf_counter() - t
                t = time.perf_counter()
                post = cond.predict(X[args.train:])
                mean, var = np.asarray(post.mean), np.asarray(post.var)
                t_pred = time.perf_counter() - t
        finally:
            rc._cross_layers = cross
        messages = sorted({str(w.message)[:120] for w in said if issubclass(w.category, ngp.AccuracyWarning)})
        return {"condition_and_evidence_seconds": round(t_cond, 2), "predict_seconds": round(t_pred, 2),
                "log_evidence": evidence, "accuracy_warnings": messages}, mean, var

    calibrated, m_c, v_c = run(False)
    print(f"calibrated: condition + evidence {calibrated['condition_and_evidence_seconds']} s, predict "
          f"{calibrated['predict_seconds']} s", flush=True)
    fixed, m_f, v_f = run(True)
    print(f"fixed: condition + evidence {fixed['condition_and_evidence_seconds']} s, predict "
          f"{fixed['predict_seconds']} s", flush=True)
    diffs = {"log_evidence": abs(calibrated["log_evidence"] - fixed["log_evidence"]),
             "mean_max_abs": float(np.max(np.abs(m_c - m_f))),
             "var_max_rel": float(np.max(np.abs(v_c - v_f) / np.abs(v_c)))}
    print(f"calibrated - fixed: evidence {diffs['log_evidence']:.2e} nats, mean {diffs['mean_max_abs']:.2e}, "
          f"variance {diffs['var_max_rel']:.2e} relative", flush=True)
    return write_result(args.out, {"machine": machine(), "train": args.train, "test": args.test,
                                   "largest_first_layer_variance": first, "calibrated": calibrated,
                                   "fixed": fixed, "difference": diffs})


if __name__ == "__main__":
    sys.exit(main())
