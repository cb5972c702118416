"""``ngp regress DATA.csv``: baseline, GP and finite-width regression on the user's table.

Steps (each printed): read the CSV; a seeded train/test split that does not depend on the
number of training rows (or ``--folds`` k-fold); a timed probe that sets how many training rows
the finite-width posterior can afford within ``--time-budget`` (``ngp.cli._budget``), run with
the hyperparameters (``ngp.cli._hyper.fit_hyperparameters``) fitted on the training pool's first
``--max-train`` rows, which also set the standardisation; the comparison table.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
import warnings

import numpy as np

from . import _budget
from ._common import CLIError, Progress, collect_warnings, enable_x64, fmt, plural, table
from ._compare import ESS_MIN, Split, cells, compare, expansion_cell, notes
from ._csv import read_table
from ._hyper import fit_hyperparameters

__all__ = ["run", "probe_work", "row_work", "fit_step_work", "PROBE_TRAIN", "PROBE_TEST", "PROBE_WARMUP", "MIN_TRAIN",
           "FIT_PROBE_ROWS", "FIT_STEPS"]

#: Probe size: training and test rows timed to extrapolate the cost, after an untimed warm-up on
#: PROBE_WARMUP rows (compilation and one-time set-up; below ~16 rows fixed costs hide the N^4 growth).
PROBE_TRAIN, PROBE_TEST = 16, 4
PROBE_WARMUP = (8, 2)
#: Fewest training rows the budget may choose (when the data have them).
MIN_TRAIN = 8
#: --fit-evidence finite-width: rows at which one step of the fit (the finite-width evidence and its gradient,
#: on the fixed four-point rule) is timed (below 8 rows fixed costs hide the growth: the step grew 7.3x from 4
#: rows to 8), and the steps a fit is charged: L-BFGS-B's evaluations from the GP optimum, 1-8 (median 5) in
#: 14 fits of 4-14 diabetes rows (docs/cli.md), with a margin.
FIT_PROBE_ROWS, FIT_STEPS = MIN_TRAIN, 10
#: Test inputs farther than this many training standard deviations from the training mean are refused.
MAX_Z = 1e6


def standardize(train, *others):
    """``ngp.datasets.standardize`` (overflow-safe), with a check that everything stays finite."""
    from ngp.datasets import standardize as std

    out = std(train, *others)
    if not all(np.all(np.isfinite(a)) for a in out[:-1]):  # pragma: no cover - standardize is overflow-safe
        raise CLIError("DATA: values too large to standardise in float64")
    return out


def check_extreme(Xte, lines, features):
    """Refuse a standardised test value (input or target; columns named ``features``) absurdly far outside the
    training data (its kernel or its error would overflow or be meaningless)."""
    z = np.abs(Xte)
    if z.size and z.max() > MAX_Z:
        i, j = np.unravel_index(int(np.argmax(z)), z.shape)
        raise CLIError(f"DATA: column {features[j]!r} on line {lines[i]} lies {z[i, j]:.3g} training standard "
                       "deviations from the training mean; remove the row or rescale the column")


def _splits(n: int, args):
    """``[(pool, test)]`` row indices: a seeded permutation; the test rows do not depend on --n-train."""
    order = np.random.default_rng(args.seed).permutation(n)
    if args.folds:
        if args.folds > n:
            raise CLIError(f"--folds {args.folds}: more folds than the {n} usable rows")
        parts = np.array_split(order, args.folds)
        out = [(np.concatenate([p for j, p in enumerate(parts) if j != k]), parts[k]) for k in range(args.folds)]
        if min(len(p) for p, _ in out) < 2:
            raise CLIError(f"--folds {args.folds}: too few rows ({n}) for training in each fold")
        return out
    n_test = max(1, int(round(args.test_fraction * n)))
    if n - n_test < 2:
        raise CLIError(f"--test-fraction {args.test_fraction}: leaves {n - n_test} training rows of {n}; at least 2 "
                       "are needed")
    return [(order[: n - n_test], order[n - n_test:])]


def _make_net(args, hyper=None):
    import ngp

    C_W, C_b = (args.c_w, args.c_b) if hyper is None else (hyper.C_W, hyper.C_b)
    return lambda w: ngp.MLP(args.depth, w, activation=args.activation, C_W=C_W, C_b=C_b)


def _options(args) -> dict:
    """Prior options for ``ngp.condition``."""
    opts = {"max_memory": args.max_memory}
    if args.four_point_order is not None:
        opts["four_point_order"] = args.four_point_order
    return opts


def _path(args, n_train: int) -> str:
    """The finite-width path at ``n_train`` training rows: ``"exact"`` or ``"matrix_free"`` (``--method``; ``auto``:
    the library's rule, matrix-free above ``ngp.MatrixFreeConditioned.AUTO_EXACT_MAX`` rows)."""
    import ngp

    if args.method == "auto":
        return "matrix_free" if n_train > ngp.MatrixFreeConditioned.AUTO_EXACT_MAX else "exact"
    return args.method.replace("-", "_")


def _path_options(args, path: str) -> dict:
    """``ngp.condition``'s options for the comparison on ``path``: the exact path's prior options, or the
    matrix-free path's samples, seed and memory bound."""
    if path == "exact":
        return {**_options(args), "method": "exact"}
    return {"method": "matrix_free", "samples": args.samples, "seed": args.seed, "max_memory": args.max_memory}


def _refuse_path_options(args, path: str) -> None:
    """Refuse the options that belong to the other finite-width path than ``path``, before any work."""
    if path == "exact":
        if args.samples is not None:
            raise CLIError("--samples: the exact path has no Monte-Carlo samples; leave it out or use --method "
                           "matrix-free")
        return
    if args.fit_evidence == "finite-width" and not args.fixed:
        raise CLIError("--fit-evidence finite-width: the fit runs the exact finite-width evidence, not the matrix-free "
                       "path; use --method exact (and at most a few dozen training rows) or --fit-evidence gp")
    if args.four_point_order is not None:
        raise CLIError("--four-point-order: the matrix-free path has no four-point rule; leave it out or use "
                       "--method exact")


def _describe_path(args, path: str) -> str:
    """The line saying which finite-width path runs."""
    import ngp

    if path == "exact":
        return "finite-width path: exact (dense four-point vertex)"
    samples = ngp.MatrixFreeConditioned.DEFAULT_SAMPLES if args.samples is None else args.samples
    return (f"finite-width path: matrix-free (Monte-Carlo estimate of the vertex terms, {samples} samples per layer, "
            f"seed {args.seed}; standard errors in the notes; not timed against --time-budget; docs/matrix-free.md)")


def probe_work(args, Xp, yp, Xt, hyper=None):
    """``work(nt, mt, mark)`` for :func:`ngp.cli._budget.probe`: the finite-width training block on the
    first ``nt`` rows of ``Xp``, ``mark()``, then the prediction at the first ``mt`` rows of ``Xt``, with the
    hyperparameters ``hyper`` (:class:`ngp.cli._hyper.Hyperparameters`; ``None``: the given ones)."""
    import ngp

    net = _make_net(args, hyper)(args.width[0])
    noise = args.noise if hyper is None else hyper.noise
    opts = _options(args)

    def work(nt, mt, mark):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cond = ngp.condition(net, Xp[:nt], yp[:nt], noise=noise, **opts)
            try:
                cond.log_evidence
            except np.linalg.LinAlgError:  # the training block was computed; only its timing matters here
                pass
            mark()
            cond.predict(Xt[:mt])

    return work


def fit_step_work(args, Xp, yp, hyper):
    """``step(n)``: one step of the ``--fit-evidence finite-width`` fit on the first ``n`` rows of ``Xp``: the
    objective :func:`ngp.fit_hyperparameters` evaluates (``ngp._hyper.evidence_objective``: the finite-width log
    evidence and its gradient in ``(log C_W, log C_b, log noise)`` by central differences) at ``hyper``; returns
    ``(gradient (3,), value)`` of the log evidence."""
    import jax
    import jax.numpy as jnp

    from .._hyper import evidence_objective

    net = _make_net(args, hyper)(args.width[0])
    opts = {k: v for k, v in _options(args).items() if k == "four_point_order"}
    dense = net.dense_steps()
    theta = jnp.log(jnp.array([float(np.mean(hyper.C_W)), max(float(np.mean(hyper.C_b)), 1e-6), hyper.noise]))
    kept = [jnp.asarray([float(d.C_W) for d in dense]), jnp.asarray([float(d.C_b) for d in dense]),
            jnp.asarray(float(hyper.noise))]

    def step(n):
        objective = evidence_objective(net, np.asarray(Xp[:n], dtype=float), True, (1, 1, 1), False, len(dense), opts)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            grad, value = jax.block_until_ready(objective(theta, jnp.asarray(yp[:n], dtype=float), *kept))
        return -grad, -value

    return step


def _probe(args, Xp, yp, Xt, progress, hyper=None, *, cap: int | None = None):
    """Time the finite-width computation on PROBE_TRAIN rows (fewer in a smaller pool, or at most ``cap``: those that
    fit --max-memory) and PROBE_TEST test rows (after the warm-up), with the hyperparameters ``hyper`` (the
    quadrature's cost depends on them: larger ``C_W`` means larger variances and more nodes)."""
    work = probe_work(args, Xp, yp, Xt, hyper)
    n, m = min(PROBE_TRAIN, len(Xp), cap or len(Xp)), min(PROBE_TEST, len(Xt))
    warm = (min(PROBE_WARMUP[0], n), min(PROBE_WARMUP[1], m))
    probe, _ = progress.run(f"probe: timing {n} training and {m} test rows (after a warm-up on {warm[0]})",
                            lambda: _budget.probe(work, n, m, warmup=warm))
    return _budget.CostModel(probe, work=row_work(args, Xp, Xt, hyper))


def _split_works(fits: _Fits, splits) -> tuple:
    """k-fold: the :class:`ngp.cli._budget.Work` of each of ``splits``, its rows standardised and its
    hyperparameters fitted as the run will (the fits are kept for the run)."""
    args, out = fits.args, []
    for p, t in splits:
        Xf, yf, Xte, _, _ = fits.rows(p, t)
        out.append(row_work(args, Xf, Xte, None if args.fixed else fits.fit(Xf, yf, False)))
    return tuple(out)


def row_work(args, Xp, Xt, hyper=None) -> _budget.Work:
    """The pre-activation variances of the rows ``Xp`` (training pool) and ``Xt`` (test rows) at every hidden
    layer of the network with the hyperparameters ``hyper``: the infinite-width kernels' diagonals."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # large variances are warned about where the posterior is computed
        kernels = _make_net(args, hyper)(args.width[0]).prior(np.concatenate([Xp, Xt])).kernels[:-1]
    k = np.stack([np.diag(np.asarray(K)) for K in kernels])
    return _budget.Work(k[:, : len(Xp)], k[:, len(Xp):])


def _probe_fit(args, Xp, yp, progress, fits: _Fits):
    """``(FitProbe, line)``: a step of the ``--fit-evidence finite-width`` fit timed on FIT_PROBE_ROWS rows at the
    GP fit of ``(Xp, yp)`` (where the finite-width fit starts), and the line that reports it. The fit's first
    stage, the GP evidence maximised on the rows it fits, is charged what that GP fit took."""
    hyper = fits.fit(Xp, yp, False)
    rows = min(FIT_PROBE_ROWS, len(Xp))
    step, _ = progress.run(f"probe: timing a step of the finite-width evidence fit on {rows} rows",
                           lambda: _budget.probe_step(fit_step_work(args, Xp, yp, hyper), rows, FIT_STEPS))
    step = dataclasses.replace(step, gp_s=fits.gp_seconds(Xp, yp))
    return step, (f"  probe: a step of the finite-width evidence fit on {rows} rows took {step.step_s:.1f} s "
                  f"({step.compile_s:.0f} s compiling before); a fit is charged {step.gp_s:.0f} s for its GP "
                  f"stage and {FIT_STEPS} steps ~ C(N_train + 3, 4)")


def _largest_fitting(n: int, need, limit: float) -> tuple[int, float]:
    """``(m, need(m))`` for the largest ``m <= n`` with ``need(m) <= limit`` (``need`` increasing; each step assumes
    it grows like ``m^4``, as on the exact path, so a slower growth, ``m^2`` on the matrix-free path, is approached
    from above in more steps)."""
    m = need(n)
    while m > limit and n > 1:
        n = max(1, min(n - 1, int(n * (limit / m) ** 0.25)))
        m = need(n)
    return n, m


def _fit_memory(n_train: int, Xtr, ytr, args, explicit: bool, *, path: str = "exact",
                n_test: int = 0) -> tuple[int, str | None]:
    """``(n, note)``: the largest training size ``n <= n_train`` that fits ``--max-memory`` on ``path``: the dense
    training vertex (``net.prior(...).memory_estimate()``) and two test rows' working memory (the deadline's batches
    are then cut to what fits: :func:`ngp.cli._compare.compare`), or the matrix-free estimator predicting ``n_test``
    rows at once (``ngp.MatrixFreeConditioned.memory_estimate``); with ``explicit`` (``--n-train``) a refusal
    instead."""
    import ngp

    from .._posterior import predict_bytes_per_point

    net, limit = _make_net(args)(args.width[0]), args.max_memory
    batch = 2  # the fewest test rows a batch of the deadline's holds (deadline_batch)

    def need(n):
        if path == "exact":
            prior = net.prior(Xtr[:n], max_memory=limit)
            return max(prior.memory_estimate(), batch * predict_bytes_per_point(prior, n, ytr.shape[1]))
        return ngp.condition(net, Xtr[:n], ytr[:n], noise=args.noise, method="matrix_free").memory_estimate(n_test)

    first = need(n_train)
    if first <= limit:
        return n_train, None
    gib = lambda b: f"{b / 1024**3:.2f} GiB" if b >= 1024**3 else f"{b / 1024**2:.3g} MiB"  # noqa: E731
    what = "" if path == "exact" else f" with {n_test} test rows"
    if explicit:
        name = "finite-width posterior" if path == "exact" else "matrix-free posterior"
        raise CLIError(f"--n-train {n_train}: the {name} needs about {gib(first)}{what} (> --max-memory {gib(limit)}); "
                       "raise --max-memory or lower --n-train" + ("" if path == "exact" else " or --n-test"))
    n, m = _largest_fitting(n_train, need, limit)
    if n < 2 or m > limit:
        raise CLIError(f"--max-memory {gib(limit)}: even 2 training rows need more{what}; raise it")
    return n, f"memory: {n_train} rows need about {gib(first)}{what} > --max-memory {gib(limit)}; using {n}"


def _aggregate(fold_rows: list[list], truth: bool) -> list[dict]:
    """Table cells over folds: mean ± standard error of each metric."""
    out = []
    for rows in zip(*fold_rows):
        c = cells(rows[0], truth=truth)

        def pm(attr, spec):
            vals = np.array([getattr(r, attr) for r in rows if getattr(r, attr) is not None], dtype=float)
            if vals.size == 0:
                return "-"
            unit = float(np.max(np.abs(vals))) or 1.0  # targets of order 1e300: no overflow in the squares
            u = vals / unit
            se = unit * u.std(ddof=1) / math.sqrt(vals.size) if vals.size > 1 else 0.0
            return f"{format(unit * u.mean(), spec)} ± {format(se, '.2g')}"

        c["test RMSE"], c["test log-lik"] = pm("rmse", ".4g"), pm("loglik", ".3f")
        c["log evidence"] = pm("log_evidence", ".3f")
        exps = [r.expansion for r in rows if r.expansion is not None]
        if exps:
            c["1/n size"] = expansion_cell(max(exps))
        times = [r.time_s for r in rows if r.time_s is not None]
        c["time [s]"] = fmt(sum(times) if times else None, ".1f")  # "-" where no fold has one, as in one split
        if truth:
            ess = [r.truth_ess for r in rows if r.truth_ess is not None]
            if ess and min(ess) < ESS_MIN:
                c["|mean-IS|"] = c["|GP mean-IS|"] = f"unreliable (ESS {min(ess):.0f})"
        out.append(c)
    return out


class _Fits:
    """The run's data and its hyperparameter fits: :meth:`rows` standardises a split as the fits see it,
    :meth:`fit` fits once per (rows, evidence) and remembers; ``probe`` (a :class:`ngp.cli._budget.FitProbe`,
    ``--fit-evidence finite-width``) states a finite-width fit's estimated time."""

    def __init__(self, args, data, progress):
        self.args, self.data, self.progress = args, data, progress
        self.done, self.seconds, self.probe = {}, {}, None

    def rows(self, p, t):
        """The pool's first ``--max-train`` rows (or ``--n-train``, when larger) and the test rows, standardised by
        those rows: the hyperparameters are fitted on them, so that neither they nor the scaling depend on how many
        rows the finite-width posterior can afford."""
        args, data = self.args, self.data
        f = p[: max(args.max_train, args.n_train or 0)]
        Xf, Xte, _ = standardize(data.X[f], data.X[t])
        yf, yte, (mu, sd) = standardize(data.y[f, None], data.y[t, None])
        check_extreme(np.hstack([Xte, yte]), data.lines[t], (*data.features, data.target))
        return Xf, yf, Xte, yte, (float(mu[0]), float(sd[0]))

    def fit(self, X, y, finite_width):
        """fit_hyperparameters on ``(X, y)``; the same rows and evidence again reuse the result."""
        args = self.args
        key = self._key(X, y, finite_width)
        if key not in self.done:
            what = "training rows" if finite_width else "training-pool rows"
            est = "" if not finite_width or self.probe is None else f", estimated {self.probe.seconds(len(X)):.0f} s"
            stage = ("hyperparameters" if args.fixed else
                     f"fitting hyperparameters (maximum {'finite-width' if finite_width else 'GP'} evidence of "
                     f"{len(X)} {what}{est})")
            self.done[key], self.seconds[key] = self.progress.run(stage, lambda: fit_hyperparameters(
                _make_net(args)(args.width[0]), X, y, noise=args.noise, fixed=args.fixed, seed=args.seed,
                finite_width=finite_width, options=_options(args), rows=f"{len(X)} {what}"))
        return self.done[key]

    def gp_seconds(self, X, y) -> float:
        """Seconds the GP-evidence fit on ``(X, y)`` took (0 if it was not run here)."""
        return self.seconds.get(self._key(X, y, False), 0.0)

    @staticmethod
    def _key(X, y, finite_width):
        return X.tobytes(), y.tobytes(), X.shape, finite_width


