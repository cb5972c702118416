"""Wall time of small tanh priors (depth 3, N in {8, 16}): this checkout against another checkout (main).

Usage: python benchmarks/small_prior_speed.py [--other /work/main] [--repeat 1] [--task prior|predict|posterior3|sizes]
[--n-tests 5,5,9,13,20,33,33,50] [--out small_prior_speed.json]. Each measurement is a fresh Python process
(import, compilation and
calibration included, as a user sees it). ``--task prior``: ``ngp.MLP(...).prior(X).V``, then the same
prior again in that process (warm). ``--task predict``: the exact posterior of
benchmarks/posterior_scaling.py (tanh depth 3 width 64, N training points from ``--sizes``, ``--n-test``
test points): ``ngp.condition(..., method="exact").predict(X_test)`` (cold), then the test points in
reverse order (warm: the training work and compilations reused, the test components recomputed). ``--task
posterior3``: ``ngp.posterior`` on the 3-training-point task of benchmarks/posterior.py (cold: the first
call; warm: the median of 20 calls after 3 more). ``--task sizes``: the exact conditioning of ``--task predict``
on N training points, then one ``predict`` per count of ``--n-tests``, each on new test inputs (a user trying test
sets of several sizes): the seconds and XLA compilations of each call (``cold_s`` the condition and the first
prediction, ``warm_s`` the later ones). The two checkouts alternate in the same run, so
machine load affects both alike. Writes benchmarks/results/<--out>.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

#: Start of every child program: the import and its time (``t0``), float64.
PRELUDE = r"""
import time, json, sys
t0 = time.perf_counter()
import jax
jax.config.update("jax_enable_x64", True)
import numpy as np
import ngp
"""

CHILD = PRELUDE + r"""
N, depth, act = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
X = np.random.default_rng(0).normal(size=(N, 3))
net = ngp.MLP(depth, 32, activation=act, C_W=1.5, C_b=0.1)
t1 = time.perf_counter()
V = net.prior(X).V
t2 = time.perf_counter()
V2 = ngp.MLP(depth, 32, activation=act, C_W=1.4, C_b=0.1).prior(X).V
t3 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "cold_s": t2 - t1, "warm_s": t3 - t2, "V_sum": float(np.sum(V)),
                  "module": ngp.__file__}))
"""

PREDICT = PRELUDE + r"""
NA, depth, act, NB = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
rng = np.random.default_rng(0)
XA, XB = rng.normal(size=(NA, 2)), rng.normal(size=(NB, 2))
Y = np.sin(1.3 * XA[:, :1]) + 0.3 * XA[:, 1:]
net = ngp.MLP(depth, 64, activation=act)
t1 = time.perf_counter()
c = ngp.condition(net, XA, Y, noise=0.1, warn=False, method="exact")
p = c.predict(XB)
m = np.asarray(p.mean)
t2 = time.perf_counter()
p = c.predict(XB[::-1])
m2, v2 = np.asarray(p.mean), np.asarray(p.var)
t3 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "cold_s": t2 - t1, "warm_s": t3 - t2, "mean_sum": float(m2.sum()),
                  "var_sum": float(v2.sum()), "module": ngp.__file__}))
"""

POSTERIOR3 = PRELUDE + r"""
rng = np.random.default_rng(2024)  # the task of benchmarks/posterior.py
XA, XB, Y = rng.normal(size=(3, 2)), rng.normal(size=(1, 2)), 0.5 * rng.normal(size=(3, 2))
net = ngp.MLP(3, 32, activation="tanh", C_W=1.0, C_b=0.0, out_dim=2)
f = lambda: ngp.posterior(net, XA, Y, XB, noise=0.1)
t1 = time.perf_counter()
p = f()
t2 = time.perf_counter()
for _ in range(3):
    f()
ts = []
for _ in range(20):
    s = time.perf_counter()
    p = f()
    ts.append(time.perf_counter() - s)
print(json.dumps({"import_s": t1 - t0, "cold_s": t2 - t1, "warm_s": float(np.median(ts)),
                  "mean_sum": float(np.sum(p.mean)), "var_sum": float(np.sum(p.var)), "module": ngp.__file__}))
