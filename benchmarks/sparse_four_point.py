"""Smolyak sparse grids for the four-point expectations (issue 10, item 3): nodes at relative error 1e-9.

Usage: python benchmarks/sparse_four_point.py [--quick]. Writes benchmarks/results/sparse_four_point.json.

E[prod_j sigma(z_j)], z ~ N(0, C), C a random 4x4 block with variances K (the blocks of
benchmarks/four_point_rule.py --quick, seed 7), in the eigen-coordinates z = R x of ngp._fourpoint.
Rules compared, each swept over its accuracy parameter until the error (relative to
prod_j <sigma^4>^{1/4}, against the dense tensor Gauss-Hermite reference of four_point_rule.py,
cached by benchmarks/_sparse_refs.py) is <= 1e-9 for both blocks:

* smolyak_gh:   combination technique on (non-nested) Gauss-Hermite rules with 1, 3, 5, 9, 13, 19, ... nodes;
* smolyak_trap: combination technique on nested trapezoidal rules (level 0: the node 0; level l >= 1: step
  2^(1-l), nodes |x| <= 8.5, weights h phi(x));
* tensor_trap:  tensor product of those trapezoidal rules, one level per direction, pruned by weight;
* anisotropic:  ngp._fourpoint.product_expectations (its own nodes count, companion rule included).

Smolyak index sets are the quasi-optimal (anisotropic) ones: a multi-index l is kept when
prod_k e_k(l_k - 1) >= tau, with e_k(l) the one-dimensional error of the level-l rule on the
calibration integrands sigma(s_k (c + x))^p (c in {0.5, 1.5}, p in {1, 2}) at the direction scale
s_k = max_j |R_jk| (ngp._fourpoint._direction_scale), e_k(-1) = 1. Nodes count the union of the rule
and its companion (the next coarser tau, used for the error estimate |Q_tau - Q_coarser|).
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import math
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from _sparse_refs import ACTS, blocks  # noqa: E402
from ngp import _fourpoint as fp  # noqa: E402
from ngp._gaussian import gauss_hermite  # noqa: E402

GH_ORDERS = (1, 3, 5, 9, 13, 19, 27, 39, 55, 79, 111, 157, 221)
TRAP_X = 8.5
TRAP_LEVELS = 9
#: a sweep stops (not reached) when a rule would exceed this many nodes
NODE_CAP = 4_000_000


@functools.lru_cache(maxsize=None)
def rule_1d(family: str, level: int):
    """Nodes and probability weights of the level-``level`` one-dimensional rule."""
    if family == "gh":
        return gauss_hermite(GH_ORDERS[level])
    if level == 0:
        return np.zeros(1), np.ones(1)
    h = 2.0 ** (1 - level)
    k = np.arange(-int(TRAP_X / h), int(TRAP_X / h) + 1)
    x = k * h
    return x, h * np.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)


@functools.lru_cache(maxsize=None)
def trap_rule(h: float, level: int = 1):
    """Trapezoidal rule of step h (level >= 1) or the single node 0 (level 0), |x| <= TRAP_X."""
    if level == 0:
        return np.zeros(1), np.ones(1)
    k = np.arange(-int(TRAP_X / h), int(TRAP_X / h) + 1)
    x = k * h
    return x, h * np.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)


#: trapezoidal steps available to the tuned rules (6% apart)
H_LADDER = tuple(1.2 * 1.06 ** -np.arange(60))


@functools.lru_cache(maxsize=None)
def trap_errors(act_name: str, s: float) -> np.ndarray:
    """Worst relative error of the trapezoid of each step in H_LADDER on sigma(s (c + x))^p."""
    act = ACTS[act_name]()
    xr, wr = gauss_hermite(400)
    out = np.zeros(len(H_LADDER))
    for c in (0.5, 1.5):
        for p in (1, 2):
            f = lambda x: np.asarray(act.fn(jnp.asarray(s * (c + x)))) ** p  # noqa: E731
            ref = float(np.sum(f(xr) * wr))
            norm = math.sqrt(float(np.sum(f(xr) ** 2 * wr)))
            for i, h in enumerate(H_LADDER):
                x, w = trap_rule(h)
                out[i] = max(out[i], abs(float(np.sum(f(x) * w)) - ref) / norm)
    return np.maximum(np.minimum.accumulate(out), 1e-17)


def h_for(act_name, s, tol):
    """Largest ladder step whose one-dimensional error is <= tol (the finest step if none)."""
    e = trap_errors(act_name, s)
    return H_LADDER[int(np.argmax(e <= tol))] if np.any(e <= tol) else H_LADDER[-1]


def max_level(family):
    return len(GH_ORDERS) - 1 if family == "gh" else TRAP_LEVELS


@functools.lru_cache(maxsize=None)
def errors_1d(family: str, act_name: str, s: float) -> np.ndarray:
    """e(l), l = 0..max: worst relative error of the level-l rule on sigma(s (c + x))^p."""
    act = ACTS[act_name]()
    xr, wr = gauss_hermite(400)
    out = np.zeros(max_level(family) + 1)
    for c in (0.5, 1.5):
        for p in (1, 2):
            f = lambda x: np.asarray(act.fn(jnp.asarray(s * (c + x)))) ** p  # noqa: E731
            ref = float(np.sum(f(xr) * wr))
            norm = math.sqrt(float(np.sum(f(xr) ** 2 * wr)))
            for lev in range(max_level(family) + 1):
                x, w = rule_1d(family, lev)
                out[lev] = max(out[lev], abs(float(np.sum(f(x) * w)) - ref) / norm)
    return np.maximum(np.minimum.accumulate(out), 1e-17)


def index_set(e: list, tau: float):
    """Multi-indices l with prod_k e_k(l_k - 1) >= tau (e_k(-1) = 1); downward closed."""
    d = len(e)
    out = []

    def rec(k, prefix, prod):
        if k == d:
            out.append(tuple(prefix))
            return
        for lev in range(len(e[k])):
            p = prod * (1.0 if lev == 0 else e[k][lev - 1])
            if p < tau:
                break
            rec(k + 1, prefix + [lev], p)

    rec(0, [], 1.0)
    return out


def combination(family, idx, cutoff):
    """Distinct nodes (n, d) and weights (n,) of the Smolyak rule on the index set ``idx`` (one family)."""
    fams = [[rule_1d(family, k) for k in range(max(lev[j] for lev in idx) + 1)] for j in range(len(idx[0]))]
    return combination_rules(fams, idx, cutoff, relative=False, grid_bits=20)


def one_d_error(act_name, s, rule):
    act = ACTS[act_name]()
    xr, wr = gauss_hermite(400)
    x, w = rule
    worst = 0.0
    for c in (0.5, 1.5):
        for p in (1, 2):
            f = lambda x: np.asarray(act.fn(jnp.asarray(s * (c + x)))) ** p  # noqa: E731
            ref = float(np.sum(f(xr) * wr))
            worst = max(worst, abs(float(np.sum(f(x) * w)) - ref) / math.sqrt(float(np.sum(f(xr) ** 2 * wr))))
    return worst


def combination_rules(fams, idx, cutoff, *, relative=True, grid_bits=24):
    """Smolyak combination with direction-specific rule families fams[k][l] = (x, w); tensor weights below
    ``cutoff`` (times the largest one of each product rule when ``relative``) are dropped, and nodes equal on a
    grid of ``2**-grid_bits`` merged."""
    S = set(idx)
    d = len(idx[0])
    pts, wts = [], []
    for lev in idx:
        c = sum((-1) ** sum(e) for e in itertools.product((0, 1), repeat=d)
                if tuple(a + b for a, b in zip(lev, e)) in S)
        if c == 0:
            continue
        rules = [fams[k][l] for k, l in enumerate(lev)]
        X = np.stack([g.ravel() for g in np.meshgrid(*[r[0] for r in rules], indexing="ij")], axis=1)
        W = np.prod(np.stack([g.ravel() for g in np.meshgrid(*[r[1] for r in rules], indexing="ij")], axis=1), axis=1)
        keep = W > (cutoff * W.max() if relative else cutoff)
        pts.append(X[keep])
        wts.append(c * W[keep])
    X = np.concatenate(pts)
    W = np.concatenate(wts)
    key = np.round(X * 2.0**grid_bits).astype(np.int64)
    uniq, inv = np.unique(key, axis=0, return_inverse=True)
    w = np.zeros(len(uniq))
    np.add.at(w, inv.ravel(), W)
    nz = w != 0
    return uniq[nz] / 2.0**grid_bits, w[nz]


def tensor(family, levels, cutoff):
    rules = [rule_1d(family, k) for k in levels]
    X = np.stack([g.ravel() for g in np.meshgrid(*[r[0] for r in rules], indexing="ij")], axis=1)
    W = np.prod(np.stack([g.ravel() for g in np.meshgrid(*[r[1] for r in rules], indexing="ij")], axis=1), axis=1)
    keep = W > cutoff
    return X[keep], W[keep]


@functools.lru_cache(maxsize=None)
def _kernel(fn):
    return jax.jit(lambda X, R, w: jnp.sum(jnp.prod(fn(X @ R.T), axis=1) * w))


def evaluate(fn, R, X, w):
    n = X.shape[0]
    chunk = 1 << 16
    total = 0.0
    for i in range(0, n, chunk):
        Xi, wi = X[i:i + chunk], w[i:i + chunk]
        pad = chunk - Xi.shape[0] if n > chunk else (1 << int(np.ceil(np.log2(max(n, 2))))) - n
        Xi = np.concatenate([Xi, np.zeros((pad, Xi.shape[1]))])
        wi = np.concatenate([wi, np.zeros(pad)])
        total += float(_kernel(fn)(jnp.asarray(Xi), jnp.asarray(R), jnp.asarray(wi)))
    return total


def grid_s(s):
    """Direction scale rounded up to ngp._fourpoint's calibration grid (a cache key)."""
    g = np.asarray(fp._S_GRID)
    return float(g[min(np.searchsorted(g, s), g.size - 1)])


