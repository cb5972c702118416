"""Matrix-free ``predict`` in batches when the last batch is shorter: one compiled shape or two.

Task: tanh MLP depth 3 width 64, 16 training and 100 test inputs in 3-D, noise 0.1, 512 samples,
``ngp.condition(..., method="matrix_free").predict(X_test, batch_size=b)`` in a fresh process (compilation
included, as a script or ``ngp regress`` pays it): ``b = 32`` (three batches of 32 and a last one of 4) and
``b = 25`` (four batches of 25, one shape) for reference. With ``--other DIR`` the same runs alternate with the code
in ``DIR`` (e.g. a ``git worktree`` of an older commit), so both see the same machine load.

Usage: python benchmarks/mf_last_batch.py [--other DIR] [--rounds 2] [--out NAME].
Writes benchmarks/results/NAME.json (default mf_last_batch).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

TASK = r"""
import json, sys, time, warnings
import jax
jax.config.update("jax_enable_x64", True)
import numpy as np
import ngp
warnings.simplefilter("ignore")
NA, NB, bs = 16, 100, int(sys.argv[1])
X = np.random.default_rng(0).normal(size=(NA + NB, 3))
net = ngp.MLP(3, 64, activation="tanh")
t0 = time.perf_counter()
cond = ngp.condition(net, X[:NA], np.sin(X[:NA, :1]), noise=0.1, method="matrix_free", samples=512)
post = cond.predict(X[NA:], batch_size=bs)
print(json.dumps({"seconds": time.perf_counter() - t0, "mean0": float(post.mean[-1, 0]), "ngp": ngp.__file__}))
"""


def run(tree: str, batch: int) -> dict:
    env = dict(os.environ, PYTHONPATH=tree)
    out = subprocess.run([sys.executable, "-c", TASK, str(batch)], env=env, capture_output=True, text=True,
                         check=True, cwd=tree)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--other", help="a source tree to alternate with (its ngp/ is imported)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", default="mf_last_batch")
    args = ap.parse_args()
    trees = {"current": ROOT} | ({"other": os.path.abspath(args.other)} if args.other else {})
    rows, load = [], os.getloadavg()
    for r in range(args.rounds):
        for name, tree in trees.items():
            for batch in (32, 25):
                got = run(tree, batch)
                rows.append({"round": r, "code": name, "batch_size": batch, **got})
                print(f"round {r} {name:8s} batch_size {batch}: {got['seconds']:.2f} s "
                      f"(last mean {got['mean0']:.15g})", flush=True)
    res = {"task": "tanh depth 3 width 64, 16 train x 100 test, samples 512, fresh process",
           "trees": trees, "rows": rows, "load_before": load, "machine": platform.machine(),
           "cpus": os.cpu_count()}
    os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
    with open(os.path.join(HERE, "results", f"{args.out}.json"), "w") as f:
        json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
