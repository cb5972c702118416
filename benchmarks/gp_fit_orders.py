"""What the compiled GP objective of ``ngp.fit_hyperparameters`` pays for not knowing the variances.

Usage: python benchmarks/gp_fit_orders.py [--sizes 10,64] [--out gp_fit_orders]. Writes
benchmarks/results/<--out>.json.

``fit_hyperparameters`` maximises the GP evidence with ``jax.jit(jax.jacfwd(...))`` of ``ngp.log_evidence``.
Under ``jax.jit`` the pre-activation variances are not concrete, so the two-point Mehler series runs at its capped
orders (3000 terms, 6000 nodes, ``docs/theory.md``, "Numerical paths and their accuracy") whatever the data. Here,
on the first ``N`` rows of scikit-learn's diabetes data (standardised), tanh depth 3, each in a fresh process:

* ``capped``: the value and gradient under ``jax.jit`` as a user compiles them (the capped orders, their Hermite
  table a constant of the program; until stop 56 the fit compiled its objective so too, since stop 58 it picks the
  orders of each kernel's largest variance in the program, the tables arguments);
* ``auto``: the same with ``terms``/``nodes`` set to the orders of the largest variance at the start values (what
  the concrete evaluation uses there);

first call (compilation included) and the median of 10 warm calls, the process's peak memory, and the values'
difference; then a whole fit (1 start, 40 iterations, as ``ngp regress`` runs it) with the library's defaults, and
one with 4 starts (the library's default number, as ``ngp demo`` runs it).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import _kernel_setup  # noqa: E402

CHILD = _kernel_setup.child_prelude(ROOT) + r"""
import resource
import jax.numpy as jnp
from sklearn.datasets import load_diabetes
from ngp.datasets import standardize
from ngp._gaussian import auto_orders
N, mode = int(sys.argv[1]), sys.argv[2]
d = load_diabetes()
X, y = standardize(d.data[:N])[0], standardize(d.target[:N, None])[0]
net = ngp.MLP(3, 64, activation="tanh", C_W=1.0, C_b=0.0)
out = {"N": N, "mode": mode}
if mode in ("fit", "fit4"):
    t = time.perf_counter()
    starts = 1 if mode == "fit" else 4
    fit = ngp.fit_hyperparameters(net, X, y, noise=0.1, finite_width=False, num_starts=starts, seed=0, max_iter=40)
    out.update(fit_s=time.perf_counter() - t, C_W=fit.C_W[0], C_b=fit.C_b[0], noise=fit.noise)
else:
    opts = {}
    if mode == "auto":
        kmax = max(float(np.max(np.diag(L.K))) for L in net.prior(X, warn=False).layers)
        opts = dict(zip(("terms", "nodes"), auto_orders(kmax)))
        out.update(kmax=kmax, **opts)
    f = jax.jit(jax.jacfwd(lambda t: ngp.log_evidence(net, X, y, noise=jnp.exp(t[2]), C_W=jnp.exp(t[0]),
                                                      C_b=jnp.exp(t[1]), finite_width=False, **opts)))
    theta = jnp.log(jnp.array([1.0, 1e-6, 0.1]))
    t = time.perf_counter()
    g = f(theta).block_until_ready()
    out["first_call_s"] = time.perf_counter() - t
    times = []
    for _ in range(10):
        t = time.perf_counter()
        f(theta).block_until_ready()
        times.append(time.perf_counter() - t)
    out.update(warm_call_s=float(np.median(times)), gradient=np.asarray(g).tolist())
out["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
print(json.dumps(out))
"""


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="10,64")
    ap.add_argument("--out", default="gp_fit_orders")
    args = ap.parse_args()
    load = os.getloadavg()
    rows = []
    for N in (int(s) for s in args.sizes.split(",")):
        for mode in ("capped", "auto", "fit", "fit4"):
            code = CHILD.replace("int(sys.argv[1]), sys.argv[2]", f"{N}, {mode!r}")
            r = _kernel_setup.child_json(code)
            rows.append(r)
            print(r, flush=True)
        cap, auto, fit, fit4 = rows[-4:]
        diff = max(abs(a - b) for a, b in zip(cap["gradient"], auto["gradient"]))
        print(f"N={N}: capped orders {cap['warm_call_s'] * 1e3:.0f} ms per call, {cap['peak_rss_gb']:.2f} GB; "
              f"auto ({auto['terms']}, {auto['nodes']}) {auto['warm_call_s'] * 1e3:.0f} ms, "
              f"{auto['peak_rss_gb']:.2f} GB; gradients {diff:.1e} apart; a 1-start fit {fit['fit_s']:.1f} s, "
              f"{fit['peak_rss_gb']:.2f} GB; 4 starts {fit4['fit_s']:.1f} s, {fit4['peak_rss_gb']:.2f} GB", flush=True)
    out = {"machine": platform.platform(), "cpus": os.cpu_count(), **_kernel_setup.ngp_revision(ROOT),
           "load_before": load, "load_after": os.getloadavg(), "date": time.strftime("%Y-%m-%d %H:%M"), "rows": rows}
    return _kernel_setup.write_result(args.out, out)


if __name__ == "__main__":
    raise SystemExit(main())
