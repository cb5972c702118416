"""Accuracy and honesty of the smooth four-point rule on the covariance blocks of a real prediction.

Captures the blocks that ``ngp._fourpoint.product_expectations`` receives in a 16 x 100 exact prediction
(tanh, depth 3, width 64, the network of benchmarks/posterior_scaling.py), takes up to ``--rows`` of each
multiplicity pattern (seeded), and computes them for ``--activations`` at the default tolerance and at
``rtol = 1e-12`` (the reference). Per activation and pattern: the largest error and the number of blocks
whose error exceeds the tolerance (``1e-9`` times the Hölder scale), the number whose estimate is below an
error above 1% of the tolerance, and the nodes used. Measures whatever ``ngp`` is imported (run it with
``PYTHONPATH=<other checkout>`` for another). Usage: python benchmarks/four_point_honesty.py [--rows 1500]
[--activations tanh,gelu,swish] [--out four_point_honesty.json]. Writes benchmarks/results/<--out>.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import jax

jax.config.update("jax_enable_x64", True)

import numpy as np  # noqa: E402

import ngp  # noqa: E402
from ngp import _fourpoint as fp  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import _kernel_setup  # noqa: E402  (the commit record and the results file)


def capture(rows: int) -> dict:
    rng = np.random.default_rng(0)
    XA, XB = rng.normal(size=(16, 2)), rng.normal(size=(100, 2))
    YA = np.sin(1.3 * XA[:, :1]) + 0.3 * XA[:, 1:]
    net = ngp.MLP(3, 64, activation="tanh")
    saved, original = {}, fp._smooth_joint

    def spy(act, items, **kw):  # every smooth rule's blocks pass here (multiset tables and single patterns alike)
        for C, pattern in items:
            saved.setdefault(tuple(int(p) for p in pattern), []).append(np.asarray(C))
        return original(act, items, **kw)

    fp._smooth_joint = spy
    try:
        np.asarray(ngp.condition(net, XA, YA, noise=0.1, warn=False, method="exact").predict(XB).mean)
    finally:
        fp._smooth_joint = original
    if not saved:
        raise RuntimeError("no four-point blocks captured: the smooth rule's entry point has moved")
    pick = np.random.default_rng(1)
    out = {}
    for pattern, blocks in saved.items():
        C = np.concatenate(blocks)
        out[pattern] = C[np.sort(pick.choice(C.shape[0], min(rows, C.shape[0]), replace=False))]
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1500)
    ap.add_argument("--activations", default="tanh,gelu,swish")
    ap.add_argument("--out", default="four_point_honesty.json")
    args = ap.parse_args()
    blocks = capture(args.rows)
    revision = _kernel_setup.ngp_revision(os.path.dirname(os.path.dirname(os.path.abspath(ngp.__file__))))
    result = {"ngp": ngp.__file__, **revision, "rows": args.rows, "rtol": fp.RTOL, "reference_rtol": 1e-12,
              "results": []}
    print(f"ngp from {ngp.__file__} ({revision})")
    for name in args.activations.split(","):
        act = ngp.activation(name)
        for pattern, C in sorted(blocks.items()):
            st = {}
            t0 = time.perf_counter()
            val, est = fp.product_expectations(act, C, pattern, stats=st)
            t = time.perf_counter() - t0
            ref, _ = fp.product_expectations(act, C, pattern, rtol=1e-12)
            tol = fp.RTOL * fp._holder_scale(act, C, pattern)
            err = np.abs(val - ref) / tol
            row = {"activation": name, "pattern": list(pattern), "blocks": int(C.shape[0]),
                   "max_error_over_tol": float(err.max()), "blocks_over_tol": int(np.sum(err > 1)),
                   "estimate_below_error": int(np.sum((est / tol < err) & (err > 1e-2))),
                   "max_estimate_over_tol": float(np.max(est / tol)), "nodes": float(st["nodes"].sum()), "time_s": t}
            result["results"].append(row)
            print(f"{name:6s} {str(pattern):14s} max err/tol {row['max_error_over_tol']:8.3g}  over tol "
                  f"{row['blocks_over_tol']:3d}  est < err {row['estimate_below_error']:3d}  nodes {row['nodes']:.4e}")
    _kernel_setup.write_json(os.path.join(HERE, "results", args.out), result)
    print(f"written benchmarks/results/{args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
