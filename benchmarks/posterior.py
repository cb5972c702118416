"""Time and accuracy of the posterior solvers on one task (issue: finite-width posterior).

Task: tanh MLP, depth 3, width 32, C_W=1, C_b=0, 3 training inputs in 2-D, 2 outputs, 1 test
input, noise variance 0.1. Truth: importance sampling with many draws (exact up to its standard
error). Compared: ngp.posterior (finite width, O(1/n)), ngp.gp_posterior, NUTS (4 chains) and
importance sampling with 1e5 draws. Times are medians of repeats after a warm-up (NUTS: one run
after a warm-up run, since it is slow). The first call of ``ngp.posterior`` and of NUTS, each in a fresh
process (compilation included, the import not), gives the cold ratio; the first calls of ``ngp.gp_posterior``
and of one small jitted JAX function, also each in a fresh process, give the floor that any JAX code pays there
(backend start-up and compilation). Usage: python benchmarks/posterior.py [--quick] [--no-cold] [--cache]
[--nuts-seeds K] [--widths 32,64,128] [--out NAME]. Writes benchmarks/results/posterior.json (or NAME.json).
``--cache`` adds the first calls with JAX's persistent compilation cache already filled by an earlier process (each
solver its own cache); ``--nuts-seeds K`` runs NUTS with K further seeds (untimed) and reports the spread of its
errors; ``--widths`` adds, per extra width, a new truth and the finite-width and GP errors (untimed): the
finite-width error is the 1/n^2 remainder of the expansion, so it should fall about 4x per doubling of the width.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

import jax

jax.config.update("jax_enable_x64", True)

import numpy as np  # noqa: E402

import ngp  # noqa: E402
from ngp.reference import importance_posterior, nuts_posterior  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))

#: The first call of one solver in a fresh process: seconds from before the call to after it.
COLD = r"""
import json, os, sys, time
import jax
jax.config.update("jax_enable_x64", True)
if os.environ.get("BENCH_CACHE_DIR"):  # JAX's persistent compilation cache (what a user may turn on)
    jax.config.update("jax_compilation_cache_dir", os.environ["BENCH_CACHE_DIR"])
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
import numpy as np
sys.path.insert(0, sys.argv[3])
import ngp
from ngp.reference import nuts_posterior
rng = np.random.default_rng(2024)
XA, XB, Y = rng.normal(size=(3, 2)), rng.normal(size=(1, 2)), 0.5 * rng.normal(size=(3, 2))
net = ngp.MLP(3, 32, activation="tanh", C_W=1.0, C_b=0.0, out_dim=2)
n = int(sys.argv[2])
t = time.perf_counter()
if sys.argv[1] == "ngp":
    p = ngp.posterior(net, XA, Y, XB, noise=0.1)
elif sys.argv[1] == "gp":
    p = ngp.gp_posterior(net, XA, Y, XB, noise=0.1)
elif sys.argv[1] == "jax":  # JAX's own first call: one small jitted function of the inputs
    p = type("Floor", (), {"mean": jax.jit(lambda x: jax.numpy.tanh(x) @ x.T)(XA)})
else:
    p = nuts_posterior(net, XA, Y, XB, noise=0.1, num_warmup=n, num_samples=n, num_chains=4, seed=3)
