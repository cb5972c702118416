"""The command line's one place for hyperparameters: :func:`fit_hyperparameters`.

``ngp regress`` calls it once per training pool (per fold), on the pool's first ``--max-train``
rows standardised by them (``--fit-evidence finite-width``: on the training rows used), before
any posterior is computed, and prints what it returns; every row of the table then uses those
values. ``ngp demo`` calls it on its training rows. By default the CLI fits ``(C_W, C_b, noise)``
by maximising the evidence of the training targets (ML-II, :func:`ngp.fit_hyperparameters`);
``--fixed`` keeps the values given on the command line. The GP evidence is maximised by default
(it costs ``O(N^3)`` per step, so the fit takes seconds to a minute; above :data:`WARM_ROWS` rows it starts from
the fit on the first ``WARM_ROWS``); ``--fit-evidence
finite-width`` then also maximises the ``O(1/n)`` evidence at the first ``--width`` (each step
costs a training block, ``~N^4``).
"""

from __future__ import annotations

import dataclasses
import warnings

__all__ = ["Hyperparameters", "fit_hyperparameters", "FITTING_AVAILABLE", "WARM_ROWS"]

#: Whether this version fits hyperparameters (False: the given values are used and the help says so).
FITTING_AVAILABLE = True
#: Starts of the optimiser (the first is the given values, the others random draws within the bounds) and its
#: iterations per start: one start keeps the fit within a minute on a loaded 2-core machine.
NUM_STARTS, MAX_ITER = 1, 40
#: A GP-evidence fit on more rows than this starts from the fit on the first this many (each step costs ~N^2 for
#: the kernel and its tangents, N^3 for the solve), so that L-BFGS-B takes few steps on all of them (1000 rows of
#: statsmodels' fair data: 101 s against 127 s from the CLI's given values, 111 s against 316 s from C_b = 0.1;
#: docs/cli.md, ``benchmarks/cli_fit_warm.py``); the library's ``warm_rows``.
WARM_ROWS = 256


@dataclasses.dataclass(frozen=True)
class Hyperparameters:
    """Hyperparameters a posterior is computed with.

    Attributes:
        C_W, C_b: weight and bias variances (``Var(W) = C_W / fan_in``, ``Var(b) = C_b``); a number
            or one value per weight layer.
        noise: observation-noise variance in standardised target units (the training targets
            have variance 1).
        source: ``"fitted"`` or ``"given"``; note: how they were obtained, for the report.
        log_evidence: the maximised log evidence when fitted (``None`` otherwise).
    """

    C_W: float | tuple
    C_b: float | tuple
    noise: float
    source: str
    note: str
    log_evidence: float | None = None

    def describe(self) -> str:
        f = lambda v: ", ".join(f"{x:.4g}" for x in v) if isinstance(v, tuple) else f"{v:.4g}"  # noqa: E731
        return f"C_W={f(self.C_W)}, C_b={f(self.C_b)}, noise={self.noise:.4g}"


def fit_hyperparameters(net, X_train, Y_train, *, noise: float, fixed: bool, seed: int = 0,
                        finite_width: bool = False, options: dict | None = None, rows: str | None = None):
    """Hyperparameters for ``net`` on standardised training data.

    Args:
        net: the network with the given ``C_W``, ``C_b`` (:class:`ngp.MLP`; its first width).
        X_train: ``(N, n0)`` standardised inputs; Y_train: ``(N, 1)`` standardised targets.
        noise: the given observation-noise variance (the start of the fit).
        fixed: keep the given values (``--fixed``).
        seed: seed of the random starts.
        finite_width: maximise the finite-width evidence (after the GP's) instead of the GP's.
        options: prior options (``four_point_order``) for the finite-width evidence.
        rows: what the rows are, for the note (default ``"N training rows"``).

    Returns:
        :class:`Hyperparameters` (the CLI builds its networks, one per ``--width``, from them).
    """
    import ngp

    dense = net.dense_steps()
    cw = tuple(float(d.C_W) for d in dense)
    cb = tuple(float(d.C_b) for d in dense)
    cw = cw[0] if len(set(cw)) == 1 else cw
    cb = cb[0] if len(set(cb)) == 1 else cb
    if fixed:
        return Hyperparameters(cw, cb, float(noise), "given", "given values (--fixed)")
    opts = {k: v for k, v in (options or {}).items() if k == "four_point_order"}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit = ngp.fit_hyperparameters(net, X_train, Y_train, noise=noise, finite_width=finite_width,
                                      num_starts=NUM_STARTS, seed=seed, max_iter=MAX_ITER, warm_rows=WARM_ROWS,
                                      **opts)
    for w in caught:  # the note says what the fit's convergence warnings say (success, at_bounds); others pass on
        if not issubclass(w.category, ngp.ConvergenceWarning):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    which = "finite-width" if fit.finite_width else "GP"
    starts = sum(1 for s in fit.starts if s["stage"] == "gp")
    bounds = "".join(f", {name} at the fit's {side} bound {bound:.4g}" for name, side, bound in fit.at_bounds)
    warm = any(s["stage"].startswith("gp, first ") for s in fit.starts)  # the library's first stage ran
    start = f" from the fit on its first {WARM_ROWS}" if warm else ""
    note = (f"fitted: maximum of the {which} evidence of {rows or f'{X_train.shape[0]} training rows'}, "
            f"{starts} start{'s' if starts > 1 else ''}{start}{'' if fit.success else ', NOT converged'}{bounds}; "
            "--fixed keeps the given values")
    return Hyperparameters(fit.C_W[0], fit.C_b[0], float(fit.noise), "fitted", note, float(fit.log_evidence))