def sweep(method, act_name, C, ref, scale, target=1e-9, cutoff_rel=1e-5):
    """Finest-needed parameter: returns dict(nodes, error, estimate, param) at the first setting with
    error <= target (or the last tried)."""
    act = ACTS[act_name]()
    R, _, _ = fp._eig_sqrt(C[None])
    R = R[0]
    s = fp._direction_scale(R[None])[0]
    family = "gh" if method == "smolyak_gh" else "trap"
    e = [errors_1d(family, act_name, grid_s(sk)) for sk in s]
    prev = None
    last = None
    taus = 10.0 ** -np.arange(1.0, 16.01, 0.25)
    for tau in taus:
        if method == "tensor_trap_tuned":
            hs = [h_for(act_name, grid_s(sk), tau) for sk in s]
            rules = [trap_rule(h) for h in hs]
            X = np.stack([g.ravel() for g in np.meshgrid(*[r[0] for r in rules], indexing="ij")], axis=1)
            W = np.prod(np.stack([g.ravel() for g in np.meshgrid(*[r[1] for r in rules], indexing="ij")], axis=1), axis=1)
            keep = W > cutoff_rel * tau * W.max()
            X, w = X[keep], W[keep]
        elif method == "smolyak_trap_tuned":
            # per direction: nested steps hfin * 2^(L - l), hfin tuned to tau, coarsest step >= 1.5
            hs = [h_for(act_name, grid_s(sk), tau) for sk in s]
            fams = []
            for h in hs:
                L = max(1, int(np.ceil(np.log2(1.5 / h))) + 1)
                fams.append([trap_rule(h * 2.0 ** (L - lev), lev) for lev in range(L + 1)])
            errs = []
            for sk, fam in zip(s, fams):
                errs.append(np.maximum(np.minimum.accumulate(np.array([one_d_error(act_name, grid_s(sk), r) for r in fam])), 1e-17))
            X, w = combination_rules(fams, index_set(errs, tau), cutoff_rel * tau)
        elif method == "tensor_trap":
            lev = [int(np.argmax(ek <= tau)) if np.any(ek <= tau) else len(ek) - 1 for ek in e]
            X, w = tensor(family, lev, 1e-14 * tau)
        else:
            X, w = combination(family, index_set(e, tau), 1e-14 * tau)
        if X.shape[0] > NODE_CAP:
            break
        q = evaluate(act.fn, R, X, w)
        if prev is not None:
            if prev[1] is X.shape[0] and prev[0] == q:
                continue
            # union of the rule and its companion
            both = np.unique(np.round(np.concatenate([X, prev[2]]) * 2**24).astype(np.int64), axis=0).shape[0]
            last = dict(param=float(tau), nodes=int(both), nodes_rule=int(X.shape[0]),
                        error=abs(q - ref) / scale, estimate=abs(q - prev[0]) / scale)
            if last["error"] <= target:
                return last
        prev = (q, X.shape[0], X)
    return dict(last or dict(param=None, nodes=0, error=float("inf"), estimate=float("nan")), reached=False)