def _describe_data(args, data, splits, pool: int) -> None:
    """Print what was read and how it is split."""
    n = data.y.shape[0]
    feats = ", ".join(data.features[:6]) + (", ..." if len(data.features) > 6 else "")
    print(f"{args.data}: predict {data.target!r} from {len(data.features)} feature(s) ({feats})")
    print(f"  {data.rows_read} rows read, {n} complete" + "".join(f"; {s}" for s in data.notes))
    if args.folds:
        print(f"  {args.folds}-fold cross-validation (seed {args.seed}): each row is a test row once; "
              f"training pools of {pool}+ rows")
    else:
        t = len(splits[0][1])
        print(f"  split (seed {args.seed}): {plural(t, 'test row')} ({100 * t / n:.0f}%, the same for every "
              f"--n-train), {pool}-row training pool")
    if max(len(t) for _, t in splits) > args.n_test:
        print(f"  test rows: the first {args.n_test} of each test set (--n-test; seeded, fixed)")


def _refuse_early(fits: _Fits, splits, pool: int, n_test: list):
    """``(path, rows)``: the finite-width path (:func:`_path`) and the first split's standardised rows
    (:meth:`_Fits.rows`), after the refusals that need the data's rows, before any output or
    work: ``--n-train`` above the training pool, a test row far outside its training rows (every split's,
    :func:`check_extreme`), the options of the other path (:func:`_refuse_path_options`), ``--n-train`` rows that
    need more than ``--max-memory`` (:func:`_fit_memory`)."""
    args = fits.args
    explicit = args.n_train is not None
    if explicit and args.n_train > pool:
        raise CLIError(f"--n-train {args.n_train} exceeds the {pool}-row training pool "
                       "(lower --test-fraction or --folds to enlarge it)")
    path = _path(args, args.n_train if explicit else min(pool, args.max_train))
    rows = [fits.rows(p, t) for p, t in splits]
    _refuse_path_options(args, path)
    if explicit:  # without --n-train the rows are reduced to what fits (_training_rows)
        _fit_memory(args.n_train, rows[0][0], rows[0][1], args, True, path=path, n_test=max(n_test))
    return path, rows[0]


