"""``ngp demo``: GP vs finite width vs references on a terrain elevation profile (built-in data).

The data: the east-west elevation profile with the most relief in the Jacksboro fault DEM
(``ngp.datasets.load_terrain``; 26 points, ~30 km). Every point but a seeded 30% trains a tanh
network's posterior (18; ``--n-train`` for another number), every other point is a test point, and
the figure shows the same profile: the GP and the finite-width posterior bands side by side and
their difference, in metres.
"""

from __future__ import annotations

import os
import time

import numpy as np

from ._common import CLIError, Progress, collect_warnings, enable_x64, plural, table
from ._compare import Split, cells, compare, notes
from ._hyper import fit_hyperparameters

__all__ = ["run", "profile", "widths_of", "default_n_train", "HELD_OUT"]

KM_PER_DEGREE = 111.32
#: Fraction of the profile held out as test points by default (8 of its 26 points).
HELD_OUT = 0.3


def profile():
    """The demo's data: ``(distance_km (26,), elevation_m (26,), latitude)`` of the east-west profile
    of the built-in terrain grid with the largest elevation range."""
    from ngp.datasets import load_terrain

    X, y = load_terrain()
    lats = np.unique(X[:, 1])
    ranges = [np.ptp(y[X[:, 1] == la]) for la in lats]
    lat = float(lats[int(np.argmax(ranges))])
    sel = X[:, 1] == lat
    lon, elev = X[sel, 0], y[sel]
    order = np.argsort(lon)
    lon, elev = lon[order], elev[order]
    dist = (lon - lon[0]) * KM_PER_DEGREE * np.cos(np.radians(lat))
    return dist, elev, lat


def default_n_train(n: int) -> int:
    """The training points the demo uses by default: every point of the ``n``-point profile but a held-out
    ``HELD_OUT`` fraction (the test points)."""
    return n - max(1, round(HELD_OUT * n))


def _why(args, n: int, n_train: int, n_test: int) -> str:
    """The line that says which of the profile's ``n`` points train and test, and why."""
    if args.n_train is None:
        line = (f"{n_train} training points: every point but {n - n_train} held out (seeded) as test points; the "
                f"finite-width posterior takes under half a minute even on {n - 1} points, so no time budget limits "
                "them (docs/cli.md)")
    else:
        k = n - n_train
        line = f"{n_train} training points (--n-train); " + ("the other is a test point" if k == 1 else
                                                            f"the other {k} are test points")
    if args.n_test is not None and n - n_train > 1:
        line += f", {n_test} of them used (--n-test)"
    return line


def widths_of(args) -> list[int]:
    """The hidden widths the demo compares."""
    return [8, 32] if args.quick else [8, 32, 128]


def run(args) -> int:
    t_start = time.perf_counter()
    if not args.no_nuts:  # before any work: the NUTS reference needs the sampling extra
        try:
            import numpyro  # noqa: F401
        except ImportError:
            raise CLIError("the NUTS reference needs numpyro: pip install 'ngp[sampling]', or pass --no-nuts") from None
    progress = Progress(quiet=args.quiet)
    enable_x64()
    import ngp

    dist, elev, lat = profile()
    n = dist.size
    n_train = default_n_train(n) if args.n_train is None else args.n_train
    if n_train > n - 1:
        raise CLIError(f"--n-train {n_train}: the profile has {n} points and at least one must be a test point")
    rng = np.random.default_rng(args.seed)
    order = rng.permutation(n)
    tr = np.sort(order[:n_train])
    te = np.sort(order[n_train:])
    if args.n_test is not None:
        te = np.sort(order[n_train:][: args.n_test])
    # inputs: the profile mapped to [-1.3, 1.3], so the first-layer variance C_b + C_W x^2 stays below 2 where the
    # default four-point quadrature is accurate (ngp warns above it)
    x_mu, x_sd = 0.5 * (dist[0] + dist[-1]), 0.5 * (dist[-1] - dist[0]) / 1.3
    y_mu, y_sd = elev[tr].mean(), elev[tr].std()
    act, depth, C_W, C_b = "tanh", args.depth, 1.0, 0.1
    make = lambda w: ngp.MLP(depth, w, activation=act, C_W=C_W, C_b=C_b)  # noqa: E731
    # scale the targets to the prior's output standard deviation (tanh near criticality: K ~ 0.3-0.5)
    Xtr = ((dist[tr] - x_mu) / x_sd)[:, None]
    k_scale = float(np.sqrt(np.mean(np.diag(np.asarray(make(64).prior(Xtr).K)))))
    scale = y_sd / k_scale
    split = Split(Xtr, ((elev[tr] - y_mu) / scale)[:, None], ((dist[te] - x_mu) / x_sd)[:, None],
                  ((elev[te] - y_mu) / scale)[:, None], scale, y_mu)
    hyper, _ = progress.run("hyperparameters" if args.fixed else "fitting hyperparameters (maximum GP evidence)",
                            lambda: fit_hyperparameters(make(widths_of(args)[0]), split.Xtr, split.ytr,
                                                        noise=args.noise, fixed=args.fixed, seed=args.seed))
    C_W, C_b = hyper.C_W, hyper.C_b
    make = lambda w: ngp.MLP(depth, w, activation=act, C_W=C_W, C_b=C_b)  # noqa: E731
    grid_km = np.linspace(dist[0], dist[-1], 9 if args.quick else 21)
    widths = widths_of(args)
    samples = 20_000 if args.quick else 100_000
    nuts = 0 if args.no_nuts else (40 if args.quick else 150)
    with collect_warnings() as messages:
        rows, info = compare(split, make, widths=widths, noise=hyper.noise, progress=progress,
                             truth_samples=samples, nuts_steps=nuts, seed=args.seed,
                             extra_test=((grid_km - x_mu) / x_sd)[:, None])
    print(f"Terrain elevation profile (Jacksboro fault DEM, USGS; latitude {lat:.4f}, {dist[-1]:.0f} km east-west, "
          f"{n} points): {len(tr)} training points, {plural(len(te), 'test point')}")
    print(f"  {_why(args, n, len(tr), len(te))}")
    print(f"  tanh MLP depth {depth}; hyperparameters: {hyper.describe()} ({hyper.note}); noise is a variance of the "
          f"targets scaled to variance {k_scale**2:.3g} on the training points (the prior's mean output variance "
          "there before the fit, at C_W=1, C_b=0.1)")
    print(f"  RMSE and |mean-IS| in metres; 'IS' = importance sampling over {samples} actual random networks "
          "(± its standard error)\n")
    cols = ["model", "test RMSE", "test log-lik", "log evidence", "1/n size", "|mean-IS|", "|GP mean-IS|", "time [s]"]
    print(table([cells(r, truth=True) for r in rows], cols))
    for line in notes(rows, messages, info["prior_s"]):
        print(f"  * {line}")
    path = _figure(args, dist, elev, tr, te, grid_km, info, widths[0], scale, y_mu, lat)
    said = f"figure written to {path}" if path else "matplotlib is not installed: pip install ngp[plots] for the figure"
    print(f"\n{said}   (total {time.perf_counter() - t_start:.0f} s)")
    return 0


