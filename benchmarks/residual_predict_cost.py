"""Cost of a residual network's finite-width prediction: the chain on the entries the posterior reads, against the
chain on every pair of training and test inputs (the code before; a checkout given by ``--base``).

``ngp.ResMLP(3, 64, activation="tanh")`` conditioned on ``N_train`` standard-normal inputs of 3 features (targets
``sin(x_1)`` plus noise, noise variance 0.01) and predicting mean and variances at ``N_test`` more. Each cell runs in
a fresh process per checkout: seconds of ``ngp.condition`` with the evidence and of ``predict``, the number of
cross-layer expectations ``predict`` integrates (calls of the calibrated rule, counted by wrapping it), and the
largest differences of evidence, mean and variance between the checkouts. Cells the base checkout would not
are not in ``--base-cells`` run on the current checkout only (the base's joint chain grows as ``(N_train +
N_test)^4``).

Also (``--k1``): seconds of ``net.prior(X).K1`` alone on ``N`` inputs, which now runs the chain on each pair's block
only, and its largest difference between the checkouts.

Usage: python benchmarks/residual_predict_cost.py [--base PATH] [--cells 8x5,8x10,12x5,8x40,12x40]
[--base-cells 8x5,8x10,12x5] [--k1 16] [--out NAME]. Writes benchmarks/results/NAME.json (default
residual_predict_cost).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

from _kernel_setup import machine, write_result  # noqa: E402

CHILD = r"""
import json, sys, time, warnings
sys.path.insert(0, sys.argv[4])
import jax
jax.config.update("jax_enable_x64", True)
import numpy as np
import ngp
from ngp import _residual_cumulants as rc
NA, NB = int(sys.argv[1]), int(sys.argv[2])
rng = np.random.default_rng(0)
X = rng.normal(size=(NA + NB, 3))
y = np.sin(X[:, :1]) + 0.1 * rng.normal(size=(X.shape[0], 1))
net = ngp.ResMLP(3, 64, activation="tanh")
warnings.simplefilter("ignore")
t = time.perf_counter()
cond = ngp.condition(net, X[:NA], y[:NA], noise=0.01)
evidence = float(np.asarray(cond.log_evidence))
t_cond = time.perf_counter() - t
count = [0]
inner = rc._smooth_calibrated
def counted(act, dL, dR, C, rtol, **kw):
    count[0] += C.shape[0]
    return inner(act, dL, dR, C, rtol, **kw)
rc._smooth_calibrated = counted
t = time.perf_counter()
post = cond.predict(X[NA:])
mean, var = np.asarray(post.mean), np.asarray(post.var)
t_pred = time.perf_counter() - t
np.savez(sys.argv[3], mean=mean, var=var, evidence=evidence)
print(json.dumps({"condition_and_evidence_seconds": round(t_cond, 2), "predict_seconds": round(t_pred, 2),
                  "predict_expectations": count[0], "ngp": ngp.__file__}))
"""


#: ``net.prior(X).K1`` alone on ``N`` inputs (argv: N, output file, checkout).
CHILD_K1 = r"""
import json, sys, time, warnings
sys.path.insert(0, sys.argv[3])
import jax
jax.config.update("jax_enable_x64", True)
import numpy as np
import ngp
N = int(sys.argv[1])
X = np.random.default_rng(0).normal(size=(N, 3))
warnings.simplefilter("ignore")
t = time.perf_counter()
K1 = np.asarray(ngp.ResMLP(3, 64, activation="tanh").prior(X).K1)
seconds = time.perf_counter() - t
np.savez(sys.argv[2], K1=K1)
print(json.dumps({"prior_K1_seconds": round(seconds, 2), "ngp": ngp.__file__}))
"""


def _run(root: str, NA: int, NB: int | None, tag: str) -> tuple[dict, dict]:
    """One child process on the checkout ``root``: the prediction cell ``NA x NB``, or ``prior(X).K1`` on ``NA``
    inputs (``NB`` None)."""
    import numpy as np

    out = os.path.join("/tmp", f"residual_predict_cost_{os.getpid()}_{tag}_{NA}x{NB}.npz")
    argv = [CHILD, str(NA), str(NB), out, root] if NB is not None else [CHILD_K1, str(NA), out, root]
    r = subprocess.run([sys.executable, "-c", *argv], capture_output=True, text=True,
                       env=dict(os.environ, PYTHONPATH=root))
    if r.returncode:
        raise RuntimeError(r.stderr[-2000:])
    row = json.loads(r.stdout.strip().splitlines()[-1])
    if not row.pop("ngp").startswith(os.path.join(os.path.abspath(root), "ngp")):
        raise RuntimeError(f"the child did not import ngp from {root}")
    with np.load(out) as f:
        arrays = {k: f[k] for k in f.files}
    os.remove(out)
    return row, arrays


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", default=None, help="checkout of the code before (e.g. a git worktree)")
    ap.add_argument("--cells", default="8x5,8x10,12x5,8x40,12x40")
    ap.add_argument("--base-cells", default="8x5,8x10,12x5")
    ap.add_argument("--k1", default="16", help="input counts of the prior(X).K1 cells (both checkouts with --base)")
    ap.add_argument("--out", default="residual_predict_cost")
    args = ap.parse_args()
    import numpy as np

    k1_rows = []
    for N in [int(v) for v in args.k1.split(",") if v]:
        row = {"inputs": N}
        row["current"], cur = _run(ROOT, N, None, "current")
        if args.base:
            row["base"], old = _run(args.base, N, None, "base")
            row["K1_max_abs_difference"] = float(np.max(np.abs(cur["K1"] - old["K1"])))
            row["speedup"] = round(row["base"]["prior_K1_seconds"] / row["current"]["prior_K1_seconds"], 2)
        print(f"prior(X).K1, {N} inputs: {row}", flush=True)
        k1_rows.append(row)

    cells = [tuple(int(v) for v in c.split("x")) for c in args.cells.split(",") if c]
    base_cells = {tuple(int(v) for v in c.split("x")) for c in args.base_cells.split(",") if c} if args.base else set()
    rows = []
    for NA, NB in cells:
        row = {"train": NA, "test": NB}
        row["current"], cur = _run(ROOT, NA, NB, "current")
        print(f"{NA} x {NB} current: {row['current']}", flush=True)
        if (NA, NB) in base_cells:
            row["base"], old = _run(args.base, NA, NB, "base")
            row["difference"] = {"log_evidence": float(abs(cur["evidence"] - old["evidence"])),
                                 "mean_max_abs": float(np.max(np.abs(cur["mean"] - old["mean"]))),
                                 "var_max_rel": float(np.max(np.abs(cur["var"] - old["var"]) / np.abs(old["var"])))}
            row["predict_speedup"] = round(row["base"]["predict_seconds"] / row["current"]["predict_seconds"], 2)
            print(f"{NA} x {NB} base: {row['base']}; speedup {row['predict_speedup']}x; {row['difference']}",
                  flush=True)
        rows.append(row)
    return write_result(args.out, {"machine": machine(), "base": args.base, "rows": rows, "prior_K1": k1_rows})


if __name__ == "__main__":
    sys.exit(main())