def _training_rows(fits: _Fits, splits, pool: int, n_test: list, t_start: float, path: str, first):
    """``(n_train, why, model, n_test)``: the training rows used and why (``--n-train``, the whole small pool,
    or the timed probe's :class:`ngp.cli._budget.CostModel` within ``--time-budget``; then ``--max-memory``) and
    the test rows per split (fewer when even the minimum of training rows would not fit the budget), on the
    finite-width ``path`` (:func:`_refuse_early`; the matrix-free one takes every row asked for, without a probe);
    ``first``: the first split's standardised rows (its training pool: the probe, the memory check)."""
    args, progress = fits.args, fits.progress
    model, explicit = None, args.n_train is not None
    Xp, yp, Xt, _, _ = first
    if path == "matrix_free":  # every row asked for: its cost grows like N_train^2, not N_train^4 (no probe)
        n_train = args.n_train if explicit else min(pool, args.max_train)
        why = "--n-train" if explicit else ("every row of the training pool" if n_train == pool else "--max-train")
    elif explicit:
        n_train, why = args.n_train, "--n-train"
        if args.fit_evidence == "finite-width" and not args.fixed:  # no budget, but the fit's cost is said
            fits.probe, fit_line = _probe_fit(args, Xp, yp, progress, fits)
            print(f"{fit_line}; at {n_train} rows about {fits.probe.seconds(n_train):.0f} s per fold")
    elif min(pool, args.max_train) <= PROBE_TRAIN + 4 and (args.fixed or args.fit_evidence != "finite-width"):
        n_train = min(pool, args.max_train)
        why = ("every row of the small training pool" if n_train == pool else "--max-train")
        why += "; no timing probe needed"
    else:
        hyper0 = None
        if not args.fixed:  # the probe times the hyperparameters the run will have (the GP's fit)
            hyper0 = fits.fit(Xp, yp, False)
        cap, _ = _fit_memory(min(pool, args.max_train), Xp, yp, args, False, n_test=max(n_test))
        model, fit_line = _probe(args, Xp, yp, Xt, progress, hyper0, cap=cap), None
        if len(splits) > 1:  # each fold priced by its own rows (an outlying row is in some folds' pools only)
            model = dataclasses.replace(model, splits=(model.work, *_split_works(fits, splits[1:])))
        if args.fit_evidence == "finite-width" and not args.fixed:  # its steps cost training blocks: budgeted too
            fits.probe, fit_line = _probe_fit(args, Xp, yp, progress, fits)
            model = dataclasses.replace(model, fit=fits.probe)
        spent = time.perf_counter() - t_start
        choice = _budget.choose(model, pool=pool, n_test=max(n_test), budget_s=args.time_budget, cap=args.max_train,
                                minimum=MIN_TRAIN, folds=len(splits), spent_s=spent)
        n_train, why = choice.n_train, choice.reason
        pr = model.probe
        print(f"  probe: {pr.n_train} training + {plural(pr.n_test, 'test row')} took "
              f"{pr.train_s + pr.test_s:.1f} s ({pr.wall_s:.0f} s with the warm-up, {pr.compile_s:.0f} s of it "
              "compiling); cost ~ N_train^4 + test rows x N_train^3, weighted by the rows' variances")
        if fit_line:
            print(fit_line)
        if choice.n_test < max(n_test):
            n_test = [min(m, choice.n_test) for m in n_test]
            print(f"  test rows: the first {choice.n_test} of each test set (the time budget; seeded, fixed)")
    n_train, mem_note = ((n_train, None) if explicit else  # --n-train: checked by _refuse_early
                         _fit_memory(n_train, Xp, yp, args, False, path=path, n_test=max(n_test)))
    print(f"  training rows: {n_train} of {pool} ({why})" + (f"; {mem_note}" if mem_note else ""))
    print(f"  {_describe_path(args, path)}")
    return n_train, why, model, n_test