def _figure(args, dist, elev, tr, te, grid_km, info, width, scale, y_mu, lat):
    """GP and finite-width bands side by side and their difference; returns the path (None without matplotlib)."""
    try:  # a Figure without pyplot: no backend is chosen or changed
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:  # pragma: no cover - exercised only without the plots extra
        return None
    grid = info["grid"]
    fw = grid["finite"].get(width)
    gp_m = grid["gp"].mean[:, 0] * scale + y_mu
    gp_s = np.sqrt(np.clip(grid["gp"].var[:, 0], 0, None)) * scale
    fig = Figure(figsize=(13, 3.8))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 3, sharex=True)
    panels = [(axes[0], "GP (infinite width)", gp_m, gp_s, "C0")]
    if fw is not None:
        fw_m = fw.mean[:, 0] * scale + y_mu
        fw_s = np.sqrt(np.clip(fw.var[:, 0], 0, None)) * scale
        panels.append((axes[1], f"finite width n={width} (1/n)", fw_m, fw_s, "C3"))
    for ax, title, m, s, color in panels:
        ax.plot(dist, elev, color="0.6", lw=1, label="profile (all points)")
        ax.fill_between(grid_km, m - 2 * s, m + 2 * s, color=color, alpha=0.25, label="mean ± 2 sd")
        ax.plot(grid_km, m, color=color, lw=1.5, label="posterior mean")
        ax.plot(dist[tr], elev[tr], "ko", ms=5, label="training points")
        ax.plot(dist[te], elev[te], "x", color="0.3", ms=5, label="test points")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("distance east [km]")
        ax.set_ylabel("elevation [m]")
    axes[0].legend(fontsize=7, loc="best")
    ax = axes[2]
    if fw is not None:
        ax.plot(grid_km, fw_m - gp_m, color="C3", label="mean: finite − GP")
        ax.plot(grid_km, fw_s - gp_s, color="C2", ls="--", label="sd: finite − GP")
        ref = info.get("references", {}).get(width)
        if ref is not None:
            gp_te = info["gp_test"].mean[:, 0] * scale
            ax.errorbar(dist[te], ref.mean[:, 0] * scale - gp_te, yerr=2 * ref.mean_se[:, 0] * scale, fmt="ko", ms=3,
                        lw=0.8, label="mean: importance sampling − GP (± 2 se)")
        ax.axhline(0.0, color="0.5", lw=0.8)
        for x in dist[tr]:
            ax.axvline(x, color="0.85", lw=0.8, zorder=0)
        ax.legend(fontsize=7, loc="lower right")
    ax.set_title(f"difference (n={width} minus GP)", fontsize=10)
    ax.set_xlabel("distance east [km]")
    ax.set_ylabel("difference [m]")
    fig.suptitle(f"tanh MLP depth {args.depth}: posterior of terrain elevation along latitude {lat:.3f}°", fontsize=11)
    fig.tight_layout()
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "demo_posterior.png")
    fig.savefig(path, dpi=120)
    return path
