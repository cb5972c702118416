"""Seconds per node behind the four-point CostWarning (``ngp._fourpoint.NODE_SECONDS``), measured.

Usage: python benchmarks/four_point_cost.py [--cases D:N:CW:DIM[:ACT],...] [--out four_point_cost]. Writes
benchmarks/results/<--out>.json.

Each case (depth D, N standard Gaussian inputs of dimension DIM, activation ACT (default tanh), width 64, C_W = CW,
C_b = 0.1) times
``net.prior(X, warn=False).V_packed`` in a fresh process after a warm-up prior on 6 of the inputs (the kernels'
compilations mostly paid), and sums over the hidden layers the estimate behind the warning: the multisets times
``ngp._fourpoint.rule_nodes`` (the first round's rule nodes, a sample of 512 rows). Their ratio, seconds per estimated
node, is what ``NODE_SECONDS`` (5 ns) and ``SMOOTHED_NODE_SECONDS`` (15 ns, erf and gelu) stand for; the script also
prints the warning's estimate beside the time measured.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import _kernel_setup  # noqa: E402  (the results file)

CHILD = r"""
import json, sys, time
import jax
jax.config.update("jax_enable_x64", True)
import numpy as np, ngp
from ngp._finite import multisets
from ngp._fourpoint import NODE_SECONDS, SMOOTHED_NODE_SECONDS, rule_nodes
depth, N, C_W, dim = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
act = sys.argv[5] if len(sys.argv) > 5 else "tanh"
X = np.random.default_rng(0).normal(size=(N, dim))
net = ngp.MLP(depth, 64, activation=act, C_W=C_W, C_b=0.1)
net.prior(X[:6], warn=False).V_packed
p = net.prior(X, warn=False)
t = time.perf_counter()
np.asarray(p.V_packed)
seconds = time.perf_counter() - t
ms = multisets(N)
layers = [rule_nodes(net.activation, np.asarray(layer.K), ms) for layer in p.layers[:-1]]
nodes = sum(n for n, _ in layers) * ms.shape[0]
rate = NODE_SECONDS if net.activation.smoothed is None else SMOOTHED_NODE_SECONDS
print(json.dumps({"activation": act, "depth": depth, "N": N, "C_W": C_W, "dim": dim, "seconds": seconds,
                  "multisets_per_layer": ms.shape[0], "first_round_nodes_per_multiset": [n for n, _ in layers],
                  "at_variances_up_to_1": [r for _, r in layers], "estimated_nodes": nodes,
                  "ns_per_estimated_node": 1e9 * seconds / nodes, "warning_estimate_s": nodes * rate,
                  "largest_variance_layer1": float(np.max(np.diag(np.asarray(p.layers[0].K))))}))
"""


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cases", default="3:16:1:2,3:16:10:2,3:32:1:4,4:24:3:4,3:24:10:2")
    ap.add_argument("--out", default="four_point_cost")
    args = ap.parse_args()
    rows = []
    print(f"{'act':>6} {'depth':>5} {'N':>3} {'C_W':>4} {'dim':>3} {'time [s]':>9} {'estimate [s]':>12} {'ns/node':>8}")
    for case in args.cases.split(","):
        r = subprocess.run([sys.executable, "-c", CHILD, *case.split(":")], capture_output=True, text=True,
                           cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT))
        if r.returncode != 0:
            rows.append({"case": case, "error": (r.stderr.strip().splitlines() or ["failed"])[-1]})
            print(case, rows[-1]["error"])
            continue
        res = json.loads(r.stdout.strip().splitlines()[-1])
        rows.append(res)
        print(f"{res['activation']:>6} {res['depth']:>5} {res['N']:>3} {res['C_W']:>4g} {res['dim']:>3} "
              f"{res['seconds']:>9.1f} {res['warning_estimate_s']:>12.1f} {res['ns_per_estimated_node']:>8.2f}")
    out = {"machine": _kernel_setup.machine(), "revision": _kernel_setup.ngp_revision(ROOT), "argv": sys.argv[1:],
           "date": time.strftime("%Y-%m-%d %H:%M"), "rows": rows}
    return _kernel_setup.write_result(args.out, out)


if __name__ == "__main__":
    raise SystemExit(main())
