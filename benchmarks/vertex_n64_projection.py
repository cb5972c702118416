"""Issue 10 goal "V for N = 64 inputs, depth 6, tanh, under 60 s": a projection from a sample.

Usage: python benchmarks/vertex_n64_projection.py [--sample 24]. Writes
benchmarks/results/vertex_n64_projection.json.

For each of the 5 hidden layers' kernels of ``ngp.MLP(6, 64, activation="tanh", C_W=1.0, C_b=0.1)`` on
64 Gaussian inputs (dimension 4), a random sample of four-distinct-input and three-distinct-input
multisets goes through the engine's entry point ``ngp._finite.four_point_values`` (fixed-rule fast path
where the calibration allows, else the error-estimated rule; compilation excluded by a warm-up call),
giving time per multiset, the fast-path fraction, and activation evaluations per multiset against the
old fixed rule (345,248 pruned nodes x 4 evaluations for four distinct inputs). The projection
multiplies by the 635,376 + 3 x 39,711 such multisets per layer (the 2-distinct-input ones are
negligible). It is a projection, not a full run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)

import numpy as np  # noqa: E402

import ngp  # noqa: E402
from ngp._finite import FOUR_POINT_ORDERS, four_point_values  # noqa: E402
from ngp._gaussian import pruned_tensor_rule  # noqa: E402
from ngp._fourpoint import fixed_rule_split, multiset_expectations  # noqa: E402

COUNTS = {4: 635376, 3: 3 * 39711}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sample", type=int, default=24)
    args = ap.parse_args()
    t_start = time.time()
    N, depth = 64, 6
    X = np.random.default_rng(0).normal(size=(N, 4))
    net = ngp.MLP(depth, 64, activation="tanh", C_W=1.0, C_b=0.1)
    Ks = [np.asarray(k) for k in net.prior(X, warn=False).kernels][: depth - 1]
    act = ngp.activation("tanh")
    rng = np.random.default_rng(1)
    old_nodes4 = pruned_tensor_rule(4, FOUR_POINT_ORDERS[4])[1].size
    old_nodes3 = pruned_tensor_rule(3, FOUR_POINT_ORDERS[3])[1].size
    layers = []
    for l, K in enumerate(Ks, start=1):
        row = dict(layer=l, K_max=float(np.max(np.diag(K))), K_min=float(np.min(np.diag(K))))
        for u in (4, 3):
            idx = np.sort(np.stack([rng.choice(N, u, replace=False) for _ in range(args.sample)]), axis=1)
            ms = idx if u == 4 else idx[:, [0, 0, 1, 2]]
            four_point_values(act, K, ms[:2])  # warm-up (compilation)
            t0 = time.perf_counter()
            vals, errs = four_point_values(act, K, ms, errors=True)
            dt = (time.perf_counter() - t0) / ms.shape[0]
            fast, _ = fixed_rule_split(act, K, ms, FOUR_POINT_ORDERS)
            st = {}
            if (~fast).any():
                multiset_expectations(act, K, ms[~fast], stats=st)
            old_ev = (old_nodes4 if u == 4 else old_nodes3) * u
            ev = np.zeros(ms.shape[0])
            ev[fast] = old_ev
            if (~fast).any():
                ev[~fast] = st["evaluations"]
            row[f"u{u}"] = dict(s_per_multiset=dt, fast_fraction=float(fast.mean()),
                                evaluations_mean=float(ev.mean()), old_evaluations=old_ev,
                                evaluation_ratio_old_over_new=float(old_ev / ev.mean()),
                                max_rel_error_estimate=float(np.max(errs / np.maximum(np.abs(np.asarray(vals)), 1e-300))),
                                projected_s=dt * COUNTS[u])
        row["projected_s"] = row["u4"]["projected_s"] + row["u3"]["projected_s"]
        layers.append(row)
        print(json.dumps(row), flush=True)
    out = dict(N=N, depth=depth, sample=args.sample, layers=layers,
               projected_total_s=sum(r["projected_s"] for r in layers), goal_s=60,
               machine=platform.node(), cpus=os.cpu_count(), load=os.getloadavg(), wall_s=time.time() - t_start)
    print(f"projected total {out['projected_total_s']:.0f} s (goal 60 s)")
    os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
    with open(os.path.join(HERE, "results", "vertex_n64_projection.json"), "w") as fh:
        json.dump(out, fh, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
