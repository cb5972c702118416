"""A conditioned model saved with pickle and predicted from in a new process, against conditioning there again.

Task (the ``posterior_scaling.py`` network): tanh MLP depth 3 width 64, 2-D standard-normal inputs, targets
``sin(1.3 x1) + 0.3 x2``, noise 0.1, exact path. For each ``N_train``, in fresh processes (compilation included):

* ``condition``: ``ngp.condition(...)``, its ``log_evidence`` (the training block), pickled to a file, then
  ``predict`` at ``N_test`` test points (this process's total is what a new process pays without the file);
* ``load``: the file unpickled and the same ``predict``;

with the file's size and the largest difference between the two predictions (means, variances). The rounds
alternate the two processes, so both see the same machine load.

Usage: python benchmarks/conditioned_pickle.py [--sizes 16,32] [--n-test 20] [--rounds 2] [--out NAME].
Writes benchmarks/results/NAME.json (default conditioned_pickle).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

TASK = r"""
import json, pickle, sys, time, warnings
import jax
jax.config.update("jax_enable_x64", True)
import numpy as np
mode, path, NA, NB, root = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
sys.path.insert(0, root)
import ngp
warnings.simplefilter("ignore")
rng = np.random.default_rng(0)
XA, XB = rng.normal(size=(NA, 2)), rng.normal(size=(NB, 2))
YA = np.sin(1.3 * XA[:, :1]) + 0.3 * XA[:, 1:]
t0 = time.perf_counter()
if mode == "condition":
    cond = ngp.condition(ngp.MLP(3, 64, activation="tanh"), XA, YA, noise=0.1)
    cond.log_evidence
    with open(path, "wb") as f:
        pickle.dump(cond, f)
else:
    with open(path, "rb") as f:
        cond = pickle.load(f)
t1 = time.perf_counter()
post = cond.predict(XB)
mean, var = np.asarray(post.mean), np.asarray(post.var)
t2 = time.perf_counter()
print(json.dumps({"seconds": t2 - t0, "before_predict_s": t1 - t0, "predict_s": t2 - t1,
                  "mean": mean.ravel().tolist(), "var": var.ravel().tolist()}))
"""


def _run(mode: str, path: str, n_train: int, n_test: int) -> dict:
    r = subprocess.run([sys.executable, "-c", TASK, mode, path, str(n_train), str(n_test), ROOT],
                       capture_output=True, text=True, timeout=3600)
    if r.returncode:
        raise RuntimeError(r.stderr[-2000:])
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="16,32", help="training-set sizes")
    ap.add_argument("--n-test", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--out", default="conditioned_pickle")
    args = ap.parse_args()
    rows = []
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        for n_train in [int(s) for s in args.sizes.split(",")]:
            path = os.path.join(tmp, f"cond{n_train}.pkl")
            for rnd in range(args.rounds):
                a = _run("condition", path, n_train, args.n_test)
                b = _run("load", path, n_train, args.n_test)
                diff = max(max(abs(x - y) for x, y in zip(a[k], b[k])) for k in ("mean", "var"))
                row = {"N_train": n_train, "N_test": args.n_test, "round": rnd,
                       "condition_process_s": a["seconds"], "condition_s": a["before_predict_s"],
                       "condition_predict_s": a["predict_s"], "load_process_s": b["seconds"],
                       "load_s": b["before_predict_s"], "load_predict_s": b["predict_s"],
                       "file_mb": os.path.getsize(path) / 1e6, "max_abs_diff": diff}
                rows.append(row)
                print(f"N_train {n_train:3d} round {rnd}: condition + predict {a['seconds']:7.2f} s "
                      f"(condition {a['before_predict_s']:.2f}); load + predict {b['seconds']:7.2f} s "
                      f"(load {b['before_predict_s']:.2f}); file {row['file_mb']:.1f} MB; max |diff| {diff:.1e}",
                      flush=True)
    out = {"machine": platform.platform(), "cpus": os.cpu_count(), "load_before": load_before,
           "load_after": os.getloadavg(), "rows": rows}
    path = os.path.join(HERE, "results", args.out + ".json")
    with open(path, "w") as f:
        json.dump(out, f, indent=1)
    print("wrote", path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
