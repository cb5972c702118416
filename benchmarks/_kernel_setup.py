"""Shared set-up of the NNGP-kernel benchmark (NumPy only, importable from any venv).

Both ``kernel.py`` (ngp) and ``kernel_neural_tangents.py`` (neural-tangents, in its own
venv with an old JAX) build the same networks on the same inputs from this file.
"""

from __future__ import annotations

import json
import os
import platform
import time

import numpy as np

#: Number of weight layers (ngp ``depth``; neural-tangents: number of ``stax.Dense``).
DEPTH = 10
#: Hidden width: irrelevant for the infinite-width kernel, kept for completeness.
WIDTH = 512
#: Input dimension ``n0``.
IN_DIM = 10
SEED = 0
#: Kernel size of the headline numbers.
N_MAIN = 1000

#: The benchmarked networks. ``C_W`` multiplies ``1/fan_in`` (``Var(W) = C_W / n_{l-1}``),
#: ``C_b`` is the bias variance, the same in every layer. ``C_b > 0`` so that the bias
#: convention is part of the cross-check with neural-tangents.
NETWORKS = {
    "relu": {"activation": "relu", "C_W": 2.0, "C_b": 0.1, "ngp_path": "closed form (arc-cosine)"},
    "tanh": {"activation": "tanh", "C_W": 1.0, "C_b": 0.1, "ngp_path": "Mehler series (auto orders)"},
    "erf": {"activation": "erf", "C_W": 1.0, "C_b": 0.1, "ngp_path": "closed form (arcsin)"},
}

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def ngp_revision(root: str | None = None) -> dict:
    """Git commit of the checkout at ``root`` (default: this one) and whether its ``ngp/`` has uncommitted
    changes."""
    import subprocess

    root = root or os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                                text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "ngp"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "ngp_modified": None}
    return {"commit": commit or None, "ngp_modified": bool(dirty)}


def sizes_run(doc: str, default_sizes: str, default_out: str, measure, argv=None) -> dict:
    """The driver of a benchmark over ``N_train x N_test`` sizes: ``--sizes`` (comma-separated, default
    ``default_sizes``) and ``--out`` (a file name in benchmarks/results, default ``default_out``); ``measure(NA,
    NB)`` gives a list of result rows per size (each printed). Writes the rows with the machine, the commit and
    the load before and after; returns them."""
    import argparse
    import json
    import platform

    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--sizes", default=default_sizes, help="N_train x N_test, comma-separated")
    ap.add_argument("--out", default=default_out, help="results file name in benchmarks/results")
    args = ap.parse_args(argv)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    res = {"machine": platform.platform(), "cpus": os.cpu_count(), **ngp_revision(root),
           "load_before": os.getloadavg(), "rows": []}
    for size in args.sizes.split(","):
        NA, NB = (int(v) for v in size.split("x"))
        for r in measure(NA, NB):
            res["rows"].append(r)
            print(json.dumps(r), flush=True)
    res["load_after"] = os.getloadavg()
    with open(os.path.join(root, "benchmarks", "results", args.out), "w") as f:
        json.dump(res, f, indent=1)
    return res


def child_prelude(root: str) -> str:
    """The first lines of a benchmark's child program: the checkout at ``root`` first on the path, float64 on,
    ``json``, ``sys``, ``time``, ``jax``, ``np`` and ``ngp`` imported."""
    return (f"import json, sys, time\nsys.path.insert(0, {root!r})\nimport jax\n"
            "jax.config.update('jax_enable_x64', True)\nimport numpy as np\nimport ngp\n")


def child_json(code: str) -> dict:
    """Runs ``python -c code`` in a fresh process and returns the JSON object on its last line of output."""
    import json
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def inputs(n: int, dim: int = IN_DIM, seed: int = SEED) -> np.ndarray:
    """``n`` standard-normal inputs, each feature standardised to mean 0, variance 1."""
    X = np.random.default_rng(seed).normal(size=(n, dim))
    return (X - X.mean(axis=0)) / X.std(axis=0)


def machine() -> dict:
    """What the numbers were measured on (timings are only comparable on the same machine)."""
    cpu = platform.processor() or ""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = None
    return {
        "hostname": platform.node(),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "load_average_at_start": load,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
    }


def timed(fn, repeats: int, warmup: int = 1) -> dict:
    """Median / min wall time of ``fn()`` (which must block until its result is ready)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return {"median_s": float(np.median(times)), "min_s": float(np.min(times)), "times_s": times}


def fmt_s(seconds) -> str:
    if seconds is None:
        return "-"
    return f"{seconds * 1e3:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"


def write_result(name: str, data: dict) -> int:
    """Writes ``data`` to ``benchmarks/results/<name>.json`` (:func:`write_json`), says so, and returns 0 (a
    script's exit status)."""
    path = os.path.join(RESULTS_DIR, name + ".json")
    write_json(path, data)
    print(f"written {os.path.relpath(path, os.path.dirname(os.path.dirname(RESULTS_DIR)))}")
    return 0


def write_json(path: str, data: dict) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as fh:
        json.dump(data, fh, indent=2)
        fh.write("\n")
    os.replace(tmp, path)


def table(rows: list[list[str]], header: list[str]) -> str:
    cells = [header] + rows
    widths = [max(len(str(r[i])) for r in cells) for i in range(len(header))]
    out = ["  ".join(str(c).ljust(w) for c, w in zip(header, widths)),
           "  ".join("-" * w for w in widths)]
    out += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)) for r in rows]
    return "\n".join(out)
