"""Cost of the finite-width posterior against the number of training and test points (issue 10).

Task: tanh MLP depth 3 width 64, 2-D standard-normal inputs, targets ``sin(1.3 x1) + 0.3 x2``, noise 0.1.
For ``N_train`` in {8, 16, 32, 64} and ``N_test`` in {1, 100, 1000}, each in a fresh process (cold:
compilation included), wall time and peak resident memory of

* ``exact``: ``ngp.condition(net, X, Y, method="exact").predict(X_test)`` (means and marginal variances);
* ``matrix_free``: the same with ``method="matrix_free"`` (default samples; stochastic, with standard
  errors);
* ``posterior``: ``ngp.posterior`` (the first release's one-call path, vertex on train and test inputs).

A run is stopped at ``--timeout`` seconds (reported as not finished); a method is not run at sizes
larger in both ``N_train`` and ``N_test`` than one it did not finish. Issue 10's goals: ``N_train = 32``
with ``N_test = 100`` and ``N_train = 16`` with ``N_test = 1000`` each under 60 s, memory under 2 GB.

Usage: ``python benchmarks/posterior_scaling.py [--quick] [--timeout 120] [--plot-only]``; writes
``benchmarks/results/posterior_scaling[_quick].json`` and, with matplotlib, ``docs/img/posterior_scaling.png``.
``--cells 16x1000,32x100 --methods exact --out NAME`` measures only those cells (no grid, no figure) and
writes ``benchmarks/results/NAME.json`` with the commit measured.
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
import json, resource, sys, time
import numpy as np, jax
jax.config.update("jax_enable_x64", True)
sys.path.insert(0, {root!r})
import ngp
method, NA, NB = {method!r}, {NA}, {NB}
rng = np.random.default_rng(0)
XA, XB = rng.normal(size=(NA, 2)), rng.normal(size=(NB, 2))
YA = np.sin(1.3 * XA[:, :1]) + 0.3 * XA[:, 1:]
net = ngp.MLP(3, 64, activation="tanh")
t0 = time.perf_counter()
if method == "posterior":
    p = ngp.posterior(net, XA, YA, XB, noise=0.1, warn=False)
    t1 = t0
else:
    c = ngp.condition(net, XA, YA, noise=0.1, warn=False, method=method)
    t1 = time.perf_counter()
    p = c.predict(XB)
np.asarray(p.mean), np.asarray(p.var)
t2 = time.perf_counter()
print(json.dumps({{"seconds": t2 - t0, "condition_seconds": t1 - t0,
                   "peak_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6}}))
"""


def measure(method, NA, NB, timeout):
    code = CHILD.format(root=ROOT, method=method, NA=NA, NB=NB)
    t0 = time.perf_counter()
    try:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"finished": False, "reason": f"> {timeout} s"}
    if out.returncode != 0:
        last = (out.stderr.strip().splitlines() or ["?"])[-1]
        return {"finished": False, "reason": last[:200], "seconds": time.perf_counter() - t0}
    return {"finished": True, **json.loads(out.stdout.strip().splitlines()[-1])}


