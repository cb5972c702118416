"""Feasibility of a four-point error estimate without a companion rule (stop 99; not used by the library).

The smooth rule's estimate (ngp._fourpoint, docs/four-point.md "Error estimate") evaluates a companion rule one
ladder step lower, 0.70-0.76 of the rule's own nodes. This script measures an estimate from the rule's own
evaluations instead: per direction j of the eigen-coordinates, the Hermite coefficients of degree m_j - 1 and
m_j - 2 of the marginal along it (``sum_nodes w p_k(x_j) g``, p_k orthonormal), times a calibrated
one-dimensional ratio of the m-node Gauss-Hermite rule's error to them (the worst over offsets 0-1.5, powers 1
and 2, running maximum over the scale grid), summed over the directions. Blocks: 24 random 4 x 4 covariances per
K in {0.3, 1, 2} (tests/_fourpoint_blocks.random_block, seed 7), pattern (1, 1, 1, 1), the pruned tensor rule
at the engine's first-round orders for the eigen-direction scales (no input split off). Reference: the engine at
rtol 1e-13. Reports per activation and K the rule's error, the estimate, how many blocks it under-states and by
how much, and the companion's difference, all relative to the Hölder scale.

Usage: python benchmarks/four_point_spectral_estimate.py [--activations tanh,erf,gelu,swish] [--out NAME]
(~1-2 min). Writes benchmarks/results/four_point_spectral_estimate.json (or NAME.json).
"""

from __future__ import annotations

import argparse
import math
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)

import numpy as np  # noqa: E402

import ngp  # noqa: E402
from ngp import _fourpoint as fp  # noqa: E402
from tests._fourpoint_blocks import holder, random_block  # noqa: E402

sys.path.insert(0, HERE)
import _kernel_setup  # noqa: E402


def hermite(x, k):
    """The orthonormal probabilists' Hermite polynomial of degree ``k`` at ``x`` (three-term recurrence)."""
    p0, p1 = np.ones_like(x), x.copy()
    if k == 0:
        return p0
    for n in range(1, k):
        p0, p1 = p1, (x * p1 - math.sqrt(n) * p0) / math.sqrt(n + 1)
    return p1


def calibrate(act, offsets=(0.0, 0.25, 0.5, 1.0, 1.5), powers=(1, 2)):
    """``kappa`` (ladder, scale grid): the worst ratio of the m-node rule's error for ``sigma(s (c + x))^p`` to the
    larger of its coefficients of degree m - 1 and m - 2, non-decreasing in the scale."""
    S = np.asarray(fp._S_GRID)
    xr, wr = fp._trapezoid(16001, 12.0)
    # the reference integral and norm of every (scale, offset, power), shared by every ladder rule
    refs = {}
    for si, s in enumerate(S):
        for c in offsets:
            fr = np.asarray(act.fn(s * (c + xr)))
            for p in powers:
                refs[si, c, p] = (fr**p) @ wr, math.sqrt((fr ** (2 * p)) @ wr)
    kappa = np.zeros((len(fp.LADDER), S.size))
    for mi, m in enumerate(fp.LADDER):
        if m < 3 or m > 255:
            continue
        x, w = fp._rule1d(m)
        h1, h2 = w * hermite(x, m - 1), w * hermite(x, m - 2)
        for si, s in enumerate(S):
            worst = 0.0
            for c in offsets:
                f = np.asarray(act.fn(s * (c + x)))
                for p in powers:
                    ref, norm = refs[si, c, p]
                    err = abs((f**p) @ w - ref)
                    if err > 1e-15 * norm:
                        a = max(abs((f**p) @ h1), abs((f**p) @ h2))
                        worst = max(worst, err / max(a, 1e-300 * norm))
            kappa[mi, si] = worst
    return np.maximum.accumulate(kappa, axis=1)


def block(act, C, kappa, rtol=fp.RTOL):
    """The first round's rule on block ``C`` in eigen-coordinates: value, spectral estimate, companion difference,
    nodes of the rule and of the companion."""
    lam, U = np.linalg.eigh(C)
    R = U * np.sqrt(np.clip(lam, 0.0, None))
    s = fp._direction_scale(R[None], None)[0]
    lad = fp._affordable(fp._orders(act, s[None], rtol))[0]
    pos = np.clip(np.searchsorted(np.asarray(fp._S_GRID), s), 0, len(fp._S_GRID) - 1)

    def rule(orders):
        idx, w = fp._tensor_rule(orders, fp._CUTOFF * rtol)
        X = np.stack([fp._rule1d(m)[0][idx[:, j]] for j, m in enumerate(orders)], axis=1)
        return idx, w, np.prod(np.asarray(act.fn(X @ R.T)), axis=1)

    orders = tuple(fp.LADDER[j] for j in lad)
    idx, w, g = rule(orders)
    est = 0.0
    for j, m in enumerate(orders):
        if m >= 3 and s[j] > 0:
            x = fp._rule1d(m)[0]
            a = max(abs((w * g) @ hermite(x, m - 1)[idx[:, j]]), abs((w * g) @ hermite(x, m - 2)[idx[:, j]]))
            est += kappa[lad[j], pos[j]] * a
    _, wc, gc = rule(tuple(fp.LADDER[max(j - 1, 0)] for j in lad))
    return float(g @ w), est, abs(float(g @ w) - float(gc @ wc)), w.size, wc.size


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--activations", default="tanh,erf,gelu,swish")
    ap.add_argument("--out", default="four_point_spectral_estimate")
    args = ap.parse_args()
    rows = []
    for name in args.activations.split(","):
        act = ngp.activation(name)
        kappa = calibrate(act)
        for K in (0.3, 1.0, 2.0):
            rng = np.random.default_rng(7)
            Cs = np.stack([random_block(rng, 4, K) for _ in range(24)])
            ref, _ = fp.product_expectations(act, Cs, (1, 1, 1, 1), rtol=1e-13)
            out = []
            for C, r in zip(Cs, ref):
                q, est, diff, n, nc = block(act, C, kappa)
                sc = holder(act, C, (1, 1, 1, 1))
                out.append((abs(q - r) / sc, est / sc, diff / sc, n, nc))
            a = np.array(out)
            row = dict(activation=name, K=K, blocks=len(out), error_max=a[:, 0].max(), error_median=np.median(a[:, 0]),
                       estimate_median=np.median(a[:, 1]), estimate_max=a[:, 1].max(),
                       under_stated=int(np.sum(a[:, 0] > a[:, 1])),
                       worst_error_over_estimate=float(np.max(a[:, 0] / np.maximum(a[:, 1], 1e-300))),
                       estimate_over_error_median=float(np.median(a[:, 1] / np.maximum(a[:, 0], 1e-300))),
                       companion_difference_median=np.median(a[:, 2]), nodes=a[:, 3].mean(),
                       companion_nodes=a[:, 4].mean())
            row = {k: (float(v) if isinstance(v, (np.floating, float)) else v) for k, v in row.items()}
            rows.append(row)
            print({k: (f"{v:.3g}" if isinstance(v, float) else v) for k, v in row.items()}, flush=True)
    root = os.path.dirname(HERE)
    _kernel_setup.write_json(os.path.join(HERE, "results", f"{args.out}.json"),
                             {**_kernel_setup.ngp_revision(root), "rows": rows})
    print(f"written benchmarks/results/{args.out}.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
