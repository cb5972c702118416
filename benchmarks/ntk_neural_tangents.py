"""Infinite-width NTK: ngp (ngp._ntk) against neural-tangents' closed-form ``ntk``.

neural-tangents 0.6.5 needs an old JAX, so it runs in a side venv (see benchmarks/README.md):

    /tmp/ntvenv/bin/python benchmarks/ntk_neural_tangents.py [--ngp-python python3]

The script computes neural-tangents' NTK of ``stax.serial(Dense, act, Dense, act, Dense)`` (NTK
parameterisation, ``W_std = sqrt(C_W)``, ``b_std = sqrt(C_b)``) for relu and erf, then runs itself
with ``--ngp`` under the interpreter that has ngp (modern JAX) to compute ngp's ``Theta`` with
learning rates ``lambda_W = C_W``, ``lambda_b = C_b`` (the same NTK: in neural-tangents' NTK
parameterisation the trainable weights are standard normal, so d z / d w = W_std x / sqrt(fan_in)),
and writes benchmarks/results/ntk_neural_tangents.json with the largest differences.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
CONFIGS = [("relu", 2.0, 0.1, 4), ("erf", 1.5, 0.2, 4), ("relu", 1.7, 0.0, 2)]


def inputs():
    import numpy as np

    return np.random.default_rng(0).normal(size=(12, 5))


def run_nt(path):
    import jax

    jax.config.update("jax_enable_x64", True)
    import numpy as np
    from neural_tangents import stax

    X = inputs()
    out = {"neural_tangents": __import__("neural_tangents").__version__, "jax_nt": jax.__version__, "configs": []}
    for act, C_W, C_b, depth in CONFIGS:
        layers = []
        for _ in range(depth - 1):
            layers += [stax.Dense(1, W_std=C_W**0.5, b_std=C_b**0.5), {"relu": stax.Relu(), "erf": stax.Erf()}[act]]
        layers.append(stax.Dense(1, W_std=C_W**0.5, b_std=C_b**0.5))
        _, _, kernel_fn = stax.serial(*layers)
        k = kernel_fn(X, X, ("nngp", "ntk"))
        out["configs"].append({"act": act, "C_W": C_W, "C_b": C_b, "depth": depth,
                               "nngp": np.asarray(k.nngp).tolist(), "ntk": np.asarray(k.ntk).tolist()})
    with open(path, "w") as fh:
        json.dump(out, fh)


def run_ngp(path):
    import jax

    jax.config.update("jax_enable_x64", True)
    import numpy as np

    sys.path.insert(0, ROOT)
    import ngp
    from ngp import _ntk

    with open(path) as fh:
        data = json.load(fh)
    X = inputs()
    for cfg in data["configs"]:
        st = _ntk.flow(X, ngp.activation(cfg["act"]), depth=cfg["depth"], finite=False, C_W=cfg["C_W"],
                       C_b=cfg["C_b"], lam_W=cfg["C_W"], lam_b=cfg["C_b"])[-1]
        cfg["max_abs_diff_ntk"] = float(np.abs(st.Theta - np.asarray(cfg["ntk"])).max())
        cfg["max_abs_diff_nngp"] = float(np.abs(st.K - np.asarray(cfg["nngp"])).max())
        cfg["max_abs_ntk"] = float(np.abs(st.Theta).max())
        del cfg["ntk"], cfg["nngp"]
        print(cfg, flush=True)
    data["ngp_jax"] = jax.__version__
    with open(os.path.join(HERE, "results", "ntk_neural_tangents.json"), "w") as fh:
        json.dump(data, fh, indent=1)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ngp", metavar="FILE", help=argparse.SUPPRESS)
    ap.add_argument("--ngp-python", default=os.environ.get("NGP_PYTHON", "python3"))
    args = ap.parse_args()
    if args.ngp:
        run_ngp(args.ngp)
        return
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "nt.json")
        run_nt(path)
        subprocess.run([args.ngp_python, os.path.abspath(__file__), "--ngp", path], check=True, cwd=ROOT)


if __name__ == "__main__":
    main()
