"""Test-module time under XLA:CPU compile settings, alternating (the machine drifts).

Runs the given test modules in one pytest process (``-n 0``) once per setting per round, the settings in
turn, and records wall, user and system seconds. Settings are complete ``XLA_FLAGS`` values, so the suite's
own defaults (``tests/conftest.py``) add nothing.

    python benchmarks/suite_flags.py [--rounds 2] [--modules tests/test_steps.py ...] [--out suite_flags]

Writes ``benchmarks/results/<out>.json``.
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

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASE = "--xla_cpu_use_fusion_emitters=false --xla_backend_optimization_level=1"
SETTINGS = {
    "suite before (two flags)": BASE + " --xla_llvm_disable_expensive_passes=false",
    "suite now (expensive LLVM passes off)": BASE + " --xla_llvm_disable_expensive_passes=true",
}
COMPILE_BOUND = ["tests/test_steps.py", "tests/test_ntk.py", "tests/test_regression.py"]


def run(modules, flags):
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-n", "0", "-p", "no:cacheprovider", *modules],
                       cwd=ROOT, env=dict(os.environ, XLA_FLAGS=flags), capture_output=True, text=True)
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    summary = (r.stdout.strip().splitlines() or [""])[-1]
    return {"exit_code": r.returncode, "summary": summary, "wall_s": wall,
            "user_s": after.ru_utime - before.ru_utime, "system_s": after.ru_stime - before.ru_stime}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=2, help="alternating rounds (default 2)")
    ap.add_argument("--modules", nargs="+", default=COMPILE_BOUND, help="test modules (default: three compile-bound)")
    ap.add_argument("--out", default="suite_flags", help="results file name without .json")
    args = ap.parse_args()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip()
    out = {"machine": platform.platform(), "cpus": os.cpu_count(), "commit": commit, "modules": args.modules,
           "settings": SETTINGS, "load_before": os.getloadavg(), "rows": []}
    for k in range(args.rounds):
        for label, flags in SETTINGS.items():
            row = {"round": k, "setting": label, **run(args.modules, flags)}
            out["rows"].append(row)
            print(f"round {k} {label:40s} wall {row['wall_s']:7.1f} s user {row['user_s']:7.1f} s "
                  f"system {row['system_s']:6.1f} s  {row['summary']}", flush=True)
    out["load_after"] = os.getloadavg()
    path = os.path.join(ROOT, "benchmarks", "results", args.out + ".json")
    with open(path, "w") as f:
        json.dump(out, f, indent=1)
    print("wrote", path)


if __name__ == "__main__":
    main()
