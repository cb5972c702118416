"""Why the quick scaling validation missed the NTK-change exponent (issue 13): seed noise.

Per strategy (ntk, family(0.25), family(0.5), standard at 1 step / lr 1e-6), tanh MLPs of depth 3
at widths 128..2048 with 16 seeds (``ngp.scaling._coordinate_runs``):

* the per-network NTK change ``||H(t) - H(0)||_F`` (mean, seed spread, fitted exponent and its
  standard error), which is what ``predicted_exponents().ntk_change`` counts;
* its split (stable members) into the ensemble mean ``||E[H(t) - H(0)]||`` (estimated from the seed mean; its noise
  floor is ``rms / sqrt(seeds)``) and the zero-mean per-network part ``rms(dH - E dH)``: the power
  counting says the mean is the coherent ``n^(theta + 2u)`` term and the fluctuation the random-sign
  ``n^(theta + u - 1/2)`` term (docs/theory-ntk.md, scaling section);
* a replay of the quick run (widths 128/256/512, 2 seeds): the spread of 2-seed fitted exponents
  over 8 disjoint seed pairs;
* learning-rate check (ntk, widths 256 and 1024, 8 seeds): ``||dH(lr)|| / lr`` relative to lr = 0.003
  for lr = 0.0003 and 0.03 (1 = first order in the learning rate).

Usage: python benchmarks/scaling_ntk_change_diagnosis.py. Writes
benchmarks/results/scaling_ntk_change_diagnosis.json.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time

import jax

jax.config.update("jax_enable_x64", True)
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from ngp import scaling  # noqa: E402

WIDTHS = (128, 256, 512, 1024, 2048)
SEEDS = 16


def fit(widths, v):
    """Least-squares slope of log v against log width (v: (W,) positive)."""
    return float(np.polyfit(np.log(widths), np.log(v), 1)[0])


def main():
    out = {"machine": platform.platform(), "jax": jax.__version__, "load_average_start": os.getloadavg(),
           "widths": WIDTHS, "seeds": SEEDS, "depth": 3, "activation": "tanh", "strategies": [], "lr_check": {}}
    for spec, kw in (("ntk", {}), (0.25, {}), (0.5, {}), ("standard", {"steps": 1, "lr": 1e-6})):
        t0 = time.perf_counter()
        p = scaling.predicted_exponents(spec, depth=3)
        u = max(p.features)  # largest relative per-coordinate update (= output weights' for these)
        per, mean, rms = [], [], []
        for w in WIDTHS:
            dH = scaling._coordinate_runs(spec, width=w, seeds=SEEDS, **kw)["ntk_change"]
            per.append(np.linalg.norm(dH, axis=(1, 2)))
            mean.append(np.linalg.norm(dH.mean(0)))
            rms.append(np.sqrt(np.mean(np.sum((dH - dH.mean(0)) ** 2, axis=(1, 2)))))
        per, mean, rms = np.array(per), np.array(mean), np.array(rms)
        slope, se = scaling._slope(WIDTHS, per)
        quick = per[:3]  # widths 128, 256, 512
        pairs = [scaling._slope(WIDTHS[:3], quick[:, 2 * k:2 * k + 2])[0] for k in range(SEEDS // 2)]
        row = {
            "spec": scaling.parameterization(spec).name, "options": kw,
            # the split applies to the stable members; standard's first-order change is all fluctuation
            "predicted": {"ntk_change": p.ntk_change,
                          "coherent_mean": None if p.regime == "unstable" else p.ntk + 2 * u,
                          "fluctuation": p.ntk + u - 0.5},
            "per_network": {"mean": per.mean(1).tolist(), "sd": per.std(1, ddof=1).tolist(),
                            "fitted": slope, "stderr": se},
            "ensemble_mean_norm": {"value": mean.tolist(), "noise_floor": (rms / np.sqrt(SEEDS)).tolist(),
                                   "fitted": fit(WIDTHS, mean)},
            "fluctuation_rms": {"value": rms.tolist(), "fitted": fit(WIDTHS, rms)},
            "quick_replay_2_seeds": {"slopes": pairs, "mean": float(np.mean(pairs)),
                                     "sd": float(np.std(pairs, ddof=1))},
            "seconds": time.perf_counter() - t0,
        }
        out["strategies"].append(row)
        print(row["spec"], "per-network", round(slope, 3), "+-", round(se, 3), "(pred", p.ntk_change, ")",
              "mean-part", round(row["ensemble_mean_norm"]["fitted"], 3), "(", row["predicted"]["coherent_mean"], ")",
              "fluct", round(row["fluctuation_rms"]["fitted"], 3), "(", row["predicted"]["fluctuation"], ")",
              "2-seed quick replay", round(np.mean(pairs), 2), "sd", round(np.std(pairs, ddof=1), 2), flush=True)
    for w in (256, 1024):
        base = np.linalg.norm(scaling._coordinate_runs("ntk", width=w, seeds=8, lr=0.003)["ntk_change"], axis=(1, 2))
        rat = {}
        for lr in (0.0003, 0.03):
            d = np.linalg.norm(scaling._coordinate_runs("ntk", width=w, seeds=8, lr=lr)["ntk_change"], axis=(1, 2))
            rat[str(lr)] = float(np.mean((d / lr) / (base / 0.003)))
        out["lr_check"][str(w)] = rat
        print("lr check ntk width", w, rat, flush=True)
    out["load_average_end"] = os.getloadavg()
    path = os.path.join(ROOT, "benchmarks", "results", "scaling_ntk_change_diagnosis.json")
    with open(path, "w") as fh:
        json.dump(out, fh, indent=1, default=float)
    print("wrote", path)


if __name__ == "__main__":
    main()