np.asarray(p.mean)
print(json.dumps({"seconds": time.perf_counter() - t}))
"""


def _cold(solver: str, n: int, cache: str | None = None) -> float:
    """Seconds of ``solver``'s first call in a fresh process; with ``cache`` (a folder), JAX's persistent
    compilation cache there, filled by one fresh process first (untimed)."""
    root = os.path.dirname(HERE)
    env = dict(os.environ, PYTHONPATH=root, **({"BENCH_CACHE_DIR": cache} if cache else {}))
    for _ in range(2 if cache else 1):
        r = subprocess.run([sys.executable, "-c", COLD, solver, str(n), root], capture_output=True, text=True,
                           check=True, env=env)
    return json.loads(r.stdout.strip().splitlines()[-1])["seconds"]


def _median_time(fn, repeats):
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times)), out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--no-cold", action="store_true", help="skip the first calls in fresh processes")
    ap.add_argument("--nuts-seeds", type=int, default=1,
                    help="NUTS runs (seeds 3, 4, ...) for the spread of its errors")
    ap.add_argument("--widths", default="32", help="widths for the errors (the first, 32, is the timed task)")
    ap.add_argument("--cache", action="store_true",
                    help="also the first calls with JAX's persistent compilation cache filled by an earlier process")
    ap.add_argument("--out", default=None, help="result name under benchmarks/results (without .json)")
    args = ap.parse_args()
    rng = np.random.default_rng(2024)
    XA, XB, Y = rng.normal(size=(3, 2)), rng.normal(size=(1, 2)), 0.5 * rng.normal(size=(3, 2))
    net = ngp.MLP(3, 32, activation="tanh", C_W=1.0, C_b=0.0, out_dim=2)
    noise = 0.1
    S_truth = 400_000 if args.quick else 2_000_000
    truth = importance_posterior(net, XA, Y, XB, noise=noise, num_samples=S_truth, seed=123)
    rows = {}
    t, p = _median_time(lambda: ngp.posterior(net, XA, Y, XB, noise=noise), 5)
    rows["ngp finite width"] = (t, p.mean, p.var)
    t, g = _median_time(lambda: ngp.gp_posterior(net, XA, Y, XB, noise=noise), 5)
    rows["GP (infinite width)"] = (t, g.mean, g.var)
    t, r = _median_time(lambda: importance_posterior(net, XA, Y, XB, noise=noise, num_samples=100_000, seed=7), 2)
    rows["importance sampling 1e5"] = (t, r.mean, r.var)
    nw, ns = (200, 200) if args.quick else (500, 500)
    t, u = _median_time(lambda: nuts_posterior(net, XA, Y, XB, noise=noise, num_warmup=nw, num_samples=ns,
                                               num_chains=4, seed=3), 1)
    rows[f"NUTS 4x{ns}"] = (t, u.mean, u.var)
    out = {"machine": platform.platform(), "cpus": os.cpu_count(), "backend": jax.default_backend(),
           "truth_samples": S_truth, "truth_mean_se": float(np.max(truth.mean_se)), "rows": []}
    print(f"truth: importance sampling, {S_truth} draws, mean s.e. {np.max(truth.mean_se):.1e}\n")
    print(f"{'solver':<26} {'time [s]':>10} {'max|mean err|':>14} {'max|var err|':>13}")
    for name, (t, m, v) in rows.items():
        em, ev = float(np.max(np.abs(m - truth.mean))), float(np.max(np.abs(v - truth.var)))
        out["rows"].append({"solver": name, "time_s": t, "mean_err": em, "var_err": ev})
        print(f"{name:<26} {t:>10.4f} {em:>14.2e} {ev:>13.2e}")
    t_ngp = rows["ngp finite width"][0]
    t_nuts = rows[f"NUTS 4x{ns}"][0]
    out["nuts_over_ngp_time"] = t_nuts / t_ngp
    print(f"\nNUTS / ngp time ratio: {t_nuts / t_ngp:.0f}x (goal >= 1000x at an error no larger than NUTS's)")
    if args.nuts_seeds > 1:  # the spread of NUTS's errors over seeds (one run is one draw of its Monte Carlo error)
        errs = [(out["rows"][-1]["mean_err"], out["rows"][-1]["var_err"])]
        for seed in range(4, 3 + args.nuts_seeds):
            u = nuts_posterior(net, XA, Y, XB, noise=noise, num_warmup=nw, num_samples=ns, num_chains=4, seed=seed)
            errs.append((float(np.max(np.abs(u.mean - truth.mean))), float(np.max(np.abs(u.var - truth.var)))))
        em, ev = np.array(errs).T
        out["nuts_seeds"] = {"seeds": list(range(3, 3 + args.nuts_seeds)), "mean_err": em.tolist(),
                             "var_err": ev.tolist()}
        print(f"NUTS over {len(errs)} seeds: max|mean err| median {np.median(em):.2e} (range {em.min():.2e}-"
              f"{em.max():.2e}), max|var err| median {np.median(ev):.2e} (range {ev.min():.2e}-{ev.max():.2e})")
    widths = [int(w) for w in args.widths.split(",")]
    if widths != [32]:  # the finite-width error against the width: the expansion's 1/n^2 remainder
        out["widths"] = []
        for w in widths:
            netw = ngp.MLP(3, w, activation="tanh", C_W=1.0, C_b=0.0, out_dim=2)
            tr = truth if w == 32 else importance_posterior(netw, XA, Y, XB, noise=noise, num_samples=S_truth, seed=123)
            pw, gw = ngp.posterior(netw, XA, Y, XB, noise=noise), ngp.gp_posterior(netw, XA, Y, XB, noise=noise)
            row = {"width": w, "truth_mean_se": float(np.max(tr.mean_se)), "truth_var_se": float(np.max(tr.var_se)),
                   **{f"{k}_{q}_err": float(np.max(np.abs(getattr(p_, q) - getattr(tr, q))))
                      for k, p_ in (("ngp", pw), ("gp", gw)) for q in ("mean", "var")}}
            out["widths"].append(row)
            print(f"width {w}: ngp mean/var err {row['ngp_mean_err']:.2e} / {row['ngp_var_err']:.2e}, GP "
                  f"{row['gp_mean_err']:.2e} / {row['gp_var_err']:.2e} (truth s.e. {row['truth_mean_se']:.1e} / "
                  f"{row['truth_var_se']:.1e})")
    if not args.no_cold:
        c_ngp, c_nuts, c_gp, c_jax = (_cold(s, ns) for s in ("ngp", "nuts", "gp", "jax"))
        out["cold_s"] = {"ngp finite width": c_ngp, f"NUTS 4x{ns}": c_nuts, "GP (infinite width)": c_gp,
                         "one small jitted JAX function": c_jax}
        out["cold_nuts_over_ngp_time"] = c_nuts / c_ngp
        out["cold_nuts_over_gp_time"] = c_nuts / c_gp
        out["cold_nuts_over_jax_floor"] = c_nuts / c_jax
        print(f"first call in a fresh process (compilation included): ngp {c_ngp:.2f} s, NUTS {c_nuts:.2f} s, "
              f"{c_nuts / c_ngp:.1f}x (goal >= 100x)")
        print(f"  floor: the GP posterior's first call {c_gp:.3f} s ({c_nuts / c_gp:.0f}x), one small jitted JAX "
              f"function's {c_jax:.3f} s ({c_nuts / c_jax:.0f}x)")
    if args.cache:  # each solver with its own cache folder, filled by a fresh process before the timed one
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            w_ngp, w_nuts, w_gp = (_cold(s, ns, os.path.join(tmp, s)) for s in ("ngp", "nuts", "gp"))
        out["cold_cached_s"] = {"ngp finite width": w_ngp, f"NUTS 4x{ns}": w_nuts, "GP (infinite width)": w_gp}
        out["cold_cached_nuts_over_ngp_time"] = w_nuts / w_ngp
        print(f"first call with a filled compilation cache: ngp {w_ngp:.2f} s, NUTS {w_nuts:.2f} s, "
              f"{w_nuts / w_ngp:.1f}x; the GP posterior's {w_gp:.3f} s")
    os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
    name = f"{args.out}.json" if args.out else "posterior_quick.json" if args.quick else "posterior.json"
    with open(os.path.join(HERE, "results", name), "w") as fh:
        json.dump(out, fh, indent=2)
    print(f"written benchmarks/results/{name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
