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
import math
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


def fit_intercept(widths, values, ses, order=1):
    """Weighted least squares of ``values(n) = a + c / n (+ d / n^2 if order == 2)``; returns ``a``,
    its s.e. and ``c``, per column of ``values`` ``(widths, entries)``."""
    n = np.asarray(widths, dtype=float)
    A = np.stack([n ** -k for k in range(order + 1)], axis=1)
    out_a, out_se, out_c = [], [], []
    for v, s in zip(np.asarray(values).T, np.asarray(ses).T):
        w = 1.0 / s**2
        cov = np.linalg.inv(A.T @ (w[:, None] * A))
        coef = cov @ A.T @ (w * v)
        out_a.append(coef[0])
        out_se.append(np.sqrt(cov[0, 0]))
        out_c.append(coef[1])
    return np.array(out_a), np.array(out_se), np.array(out_c)


def fixed_intercept_chi2(widths, values, ses, intercepts):
    """``chi^2`` per degree of freedom of ``values(n) = intercept + c / n`` (one free ``c`` per entry),
    summed over entries (entries from the same networks are correlated: an indicative number)."""
    n = np.asarray(widths, dtype=float)
    chi2, dof = 0.0, 0
    for v, s, a in zip(np.asarray(values).T, np.asarray(ses).T, intercepts):
        w = 1.0 / s**2
        x = 1.0 / n
        c = np.sum(w * x * (v - a)) / np.sum(w * x * x)
        chi2 += float(np.sum(w * (v - a - c * x) ** 2))
        dof += len(n) - 1
    return chi2 / dof


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
    z2 = z2_naive = None
    if len(widths) >= 4:  # relu / gelu at depth 8 have large 1/n^2 terms at n = 16
        Va2, Va2_se, _ = fit_intercept(widths, Vs, Vses, order=2)
        z2, z2_naive = float(np.max(np.abs(Va2 - V_th) / Va2_se)), float(np.max(np.abs(Va2 - V_nv) / Va2_se))
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
        "intercept_z_V_quadratic_fit": z2, "intercept_z_V_naive_quadratic_fit": z2_naive,
        "chi2_per_dof_theory_plus_c_over_n": fixed_intercept_chi2(widths, Vs, Vses, V_th),
        "chi2_per_dof_naive_plus_c_over_n": fixed_intercept_chi2(widths, Vs, Vses, V_nv),
        "intercept_z_K1": float(np.max(np.abs(Ka - K1_th) / Ka_se)),
        "intercept_z_K1_naive": float(np.max(np.abs(Ka - K1_nv) / Ka_se)),
        "slope_max_residual_V": slope, "slope_max_residual_V_se": slope_se,
        "slope_largest_entry_V": slope_e, "slope_largest_entry_V_se": slope_e_se,
        "entries": int(V_th.size),
        "V_theory": V_th.tolist(), "V_naive": V_nv.tolist(), "K1_theory": K1_th.tolist(), "K1_naive": K1_nv.tolist(),
        "V_mc": np.array(Vs).tolist(), "V_mc_se": np.array(Vses).tolist(),
        "K1_mc": np.array(K1s).tolist(), "K1_mc_se": np.array(K1ses).tolist(),
    }


def _layer_sampler(act, depth, n, C_W, C_b, gamma, xi):
    """One network's last residual layer ``z^(depth-1)`` ``(N, n)`` (exact conditional sampler)."""
    import jax.numpy as jnp

    from ngp._linalg import psd_sqrt as _psd_sqrt

    def _metric(h, C_W, C_b):
        return C_b + C_W * (h @ h.T) / h.shape[-1]

    def one(key, X):
        N = X.shape[0]
        eps = jax.random.normal(key, (depth - 1, N, n), X.dtype)
        z = _psd_sqrt(C_b + C_W * X @ X.T / X.shape[1]) @ eps[0]
        for k in range(1, depth - 1):
            z = gamma * z + xi * _psd_sqrt(_metric(act.fn(z), C_W, C_b)) @ eps[k]
        return z

    return jax.jit(jax.vmap(one, in_axes=(0, None))), jnp


