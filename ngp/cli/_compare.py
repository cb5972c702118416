"""The comparison both subcommands print: a baseline, the GP and finite-width posteriors, references.

All fitting happens on standardised data (training mean 0 and variance 1 for the targets); the
metrics are reported in the target's own units: ``y = scale * y_std + shift``.
"""

from __future__ import annotations

import dataclasses
import math
import time

import numpy as np

from ngp import Validity
from ngp.reference import ESS_WARN

from .._validate import quiet
from .._validity import without_eps
from .._warnings import CostWarning
from ._common import CLIError, fmt, fmt_above

__all__ = ["Split", "Row", "compare", "metrics", "cells", "expansion_cell", "notes", "numerical_flag", "deadline_stop",
           "EXPANSION_WARN", "ESS_MIN", "NUMERICAL_WARN", "DEADLINE_BATCHES", "deadline_batch"]

#: Expansion parameter above which a finite-width row is marked unreliable: the library's warning threshold.
EXPANSION_WARN = Validity.EXPANSION_WARN
#: Effective sample size below which an importance-sampling reference is marked unreliable: the library's.
ESS_MIN = ESS_WARN
#: Share of the 1/n mean correction above which the mean's numerical error bound (the four-point quadrature's,
#: carried through the posterior) marks a finite-width row unreliable: the library's warning threshold.
NUMERICAL_WARN = Validity.NUMERICAL_WARN
#: With a deadline the finite-width predictions go in about this many batches of test rows (at least 2 rows each;
#: before each batch after the first the deadline is checked): a prediction in batches costs a few percent more than
#: in one (docs/cli.md, "Holding the time budget").
DEADLINE_BATCHES = 5