"""

SIZES = PRELUDE + r"""
from jax._src import monitoring
compiles = []
monitoring.register_event_duration_secs_listener(
    lambda event, secs, **kw: compiles.append(secs) if event.endswith("backend_compile_duration") else None)
NA, depth, act, tests = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], [int(s) for s in sys.argv[4].split(",")]
rng = np.random.default_rng(0)
XA = rng.normal(size=(NA, 2))
Y = np.sin(1.3 * XA[:, :1]) + 0.3 * XA[:, 1:]
net = ngp.MLP(depth, 64, activation=act)
t1 = time.perf_counter()
c = ngp.condition(net, XA, Y, noise=0.1, warn=False, method="exact")
t2 = time.perf_counter()
calls, sums = [], []
for nb in tests:
    XB = rng.normal(size=(nb, 2))
    del compiles[:]
    s = time.perf_counter()
    p = c.predict(XB)
    sums.append(float(np.sum(p.mean)) + float(np.sum(p.var)))
    calls.append({"n_test": nb, "seconds": time.perf_counter() - s, "compilations": len(compiles),
                  "compile_s": float(sum(compiles))})
print(json.dumps({"import_s": t1 - t0, "cold_s": t2 - t1 + calls[0]["seconds"],
                  "warm_s": sum(x["seconds"] for x in calls[1:]), "calls": calls, "mean_sum": sum(sums),
                  "var_sum": 0.0, "module": ngp.__file__}))
"""


def run(path, N, depth, act, task="prior", n_test=10, n_tests="5,5,9,13,20,33,33,50"):
    env = dict(os.environ, PYTHONPATH=path)
    t = time.perf_counter()
    code, extra = {"prior": (CHILD, []), "predict": (PREDICT, [str(n_test)]),
                   "posterior3": (POSTERIOR3, []), "sizes": (SIZES, [n_tests])}[task]
    out = subprocess.run([sys.executable, "-c", code, str(N), str(depth), act, *extra], env=env, cwd=path,
                         capture_output=True, text=True, check=True)
    res = json.loads(out.stdout.strip().splitlines()[-1])
    res["process_s"] = time.perf_counter() - t
    return res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--other", default="/work/main")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--sizes", default="8,16")
    ap.add_argument("--depth", type=int, default=3)
    ap.add_argument("--activation", default="tanh")
    ap.add_argument("--task", choices=("prior", "predict", "posterior3", "sizes"), default="prior")
    ap.add_argument("--n-test", type=int, default=10, help="test points of --task predict")
    ap.add_argument("--n-tests", default="5,5,9,13,20,33,33,50", help="test-point counts of --task sizes")
    ap.add_argument("--out", default="small_prior_speed.json", help="results file name in benchmarks/results")
    args = ap.parse_args()
    rows = []
    for N in ([3] if args.task == "posterior3" else [int(s) for s in args.sizes.split(",")]):
        for rep in range(args.repeat):
            for name, path in (("this", ROOT), ("other", args.other)):
                r = run(path, N, args.depth, args.activation, args.task, args.n_test, args.n_tests)
                r.update(checkout=name, path=path, N=N, depth=args.depth, activation=args.activation, rep=rep,
                         task=args.task)
                rows.append(r)
                sums = (f"sum(V) {r['V_sum']:.12e}" if args.task == "prior"
                        else f"sum(mean) {r['mean_sum']:.12e} sum(var) {r['var_sum']:.12e}")
                print(f"N={N:3d} {name:5s} cold {r['cold_s']:7.2f} s  warm {r['warm_s']:7.2f} s  "
                      f"process {r['process_s']:7.2f} s  {sums}", flush=True)
                if args.task == "sizes":
                    print("      " + "  ".join(f"{c['n_test']}: {c['seconds']:.2f} s ({c['compilations']})"
                                               for c in r["calls"]), flush=True)
    os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
    out = {"rows": rows, "machine": platform.node(), "cpus": os.cpu_count(),
           "load": os.getloadavg(), "argv": sys.argv[1:]}
    with open(os.path.join(HERE, "results", args.out), "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
