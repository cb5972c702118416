"""How well ``ngp regress``'s timed probe predicts the finite-width stages it budgets for.

    python benchmarks/cli_cost_model.py [--data ccard|diabetes50|statecrime] [--sizes 20,26,32,40,48] [--fit pool|rows]
                                        [--out NAME.json]

In one fresh process, on the CLI's own split and standardisation of a real table (statsmodels' ``ccard``,
72 rows, target ``AVGEXP``; scikit-learn's diabetes, first 50 rows; or statsmodels' ``statecrime``, 51 rows,
target ``murder``, whose training pool holds one row of first-layer variance 30) and with the CLI's default network
and prior options, this times ``ngp.cli._regress.probe_work`` (exactly what the CLI's probe runs): first
the probe as it was before stop 53 (8 training + 2 test rows with the given hyperparameters, the process's
first run), then the probe of now (``PROBE_TRAIN`` + ``PROBE_TEST`` rows, 16 + 4, with the GP-evidence fit on
the pool, after that run as its warm-up, which is the CLI's ``PROBE_WARMUP``), then the real stages at every
``--sizes`` with all test rows and the hyperparameters the CLI uses: ``--fit pool`` (the CLI since stop
54) the probe's fit on the pool's first ``--max-train`` rows, which also set the standardisation; ``--fit
rows`` (stops 52-53) a fit on those ``n`` rows, standardised by them.
For each size it prints the measured seconds of the training block and per test row (compilation
excluded, as the model counts it separately) next to the two models' extrapolations
(``N^4`` and ``N^3`` from the probe, stops 52-61; and the probe of now weighted by the rows' variances,
``ngp.cli._budget.Work``). With ``--batches R`` it then times, at each size, the predictions of the same
conditioned model in one call and as ``ngp regress`` makes them since stop 64 (in batches of
``max(2, ceil(M / DEADLINE_BATCHES))`` test rows, asking ``stop`` before each: the cost of keeping a deadline),
alternating ``R`` times (the joint prior is dropped before each, so each computes its test rows' four-point values
again; the training block is shared). Writes ``benchmarks/results/<--out>`` (default ``cli_cost_model.json``).
"""

from __future__ import annotations

import argparse
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


def _table(name: str, folder: Path) -> tuple[Path, str]:
    if name == "ccard":
        import statsmodels.api as sm

        path = folder / "ccard.csv"
        sm.datasets.ccard.load_pandas().data.to_csv(path, index=False)
        return path, "AVGEXP"
    if name == "statecrime":
        import statsmodels.api as sm

        path = folder / "statecrime.csv"
        sm.datasets.statecrime.load_pandas().data.to_csv(path, index_label="")  # as benchmarks/cli.py writes it
        return path, "murder"
    return _csv(folder), "target"  # cli_regress.py's 50-row diabetes CSV