def anisotropic(act_name, C, ref, scale, rtol=1e-9):
    act = ACTS[act_name]()
    st = {}
    v, e = fp.product_expectations(act, C[None], (1, 1, 1, 1), rtol=rtol, stats=st)
    return dict(nodes=float(st["nodes"][0]), error=abs(float(v[0]) - ref) / scale, estimate=float(e[0]) / scale)


OLD_NODES = {("tanh", 0.3): 3.45e5, ("tanh", 1.0): 7.0e5, ("tanh", 2.0): None}  # four_point_rule.py --quick


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--acts", default="tanh,swish,tanh_plus_square")
    ap.add_argument("--methods", default="smolyak_trap,tensor_trap,smolyak_gh")
    args = ap.parse_args()
    refs = json.load(open(os.path.join(HERE, "results", "sparse_four_point_refs.json")))
    t0 = time.time()
    rows = []
    for (name, K), bl in blocks().items():
        key = f"{name}|{K}"
        if key not in refs or (args.quick and K != 1.0) or name not in args.acts.split(","):
            continue
        for method in args.methods.split(",") + ["anisotropic"]:
            res = []
            for C, ref, sc in zip(bl, refs[key]["values"], refs[key]["holder"]):
                res.append(anisotropic(name, C, ref, sc) if method == "anisotropic" else sweep(method, name, C, ref, sc))
            row = dict(activation=name, K=K, method=method, nodes=float(np.mean([r["nodes"] for r in res])),
                       max_error=max(r["error"] for r in res),
                       estimate_over_error=[r["estimate"] / max(r["error"], 1e-300) for r in res],
                       reached=all(r.get("reached", True) for r in res), per_block=res,
                       old_nodes_equal_accuracy=OLD_NODES.get((name, K)))
            rows.append(row)
            print({k: v for k, v in row.items() if k != "per_block"}, flush=True)
    out = dict(date=time.strftime("%Y-%m-%d"), load_average=os.getloadavg(), wall_s=time.time() - t0, rows=rows,
               reference="dense tensor Gauss-Hermite in eigen-coordinates, 56/80/110 nodes per direction for K=0.3/1/2")
    name = "sparse_four_point_quick.json" if args.quick else "sparse_four_point.json"
    json.dump(out, open(os.path.join(HERE, "results", name), "w"), indent=1)
    print(f"written benchmarks/results/{name} in {out['wall_s']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
