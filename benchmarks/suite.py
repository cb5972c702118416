"""Wall time, CPU time and peak memory of the test suite (issue 16: under 8 min and 4 GB on a loaded 2-core machine).

Usage: python benchmarks/suite.py [--ci] [--busy N] [--validation] [--out NAME]. Runs ``python3 -m pytest -q``
(or, with ``--ci``, ``bash .ci/run``: install + tests, as CI does; ``--validation``: the second step,
``-m validation`` or ``.ci/run-validation``) from the repository root under ``/usr/bin/time -v`` and
writes benchmarks/results/NAME.json (default ``suite``) with the pytest summary line, wall/user/system seconds,
peak RSS, the load average before and after, the CPU model and the commit (the machine is shared: compare runs
at similar load). ``--busy N`` makes the load explicit: N single-threaded busy loops run beside the suite for
its whole duration (``--busy 1`` on a 2-core machine: "a loaded machine", one core taken by another job).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
ROOT = os.path.dirname(HERE)

import _kernel_setup  # noqa: E402  (NumPy only: the machine and commit records)


def _field(text, label):
    m = re.search(rf"{re.escape(label)}: (.+)", text)
    return m.group(1).strip() if m else None


def _seconds(hms):
    parts = [float(p) for p in hms.split(":")]
    return sum(p * 60**i for i, p in enumerate(reversed(parts)))


def _tree_rss_gb(root: int) -> float:
    """Summed resident memory (GB) of ``root`` and all its descendants (pytest-xdist workers included)."""
    kids, rss = {}, {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{pid}/status") as f:
                rss[int(pid)] = next((int(l.split()[1]) for l in f if l.startswith("VmRSS")), 0)
        except (OSError, ValueError, IndexError):
            continue
        kids.setdefault(ppid, []).append(int(pid))
    total, stack = 0, [root]
    while stack:
        p = stack.pop()
        total += rss.get(p, 0)
        stack.extend(kids.get(p, []))
    return total / 1024**2


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ci", action="store_true", help="run .ci/run (pip install + tests) instead of pytest alone")
    ap.add_argument("--busy", type=int, default=0, help="busy-loop processes beside the suite (default 0)")
    ap.add_argument("--validation", action="store_true",
                    help="the second CI step instead: .ci/run-validation with --ci, else pytest -q -m validation")
    ap.add_argument("--out", default="suite", help="results file name without .json (default suite)")
    args = ap.parse_args()
    if args.ci:
        cmd = ["bash", ".ci/run-validation" if args.validation else ".ci/run"]
    else:
        cmd = ["python3", "-m", "pytest", "-q", *(["-m", "validation"] if args.validation else [])]
    load_before = os.getloadavg()
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.busy)]
    try:
        t = time.perf_counter()
        proc = subprocess.Popen(["/usr/bin/time", "-v", *cmd], cwd=ROOT, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        peak_tree = [0.0]

        def watch():  # the sum over the process tree: /usr/bin/time reports only the largest single process
            while proc.poll() is None:
                peak_tree[0] = max(peak_tree[0], _tree_rss_gb(proc.pid))
                time.sleep(0.5)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        stdout, stderr = proc.communicate()
        wall = time.perf_counter() - t
        watcher.join()
    finally:  # the busy loops never outlive the run
        for b in busy:
            b.kill()
            b.wait()
    out = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
    text = out.stdout + out.stderr
    summary = [line for line in out.stdout.splitlines() if re.search(r"\d+ (passed|failed)", line)]
    res = {
        "command": " ".join(cmd),
        "exit_code": out.returncode,
        "summary": summary[-1] if summary else None,
        "wall_s": wall,
        "time_wall_s": _seconds(_field(text, "Elapsed (wall clock) time (h:mm:ss or m:ss)")),
        "user_s": float(_field(text, "User time (seconds)")),
        "system_s": float(_field(text, "System time (seconds)")),
        "peak_rss_gb": int(_field(text, "Maximum resident set size (kbytes)")) / 1024**2,  # largest single process
        "peak_tree_rss_gb": peak_tree[0],  # all processes together (sampled every 0.5 s)
        "load_before": load_before,
        "load_after": os.getloadavg(),
        "busy_processes": args.busy,
        "machine": platform.node(),
        "cpu_model": _kernel_setup.machine()["cpu"],
        "cpus": os.cpu_count(),
        "commit": _kernel_setup.ngp_revision()["commit"],
        # the 8-minute goal is the default run's; the validation step has none of its own
        "goal": {"peak_rss_gb": 4.0} if args.validation else {"wall_s": 480, "peak_rss_gb": 4.0},
    }
    print(json.dumps(res, indent=1))
    os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
    with open(os.path.join(HERE, "results", f"{args.out}.json"), "w") as f:
        json.dump(res, f, indent=1)
    return out.returncode


if __name__ == "__main__":
    raise SystemExit(main())
