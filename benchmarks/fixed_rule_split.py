"""Four-point rule choice for small priors: the fixed-rule split against the anisotropic rule alone.

``ngp._finite.four_point_values`` keeps rows that the fixed tensor Gauss-Hermite rule already computes
to ``rtol / 10`` on that rule (``ngp._fourpoint.fixed_rule_split``), only for the patterns without an
input of power 1, (2, 2) and (4,), and never for activations with a closed-form ``smoothed`` (erf,
gelu) (docs/four-point.md, "Which rule runs when"). This script times warm ``net.prior(X).V`` (depth 3,
width 32) with that split (forced for erf and gelu too) and with the anisotropic rule alone, in one
process, alternating, and reports the largest difference of ``V`` and both error estimates.

    python benchmarks/fixed_rule_split.py      # a few minutes; writes results/fixed_rule_split.json
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time

import jax

jax.config.update("jax_enable_x64", True)
import numpy as np  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import ngp  # noqa: E402
from ngp import _finite, _fourpoint  # noqa: E402

CASES = (("tanh", 1.5, 1.0, 8), ("tanh", 1.0, 0.5, 8), ("erf", 1.0, 0.5, 8), ("gelu", 1.5, 1.0, 8),
         ("tanh", 1.0, 0.5, 16))


def _split_always(act, K, ms, orders, *, rtol=_fourpoint.RTOL):
    """The split without the ``smoothed`` exemption (what ran before)."""
    return _fourpoint.fixed_rule_split(dataclasses.replace(act, smoothed=None), K, ms, orders, rtol=rtol)


def _never(act, K, ms, orders, *, rtol=_fourpoint.RTOL):
    return np.zeros(len(ms), bool), np.full(len(ms), np.inf)


def main():
    rng = np.random.default_rng(0)
    rows = []
    for act, cw, scale, N in CASES:
        X = scale * rng.normal(size=(N, 3))
        net = ngp.MLP(3, 32, activation=act, C_W=cw, C_b=0.1)
        res = {}
        for mode in ("split", "anisotropic", "split", "anisotropic"):  # second pass is warm
            _finite.fixed_rule_split = _split_always if mode == "split" else _never
            t = time.perf_counter()
            p = net.prior(X, warn=False)
            V = np.asarray(p.V)
            res[mode] = (time.perf_counter() - t, V, float(np.max(p.V_error)))
        _finite.fixed_rule_split = _fourpoint.fixed_rule_split
        row = dict(activation=act, C_W=cw, input_scale=scale, N=N, warm_split_s=res["split"][0],
                   warm_anisotropic_s=res["anisotropic"][0],
                   max_abs_dV=float(np.max(np.abs(res["split"][1] - res["anisotropic"][1]))),
                   max_V=float(np.max(np.abs(res["split"][1]))), V_error_split=res["split"][2],
                   V_error_anisotropic=res["anisotropic"][2])
        rows.append(row)
        print(json.dumps(row), flush=True)
    out = dict(rows=rows, load_average=os.getloadavg(), jax=jax.__version__)
    path = os.path.join(ROOT, "benchmarks", "results", "fixed_rule_split.json")
    with open(path, "w") as f:
        json.dump(out, f, indent=1)
    print("wrote", path)


if __name__ == "__main__":
    main()
