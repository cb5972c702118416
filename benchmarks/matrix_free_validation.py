"""Matrix-free finite-width posterior against the exact (dense-V) path at small N_train.

For tanh, gelu and relu networks of depth 2-4 (width 32) on a small regression problem it

1. computes the exact first-order posterior with the dense vertex (``net.prior(X).V`` and
   ``ngp.condition(..., solver="exact")``) and stores it in ``tests/data/matrix_free_reference.json``
   (the reference of ``tests/test_matrix_free.py``; recomputed only with ``--recompute [KEY ...]``,
   all keys when none is named);
2. agreement: one run at a large budget (``8 x`` the default samples): the largest ``|z|`` over
   test points for the mean, the variances and the evidence;
3. honesty: 50 seeds at the default budget; the standard deviation of the z-scores
   ``(matrix_free - exact) / reported_se`` (pooled over test points) per quantity;
4. efficiency: at the default budget, ``max_b se_b / max_b |finite-width - GP|_b`` per quantity
   (target < 0.1).

Results: ``benchmarks/results/matrix_free_validation.json``.

    python benchmarks/matrix_free_validation.py [--quick] [--recompute [KEY ...]] [--seeds 50] [--only KEY ...]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import jax

jax.config.update("jax_enable_x64", True)
import numpy as np  # noqa: E402

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)
import ngp  # noqa: E402
from ngp import _matrix_free as mf  # noqa: E402

REF = os.path.join(ROOT, "tests", "data", "matrix_free_reference.json")
OUT = os.path.join(ROOT, "benchmarks", "results", "matrix_free_validation.json")

#: (activation, depth, C_W, C_b); width 32, noise 0.1, N_train 8, N_test 4.
CONFIGS = [
    ("tanh", 2, 1.5, 0.1), ("tanh", 3, 1.5, 0.1), ("tanh", 4, 1.5, 0.1),
    ("gelu", 2, 1.5, 0.1), ("gelu", 3, 1.5, 0.1), ("gelu", 4, 1.5, 0.1),
    ("relu", 2, 2.0, 0.1), ("relu", 3, 2.0, 0.1), ("relu", 4, 2.0, 0.1),
]
WIDTH, NOISE, N_TRAIN, N_TEST = 32, 0.1, 8, 4


def problem(seed: int = 0):
    """Inputs in [-1, 1]^2 (pre-activation variances stay below ~2, where the dense four-point
    quadrature is accurate) and targets of a smooth function plus noise."""
    rng = np.random.default_rng(seed)
    XA = rng.uniform(-1, 1, size=(N_TRAIN, 2))
    XB = rng.uniform(-1, 1, size=(N_TEST, 2))
    Y = (np.sin(2 * XA[:, 0]) * np.cos(XA[:, 1]) + np.sqrt(NOISE) * rng.normal(size=N_TRAIN))[:, None]
    return XA, XB, Y


def key(cfg):
    return "{}-L{}".format(cfg[0], cfg[1])


def exact(cfg):
    act, depth, C_W, C_b = cfg
    XA, XB, Y = problem()
    net = ngp.MLP(depth, WIDTH, activation=act, C_W=C_W, C_b=C_b)
    t0 = time.time()
    post = ngp.condition(net, XA, Y, noise=NOISE, solver="exact", warn=False).predict(XB)
    K1 = net.prior(np.concatenate([XA, XB]), warn=False).K1
    gp = post.gp
    return dict(
        act=act, depth=depth, C_W=C_W, C_b=C_b, width=WIDTH, noise=NOISE,
        XA=XA.tolist(), XB=XB.tolist(), Y=Y.tolist(),
        mean=post.mean.ravel().tolist(), var=post.var.ravel().tolist(), log_evidence=float(post.log_evidence),
        gp_mean=gp.mean.ravel().tolist(), gp_var=gp.var.ravel().tolist(), gp_log_evidence=float(gp.log_evidence),
        K1=np.asarray(K1).tolist(), seconds=time.time() - t0,
    )


def references(recompute):
    """Stored references; ``recompute``: ``None`` (keep), ``[]`` (all keys) or a list of keys."""
    data = {}
    if os.path.exists(REF) and recompute != []:
        with open(REF) as f:
            data = json.load(f)
    for cfg in CONFIGS:
        if key(cfg) not in data or (recompute and key(cfg) in recompute):
            print("exact path", key(cfg), flush=True)
            data[key(cfg)] = exact(cfg)
            os.makedirs(os.path.dirname(REF), exist_ok=True)
            with open(REF, "w") as f:
                json.dump(data, f)
    return data


def run(ref, samples, seed):
    act = ngp.activation(ref["act"])
    L = ref["depth"]
    C_W, C_b = (ref["C_W"],) * L, (ref["C_b"],) * L
    kb = mf.kernel_blocks(act, np.array(ref["XA"]), np.array(ref["XB"]), C_W, C_b)
    return mf.matrix_free_posterior(act, kb, C_W, C_b, (ref["width"],) * (L - 1), np.array(ref["Y"]),
                                    noise=ref["noise"], samples=samples, seed=seed, warn=False)


def zscores(r, ref):
    return dict(
        mean=(r.mean.ravel() - np.array(ref["mean"])) / r.mean_se.ravel(),
        var=(r.var.ravel() - np.array(ref["var"])) / r.var_se.ravel(),
        log_evidence=np.array([(r.log_evidence - ref["log_evidence"]) / r.log_evidence_se]),
    )


def efficiency(r, ref):
    out = {}
    for q, se in (("mean", r.mean_se), ("var", r.var_se), ("log_evidence", r.log_evidence_se)):
        corr = np.abs(np.ravel(ref[q]) - np.ravel(ref["gp_" + q]))
        out[q] = float(np.max(se) / np.max(corr))
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--recompute", nargs="*", default=None, help="recompute these references (all if none named)")
    ap.add_argument("--references-only", action="store_true")
    ap.add_argument("--seeds", type=int, default=50)
    ap.add_argument("--only", nargs="*")
    args = ap.parse_args()
    refs = references(args.recompute)
    if args.references_only:
        return
    S = mf.DEFAULT_SAMPLES // (8 if args.quick else 1)
    seeds = 5 if args.quick else args.seeds
    results = {}
    if os.path.exists(OUT) and not args.quick:
        with open(OUT) as f:
            results = json.load(f).get("configs", {})
    for cfg in CONFIGS:
        k = key(cfg)
        if args.only and k not in args.only:
            continue
        ref = refs[k]
        t0 = time.time()
        big = run(ref, 8 * S, seed=12345)
        agree = {q: float(np.max(np.abs(z))) for q, z in zscores(big, ref).items()}
        zs, eff, times = {q: [] for q in agree}, [], []
        for seed in range(seeds):
            t1 = time.time()
            r = run(ref, S, seed)
            times.append(time.time() - t1)
            for q, z in zscores(r, ref).items():
                zs[q].append(z)
            eff.append(efficiency(r, ref))
        row = dict(
            agreement_max_abs_z=agree,
            z_std={q: float(np.std(np.concatenate(v))) for q, v in zs.items()},
            z_mean={q: float(np.mean(np.concatenate(v))) for q, v in zs.items()},
            se_over_correction={q: float(np.median([e[q] for e in eff])) for q in agree},
            se_over_correction_max={q: float(np.max([e[q] for e in eff])) for q in agree},
            correction_size={q: float(np.max(np.abs(np.ravel(ref[q]) - np.ravel(ref["gp_" + q])))) for q in agree},
            samples=S, seeds=seeds, seconds_per_run=float(np.median(times[1:] if len(times) > 1 else times)),
            seconds_total=time.time() - t0, exact_path_seconds=ref["seconds"],
        )
        results[k] = row
        print(k, json.dumps(row), flush=True)
        if not args.quick:
            os.makedirs(os.path.dirname(OUT), exist_ok=True)
            with open(OUT, "w") as f:
                json.dump(dict(configs=results, width=WIDTH, noise=NOISE, n_train=N_TRAIN, n_test=N_TEST,
                               default_samples=mf.DEFAULT_SAMPLES, jax=jax.__version__), f, indent=1)


if __name__ == "__main__":
    main()