def run_layer_case(act_name, depth, widths, samples, seed):
    """Cumulants of the pre-activations of the last residual layer (``layer_cumulants``) against
    ``n Cov(M) - Cov_Sigma(z z, z z)`` and ``n (E M - Sigma)``, ``M = z z^T / n``."""
    C_W, C_b, gamma, xi = CONFIGS[act_name]
    act = ngp.activation(act_name)
    Xl = X[:2]
    pairs = Pairs.of(2)
    K_first = C_b + C_W * Xl @ Xl.T / Xl.shape[1]
    state = rc.chain_start(act, K_first, n=1)
    for _ in range(depth - 2):
        state = rc.residual_step(state, C_W=C_W, C_b=C_b, gamma=gamma, xi=xi)
    lay = rc.layer_cumulants(state)
    S = state.K
    a, b = pairs.a, pairs.b
    same = S[a][:, a] * S[b][:, b] + S[a][:, b] * S[b][:, a]
    rows = []
    for n in widths:
        fn, jnp = _layer_sampler(act, depth, n, C_W, C_b, gamma, xi)
        Ms = []
        keys = jax.random.split(jax.random.PRNGKey(seed + n), samples)
        for start in range(0, samples, 10_000):
            z = np.asarray(fn(keys[start:start + 10_000], jnp.asarray(Xl)))
            Ms.append(np.einsum("san,sbn->sab", z, z)[:, a, b] / n)
        M = np.concatenate(Ms)
        d = M - M.mean(0)
        prod = d[:, :, None] * d[:, None, :]
        V = n * prod.mean(0) - same
        V_se = n * prod.std(0, ddof=1) / np.sqrt(samples)
        K1 = n * (M.mean(0) - pairs.pack(S))
        K1_se = n * M.std(0, ddof=1) / np.sqrt(samples)
        rows.append({"n": n, "R_V": float(np.max(np.abs(V - lay.V))), "R_V_se": float(V_se.max()),
                     "R_K1": float(np.max(np.abs(K1 - pairs.pack(lay.K1)))), "R_K1_se": float(K1_se.max())})
    return {"activation": act_name, "layer": depth - 1, "max_abs_V_layer": float(np.max(np.abs(lay.V))),
            "max_abs_K1_layer": float(np.max(np.abs(lay.K1))), "samples_per_width": samples, "widths": rows}


def run_critical_case(depth, widths, samples, seed):
    """Critical relu blocks, gamma^2 = xi^2 = 1/2, one input: V/K^2 and K1/K (residual_depth_flow)."""
    from ngp import criticality as cr

    g = math.sqrt(0.5)
    flow = cr.residual_depth_flow("relu", C_W=2.0, C_b=0.0, gamma=g, xi=g, K0=1.0, depth=depth)
    X1 = np.array([[1.0]])
    rows = []
    for n in widths:
        net = ngp.ResMLP(depth, n, activation="relu", C_W=2.0, C_b=0.0, gamma=g, xi=g)
        V, V_se, K1, K1_se = mc_metric(net, X1, samples, seed=seed + n)
        K = float(np.asarray(net.prior(X1).K)[0, 0])
        rows.append({"n": n, "V_over_K2": float(V[0, 0]) / K**2, "V_over_K2_se": float(V_se[0, 0]) / K**2,
                     "K1_over_K": float(K1[0]) / K, "K1_over_K_se": float(K1_se[0]) / K})
    out = {"activation": "relu", "critical": True, "gamma2": 0.5, "xi2": 0.5, "depth": depth,
           "V_over_K2_theory": float(flow.V_over_K2[-1]), "K1_over_K_theory": float(flow.K1_over_K[-1]),
           "V_over_K2_mlp": 5.0 * (depth - 1), "V_over_K2_naive": 5.0 + (depth - 2) * 2.25, "widths": rows}
    return _critical_fits(out)


def _critical_fits(case):
    """Intercepts of ``V/K^2 (n)``: ``a + c/n`` and, with >= 4 widths, ``a + c/n + d/n^2`` (relu at
    depth 8 has large 1/n^2 terms at n = 32)."""
    rows = case["widths"]
    ns = [r["n"] for r in rows]
    vals, ses = [[r["V_over_K2"]] for r in rows], [[r["V_over_K2_se"]] for r in rows]
    a, a_se, _ = fit_intercept(ns, vals, ses)
    case["V_over_K2_intercept"], case["V_over_K2_intercept_se"] = float(a[0]), float(a_se[0])
    if len(ns) >= 4:
        a, a_se, _ = fit_intercept(ns, vals, ses, order=2)
        case["V_over_K2_intercept_quadratic"], case["V_over_K2_intercept_quadratic_se"] = float(a[0]), float(a_se[0])
    return case


