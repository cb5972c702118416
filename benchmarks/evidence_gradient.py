"""Time and memory of the finite-width evidence's gradient: this checkout against another checkout.

Usage: python benchmarks/evidence_gradient.py --other PATH [--sizes 6,8] [--modes jacfwd,jit_vg,jit_jacfwd]
[--cap-gb 12] [--timeout 600] [--out evidence_gradient]; or ``--accuracy 6`` [--orders 24,40,64]
[--activations tanh] (this checkout only). ``ngp.log_evidence`` of ``ngp.MLP(3, 32, "tanh",
C_W=1.5, C_b=0.1)`` on the first N standardised diabetes rows (scikit-learn), noise 0.1, differentiated in
``log C_W``: ``jacfwd`` is ``jax.jacfwd`` outside ``jax.jit`` (what ``ngp.fit_hyperparameters`` runs for a
finite-width fit), ``jit_vg`` is ``jax.jit(jax.value_and_grad(...))`` (what a NumPyro or optax user writes),
``jit_jacfwd`` is ``jax.jit(jax.jacfwd(...))``. Each (checkout, N, mode) is a fresh process, the checkouts
alternating, with its address space capped at ``--cap-gb`` (an allocation beyond it fails as
``RESOURCE_EXHAUSTED`` instead of the machine's out-of-memory killer). Reported: the first call (compilation
included) and a second call at another ``C_W``, peak resident memory, the gradient. Writes
benchmarks/results/<--out>.json.

``--accuracy N``: the traced gradient's error. For each of ``--activations``, at ``C_W = 1.85`` (stop 57's case) on
N rows, ``jax.value_and_grad``
of the evidence (Price's theorem on the fixed rule) at each ``four_point_order`` of ``--orders`` and at the default,
against central differences (steps 1e-3 and 3e-4 in ``log C_W``) of the error-controlled evidence outside JAX
transformations, and against central differences of the same fixed rule's value.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

from _kernel_setup import machine, write_result

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

#: Start of both child programs: float64, the standardised diabetes rows ``X``, ``y``.
DATA = r"""
import jax
jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp
import numpy as np
from sklearn.datasets import load_diabetes
import ngp
X, y = load_diabetes(return_X_y=True)
X = (X - X.mean(0)) / X.std(0)
y = (y - y.mean()) / y.std()
"""

CHILD = r"""
import json, resource, sys, time
cap = int(float(sys.argv[3]) * 2**30)
resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
""" + DATA + r"""
N, mode = int(sys.argv[1]), sys.argv[2]
net = ngp.MLP(3, 32, activation="tanh", C_W=1.5, C_b=0.1, in_dim=X.shape[1])
f = lambda lc: ngp.log_evidence(net, X[:N], y[:N, None], noise=0.1, C_W=jnp.exp(lc))
fn = {"jacfwd": jax.jacfwd(f), "jit_vg": jax.jit(jax.value_and_grad(f)), "jit_jacfwd": jax.jit(jax.jacfwd(f))}[mode]
out = {"module": ngp.__file__, "seconds": []}
try:
    for lc in (0.4, 0.41):
        t = time.perf_counter()
        r = jax.block_until_ready(fn(lc))
        out["seconds"].append(time.perf_counter() - t)
        out["grad"] = float(np.ravel(r[1] if isinstance(r, tuple) else r)[0])
except Exception as e:  # the capped address space: XLA's allocation fails
    out["error"] = f"{type(e).__name__}: {str(e)[:160]}"
