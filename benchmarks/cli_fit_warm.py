"""The GP-evidence fit of ``ngp regress`` on hundreds of rows: started from the fit on the first rows, against the
fit from the given values.

    python benchmarks/cli_fit_warm.py [--rows 1000] [--c-b 0.0] [--out cli_fit_warm.json]

statsmodels' bundled ``fair`` data (6366 rows, 8 features; target ``rate_marriage``), the rows in the CLI's seeded
order (seed 0), the first ``--rows`` standardised as the CLI standardises its training pool, the CLI's default
network (tanh, depth 3) and given values (``C_W = 1``, ``C_b = 0`` or ``--c-b``, ``noise = 0.1``). Times, in one
process, the fit
``ngp regress`` ran before stop 67 (``ngp.fit_hyperparameters`` from the given values, one start, the CLI's
``MAX_ITER``) and the one it runs now (``ngp.cli._hyper.fit_hyperparameters``: above ``WARM_ROWS`` rows, first on
those rows, then on all from there), each with its evidence evaluations (L-BFGS-B's steps) per number of rows, the
fitted
values and the maximised log evidence. The fit from the first rows runs first and pays the compilations at both
sizes; the other then finds its program compiled (the comparison favours it). Writes ``benchmarks/results/<--out>``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
import warnings
from pathlib import Path

import jax

jax.config.update("jax_enable_x64", True)

import numpy as np  # noqa: E402

import ngp  # noqa: E402
from ngp import _hyper  # noqa: E402
from ngp.cli import _hyper as cli_hyper  # noqa: E402
from ngp.datasets import standardize  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def _counted():
    """Count the evaluations of the fit's compiled objective (``ngp._hyper.evidence_objective``) per number of rows."""
    calls, inner = {}, _hyper.evidence_objective

    def objective(net, XA, *args, **kwargs):
        f = inner(net, XA, *args, **kwargs)

        def g(*a, **k):
            calls[XA.shape[0]] = calls.get(XA.shape[0], 0) + 1
            return f(*a, **k)

        return g

    _hyper.evidence_objective = objective
    return calls


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1000)
    ap.add_argument("--c-b", type=float, default=0.0, help="the given C_b (the CLI's default: 0)")
    ap.add_argument("--out", default="cli_fit_warm.json")
    args = ap.parse_args()
    import statsmodels.api as sm

    data = sm.datasets.fair.load_pandas().data
    y = data.pop("rate_marriage").to_numpy(dtype=float)
    X = data.to_numpy(dtype=float)
    order = np.random.default_rng(0).permutation(len(y))[: args.rows]
    X, y = standardize(X[order])[0], standardize(y[order, None])[0]
    net = ngp.MLP(3, 32, activation="tanh", C_W=1.0, C_b=args.c_b)
    calls = _counted()
    load = os.getloadavg()
    rows = []
    warnings.simplefilter("ignore")
    for name in ("from the fit on the first rows", "from the given values"):
        calls.clear()
        t = time.perf_counter()
        if name.startswith("from the given"):
            fit = ngp.fit_hyperparameters(net, X, y, noise=0.1, finite_width=False, num_starts=cli_hyper.NUM_STARTS,
                                          seed=0, max_iter=cli_hyper.MAX_ITER)
            vals = (fit.C_W[0], fit.C_b[0], fit.noise, fit.log_evidence, fit.success)
        else:
            h = cli_hyper.fit_hyperparameters(net, X, y, noise=0.1, fixed=False)
            vals = (h.C_W, h.C_b, h.noise, h.log_evidence, "NOT converged" not in h.note)
        seconds = time.perf_counter() - t
        rows.append(dict(fit=name, seconds=seconds, evaluations=dict(calls), C_W=vals[0], C_b=vals[1], noise=vals[2],
                         log_evidence=vals[3], converged=bool(vals[4])))
        print(f"{name:32s} {seconds:7.1f} s  evaluations {calls}  C_W={vals[0]:.4g} C_b={vals[1]:.3g} "
              f"noise={vals[2]:.4g}  log evidence {vals[3]:.3f}", flush=True)
    out = dict(data="statsmodels fair", rows=args.rows, given_C_b=args.c_b, warm_rows=cli_hyper.WARM_ROWS,
               max_iter=cli_hyper.MAX_ITER,
               machine=platform.platform(), cpus=os.cpu_count(), load_before=load, load_after=os.getloadavg(),
               results=rows)
    (RESULTS / args.out).write_text(json.dumps(out, indent=1))
    print(f"wrote {RESULTS / args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