def run_branch_case(act_name, widths, samples, seed):
    """Two residual blocks whose branches have a hidden layer (widths 2n and n/2), two inputs."""
    from tests._residual_reference import mc_branch_chain

    act = ngp.activation(act_name)
    Xb = np.array([[1.0, 0.3], [-0.4, 0.9]])
    C_W = 1.5 if act_name == "tanh" else 1.6
    blocks = [(C_W, 0.1), (C_W, 0.1, 0.9, 0.6, ((2.0, 1.2, 0.1),)), (C_W, 0.1, 0.8, 0.7, ((0.5, 1.4, 0.05),))]
    pairs = Pairs.of(2)
    s = rc.chain_start(act, 0.1 + C_W * Xb @ Xb.T / 2, n=1)
    for cw, cb, g, x, br in blocks[1:]:
        s = rc.residual_step(s, C_W=cw, C_b=cb, gamma=g, xi=x, branch=br)
    th = rc.readout(s, C_W=1.1, C_b=0.1)
    rows, Vs, Vses = [], [], []
    for n in widths:
        bl = [blocks[0]] + [(c, b, g, x, tuple((m * n, cw, cb) for m, cw, cb in br)) for c, b, g, x, br in blocks[1:]]
        V, V_se, nEG, nEG_se = mc_branch_chain(act, Xb, n, bl, (1.1, 0.1), samples, seed=seed + n)
        K1 = nEG - n * pairs.pack(th.K)
        rows.append({"n": n, "R_V": float(np.max(np.abs(V - th.V))), "R_V_se": float(V_se.max()),
                     "z_K1": float(np.max(np.abs(K1 - pairs.pack(th.K1)) / nEG_se))})
        iu = np.triu_indices(pairs.P)
        Vs.append(V[iu]), Vses.append(V_se[iu])
    a, a_se, _ = fit_intercept(widths, Vs, Vses)
    return {"activation": act_name, "branch": "hidden widths 2n, n/2", "max_abs_V": float(np.max(np.abs(th.V))),
            "intercept_z_V": float(np.max(np.abs(a - th.V[np.triu_indices(pairs.P)]) / a_se)),
            "samples_per_width": samples, "widths": rows}


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
    ap.add_argument("--extra", action="store_true", help="only the layer-level and critical-relu checks")
    args = ap.parse_args(argv)
    out = args.out or os.path.join(HERE, "results", "residual_validation" + ("_quick" if args.quick else "") + ".json")
    if args.merge is not None:
        cases = []
        meta = None
        for path in args.merge:
            with open(path) as f:
                data = json.load(f)
            meta = meta or {k: v for k, v in data.items() if k != "cases"}
            for c in data["cases"]:
                if c.get("critical"):
                    _critical_fits(c)
                if "V_mc" in c and "chi2_per_dof_theory_plus_c_over_n" not in c:  # older runs: add the chi^2
                    ws = [r["n"] for r in c["widths"]]
                    c["chi2_per_dof_theory_plus_c_over_n"] = fixed_intercept_chi2(ws, c["V_mc"], c["V_mc_se"], c["V_theory"])
                    c["chi2_per_dof_naive_plus_c_over_n"] = fixed_intercept_chi2(ws, c["V_mc"], c["V_mc_se"], c["V_naive"])
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
    if args.extra:
        for act in ("tanh", "relu"):
            case = run_layer_case(act, 5, widths, samples, args.seed)
            cases.append(case)
            print(act, "layer 4:", [(r["n"], round(r["R_V"], 4), round(r["R_V_se"], 4), round(r["R_K1"], 4),
                                     round(r["R_K1_se"], 4)) for r in case["widths"]], flush=True)
        for act in ("tanh", "relu"):
            case = run_branch_case(act, widths, samples, args.seed)
            cases.append(case)
            print(act, "two-layer branches:", case["intercept_z_V"], [(r["n"], round(r["R_V"], 4), round(r["R_V_se"], 4),
                                                                       round(r["z_K1"], 2)) for r in case["widths"]], flush=True)
        case = run_critical_case(8, [32, 64, 128, 256] if not args.quick else [32, 128], samples, args.seed)
        cases.append(case)
        print("critical relu depth 8:", case["V_over_K2_theory"], case["V_over_K2_intercept"], case["V_over_K2_intercept_se"],
              [(r["n"], round(r["V_over_K2"], 2), round(r["K1_over_K"], 3)) for r in case["widths"]], flush=True)
        acts = []
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
