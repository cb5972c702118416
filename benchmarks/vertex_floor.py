"""Issue 10's goal "V for N = 64 inputs, depth 6, tanh, under 60 s": a floor for the current four-point rule.

Usage: python benchmarks/vertex_floor.py [--sample 1500] [--out vertex_floor].
Writes benchmarks/results/<--out>.json.

The network and inputs of ``vertex_depth6.py``: ``ngp.MLP(6, 64, activation="tanh", C_W=1.0, C_b=0.1)`` on 64
standard Gaussian inputs of dimension 4. ``V`` of the output needs the four-point tables of the pre-activation
kernels of layers 1-5. For each, a seeded sample of ``--sample`` multisets of four distinct inputs (635,376 of the
766,480 multisets per layer; the others cost less) goes through the default rule
(``ngp._fourpoint.multiset_expectations``, warm), recording

* nodes per multiset as run (the fine rule and its companion, over the refinement rounds) and warm seconds;
* nodes of the final fine rule alone (pruned tensor rule; no companion, no refinement, no table): what this rule
  family evaluates for the accuracy it reaches;
* the true error (against the same rule at ``rtol = 1e-13``), relative to the Hoelder scale, next to the
  tolerance ``1e-9``.
* the rows whose error estimate (``V_error``'s per-entry estimate) is below their true error: how many, by how much
  at worst, and the largest true error among them.

Then the throughput of the kernel's inner loop alone: 16 x 16 tiles of three tanh factors by the exponential
split (its ratio form since stop 70), weighted and summed (no gathers, tables or host work), 16 calls of the
library's largest shape in flight as it dispatches them;
measured before and after the layers (the machine is shared), the better of the two counts. The floor is the sum
over the layers of 635,376 x (fine-rule nodes) / that throughput: the four-distinct multisets' time if every node
were needed and cost only the inner loop.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from math import comb

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import ngp  # noqa: E402
from ngp import _fourpoint as fp  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import _kernel_setup  # noqa: E402  (the results file)
N = 64
DISTINCT = comb(N, 4)  # multisets of four distinct inputs per layer


def kernel_rate(act, tiles: int = fp._TILES_LARGE, calls: int = 16, repeats: int = 5) -> float:
    """Nodes per second of the inner loop (three split factors per node, 16 x 16 tiles; the split's ratio form,
    one division per node, where the activation has one, as the library's kernel), calls in flight."""
    kappa, h = act.exp_split
    ratio = act.exp_ratio
    rng = np.random.default_rng(0)
    A = jnp.asarray(rng.normal(size=(3, tiles, 16)) * 0.3)
    B = jnp.asarray(rng.normal(size=(3, tiles, 16)) * 0.3)
    P = jnp.asarray(rng.random((tiles, 16)))
    W = jnp.asarray(rng.random((tiles, 16)))

    @jax.jit
    def inner(A, B, P, W):
        num = den = 1.0
        for j in range(3):
            y = jnp.exp(kappa * A[j])[:, :, None] * jnp.exp(kappa * B[j])[:, None, :]
            if ratio is None:
                num = num * h(y)
            else:
                num, den = num * ratio[0](y), den * ratio[1](y)
        return jnp.einsum("tpm,tp,tm->t", num / den, P, W)

    inner(A, B, P, W).block_until_ready()
    best = np.inf
    for _ in range(repeats):
        t = time.perf_counter()
        out = [inner(A, B, P, W) for _ in range(calls)]
        jax.block_until_ready(out)
        best = min(best, time.perf_counter() - t)
    return calls * tiles * 256 / best


def layer_row(act, K, sample: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    ms = np.sort(np.array([rng.choice(N, 4, replace=False) for _ in range(sample)]), axis=1)
    C = K[ms[:, :, None], ms[:, None, :]]
    fp.multiset_expectations(act, K, ms)  # warm: compilations and cached rules
    stats = {}
    t = time.perf_counter()
    val, err = fp.multiset_expectations(act, K, ms, stats=stats)
    seconds = time.perf_counter() - t
    (part,) = fp._smooth_joint(act, [(C, (1, 1, 1, 1))], rtol=fp.RTOL)
    cutoff = fp._CUTOFF * fp.RTOL
    sizes = {}
    fine = np.array([sizes.setdefault(o, fp._tensor_rule(o, cutoff)[1].size)
                     for o in (tuple(fp.LADDER[j] for j in row) for row in part.lad)], dtype=float)
    ref, _ = fp.multiset_expectations(act, K, ms, rtol=1e-13)
    scale = fp._holder_scale(act, C, (1, 1, 1, 1))
    true = np.abs(val - ref) / scale
    under = true > err / scale  # rows whose estimate is below their true error
    return {"rows_true_above_estimate": int(under.sum()),
            "worst_estimate_over_true": float(np.min(err[under] / scale[under] / true[under], initial=np.inf)),
            "true_error_max_of_those": float(np.max(true[under], initial=0.0)),
            "K_diag_max": float(np.diag(K).max()), "K_diag_min": float(np.diag(K).min()),
            "nodes_as_run_mean": float(stats["nodes"].mean()), "fine_nodes_mean": float(fine.mean()),
            "seconds_per_multiset": seconds / sample, "true_error_max": float(true.max()),
            "true_error_median": float(np.median(true)), "estimate_max": float(np.max(err / scale))}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sample", type=int, default=1500)
    ap.add_argument("--out", default="vertex_floor")
    args = ap.parse_args()
    load = os.getloadavg()
    X = np.random.default_rng(0).normal(size=(N, 4))
    net = ngp.MLP(6, 64, activation="tanh", C_W=1.0, C_b=0.1)
    prior = net.prior(X, warn=False)
    act = ngp.activation("tanh")
    rate_before = kernel_rate(act)
    rows = []
    print(f"{'layer':>5} {'K diag':>11} {'nodes as run':>12} {'fine nodes':>10} {'ms/multiset':>11} "
          f"{'true err max':>12} {'median':>8}")
    for layer, L in enumerate(prior.layers[:5], start=1):
        r = {"layer": layer, **layer_row(act, np.asarray(L.K), args.sample, seed=layer)}
        rows.append(r)
        print(f"{layer:>5} {r['K_diag_min']:.2f}-{r['K_diag_max']:.2f} {r['nodes_as_run_mean']:>12.0f} "
              f"{r['fine_nodes_mean']:>10.0f} {1e3 * r['seconds_per_multiset']:>11.4f} {r['true_error_max']:>12.1e} "
              f"{r['true_error_median']:>8.1e}", flush=True)
        print(f"      estimate below the true error in {r['rows_true_above_estimate']} of {args.sample} rows (at worst "
              f"{r['worst_estimate_over_true']:.2g} of it; those errors at most {r['true_error_max_of_those']:.1e})",
              flush=True)
    rate_after = kernel_rate(act)
    rate = max(rate_before, rate_after)
    as_run = sum(r["seconds_per_multiset"] for r in rows) * DISTINCT
    floor = sum(r["fine_nodes_mean"] for r in rows) * DISTINCT / rate
    print(f"inner loop: {rate_before:.3g} / {rate_after:.3g} nodes/s before / after; four-distinct multisets at "
          f"N = 64: as run {as_run:.0f} s (warm, sampled), floor {floor:.0f} s (goal 60 s for all of V)")
    out = {"machine": platform.platform(), "cpus": os.cpu_count(), "load_before": load, "argv": sys.argv[1:],
           "date": time.strftime("%Y-%m-%d %H:%M"), "N": N, "distinct_multisets_per_layer": DISTINCT,
           "rtol": fp.RTOL, "rows": rows, "inner_loop_nodes_per_s": rate,
           "inner_loop_before_after": [rate_before, rate_after], "as_run_s": as_run, "floor_s": floor,
           "goal_s": 60.0}
    return _kernel_setup.write_result(args.out, out)


if __name__ == "__main__":
    raise SystemExit(main())
