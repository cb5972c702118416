"""``ngp.condition(..., method="matrix_free")``: the matrix-free estimator behind the public API.

The estimator itself (:mod:`ngp._matrix_free`, ``docs/matrix-free.md``) works on per-layer kernel
blocks of a fully connected network; this module reads those from the network, runs it, and wraps
the answer in the same objects as the exact path (:class:`ngp.Conditioned`,
:class:`ngp.FiniteWidthPosterior`) with Monte-Carlo standard errors attached.
"""

from __future__ import annotations

import functools

import jax
import numpy as np

from . import _matrix_free as mf
from ._gp import GPPosterior
from ._linalg import check_conditioning, refuse_duplicates, solve_train
from ._prior import check_options
from ._posterior import Conditioned, FiniteWidthPosterior, GPConditioned, check_width_free
from ._steps import Dense, Elementwise, Serial
from ._validate import (MAX_WIDTH, as_inputs, check_seed, check_stop, count, flag, float64, pad_to,
                        stop_requested, train_test, warn)
from ._warnings import ExpansionWarning
from ._validity import Validity

__all__ = ["MatrixFreeConditioned", "mlp_spec", "AUTO_EXACT_MAX", "SOLVERS"]

#: ``method="auto"`` uses the exact path up to this many training points (the dense vertex on the
#: training inputs has ``N^4`` entries and the exact prediction costs ``N^3`` per test point).
AUTO_EXACT_MAX = 64
#: Bytes per entry of the training x training block at the estimator's peak (a fixed part and a part per hidden layer)
#: and per entry of the training x test block: set so that the model covers the growth of the peak resident memory
#: over the smallest case in all 28 cases of four runs of benchmarks/matrix_free_memory.py (docs/matrix-free.md,
#: "Memory").
BYTES_PER_ENTRY = (300, 320)
BYTES_PER_TEST_ENTRY = 1200
#: Bytes per training row and per test row for each output beyond the first (the estimator's per-sample arrays
#: carry one block of 256 samples per output): measured 46-51 KB per training row at 500 and 1000 rows, 1-16 outputs,
#: depths 3 and 5, ~4 KB per test row (results/matrix_free_memory_outputs.json; the model without it covered 16
#: outputs at 1000 training rows by 0.71x).
BYTES_PER_OUTPUT_ROW = (50_000, 10_000)
SOLVERS = ("auto", "exact", "matrix_free")


def _flat_steps(steps):
    for s in steps:
        if isinstance(s, Serial):
            yield from _flat_steps(s.steps)
        else:
            yield s


#: Bytes of estimator runs a matrix-free conditioning keeps for reuse (a test set predicted again, the evidence, a
#: pickle); the least recently used go first beyond it.
RUNS_BYTES = 256 * 2**20


def _run_bytes(run) -> int:
    """Bytes of the arrays a :class:`ngp._matrix_free.MatrixFreePosterior` holds."""
    held = [run.parts, run.terms, run.mean, run.var, run.mean_se, run.var_se, run.gp_mean, run.gp_var]
    return int(sum(getattr(x, "nbytes", 0) for x in jax.tree_util.tree_leaves(held)))


def mlp_spec(net):
    """``(activation, C_W, C_b, widths)`` of a plain fully connected network, else ``None``.

    Supported: ``Dense, Elementwise(a), Dense, ..., Elementwise(a), Dense`` with one activation
    ``a`` (smooth or relu family), depth ``>= 2``, one output-neuron prior per readout.
    """
    steps = list(_flat_steps(net.steps))
    if len(steps) < 3 or len(steps) % 2 == 0:
        return None
    dense, acts = steps[0::2], steps[1::2]
    if not all(type(s) is Dense for s in dense) or not all(type(s) is Elementwise for s in acts):
        return None
    act = acts[0].activation
    if any(a.activation is not act for a in acts):
        return None
    if not act.smooth and not act.is_scale_invariant:
        return None
    return act, tuple(d.C_W for d in dense), tuple(d.C_b for d in dense), tuple(d.width for d in dense[:-1])


