"""The ``ngp`` command line: ``ngp demo`` and ``ngp regress``.

Exit codes: 0 success, 2 bad input (missing file or column, non-numeric data, bad options).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings

import numpy as np

__all__ = ["main"]


class CLIError(Exception):
    """Bad user input; reported without a traceback, exit code 2."""


def _enable_x64():
    import jax

    jax.config.update("jax_enable_x64", True)


def _table(rows: list[dict], columns: list[str]) -> str:
    cells = [[str(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    line = "  ".join(c.ljust(w) for c, w in zip(columns, widths))
    sep = "  ".join("-" * w for w in widths)
    body = ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join([line, sep, *body])


def _loglik(y, mean, var):
    """Mean Gaussian log predictive density of held-out targets."""
    return float(np.mean(-0.5 * np.log(2 * np.pi * var) - 0.5 * (y - mean) ** 2 / var))


def _progress(iterable, desc, total=None):
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover
        return iterable
    return tqdm(iterable, desc=desc, total=total, file=sys.stderr, leave=False)


def _fit_rows(X_tr, y_tr, X_te, y_te, *, activation, depth, widths, C_W, C_b, noise, ysd, truth=True,
              nuts=None, seed=0, four_point_order=None):
    """GP and finite-width fits at several widths, with importance-sampling truth; table rows.

    With equal hidden widths the cumulants K, K1, V do not depend on the width, so the prior
    is computed once and the posterior is evaluated for each width.
    """
    import ngp
    from ngp.reference import importance_posterior, nuts_posterior

    opts = {} if four_point_order is None else {"four_point_order": four_point_order}
    net = ngp.MLP(depth, widths[0], activation=activation, C_W=C_W, C_b=C_b, out_dim=y_tr.shape[1])
    t0 = time.perf_counter()
    cond = ngp.condition(net, X_tr, y_tr, noise=noise, warn=False, **opts)
    post0 = cond.predict(X_te, full_cov=False)
    t_prior = time.perf_counter() - t0

    def row(name, mean, var, logev, dt):
        return {
            "prior": name,
            "test RMSE": f"{float(np.sqrt(np.mean((mean - y_te) ** 2))) * ysd:.4g}",
            "test log-lik": f"{_loglik(y_te, mean, np.clip(var, 1e-12, None) + noise):.3f}",
            "log evidence": "-" if logev is None else f"{logev:.3f}",
            "time [s]": f"{dt:.2f}",
        }

    rows, refs = [], {}
    for w in _progress([None] + list(widths), "fitting"):
        t0 = time.perf_counter()
        if w is None:
            gp = ngp.gp_posterior(net, X_tr, y_tr, X_te, noise=noise)
            rows.append(row("GP", gp.mean, gp.var, gp.log_evidence, time.perf_counter() - t0))
            continue
        post = post0 if w == widths[0] else cond.with_width(w).predict(X_te)
        mean, var, logev, gp = post.mean, post.var, post.log_evidence, post.gp
        r = row(f"finite n={w}", mean, var, logev, time.perf_counter() - t0 + t_prior)
        if truth:
            net_w = ngp.MLP(depth, w, activation=activation, C_W=C_W, C_b=C_b, out_dim=y_tr.shape[1])
            ref = importance_posterior(net_w, X_tr, y_tr, X_te, noise=noise, num_samples=100_000, seed=seed)
            refs[w] = ref
            r["|mean-truth| (GP)"] = f"{float(np.max(np.abs(gp.mean - ref.mean))):.2e}"
            r["|mean-truth|"] = f"{float(np.max(np.abs(mean - ref.mean))):.2e} ± {float(np.max(ref.mean_se)):.0e}"
        rows.append(r)
    if nuts is not None:
        w = widths[0]
        net_w = ngp.MLP(depth, w, activation=activation, C_W=C_W, C_b=C_b, out_dim=y_tr.shape[1])
        t0 = time.perf_counter()
        post = nuts_posterior(net_w, X_tr, y_tr, X_te, noise=noise, num_warmup=nuts, num_samples=nuts,
                              num_chains=2, seed=seed)
        r = row(f"NUTS n={w} (2 chains)", post.mean, post.var, None, time.perf_counter() - t0)
        if w in refs:
            r["|mean-truth|"] = f"{float(np.max(np.abs(post.mean - refs[w].mean))):.2e} ± {float(np.max(post.mean_se)):.0e}"
            r["|mean-truth| (GP)"] = "-"
        rows.append(r)
    return rows, t_prior


def _demo(args) -> int:
    _enable_x64()
    import ngp
    from ngp.datasets import load_terrain, standardize, synthetic_1d

    t_start = time.perf_counter()
    rng = np.random.default_rng(args.seed)
    X, y = load_terrain()
    idx = rng.permutation(len(y))
    n_tr, n_te = (6, 4) if args.quick else (args.n_train, args.n_test)
    tr, te = idx[:n_tr], idx[n_tr : n_tr + n_te]
    Xtr, Xte, _ = standardize(X[tr], X[te])
    ytr, yte, (_, ysd) = standardize(y[tr, None], y[te, None])
    # match the targets' scale to the prior's output variance (tanh at criticality: K ~ 0.3-0.5)
    act, depth, C_W, C_b = "tanh", args.depth, 1.0, 0.1
    net0 = ngp.MLP(depth, 64, activation=act, C_W=C_W, C_b=C_b)
    scale = float(np.sqrt(np.mean(np.diag(np.asarray(net0.prior(Xtr).K)))))
    ytr, yte = ytr * scale, yte * scale
    widths = [8, 32] if args.quick else [8, 32, 128]
    rows, t_prior = _fit_rows(Xtr, ytr, Xte, yte, activation=act, depth=depth, widths=widths, C_W=C_W, C_b=C_b,
                              noise=args.noise, ysd=ysd[0] / scale,
                              nuts=None if args.no_nuts else (40 if args.quick else 150), seed=args.seed)
    print(f"Terrain elevation (Jacksboro fault DEM, USGS): {n_tr} training / {n_te} test points; "
          f"tanh MLP depth {depth}, C_W={C_W}, C_b={C_b}, noise variance {args.noise}")
    print("'truth' = importance sampling over 1e5 actual random networks (± its standard error); RMSE in metres;")
    print(f"finite-width times include the {t_prior:.1f} s prior computation (K, K1, V: shared by all widths)\n")
    cols = ["prior", "test RMSE", "test log-lik", "log evidence", "|mean-truth| (GP)", "|mean-truth|", "time [s]"]
    print(_table(rows, cols))

    # figure: posterior bands on a 1-D toy problem
    os.makedirs(args.out, exist_ok=True)
    X1, y1 = synthetic_1d(4, seed=args.seed)
    y1 = 0.5 * y1
    Xs = np.linspace(-3, 3, 9 if args.quick else 41)[:, None]
    n_fig = 32
    net = ngp.MLP(depth, n_fig, activation=act, C_W=C_W, C_b=C_b)
    # noise 0.05: with two nearly coincident inputs and noise 0.01 the first-order variance
    # turns negative at some test points (the expansion breaks down there; ngp warns)
    gp = ngp.gp_posterior(net, X1, y1, Xs, noise=0.05)
    fw = _finite_on_grid(net, X1, y1, Xs, noise=0.05)
    path = os.path.join(args.out, "demo_posterior.png")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover - exercised only without the plots extra
        print("\nmatplotlib is not installed: pip install 'ngp[plots]' to write the figure.")
        return 0
    fig = ngp.plot.plot_posterior(Xs, [gp, fw], labels=["GP (n=∞)", f"finite width n={n_fig}"], X_train=X1, Y_train=y1)
    fig.axes[0].set_title(f"tanh MLP depth {depth}: infinite vs finite-width posterior", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    print(f"\nfigure written to {path}   (total {time.perf_counter() - t_start:.0f} s)")
    return 0


def _finite_on_grid(net, X1, y1, Xs, *, noise):
    """Finite-width posterior marginals on many test points (one conditioning, batched predictions)."""
    import ngp

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return ngp.condition(net, X1, y1, noise=noise).predict(Xs)


def _read_csv(path: str, target: str):
    if not os.path.isfile(path):
        raise CLIError(f"DATA: no such file: {path}")
    with open(path, encoding="utf-8") as fh:
        lines = [ln.strip() for ln in fh if ln.strip() and not ln.lstrip().startswith("#")]
    if len(lines) < 2:
        raise CLIError(f"DATA: {path} needs a header line and at least one data row")
    header = [h.strip() for h in lines[0].split(",")]
    if target not in header:
        raise CLIError(f"--target: column {target!r} not in {path} (columns: {', '.join(header)})")
    rows = []
    for i, ln in enumerate(lines[1:], start=2):
        parts = [p.strip() for p in ln.split(",")]
        if len(parts) != len(header):
            raise CLIError(f"DATA: line {i} has {len(parts)} fields, the header has {len(header)}")
        try:
            rows.append([float(p) for p in parts])
        except ValueError as exc:
            raise CLIError(f"DATA: non-numeric value on line {i}: {exc}") from exc
    data = np.array(rows)
    if not np.all(np.isfinite(data)):
        raise CLIError("DATA: contains nan or inf")
    j = header.index(target)
    features = [h for k, h in enumerate(header) if k != j]
    if not features:
        raise CLIError("DATA: needs at least one feature column besides the target")
    return np.delete(data, j, axis=1), data[:, j], features


def _regress(args) -> int:
    X, y, features = _read_csv(args.data, args.target)
    _enable_x64()
    import ngp
    from ngp.datasets import standardize

    if args.n_train < 1 or args.n_test < 1:
        raise CLIError("--n-train and --n-test must be >= 1")
    if args.n_train + args.n_test > len(y):
        raise CLIError(f"--n-train + --n-test = {args.n_train + args.n_test} exceeds the {len(y)} rows of DATA")
    try:
        ngp.MLP(args.depth, args.width, activation=args.activation, C_W=args.C_W, C_b=args.C_b)
    except (ValueError, TypeError) as exc:
        raise CLIError(str(exc)) from exc
    if args.noise < 0:
        raise CLIError(f"--noise must be >= 0, got {args.noise}")
    rng = np.random.default_rng(args.seed)
    idx = rng.permutation(len(y))
    tr, te = idx[: args.n_train], idx[args.n_train : args.n_train + args.n_test]
    Xtr, Xte, _ = standardize(X[tr], X[te])
    ytr, yte, (_, ysd) = standardize(y[tr, None], y[te, None])
    rows, _ = _fit_rows(Xtr, ytr, Xte, yte, activation=args.activation, depth=args.depth, widths=[args.width],
                              C_W=args.C_W, C_b=args.C_b, noise=args.noise, ysd=ysd[0], truth=not args.no_truth,
                              seed=args.seed, four_point_order=args.four_point_order)
    print(f"{args.data}: target {args.target!r} from {', '.join(features)}; {args.n_train} training / "
          f"{args.n_test} test rows (standardised); {args.activation} MLP depth {args.depth}, width {args.width}\n")
    cols = ["prior", "test RMSE", "test log-lik", "log evidence"] + ([] if args.no_truth else ["|mean-truth| (GP)", "|mean-truth|"]) + ["time [s]"]
    print(_table(rows, cols))
    if args.json:
        out = {"data": args.data, "target": args.target, "features": features, "rows": rows,
               "settings": {k: getattr(args, k) for k in ("depth", "width", "activation", "C_W", "C_b", "noise",
                                                         "n_train", "n_test", "seed")}}
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(out, fh, indent=2)
        print(f"\nresults written to {args.json}")
    return 0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ngp", description="Bayesian inference with finite-width network priors.")
    sub = p.add_subparsers(dest="command", required=True)
    d = sub.add_parser("demo", help="GP vs finite width vs NUTS on built-in data: prints a table, writes a figure")
    d.add_argument("--n-train", type=int, default=8)
    d.add_argument("--n-test", type=int, default=4)
    d.add_argument("--depth", type=int, default=3)
    d.add_argument("--noise", type=float, default=0.1)
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--quick", action="store_true", help="reduced sizes (a few seconds; used by the tests)")
    d.add_argument("--no-nuts", action="store_true", help="skip the NUTS check")
    d.add_argument("--out", default="ngp-demo", help="folder for the figure (default: ./ngp-demo)")
    d.set_defaults(func=_demo)
    r = sub.add_parser("regress", help="GP and finite-width regression on your CSV file")
    r.add_argument("data", metavar="DATA.csv", help="comma-separated file with a header line")
    r.add_argument("--target", required=True, help="name of the column to predict")
    r.add_argument("--width", type=int, default=32)
    r.add_argument("--depth", type=int, default=3)
    r.add_argument("--activation", default="tanh")
    r.add_argument("--C_W", type=float, default=1.0)
    r.add_argument("--C_b", type=float, default=0.0)
    r.add_argument("--noise", type=float, default=0.1)
    r.add_argument("--n-train", type=int, default=10)
    r.add_argument("--n-test", type=int, default=5)
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--four-point-order", type=int, default=None,
                   help="Gauss-Hermite nodes per dimension for V (default: the library's, 40)")
    r.add_argument("--no-truth", action="store_true", help="skip the importance-sampling reference")
    r.add_argument("--json", help="also write the results to this JSON file")
    r.set_defaults(func=_regress)
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except CLIError as exc:
        print(f"ngp {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