def deadline_batch(n_test: int) -> int:
    """Test rows per batch of the finite-width predictions with a deadline (:data:`DEADLINE_BATCHES`)."""
    return max(2, -(-n_test // DEADLINE_BATCHES))


@dataclasses.dataclass(frozen=True)
class Split:
    """Standardised training and test data: ``Xtr (N, n0)``, ``ytr (N, 1)``, ``Xte (M, n0)``, ``yte (M, 1)``;
    targets in their own units are ``scale * y + shift``."""

    Xtr: np.ndarray
    ytr: np.ndarray
    Xte: np.ndarray
    yte: np.ndarray
    scale: float
    shift: float


@dataclasses.dataclass
class Row:
    """One line of the results table (numbers in the target's units; ``None`` where not defined)."""

    model: str
    rmse: float | None = None
    loglik: float | None = None
    log_evidence: float | None = None
    expansion: float | None = None
    truth_gap: float | None = None  # max |mean - IS mean| over test rows
    truth_se: float | None = None
    truth_ess: float | None = None
    gp_truth_gap: float | None = None  # the GP's max |mean - IS mean| (same reference)
    time_s: float | None = None
    # the matrix-free path's Monte-Carlo standard errors: the largest over test rows (target units), the evidence's
    mean_se: float | None = None
    var_se: float | None = None
    log_evidence_se: float | None = None
    flags: list = dataclasses.field(default_factory=list)
    mean: np.ndarray | None = dataclasses.field(default=None, repr=False)
    var: np.ndarray | None = dataclasses.field(default=None, repr=False)

    def as_dict(self) -> dict:
        d = {k: getattr(self, k) for k in ("model", "rmse", "loglik", "log_evidence", "expansion", "truth_gap",
                                           "truth_se", "truth_ess", "gp_truth_gap", "time_s", "mean_se", "var_se",
                                           "log_evidence_se")}
        d["flags"] = list(self.flags)
        return d


def metrics(split: Split, mean, var, noise: float):
    """Test RMSE in target units and the mean log predictive density (nats per test row, target units)."""
    mean = np.asarray(mean, dtype=float).reshape(split.yte.shape)
    pvar = np.clip(np.asarray(var, dtype=float).reshape(split.yte.shape), 0.0, None) + noise
    pvar = np.maximum(pvar, 1e-12)
    rmse = float(np.sqrt(np.mean((mean - split.yte) ** 2))) * split.scale
    ll = float(np.mean(-0.5 * np.log(2 * np.pi * pvar) - 0.5 * (split.yte - mean) ** 2 / pvar)) - math.log(split.scale)
    return rmse, ll


def _baseline(split: Split):
    """Test RMSE and log predictive density of the baseline: the training rows' mean, with their variance."""
    ytr = np.asarray(split.ytr, dtype=float)
    return metrics(split, np.full(split.yte.shape, ytr.mean()), np.full(split.yte.shape, ytr.var()), 0.0)


def _truth(row: Row, ref, mean, split: Split):
    row.truth_ess = float(ref.ess)
    row.truth_gap = float(np.max(np.abs(np.asarray(mean) - ref.mean))) * split.scale
    row.truth_se = float(np.max(ref.mean_se)) * split.scale


def deadline_stop(deadline: float, batch: int, estimate=None, *, total: int | None = None, clock=time.perf_counter):
    """``stop(done) -> bool`` for ``predict``: true when the next ``batch`` test rows (of ``total``, if given),
    projected from the time the first ``done`` took, would end after ``deadline`` (a ``clock()`` value).
    ``estimate(m)``: estimated seconds of the first ``m`` rows (the cost model's), which sets the next batch's share
    (rows differ in cost); without it every row is projected to cost the same. The clock starts when this is
    called."""
    t0 = clock()

    def stop(done: int) -> bool:
        now = clock()
        spent = now - t0
        upto = done + batch if total is None else min(done + batch, total)
        nxt = spent * (upto - done) / done
        if estimate is not None:
            e0 = estimate(done)
            if e0 > 0:
                nxt = spent * (estimate(upto) - e0) / e0
        return now + nxt > deadline

    return stop


def compare(split: Split, make_net, **kwargs):
    """:func:`compare_rows` without the library's :class:`ngp.CostWarning`: the CLI prices its work itself and says
    what it chose and why (:mod:`ngp.cli._budget`)."""
    with quiet(CostWarning):
        return compare_rows(split, make_net, **kwargs)


def compare_rows(split: Split, make_net, *, widths, noise: float, progress, estimates=None, truth_samples: int = 0,
                 nuts_steps: int = 0, seed: int = 0, options: dict | None = None, extra_test=None, deadline=None,
                 row_seconds=None):
    """Baseline, GP and finite-width rows (and optional references) for one split.

    Args:
        split: the data.
        make_net: ``width -> network`` (equal hidden widths; the cumulants are shared by all widths).
        widths: hidden widths of the finite-width rows.
        noise: observation-noise variance (standardised units).
        progress: a :class:`ngp.cli._common.Progress`.
        estimates: ``{"training": s, "predict": s}`` estimated seconds (for the progress bars).
        truth_samples: importance-sampling draws per width (0: no reference).
        nuts_steps: NUTS warm-up and sampling steps at the first width (0: none).
        options: options for :func:`ngp.condition` (``method``; the exact path's ``max_memory``,
            ``four_point_order``; the matrix-free path's ``samples``, ``seed``).
        extra_test: ``(G, n0)`` extra inputs (a plotting grid) whose GP and finite-width posteriors are
            returned (predicted apart from the test rows: neither scored nor in a row's 1/n size, flags or time).
        deadline: a ``time.perf_counter()`` value by which the finite-width predictions should end (not with
            ``extra_test``): they go in batches (:data:`DEADLINE_BATCHES`) and stop before a batch projected to end
            later (:func:`deadline_stop`; the first batch always runs); every row is then scored on the test rows
            predicted.
        row_seconds: ``m -> `` estimated seconds of the predictions at the first ``m`` test rows (projects the
            next batch; default: every row as costly as those done).

    Returns:
        ``(rows, info)``; ``info`` holds ``method`` (the finite-width path), ``prior_s`` (the shared finite-width
        work), ``posteriors``
        (``{width: FiniteWidthPosterior}`` on the test rows, and ``"grid"`` on ``extra_test``: ``{"gp": GPPosterior,
        "finite": {width: FiniteWidthPosterior}}``), ``failed``,
        ``n_test`` (the test rows scored) and ``cut`` (why fewer than given, else ``None``).
    """
    if deadline is not None and extra_test is not None:
        raise ValueError("compare: a deadline cuts test rows; not with extra_test")
    import ngp

    est = estimates or {}
    opts = dict(options or {})
    rows = []
    rows.append(Row("baseline (training mean)", *_baseline(split)))

    net0 = make_net(widths[0])
    t0 = time.perf_counter()
    try:
        cond = ngp.condition(net0, split.Xtr, split.ytr, noise=noise, progress=progress.library(), **opts)
        gp, _ = progress.run("GP: the infinite-width kernel and posterior", lambda: cond.gp.predict(split.Xte))
    except np.linalg.LinAlgError as exc:
        raise CLIError(f"the training kernel is singular ({exc}); raise --noise") from None
    rmse, ll = metrics(split, gp.mean, gp.var, noise)
    gp_row = Row("GP (infinite width)", rmse, ll, cond.gp.log_evidence, 0.0, time_s=time.perf_counter() - t0,
                 mean=gp.mean, var=gp.var)
    rows.append(gp_row)

    info = {"posteriors": {}, "failed": {}, "prior_s": None, "gp_test": gp, "n_test": split.Xte.shape[0], "cut": None,
            "method": cond.method}
    mf = cond.method == "matrix_free"
    what = (f"K1, the evidence (its vertex terms by Monte Carlo, {cond.samples} samples per layer)" if mf
            else "K1, V and evidence")
    M = split.Xte.shape[0]
    batched = {}  # with a deadline: batches of test rows, the first width stopping at the deadline
    if deadline is not None:
        batched["batch_size"] = deadline_batch(M)
        limit = cond.options.get("max_memory")
        if not mf and limit is not None:  # no larger than max_memory allows (predict refuses a larger batch)
            per_row = cond.memory_estimate(1) - cond.memory_estimate(0)
            batched["batch_size"] = max(1, min(batched["batch_size"], int(limit) // max(per_row, 1)))

    def first():  # the deadline's clock starts with the predictions (the exact path's training block comes before)
        return {} if deadline is None else {
            "stop": deadline_stop(deadline, batched["batch_size"], row_seconds, total=M), **batched}
    try:
        if mf:  # one estimator run gives the evidence with the predictions; a run for the evidence alone (on one test
            # input) costs about as much, its training side being most of the work (docs/cli.md, "Hundreds of rows")
            both = [est[k] for k in ("training", "predict") if est.get(k) is not None]
            post0, info["prior_s"] = progress.run(
                f"finite width: {what} and predictions at {M} test inputs, on {split.Xtr.shape[0]} training rows",
                lambda: cond.predict(split.Xte, **first()), estimate=sum(both) if both else None)
        else:
            _, t_train = progress.run(f"finite width: {what} on {split.Xtr.shape[0]} training rows",
                                      lambda: cond.log_evidence, estimate=est.get("training"))
            post0, t_pred = progress.run(f"finite width: predictions at {M} test inputs",
                                         lambda: cond.predict(split.Xte, **first()), estimate=est.get("predict"))
            info["prior_s"] = t_train + t_pred
    except MemoryError as exc:
        raise CLIError(f"{exc} (raise --max-memory or use fewer training rows)".replace("\n", " ")) from None
    except np.linalg.LinAlgError as exc:
        info["failed"][widths[0]] = str(exc)
        post0 = None
    if post0 is not None and post0.mean.shape[0] < M:  # the deadline cut the test rows: score every row on the rest
        m = post0.mean.shape[0]
        info["n_test"], batched["stop"] = m, (lambda done: done >= m)
        info["cut"] = (f"time budget: the finite-width predictions stopped after {m} of the {M} test rows, the next "
                       f"batch being projected to end past the deadline; every row is scored on those {m}")
        split = dataclasses.replace(split, Xte=split.Xte[:m], yte=split.yte[:m])
        gp = dataclasses.replace(gp, mean=gp.mean[:m], var=gp.var[:m], cov_test=gp.cov_test[:m, :m])
        info["gp_test"] = gp
        rows[0].rmse, rows[0].loglik = _baseline(split)
        gp_row.rmse, gp_row.loglik = metrics(split, gp.mean, gp.var, noise)
        gp_row.mean, gp_row.var, M = gp.mean, gp.var, m
    for w in widths:
        t0 = time.perf_counter()
        row = Row(f"finite width n={w}")
        if post0 is None:
            row.flags.append("failed: " + info["failed"][widths[0]])
            rows.append(row)
            continue
        try:
            post = post0 if w == widths[0] else cond.with_width(w).predict(split.Xte, **batched)
        except np.linalg.LinAlgError as exc:
            info["failed"][w] = str(exc)
            row.flags.append(f"failed: {exc}")
            rows.append(row)
            continue
        mean, var = post.mean[:M], post.var[:M]
        row.rmse, row.loglik = metrics(split, mean, var, noise)
        row.log_evidence, row.expansion = float(post.log_evidence), float(post.expansion_parameter)
        row.mean, row.var = mean, var
        row.time_s = time.perf_counter() - t0
        if post.mean_se is not None:  # the matrix-free path: Monte-Carlo standard errors, in the target's units
            row.mean_se = float(np.max(np.asarray(post.mean_se)[:M], initial=0.0)) * split.scale
            row.var_se = float(np.max(np.asarray(post.var_se)[:M], initial=0.0)) * split.scale**2
            row.log_evidence_se = float(post.log_evidence_se)
            row.flags.append(f"matrix-free estimate ({cond.samples} samples per layer): standard errors up to "
                             f"{row.mean_se:.2g} in the means and {row.var_se:.2g} in the variances (target units), "
                             f"{row.log_evidence_se:.2g} in the log evidence (docs/matrix-free.md)")
        if row.expansion > EXPANSION_WARN:
            row.flags.append(f"unreliable: 1/n expansion parameter {fmt_above(row.expansion, EXPANSION_WARN)} > "
                             f"{EXPANSION_WARN}")
        if np.any(var < 0):
            row.flags.append(f"unreliable: {int(np.sum(var < 0))} negative posterior variances")
        flag = numerical_flag(post, M)
        if flag:
            row.flags.append(flag)
        validity = getattr(post, "validity", None)
        if validity is not None and not validity.trusted:
            # the first-order terms are not small against the GP's (docs/validity.md); a large expansion parameter
            # has its own flag above
            reasons = without_eps(validity.reasons) if row.expansion > EXPANSION_WARN else list(validity.reasons)
            if reasons:
                row.flags.append("untrusted: " + "; ".join(reasons) + " (docs/validity.md)")
        info["posteriors"][w] = post
        rows.append(row)

    if truth_samples:
        from ngp.reference import importance_posterior

        mem = {"max_memory": opts["max_memory"]} if "max_memory" in opts else {}
        for row, w in zip([r for r in rows if r.model.startswith("finite")], widths):
            if row.mean is None:
                continue
            net = make_net(w)
            ref, _ = progress.run(f"importance sampling over {truth_samples} networks of width {w}",
                                  lambda net=net: importance_posterior(net, split.Xtr, split.ytr, split.Xte,
                                                                       noise=noise, num_samples=truth_samples,
                                                                       seed=seed, **mem))
            _truth(row, ref, row.mean, split)
            row.gp_truth_gap = float(np.max(np.abs(gp.mean - ref.mean))) * split.scale
            if row.truth_ess < ESS_MIN:
                row.flags.append(f"reference unreliable: importance-sampling ESS {row.truth_ess:.0f} of "
                                 f"{truth_samples}")
            info.setdefault("references", {})[w] = ref

    if nuts_steps:
        from ngp.reference import nuts_posterior

        w = widths[0]
        t0 = time.perf_counter()
        post, _ = progress.run(f"NUTS on the weights of width {w} ({nuts_steps} steps, 2 chains)",
                               lambda: nuts_posterior(make_net(w), split.Xtr, split.ytr, split.Xte, noise=noise,
                                                      num_warmup=nuts_steps, num_samples=nuts_steps, num_chains=2,
                                                      seed=seed))
        rmse, ll = metrics(split, post.mean, post.var, noise)
        row = Row(f"NUTS n={w} (2 chains)", rmse, ll, time_s=time.perf_counter() - t0, mean=post.mean, var=post.var)
        ref = info.get("references", {}).get(w)
        if ref is not None:
            _truth(row, ref, post.mean, split)
            row.truth_se = float(np.max(post.mean_se)) * split.scale  # NUTS' own Monte-Carlo error
            if row.truth_ess < ESS_MIN:
                row.flags.append("reference unreliable")
        rows.append(row)
    if extra_test is not None:
        # after every width's test rows (their joint prior computed once), apart from them: a row's 1/n size and
        # flags are its test rows', and the grid's predictions (for a figure) are in no row's time
        finite, _ = progress.run(f"finite width: predictions at {extra_test.shape[0]} grid inputs", lambda: {
            w: (cond if w == widths[0] else cond.with_width(w)).predict(extra_test) for w in info["posteriors"]})
        info["grid"] = {"gp": cond.gp.predict(extra_test), "finite": finite}
    return rows, info


def numerical_flag(post, M: int) -> str | None:
    """The row flag when the numerical error bound of ``post``'s mean on its first ``M`` inputs (``mean_error``)
    exceeds :data:`NUMERICAL_WARN` of its largest 1/n mean correction there; ``None`` otherwise (or without a
    bound: the matrix-free path)."""
    err = getattr(post, "mean_error", None)
    if err is None:
        return None
    top = float(np.max(np.asarray(err)[:M], initial=0.0))
    size = float(np.max(np.abs(np.asarray(post.mean_correction)[:M]), initial=0.0))
    if not (np.isfinite(top) and top > NUMERICAL_WARN * size):
        return None
    return (f"unreliable: the numerical error bound of the mean ({top:.2g}) is {top / max(size, 1e-300):.3g} times "
            f"the 1/n correction ({size:.2g}), in standardised units (docs/accuracy.md)")


def expansion_cell(e: float | None) -> str:
    """The "1/n size" cell: the expansion parameter, marked ``(!)`` (with the digits to read so) above
    :data:`EXPANSION_WARN`."""
    if e is None:
        return "-"
    if e > EXPANSION_WARN:
        return f"{fmt_above(e, EXPANSION_WARN)} (!)"
    return "0" if e == 0 else f"{e:.2g}"


def cells(row: Row, *, truth: bool) -> dict:
    """Table cells (strings) of a row."""
    out = {
        "model": row.model,
        "test RMSE": fmt(row.rmse),
        "test log-lik": fmt(row.loglik, ".3f"),
        "log evidence": fmt(row.log_evidence, ".3f") + ("" if row.log_evidence_se is None else
                                                        f" ± {row.log_evidence_se:.1g}"),
        "1/n size": expansion_cell(row.expansion),
        "time [s]": fmt(row.time_s, ".1f"),
    }
    if truth:
        gp_gap = row.gp_truth_gap
        if row.truth_gap is None:
            out["|mean-IS|"] = out["|GP mean-IS|"] = "-"
        elif row.truth_ess is not None and row.truth_ess < ESS_MIN:
            out["|mean-IS|"] = out["|GP mean-IS|"] = f"unreliable (ESS {row.truth_ess:.0f})"
        else:
            out["|mean-IS|"] = f"{row.truth_gap:.2g} ± {row.truth_se:.1g}"
            out["|GP mean-IS|"] = "-" if gp_gap is None else f"{gp_gap:.2g}"
    return out


# library warnings that a row flag already reports (flag text, warning text)
_SAME = (("1/n expansion parameter", "expansion parameter"),
         ("negative posterior variances", "posterior variance is negative"),
         ("importance-sampling ESS", "effective sample size"),
         ("numerical error bound of the mean", "numerical error of the four-point quadrature"),
         ("untrusted: ", "terms are not small"),
         ("untrusted: ", "outside its validated regime"))


def notes(rows, messages, prior_s, *, method: str = "exact", folds: int = 1) -> list[str]:
    """The lines printed under the table: shared time, each row's flags, then the library's other warnings.

    Args:
        rows: the :class:`Row` objects (of every fold).
        messages: warning messages recorded while fitting.
        prior_s: seconds of the shared finite-width computation (``None`` if none), summed over the folds.
        method: the finite-width path (``"exact"`` or ``"matrix_free"``).
        folds: how many folds' computations ``prior_s`` sums (each fold has its own).
    """
    out = []
    if prior_s:
        what = ("one matrix-free run (K1 exact, the vertex terms by Monte Carlo)" if method == "matrix_free" else
                "one computation of K1, V")
        if folds > 1:
            out.append(f"each fold's finite-width rows share {what} and the predictions: {prior_s:.1f} s in all "
                       f"{folds} folds (not in the rows' times)")
        else:
            out.append(f"the finite-width rows share {what} and the predictions: {prior_s:.1f} s (not in the rows' "
                       "times)")
    flags = []
    for r in rows:
        for f in r.flags:
            if (r.model, f) not in flags:
                flags.append((r.model, f))
    out += [f"{m}: {f}" for m, f in flags]
    for w in messages:
        if not any(a in f and b in w for a, b in _SAME for _, f in flags):
            out.append(f"warning: {w}")
    return out
