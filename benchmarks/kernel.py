"""Benchmark: the infinite-width (NNGP) kernel ``ngp.MLP(...).prior(X).K`` (issue #2).

Times ``ngp.MLP(depth=10, width=512, activation=A).prior(X).K`` for ``N`` standardised
random inputs (``n0 = 10``) in float64: relu (closed form), tanh (Mehler series, the
default path for tanh) and erf (closed form). Each timing is the median of repeated
calls after one warm-up call (JIT compilation excluded); a call ends when the kernel
has been copied into a NumPy array. Also measures how the time scales with ``N``.

Usage::

    python benchmarks/kernel.py            # N = 1000 plus scaling N = 250..2000 (a few minutes)
    python benchmarks/kernel.py --quick    # small N, seconds; writes results/kernel_quick.json

Writes ``benchmarks/results/kernel.json``. If ``benchmarks/results/kernel_neural_tangents.json``
exists (written by ``kernel_neural_tangents.py`` in a separate venv, see README.md) it
prints the neural-tangents / ngp time ratios.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(1, os.path.dirname(HERE))  # run from a checkout without installing ngp

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)

import numpy as np  # noqa: E402

import _kernel_setup as S  # noqa: E402
import ngp  # noqa: E402

NT_RESULTS = os.path.join(S.RESULTS_DIR, "kernel_neural_tangents.json")
NT_RESULTS_QUICK = os.path.join(S.RESULTS_DIR, "kernel_neural_tangents_quick.json")


def make_net(name: str) -> ngp.MLP:
    cfg = S.NETWORKS[name]
    return ngp.MLP(depth=S.DEPTH, width=S.WIDTH, activation=cfg["activation"],
                   C_W=cfg["C_W"], C_b=cfg["C_b"])


def kernel(net: ngp.MLP, X: np.ndarray) -> np.ndarray:
    return np.asarray(net.prior(X).K)


def bench(names, sizes, repeats) -> list[dict]:
    rows = []
    for name in names:
        net = make_net(name)
        for n in sizes:
            X = S.inputs(n)
            t = S.timed(lambda: kernel(net, X), repeats)
            K = kernel(net, X)
            rows.append({"network": name, "N": n, **t, "dtype": str(K.dtype),
                         "K_diag_range": [float(K.diagonal().min()), float(K.diagonal().max())]})
            print(f"  {name:5s} N={n:5d}  median {S.fmt_s(t['median_s']):>10s}  min {S.fmt_s(t['min_s']):>10s}",
                  flush=True)
    return rows


def scaling_exponents(rows) -> dict:
    """Least-squares slope of log(time) against log(N) per network."""
    out = {}
    for name in sorted({r["network"] for r in rows}):
        pts = sorted((r["N"], r["median_s"]) for r in rows if r["network"] == name)
        if len(pts) >= 2:
            x, y = np.log([p[0] for p in pts]), np.log([p[1] for p in pts])
            out[name] = float(np.polyfit(x, y, 1)[0])
    return out


def compare_with_nt(rows, quick: bool) -> list[str]:
    """Lines describing the neural-tangents comparison (from its results file)."""
    path = NT_RESULTS
    if quick and os.path.exists(NT_RESULTS_QUICK):
        path = NT_RESULTS_QUICK
    if not os.path.exists(path):
        return [f"neural-tangents: no {os.path.relpath(path)} (run kernel_neural_tangents.py, see README.md)"]
    with open(path) as fh:
        nt = json.load(fh)
    if nt.get("error"):
        return [f"neural-tangents: not compared: {nt['error']}"]
    lines = []
    same = (nt.get("machine", {}).get("hostname"), nt.get("machine", {}).get("cpu")) == (
        S.machine()["hostname"], S.machine()["cpu"])
    lines.append(f"neural-tangents {nt.get('neural_tangents_version')} (JAX {nt.get('jax_version')}), "
                 f"measured {nt.get('machine', {}).get('date')} on "
                 f"{'this machine' if same else 'ANOTHER machine: ratios below are not meaningful'}")
    ours = {(r["network"], r["N"]): r["median_s"] for r in rows}
    table_rows = []
    for r in nt.get("timings", []):
        t_here = ours.get((r["network"], r["N"]))
        t_same, t_same_min = r.get("ngp_same_session_median_s"), r.get("ngp_same_session_min_s")
        table_rows.append([
            r["network"], str(r["N"]), r.get("nt_layer", ""), S.fmt_s(r["median_s"]),
            S.fmt_s(t_here), "-" if t_here is None else f"{r['median_s'] / t_here:.2f}",
            S.fmt_s(t_same), "-" if not t_same else f"{r['median_s'] / t_same:.2f}",
            "-" if not t_same_min else f"{r['min_s'] / t_same_min:.2f}",
            "-" if r.get("max_abs_diff_vs_ngp") is None else f"{r['max_abs_diff_vs_ngp']:.1e}",
        ])
    lines.append(S.table(table_rows, ["net", "N", "neural-tangents layer", "NT median", "ngp (this run)",
                                      "NT/ngp", "ngp (NT session)", "NT/ngp", "NT/ngp (min)",
                                      "max|K_NT-K_ngp|"]))
    lines.append("NT/ngp > 1: ngp is faster. 'ngp (NT session)' was timed by kernel_neural_tangents.py "
                 "right after neural-tangents; 'min' compares the fastest calls (less sensitive to load).")
    for acc in nt.get("tanh_quadrature_accuracy", []):
        lines.append(f"  tanh, neural-tangents ElementwiseNumerical deg={acc['deg']:3d} (N={acc['N']}): "
                     f"max|K_NT - K_ngp| = {acc['max_abs_diff_vs_ngp']:.2e} "
                     f"({acc['max_rel_diff_vs_ngp']:.2e} of max|K|)")
    return lines


def ngp_kernels_for(inp: str, out: str, repeats: int) -> None:
    """Helper mode for kernel_neural_tangents.py: ngp kernels (and timings) for its inputs."""
    data = np.load(inp)
    jobs = json.loads(str(data["jobs"]))
    kernels, timings = {}, []
    for job in jobs:
        net = make_net(job["network"])
        X = data[f"X_{job['N']}"]
        K = kernel(net, X)
        kernels[f"K_{job['network']}_{job['N']}"] = K
        if job.get("time", False):
            t = S.timed(lambda: kernel(net, X), repeats)
            timings.append({"network": job["network"], "N": job["N"], **t})
    np.savez(out, timings=json.dumps(timings), jax_version=jax.__version__, **kernels)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="small N and few repeats (seconds)")
    p.add_argument("--repeats", type=int, default=None, help="timed calls per point (default 5, quick 3)")
    p.add_argument("--output", default=None, help="results file (default results/kernel.json, "
                   "quick: results/kernel_quick.json)")
    p.add_argument("--ngp-kernels", nargs=2, metavar=("IN_NPZ", "OUT_NPZ"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    repeats = args.repeats or (3 if args.quick else 5)
    if args.ngp_kernels:
        ngp_kernels_for(*args.ngp_kernels, repeats=repeats)
        return 0

    n_main = 200 if args.quick else S.N_MAIN
    sizes = [100, 200, 400] if args.quick else [250, 500, 1000, 2000]
    names = list(S.NETWORKS)
    output = args.output or os.path.join(S.RESULTS_DIR, "kernel_quick.json" if args.quick else "kernel.json")
    info = S.machine()
    revision = S.ngp_revision()
    print(f"ngp {ngp.__version__}, JAX {jax.__version__} ({jax.default_backend()}, "
          f"{jax.devices()[0].device_kind}), x64={jax.config.jax_enable_x64}; "
          f"{info['cpu']} x {info['cpu_count']}, load {info['load_average_at_start']}")
    print(f"NNGP kernel of MLP(depth={S.DEPTH}, width={S.WIDTH}), N standardised inputs of dim {S.IN_DIM}, "
          f"median of {repeats} calls after a warm-up")
    rows = bench(names, sizes, repeats)
    slopes = scaling_exponents(rows)

    print()
    header = ["net", "C_W", "C_b", "ngp path"] + [f"N={n}" for n in sizes] + ["time ~ N^p"]
    body = []
    for name in names:
        cfg = S.NETWORKS[name]
        t = {r["N"]: r["median_s"] for r in rows if r["network"] == name}
        body.append([name, str(cfg["C_W"]), str(cfg["C_b"]), cfg["ngp_path"]]
                    + [S.fmt_s(t.get(n)) for n in sizes] + [f"p = {slopes.get(name, math.nan):.2f}"])
    print(S.table(body, header))
    print()
    nt_lines = compare_with_nt(rows, args.quick)
    print("\n".join(nt_lines))

    try:
        load_end = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load_end = None
    result = {
        "benchmark": "NNGP kernel ngp.MLP(depth, width, activation).prior(X).K",
        "what": ("median wall time of net.prior(X).K converted to a NumPy array, after one warm-up call; "
                 "float64; X = N standard-normal inputs, each feature standardised"),
        "quick": args.quick,
        "depth": S.DEPTH, "width": S.WIDTH, "in_dim": S.IN_DIM, "seed": S.SEED, "N_main": n_main,
        "networks": S.NETWORKS,
        "ngp_version": ngp.__version__, "ngp_revision": revision, "jax_version": jax.__version__,
        "backend": jax.default_backend(), "device": jax.devices()[0].device_kind,
        "machine": {**info, "load_average_at_end": load_end},
        "timings": rows,
        "scaling_exponent": slopes,
        "neural_tangents_comparison": nt_lines,
    }
    S.write_json(output, result)
    print(f"\nwrote {os.path.relpath(output)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
