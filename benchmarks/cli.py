"""Wall and CPU time of the command line as a user runs it: ``ngp demo``, ``ngp regress``.

    python benchmarks/cli.py                    # demo --quick, demo, regress on 50 and 442 rows
    python benchmarks/cli.py --only regress     # just the regress runs
    python benchmarks/cli.py --csv my.csv:target  # an extra regress run on a CSV of yours
    python benchmarks/cli.py --only demo --demo "--n-train 25"  # an extra demo run with these options
    python benchmarks/cli.py --only regress --data statecrime --regress "--time-budget 150"  # one table, options
    python benchmarks/cli.py --only regress --busy-after 30  # the machine busier from 30 s into each regress run
    python benchmarks/cli.py --only regress --data diabetes --regress "--max-train 400"  # the matrix-free path

Each command runs in a fresh subprocess (so JAX compilation is included, as for a user); the
script records its wall time, its CPU time (user + system of the child: comparable across
machine loads, unlike the wall time), the machine's load average before and after, and for
``regress`` the training rows chosen and why, the test rows scored and, where the predictions stopped at the
budget, why (from ``--json``). The CSVs are scikit-learn's
diabetes data (442 rows) and statsmodels' ``statecrime`` (51 rows, target ``murder``), written
to a temporary folder. Results: ``benchmarks/results/cli.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _csvs(folder: Path) -> dict:
    out = {}
    try:
        from sklearn.datasets import load_diabetes

        d = load_diabetes(as_frame=True).frame
        path = folder / "diabetes.csv"
        d.to_csv(path, index=False)
        out["diabetes (442 rows)"] = (path, "target")
    except ImportError:
        print("scikit-learn not installed: no diabetes run")
    try:
        import statsmodels.api as sm

        d = sm.datasets.statecrime.load_pandas().data
        path = folder / "statecrime.csv"
        d.to_csv(path, index_label="")  # state names as an unnamed first column, as R writes it
        out["statecrime (51 rows)"] = (path, "murder")
    except ImportError:
        print("statsmodels not installed: no statecrime run")
    return out


def _run(cmd: list[str], timeout: float, busy_after: float | None = None) -> dict:
    """Run ``ngp *cmd``; with ``busy_after`` a busy process (one core) starts that many seconds into the run and
    ends with it (the machine getting busier after ``ngp regress`` timed its probe)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT)] + [p for p in [os.environ.get("PYTHONPATH")] if p])}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    load0 = os.getloadavg()
    busy = []
    timer = None if busy_after is None else threading.Timer(busy_after, lambda: busy.append(
        subprocess.Popen([sys.executable, "-c", "while True: pass"])))
    t0 = time.perf_counter()
    try:
        if timer is not None:
            timer.start()
        # from ROOT: ``-m`` puts the working folder ahead of PYTHONPATH, so another folder's ngp could be run
        proc = subprocess.run([sys.executable, "-m", "ngp", *cmd], env=env, capture_output=True, text=True,
                              timeout=timeout, cwd=ROOT)
        rc, out, err = proc.returncode, proc.stdout, proc.stderr
    except subprocess.TimeoutExpired as exc:
        rc, out, err = "timeout", exc.stdout or "", exc.stderr or ""
    finally:
        if timer is not None:
            timer.cancel()
        for b in busy:
            b.kill()
            b.wait()
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"command": "ngp " + " ".join(cmd), "exit": rc, "wall_s": round(wall, 1), "cpu_s": round(cpu, 1),
            "load_before": [round(x, 1) for x in load0], "load_after": [round(x, 1) for x in os.getloadavg()],
            "stdout_tail": out[-3000:] if isinstance(out, str) else "", "stderr_tail": (err or "")[-1500:]
            if isinstance(err, str) else ""}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", choices=["demo", "regress"])
    p.add_argument("--csv", action="append", default=[], help="PATH:TARGET, an extra regress run")
    p.add_argument("--demo", action="append", default=[], metavar="OPTIONS",
                   help="an extra demo run with these options")
    p.add_argument("--regress", default="", metavar="OPTIONS",
                   help="options added to every regress run, e.g. \"--time-budget 150\"")
    p.add_argument("--data", metavar="NAMES", help="only these regress tables (comma-separated: diabetes, statecrime, "
                                                   "or the file names given with --csv)")
    p.add_argument("--busy-after", type=float, default=None, metavar="SECONDS",
                   help="start a busy process (one core) this many seconds into each regress run")
    p.add_argument("--timeout", type=float, default=3600.0)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "cli.json"))
    args = p.parse_args()
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if args.only in (None, "demo"):
            for extra in (["--quick"], [], *(o.split() for o in args.demo)):
                print(f"ngp demo {' '.join(extra)} ...", flush=True)
                runs.append(_run(["demo", *extra, "--quiet", "--out", str(tmp / "demo")], args.timeout))
                print(f"  exit {runs[-1]['exit']}, wall {runs[-1]['wall_s']} s, CPU {runs[-1]['cpu_s']} s", flush=True)
        if args.only in (None, "regress"):
            csvs = _csvs(tmp)
            for spec in args.csv:
                path, _, target = spec.rpartition(":")
                csvs[Path(path).name] = (Path(path), target)
            keep = None if args.data is None else args.data.split(",")
            for name, (path, target) in csvs.items():
                if keep is not None and not any(name.startswith(k) for k in keep):
                    continue
                js = tmp / f"{path.stem}.json"
                print(f"ngp regress {name} {args.regress} ...", flush=True)
                r = _run(["regress", str(path), "--target", target, *args.regress.split(), "--quiet", "--json",
                          str(js)], args.timeout, args.busy_after)
                r["data"], r["busy_after"] = name, args.busy_after
                if js.exists():
                    res = json.loads(js.read_text())
                    r.update(n_train=res["n_train"], n_train_reason=res["n_train_reason"], method=res.get("method"),
                             probe=res["probe"], notes=res["notes"],
                             test_rows=[len(s["test_lines"]) for s in res["splits"]],
                             cut=[s.get("cut") for s in res["splits"]],
                             hyperparameters=[s["hyperparameters"] for s in res["splits"]], table=res["table"])
                runs.append(r)
                print(f"  exit {r['exit']}, wall {r['wall_s']} s, CPU {r['cpu_s']} s, training rows "
                      f"{r.get('n_train')}, test rows {r.get('test_rows')}", flush=True)
    result = {"machine": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version(),
              "git": _git(), "runs": runs}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"written to {args.out}")


def _git() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout
        dirty = subprocess.run(["git", "status", "--porcelain", "ngp"], cwd=ROOT, capture_output=True, text=True).stdout
        return head.strip() + (" (ngp/ modified)" if dirty.strip() else "")
    except OSError:
        return "unknown"


if __name__ == "__main__":
    main()
