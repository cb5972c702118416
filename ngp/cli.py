"""The ``ngp`` command line (``ngp demo``)."""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

__all__ = ["main"]


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


def _gauss_loglik(y, mean, var):
    return float(np.mean(-0.5 * np.log(2 * np.pi * var) - 0.5 * (y - mean) ** 2 / var))


def _demo(args) -> int:
    _enable_x64()
    import ngp
    from ngp.datasets import load_terrain, standardize, synthetic_1d

    rng = np.random.default_rng(args.seed)
    X, y = load_terrain()
    idx = rng.permutation(len(y))
    tr, te = idx[: args.n_train], idx[args.n_train : args.n_train + args.n_test]
    Xtr, Xte, _ = standardize(X[tr], X[te])
    ytr, yte, (ymu, ysd) = standardize(y[tr, None], y[te, None])
    noise = args.noise
    rows = []
    for act, cw in (("tanh", 1.0), ("relu", 2.0), ("gelu", 1.983058257438)):
        net = ngp.MLP(args.depth, args.width, activation=act, C_W=cw, C_b=0.1 if act != "gelu" else 0.172922390756)
        t0 = time.perf_counter()
        post = ngp.gp_posterior(net, Xtr, ytr, Xte, noise=noise)
        dt = time.perf_counter() - t0
        rmse = float(np.sqrt(np.mean((post.mean - yte) ** 2))) * ysd[0]
        rows.append(
            {
                "prior": f"GP ({act}, depth {args.depth})",
                "test RMSE [m]": f"{rmse:.1f}",
                "test log-lik": f"{_gauss_loglik(yte, post.mean, post.var + noise):.3f}",
                "log evidence": f"{post.log_evidence:.2f}",
                "time [s]": f"{dt:.2f}",
            }
        )
    print(f"Terrain elevation (Jacksboro DEM): {args.n_train} training / {args.n_test} test points, "
          f"noise variance {noise} (standardised units)\n")
    print(_table(rows, list(rows[0])))

    os.makedirs(args.out, exist_ok=True)
    X1, y1 = synthetic_1d(8, seed=args.seed)
    Xs = np.linspace(-3, 3, 200)[:, None]
    net = ngp.MLP(args.depth, args.width, activation="tanh", C_W=1.0, C_b=0.1)
    post = ngp.gp_posterior(net, X1, y1, Xs, noise=0.01)
    path = os.path.join(args.out, "demo_posterior.png")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover - exercised only without the plots extra
        print("\nmatplotlib is not installed: pip install 'ngp[plots]' to write the figure.")
        return 0
    fig, ax = plt.subplots(figsize=(6, 3.5))
    m, s = post.mean[:, 0], post.std[:, 0]
    ax.fill_between(Xs[:, 0], m - 2 * s, m + 2 * s, alpha=0.3, label="GP ±2σ")
    ax.plot(Xs[:, 0], m, label="GP mean")
    ax.plot(X1[:, 0], y1, "k.", ms=8, label="data")
    ax.set_xlabel("x")
    ax.set_ylabel("y")
    ax.set_title(f"Infinite-width tanh prior, depth {args.depth}")
    ax.legend(loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    print(f"\nfigure written to {path}")
    return 0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ngp", description="Bayesian inference with finite-width network priors.")
    sub = p.add_subparsers(dest="command", required=True)
    d = sub.add_parser("demo", help="GP regression on built-in data: prints a table, writes a figure")
    d.add_argument("--n-train", type=int, default=40)
    d.add_argument("--n-test", type=int, default=200)
    d.add_argument("--depth", type=int, default=3)
    d.add_argument("--width", type=int, default=64)
    d.add_argument("--noise", type=float, default=0.05)
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--out", default="ngp-demo", help="folder for the figure (default: ./ngp-demo)")
    d.set_defaults(func=_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