def plot(rows, timeout, path):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import NullFormatter, ScalarFormatter
    except ImportError:
        return None
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6), sharey=True)
    styles = {"exact": ("C0", "o"), "matrix_free": ("C1", "s"), "posterior": ("C2", "^")}
    for ax, NB in zip(axes, sorted({r["N_test"] for r in rows})):
        for method, (color, marker) in styles.items():
            pts = [(r["N_train"], r["seconds"]) for r in rows
                   if r["method"] == method and r["N_test"] == NB and r["finished"]]
            if pts:
                ax.plot(*zip(*pts), color=color, marker=marker, label=method)
            stopped = [r["N_train"] for r in rows if r["method"] == method and r["N_test"] == NB
                       and r.get("reason", "").startswith(">")]
            if stopped:
                nudge = {"exact": 0.95, "matrix_free": 1.0, "posterior": 1.05}[method]  # keep coinciding marks apart
                ax.plot([v * nudge for v in stopped], [timeout] * len(stopped), color=color, marker="x", ls="none", ms=9,
                        label=f"{method}: stopped at {timeout:g} s")
        ax.axhline(60, color="grey", ls=":", lw=1)
        ax.set(xscale="log", yscale="log", xlabel="training points", title=f"{NB} test point{'s' * (NB > 1)}")
        ax.set_xticks([8, 16, 32, 64], ["8", "16", "32", "64"])
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.yaxis.set_major_formatter(ScalarFormatter())
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.set_yticks([5, 10, 20, 60, 120])
    axes[0].set_ylabel("condition + predict, cold (s)")
    axes[0].legend(fontsize=8)
    fig.suptitle("tanh MLP depth 3 width 64, each run in a fresh process (dotted: 60 s)", fontsize=9)
    fig.tight_layout()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fig.savefig(path, dpi=110)
    return path


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="N_train in {8, 16}, N_test in {1, 100}")
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds per run (default 120)")
    ap.add_argument("--methods", default="matrix_free,exact,posterior")
    ap.add_argument("--plot-only", action="store_true", help="redraw the figure from the results file")
    ap.add_argument("--cells", default=None, help="only these cells, e.g. 16x1000,32x100 (default: the grid)")
    ap.add_argument("--out", default=None, help="results file name with --cells (default posterior_scaling_cells)")
    args = ap.parse_args(argv)
    if args.cells:
        return cells(args)
    figure = os.path.join(ROOT, "docs", "img", "posterior_scaling.png")
    if args.plot_only:
        with open(os.path.join(HERE, "results", "posterior_scaling.json")) as f:
            res = json.load(f)
        print(f"wrote {plot(res['rows'], res['timeout'], figure)}")
        return
    trains = [8, 16] if args.quick else [8, 16, 32, 64]
    tests = [1, 100] if args.quick else [1, 100, 1000]
    rows, failed = [], {}
    for method in args.methods.split(","):
        for NA in trains:
            for NB in tests:
                if any(NA >= a and NB >= b for a, b in failed.get(method, [])):
                    r = {"finished": False, "reason": "skipped: a smaller size did not finish"}
                else:
                    r = measure(method, NA, NB, args.timeout)
                    if not r["finished"]:
                        failed.setdefault(method, []).append((NA, NB))
                rows.append({"method": method, "N_train": NA, "N_test": NB, **r})
                what = (f"{r['seconds']:.1f} s, {r['peak_gb']:.2f} GB" if r["finished"] else r["reason"])
                print(f"{method:12s} N_train={NA:3d} N_test={NB:5d}: {what}", flush=True)
    out = os.path.join(HERE, "results", "posterior_scaling" + ("_quick" if args.quick else "") + ".json")
    with open(out, "w") as f:
        json.dump({"machine": platform.platform(), "cpus": os.cpu_count(), "load_average": os.getloadavg(),
                   "timeout": args.timeout, "rows": rows}, f, indent=1)
    print(f"wrote {out}")
    if not args.quick:
        path = plot(rows, args.timeout, figure)
        if path:
            print(f"wrote {path}")


def cells(args):
    """Measure only the cells ``args.cells`` (``NAxNB,...``) for ``args.methods``, one fresh process each."""
    commit = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    res = {"machine": platform.platform(), "cpus": os.cpu_count(), "commit": commit,
           "load_before": os.getloadavg(), "timeout": args.timeout, "rows": []}
    for method in args.methods.split(","):
        for cell in args.cells.split(","):
            NA, NB = (int(v) for v in cell.lower().split("x"))
            r = measure(method, NA, NB, args.timeout)
            res["rows"].append({"method": method, "N_train": NA, "N_test": NB, **r})
            what = (f"{r['seconds']:.1f} s, {r['peak_gb']:.2f} GB" if r["finished"] else r["reason"])
            print(f"{method:12s} N_train={NA:3d} N_test={NB:5d}: {what}", flush=True)
    res["load_after"] = os.getloadavg()
    out = os.path.join(HERE, "results", (args.out or "posterior_scaling_cells") + ".json")
    with open(out, "w") as f:
        json.dump(res, f, indent=1)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
