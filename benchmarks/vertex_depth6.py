"""Issue 10 goal "V for N = 64 inputs, depth 6, tanh, at the default accuracy: under 60 s and 4 GB", measured.

Usage: python benchmarks/vertex_depth6.py [--sizes 16,24,32] [--rtol R] [--timeout 3600] [--out vertex_depth6].
Writes benchmarks/results/<--out>.json.

For each N of ``--sizes``, a fresh process times ``ngp.MLP(6, 64, activation="tanh", C_W=1.0,
C_b=0.1).prior(X, warn=False).V_packed`` (the output layer's vertex over all pairs, every layer's
four-point table at the default ``four_point_rtol``, or at ``--rtol``) on N standard Gaussian inputs of dimension 4
(the network and inputs of ``vertex_n64_projection.py``), compilation included, with its peak resident
memory, the largest error estimate of ``V`` relative to ``max |V|``, and the number of multisets per
layer. The time per multiset of the largest size, times the multisets at ``N = 64`` (766,480 per layer),
is printed as a projection next to the goal; a size that runs past ``--timeout`` is recorded as such.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from math import comb

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import _kernel_setup  # noqa: E402  (the results file)

CHILD = r"""
import json, resource, sys, time
import jax
jax.config.update("jax_enable_x64", True)
import numpy as np, ngp
N = int(sys.argv[1])
opts = {"four_point_rtol": float(sys.argv[2])} if len(sys.argv) > 2 else {}
X = np.random.default_rng(0).normal(size=(N, 4))
net = ngp.MLP(6, 64, activation="tanh", C_W=1.0, C_b=0.1)
t0 = time.perf_counter()
p = net.prior(X, warn=False, **opts)
Vp = np.asarray(p.V_packed)
t1 = time.perf_counter()
err = np.nan_to_num(np.asarray(p.layers[-1].V_error), nan=np.inf)
print(json.dumps({"N": N, "seconds": t1 - t0,
                  "peak_rss_GiB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2,
                  "max_abs_V": float(np.max(np.abs(Vp))),
                  "max_V_error_over_max_V": float(np.max(err) / np.max(np.abs(Vp))),
                  "K_diag_max_layer1": float(np.max(np.diag(np.asarray(p.layers[0].K)))),
                  "module": ngp.__file__}))
"""


def run(N: int, timeout: float, rtol: float | None = None) -> dict:
    t = time.perf_counter()
    try:
        argv = [sys.executable, "-c", CHILD, str(N)] + ([str(rtol)] if rtol else [])
        r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                           cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT))
    except subprocess.TimeoutExpired:
        return {"N": N, "timed_out_after_s": timeout}
    if r.returncode != 0:
        return {"N": N, "error": (r.stderr.strip().splitlines() or ["failed"])[-1]}
    res = json.loads(r.stdout.strip().splitlines()[-1])
    res["process_s"] = time.perf_counter() - t
    return res


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="16,24,32")
    ap.add_argument("--timeout", type=float, default=3600.0)
    ap.add_argument("--rtol", type=float, default=None, help="four_point_rtol (default: the library's)")
    ap.add_argument("--out", default="vertex_depth6")
    args = ap.parse_args()
    load = os.getloadavg()
    rows = []
    print(f"{'N':>3} {'multisets/layer':>15} {'time [s]':>9} {'per multiset [ms]':>17} {'peak [GiB]':>10} "
          f"{'max err/max|V|':>14}")
    for N in (int(s) for s in args.sizes.split(",")):
        r = run(N, args.timeout, args.rtol)
        r["multisets_per_layer"] = comb(N + 3, 4)
        rows.append(r)
        if "seconds" not in r:
            print(f"{N:>3} {r['multisets_per_layer']:>15} {r}")
            continue
        r["ms_per_multiset_layer"] = 1e3 * r["seconds"] / (5 * r["multisets_per_layer"])
        print(f"{N:>3} {r['multisets_per_layer']:>15} {r['seconds']:>9.1f} {r['ms_per_multiset_layer']:>17.3f} "
              f"{r['peak_rss_GiB']:>10.2f} {r['max_V_error_over_max_V']:>14.1e}")
    done = [r for r in rows if "seconds" in r]
    out = {"machine": platform.platform(), "cpus": os.cpu_count(), "load_before": load, "argv": sys.argv[1:],
           "date": time.strftime("%Y-%m-%d %H:%M"), "goal_s": 60.0, "four_point_rtol": args.rtol, "rows": rows}
    if done:
        last = max(done, key=lambda r: r["N"])
        out["projected_N64_s"] = last["seconds"] * comb(67, 4) / last["multisets_per_layer"]
        print(f"projected at N = 64 from N = {last['N']} (time per multiset held): {out['projected_N64_s']:.0f} s "
              f"(goal 60 s)")
    return _kernel_setup.write_result(args.out, out)


if __name__ == "__main__":
    raise SystemExit(main())
