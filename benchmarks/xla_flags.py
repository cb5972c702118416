"""XLA:CPU compile settings against cold and warm work (docs/getting-started.md, "Compilation time").

    python benchmarks/xla_flags.py [--rounds 2] [--out NAME]

Each setting of ``XLA_FLAGS`` (XLA's defaults, LLVM optimisation level 1 as the ``ngp`` command line uses,
the legacy emitters, both as the test suite uses) runs the same script in a fresh subprocess: a cold
``prior(X).V`` (tanh, depth 3, width 64, 8 inputs) then the same at shifted inputs (warm), and a cold
``ngp.condition`` + ``predict`` of 12 training and 20 test points then two warm predictions. The settings
alternate over ``--rounds`` rounds (the machine is shared and drifts: compare within a round). Records whether
every setting gives the same bytes (a sha256 over V and the predictive mean and variance) and the largest
relative difference of the predictive means and variances between settings; results in
``benchmarks/results/NAME.json`` (default ``xla_flags``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
ROOT = os.path.dirname(HERE)

import _kernel_setup  # noqa: E402  (NumPy only: the machine and commit records)

SETTINGS = {
    "defaults": "--xla_cpu_use_fusion_emitters=true --xla_backend_optimization_level=2",
    "level 1": "--xla_cpu_use_fusion_emitters=true --xla_backend_optimization_level=1",
    "legacy emitters": "--xla_cpu_use_fusion_emitters=false --xla_backend_optimization_level=2",
    "both (test suite)": "--xla_cpu_use_fusion_emitters=false --xla_backend_optimization_level=1",
}

WORK = r"""
import hashlib, json, time, warnings
import jax, numpy as np
jax.config.update("jax_enable_x64", True)
import ngp
warnings.simplefilter("ignore")
rng = np.random.default_rng(0)
net = ngp.MLP(depth=3, width=64, activation="tanh")
out, h = {}, hashlib.sha256()
X = rng.normal(size=(8, 2))
for tag, Xi in (("V_cold_s", X), ("V_warm_s", X + 1e-3)):
    t = time.perf_counter(); V = np.asarray(net.prior(Xi).V); out[tag] = round(time.perf_counter() - t, 2)
    h.update(V.tobytes())
    out[tag.replace("_s", "")] = [float(V.sum()), float(np.abs(V).max())]
Xtr, Xte = rng.normal(size=(12, 4)), rng.normal(size=(20, 4))
t = time.perf_counter()
c = ngp.condition(net, Xtr, np.sin(Xtr[:, :1]), noise=0.1)
p = c.predict(Xte); np.asarray(p.mean)
out["predict_cold_s"] = round(time.perf_counter() - t, 2)
warm = []
for shift in (1e-3, 2e-3):
    t = time.perf_counter(); p = c.predict(Xte + shift); np.asarray(p.mean); warm.append(round(time.perf_counter() - t, 2))
    h.update(np.asarray(p.mean).tobytes()); h.update(np.asarray(p.var).tobytes())
out["predict_warm_s"] = warm
out["mean"] = np.asarray(p.mean).ravel().tolist()
out["var"] = np.asarray(p.var).ravel().tolist()
out["sha256"] = h.hexdigest()
print(json.dumps(out))
"""


def run(flags: str) -> dict:
    env = {**os.environ, "XLA_FLAGS": flags, "PYTHONPATH": ROOT}
    load = [round(x, 1) for x in os.getloadavg()]
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", WORK], env=env, capture_output=True, text=True, timeout=1800)
    if proc.returncode != 0:
        raise RuntimeError(f"XLA_FLAGS={flags!r}: exit {proc.returncode}\n{proc.stderr[-2000:]}")
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    r["process_s"] = round(time.perf_counter() - t0, 1)
    r["load_before"] = load
    return r


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--out", default="xla_flags")
    args = p.parse_args()
    names = list(SETTINGS)
    runs = []
    for k in range(args.rounds):
        order = names if k % 2 == 0 else names[::-1]  # alternate: drift does not favour one setting
        for name in order:
            r = {"round": k, "setting": name, "XLA_FLAGS": SETTINGS[name], **run(SETTINGS[name])}
            print(json.dumps(r), flush=True)
            runs.append(r)
    digests = {r["sha256"] for r in runs}
    ref = runs[0]
    spread = max(max(abs(a - b) / max(abs(b), 1e-300) for a, b in zip(r[k], ref[k]))
                 for r in runs for k in ("mean", "var"))
    result = {"machine": _kernel_setup.machine(), **_kernel_setup.ngp_revision(), "runs": runs,
              "bitwise_identical": len(digests) == 1, "max_relative_difference_mean_var": spread}
    path = os.path.join(HERE, "results", f"{args.out}.json")
    with open(path, "w") as f:
        json.dump(result, f, indent=1)
    print(f"bitwise identical across settings: {len(digests) == 1}; largest relative difference of the "
          f"predictive means and variances {spread:.1e}; written to {path}")


if __name__ == "__main__":
    main()
