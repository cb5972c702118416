"""The four-point kernel's cost per node (``ngp._fourpoint._tile_kernel``), this tree against an earlier revision.

Usage: python benchmarks/tile_kernel.py [--baseline REV] [--cases D:N:CW:DIM:ACT,...] [--rounds 2]
[--out tile_kernel]. Writes benchmarks/results/<--out>.json.

Two measurements, each in fresh processes that alternate between this tree and ``git archive REV`` (default
7d0e000, stop 95's last commit), so that both see the same machine load:

* the kernel alone: 8192 tiles of 16 x 16 nodes (three directions, three factor rows, random rows and nodes), per
  activation and kernel form (direct, the exponential split and its ratio form, a tabulated or closed-form smoothed
  input) and, in this tree, both forms of its sums (a contraction, or a sum fused with the products:
  ``ngp._fourpoint._FUSED_SUM``), nanoseconds per node (median of 5 calls, warm);
* the work it serves: ``net.prior(X, warn=False).V_packed`` for each case (depth D, N standard Gaussian inputs of
  dimension DIM, width 64, C_W = CW, C_b = 0.1, activation ACT), after a warm-up prior on 6 of the inputs, as in
  ``four_point_cost.py``; and the largest difference of ``V`` from the baseline's, relative to its largest entry.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import _kernel_setup  # noqa: E402  (the results file)

KERNEL = r"""
import inspect, json, time
import jax, jax.numpy as jnp, numpy as np
jax.config.update("jax_enable_x64", True)
import ngp
import ngp._fourpoint as fp
rng = np.random.default_rng(0)
D, T, J, TP, TM = 3, 8192, 4096, fp._TP, fp._TM
XP, PW = jnp.asarray(rng.normal(size=(64, D - 1, TP))), jnp.asarray(rng.random((64, TP)))
XL, WL = jnp.asarray(rng.normal(size=(64, TM))), jnp.asarray(rng.random((64, TM)))
R, beta = jnp.asarray(rng.normal(size=(J, 3, D)) * 0.5), jnp.asarray(rng.normal(size=(J, D)) * 0.3)
sigma, stab = jnp.asarray(rng.random(J) * 0.5), jnp.asarray(rng.random((16384, TM)))
idx = np.stack([rng.integers(0, 64, T), rng.integers(0, 64, T), rng.integers(0, 16384, T), rng.integers(0, J, T)], 1)
idx = jnp.asarray(idx.astype(np.int32))
params = inspect.signature(fp._tile_kernel).parameters
# stop 95's kernel took the factor rows as an array and had one form of its sums
lead = (3,) if "factors" in params else (jnp.ones(3, jnp.int32),)
sums = {"contraction": (False,), "fused sum": (True,)} if "fused_sum" in params else {"contraction": ()}
out = {}
for name in ("tanh", "erf", "gelu", "swish", "sin", "softplus"):
    a = ngp.activation(name)
    forms = {"direct": (None, None), "smoothed": (a.smoothed or fp.TABLE, None)}
    if a.exp_split is not None:
        forms["split"] = (None, a.exp_split)
        if a.exp_ratio is not None:
            forms["ratio"] = (None, (*a.exp_split, *a.exp_ratio))
            forms["ratio+table"] = (fp.TABLE, (*a.exp_split, *a.exp_ratio))
    for form, (smoothed, split) in forms.items():
        for how, fused in sums.items():
            f = lambda: fp._tile_kernel(a.fn, smoothed, split, *lead, *fused, XP, PW, XL, WL, R, beta, sigma, stab, idx)
            f().block_until_ready()
            ts = []
            for _ in range(5):
                t = time.perf_counter()
                f().block_until_ready()
                ts.append(time.perf_counter() - t)
            out[f"{name} {form}, {how}"] = 1e9 * float(np.median(ts)) / (T * TP * TM)
print(json.dumps(out))
"""

PRIOR = r"""
import json, sys, time
import jax
jax.config.update("jax_enable_x64", True)
import numpy as np, ngp
depth, N, C_W, dim = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
act, path = sys.argv[5], sys.argv[6]
X = np.random.default_rng(0).normal(size=(N, dim))
net = ngp.MLP(depth, 64, activation=act, C_W=C_W, C_b=0.1)
net.prior(X[:6], warn=False).V_packed
p = net.prior(X, warn=False)
t = time.perf_counter()
V = np.asarray(p.V_packed)
seconds = time.perf_counter() - t
np.save(path, V)
print(json.dumps({"seconds": seconds}))
"""


def child(code: str, root: str, *args) -> dict:
    r = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, cwd=root,
                       env=dict(os.environ, PYTHONPATH=root))
    if r.returncode != 0:
        raise RuntimeError(r.stderr.strip().splitlines()[-1])
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--baseline", default="7d0e000")
    ap.add_argument("--cases", default="3:24:1:4:erf,3:24:1:4:gelu,3:24:1:4:tanh")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", default="tile_kernel")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        old = os.path.join(tmp, "baseline")
        os.makedirs(old)
        subprocess.run(f"git -C {ROOT} archive {args.baseline} | tar -x -C {old}", shell=True, check=True)
        trees = {"this tree": ROOT, args.baseline: old}
        kernel = {k: [] for k in trees}
        for _ in range(args.rounds):
            for k, root in trees.items():
                kernel[k].append(child(KERNEL, root))
        kern = {k: {f: float(np.median([r[f] for r in runs])) for f in runs[0]} for k, runs in kernel.items()}
        print(f"{'kernel form':>36} " + " ".join(f"{k:>12}" for k in trees) + "  [ns a node]")
        for f in kern["this tree"]:
            print(f"{f:>36} " + " ".join(f"{kern[k].get(f, float('nan')):>12.2f}" for k in trees))
        cases = []
        for case in args.cases.split(","):
            secs = {k: [] for k in trees}
            for r in range(args.rounds):
                for k, root in trees.items():
                    secs[k].append(child(PRIOR, root, *case.split(":"), os.path.join(tmp, f"{k[:4]}.npy"))["seconds"])
            V_new = np.load(os.path.join(tmp, "this.npy"))
            V_old = np.load(os.path.join(tmp, f"{args.baseline[:4]}.npy"))
            diff = float(np.max(np.abs(V_new - V_old)) / np.max(np.abs(V_old)))
            cases.append({"case": case, "seconds": secs, "V_relative_difference": diff})
            print(f"{case:>36} " + " ".join(f"{min(secs[k]):>12.1f}" for k in trees) + f"  [s, best of {args.rounds}]"
                  f"  V differs by {diff:.1e} of its largest entry")
    out = {"machine": _kernel_setup.machine(), "revision": _kernel_setup.ngp_revision(ROOT), "argv": sys.argv[1:],
           "baseline": args.baseline, "date": time.strftime("%Y-%m-%d %H:%M"), "kernel_ns_per_node": kern,
           "kernel_runs": kernel, "cases": cases}
    return _kernel_setup.write_result(args.out, out)


if __name__ == "__main__":
    raise SystemExit(main())
