"""Other targets on the same training inputs: ``Conditioned.with_targets`` against a new ``ngp.condition``.

Task (the ``posterior_scaling.py`` network): tanh MLP depth 3 width 64, 2-D standard-normal inputs, noise 0.1, exact
path, ``N_test`` test points. In one process per size: ``ngp.condition`` on the targets ``sin(1.3 x1) + 0.3 x2``,
its evidence and a prediction (this pays the compilations); then, for each of ``--draws`` other target vectors
(the same plus Gaussian noise of s.d. 0.3), ``with_targets`` + evidence + prediction against a new
``ngp.condition`` + evidence + prediction, alternating, with the largest difference between the two.

Usage: python benchmarks/with_targets.py [--sizes 16,32] [--n-test 20] [--draws 2] [--out NAME].
Writes benchmarks/results/NAME.json (default with_targets).
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


def _answer(cond, XB):
    post = cond.predict(XB)
    return cond.log_evidence, post.mean, post.var


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="16,32", help="training-set sizes")
    ap.add_argument("--n-test", type=int, default=20)
    ap.add_argument("--draws", type=int, default=2)
    ap.add_argument("--out", default="with_targets")
    args = ap.parse_args()

    import jax

    jax.config.update("jax_enable_x64", True)
    import numpy as np

    import ngp

    warnings.simplefilter("ignore")
    rows, load_before = [], os.getloadavg()
    for NA in (int(s) for s in args.sizes.split(",")):
        rng = np.random.default_rng(0)
        XA, XB = rng.normal(size=(NA, 2)), rng.normal(size=(args.n_test, 2))
        YA = np.sin(1.3 * XA[:, :1]) + 0.3 * XA[:, 1:]
        net = ngp.MLP(3, 64, activation="tanh")
        t0 = time.perf_counter()
        cond = ngp.condition(net, XA, YA, noise=0.1)
        _answer(cond, XB)
        first = time.perf_counter() - t0
        for d in range(args.draws):
            Y = YA + 0.3 * rng.normal(size=YA.shape)
            t0 = time.perf_counter()
            reused = _answer(cond.with_targets(Y), XB)
            t1 = time.perf_counter()
            fresh = _answer(ngp.condition(net, XA, Y, noise=0.1), XB)
            t2 = time.perf_counter()
            diff = max(abs(reused[0] - fresh[0]),
                       *(float(np.max(np.abs(a - b))) for a, b in zip(reused[1:], fresh[1:])))
            row = {"N_train": NA, "N_test": args.n_test, "draw": d, "first_s": first, "with_targets_s": t1 - t0,
                   "condition_s": t2 - t1, "max_abs_diff": diff}
            rows.append(row)
            print(f"N_train {NA:3d} draw {d}: with_targets + evidence + predict {t1 - t0:7.3f} s; new condition "
                  f"{t2 - t1:7.2f} s (first, compiling: {first:.2f} s); max |diff| {diff:.1e}", flush=True)
    return write_result(args.out, {"machine": machine(), "load_before": list(load_before),
                                   "load_after": list(os.getloadavg()), "rows": rows})


if __name__ == "__main__":
    sys.exit(main())