out["peak_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
print(json.dumps(out))
"""


ACCURACY = r"""
import json, sys
""" + DATA + r"""
N, orders, act = int(sys.argv[1]), [int(o) for o in sys.argv[2].split(",") if o], sys.argv[3]
net = ngp.MLP(3, 32, activation=act, C_W=1.85, C_b=0.1, in_dim=X.shape[1])
f = lambda lc, **o: ngp.log_evidence(net, X[:N], y[:N, None], noise=0.1, C_W=jnp.exp(lc), **o)
lc0 = float(np.log(1.85))
out = {"value": float(f(lc0)), "fd": {}, "orders": []}
for h in (1e-3, 3e-4):
    out["fd"][str(h)] = float((f(lc0 + h) - f(lc0 - h)) / (2 * h))
for order in orders + [None]:
    o = {} if order is None else {"four_point_order": order}
    v, g = jax.value_and_grad(lambda c: f(c, **o))(lc0)
    fd_rule = float((f(lc0 + 1e-3, **o) - f(lc0 - 1e-3, **o)) / 2e-3) if order is not None else None
    out["orders"].append({"order": order, "value": float(v), "grad": float(g), "fd_same_rule": fd_rule})
print(json.dumps(out))
"""


def _accuracy(n: int, orders: str, act: str, timeout: float) -> dict:
    r = subprocess.run([sys.executable, "-c", ACCURACY, str(n), orders, act], capture_output=True, text=True,
                       timeout=timeout, cwd="/tmp", env=dict(os.environ, PYTHONPATH=ROOT), check=True)
    out = json.loads(r.stdout.strip().splitlines()[-1])
    truth = out["fd"]["0.001"]
    print(f"{act}, N={n}: error-controlled evidence {out['value']:.10f}, its central differences "
          + ", ".join(f"{g:.10f} (h={h})" for h, g in out["fd"].items()))
    for row in out["orders"]:
        row["grad_rel_err"] = abs(row["grad"] - truth) / abs(truth)
        row["value_rel_err"] = abs(row["value"] - out["value"]) / abs(out["value"])
        same = "" if row["fd_same_rule"] is None else f", its value's differences {row['fd_same_rule']:.10f}"
        print(f"  order {row['order'] or 'default'}: value rel. err {row['value_rel_err']:.1e}, gradient "
              f"{row['grad']:.10f} (rel. err {row['grad_rel_err']:.1e}){same}")
    return {"activation": act, **out}


def _run(root: str, n: int, mode: str, cap_gb: float, timeout: float) -> dict:
    try:
        r = subprocess.run([sys.executable, "-c", CHILD, str(n), mode, str(cap_gb)], capture_output=True, text=True,
                           timeout=timeout, cwd="/tmp", env=dict(os.environ, PYTHONPATH=root))
    except subprocess.TimeoutExpired:
        return {"error": f"over {timeout:.0f} s"}
    lines = r.stdout.strip().splitlines()
    if r.returncode or not lines:
        return {"error": f"exit {r.returncode}: {r.stderr.strip()[-160:]}"}
    return json.loads(lines[-1])


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--other", help="another checkout (e.g. a worktree of the previous commit)")
    ap.add_argument("--sizes", default="6,8")
    ap.add_argument("--modes", default="jacfwd,jit_vg,jit_jacfwd")
    ap.add_argument("--cap-gb", type=float, default=12.0)
    ap.add_argument("--timeout", type=float, default=600.0)
    ap.add_argument("--out", default="evidence_gradient")
    ap.add_argument("--accuracy", type=int, default=0, help="N: the traced gradient's error (this checkout)")
    ap.add_argument("--orders", default="24,40,64", help="orders besides the default (may be empty)")
    ap.add_argument("--activations", default="tanh")
    args = ap.parse_args()
    if args.accuracy:
        return write_result(args.out, {"machine": machine(), "N": args.accuracy, "rows": [
            _accuracy(args.accuracy, args.orders, act, 3 * args.timeout) for act in args.activations.split(",")]})
    if not args.other:
        ap.error("--other is needed (or --accuracy N)")
    sizes = [int(s) for s in args.sizes.split(",")]
    modes = args.modes.split(",")
    rows = []
    for n in sizes:
        for mode in modes:
            for label, root in (("this", ROOT), ("other", os.path.abspath(args.other))):
                r = {"checkout": label, "N": n, "mode": mode, **_run(root, n, mode, args.cap_gb, args.timeout)}
                rows.append(r)
                secs = " / ".join(f"{s:.2f}" for s in r.get("seconds", []))
                print(f"N={n:<3} {mode:<11} {label:<6} first / second [s]: {secs or '-':<14} peak "
                      f"{r.get('peak_gb', float('nan')):.2f} GB  grad {r.get('grad', float('nan')):.12f}  "
                      f"{r.get('error', '')}", flush=True)
    return write_result(args.out, {"machine": machine(), "other": os.path.abspath(args.other),
                                   "cap_gb": args.cap_gb, "rows": rows})


if __name__ == "__main__":
    raise SystemExit(main())
