"""How many training rows the finite-width posterior can afford: a timed probe and its extrapolation.

The finite-width posterior costs about ``N_train^4`` four-point expectations for the training
block (``K1``, ``V`` and the evidence on the training inputs) and ``N_train^3`` per test point
(``docs/theory.md``, "Computing only what is needed"). Nothing here guesses the machine's speed:
:func:`probe` times the real computation on a few rows, separating JAX's compilation time
(a fixed cost per array shape, paid again at the final size) from the computation, and
:class:`CostModel` extrapolates the computation with those powers. :func:`choose` then picks the
largest training set within the time budget.

The work of a multiset also grows with the variances of its inputs (the quadrature's rule is set by the largest
scale of its covariance block): one row far from the others makes every multiset it enters several times dearer.
With :class:`Work` (the rows' pre-activation variances) the model extrapolates by the multisets' summed weights
``max(K_max, 1)`` instead of their number (``docs/cli.md``, "How good the estimate is").

Those powers are reached only at some size: below ~16 training rows fixed costs per stage dominate (and
a process's first run also pays one-time set-up), so a probe timed there extrapolates to many times the
real cost (measured in ``docs/cli.md``). :func:`probe` therefore runs a small untimed warm-up first (it
pays the compilations and the set-up) and times the computation at a size where the powers hold.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import math
import time

import numpy as np

__all__ = ["compile_seconds", "Probe", "FitProbe", "Work", "CostModel", "Choice", "choose", "probe", "probe_step",
           "multisets_growth", "seconds"]

_COMPILE_EVENTS = (
    "/jax/core/compile/jaxpr_trace_duration",
    "/jax/core/compile/jaxpr_to_mlir_module_duration",
    "/jax/core/compile/backend_compile_duration",
)


@contextlib.contextmanager
def compile_seconds():
    """Yields a one-element list holding the seconds JAX spent tracing and compiling inside the block."""
    import jax.monitoring as monitoring

    total = [0.0]

    def listener(event, duration, **kwargs):
        if event in _COMPILE_EVENTS:
            total[0] += float(duration)

    monitoring.register_event_duration_secs_listener(listener)
    try:
        yield total
    finally:
        monitoring.unregister_event_duration_listener(listener)


@dataclasses.dataclass(frozen=True)
class Probe:
    """A timed finite-width run on ``n_train`` training and ``n_test`` test rows.

    ``train_s``/``test_s``: computation seconds of the training block and of the predictions
    (compilation excluded); ``compile_s``: tracing and compilation seconds of the probe (warm-up
    included); ``wall_s``: the probe's wall time (warm-up included).
    """

    n_train: int
    n_test: int
    train_s: float
    test_s: float
    compile_s: float
    wall_s: float


def multisets_growth(n_train: int, n_probe: int) -> float:
    """How much more a step of the finite-width evidence fit costs on ``n_train`` rows than on ``n_probe``: the
    ratio of their numbers of four-row multisets, ``C(N + 3, 4) / C(N_p + 3, 4)``.

    The step evaluates the four-point vertex on every multiset of the training block, each on the error-controlled
    rule (``docs/cli.md``: from 8 rows this over-states 12 and 16 rows by 18% and 13%; the four-row subsets
    ``C(N, 4)``, the growth of the fixed rule used until stop 69, whose four-input entries dominated, by 102% and
    150%).
    """
    return math.comb(n_train + 3, 4) / math.comb(n_probe + 3, 4)


@dataclasses.dataclass(frozen=True)
class FitProbe:
    """A timed step of the finite-width evidence fit (value and gradient) on ``n_train`` rows.

    ``step_s``: one step, compilation excluded; ``compile_s``: the first step's extra time; ``steps``:
    the evaluations a fit is charged; ``gp_s``: the fit's first stage (the GP evidence maximised on the same
    rows, compilation included). ``seconds(N) = compile_s + gp_s + steps step_s g(N)``, with ``g`` the growth
    of the number of four-row multisets from ``N_p`` rows (:func:`multisets_growth`).
    """

    n_train: int
    step_s: float
    compile_s: float
    steps: int
    gp_s: float = 0.0

    def seconds(self, n_train: int) -> float:
        return self.compile_s + self.gp_s + self.steps * self.step_s * multisets_growth(n_train, self.n_train)


@dataclasses.dataclass(frozen=True)
class Work:
    """Relative work of the finite-width stages from the rows' pre-activation variances.

    ``train`` ``(L, P)``: the variances ``K_aa`` of the training pool's rows, in the order in which they are
    taken (the first ``n`` rows train), at each of the ``L`` hidden layers; ``test`` ``(L, T)``: the test rows'.
    A multiset of inputs weighs ``max(K_max, 1)`` at each layer, its largest variance (floored at 1, below which
    the rules barely shrink), summed over the layers: :meth:`training` over the multisets of four training rows,
    :meth:`predict` over those of one test row and three training rows. Measured on statecrime
    (``docs/cli.md``): one row of variance 30 among rows of 0.3-9.5 made the training block of 32 rows take 1.6x
    the time of 32 without it, and their predictions 1.9x, which counting multisets misses.
    """

    train: np.ndarray
    test: np.ndarray

    @staticmethod
    def weight(k):
        return np.maximum(k, 1.0)

    def training(self, n_train: int) -> float:
        """Summed weights of the 4-multisets of the first ``n_train`` rows: with the variances sorted,
        ``sum_i w(k_(i)) C(i + 3, 3)`` (the multisets whose largest member is the ``i``-th)."""
        s = np.sort(self.train[:, :n_train], axis=1)
        i = np.arange(s.shape[1])
        return float(np.sum(self.weight(s) * ((i + 1) * (i + 2) * (i + 3) / 6.0)))

    def predict(self, n_train: int, n_test: int) -> float:
        """Summed weights of the multisets ``(t, a, b, c)`` of one of the first ``n_test`` test rows and three of
        the first ``n_train`` training rows (test rows beyond the ``T`` known count as their average)."""
        s = np.sort(self.train[:, :n_train], axis=1)  # (L, n)
        t = self.test[:, :n_test]  # (L, m)
        i = np.arange(s.shape[1])
        tot = float(np.sum(self.weight(np.maximum(s[:, None, :], t[:, :, None])) * ((i + 1) * (i + 2) / 2.0)))
        return tot * n_test / t.shape[1] if t.shape[1] else 0.0


@dataclasses.dataclass(frozen=True)
class CostModel:
    """Seconds of the finite-width stages, extrapolated from a :class:`Probe`.

    Without ``work``: ``training(N) = train_s (N / N_p)^4``, ``predict(N, M) = test_s (M / M_p) (N / N_p)^3``;
    with it (a :class:`Work` of the probe's rows), by the ratio of the weighted multisets to the probe's. ``splits``
    (k-fold: a :class:`Work` per split, the probe's first) prices each split by its own rows. Each run at a new size
    pays the probe's compilation time again (a new set of array shapes). With ``fit`` (a :class:`FitProbe`,
    ``--fit-evidence finite-width``) each fold also pays ``fit.seconds(N)``.
    """

    probe: Probe
    fit: FitProbe | None = None
    work: Work | None = None
    splits: tuple = ()

    def _work(self, split: int) -> Work | None:
        return self.splits[split] if split < len(self.splits) else self.work

    def training(self, n_train: int, split: int = 0) -> float:
        p, w = self.probe, self._work(split)
        if w is None:
            return p.train_s * (n_train / p.n_train) ** 4
        return p.train_s * w.training(n_train) / self.work.training(p.n_train)

    def predict(self, n_train: int, n_test: int, split: int = 0) -> float:
        """Seconds of the predictions at the first ``n_test`` test rows from ``n_train`` training rows."""
        p, w = self.probe, self._work(split)
        if w is None:
            return p.test_s * n_test / p.n_test * (n_train / p.n_train) ** 3
        return p.test_s * w.predict(n_train, n_test) / self.work.predict(p.n_train, p.n_test)

    def per_test(self, n_train: int) -> float:
        """Seconds per test row (the average over the probe's test rows)."""
        return self.predict(n_train, self.probe.n_test) / self.probe.n_test

    def fold(self, n_train: int, n_test: int, split: int = 0) -> float:
        """Seconds of one split's run after compilation: its fit (with ``fit``), training block and predictions at
        ``n_test`` test rows."""
        fit = 0.0 if self.fit is None else self.fit.seconds(n_train)
        return fit + self.training(n_train, split) + self.predict(n_train, n_test, split)

    def estimate(self, n_train: int, n_test: int, folds: int = 1) -> float:
        """Seconds for ``folds`` fits on ``n_train`` rows with ``n_test`` test rows each (at most a split's own):
        the compilation once, then :meth:`fold` per split."""
        return self.probe.compile_s + sum(
            self.fold(n_train, min(n_test, self.splits[k].test.shape[1]) if k < len(self.splits) else n_test, k)
            for k in range(folds))


@dataclasses.dataclass(frozen=True)
class Choice:
    """The training-set size and number of test rows chosen, and why (``reason`` is printed)."""

    n_train: int
    n_test: int
    estimate_s: float | None
    reason: str


def _sig(value: float, digits: int) -> str:
    """``value`` (seconds) to ``digits`` significant digits, without an exponent or trailing zeros."""
    if value == 0 or not math.isfinite(value):
        return f"{value:g}"
    decimals = max(0, digits - 1 - math.floor(math.log10(abs(value))))
    text = f"{value:.{decimals}f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def seconds(*values: float, digits: int = 3) -> list[str]:
    """``values`` (seconds) with ``digits`` significant digits, more where two unequal values would print alike, so
    that a reason's comparison reads as it was made ("2.61 s, more than the 2.5 s left", not "3 s, ... 3 s left")."""
    for d in range(digits, 18):
        texts = [_sig(v, d) for v in values]
        if all(float(a) != float(b) for (v, a), (w, b) in itertools.combinations(zip(values, texts), 2) if v != w):
            break
    return texts


def choose(model: CostModel, *, pool: int, n_test: int, budget_s: float, cap: int, minimum: int,
           min_test: int = 20, folds: int = 1, spent_s: float = 0.0) -> Choice:
    """The largest ``N_train <= min(cap, pool)`` whose estimated time fits ``budget_s - spent_s``.

    With all ``n_test`` test rows if possible. If even ``min(minimum, pool)`` training rows do not fit,
    that many are used with the most test rows (at least ``min(min_test, n_test)``) that fit; if
    nothing fits, the minimum of both, and the reason says the budget will be exceeded. The reason's seconds
    carry the digits that show its comparisons (:func:`seconds`); the budget is printed as given.
    """
    top = min(cap, pool)
    low = min(minimum, top)
    left = budget_s - spent_s
    budget = f"--time-budget {budget_s:g} s"
    for n in range(top, low - 1, -1):
        est = model.estimate(n, n_test, folds)
        if est <= left:
            if n == top:
                why = f"all {pool} training-pool rows" if top == pool else f"the cap of {cap} rows (--max-train)"
                e, lt = seconds(est, left)
                return Choice(n, n_test, est, f"{why} fit the time budget (estimated {e} s of {lt} s left)")
            nxt = model.estimate(n + 1, n_test, folds)
            e, x, lt = seconds(est, nxt, left)
            return Choice(n, n_test, est, f"time budget: {n} rows take an estimated {e} s, {n + 1} rows "
                                          f"{x} s, {lt} s left of {budget}")
    floor = min(min_test, n_test)
    for m in range(n_test - 1, floor - 1, -1):
        est = model.estimate(low, m, folds)
        if est <= left:
            e, lt = seconds(est, left)
            return Choice(low, m, est, f"time budget: the minimum of {low} training rows with {m} of the {n_test} "
                                       f"test rows take an estimated {e} s of {lt} s left of {budget}")
    est = model.estimate(low, floor, folds)
    e, lt = seconds(est, max(left, 0.0))
    return Choice(low, floor, est, f"the minimum of {low} training rows and {floor} test rows; estimated {e} s, "
                                   f"more than the {lt} s left of {budget}")


def probe(run, n_train: int, n_test: int, *, warmup: tuple[int, int] | None = None) -> Probe:
    """Time ``run(n_train, n_test, mark)`` where ``run`` does the training block, calls ``mark()``,
    then predicts (``mark`` separates the two timings). With ``warmup = (n, m)``, ``run(n, m, mark)``
    first: its compilations count in ``compile_s`` and its time in ``wall_s``, not in the timings."""
    marks = {}
    with compile_seconds() as comp:
        t_start = time.perf_counter()

        def mark():
            marks["t"] = time.perf_counter()
            marks["c"] = comp[0]

        if warmup is not None:
            run(*warmup, lambda: None)
        t0, c0 = time.perf_counter(), comp[0]
        run(n_train, n_test, mark)
        t1 = time.perf_counter()
    tm, cm = marks.get("t", t1), marks.get("c", comp[0])
    train = max(tm - t0 - (cm - c0), 0.0)
    test = max(t1 - tm - (comp[0] - cm), 0.0)
    # the compile events' durations add up across threads (the library compiles in background threads too): at load 10
    # they summed to 65.4 s in a probe of 63.3 s; no more wall time than the probe's went to compiling
    return Probe(n_train, n_test, train, test, min(comp[0], t1 - t_start), t1 - t_start)


def probe_step(step, n_train: int, steps: int, *, repeats: int = 2) -> FitProbe:
    """Time ``step(n_train)``: a first call, then ``repeats`` more; the fastest of those is the step (other work
    on a shared machine slows a timing of a second or so: ``docs/cli.md`` has a 1.3 s step timed at 2.3 s), the
    first call's extra time its compilation."""
    t0 = time.perf_counter()
    step(n_train)
    first = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        step(n_train)
        times.append(time.perf_counter() - t)
    return FitProbe(n_train, min(times), max(first - min(times), 0.0), steps)
