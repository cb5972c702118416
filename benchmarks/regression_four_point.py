"""How far the new four-point rule moves the previous release's numbers (tests/test_regression.py).

Usage: python benchmarks/regression_four_point.py. Writes benchmarks/results/regression_four_point.json:
for every regression configuration, the max relative deviation (relative to the max |entry|) of each
V-dependent quantity between the stored release numbers and the current default, and the current
default's own estimated error (prior.V_error), which shows which of the two is accurate.
"""

from __future__ import annotations

import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)

import numpy as np  # noqa: E402

import ngp  # noqa: E402
from tests import test_regression as T  # noqa: E402


def dev(a, b):
    a, b = np.asarray(a, float), np.asarray(b, float)
    return float(np.max(np.abs(a - b)) / max(float(np.max(np.abs(b))), 1e-300))


def main():
    with np.load(T.DATA) as f:
        ref = dict(f)
    rng = np.random.default_rng(20261130)  # as the fixture tests/test_regression.py::inputs
    X4 = rng.normal(size=(4, 3))
    X5 = rng.normal(size=(5, 2)) * 0.8
    XB = rng.normal(size=(2, 3))
    YA = rng.normal(size=(3, 2)) * 0.5
    inputs = dict(X4=X4, X5=X5, Xdup=np.concatenate([X4[:3], X4[1:2]]), XA=X4[:3], XB=XB, YA=YA)
    out = {}
    for name, make in sorted(T.PRIORS.items()):
        p = make().prior(inputs[T.INPUTS.get(name, "X4")], warn=False)
        row = {"K1": dev(p.K1, ref[f"{name}/K1"]), "V": dev(p.V, ref[f"{name}/V"]),
               "eps": dev(p.expansion_parameter, ref[f"{name}/eps"]),
               "V_error_rel": float(np.nanmax(p.V_error) / np.max(np.abs(p.V)))}
        for lay in p.layers:
            row[f"layer{lay.index}/K1"] = dev(lay.K1, ref[f"{name}/layer{lay.index}/K1"])
            row[f"layer{lay.index}/V"] = dev(lay.V_packed, ref[f"{name}/layer{lay.index}/V_packed"])
        out[name] = row
        print(name, row, flush=True)
    for name, (make, noise) in sorted(T.POSTERIORS.items()):
        fw = ngp.posterior(make(), inputs["XA"], inputs["YA"], inputs["XB"], noise=noise)
        row = {f: dev(getattr(fw, f), ref[f"{name}/{f}"]) for f in ("mean", "var", "cov", "log_evidence",
                                                                     "expansion_parameter")
               if f != "expansion_parameter"}
        row["eps"] = dev(fw.expansion_parameter, ref[f"{name}/eps"])
        out[name] = row
        print(name, row, flush=True)
    g = ngp.evidence_grid(inputs["XA"], inputs["YA"], widths=[8, 32], depths=[2, 3], C_W=[1.0, 1.5], C_b=0.1,
                          noise=0.1)
    out["grid"] = {"logz": dev([r["log_evidence"] for r in g.rows], ref["grid/logz"]),
                   "eps": dev([r["expansion_parameter"] for r in g.rows], ref["grid/eps"])}
    print("grid", out["grid"], flush=True)
    os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
    with open(os.path.join(HERE, "results", "regression_four_point.json"), "w") as fh:
        json.dump(out, fh, indent=1)


if __name__ == "__main__":
    main()
