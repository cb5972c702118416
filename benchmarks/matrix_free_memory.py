"""Peak memory of the matrix-free posterior against its training and test sizes and the depth: the measurements behind
``ngp.MatrixFreeConditioned.memory_estimate`` (and so behind ``max_memory`` on that path and ``ngp regress
--max-memory`` there).

Each case runs in a fresh process: the same network and data at 8 training and 2 test points first (JAX's runtime and
the estimator's compiled programs at small shapes: the process's base), then ``ngp.condition(..., method="matrix_free")``
with its evidence and a prediction at ``N_train`` and ``N_test``; the increment of the peak resident memory over the
base is what the estimator's arrays took. Inputs: 5 Gaussian features, tanh, width 256, ``C_W = 1.5``, ``C_b = 0.1``,
noise 0.1, the default 32768 samples; one output unless a case names more (``N_TRAINxN_TESTxDEPTHxOUTPUTS``: the
targets are that many noisy functions of the inputs).

    python benchmarks/matrix_free_memory.py [--cases 400x10x3,800x10x3x16,...] [--out NAME]   # results/NAME.json
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

CASE = r"""
import json, resource, sys, warnings
import jax
jax.config.update("jax_enable_x64", True)
import numpy as np
sys.path.insert(0, sys.argv[5])
import ngp
warnings.simplefilter("ignore")
N, M, depth, outs = (int(a) for a in sys.argv[1:5])
rng = np.random.default_rng(0)
X = rng.normal(size=(N + M, 5))
y = np.sin(X @ rng.normal(size=(5, outs)) / 2) + 0.1 * rng.normal(size=(N + M, outs))
net = ngp.MLP(depth, 256, activation="tanh", C_W=1.5, C_b=0.1, out_dim=outs)
peak = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # bytes (Linux: KiB)
c = ngp.condition(net, X[:8], y[:8], noise=0.1, method="matrix_free")
c.log_evidence, np.asarray(c.predict(X[8:10]).mean)
base = peak()
c = ngp.condition(net, X[:N], y[:N], noise=0.1, method="matrix_free")
c.log_evidence, np.asarray(c.predict(X[N:]).mean)
print(json.dumps({"n_train": N, "n_test": M, "depth": depth, "outputs": outs, "base_bytes": base, "peak_bytes": peak(),
                  "estimate_bytes": c.memory_estimate(M)}))
"""


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", default="250x10x3,500x10x3,1000x10x3,1500x10x3,500x500x3,1000x1000x3,500x10x5,1000x10x5",
                   help="N_TRAINxN_TESTxDEPTH[xOUTPUTS], comma-separated")
    p.add_argument("--out", default="matrix_free_memory")
    args = p.parse_args()
    rows = []
    for case in args.cases.split(","):
        n, m, d, o = (case.split("x") + ["1"])[:4]
        r = subprocess.run([sys.executable, "-c", CASE, n, m, d, o, ROOT], capture_output=True, text=True, check=True)
        row = json.loads(r.stdout.strip().splitlines()[-1])
        row["increment_bytes"] = row["peak_bytes"] - row["base_bytes"]
        # the growth over the first (smallest) case, against the estimate's: the compilation at new shapes and the
        # estimator's other fixed costs cancel
        first = rows[0] if rows else row
        row["growth_bytes"] = row["increment_bytes"] - first["increment_bytes"]
        row["estimate_growth_bytes"] = row["estimate_bytes"] - first["estimate_bytes"]
        rows.append(row)
        print(f"N_train {n:>5} N_test {m:>5} depth {d} outputs {o:>2}: increment {row['increment_bytes'] / 1e9:.3f} GB, growth over "
              f"the first case {row['growth_bytes'] / 1e9:.3f} GB, the estimate's {row['estimate_growth_bytes'] / 1e9:.3f}"
              f" GB (estimate {row['estimate_bytes'] / 1e9:.3f} GB), base {row['base_bytes'] / 1e9:.2f} GB", flush=True)
    out = {"rows": rows, "machine": platform.machine(), "cpus": os.cpu_count(), "load_after": os.getloadavg()}
    path = os.path.join(HERE, "results", f"{args.out}.json")
    with open(path, "w") as f:
        json.dump(out, f, indent=1)
    print(f"written to {path}")


if __name__ == "__main__":
    main()
