"""Residual chains at large pre-activation variances (unstandardised inputs): the capped cross-layer rules.

Usage: python benchmarks/residual_large_variance.py [--other PATH] [--variances 100,300,1000,3000]
[--memory-gb 8] [--posterior] [--out residual_large_variance]

1. For each variance ``v``: choosing the orders of one 4-D cross-layer problem with eigenvalues ``v * (1, 0.25,
   0.09, 0.01)`` (``ngp._residual_cumulants._calibrated_orders``, which lowers the calibrated rule to at most
   ``CROSS_MAX_NODES`` nodes), in a fresh process limited to ``--memory-gb`` of address space: seconds, peak
   resident memory, the orders and the rule's size, or the error. With ``--other PATH``, the same for the checkout
   at ``PATH`` (e.g. a ``git worktree`` of the previous commit), alternating.
2. ``--posterior``: ``ngp.posterior`` of ``ngp.ResMLP(3, 16, activation="tanh")`` on 4 training and 2 test inputs
   of 3 standard-normal features times 30 (first-layer variances up to ~3000), this checkout only: seconds, and
   when each ``ngp.CostWarning`` came.

Writes benchmarks/results/<--out>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

from _kernel_setup import machine, write_result  # noqa: E402

ORDERS = r"""
import json, resource, sys, time
import jax
jax.config.update("jax_enable_x64", True)
import numpy as np
import ngp
from ngp import _residual_cumulants as rc
v = float(sys.argv[1])
scales = np.sqrt(v) * np.array([[1.0, 0.5, 0.3, 0.1]])
act = ngp.activation("tanh")
t = time.perf_counter()
try:
    orders, lowered = rc._calibrated_orders(act, scales, rc.RTOL)
    out = {"orders": [int(m) for m in orders[0]],
           "nodes": rc.tensor_rule_size(tuple(orders[0]), rc._CROSS_CUTOFF * rc.RTOL)}
except MemoryError as e:
    out = {"error": f"MemoryError: {e}"}
out.update(seconds=time.perf_counter() - t, peak_rss_gb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6,
           uncapped=[int(m) for m in rc.calibrated_orders(act, scales, rc.RTOL)[0]], module=ngp.__file__)
print(json.dumps(out))
"""

POSTERIOR = r"""
import json, time, warnings
import jax
jax.config.update("jax_enable_x64", True)
import numpy as np
import ngp
rng = np.random.default_rng(0)
X, Y, Xt = 30 * rng.normal(size=(4, 3)), rng.normal(size=(4, 1)), 30 * rng.normal(size=(2, 3))
net = ngp.ResMLP(3, 16, activation="tanh")
t0 = time.perf_counter()
cost = []
def show(message, category, *args, **kwargs):
    if issubclass(category, ngp.CostWarning):
        cost.append({"after_s": time.perf_counter() - t0, "message": str(message)})
warnings.showwarning = show
p = ngp.posterior(net, X, Y, Xt, noise=0.1)
print(json.dumps({"seconds": time.perf_counter() - t0, "cost_warnings": cost, "mean": np.asarray(p.mean).tolist(),
                  "mean_error": np.asarray(p.mean_error).tolist(), "first_layer_variance_max":
                  float(np.max(np.sum(np.concatenate([X, Xt]) ** 2, axis=1) / 3))}))
"""


def _child(code: str, args: list, root: str, memory_gb: float | None = None) -> dict:
    def limit():  # the child's address space (a MemoryError instead of the machine's out-of-memory killer)
        if memory_gb:
            resource.setrlimit(resource.RLIMIT_AS, (int(memory_gb * 2**30),) * 2)

    r = subprocess.run([sys.executable, "-c", code] + [str(a) for a in args], capture_output=True, text=True,
                       env=dict(os.environ, PYTHONPATH=root), preexec_fn=limit, cwd=root)
    lines = [ln for ln in r.stdout.strip().splitlines() if ln.startswith("{")]
    if not lines:
        return {"error": (r.stderr.strip().splitlines() or ["no output"])[-1], "returncode": r.returncode}
    return json.loads(lines[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--other", default=None)
    ap.add_argument("--variances", default="100,300,1000,3000")
    ap.add_argument("--memory-gb", type=float, default=8.0)
    ap.add_argument("--posterior", action="store_true")
    ap.add_argument("--out", default="residual_large_variance")
    a = ap.parse_args()
    roots = {"this": ROOT} | ({"other": os.path.abspath(a.other)} if a.other else {})
    rows = []
    for v in [float(x) for x in a.variances.split(",")]:
        for name, root in roots.items():
            r = {"variance": v, "checkout": name, **_child(ORDERS, [v], root, a.memory_gb)}
            print(json.dumps(r), flush=True)
            rows.append(r)
    out = {"machine": machine(), "orders": rows, "memory_limit_gb": a.memory_gb, "roots": roots}
    if a.posterior:
        out["posterior"] = _child(POSTERIOR, [], ROOT)
        print(json.dumps(out["posterior"])[:400], flush=True)
    out["load_after"] = os.getloadavg()
    return write_result(a.out, out)


if __name__ == "__main__":
    sys.exit(main())
