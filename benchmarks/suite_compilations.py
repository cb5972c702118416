"""Where the test suite's compile time goes (issue 16): ``pytest -q`` with ``jax_log_compiles`` on, every
tracing, lowering (jaxpr to MLIR) and XLA compilation logged with the test that caused it.

Usage: python benchmarks/suite_compilations.py [--top 20] [--log FILE] [--duplicates] [--out NAME] [pytest args ...]
Writes benchmarks/results/suite_compilations.json: totals, the largest functions by XLA compile time
(count and seconds), the modules by compile + lowering time, and the repeated compilations (the same
function with the same argument shapes compiled more than once: cache misses, not new shapes).
``--log FILE`` keeps the raw log (test id, message), the "Compiling ... with global shapes" lines included.
Also records the peak resident memory of the run; ``NGP_TEST_RELEASE_MB=...`` in the environment changes the
threshold above which tests/conftest.py drops JAX's compiled programs after a module. The suite runs in one
process here (``-n 0``: one log, the single-process threshold), not in the default pytest-xdist workers.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

PLUGIN = r'''
import logging, os, jax
_out = os.environ["SUITE_COMPILATIONS_LOG"]
_raw = bool(os.environ.get("SUITE_COMPILATIONS_RAW"))
_cur = {"id": None}
class _Handler(logging.Handler):
    def emit(self, rec):
        msg = rec.getMessage()
        if msg.startswith("Finished") or (_raw and msg.startswith(("Compiling", "Persistent compilation cache hit"))):
            with open(_out, "a") as f:
                f.write(f"{_cur['id']}\t{msg}\n")
jax.config.update("jax_log_compiles", True)
if os.environ.get("SUITE_COMPILATIONS_CACHE"):  # an in-run persistent cache: its hits are identical programs
    jax.config.update("jax_compilation_cache_dir", os.environ["SUITE_COMPILATIONS_CACHE"])
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
_h = _Handler(logging.DEBUG)
for _name in ("jax._src.dispatch", "jax._src.interpreters.pxla", "jax._src.pjit", "jax"):
    _lg = logging.getLogger(_name)
    _lg.addHandler(_h)
    _lg.setLevel(logging.DEBUG)
    _lg.propagate = False
def pytest_runtest_setup(item):
    _cur["id"] = item.nodeid
'''

PATTERNS = {
    "xla": re.compile(r"Finished XLA compilation of (.*) in ([0-9.e+-]+) sec"),
    "mlir": re.compile(r"Finished jaxpr to MLIR module conversion (.*) in ([0-9.e+-]+) sec"),
    "trace": re.compile(r"Finished tracing \+ transforming (.*) for pjit in ([0-9.e+-]+) sec"
                        r"|Finished tracing (.*) for jit in ([0-9.e+-]+) sec"),
}


def summarise(lines, top: int) -> dict:
    """Totals, the ``top`` functions by XLA compile time and the ``top`` modules by compile + lowering time."""
    totals = dict.fromkeys(PATTERNS, 0.0)
    funcs = collections.defaultdict(lambda: [0, 0.0])
    modules = collections.defaultdict(float)
    for line in lines:
        test, msg = line.rstrip("\n").split("\t", 1)
        for kind, pat in PATTERNS.items():
            m = pat.search(msg)
            if not m:
                continue
            groups = [g for g in m.groups() if g is not None]
            name, sec = groups[0], float(groups[1])
            totals[kind] += sec
            if kind == "xla":
                funcs[name][0] += 1
                funcs[name][1] += sec
            if kind in ("xla", "mlir"):
                modules[test.split("::")[0]] += sec
            break
    by_time = sorted(funcs.items(), key=lambda kv: -kv[1][1])[:top]
    out = {"seconds": totals, "compilations": sum(c for c, _ in funcs.values()),
           "functions": [{"name": k, "count": c, "seconds": s} for k, (c, s) in by_time],
           "modules": [{"module": k, "seconds": s} for k, s in sorted(modules.items(), key=lambda kv: -kv[1])[:top]]}
    if any("\tCompiling " in line for line in lines):
        out["repeated"] = repeated(lines, top)
    hits = collections.defaultdict(lambda: [0, set()])
    for line in lines:
        test, msg = line.rstrip("\n").split("\t", 1)
        if msg.startswith("Persistent compilation cache hit for '"):
            h = hits[msg.split("'")[1]]
            h[0] += 1
            h[1].add(test.split("::")[0])
    if hits:
        out["identical"] = {"count": sum(c for c, _ in hits.values()),
                            "functions": [{"name": k, "count": c, "modules": sorted(mods)}
                                          for k, (c, mods) in sorted(hits.items(), key=lambda kv: -kv[1][0])[:top]]}
    return out


def repeated(lines, top: int) -> dict:
    """Compilations of a function whose name and argument shapes were compiled before in the run (cache
    misses: a new ``jit`` wrapper, dropped caches, or different closed-over constants), by function."""
    seen, pending = set(), None
    funcs = collections.defaultdict(lambda: [0, 0.0, set()])
    total = [0, 0.0]
    for line in lines:
        test, msg = line.rstrip("\n").split("\t", 1)
        if msg.startswith("Compiling "):
            pending = msg[len("Compiling "):].split(". Argument mapping")[0]
            continue
        m = PATTERNS["xla"].search(msg)
        if not m or pending is None:
            continue
        name, sec = m.group(1), float(m.group(2))
        if pending in seen:
            f = funcs[name]
            f[0] += 1
            f[1] += sec
            f[2].add(test.split("::")[0])
            total[0] += 1
            total[1] += sec
        seen.add(pending)
        pending = None
    by_time = sorted(funcs.items(), key=lambda kv: -kv[1][1])[:top]
    return {"count": total[0], "seconds": total[1],
            "functions": [{"name": k, "count": c, "seconds": s, "modules": sorted(mods)} for k, (c, s, mods) in by_time]}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--top", type=int, default=20, help="functions and modules listed (default 20)")
    ap.add_argument("--log", help="keep the raw log here, with the argument shapes of every compilation")
    ap.add_argument("--out", help="results file name without .json (default suite_compilations)")
    ap.add_argument("--duplicates", action="store_true",
                    help="run with an empty persistent compilation cache and count its hits per function: programs "
                         "identical to one compiled earlier in the run (with --log; timings then include the cache)")
    args, pytest_args = ap.parse_known_args()
    with tempfile.TemporaryDirectory() as tmp:
        with open(os.path.join(tmp, "suite_compilations_plugin.py"), "w") as f:
            f.write(PLUGIN)
        log = os.path.join(tmp, "compilations.log")
        env = dict(os.environ, SUITE_COMPILATIONS_LOG=log, SUITE_COMPILATIONS_RAW="1" if args.log else "",
                   SUITE_COMPILATIONS_CACHE=os.path.join(tmp, "cache") if args.duplicates else "",
                   PYTHONPATH=os.pathsep.join([tmp, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
        t0 = time.perf_counter()
        r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "suite_compilations_plugin",
                            "-p", "no:cacheprovider", "-n", "0", *pytest_args], cwd=ROOT, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        lines = open(log).readlines() if os.path.exists(log) else []
        if args.log:
            with open(args.log, "w") as f:
                f.writelines(lines)
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024**2  # GB (Linux: kB)
    out = {"command": "pytest -q " + " ".join(pytest_args), "exit_code": r.returncode,
           "summary": (r.stdout.strip().splitlines() or [""])[-1], "wall_s": wall, "peak_rss_gb": peak,
           "release_above_mb": os.environ.get("NGP_TEST_RELEASE_MB", "default"), **summarise(lines, args.top)}
    print(f"{out['summary']}\nwall {wall:.1f} s, peak {peak:.2f} GB; XLA {out['seconds']['xla']:.1f} s, MLIR {out['seconds']['mlir']:.1f} s, "
          f"tracing {out['seconds']['trace']:.1f} s over {out['compilations']} compilations")
    for f in out["functions"]:
        print(f"  {f['seconds']:7.2f} s {f['count']:5d}  {f['name'][:90]}")
    if "repeated" in out:
        rep = out["repeated"]
        print(f"repeated (same function and shapes compiled again): {rep['count']} compilations, {rep['seconds']:.1f} s")
        for f in rep["functions"]:
            print(f"  {f['seconds']:7.2f} s {f['count']:5d}  {f['name'][:60]}  {', '.join(f['modules'])[:80]}")
    if "identical" in out:
        print(f"identical programs compiled earlier in the run (cache hits): {out['identical']['count']}")
        for f in out["identical"]["functions"]:
            print(f"  {f['count']:5d}  {f['name'][:50]}  {', '.join(f['modules'])[:90]}")
    name = "suite_compilations_duplicates.json" if args.duplicates else "suite_compilations.json"
    if args.out:
        name = args.out + ".json"
    path = os.path.join(HERE, "results", name)
    with open(path, "w") as fh:
        json.dump(out, fh, indent=1)
    print("written", path)


if __name__ == "__main__":
    main()
