"""Monte Carlo validation of the finite-width cumulants of residual networks (issue 12).

For each activation (tanh, relu, gelu) and depth (3, 5, 8) of ``ngp.ResMLP`` (three inputs,
per-activation ``C_W, C_b, gamma, xi``) it compares the theory (``ngp._residual_cumulants``) and the
naive closure (MLP recursion with a skip term, ``tests/_residual_reference.py``) with Monte Carlo of
actual residual networks at widths 16 .. 128 (exact conditional sampler, ``S`` networks per width):

* ``n Cov(G_hat_p, G_hat_q)`` against ``V``, ``n (E G_hat - K)`` against ``K1`` (readout metric);
* per entry, a weighted least-squares fit ``X(n) = X_inf + c / n`` over the widths: the intercept
  ``X_inf`` must agree with the theory (``z`` in units of its standard error), while the naive
  closure's constant gap shows up as a large ``z``;
* the residual ``R(n) = max_entries |n Cov_MC - V|`` and its fitted log-log slope (-1 expected).

Usage::

    python benchmarks/residual_validation.py [--quick] [--acts tanh,relu] [--depths 3,5]
        [--widths 16,32,64,128] [--samples 100000] [--out PATH]

Writes ``benchmarks/results/residual_validation[_quick].json`` (or ``--out``). The full sweep takes
tens of minutes on two cores: run one activation per process (``--acts``) and merge with ``--merge``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)

import ngp  # noqa: E402
from ngp import _residual_cumulants as rc  # noqa: E402
from ngp._finite import Pairs  # noqa: E402
from tests._residual_reference import mc_metric, naive_recursion  # noqa: E402

X = np.array([[0.9, -0.3, 0.4, 1.1], [-0.5, 0.8, 0.2, -0.7], [0.3, 0.6, -1.0, 0.1]])
CONFIGS = {  # C_W, C_b, gamma, xi (every block and layer)
    "tanh": (1.5, 0.1, 0.9, 0.6),
    "relu": (1.6, 0.1, 0.85, 0.55),
    "gelu": (1.6, 0.1, 0.85, 0.55),
}


def fit_intercept(widths, values, ses):
    """Weighted least squares of ``values(n) = a + c / n``; returns ``a``, its s.e., ``c``."""
    n = np.asarray(widths, dtype=float)
    A = np.stack([np.ones_like(n), 1.0 / n], axis=1)
    out_a, out_se, out_c = [], [], []
    for v, s in zip(np.asarray(values).T, np.asarray(ses).T):
        w = 1.0 / s**2
        cov = np.linalg.inv(A.T @ (w[:, None] * A))
        coef = cov @ A.T @ (w * v)
        out_a.append(coef[0])
        out_se.append(np.sqrt(cov[0, 0]))
        out_c.append(coef[1])
    return np.array(out_a), np.array(out_se), np.array(out_c)


def loglog_slope(widths, R, R_se):
    """Weighted fit of ``log R = log A + p log n``: ``p`` and its s.e. (``R_se / R`` as log errors)."""
    x, y = np.log(widths), np.log(np.maximum(R, 1e-300))
    w = (np.asarray(R) / np.asarray(R_se)) ** 2
    A = np.stack([np.ones_like(x), x], axis=1)
    cov = np.linalg.inv(A.T @ (w[:, None] * A))
    coef = cov @ A.T @ (w * y)
    return float(coef[1]), float(np.sqrt(cov[1, 1]))


def run_case(act, depth, widths, samples, seed):
    C_W, C_b, gamma, xi = CONFIGS[act]
    net0 = ngp.ResMLP(depth, 8, activation=act, C_W=C_W, C_b=C_b, gamma=gamma, xi=xi)
    K_first = C_b + C_W * X @ X.T / X.shape[1]
    kw = dict(C_W=list(net0.C_W), C_b=list(net0.C_b), gamma=list(net0.gamma), xi=list(net0.xi))
    t0 = time.perf_counter()
    th = rc.resmlp_cumulants(net0.activation, K_first, n=1, **kw)[-1]
    t_theory = time.perf_counter() - t0
    nv = naive_recursion(net0.activation, K_first, **kw)[-1]
    pairs = Pairs.of(X.shape[0])
    iu = np.triu_indices(pairs.P)
    V_th, V_nv = th.V[iu], nv[2][iu]
    K1_th, K1_nv = pairs.pack(th.K1), pairs.pack(nv[1])
    K = pairs.pack(th.K)
    rows, Vs, Vses, K1s, K1ses = [], [], [], [], []
    for n in widths:
        net = ngp.ResMLP(depth, n, activation=act, C_W=C_W, C_b=C_b, gamma=gamma, xi=xi)
        t1 = time.perf_counter()
        V, V_se, K1, K1_se = mc_metric(net, X, samples, seed=seed + n)
        V, V_se = V[iu], V_se[iu]
        i = int(np.argmax(np.abs(V - V_th)))
        j = int(np.argmax(np.abs(K1 - K1_th)))
        rows.append({
            "n": n, "mc_seconds": time.perf_counter() - t1,
            "R_V": float(abs(V - V_th)[i]), "R_V_se": float(V_se[i]),
            "R_V_naive": float(np.max(np.abs(V - V_nv))),
            "R_K1": float(abs(K1 - K1_th)[j]), "R_K1_se": float(K1_se[j]),
            "R_K1_naive": float(np.max(np.abs(K1 - K1_nv))),
            "expansion_parameter": float(np.max(np.abs(th.V4) / np.sqrt(np.einsum(
                "a,b,c,d->abcd", *(np.diag(th.K),) * 4))) / n),
        })
        Vs.append(V), Vses.append(V_se), K1s.append(K1), K1ses.append(K1_se)
    Va, Va_se, Vc = fit_intercept(widths, Vs, Vses)
    Ka, Ka_se, Kc = fit_intercept(widths, K1s, K1ses)
    R = np.array([r["R_V"] for r in rows])
    Rse = np.array([r["R_V_se"] for r in rows])
    slope, slope_se = loglog_slope(widths, R, Rse)
    # the slope of the entry with the largest 1/n coefficient, from its signed residual
    e = int(np.argmax(np.abs(Vc)))
    Re = np.abs(np.array(Vs)[:, e] - V_th[e])
    Re_se = np.array(Vses)[:, e]
    slope_e, slope_e_se = loglog_slope(widths, Re, Re_se)
    return {
        "activation": act, "depth": depth, "C_W": C_W, "C_b": C_b, "gamma": gamma, "xi": xi,
        "inputs": X.tolist(), "samples_per_width": samples, "theory_seconds": t_theory,
        "max_abs_V": float(np.max(np.abs(V_th))), "max_abs_K1": float(np.max(np.abs(K1_th))),
        "naive_gap_V": float(np.max(np.abs(V_nv - V_th))), "naive_gap_K1": float(np.max(np.abs(K1_nv - K1_th))),
        "widths": rows,
        "intercept_z_V": float(np.max(np.abs(Va - V_th) / Va_se)),
        "intercept_z_V_naive": float(np.max(np.abs(Va - V_nv) / Va_se)),
        "intercept_z_K1": float(np.max(np.abs(Ka - K1_th) / Ka_se)),
        "intercept_z_K1_naive": float(np.max(np.abs(Ka - K1_nv) / Ka_se)),
        "slope_max_residual_V": slope, "slope_max_residual_V_se": slope_se,
        "slope_largest_entry_V": slope_e, "slope_largest_entry_V_se": slope_e_se,
        "entries": int(V_th.size),
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="tanh and relu, depth 3 and 5, widths 16, 64, 2e4 networks")
    ap.add_argument("--acts", default=None)
    ap.add_argument("--depths", default=None)
    ap.add_argument("--widths", default=None)
    ap.add_argument("--samples", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None)
    ap.add_argument("--merge", nargs="*", default=None, help="merge result files into --out and exit")
    args = ap.parse_args(argv)
    out = args.out or os.path.join(HERE, "results", "residual_validation" + ("_quick" if args.quick else "") + ".json")
    if args.merge is not None:
        cases = []
        meta = None
        for path in args.merge:
            with open(path) as f:
                data = json.load(f)
            meta = meta or {k: v for k, v in data.items() if k != "cases"}
            cases += data["cases"]
        with open(out, "w") as f:
            json.dump({**meta, "cases": cases}, f, indent=1)
        print(f"merged {len(cases)} cases into {out}")
        return
    acts = (args.acts or ("tanh,relu" if args.quick else "tanh,relu,gelu")).split(",")
    depths = [int(d) for d in (args.depths or ("3,5" if args.quick else "3,5,8")).split(",")]
    widths = [int(w) for w in (args.widths or ("16,64" if args.quick else "16,32,64,128")).split(",")]
    samples = args.samples or (20_000 if args.quick else 100_000)
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                text=True).stdout.strip()
    except OSError:
        commit = None
    cases = []
    for act in acts:
        for depth in depths:
            case = run_case(act, depth, widths, samples, args.seed)
            cases.append(case)
            rs = ", ".join(f"{r['R_V']:.4f}+-{r['R_V_se']:.4f}" for r in case["widths"])
            print(f"{act:5s} L={depth}: V_max={case['max_abs_V']:.4g} naive gap {case['naive_gap_V']:.4g}; "
                  f"R_V(n)={rs}; slope {case['slope_max_residual_V']:.2f}+-{case['slope_max_residual_V_se']:.2f}; "
                  f"intercept z {case['intercept_z_V']:.2f} (naive {case['intercept_z_V_naive']:.1f}); "
                  f"K1 z {case['intercept_z_K1']:.2f} (naive {case['intercept_z_K1_naive']:.1f}); "
                  f"theory {case['theory_seconds']:.0f}s", flush=True)
    result = {
        "machine": platform.platform(), "cpus": os.cpu_count(), "load_average": os.getloadavg(),
        "jax": jax.__version__, "commit": commit, "widths": widths, "samples_per_width": samples,
        "cases": cases,
    }
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        json.dump(result, f, indent=1)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
