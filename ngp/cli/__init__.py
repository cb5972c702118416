"""The ``ngp`` command line: ``ngp demo`` and ``ngp regress DATA.csv``.

Modules: ``_common`` (errors, argument types, tables, progress), ``_csv`` (reading the table),
``_budget`` (timed probe, how many training rows fit the time budget), ``_hyper`` (the one place
where hyperparameters are chosen), ``_compare`` (baseline, GP, finite width, references),
``_regress`` and ``_demo`` (the subcommands).

Exit codes: 0 success; 2 bad input (file, column, value or option) or an input the library
refuses (``ValueError``, ``MemoryError``, ``LinAlgError``, ``OSError``, ``FloatingPointError``), reported as one line on
stderr (``NGP_DEBUG=1`` re-raises with the traceback). ``python3 -m ngp`` and the ``ngp`` console script are the same.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

from ngp import MatrixFreeConditioned as _MF

from ._common import (CLIError, Parser, activation_name, finite_float, given_options, int_at_least, int_list,
                      memory_size, name_list, output_dir, output_file)

__all__ = ["main", "CLIError"]

_FIT_HELP = ("keep --c-w, --c-b and --noise as given instead of fitting them (by default they are fitted "
             "by maximising the evidence of the training rows, ML-II, starting from the given values)")

_REGRESS_EPILOG = """\
Cost: the finite-width posterior needs about N_train^4 four-point Gaussian expectations for the
training rows plus N_train^3 per test row, each dearer where a row's pre-activation variance is
large. Unless --n-train is given, ngp times a small probe (16 training and 4 test rows after an
untimed warm-up on 8; JAX compilation is measured separately), extrapolates it by the rows'
variances and uses the largest number of training rows, at most --max-train, whose estimated
time fits --time-budget. The test rows are a seeded split, and the hyperparameters are fitted by
the GP evidence of the training pool's first --max-train rows (which also set the scaling):
neither depends on --n-train or on the budget, and the probe times the values the run uses.

