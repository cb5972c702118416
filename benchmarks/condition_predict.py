"""Fit once, predict many: the cost of ``ngp.condition(...).predict`` in batches (issue 9).

Task: tanh MLP depth 3 width 64, 8 training inputs in 2-D, noise 0.1, 1000 test inputs.
Measured (warm, medians of repeats, after one warm-up call of each shape):

* ``condition``: the training-set work, done once;
* ``predict`` on all 1000 test points in one call (``batch_size=100`` internally and ``None``);
* the same 1000 points as 10 separate ``predict`` calls on 100 points each;
* the previous release's path for comparison: ``ngp.posterior`` recomputing everything per call.

Goal (issue 9): predicting 1000 test points in batches of 100 costs no more than 1.2x one call
(read both ways: 10 calls of 100 vs one call of 1000, and one batch of 100 vs a standalone call on 100).
Usage: python benchmarks/condition_predict.py [--quick]. Writes benchmarks/results/condition_predict.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import jax

jax.config.update("jax_enable_x64", True)

import numpy as np  # noqa: E402

import ngp  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def timed(fn, repeats):
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times)), out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    NA, NB = (6, 200) if args.quick else (8, 1000)
    XA, XB = rng.normal(size=(NA, 2)), rng.normal(size=(NB, 2))
    Y = np.sin(XA[:, :1]) * 0.5
    net = ngp.MLP(3, 64, activation="tanh", C_W=1.0, C_b=0.1)
    repeats = 1 if args.quick else 3
    chunk = NB // 10

    t_cond, cond = timed(lambda: ngp.condition(net, XA, Y, noise=0.1, warn=False), repeats)
    cond.log_evidence  # noqa: B018 - training-only contractions
    cond.predict(XB, batch_size=chunk)  # warm-up: compile every shape once
    cond.predict(XB[:chunk])
    t_one, one = timed(lambda: cond.predict(XB, batch_size=chunk), repeats)
    t_auto, _ = timed(lambda: cond.predict(XB), repeats)

    def in_calls():
        return [cond.predict(XB[i:i + chunk]) for i in range(0, NB, chunk)]

    t_calls, parts = timed(in_calls, repeats)
    dev = float(np.max(np.abs(np.concatenate([p.mean for p in parts]) - one.mean)))
    t_post, _ = timed(lambda: ngp.posterior(net, XA, Y, XB[:chunk], noise=0.1, warn=False), 1)
    res = {
        "task": f"tanh MLP depth 3 width 64, {NA} train, {NB} test, noise 0.1",
        "machine": f"{platform.node()} ({os.cpu_count()} cpus), jax {jax.__version__}",
        "condition_s": t_cond,
        "predict_all_in_one_call_s": t_one,
        "predict_all_default_batches_s": t_auto,
        "predict_in_10_calls_of_100_s": t_calls,
        "ratio_calls_over_one_call": t_calls / t_one,
        "goal_ratio_at_most": 1.2,
        "met": bool(t_calls / t_one <= 1.2),
        "max_mean_difference": dev,
        "posterior_full_cov_one_call_on_100_s": t_post,
        # the other reading of the goal: one batch of 100 inside predict vs a standalone call on 100
        "per_batch_of_100_s": t_one / (NB // chunk),
        "ratio_per_batch_over_standalone_call_on_100": t_one / (NB // chunk) / t_post,
    }
    for k, v in res.items():
        print(f"{k:40s} {v}")
    out = os.path.join(HERE, "results", "condition_predict" + ("_quick" if args.quick else "") + ".json")
    with open(out, "w") as fh:
        json.dump(res, fh, indent=2)
    print("written", out)


if __name__ == "__main__":
    main()