def _deadline(model, n_train: int, n_test: list, k: int, t_end: float) -> float:
    """When fold ``k``'s predictions should end for the run to end by ``t_end``: before the later folds' estimated
    time (:meth:`ngp.cli._budget.CostModel.fold`, compiled by the first fold; without a cost model, the time left
    shared equally by this fold and the later ones)."""
    if model is None:
        now = time.perf_counter()
        return now + (t_end - now) / (len(n_test) - k)
    return t_end - sum(model.fold(n_train, n_test[j], j) for j in range(k + 1, len(n_test)))


def _run_folds(fits: _Fits, splits, n_train: int, n_test: list, model, t_end: float | None = None,
               path: str = "exact"):
    """``(fold_rows, results, n_test)``: the comparison's rows of every split on the finite-width ``path``, what
    ``--json`` records of it, and the test rows scored per split (fewer where the predictions had to stop by
    ``t_end``, the budget's end: a ``time.perf_counter()`` value; ``None``: no deadline)."""
    args, data = fits.args, fits.data
    fold_rows, results, n_test = [], [], list(n_test)
    for k, ((p, t), m) in enumerate(zip(splits, n_test)):
        tr, te = p[:n_train], t[:m]
        Xf, yf, Xte, yte, (mu, sd) = fits.rows(p, te)
        Xtr, ytr = Xf[:n_train], yf[:n_train]
        split = Split(Xtr, ytr, Xte, yte, sd, mu)
        finite = args.fit_evidence == "finite-width"  # its steps cost a training block each: the rows used
        hyper = fits.fit(Xtr, ytr, True) if finite else fits.fit(Xf, yf, False)
        label = f"fold {k + 1}: " if args.folds else ""
        print(f"  {label}hyperparameters: {hyper.describe()} ({hyper.note})")
        est, due, row_s = None, None, None
        if model is not None:
            half = model.probe.compile_s / 2
            est = {"training": model.training(n_train, k) + half, "predict": model.predict(n_train, m, k) + half}
            row_s = lambda rows, k=k: model.predict(n_train, rows, k)  # noqa: E731
        if t_end is not None:
            due = _deadline(model, n_train, n_test, k, t_end)
        rows, info = compare(split, _make_net(args, hyper), widths=args.width, noise=hyper.noise,
                             progress=fits.progress, estimates=est, truth_samples=args.truth, seed=args.seed,
                             options=_path_options(args, path), deadline=due, row_seconds=row_s)
        n_test[k] = info["n_test"]
        if args.folds:  # the notes list each fold's flags (standard errors, validity) under the fold's name
            for r in rows:
                r.flags = [f"fold {k + 1}: {f}" for f in r.flags]
        fold_rows.append(rows)
        results.append({"fold": k + 1 if args.folds else None, "train_lines": data.lines[tr].tolist(),
                        "fit_lines": data.lines[p[:len(Xf)]].tolist(),
                        "test_lines": data.lines[te[:n_test[k]]].tolist(), "hyperparameters": hyper.__dict__,
                        "method": info["method"],
                        "finite_width_s": info["prior_s"], "cut": info["cut"], "rows": [r.as_dict() for r in rows]})
    return fold_rows, results, n_test