class MatrixFreeConditioned(Conditioned):
    """A fully connected network prior conditioned on many training points, by the matrix-free estimator.

    Returned by ``ngp.condition(..., method="matrix_free")`` (or ``"auto"`` above
    ``AUTO_EXACT_MAX`` training points). Same interface as :class:`ngp.Conditioned`; every
    finite-width output carries its Monte-Carlo standard error and is reproducible for a fixed
    ``seed`` (``docs/matrix-free.md``).

    Attributes (beyond :class:`ngp.Conditioned`):
        method: ``"matrix_free"``.
        samples: Monte-Carlo samples per source layer; ``seed``: the integer seed.
        log_evidence_se: standard error of :attr:`log_evidence`.
        validity: the expansion diagnostics, an :class:`ngp.Validity` with ``eps``, ``eta``, ``eta_se``,
            ``trusted`` and ``message`` (``docs/matrix-free.md``).
        AUTO_EXACT_MAX: ``method="auto"`` takes this path above this many training points (64).
        DEFAULT_SAMPLES: ``samples`` when not given (32768).

    Memory: :meth:`memory_estimate`; with ``max_memory=`` (bytes) given to ``ngp.condition``, a run whose estimate
    exceeds it raises ``MemoryError`` before any work (no default bound on this path; ``docs/matrix-free.md``).
    """

    method = "matrix_free"
    #: ``ngp.condition(method="auto")`` takes the exact path up to this many training points, this one above.
    AUTO_EXACT_MAX = AUTO_EXACT_MAX
    #: Monte-Carlo samples per source layer when ``samples`` is not given.
    DEFAULT_SAMPLES = mf.DEFAULT_SAMPLES
    log_evidence_error = None  # no quadrature: the Monte-Carlo standard errors carry the numerical error

    def __init__(self, net, X_train, Y_train, *, noise: float, jitter: float = 0.0, samples: int | None = None,
                 seed: int = 0, **options):
        XA, _, Y, noise, jitter = train_test(net, X_train, Y_train, None, noise, jitter)
        refuse_duplicates(XA, noise, jitter, "exact conditioning on two values of the same function")
        spec = mlp_spec(net)
        if spec is None:
            raise NotImplementedError(
                f"method='matrix_free': supported for fully connected networks with one smooth or relu-family "
                f"activation (Dense, Elementwise, ..., Dense), got {net!r}; use method='exact'"
            )
        self.net, self.X_train, self.Y_train, self.noise, self.jitter = net, XA, Y, noise, jitter
        # unknown names refused; only max_memory is read, and bounds this path's arrays only when given (no default)
        self.options = check_options(options, "condition")
        self.samples = mf.DEFAULT_SAMPLES if samples is None else count(samples, "samples", minimum=2)
        self.seed = check_seed(seed)
        self._spec = spec
        self._runs = {}  # test-set key -> MatrixFreePosterior at the network's own width, oldest first (RUNS_BYTES)
        self.n = spec[3][-1]
        self._scale = None  # with_width: the new n_{L-1}
        self.gp = GPConditioned(self)

    # ------------------------------------------------------------------ estimator runs
    @functools.cached_property
    @float64  # the estimator's arrays in float64 in a float32 session (its kernels are JAX): here and in _run
    def _solve(self):
        act, C_W, C_b, _ = self._spec
        KAA = np.asarray(mf.kernel_blocks(act, self.X_train, self.X_train[:1], C_W, C_b)[-1][0])
        return solve_train(KAA, self.Y_train, self.noise, self.jitter)

    def memory_estimate(self, n_test: int = 0) -> int:
        """Bytes the estimator's arrays take at the peak of a run on the training points and ``n_test`` test points:
        ``(a + b * hidden layers)`` bytes per entry of the training x training block (:data:`BYTES_PER_ENTRY`),
        :data:`BYTES_PER_TEST_ENTRY` per entry of the training x test block, and for each output beyond the first
        :data:`BYTES_PER_OUTPUT_ROW` per training and per test row: a model measured over 250-1500 training
        points, 10-1000 test points, 1-16 outputs (4-16 for the outputs' term) and depths 3 and 5
        (``docs/matrix-free.md``, "Memory"). JAX's runtime and the compilation at new shapes (~1.1 GB in all at the
        first run of a process) are not counted."""
        n_test = count(n_test, "n_test", minimum=0, what="a non-negative integer")
        NA, outs = self.Y_train.shape
        a, b = BYTES_PER_ENTRY
        per_row, per_test_row = BYTES_PER_OUTPUT_ROW
        return int((a + b * len(self._spec[3])) * NA * NA + BYTES_PER_TEST_ENTRY * NA * n_test
                   + (outs - 1) * (per_row * NA + per_test_row * n_test))

    def _check_memory(self, n_test: int) -> None:
        """``MemoryError`` with the estimate, before any work, when ``max_memory`` was given and is too small."""
        limit = self.options.get("max_memory")
        need = self.memory_estimate(n_test)
        if limit is not None and need > limit:
            raise MemoryError(
                f"matrix-free posterior: {self.X_train.shape[0]} training and {n_test} test points need about "
                f"{need / 1024**3:.3g} GiB (> max_memory={limit / 1024**3:.3g} GiB; the estimate grows like "
                "N_train x (N_train + N_test)): use fewer training points, predict in batches (batch_size), or raise "
                "max_memory if the machine has the memory")

    @float64
    def _run(self, XB) -> "mf.MatrixFreePosterior":
        key = XB.tobytes() + str(XB.shape).encode()
        if key not in self._runs:
            self._check_memory(XB.shape[0])
            act, C_W, C_b, widths = self._spec
            blocks = mf.kernel_blocks(act, self.X_train, XB, C_W, C_b)
            if not self.__dict__.get("_conditioning_checked"):  # the exact path's test and message, once (a flag:
                # the GP's factorisation, _solve, would add its N x N arrays to a pickle)
                check_conditioning(np.asarray(blocks[-1][0]), self.noise, self.jitter)
                self._conditioning_checked = True
            self._runs[key] = mf.matrix_free_posterior(
                act, blocks, C_W, C_b, widths, self.Y_train, noise=self.noise + self.jitter, samples=self.samples,
                seed=self.seed, warn=False, conditioning_checked=True)
            self._evict()
        r = self._runs.pop(key)
        self._runs[key] = r  # the most recent last
        return r if self._scale is None else r.at_width(self._scale)

    def _evict(self) -> None:
        """Drop the least recently used runs beyond :data:`RUNS_BYTES` (a quarter of ``max_memory`` if that is less),
        keeping the newest: each run holds its own training x training blocks (~16 MB at 1000 training points), so
        predicting in batches would otherwise keep every batch's."""
        limit = RUNS_BYTES if self.options.get("max_memory") is None else min(RUNS_BYTES,
                                                                               self.options["max_memory"] // 4)
        sizes = {k: _run_bytes(r) for k, r in self._runs.items()}
        while len(self._runs) > 1 and sum(sizes.values()) > limit:
            sizes.pop(next(iter(self._runs)))
            self._runs.pop(next(iter(self._runs)))

    def _train_run(self):
        """A run whose training-side estimates give the evidence (any earlier test set will do: the
        training samples, hence the evidence, do not depend on the test inputs)."""
        if self._runs:
            r = next(iter(self._runs.values()))
            return r if self._scale is None else r.at_width(self._scale)
        return self._run(self.X_train[:1])

    @functools.cached_property
    def log_evidence(self) -> float:
        """Finite-width log marginal likelihood of all targets, to ``O(1/n)`` (Monte-Carlo estimate): from a kept
        prediction's estimator run (every run has the same training side); before any prediction, from a run of its
        own on one test input, which costs about as much (``docs/matrix-free.md``). Warns (once) when the first-order
        terms are not small, like the exact path."""
        run = self._train_run()
        if not run.validity.trusted and self.options.get("warn", True):
            warn(mf.regime_warning(run.validity), ExpansionWarning)
        return float(run.log_evidence)

    @functools.cached_property
    def log_evidence_se(self) -> float:
        return float(self._train_run().log_evidence_se)

    @property
    def validity(self) -> Validity:
        return self._train_run().validity

    @property
    def expansion_parameter(self) -> float:
        """``max |V| / (n K^2)`` over pairs of training inputs."""
        return float(self.validity.eps)

    def with_width(self, n: int) -> "MatrixFreeConditioned":
        """The same conditioning at hidden width ``n`` (``n_{L-1} = n``; the network's hidden widths must be equal and
        its ``C_W``, ``C_b`` free of the width, else ``ValueError``), the samples reused."""
        n = count(n, "n", maximum=MAX_WIDTH)
        check_width_free(self.net)
        new = self._sharing(("log_evidence", "log_evidence_se"))
        new.n, new._scale = n, n
        return new

    def with_targets(self, Y_train) -> "MatrixFreeConditioned":
        """The same prior conditioned on other targets at the same training inputs: a new conditioning (the
        estimator's samples are drawn with the targets, so nothing is reused; the same ``samples`` and ``seed``)."""
        new = MatrixFreeConditioned(self.net, self.X_train, Y_train, noise=self.noise, jitter=self.jitter,
                                    samples=self.samples, seed=self.seed, **self.options)
        return new if self._scale is None else new.with_width(self._scale)

    # ------------------------------------------------------------------ prediction
    def predict(self, X_test, *, full_cov: bool = False, batch_size: int | None = None,
                stop=None) -> FiniteWidthPosterior:
        """Posterior mean and marginal variances at test inputs, with standard errors.

        Args:
            X_test: ``(N_test, n0)`` test inputs.
            full_cov: not available on this path (``NotImplementedError``): the matrix-free estimator
                gives marginal variances; use ``method="exact"`` for the joint covariance.
            batch_size: test points per estimator call (default: all at once). Every call reuses the
                same seed, so the answer does not depend on the batching; each call resamples the
                training side (cost grows with the number of batches). A shorter last batch is padded to
                ``batch_size`` (copies of its first point), so every call runs the same compiled programs.
            stop: optional callable ``stop(done) -> bool``, called before each batch after the first with the
                number of test points predicted so far; when it returns ``True`` the prediction ends there and the
                posterior covers only those first ``done`` test points (as :meth:`ngp.Conditioned.predict`).

        Returns:
            :class:`ngp.FiniteWidthPosterior` with ``cov=None``, ``method="matrix_free"`` and
            ``mean_se``, ``var_se``, ``log_evidence_se``; its ``.gp`` holds the exact GP mean and
            marginal variances (``cov_test=None``: no test x test block is formed).
        """
        check_stop(stop, False)
        if flag(full_cov, "full_cov"):
            raise NotImplementedError(
                "predict: full_cov=True is not available with method='matrix_free' (marginal variances only); "
                "use method='exact' for the joint covariance of a few test points"
            )
        XB = as_inputs(X_test, "X_test", in_dim=getattr(self.net, "in_dim", None))
        if XB.shape[1] != self.X_train.shape[1]:
            raise ValueError(f"X_test: expected {self.X_train.shape[1]} features like X_train, got {XB.shape[1]}")
        NB = XB.shape[0]
        batch_size = NB if batch_size is None else count(batch_size, "batch_size")
        names = ("mean", "var", "gp_mean", "gp_var", "mean_se", "var_se")
        parts = {name: [] for name in names}  # each batch's test rows (the runs themselves are not kept)
        first = None  # the first run's training-side numbers (every run has the same: the same seed)
        for s in range(0, NB, batch_size):
            if s and stop_requested(stop, s):
                break
            chunk = XB[s:s + batch_size]
            got = chunk.shape[0]
            if s and got < batch_size:  # every run one shape: the estimator's programs compile once
                chunk = pad_to(chunk, batch_size)
            run = self._run(chunk)
            if first is None:
                first = {name: getattr(run, name) for name in
                         ("validity", "gp_log_evidence", "log_evidence", "log_evidence_se")}
            for name in names:
                parts[name].append(np.asarray(getattr(run, name))[:got])
            del run
        cat = lambda name: np.concatenate(parts[name])  # noqa: E731
        v = first["validity"]
        var = cat("var")
        negative = bool(np.any(var < 0))
        if negative and self.options.get("warn", True):
            warn("posterior: a first-order posterior variance is negative; the 1/n expansion has broken down "
                 f"(expansion parameter {v.eps:.3g})", ExpansionWarning)
        if not v.trusted and self.options.get("warn", True):
            warn(mf.regime_warning(v), ExpansionWarning)
        gp = GPPosterior(cat("gp_mean"), cat("gp_var"), None, float(first["gp_log_evidence"]), self.noise)
        return FiniteWidthPosterior(
            cat("mean"), var, None, float(first["log_evidence"]), gp, self.n, float(v.eps), self.noise,
            validity=mf.validity(v.eps, v.eta, v.eta_se, negative_variance=negative),
            mean_se=cat("mean_se"), var_se=cat("var_se"), log_evidence_se=float(first["log_evidence_se"]),
            method="matrix_free")
