"""Speed and memory of the matrix-free finite-width posterior (``ngp._matrix_free``).

Headline: ``N_train = 1000``, ``N_test = 1000``, tanh depth 3 (width 1024, noise chosen as in
``examples/08_large_data.py``) on the Mauna Loa CO2 series (statsmodels), at the default sample
budget. Scaling: ``N_train = N_test`` in 125..1000. Each size runs in its own subprocess (peak
memory = that process's max RSS); each is called twice and the second (warm, compiled) call is
reported, with its time split (kernels, derivatives/K1, solves, pullbacks, sampling) and the
first call's total (compilation included).

    python benchmarks/matrix_free.py              # writes results/matrix_free.json
    python benchmarks/matrix_free.py --quick      # small sizes, few samples: results/matrix_free_quick.json
    python benchmarks/matrix_free.py --sizes 1000 --out matrix_free_1000.json   # the headline size alone
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.join(HERE, "..")


def worker(n_train: int, n_test: int, samples: int, width: int, seed: int = 0) -> dict:
    import jax

    jax.config.update("jax_enable_x64", True)
    import numpy as np

    sys.path.insert(0, ROOT)
    import statsmodels.datasets.co2 as co2

    import ngp
    from ngp import _matrix_free as mf
    from ngp.datasets import standardize

    frame = co2.load_pandas().data.dropna()
    years = np.asarray(frame.index.year + (frame.index.day_of_year - 1) / 365.25, dtype=float)
    ppm = frame["co2"].to_numpy(dtype=float)
    feats = np.stack([years, np.sin(2 * np.pi * years), np.cos(2 * np.pi * years)], axis=1)
    order = np.random.default_rng(0).permutation(years.size)
    tr, te = order[:n_train], order[n_train:n_train + n_test]
    XA, XB, _ = standardize(feats[tr], feats[te])
    Y, _, _ = standardize(ppm[tr][:, None], ppm[te][:, None])
    act = ngp.activation("tanh")
    L = 3
    C_W, C_b = (1.5,) * L, (0.1,) * L
    runs = []
    for call in range(2):
        t0 = time.perf_counter()
        blocks = jax.block_until_ready(mf.kernel_blocks(act, XA, XB, C_W, C_b))
        t_k = time.perf_counter() - t0
        r = mf.matrix_free_posterior(act, blocks, C_W, C_b, (width,) * (L - 1), Y, noise=0.01, samples=samples,
                                     seed=seed + call, warn=False)
        total = time.perf_counter() - t0
        runs.append(dict(total=total, kernels=t_k, **r.timings))
    corr = lambda a, b: float(np.max(np.abs(np.asarray(a) - np.asarray(b))))  # noqa: E731
    return dict(
        n_train=n_train, n_test=n_test, samples=r.samples, batches=r.batches, width=width,
        warm=runs[1], cold_total=runs[0]["total"],
        max_rss_gb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6,
        se_over_correction=dict(
            mean=float(np.max(r.mean_se)) / corr(r.mean, r.gp_mean),
            var=float(np.max(r.var_se)) / corr(r.var, r.gp_var),
            log_evidence=r.log_evidence_se / abs(r.log_evidence - r.gp_log_evidence),
        ),
        validity=dict(eps=r.validity.eps, eta=r.validity.eta, trusted=r.validity.trusted),
        backend=jax.default_backend(),
    )


def write(rows, samples, quick, name=None):
    """Write the results so far (called after every size, so a stopped run keeps what it measured)."""
    if len(rows) >= 2:
        import numpy as np

        n = np.array([r["n_train"] for r in rows], float)
        t = np.array([r["warm"]["total"] for r in rows])
        p = float(np.polyfit(np.log(n), np.log(t / n), 1)[0])
        print(f"time per training point ~ N_train^{p:.2f}")
    else:
        p = None
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "ngp"], cwd=ROOT, capture_output=True, text=True).stdout.strip())
    except OSError:
        commit, dirty = None, None
    out = dict(
        rows=rows, per_point_exponent=p, samples=samples, machine=platform.platform(), cpus=os.cpu_count(),
        load_average=os.getloadavg(), commit=commit, ngp_dirty=dirty,
        gpu="not measured (no GPU available to this task)",
        note="warm = second call in the same process (compiled); time split in seconds",
    )
    name = name or ("matrix_free_quick.json" if quick else "matrix_free.json")
    path = os.path.join(HERE, "results", name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(out, f, indent=1)
    print("wrote", path)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--sizes", type=int, nargs="*")
    ap.add_argument("--samples", type=int)
    ap.add_argument("--width", type=int, default=1024)
    ap.add_argument("--worker", type=int, nargs=2, metavar=("N_TRAIN", "N_TEST"))
    ap.add_argument("--out", help="results file name in benchmarks/results (default matrix_free[_quick].json)")
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(*args.worker, samples=args.samples, width=args.width)))
        return
    sys.path.insert(0, ROOT)
    from ngp import _matrix_free as mf

    sizes = args.sizes or ([64, 128] if args.quick else [125, 250, 500, 1000])
    samples = args.samples or (1024 if args.quick else mf.DEFAULT_SAMPLES)
    rows = []
    for N in sizes:
        cmd = [sys.executable, os.path.abspath(__file__), "--worker", str(N), str(N), "--samples", str(samples),
               "--width", str(args.width)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            print(proc.stderr[-3000:])
            raise SystemExit(1)
        row = json.loads(proc.stdout.strip().splitlines()[-1])
        row["load_average_after"] = os.getloadavg()
        rows.append(row)
        w = row["warm"]
        print(f"N_train = N_test = {N}: {w['total']:.1f} s warm ({row['cold_total']:.1f} s cold), "
              + ", ".join(f"{k} {w[k]:.1f}" for k in ("kernels", "derivatives", "solves", "pullbacks", "sampling"))
              + f"; max RSS {row['max_rss_gb']:.2f} GB; se/correction {row['se_over_correction']}", flush=True)
        write(rows, samples, args.quick, args.out)


if __name__ == "__main__":
    main()