def _report(args, data, fold_rows, results, messages, n_test: list):
    """Print the table and its notes; returns ``(table cells, notes)``."""
    truth = args.truth > 0
    widths = " / ".join(map(str, args.width))
    print(f"\n{args.activation} MLP, depth {args.depth}, hidden width {widths}; noise is a variance in standardised "
          "target units (target variance 1)")
    print(f"RMSE in the units of {data.target!r}; test log-lik: mean log predictive density per test row (nats); "
          "log evidence of the standardised training targets\n")
    cols = ["model", "test RMSE", "test log-lik", "log evidence", "1/n size"]
    if truth:
        cols += ["|mean-IS|", "|GP mean-IS|"]
    cols.append("time [s]")
    body = _aggregate(fold_rows, truth) if args.folds else [cells(r, truth=truth) for r in fold_rows[0]]
    print(table(body, cols))
    prior_s = [r["finite_width_s"] for r in results if r["finite_width_s"] is not None]
    lines = notes([r for rows in fold_rows for r in rows], messages, sum(prior_s) if prior_s else None,
                  method=results[0]["method"], folds=len(prior_s))
    for r in results:
        if r["cut"]:
            lines.append((f"fold {r['fold']}: " if r["fold"] else "") + r["cut"])
    if args.folds:
        lines.append(f"the table shows the mean ± standard error over the {args.folds} folds, but the \"1/n size\" "
                     "column is the largest over the folds and the times are their sums")
    if min(n_test) < 20 and not args.folds:
        lines.append(f"only {plural(min(n_test), 'test row')}: the test metrics are noisy; --folds 5 tests every row "
                     "once")
    for line in lines:
        print(f"  * {line}")
    return body, lines


