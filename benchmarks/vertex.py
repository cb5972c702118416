"""Time and peak memory of the finite-width cumulants V and K1 (issue: finite-width prior).

Each configuration runs in a fresh subprocess so that its peak resident memory is its own.
Usage: python benchmarks/vertex.py [--quick]. Writes benchmarks/results/vertex.json.

Also measures the Monte Carlo alternative: the time per sampled network (exact conditional
sampler) and hence the time Monte Carlo needs to estimate V to a relative accuracy delta
(relative standard error of n Cov(G_hat) is sqrt(2/S), THEORY 10).
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

CHILD = r"""
import json, resource, sys, time
import jax
jax.config.update("jax_enable_x64", True)
import numpy as np, ngp
N, depth, act, order = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
X = np.random.default_rng(0).normal(size=(N, 4))
cw = {"tanh": 1.0, "relu": 2.0}[act]
net = ngp.MLP(depth, 64, activation=act, C_W=cw, C_b=0.1)
t0 = time.perf_counter()
p = net.prior(X, four_point_order=order, warn=False)
Vp = p.V_packed; K1 = p.K1
t1 = time.perf_counter()
# second call: compiled kernels cached, pure compute
p = net.prior(X, four_point_order=order, warn=False); Vp = p.V_packed
t2 = time.perf_counter()
print(json.dumps({"N": N, "depth": depth, "activation": act, "four_point_order": order,
                  "first_call_s": t1 - t0, "compute_s": t2 - t1,
                  "peak_rss_GiB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2,
                  "max_abs_V": float(np.max(np.abs(Vp)))}))
"""

MC_CHILD = r"""
import json, sys, time
import jax
jax.config.update("jax_enable_x64", True)
import numpy as np, ngp
N, depth, S = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
X = np.random.default_rng(0).normal(size=(N, 4))
net = ngp.MLP(depth, 64, activation="tanh", C_W=1.0, C_b=0.1)
ngp.sample_networks(net, X, 2000, method="conditional", batch_size=2000)
t0 = time.perf_counter()
ngp.sample_networks(net, X, S, method="conditional", batch_size=2000)
dt = time.perf_counter() - t0
print(json.dumps({"N": N, "depth": depth, "networks": S, "seconds": dt, "per_network_s": dt / S}))
"""


def _run(code, *args, timeout=3600):
    r = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        return {"args": list(map(str, args)), "error": r.stderr.strip().splitlines()[-1] if r.stderr else "failed"}
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--gpu", action="store_true", help="larger orders, for a machine with an accelerator")
    args = ap.parse_args()
    if args.gpu:
        configs = [(16, 6, "tanh", 40), (32, 6, "tanh", 24), (64, 6, "tanh", 12), (64, 6, "relu", 12),
                   (64, 10, "tanh", 12), (64, 6, "tanh", 20)]
    elif args.quick:
        configs = [(8, 2, "tanh", 12), (8, 4, "relu", 12), (16, 4, "tanh", 12)]
    else:
        configs = [(n, d, a, 12) for a in ("tanh", "relu") for n in (16, 32) for d in (2, 6, 10)]
        configs += [(64, 6, "tanh", 8), (64, 6, "relu", 8)]
    rows = []
    print(f"{'N':>3} {'depth':>5} {'act':>5} {'order':>5} {'first [s]':>10} {'compute [s]':>11} {'peak [GiB]':>10}")
    for cfg in configs:
        r = _run(CHILD, *cfg)
        rows.append(r)
        if "error" in r:
            print(cfg, "ERROR", r["error"])
            continue
        print(f"{r['N']:>3} {r['depth']:>5} {r['activation']:>5} {r['four_point_order']:>5} "
              f"{r['first_call_s']:>10.2f} {r['compute_s']:>11.2f} {r['peak_rss_GiB']:>10.2f}")
    mc = _run(MC_CHILD, 16, 6, 20_000 if args.quick else 100_000)
    import jax

    backend = jax.default_backend()
    print(f"\nMonte Carlo (exact conditional sampler, N=16, depth 6, width 64): {mc.get('per_network_s', float('nan')):.2e} s per network")
    print("networks needed for relative accuracy delta on V: S = 2/delta^2  (delta = 1e-3 -> 2e6 networks)")
    if "per_network_s" in mc:
        t_mc = 2 / 1e-3**2 * mc["per_network_s"]
        ngp_row = next((r for r in rows if r.get("N") == 16 and r.get("depth") in (4, 6) and r.get("activation") == "tanh"), None)
        if ngp_row and "compute_s" in ngp_row:
            print(f"time for MC to reach 1e-3: {t_mc:.0f} s vs ngp {ngp_row['compute_s']:.2f} s "
                  f"(order {ngp_row['four_point_order']}, accuracy ~1e-5 or better): ratio {t_mc / ngp_row['compute_s']:.0f}x")
            mc["ratio_vs_ngp_at_1e-3"] = t_mc / ngp_row["compute_s"]
    out = {"machine": platform.platform(), "cpus": os.cpu_count(), "jax_backend": backend, "rows": rows, "monte_carlo": mc,
           "date": time.strftime("%Y-%m-%d")}
    os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
    name = "vertex_gpu.json" if args.gpu else ("vertex_quick.json" if args.quick else "vertex.json")
    with open(os.path.join(HERE, "results", name), "w") as fh:
        json.dump(out, fh, indent=2)
    print(f"\nwritten benchmarks/results/{name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
