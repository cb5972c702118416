"""Calibrate the validity rule of first-order (1/n) results against importance sampling.

For a grid of problems (activation, depth, width 8-256, noise 0-0.1, targets from 0.5 to 4 times the
prior's output scale, plus the issue-15 reproducers) it computes

* the diagnostic of ``ngp.posterior(...).validity``: the mean shift against the GP in GP predictive
  standard deviations, the relative variance change and the evidence correction (nats);
* the truth by Rao-Blackwellised importance sampling of actual networks
  (``ngp.reference.importance_posterior``, its Monte-Carlo errors recorded), and the errors of the
  first-order (NLO) and GP answers against it, in the same units.

A first-order answer is *wrong* when its error exceeds ``TOL_MEAN`` predictive standard deviations
(mean), ``TOL_VAR`` relative (variance) or ``TOL_EVIDENCE`` nats (evidence). A case counts only when
the sampler resolves it (its standard error at most a quarter of the tolerance). The script prints,
for the thresholds in ``ngp._validity``, how many wrong cases are flagged (should be all) and how
many right cases are flagged (the price), and writes everything to
``benchmarks/results/validity_calibration.json``.

Usage: ``python benchmarks/validity_calibration.py [--quick] [--samples S]``
(``--quick``: a few cases, seconds to a minute; the full grid takes about half an hour on 2 cores).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import sys
import time
import warnings

import jax

jax.config.update("jax_enable_x64", True)

import numpy as np  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import ngp  # noqa: E402
from ngp import _validity  # noqa: E402
from ngp.reference import importance_posterior  # noqa: E402

TOL_MEAN = 0.1  # predictive standard deviations
TOL_VAR = 0.1  # relative
TOL_EVIDENCE = 0.3  # nats

NETS = {
    "tanh": dict(activation="tanh", C_W=1.0, C_b=0.1),
    "relu": dict(activation="relu", C_W=2.0, C_b=0.1),
    "gelu": dict(activation="gelu", C_W=1.5, C_b=0.1),
}
WIDTHS = (8, 16, 32, 64, 256)
NOISES = (0.0, 0.01, 0.1)
SCALES = (0.5, 1.0, 2.0, 4.0)


def _problem_1d():
    XA = np.array([[-1.2], [-0.4], [0.3], [1.1]])
    XB = np.array([[-0.8], [0.7], [1.8]])
    f = np.sin(2.0 * XA[:, 0] + 0.3)
    return XA, XB, f / np.sqrt(np.mean(f * f))


def _case_rows(name, net_kw, depth, XA, XB, Y, noise, widths, samples, seed, meta):
    """Diagnostic and truth at each width of one (network, data, noise)."""
    out_dim = Y.shape[1]
    net = ngp.MLP(depth, widths[0], out_dim=out_dim, **net_kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        cond = ngp.condition(net, XA, Y, noise=noise)
        rows = []
        for w in widths:
            c = cond.with_width(w)
            try:
                post = c.predict(XB)
            except np.linalg.LinAlgError as exc:
                rows.append(dict(meta, case=name, width=w, error=str(exc)[:120]))
                continue
            t0 = time.perf_counter()
            truth = importance_posterior(ngp.MLP(depth, w, out_dim=out_dim, **net_kw), XA, Y, XB, noise=noise,
                                         num_samples=samples, seed=seed)
            dt = time.perf_counter() - t0
            v = post.validity
            gp = post.gp
            denom = np.clip(gp.var, 0.0, None) + noise + _validity.VAR_FLOOR * np.diag(
                net.prior(XB, warn=False).K)[:, None]
            sd = np.sqrt(denom)
            rows.append(dict(
                meta, case=name, width=w,
                mean_shift=v.mean_shift, var_change=v.var_change, evidence_correction=v.evidence_correction,
                negative_variance=v.negative_variance, expansion_parameter=post.expansion_parameter,
                err_mean_nlo=float(np.max(np.abs(post.mean - truth.mean) / sd)),
                err_mean_gp=float(np.max(np.abs(gp.mean - truth.mean) / sd)),
                se_mean=float(np.max(truth.mean_se / sd)),
                err_var_nlo=float(np.max(np.abs(post.var - truth.var) / denom)),
                err_var_gp=float(np.max(np.abs(gp.var - truth.var) / denom)),
                se_var=float(np.max(truth.var_se / denom)),
                err_evidence_nlo=float(abs(post.log_evidence - truth.log_evidence)),
                err_evidence_gp=float(abs(gp.log_evidence - truth.log_evidence)),
                se_evidence=float(truth.log_evidence_se), ess=float(truth.ess), seconds_truth=dt,
            ))
    return rows


def _grid(quick: bool):
    XA, XB, f = _problem_1d()
    acts = ("tanh", "relu") if quick else tuple(NETS)
    depths = (3,) if quick else (2, 3)
    noises = (0.0, 0.1) if quick else NOISES
    scales = (1.0, 4.0) if quick else SCALES
    widths = (16, 64) if quick else WIDTHS
    for act, depth, noise, scale in itertools.product(acts, depths, noises, scales):
        net_kw = NETS[act]
        Kbar = float(np.mean(np.diag(ngp.MLP(depth, 8, **net_kw).prior(XA, warn=False).K)))
        Y = (scale * np.sqrt(Kbar) * f)[:, None]
        meta = dict(activation=act, depth=depth, noise=noise, target_scale=scale)
        yield f"{act}-L{depth}-noise{noise}-scale{scale}", net_kw, depth, XA, XB, Y, noise, widths, meta
    # issue 15, item 2: the README quick-start data (tanh, C_b = 0, 2 outputs, targets ~ N(0, 1))
    X = np.random.default_rng(0).normal(size=(5, 2))
    Y = np.random.default_rng(1).normal(size=(3, 2))
    for noise in ((0.0,) if quick else (0.0, 0.1)):
        yield (f"quickstart-noise{noise}", dict(activation="tanh", C_W=1.0, C_b=0.0), 3, X[:3], X[3:], Y, noise,
               (64, 256) if quick else (64, 256, 1024), dict(activation="tanh", depth=3, noise=noise, target_scale=None))
    # issue 15, item 1: near-duplicate test point, relu depth 3
    yield ("relu-near-duplicate", dict(activation="relu", C_W=2.0, C_b=0.1), 3, np.array([[0.5], [1.0]]),
           np.array([[0.5 + 1e-9]]), np.array([[0.2], [0.1]]), 0.1, (16, 64) if quick else (8, 16, 64, 256),
           dict(activation="relu", depth=3, noise=0.1, target_scale=None))


def _resolved(r):
    return dict(
        mean=r["se_mean"] <= TOL_MEAN / 4,
        var=r["se_var"] <= TOL_VAR / 4,
        evidence=r["se_evidence"] <= TOL_EVIDENCE / 4,
    )


def _wrong(r):
    return dict(
        mean=r["err_mean_nlo"] > TOL_MEAN,
        var=r["err_var_nlo"] > TOL_VAR,
        evidence=r["err_evidence_nlo"] > TOL_EVIDENCE,
    )


def summarise(rows, thresholds=None):
    """Confusion counts of ``trusted`` (with the given thresholds) against ``wrong``, per quantity and overall."""
    th = thresholds or dict(mean=_validity.MEAN_SHIFT_MAX, var=_validity.VAR_CHANGE_MAX,
                            evidence=_validity.EVIDENCE_MAX)
    table = {}
    ok = [r for r in rows if "error" not in r]
    for q in ("mean", "var", "evidence", "all"):
        counts = dict(flagged_wrong=0, unflagged_wrong=0, flagged_right=0, unflagged_right=0, unresolved=0)
        missed = []
        for r in ok:
            res, wrong = _resolved(r), _wrong(r)
            flag = {
                "mean": r["mean_shift"] > th["mean"] or r["negative_variance"],
                "var": r["var_change"] > th["var"] or r["negative_variance"],
                "evidence": r["evidence_correction"] > th["evidence"],
            }
            if q == "all":
                if not all(res.values()):
                    counts["unresolved"] += 1
                    continue
                is_wrong, is_flag = any(wrong.values()), any(flag.values())
            else:
                if not res[q]:
                    counts["unresolved"] += 1
                    continue
                is_wrong, is_flag = wrong[q], flag[q] or any(flag.values())
            key = ("flagged_" if is_flag else "unflagged_") + ("wrong" if is_wrong else "right")
            counts[key] += 1
            if is_wrong and not is_flag:
                missed.append(f"{r['case']} n={r['width']}")
        counts["missed"] = missed
        table[q] = counts
    return table


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--samples", type=int, default=None)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    samples = args.samples or (50_000 if args.quick else 200_000)
    t0 = time.perf_counter()
    rows = []
    for i, (name, net_kw, depth, XA, XB, Y, noise, widths, meta) in enumerate(_grid(args.quick)):
        got = _case_rows(name, net_kw, depth, XA, XB, Y, noise, widths, samples, 1000 + i, meta)
        rows += got
        for r in got:
            if "error" in r:
                print(f"{name:34s} n={r['width']:5d} error: {r['error']}", flush=True)
                continue
            print(f"{name:34s} n={r['width']:5d} shift={r['mean_shift']:9.3g} dvar={r['var_change']:9.3g} "
                  f"dZ={r['evidence_correction']:9.3g} | err NLO m={r['err_mean_nlo']:8.3g} v={r['err_var_nlo']:8.3g} "
                  f"Z={r['err_evidence_nlo']:8.3g} | GP m={r['err_mean_gp']:8.3g} | se m={r['se_mean']:.2g} "
                  f"Z={r['se_evidence']:.2g} ess={r['ess']:.0f}", flush=True)
    table = summarise(rows)
    print("\nthresholds: mean shift", _validity.MEAN_SHIFT_MAX, "variance change", _validity.VAR_CHANGE_MAX,
          "evidence", _validity.EVIDENCE_MAX)
    print(f"'wrong': error > {TOL_MEAN} sd (mean), > {TOL_VAR} relative (variance), > {TOL_EVIDENCE} nats (evidence)")
    for q, c in table.items():
        print(f"{q:9s} flagged wrong {c['flagged_wrong']:4d}  UNFLAGGED wrong {c['unflagged_wrong']:4d}  "
              f"flagged right {c['flagged_right']:4d}  unflagged right {c['unflagged_right']:4d}  "
              f"unresolved {c['unresolved']:4d}  missed: {', '.join(c['missed'][:6])}")
    result = dict(
        thresholds=dict(mean_shift=_validity.MEAN_SHIFT_MAX, var_change=_validity.VAR_CHANGE_MAX,
                        evidence=_validity.EVIDENCE_MAX),
        tolerances=dict(mean=TOL_MEAN, var=TOL_VAR, evidence=TOL_EVIDENCE),
        samples=samples, quick=args.quick, seconds=time.perf_counter() - t0,
        machine=platform.platform(), load=os.getloadavg(), summary=table, rows=rows,
    )
    path = args.out or os.path.join(HERE, "results", "validity_calibration" + ("_quick" if args.quick else "") + ".json")
    with open(path, "w") as fh:
        json.dump(result, fh, indent=1)
    print("wrote", path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