def run(args) -> int:
    t_start = time.perf_counter()
    progress = Progress(quiet=args.quiet)
    data = read_table(args.data, target=args.target, features=args.features, ignore=args.ignore or ())
    enable_x64()
    try:  # the network's (every width's) and the prior options' checks (four_point_order's memory) before any work
        # (on a zero input: the data are not standardised yet)
        for w in args.width:
            _make_net(args)(w)
        _make_net(args)(args.width[0]).prior(np.zeros((1, data.X.shape[1])), **_options(args))
    except (ValueError, TypeError, MemoryError) as exc:
        msg = str(exc)
        raise CLIError("--" + msg if msg.startswith("width: ") else msg) from None  # the option as typed
    n = data.y.shape[0]
    splits = _splits(n, args)
    pool = min(len(p) for p, _ in splits)
    fits = _Fits(args, data, progress)
    n_test = [min(len(t), args.n_test) for _, t in splits]
    path, first = _refuse_early(fits, splits, pool, n_test)
    _describe_data(args, data, splits, pool)
    n_train, why, model, n_test = _training_rows(fits, splits, pool, n_test, t_start, path, first)
    # --n-train: no budget to keep; the matrix-free path is not held to it (a prediction in batches resamples the
    # training side for each batch)
    t_end = None if args.n_train is not None or path == "matrix_free" else t_start + args.time_budget
    with collect_warnings() as messages:
        fold_rows, results, n_test = _run_folds(fits, splits, n_train, n_test, model, t_end, path)
    body, lines = _report(args, data, fold_rows, results, messages, n_test)
    total = time.perf_counter() - t_start
    print(f"\ntotal {total:.0f} s")
    if args.json:
        out = {"data": args.data, "target": data.target, "features": list(data.features), "rows_read": data.rows_read,
               "rows_used": n, "dropped_lines": list(data.dropped_lines), "n_train": n_train, "n_train_reason": why,
               "method": path,
               "settings": {k: getattr(args, k) for k in ("depth", "width", "activation", "c_w", "c_b", "noise",
                                                         "seed", "folds", "test_fraction", "n_test", "time_budget",
                                                         "max_train", "fixed", "fit_evidence", "truth", "method",
                                                         "samples")},
               "probe": None if model is None else model.probe.__dict__,
               "fit_probe": None if fits.probe is None else dataclasses.asdict(fits.probe),
               "splits": results, "table": body,
               "notes": lines, "total_s": total}
        try:
            with open(args.json, "w", encoding="utf-8") as fh:
                json.dump(out, fh, indent=2, default=float)
        except OSError as exc:
            raise CLIError(f"--json: cannot write {args.json}: {exc.strerror or exc}") from None
        print(f"results written to {args.json}")
    return 0
