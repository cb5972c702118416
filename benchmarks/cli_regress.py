"""``ngp regress`` on a 50-row real CSV (issue 16's check): rows used, stage times, total.

    nice -n 10 python benchmarks/cli_regress.py                 # cold then warm compilation cache
    nice -n 10 python benchmarks/cli_regress.py --root DIR --runs off --label before --append  # another tree
    python benchmarks/cli_regress.py --args "--fit-evidence finite-width" --out cli_regress_fw.json  # options

The CSV is the first 50 rows of scikit-learn's diabetes data (target ``target``). Each run is a
fresh ``python -m ngp regress`` subprocess (JAX compilation included, as for a user). Two runs:
``cold`` with an empty compilation cache (``NGP_CACHE_DIR`` set to a new folder: a first run on
a machine) and ``warm`` with the cache the cold run filled (any later run). Stage times are the
``[ngp] <stage>: done in <s> s`` lines of the progress output. Results:
``benchmarks/results/cli_regress.json`` (each run labelled; the machine's load average is recorded
because wall times on a shared machine depend on it: compare ``cpu_s`` across loads).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cli import _git  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
_STAGE = re.compile(r"^\[ngp\] (.+?): done in ([0-9.]+) s$", re.M)


def _csv(folder: Path) -> Path:
    from sklearn.datasets import load_diabetes

    path = folder / "diabetes50.csv"
    load_diabetes(as_frame=True).frame.iloc[:50].to_csv(path, index=False)
    return path


def run_once(path: Path, cache: str, root: Path, timeout: float, extra: list[str]) -> dict:
    js = path.with_suffix(f".{time.time_ns()}.json")
    env = {**os.environ, "NGP_CACHE_DIR": cache, "PYTHONPATH": str(root)}
    cmd = [sys.executable, "-m", "ngp", "regress", str(path), "--target", "target", "--json", str(js), *extra]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    load0 = os.getloadavg()
    t0 = time.perf_counter()
    try:
        # run in the CSV's folder: ``-m ngp`` from a checkout would import that checkout's ngp, not --root's
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=path.parent)
        rc, err = proc.returncode, proc.stderr
    except subprocess.TimeoutExpired as exc:
        rc, err = "timeout", exc.stderr or ""
        err = err.decode() if isinstance(err, bytes) else err
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    r = {"exit": rc, "wall_s": round(wall, 1),
         "cpu_s": round(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime, 1),
         "load_before": [round(x, 1) for x in load0], "load_after": [round(x, 1) for x in os.getloadavg()]}
    r["stages_s"] = {name: float(s) for name, s in _STAGE.findall(err)}
    if js.exists():
        res = json.loads(js.read_text())
        r.update(rows_used=res["rows_used"], n_train=res["n_train"], n_train_reason=res["n_train_reason"],
                 test_rows=[len(s["test_lines"]) for s in res["splits"]], probe=res["probe"],
                 fit_probe=res.get("fit_probe"),
                 hyperparameters=[s["hyperparameters"] for s in res["splits"]], table=res["table"],
                 total_s=res["total_s"])
    return r


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", default=str(ROOT), help="source tree whose ngp is run (default: this one)")
    p.add_argument("--runs", default="cold,warm", help="comma-separated: cold, warm, off (no cache)")
    p.add_argument("--timeout", type=float, default=900.0)
    p.add_argument("--label", default=None, help="name of these runs in the results (default: the git revision)")
    p.add_argument("--append", action="store_true", help="add the runs to the results file instead of replacing it")
    p.add_argument("--args", default="", help="more options of ngp regress, e.g. '--fit-evidence finite-width'")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "cli_regress.json"))
    args = p.parse_args()
    if not os.path.dirname(args.out):
        args.out = str(ROOT / "benchmarks" / "results" / args.out)
    out = {"cpus": os.cpu_count(), "runs": []}
    if args.append and Path(args.out).exists():
        out = json.loads(Path(args.out).read_text())
    label = args.label or f"{_git()} ({args.root})"
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        path = _csv(tmp)
        cache = str(tmp / "jax-cache")
        for kind in args.runs.split(","):
            print(f"ngp regress diabetes50.csv ({kind} cache) ...", flush=True)
            r = run_once(path, "" if kind == "off" else cache, Path(args.root), args.timeout, args.args.split())
            r["cache"], r["label"], r["args"] = kind, label, args.args
            out["runs"].append(r)
            print(f"  exit {r['exit']}, wall {r['wall_s']} s, CPU {r['cpu_s']} s, training rows {r.get('n_train')}, "
                  f"load {r['load_before']}", flush=True)
            for name, s in r["stages_s"].items():
                print(f"    {s:7.1f} s  {name}", flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
