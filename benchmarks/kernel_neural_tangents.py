"""Benchmark: neural-tangents' ``kernel_fn(X, X, 'nngp')`` for the networks of ``kernel.py``.

neural-tangents 0.6.5 (the last release) imports ``jax.random.KeyArray`` and TensorFlow,
so it needs an old JAX in its own venv, outside the repository::

    python3 -m venv /tmp/ntvenv
    /tmp/ntvenv/bin/pip install "neural-tangents==0.6.5" "jax==0.4.23" "jaxlib==0.4.23" \\
        "tensorflow==2.15.*" "numpy<2" scipy
    /tmp/ntvenv/bin/python benchmarks/kernel_neural_tangents.py [--quick] [--ngp-python python3]

The same networks as ``kernel.py`` (``_kernel_setup.NETWORKS``) are built with ``stax``:
``depth`` ``Dense(W_std=sqrt(C_W), b_std=sqrt(C_b))`` layers (NTK parametrisation, so
``Var(W) = C_W / fan_in`` for the kernel, ngp's convention) with the activation between
them: ``stax.Relu()`` and ``stax.Erf()`` (closed forms) and, for tanh, which neural-tangents
has no closed form for, ``stax.ElementwiseNumerical(jnp.tanh, deg)`` (a ``deg x deg``
Gauss-Hermite rule per kernel entry). ``kernel_fn`` is jitted and compiled ahead of time;
timings are medians of calls that end when the kernel is a NumPy array (float64).

The ngp kernels of the same inputs are computed by ``kernel.py --ngp-kernels`` run with
``--ngp-python`` (default ``$NGP_PYTHON`` or ``python3``: an interpreter with the modern
JAX that ngp needs); it also times ngp right after neural-tangents, under the same load.
Writes ``benchmarks/results/kernel_neural_tangents.json`` (or ``..._quick.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
import warnings

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import numpy as np  # noqa: E402

import _kernel_setup as S  # noqa: E402

INSTALL = ('python3 -m venv /tmp/ntvenv && /tmp/ntvenv/bin/pip install "neural-tangents==0.6.5" '
           '"jax==0.4.23" "jaxlib==0.4.23" "tensorflow==2.15.*" "numpy<2" scipy')


def fail(output: str, message: str) -> int:
    print(f"neural-tangents comparison not run: {message}", file=sys.stderr)
    S.write_json(output, {"error": message, "install": INSTALL, "machine": S.machine()})
    print(f"wrote {os.path.relpath(output)}")
    return 2


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="small N (a minute)")
    p.add_argument("--ngp-python", default=os.environ.get("NGP_PYTHON", "python3"),
                   help="interpreter that can import ngp and its JAX (default $NGP_PYTHON or python3)")
    p.add_argument("--deg", type=int, default=25, help="Gauss-Hermite degree for tanh timings "
                   "(neural-tangents' suggested starting point: 25)")
    p.add_argument("--repeats", type=int, default=None, help="timed calls per point (default 5, quick 3)")
    p.add_argument("--output", default=None)
    args = p.parse_args(argv)
    output = args.output or os.path.join(
        S.RESULTS_DIR, "kernel_neural_tangents_quick.json" if args.quick else "kernel_neural_tangents.json")
    repeats = args.repeats or (3 if args.quick else 5)

    try:
        import jax

        jax.config.update("jax_enable_x64", True)
        import jax.numpy as jnp

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import neural_tangents as nt
            from neural_tangents import stax
    except Exception as exc:  # noqa: BLE001 - report exactly why it cannot run
        return fail(output, f"cannot import neural-tangents/JAX in {sys.executable}: "
                            f"{type(exc).__name__}: {exc}. Install it in a separate venv: {INSTALL}")

    warnings.filterwarnings("ignore", message=".*Numerical Activation Layer.*")
    warnings.filterwarnings("ignore", message=".*Using JAX autodiff.*")

    def layer(name, deg):
        if name == "relu":
            return stax.Relu(), "Relu (closed form)"
        if name == "erf":
            return stax.Erf(), "Erf (closed form)"
        if name == "tanh":
            return stax.ElementwiseNumerical(jnp.tanh, deg=deg), f"ElementwiseNumerical(tanh, deg={deg})"
        raise ValueError(name)

    def kernel_fn(name, deg):
        cfg = S.NETWORKS[name]
        act, label = layer(name, deg)
        dense = lambda width: stax.Dense(width, W_std=float(np.sqrt(cfg["C_W"])),  # noqa: E731
                                         b_std=float(np.sqrt(cfg["C_b"])), parameterization="ntk")
        layers = []
        for _ in range(S.DEPTH - 1):
            layers += [dense(S.WIDTH), act]
        layers.append(dense(1))
        return stax.serial(*layers)[2], label

    compiled_cache = {}

    def compiled(name, deg, X):
        key = (name, deg, X.shape)
        if key not in compiled_cache:
            kf, label = kernel_fn(name, deg)
            t0 = time.perf_counter()
            fn = jax.jit(kf, static_argnames=("get",)).lower(X, X, get="nngp").compile()
            compiled_cache[key] = (fn, label, time.perf_counter() - t0)
        return compiled_cache[key]

    if args.quick:
        plan = {"relu": [100, 200, 400], "erf": [100, 200, 400], "tanh": [100, 200]}
        acc_n, acc_degs = 50, [10, 25, 50]
    else:
        plan = {"relu": [250, 500, 1000, 2000], "erf": [250, 500, 1000, 2000], "tanh": [250, 500, 1000]}
        acc_n, acc_degs = 100, [10, 25, 50, 100]

    info = S.machine()
    print(f"neural-tangents {nt.__version__}, JAX {jax.__version__} ({jax.default_backend()}), "
          f"x64={jax.config.jax_enable_x64}; {info['cpu']} x {info['cpu_count']}, "
          f"load {info['load_average_at_start']}", flush=True)
    sizes = sorted({n for ns in plan.values() for n in ns} | {acc_n})
    Xs = {n: S.inputs(n) for n in sizes}

    rows, nt_kernels = [], {}
    for name, ns in plan.items():
        for n in ns:
            X = jnp.asarray(Xs[n])
            fn, label, compile_s = compiled(name, args.deg, X)
            # the tanh quadrature is slow (~N^2 deg^2): a single call at large N
            reps = repeats if name != "tanh" else (min(repeats, 3) if n <= 500 else 1)
            call = lambda: np.asarray(fn(X, X))  # noqa: E731
            t = S.timed(call, reps, warmup=1 if name != "tanh" else 0)
            K = call()
            nt_kernels[(name, n)] = K
            rows.append({"network": name, "N": n, "nt_layer": label,
                         "deg": args.deg if name == "tanh" else None,
                         "compile_s": compile_s, **t, "dtype": str(K.dtype)})
            print(f"  {name:5s} N={n:5d}  {label:38s} median {S.fmt_s(t['median_s']):>10s} "
                  f"({reps} calls; compile {S.fmt_s(compile_s)})", flush=True)

    acc_kernels = {}
    for deg in acc_degs:
        X = jnp.asarray(Xs[acc_n])
        fn, label, _ = compiled("tanh", deg, X)
        acc_kernels[deg] = np.asarray(fn(X, X))
        print(f"  tanh  N={acc_n:5d}  {label:38s} (accuracy sweep)", flush=True)

    # ngp's kernels for the same inputs, and ngp timings under the same load
    ngp_info = {"ngp_python": args.ngp_python, "revision": S.ngp_revision()}
    with tempfile.TemporaryDirectory() as tmp:
        jobs = [{"network": r["network"], "N": r["N"], "time": True} for r in rows]
        if not any(j["network"] == "tanh" and j["N"] == acc_n for j in jobs):
            jobs.append({"network": "tanh", "N": acc_n, "time": False})
        inp, out = os.path.join(tmp, "in.npz"), os.path.join(tmp, "out.npz")
        np.savez(inp, jobs=json.dumps(jobs), **{f"X_{n}": X for n, X in Xs.items()})
        cmd = [args.ngp_python, os.path.join(HERE, "kernel.py"), "--ngp-kernels", inp, out,
               "--repeats", str(repeats)]
        print(f"  ngp kernels and timings: {' '.join(cmd[:2])} --ngp-kernels ...", flush=True)
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            ngp_info["error"] = (f"{' '.join(cmd)} failed (exit {proc.returncode}): "
                                 f"{proc.stderr.strip()[-2000:]}")
            print("  " + ngp_info["error"], file=sys.stderr)
            ngp_k = None
        else:
            ngp_k = dict(np.load(out))
            ngp_info["jax_version"] = str(ngp_k.pop("jax_version"))
            ngp_times = {(r["network"], r["N"]): r for r in json.loads(str(ngp_k.pop("timings")))}

    if ngp_k is not None:
        for r in rows:
            K_ngp = ngp_k[f"K_{r['network']}_{r['N']}"]
            K_nt = nt_kernels[(r["network"], r["N"])]
            diff = np.abs(K_nt - K_ngp)
            r["max_abs_diff_vs_ngp"] = float(diff.max())
            r["max_rel_diff_vs_ngp"] = float((diff / np.abs(K_ngp).max()).max())
            t_ngp = ngp_times.get((r["network"], r["N"]))
            r["ngp_same_session_median_s"] = t_ngp["median_s"] if t_ngp else None
            r["ngp_same_session_min_s"] = t_ngp["min_s"] if t_ngp else None
            r["nt_over_ngp"] = r["median_s"] / t_ngp["median_s"] if t_ngp else None
            r["nt_over_ngp_min"] = r["min_s"] / t_ngp["min_s"] if t_ngp else None
        K_ref = ngp_k[f"K_tanh_{acc_n}"]
        accuracy = []
        for deg, K in acc_kernels.items():
            d = np.abs(K - K_ref)
            accuracy.append({"N": acc_n, "deg": deg, "max_abs_diff_vs_ngp": float(d.max()),
                             "max_rel_diff_vs_ngp": float(d.max() / np.abs(K_ref).max()),
                             "max_abs_diff_diagonal": float(np.abs(np.diag(K) - np.diag(K_ref)).max())})
    else:
        accuracy = []

    print()
    body = [[r["network"], str(r["N"]), r["nt_layer"], S.fmt_s(r["median_s"]),
             S.fmt_s(r.get("ngp_same_session_median_s")),
             "-" if r.get("nt_over_ngp") is None else f"{r['nt_over_ngp']:.2f}",
             "-" if r.get("nt_over_ngp_min") is None else f"{r['nt_over_ngp_min']:.2f}",
             "-" if r.get("max_abs_diff_vs_ngp") is None else f"{r['max_abs_diff_vs_ngp']:.1e}"]
            for r in rows]
    print(S.table(body, ["net", "N", "neural-tangents layer", "NT median", "ngp median", "NT/ngp",
                         "NT/ngp (min)", "max|K_NT-K_ngp|"]))
    print("NT/ngp > 1: ngp is faster (both timed in this session; 'min' compares the fastest calls, "
          "less sensitive to other load on the machine).")
    for a in accuracy:
        print(f"tanh, deg={a['deg']:3d}, N={a['N']}: max|K_NT - K_ngp| = {a['max_abs_diff_vs_ngp']:.2e} "
              f"(relative to max|K| {a['max_rel_diff_vs_ngp']:.2e})")

    try:
        load_end = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load_end = None
    S.write_json(output, {
        "benchmark": "neural-tangents kernel_fn(X, X, 'nngp'), jitted and compiled ahead of time",
        "what": ("median wall time of the compiled kernel_fn converted to a NumPy array (float64); "
                 "tanh: at most 3 calls, and a single call at N > 500 (each takes minutes)"),
        "quick": args.quick,
        "depth": S.DEPTH, "width": S.WIDTH, "in_dim": S.IN_DIM, "seed": S.SEED,
        "networks": S.NETWORKS,
        "stax": ("serial of DEPTH x Dense(W_std=sqrt(C_W), b_std=sqrt(C_b), parameterization='ntk') "
                 "with the activation layer between consecutive Dense layers"),
        "neural_tangents_version": nt.__version__, "jax_version": jax.__version__,
        "backend": jax.default_backend(),
        "machine": {**info, "load_average_at_end": load_end},
        "ngp": ngp_info,
        "timings": rows,
        "tanh_quadrature_accuracy": accuracy,
    })
    print(f"\nwrote {os.path.relpath(output)}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except SystemExit:
        raise
    except Exception:  # noqa: BLE001
        traceback.print_exc()
        sys.exit(1)
