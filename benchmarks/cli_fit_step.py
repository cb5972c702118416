"""What ``ngp regress --fit-evidence finite-width`` charges the time budget for its fit, against measurement.

    python benchmarks/cli_fit_step.py [--sizes 4,6,8] [--fits 4,5] [--seed 0] [--out cli_fit_step.json]

On the CLI's 50-row diabetes CSV (``cli_regress.py``'s), standardised as the CLI does (the training
pool's first rows), with the CLI's default network: the time of one step of the finite-width evidence
fit (``ngp.cli._regress.fit_step_work``: the evidence and its gradient, what L-BFGS-B evaluates) at each
``--sizes`` (``ngp.cli._budget.probe_step``: the second of two calls; the first call's extra time is its
compilation), next to the CLI's extrapolation (``FitProbe.seconds``) from its probe size ``FIT_PROBE_ROWS``
(the first size when that is not measured); then, for each ``--fits`` size, a whole
``ngp.fit_hyperparameters(finite_width=True)`` with the CLI's settings, the number of objective evaluations
its optimiser used (``FIT_STEPS`` are charged) and the time the CLI's cost model charges it. ``--seed`` is the
CLI's split seed (another seed, another 40-row training pool of the 50 rows). Run with ``PYTHONPATH`` set to
another checkout to measure that checkout's library. Writes ``benchmarks/results/<--out>``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from cli import _git  # noqa: E402
from cli_regress import _csv  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="4,6,8")
    p.add_argument("--fits", default="4,5")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="cli_fit_step.json")
    args = p.parse_args()

    import jax
    import scipy.optimize

    jax.config.update("jax_enable_x64", True)
    from ngp.cli import _budget, _parser
    from ngp.cli._csv import read_table
    from ngp.cli._hyper import MAX_ITER, NUM_STARTS, fit_hyperparameters
    import ngp
    from ngp.cli._regress import FIT_PROBE_ROWS, FIT_STEPS, _make_net, _options, _splits, fit_step_work, standardize

    with tempfile.TemporaryDirectory() as tmp:
        path = _csv(Path(tmp))
        cli = _parser().parse_args(["regress", str(path), "--target", "target", "--fit-evidence", "finite-width",
                                    "--seed", str(args.seed)])
        data = read_table(str(path), target=cli.target)
    (pool, _), = _splits(len(data.y), cli)
    f = pool[:cli.max_train]
    X = standardize(data.X[f])[0]
    y = standardize(data.y[f, None])[0]
    load0 = os.getloadavg()
    t0 = time.perf_counter()
    gp = fit_hyperparameters(_make_net(cli)(cli.width[0]), X, y, noise=cli.noise, fixed=False, seed=cli.seed)
    gp_s = time.perf_counter() - t0  # what the CLI charges a fit's GP stage (FitProbe.gp_s, since 76c2d36)
    print(f"GP fit on {len(f)} pool rows: {gp.describe()} (the finite-width fit's start)", flush=True)
    step = fit_step_work(cli, X, y, gp)
    sizes = [int(s) for s in args.sizes.split(",") if s]
    probes = {n: _budget.probe_step(step, n, FIT_STEPS) for n in sizes}
    first = probes.get(FIT_PROBE_ROWS) or (probes[sizes[0]] if sizes else None)  # the CLI's probe
    if first is not None and "gp_s" in getattr(_budget.FitProbe, "__dataclass_fields__", {}):
        first = dataclasses.replace(first, gp_s=gp_s)
    steps = []
    for n, fp in probes.items():
        est = (first.seconds(n) - first.compile_s - getattr(first, "gp_s", 0.0)) / FIT_STEPS  # the CLI's, of a step
        steps.append({"n_train": n, "step_s": fp.step_s, "first_call_extra_s": fp.compile_s, "estimated_step_s": est})
        print(f"N={n}: step {fp.step_s:.2f} s (first call {fp.compile_s:.1f} s more); from N={first.n_train}: "
              f"{est:.2f} s", flush=True)

    inner, counts = scipy.optimize.minimize, []

    def counted(*a, **k):
        r = inner(*a, **k)
        counts.append({"nfev": int(r.nfev), "nit": int(r.nit), "success": bool(r.success), "message": str(r.message)})
        return r

    scipy.optimize.minimize = counted
    fits = []
    for n in [int(s) for s in args.fits.split(",") if s]:
        counts.clear()
        t0 = time.perf_counter()
        hyper = fit_hyperparameters(_make_net(cli)(cli.width[0]), X[:n], y[:n], noise=cli.noise, fixed=False,
                                    seed=cli.seed, finite_width=True, options=_options(cli))
        wall = time.perf_counter() - t0
        charged = None if first is None else first.seconds(n)
        fits.append({"n_train": n, "wall_s": wall, "charged_s": charged, "stages": list(counts),
                     "hyperparameters": hyper.describe()})
        print(f"finite-width fit on {n} rows: {wall:.1f} s (charged {charged} s); optimiser runs "
              f"(GP, finite width): {counts}", flush=True)
    scipy.optimize.minimize = inner
    out = {"machine": platform.platform(), "cpus": os.cpu_count(), "git": _git(), "ngp": ngp.__file__,
           "seed": args.seed, "load_before": load0, "load_after": os.getloadavg(), "fit_steps_charged": FIT_STEPS,
           "fit_probe_rows": None if first is None else first.n_train, "max_iter": MAX_ITER,
           "num_starts": NUM_STARTS, "gp_start": gp.describe(), "gp_fit_s": gp_s, "steps": steps, "fits": fits}
    dest = ROOT / "benchmarks" / "results" / args.out
    dest.write_text(json.dumps(out, indent=2))
    print(f"written to {dest}")


if __name__ == "__main__":
    main()
