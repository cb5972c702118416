"""Wall time of small tanh priors (depth 3, N in {8, 16}): this checkout against another checkout (main).

Usage: python benchmarks/small_prior_speed.py [--other /work/main] [--repeat 1] [--out small_prior_speed.json].
Each measurement is a fresh Python process (import, compilation and calibration included, as a user
sees it): ``ngp.MLP(...).prior(X).V``, then the same prior again in that process (warm). The two
checkouts alternate in the same run, so machine load affects both alike. Writes
benchmarks/results/small_prior_speed.json.
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

CHILD = r"""
import time, json, sys
t0 = time.perf_counter()
import jax
jax.config.update("jax_enable_x64", True)
import numpy as np
import ngp
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


def run(path, N, depth, act):
    env = dict(os.environ, PYTHONPATH=path)
    t = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", CHILD, str(N), str(depth), act], env=env, cwd=path,
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
    ap.add_argument("--out", default="small_prior_speed.json", help="results file name in benchmarks/results")
    args = ap.parse_args()
    rows = []
    for N in [int(s) for s in args.sizes.split(",")]:
        for rep in range(args.repeat):
            for name, path in (("this", ROOT), ("other", args.other)):
                r = run(path, N, args.depth, args.activation)
                r.update(checkout=name, path=path, N=N, depth=args.depth, activation=args.activation, rep=rep)
                rows.append(r)
                print(f"N={N:3d} {name:5s} cold {r['cold_s']:7.2f} s  warm {r['warm_s']:7.2f} s  "
                      f"process {r['process_s']:7.2f} s  sum(V) {r['V_sum']:.12e}", flush=True)
    os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
    out = {"rows": rows, "machine": platform.node(), "cpus": os.cpu_count(),
           "load": os.getloadavg(), "argv": sys.argv[1:]}
    with open(os.path.join(HERE, "results", args.out), "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