def _batched(cli, Xn, yn, Xt, hyper, repeats: int) -> dict:
    """Seconds of the predictions at ``Xt`` in one call and in the CLI's deadline batches (a ``stop`` that never
    fires), alternating ``repeats`` times on one conditioned model; the largest difference of their means."""
    import warnings

    import numpy as np

    import ngp
    from ngp.cli._compare import DEADLINE_BATCHES
    from ngp.cli._regress import _make_net, _options

    batch = max(2, -(-len(Xt) // DEADLINE_BATCHES))
    kinds = {"one call": {}, f"batches of {batch}": {"batch_size": batch, "stop": lambda done: False}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cond = ngp.condition(_make_net(cli, hyper)(cli.width[0]), Xn, yn, noise=hyper.noise, **_options(cli))
        cond.log_evidence
        out, means = {k: [] for k in kinds}, {}
        for _ in range(repeats):
            for k, kw in kinds.items():
                cond._joint.clear()  # a fresh joint prior: the test rows' four-point values computed again
                t = time.perf_counter()
                means[k] = np.asarray(cond.predict(Xt, **kw).mean)
                out[k].append(time.perf_counter() - t)
    a, b = means.values()
    print(f"  predictions at {len(Xt)} test rows: " + ", ".join(f"{k} {', '.join(f'{t:.1f}' for t in v)} s"
                                                             for k, v in out.items()), flush=True)
    return {"seconds": out, "batch_size": batch, "max_mean_difference": float(np.max(np.abs(a - b)))}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", choices=["ccard", "diabetes50", "statecrime"], default="ccard")
    p.add_argument("--fit", choices=["pool", "rows"], default="pool",
                   help="hyperparameters of the real stages: the pool's fit (the CLI now) or a fit on their rows")
    p.add_argument("--sizes", default="20,26,32,40,48")
    p.add_argument("--batches", type=int, default=0, metavar="R",
                   help="also time the predictions in one call and in the CLI's deadline batches, R times each")
    p.add_argument("--out", default="cli_cost_model.json")
    args = p.parse_args()
    t_import = time.perf_counter()
    import jax

    jax.config.update("jax_enable_x64", True)

    from ngp.cli import _budget, _parser
    from ngp.cli._csv import read_table
    from ngp.cli._hyper import fit_hyperparameters
    from ngp.cli._regress import (PROBE_TEST, PROBE_TRAIN, PROBE_WARMUP, _make_net, _options, _splits, probe_work,
                                  row_work, standardize)

    load0 = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        path, target = _table(args.data, Path(tmp))
        cli = _parser().parse_args(["regress", str(path), "--target", target])
        data = read_table(str(path), target=cli.target, features=cli.features, ignore=cli.ignore or ())
    (pool, test), = _splits(len(data.y), cli)
    test = test[:cli.n_test]

    def rows_and_fit(n):
        """The CLI's standardisation of ``n`` training rows and its GP-evidence fit on them."""
        Xp, Xt, _ = standardize(data.X[pool[:n]], data.X[test])
        yp, _, _ = standardize(data.y[pool[:n], None], data.y[test, None])
        hyper = fit_hyperparameters(_make_net(cli)(cli.width[0]), Xp, yp, noise=cli.noise, fixed=False,
                                    seed=cli.seed, options=_options(cli))
        return Xp, yp, Xt, hyper

    sizes = [int(s) for s in args.sizes.split(",") if int(s) <= len(pool)]
    top = min(len(pool), cli.max_train)
    Xp, yp, Xt, hyper0 = rows_and_fit(top)  # the CLI's probe: hyperparameters fitted on the pool
    print(f"{args.data}: {len(pool)}-row training pool, {len(test)} test rows; import and fit "
          f"{time.perf_counter() - t_import:.1f} s; probe hyperparameters {hyper0.describe()}")
    assert PROBE_WARMUP == (8, 2)  # the old probe below is then the new one's warm-up
    old = _budget.probe(probe_work(cli, Xp, yp, Xt), 8, 2)  # before stop 53: the given values, first run, 8 rows
    new = _budget.probe(probe_work(cli, Xp, yp, Xt, hyper0), PROBE_TRAIN, PROBE_TEST)  # now: after that warm-up
    names = ("probe 8 + 2 (before)", f"probe {PROBE_TRAIN} + {PROBE_TEST} after a warm-up, N^4 (stops 53-61)",
             f"probe {PROBE_TRAIN} + {PROBE_TEST}, weighted by the rows' variances (now)")
    work = row_work(cli, Xp, Xt, hyper0)
    models = dict(zip(names, (_budget.CostModel(old), _budget.CostModel(new), _budget.CostModel(new, work=work))))
    rows = []
    for n in sizes:  # the real stages, all test rows
        Xn, yn, Xt, hyper = (Xp[:n], yp[:n], Xt, hyper0) if args.fit == "pool" else rows_and_fit(n)
        r = _budget.probe(probe_work(cli, Xn, yn, Xt, hyper), n, len(test))
        row = {"n_train": n, "n_test": len(test), "train_s": r.train_s, "per_test_s": r.test_s / len(test),
               "compile_s": r.compile_s, "wall_s": r.wall_s, "hyperparameters": hyper.describe(), "estimates": {}}
        for name, m in models.items():
            row["estimates"][name] = {"train_s": m.training(n), "per_test_s": m.predict(n, len(test)) / len(test)}
        if args.batches:
            row["batched"] = _batched(cli, Xn, yn, Xt, hyper, args.batches)
        rows.append(row)
        est = "  ".join(f"{e['train_s']:7.1f} {e['per_test_s']:6.2f}" for e in row["estimates"].values())
        print(f"N={n:3d}: train {r.train_s:6.1f} s, per test row {row['per_test_s']:5.2f} s "
              f"(compile {r.compile_s:.1f} s; {hyper.describe()}) | estimated (before, N^4, now): {est}", flush=True)
    out = {"machine": platform.platform(), "cpus": os.cpu_count(), "git": _git(), "data": args.data, "fit": args.fit,
           "pool": int(len(pool)), "test_rows": int(len(test)), "load_before": load0, "load_after": os.getloadavg(),
           "probes": dict(zip(names, (old.__dict__, new.__dict__, new.__dict__))),
           "probe_hyperparameters": hyper0.describe(), "rows": rows}
    dest = ROOT / "benchmarks" / "results" / args.out
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(json.dumps(out, indent=2))
    print(f"written to {dest}")


if __name__ == "__main__":
    main()