Example: ngp regress diabetes.csv --target target --width 8,32,128 --json results.json
"""

_DEMO_EPILOG = """\
Measured on 2 CPU cores with one other job (load average ~1.5) and no compilation cache: 50-65 s
(full) and 31-41 s (--quick), against 57 s and 31-32 s with 8 and 6 training points before; most
of it is JAX compilation, importance sampling and NUTS. Under heavy load (21-27) an earlier version took
31 and 13.5 minutes.
"""


def _parser() -> argparse.ArgumentParser:
    import ngp

    fmt = argparse.RawDescriptionHelpFormatter
    p = Parser(prog="ngp", description="Bayesian inference with finite-width network priors.", allow_abbrev=False)
    sub = p.add_subparsers(dest="command", required=True, metavar="{demo,regress}", parser_class=Parser)

    d = sub.add_parser("demo", help="GP vs finite width vs references on built-in terrain data (table and figure)",
                       description="GP vs finite-width posterior vs importance sampling and NUTS over actual networks, "
                                   "on an elevation profile of built-in terrain data. Prints a table and writes a "
                                   "figure of the same profile.", epilog=_DEMO_EPILOG, formatter_class=fmt,
                       allow_abbrev=False)
    d.add_argument("--n-train", type=int_at_least(2), default=None, metavar="N",
                   help="training points of the 26-point profile (default: 18, every point but 8 held out as test "
                        "points)")
    d.add_argument("--n-test", type=int_at_least(1), default=None, metavar="M",
                   help="test points (default: every point that is not a training point)")
    d.add_argument("--depth", type=int_at_least(2), default=3, help="weight layers of the tanh MLP (default: 3)")
    d.add_argument("--noise", type=finite_float(minimum=0.0, strict=True), default=0.1, metavar="VAR",
                   help="observation-noise variance of the targets, which are scaled to the prior's mean output "
                        "variance on the training points before the fit (C_W=1, C_b=0.1; 0.333 at the defaults, "
                        "printed); the fit's start unless --fixed (default: 0.1)")
    d.add_argument("--seed", type=int_at_least(0, maximum=2**63 - 1), default=0,
                   help="seed of the split, the sampling and NUTS (default: 0)")
    d.add_argument("--quick", action="store_true",
                   help="widths 8 and 32, fewer samples (see the timings below; used by the tests)")
    d.add_argument("--fixed", action="store_true",
                   help="keep C_W=1, C_b=0.1 and --noise instead of fitting them by maximising the GP evidence of the "
                        "training points (ML-II, from those values)")
    d.add_argument("--no-nuts", action="store_true", help="skip the NUTS reference")
    d.add_argument("--out", type=output_dir, default="ngp-demo", metavar="DIR",
                   help="folder for the figure (default: ngp-demo)")
    d.add_argument("--quiet", action="store_true", help="no progress messages on stderr")
    d.set_defaults(run="demo")

    r = sub.add_parser("regress", help="baseline, GP and finite-width regression on your CSV file",
                       description="Baseline, GP and finite-width Bayesian regression on a CSV table, with the "
                                   "number of training rows chosen to fit a time budget.",
                       epilog=_REGRESS_EPILOG, formatter_class=fmt, allow_abbrev=False)
    r.add_argument("data", metavar="DATA.csv",
                   help="UTF-8 table with a header line; delimiter , ; tab or | (detected); quoted fields; "
                        "rows with empty or NA cells are dropped and counted")
    g = r.add_argument_group("columns")
    g.add_argument("--target", metavar="NAME", help="column to predict (default: the last column)")
    g.add_argument("--features", type=name_list, metavar="A,B,...",
                   help="feature columns (default: every other column)")
    g.add_argument("--ignore", type=name_list, metavar="A,B,...", help="columns to leave out")
    g = r.add_argument_group("model")
    g.add_argument("--width", type=int_list(1), default=[32], metavar="N[,N...]",
                   help="hidden width n of every hidden layer; several (8,32,128) share one computation "
                        "(default: 32)")
    g.add_argument("--depth", type=int_at_least(2), default=3,
                   help="weight layers; depth-1 hidden layers (default: 3)")
    g.add_argument("--activation", type=activation_name, default="tanh", metavar="NAME",
                   help=f"one of {', '.join(sorted(ngp.ACTIVATIONS))} (default: tanh)")
    g.add_argument("--c-w", type=finite_float(minimum=0.0, strict=True), default=1.0, metavar="C_W",
                   help="weight variance times fan-in, Var(W) = C_W / fan_in; the fit's start unless --fixed "
                        "(default: 1.0)")
    g.add_argument("--C_W", dest="c_w", type=finite_float(minimum=0.0, strict=True), default=argparse.SUPPRESS,
                   help=argparse.SUPPRESS)
    g.add_argument("--c-b", type=finite_float(minimum=0.0), default=0.0, metavar="C_B",
                   help="bias variance, Var(b) = C_b; the fit's start unless --fixed (default: 0.0)")
    g.add_argument("--C_b", dest="c_b", type=finite_float(minimum=0.0), default=argparse.SUPPRESS,
                   help=argparse.SUPPRESS)
    g.add_argument("--noise", type=finite_float(minimum=0.0, strict=True), default=0.1, metavar="VAR",
                   help="observation-noise variance in standardised target units (the training targets have "
                        "variance 1); the fit's start unless --fixed (default: 0.1)")
    g.add_argument("--fixed", action="store_true", help=_FIT_HELP)
    g.add_argument("--fit-evidence", choices=("gp", "finite-width"), default="gp",
                   help="evidence the fit maximises: the GP's (seconds to a minute) or, after it, the O(1/n) "
                        "finite-width one at the first --width, on the training rows used (each step costs five "
                        "training blocks; the time budget counts 10 steps, timed on 8 rows; default: gp)")
    g.add_argument("--method", choices=("auto", "exact", "matrix-free"), default="auto",
                   help="finite-width path: exact (dense vertex; the budget chooses the training rows) or "
                        "matrix-free (Monte-Carlo estimate of the vertex terms with standard errors, hundreds to "
                        "thousands of rows: every pool row up to --max-train; not timed against --time-budget); "
                        f"auto: matrix-free when more than {_MF.AUTO_EXACT_MAX} training rows are asked (--n-train, "
                        "or --max-train with a pool that large), else exact (default: auto)")
    g.add_argument("--samples", type=int_at_least(2), default=None, metavar="S",
                   help="Monte-Carlo samples per layer of the matrix-free path; its standard errors fall like "
                        f"S^-1/2 (default: {_MF.DEFAULT_SAMPLES})")
    g = r.add_argument_group("rows and budget")
    g.add_argument("--n-train", type=int_at_least(2), default=None, metavar="N",
                   help="training rows (default: as many as fit --time-budget, at most --max-train)")
    g.add_argument("--max-train", type=int_at_least(2), default=64, metavar="N",
                   help="most training rows the budget may choose; the GP-evidence fit of the hyperparameters "
                        "uses this many rows of the training pool (default: 64)")
    g.add_argument("--time-budget", type=finite_float(minimum=0.0, strict=True), default=120.0, metavar="SECONDS",
                   help="wall time from the start of the run: the hyperparameter fit, the probe and the finite-width "
                        "computation; predictions that would run past it stop, and every model is scored on the test "
                        "rows done (default: 120)")
    g.add_argument("--test-fraction", type=finite_float(minimum=0.0, strict=True, maximum=0.9), default=0.2,
                   metavar="F", help="share of the rows held out as test rows (default: 0.2)")
    g.add_argument("--n-test", type=int_at_least(1), default=100, metavar="M",
                   help="most test rows evaluated (per fold); the first M of the seeded test set (default: 100)")
    g.add_argument("--folds", type=int_at_least(2), default=None, metavar="K",
                   help="K-fold cross-validation instead of one split: every row is a test row once")
    g.add_argument("--max-memory", type=memory_size, default=4 * 1024**3, metavar="SIZE",
                   help="memory for the finite-width vertex and the prediction batches (exact path) or the "
                        "estimator's arrays (matrix-free path), e.g. 8G or 512M; a training set that needs more is "
                        "reduced to the most rows that fit (--n-train: refused) (default: 4G)")
    g.add_argument("--four-point-order", type=int_at_least(2), default=None, metavar="K",
                   help="Gauss-Hermite nodes per dimension for the four-point expectations (default: the "
                        "library's); cost grows as K^4")
    g = r.add_argument_group("reference and output")
    g.add_argument("--truth", type=int_at_least(2, off=0), default=0, metavar="S",
                   help="also compare with importance sampling over S actual random networks per width (e.g. "
                        "100000; default: 0 = off); rows with an effective sample size below 100 are marked "
                        "unreliable")
    g.add_argument("--no-truth", dest="truth", action="store_const", const=0, help=argparse.SUPPRESS)
    g.add_argument("--seed", type=int_at_least(0, maximum=2**63 - 1), default=0,
                   help="seed of the split and the sampling (default: 0)")
    g.add_argument("--json", type=output_file, metavar="FILE", help="also write the results to this JSON file")
    g.add_argument("--quiet", action="store_true", help="no progress messages on stderr")
    r.set_defaults(run="regress")
    return p


#: Options that do not apply together: ``(option, dest, applies(args), why)``; ``option`` given by the user where
#: ``applies`` is false is refused (a default is never refused).
_INAPPLICABLE = (
    ("--test-fraction", "test_fraction", lambda a: not a.folds,
     "with --folds every row is a test row once; leave one of them out"),
    ("--fit-evidence", "fit_evidence", lambda a: not a.fixed,
     "--fixed keeps the given hyperparameters, nothing is fitted; leave one of them out"),
    ("--ignore", "ignore", lambda a: a.features is None,
     "--features lists the feature columns; leave --ignore out"),
    ("--time-budget", "time_budget", lambda a: a.n_train is None,
     "--n-train fixes the training rows and no time budget applies to them; leave one of them out"),
)


def _refuse_inapplicable(args, given: set) -> None:
    """Refuse an option the user gave that cannot apply with the others (before any work)."""
    for option, dest, applies, why in _INAPPLICABLE:
        if dest in given and not applies(args):
            raise CLIError(f"{option}: {why}")


def _refuse_json_over_data(args) -> None:
    """Refuse ``--json`` naming the data file itself (the results would overwrite the data), before any work."""
    if args.json is None or not (os.path.exists(args.json) and os.path.exists(args.data)):
        return
    try:
        same = os.path.samefile(args.json, args.data)
    except OSError:  # cannot be compared (stat refused): the write itself will say what is wrong
        return
    if same:
        also = "" if args.json == args.data else f" ({args.data!r})"
        raise CLIError(f"--json: {args.json!r} is the data file itself{also}; the results would overwrite the data, "
                       "give another file name")


def main(argv: list[str] | None = None) -> int:
    """Run the command line with ``argv`` (default: ``sys.argv[1:]``); returns the exit code.

    The commands compute in float64: called from Python, JAX's ``jax_enable_x64`` is set for the run and restored
    to the caller's value afterwards."""
    import jax

    x64 = bool(jax.config.jax_enable_x64)
    try:
        return _main(argv)
    finally:
        if bool(jax.config.jax_enable_x64) != x64:
            jax.config.update("jax_enable_x64", x64)


def _main(argv: list[str] | None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:  # --help (0) or a one-line usage error (2): return the code, like every other exit
        return int(exc.code or 0)
    try:
        if args.run == "regress":
            _refuse_inapplicable(args, given_options(_parser(), argv))
            _refuse_json_over_data(args)
        if args.run == "demo":
            from ._demo import run
        else:
            from ._regress import run
        return int(run(args) or 0)
    except CLIError as exc:
        print(f"ngp {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # the reader went away (`ngp regress ... | head`): not an input error, nothing to say
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at the exit's flush
        except (OSError, ValueError):  # no file descriptor (a captured stdout)
            pass
        return 141  # as a process ended by SIGPIPE
    # the library's refusals of an input
    except (ValueError, MemoryError, np.linalg.LinAlgError, OSError, FloatingPointError, OverflowError) as exc:
        if os.environ.get("NGP_DEBUG"):
            raise
        msg = " ".join(str(exc).split())
        print(f"ngp {args.command}: error: {type(exc).__name__}: {msg} (NGP_DEBUG=1 shows the traceback)",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"ngp {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
