"""Where does the first-order (1/n) posterior break down as the number of training points grows?

Compares, on subsets of the Mauna Loa CO2 series (statsmodels, public domain; time standardised,
targets standardised), the finite-width posterior of ``ngp._matrix_free`` and the GP with
importance sampling of actual networks (``ngp.reference.importance_posterior``, exact up to its
reported Monte-Carlo error) for ``N_train`` in 8..64 and widths 16..256 (tanh, depth 3).

For every configuration it records the errors of both approximations against the reference and
the two diagnostics of ``ngp._matrix_free.validity``: ``eps = max|V|/(nK^2)`` and
``eta = Var_prior[log p(y | network)]`` at first order. Results are cached per configuration in
``benchmarks/results/matrix_free_validity.json`` (rerunning resumes); ``--report`` prints the table.

    python benchmarks/matrix_free_validity.py [--quick] [--report]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings

import jax

jax.config.update("jax_enable_x64", True)
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import ngp  # noqa: E402
from ngp import _matrix_free as mf  # noqa: E402
from ngp.reference import importance_posterior  # noqa: E402

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "matrix_free_validity.json")
NOISE = 0.05
N_TEST = 8


def co2_subset(n_train: int, seed: int = 0):
    """Random ``n_train`` training and ``N_TEST`` test weeks of the CO2 series (standardised)."""
    import statsmodels.datasets.co2 as co2

    d = co2.load_pandas().data.dropna()
    t = np.asarray(d.index.year + (d.index.day_of_year - 1) / 365.25, dtype=float)
    y = d["co2"].to_numpy(dtype=float)
    idx = np.random.default_rng(seed).permutation(t.size)[: n_train + N_TEST]
    ia, ib = idx[:n_train], idx[n_train:]
    tm, ts = t.mean(), t.std()
    ym, ys = y[ia].mean(), y[ia].std()
    return ((t[ia] - tm) / ts)[:, None], ((y[ia] - ym) / ys)[:, None], ((t[ib] - tm) / ts)[:, None]


def run_one(n_train, width, act="tanh", depth=3, C_W=1.5, C_b=0.1, is_samples=40_000, mf_samples=32_768):
    XA, Y, XB = co2_subset(n_train)
    net = ngp.MLP(depth, width, activation=act, C_W=C_W, C_b=C_b)
    kb = mf.kernel_blocks(net.activation, XA, XB, net.C_W, net.C_b)
    t0 = time.time()
    r = mf.matrix_free_posterior(net.activation, kb, net.C_W, net.C_b, net.widths, Y, noise=NOISE,
                                 samples=mf_samples, seed=1, qmc=32, warn=False)
    t_mf = time.time() - t0
    t0 = time.time()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = importance_posterior(net, XA, Y, XB, noise=NOISE, num_samples=is_samples, seed=2)
    t_is = time.time() - t0
    row = dict(n_train=n_train, width=width, act=act, depth=depth, noise=NOISE, eps=r.validity.eps,
               eta=r.validity.eta, eta_se=r.validity.eta_se, ess=ref.ess, is_samples=is_samples,
               time_mf=t_mf, time_is=t_is)
    for key, nlo, se, gp, ref_v, ref_se in (
        ("mean", r.mean, r.mean_se, r.gp_mean, ref.mean, ref.mean_se),
        ("var", r.var, r.var_se, r.gp_var, ref.var, ref.var_se),
        ("logZ", r.log_evidence, r.log_evidence_se, r.gp_log_evidence, ref.log_evidence, ref.log_evidence_se),
    ):
        nlo, se, gp, ref_v, ref_se = (np.ravel(np.asarray(a, dtype=float)) for a in (nlo, se, gp, ref_v, ref_se))
        row[key] = dict(
            err_nlo=float(np.sqrt(np.mean((nlo - ref_v) ** 2))),  # RMS over test points
            err_gp=float(np.sqrt(np.mean((gp - ref_v) ** 2))),
            ref_se=float(np.sqrt(np.mean(ref_se**2))),
            nlo_se=float(np.sqrt(np.mean(se**2))),
        )
    return row


def load():
    if os.path.exists(OUT):
        with open(OUT) as f:
            return json.load(f)
    return {"rows": []}


def report(data):
    print(f"{'N':>4} {'n':>4} {'eps':>6} {'eta':>7} {'ESS':>8} | "
          + " | ".join(f"{k:>4}: nlo/gp err (ref se)" for k in ("mean", "var", "logZ")))
    for r in sorted(data["rows"], key=lambda r: (r["n_train"], r["width"])):
        cells = []
        for k in ("mean", "var", "logZ"):
            e = r[k]
            cells.append(f"{e['err_nlo']:.2g}/{e['err_gp']:.2g} ({e['ref_se']:.1g})")
        print(f"{r['n_train']:>4} {r['width']:>4} {r['eps']:6.3f} {r['eta']:7.3f} {r['ess']:8.0f} | " + " | ".join(cells))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--report", action="store_true")
    ap.add_argument("--n-train", type=int, nargs="*", default=[8, 16, 32, 64])
    ap.add_argument("--widths", type=int, nargs="*", default=[16, 32, 64, 128, 256])
    ap.add_argument("--is-samples", type=int, default=40_000)
    args = ap.parse_args()
    data = load()
    if args.report:
        report(data)
        return
    done = {(r["n_train"], r["width"]) for r in data["rows"]}
    grid = [(8, 32), (16, 64)] if args.quick else [(N, n) for N in args.n_train for n in args.widths]
    for N, n in grid:
        if (N, n) in done:
            continue
        row = run_one(N, n, is_samples=4000 if args.quick else args.is_samples)
        print(json.dumps(row), flush=True)
        if not args.quick:
            data["rows"].append(row)
            os.makedirs(os.path.dirname(OUT), exist_ok=True)
            with open(OUT, "w") as f:
                json.dump(data, f, indent=1)
    report(data)


if __name__ == "__main__":
    main()
