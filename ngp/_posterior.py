"""Bayesian regression with a finite-width prior, to first order in 1/n (``docs/theory.md``, "Posterior").

``ngp.condition(net, X_train, Y_train, noise=...)`` does the training-set work once (the GP solve,
``K1`` and ``V`` on the training inputs, the evidence, and every training-only contraction the
predictions reuse); ``.predict(X_test)`` then needs only the vertex components with test indices:
``V_(b a1)(a2 a3)`` (mean), ``V_(b b)(a1 a2)`` and ``V_(b a1)(b a2)`` (marginal variances) and, with
``full_cov=True``, the same with two different test points. ``K1`` is computed on the pairs the
marginal formulas read (test-training pairs and each input with itself: ``O(N_A N_B)`` two-input
values, not the ``O(N_B^2)`` of the test-test pairs), on every pair with ``full_cov``. Test points are processed in batches
whose memory is bounded by ``max_memory``. ``ngp.condition`` and ``ngp.posterior`` (``condition(...).predict(..., full_cov=True)``) live in
``_condition``, which picks this exact path or the matrix-free one.

Notation: training inputs ``A`` (``N_A``), test inputs ``B`` (``N_B``), ``n = n_{L-1}``,
``n_L`` observed output neurons, ``Kt = K_AA + noise I`` with inverse ``Kt^-1``, whitened
targets ``yt_i = Kt^-1 y_i``, neuron-summed target matrix ``Y = sum_j yt_j yt_j^T``,
``W = Y - n_L Kt^-1``, GP projector ``P = K_BA Kt^-1`` and residualised objects (each test slot
``b`` replaced by ``b - P A``).
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np

from ._cumulants import canonical_quads, new_four_point_seconds
from ._finite import FOUR_POINT_COST_WARN, TABLE_CHUNK, multisets
from ._gaussian import K_ACCURATE
from ._gp import GPPosterior, gp_from_kernel, gp_log_evidence
from ._linalg import refuse_duplicates, solve_train
from ._prior import MAX_MEMORY, check_options, reuse_four_point, reuse_jacobians
from ._validate import (MAX_WIDTH, as_inputs, check_stop, count, device, flag, float64, stop_requested, train_test,
                        warn)
from ._warnings import AccuracyWarning, CostWarning, ExpansionWarning, duration
from ._validity import (NUMERICAL_NEGLIGIBLE, NUMERICAL_WARN, Validity, clip_rounding, evidence_validity,
                        first_order_eta, posterior_validity, predictive_variance, untrusted_message, without_eps)
from ._vertex_error import component_errors, k1_error_packed
from ._results import result

__all__ = [
    "FiniteWidthPosterior", "Conditioned", "GPConditioned", "finite_width_log_evidence", "predict_bytes_per_point",
    "check_width_free",
]


def check_width_free(net) -> None:
    """Refuse (``ValueError`` naming ``n``) a network whose cumulants ``K``, ``K1``, ``V`` depend on its hidden width
    beyond the explicit ``1/n``: unequal hidden widths, or a ``parameterization`` that scales ``C_W`` or ``C_b`` with
    the width (``with_width`` kept the old width's values: muP at width 32 -> 64 gave GP variances 0.036 / 0.055
    against 0.026 / 0.038, and an evidence of -0.28 against +0.13)."""
    if len(set(net.widths)) > 1:
        raise ValueError(f"n: with_width needs equal hidden widths, the network has {list(net.widths)}")
    par = getattr(net, "parameterization", None)
    if par is not None and (any(par.C_W) or any(par.C_b)):
        raise ValueError(f"n: with_width keeps the network's C_W and C_b, but its parameterization {par.name!r} scales "
                         "them with the width: condition the network built at width n instead")


@result
class FiniteWidthPosterior:
    """Posterior of the latent outputs at the test inputs, to first order in ``1/n``.

    Attributes:
        mean: ``(N_test, out_dim)`` posterior mean.
        var: ``(N_test, out_dim)`` marginal variances of the latent outputs (noise excluded).
        cov: ``(N_test, out_dim, N_test, out_dim)`` posterior covariance, including the
            ``O(1/n)`` covariance between different output neurons (``None`` unless
            ``full_cov=True``; :func:`ngp.posterior` always computes it).
        log_evidence: log marginal likelihood of all targets to ``O(1/n)``.
        gp: the infinite-width :class:`ngp.GPPosterior` for the same data.
        n: the width ``n_{L-1}`` of the expansion.
        expansion_parameter: ``max |V| / (n K^2)`` of the prior on train and test inputs (over the pairs
            of inputs the prediction reads: training pairs, test-training pairs, each test point with
            itself, and every test pair with ``full_cov``); the neglected terms are of order its square.
        noise: observation-noise variance.
        validity: :class:`ngp.Validity`, the size of the first-order terms against the GP (mean
            shift in GP predictive standard deviations, relative variance change, evidence
            correction) and whether the result is ``trusted`` (``docs/validity.md``); on the matrix-free path its
            own measures instead (``eps``, ``eta``; those three are ``None``: ``docs/matrix-free.md``,
            "Validity rule").
        method: ``"exact"`` or ``"matrix_free"`` (the solver that produced it).
        mean_se, var_se, log_evidence_se: Monte-Carlo standard errors of ``mean``, ``var`` and
            ``log_evidence`` (``solver="matrix_free"``; ``None`` on the exact path).
        mean_error, var_error, cov_error, log_evidence_error: estimated bounds on the numerical error
            of ``mean``, ``var``, ``cov`` and ``log_evidence`` from the four-point quadrature behind ``V``
            and ``K1`` (their estimates :attr:`ngp.Prior.V_error`, :attr:`ngp.Prior.K1_error` carried
            through the posterior's linear dependence on ``V`` and ``K1``, ``docs/accuracy.md``); exact
            path only (``None`` on the matrix-free one); NaN where the rule gives no estimate.
    """

    mean: np.ndarray
    var: np.ndarray
    cov: np.ndarray | None
    log_evidence: float
    gp: GPPosterior
    n: int | None
    expansion_parameter: float
    noise: float
    validity: Validity | None = None
    mean_se: np.ndarray | None = None
    var_se: np.ndarray | None = None
    log_evidence_se: float | None = None
    method: str = "exact"
    mean_error: np.ndarray | None = None
    var_error: np.ndarray | None = None
    cov_error: np.ndarray | None = None
    log_evidence_error: float | None = None

    @property
    def std(self) -> np.ndarray:
        return np.sqrt(np.clip(self.var, 0.0, None))

    @property
    def mean_correction(self) -> np.ndarray:
        """``mean - gp.mean``: the ``O(1/n)`` shift of the prediction."""
        return self.mean - self.gp.mean


def finite_width_log_evidence(K_AA, K1_AA, V_AAAA, Y, noise, n, jitter=0.0, *, solve=None, what: str = "posterior"):
    """Finite-width log evidence (Gaussian part with ``K + K1/n`` unexpanded; ``docs/theory.md``, "Evidence").

    A JAX function of its array arguments (differentiable in ``K_AA``, ``K1_AA``, ``V_AAAA`` and
    ``noise``); returns a 0-d array.

    Args:
        K_AA, K1_AA: ``(N_A, N_A)`` kernel and its ``1/n`` shift on the training inputs.
        V_AAAA: ``(N_A, N_A, N_A, N_A)`` vertex on the training inputs.
        Y: ``(N_A, n_L)`` targets.
        noise, jitter: observation-noise variance and extra diagonal.
        n: the width of the expansion.
        solve: optional factorised ``K_AA + (noise + jitter) I`` (``ngp._linalg.TrainSolve``).
        what: the caller's name, which the error message starts with.

    Raises:
        numpy.linalg.LinAlgError: ``K + K1/n + noise I`` is not positive definite (concrete inputs).
    """
    given = None if solve is None else (device(solve.Kinv), device(solve.ytilde))
    value, finite = _finite_width_log_evidence(K_AA, K1_AA, V_AAAA, Y, noise, n, jitter, given)
    traced = any(isinstance(v, jax.core.Tracer) for v in (K_AA, K1_AA, V_AAAA, Y, noise, jitter, finite))
    if not traced and not bool(finite):  # (under jax.grad the boolean came out concrete: a LinAlgError, not NaN)
        raise np.linalg.LinAlgError(
            f"{what}: K_train + K1_train/n + noise I is not positive definite; the 1/n expansion "
            "is not valid here (increase the width or the noise)"
        )
    return value


@jax.jit
def _finite_width_log_evidence(K_AA, K1_AA, V_AAAA, Y, noise, n, jitter, given):
    """The body of :func:`finite_width_log_evidence`, compiled once per size: ``(value, finite)``."""
    NA, nL = Y.shape
    eye = jnp.eye(NA)
    if given is not None:
        Kinv, yt = given
    else:
        Lk = jnp.linalg.cholesky(K_AA + (noise + jitter) * eye)
        Kinv = jax.scipy.linalg.cho_solve((Lk, True), eye)
        Kinv = 0.5 * (Kinv + Kinv.T)
        yt = Kinv @ Y
    Ymat = yt @ yt.T
    G = K_AA + K1_AA / n + (noise + jitter) * eye
    LG = jnp.linalg.cholesky(G)
    logdet = 2.0 * jnp.sum(jnp.log(jnp.diagonal(LG)))
    quad = jnp.sum(Y * jax.scipy.linalg.cho_solve((LG, True), Y))
    gauss = -0.5 * quad - 0.5 * nL * (logdet + NA * math.log(2 * math.pi))
    Q = Ymat - nL * Kinv
    corr = (
        jnp.einsum("abcd,ab,cd->", V_AAAA, Q, Q)
        - 4.0 * jnp.einsum("abcd,ac,bd->", V_AAAA, Kinv, Ymat)
        + 2.0 * nL * jnp.einsum("abcd,ac,bd->", V_AAAA, Kinv, Kinv)
    ) / (8.0 * n)
    return gauss + corr, jnp.all(jnp.isfinite(LG))


#: Multisets per test point that :meth:`Conditioned.predict`'s cost estimate enumerates at most (beyond: that many
#: drawn at random).
COST_SAMPLE_ROWS = 4096


class Conditioned:
    """A network prior conditioned on training data, to first order in ``1/n``.

    Returned by :func:`ngp.condition`. The training-set work is done once; :meth:`predict` reuses it
    for any number of test inputs. It pickles with what it has computed, so a loaded copy (in another process)
    predicts without redoing it (``docs/posterior.md``, "Saving a conditioned model").

    Attributes:
        net: the network.
        X_train: ``(N_train, n0)``; Y_train: ``(N_train, out_dim)``.
        noise, jitter: observation-noise variance and extra diagonal.
        n: the width ``n_{L-1}`` of the expansion (``None``: the prior is exactly Gaussian).
        log_evidence: finite-width log marginal likelihood of the targets.
        gp: the infinite-width conditioning (``.log_evidence``, ``.predict(X_test)``).
        expansion_parameter: ``max |V| / (n K^2)`` of the prior on the training inputs.
        validity: :class:`ngp.Validity` of the log evidence: its first-order correction against the GP's, ``eps``
            and ``eta`` (``docs/validity.md``).
        method: ``"exact"`` (this class) or ``"matrix_free"`` (its matrix-free subclass).
        log_evidence_se: Monte-Carlo standard error of ``log_evidence`` (``None`` on the exact path).
        log_evidence_error: bound on the numerical error of ``log_evidence`` from the four-point
            quadrature (``docs/accuracy.md``; ``None`` on the matrix-free path).
    """

    method = "exact"
    log_evidence_se = None

    @float64
    def __init__(self, net, X_train, Y_train, *, noise: float, jitter: float = 0.0, **options):
        XA, _, Y, noise, jitter = train_test(net, X_train, Y_train, None, noise, jitter)
        refuse_duplicates(XA, noise, jitter, "exact conditioning on two values of the same function")
        self.net, self.X_train, self.Y_train, self.noise, self.jitter = net, XA, Y, noise, jitter
        self.options = check_options(options, "condition")  # checked once (None for max_memory: the default)
        self._prior = net.prior(XA, **self.options)
        self._solve = solve_train(np.asarray(self._prior.K), Y, noise, jitter)
        self._joint = {}  # last test set -> joint prior (shared with with_width copies)
        self.n = self._prior.n
        self.gp = GPConditioned(self)

    @property
    def N_train(self) -> int:
        return self.X_train.shape[0]

    def __repr__(self) -> str:
        shape = f"{self.N_train} training rows x {self.Y_train.shape[1]} outputs"
        extra = f", jitter={self.jitter:g}" if self.jitter else ""
        return (f"{type(self).__name__}({self.net!r}, {shape}, n={self.n}, noise={self.noise:g}{extra}, "
                f"method={self.method!r})")

    def memory_estimate(self, n_test: int = 0) -> int:
        """Bytes of the exact path's largest arrays when ``n_test`` test points are predicted in one batch: the
        training vertex (``net.prior(X_train).memory_estimate()``) and the marginal prediction's working memory per
        test point (``predict`` refuses a batch whose working memory exceeds ``max_memory``; ``full_cov`` needs more,
        checked by ``predict``). Nothing is computed."""
        n_test = count(n_test, "n_test", minimum=0, what="a non-negative integer")
        return int(self._prior.memory_estimate()
                   + n_test * predict_bytes_per_point(self._prior, self.N_train, self.Y_train.shape[1]))

    # ------------------------------------------------------------------ training-only pieces
    @functools.cached_property
    @float64
    def _train(self) -> dict:
        """Training cumulants, the exact coefficients of ``V`` and ``K1`` in the corrections, and every
        contraction of the training ``V`` with them that predictions reuse."""
        p = self._prior
        coef = _coefficients(self._solve)
        V = np.asarray(p.V)  # first: a layer that computes the dense V on all pairs then gives K1 from it as well
        return _TrainParts(p.layers[-1], "V", K1=np.asarray(p.K1), **coef, **_contractions(V, coef))

    @functools.cached_property
    @float64
    def _train_error(self) -> dict:
        """The same with the estimated errors of ``V`` and ``K1`` and the coefficients' absolute values:
        the pieces of the error bounds (``docs/accuracy.md``)."""
        p = self._prior
        coef = {k: np.abs(self._train[k]) for k in ("yt", "Kinv", "W", "T")}
        return _TrainParts(p.layers[-1], "V_error", K1=np.asarray(p.K1_error), **coef,
                           **_contractions(np.asarray(p.V_error), coef))

    @functools.cached_property
    @float64
    def _log_evidence(self) -> float:
        if self.n is None:
            return self.gp.log_evidence
        t = self._train
        return float(finite_width_log_evidence(np.asarray(self._prior.K), t["K1"], t["V"], self.Y_train, self.noise,
                                               self.n, self.jitter, solve=self._solve))

    @property
    def log_evidence(self) -> float:
        """Finite-width log marginal likelihood of all targets, to ``O(1/n)`` (warns once if not trusted)."""
        logz = self._log_evidence
        if not self.__dict__.get("_evidence_checked"):
            self._evidence_checked = True
            self._warn_validity(self.validity, "log_evidence")
        return logz

    @functools.cached_property
    @float64
    def log_evidence_error(self) -> float:
        """Estimated bound on the numerical error of :attr:`log_evidence` from the four-point quadrature
        (``docs/accuracy.md``; NaN where the rule gives no estimate)."""
        if self.n is None:
            return 0.0
        e = self._train_error
        return _log_evidence_error(np.asarray(self._prior.K), self._train["K1"], e["K1"], e["V"], self.Y_train,
                                   self.noise + self.jitter, self.n, self._solve)

    @property
    def validity(self) -> Validity:
        """The verdict on the log evidence: its first-order correction against the GP's, the expansion parameter
        ``eps`` and ``eta = Var[log p(y | network)]`` at first order (``docs/validity.md``)."""
        return evidence_validity(self._log_evidence, self.gp.log_evidence, eps=self.expansion_parameter,
                                 eta=self._eta)

    @property
    def _eta(self) -> float | None:
        """``eta = Var[log p(y | network)]`` at first order (``docs/validity.md``), from the training contractions."""
        return None if self.n is None else first_order_eta(self._train["W"], self._train["M_W"], self.n)

    def _warn_validity(self, validity: Validity, what: str) -> None:
        # a large expansion parameter is the prior's own warning (Prior._check_expansion) at the prior's width: not
        # said twice there; at another width (with_width) the prior has not judged it
        said = self.n == self._prior.n
        others = without_eps(validity.reasons) if said else list(validity.reasons)
        if others and self.options.get("warn", True):
            warn(untrusted_message(what, dataclasses.replace(validity, reasons=tuple(others)), self.n),
                 ExpansionWarning)

    @property
    @float64
    def expansion_parameter(self) -> float:
        """``max |V| / (n K^2)`` of the prior on the training inputs."""
        if self.n is None:
            return 0.0
        return self._prior._cumulants[-1].expansion_parameter * (self._prior.n / self.n)

    def with_width(self, n: int) -> "Conditioned":
        """The same conditioning with every hidden width set to ``n`` (cumulants reused).

        With equal hidden widths ``K``, ``K1`` and ``V`` do not depend on the width (only the explicit
        ``1/n`` does), so a grid of widths costs one prior computation.

        Raises:
            ValueError: the network's hidden widths are not all equal, or its ``parameterization`` scales ``C_W`` or
                ``C_b`` with the width (muP and the family towards it: the cumulants depend on it).
        """
        n = count(n, "n", maximum=MAX_WIDTH)
        check_width_free(self.net)
        new = self._sharing(("_log_evidence", "log_evidence_error", "_evidence_checked"))
        new.n = None if self.n is None else n
        return new

    def _sharing(self, drop) -> "Conditioned":
        """A copy of this conditioning sharing its state (cumulants, caches) except the attributes ``drop``, with
        its own GP view (``with_width``, ``with_targets``)."""
        new = object.__new__(type(self))
        new.__dict__.update({k: v for k, v in self.__dict__.items() if k not in drop and k != "gp"})
        new.gp = GPConditioned(new)
        return new

    @float64
    def with_targets(self, Y_train) -> "Conditioned":
        """The same prior conditioned on other targets at the same training inputs (``(N_train, out_dim)``).

        Reuses every cumulant computed so far (the training vertex and the four-point values of the test points
        predicted last), so new targets cost the solve and the ``O(N_train^4)`` contractions, not the quadrature
        (``docs/posterior.md``, "Other targets on the same inputs"). ``self`` is unchanged.
        """
        _, _, Y, _, _ = train_test(self.net, self.X_train, Y_train, None, self.noise, self.jitter)
        new = self._sharing(_TARGET_DEPENDENT)
        new.Y_train = Y
        new._solve = solve_train(np.asarray(self._prior.K), Y, self.noise, self.jitter)
        return new

    # ------------------------------------------------------------------ prediction
    @float64
    def predict(self, X_test, *, full_cov: bool = False, batch_size: int | None = None,
                stop=None) -> FiniteWidthPosterior:
        """Posterior at test inputs.

        Args:
            X_test: ``(N_test, n0)`` test inputs.
            full_cov: also compute the ``(N_test, out_dim, N_test, out_dim)`` covariance (needs the
                vertex components of every pair of test points; memory grows as ``N_test^2 N_train^2``).
            batch_size: test points per batch for the marginal path (default: half of ``max_memory``
                over one test point's working memory, ``docs/theory.md``, "Posterior").
            stop: optional callable ``stop(done) -> bool``, called before each batch after the first with
                the number of test points predicted so far; when it returns ``True`` the prediction ends there
                (answers other than ``True``, ``False`` and ``None`` raise a ``TypeError``) and the posterior
                covers only those first ``done`` test points (``mean.shape[0]``). Each batch computes its own
                vertex components, so a deadline can be kept this way (``docs/posterior.md``, "Predicting
                against a deadline"). Marginal path only.

        Returns:
            :class:`FiniteWidthPosterior` (``cov`` is ``None`` unless ``full_cov``).

        Raises:
            MemoryError: one test point (or ``batch_size`` of them, or the ``full_cov`` blocks) would
                need more than ``max_memory``; raised with the estimate before any vertex work.
        """
        XB = as_inputs(X_test, "X_test", in_dim=getattr(self.net, "in_dim", None))
        if XB.shape[1] != self.X_train.shape[1]:
            raise ValueError(f"X_test: expected {self.X_train.shape[1]} features like X_train, got {XB.shape[1]}")
        full_cov = flag(full_cov, "full_cov")
        check_stop(stop, full_cov)
        NA, NB = self.N_train, XB.shape[0]
        prior = self._joint_prior(XB)
        K = np.asarray(prior.K)
        gp = gp_from_kernel(K, NA, self.Y_train, self.noise, self.jitter, solve=self._solve)
        if self.n is None:  # exactly Gaussian prior
            zero = np.zeros_like(gp.mean)
            return FiniteWidthPosterior(gp.mean, gp.var, gp.cov if full_cov else None, gp.log_evidence, gp,
                                        None, 0.0, self.noise, evidence_validity(0.0, 0.0), mean_error=zero,
                                        var_error=zero, cov_error=np.zeros_like(gp.cov) if full_cov else None,
                                        log_evidence_error=0.0)
        n = self.n
        c = prior._cumulants[-1]
        inv = prior._inverse
        iA, iB = inv[:NA], inv[NA:]
        s = self._solve
        nL = s.ytilde.shape[1]
        limit = self.options.get("max_memory", MAX_MEMORY)
        per_point = predict_bytes_per_point(prior, NA, nL)
        if batch_size is None:
            if per_point > limit // 2:
                raise MemoryError(
                    f"predict: one test point needs about {per_point / 1024**3:.3g} GiB of working memory with "
                    f"{NA} training points (> half of max_memory={limit / 1024**3:.3g} GiB): raise max_memory if "
                    "the machine has the memory, or use method='matrix_free'")
            batch_size = int(max(1, min(NB, (limit // 2) // per_point)))
        else:
            batch_size = min(count(batch_size, "batch_size"), max(NB, 1))  # a batch holds at most the test points
            if batch_size * per_point > limit:
                raise MemoryError(
                    f"predict: batch_size={batch_size} needs about {batch_size * per_point / 1024**3:.3g} GiB "
                    f"(> max_memory={limit / 1024**3:.3g} GiB): use a smaller batch_size or raise max_memory")
        if full_cov:  # refused before any vertex work (the training vertex included)
            self._check_full_cov(NA, NB, prior)
        # values: the coefficients and differences as they are; error bounds: the errors of V and K1, the
        # coefficients' absolute values and every difference a sum (docs/accuracy.md)
        trained = "_train" in self.__dict__
        if trained:  # the joint prior takes over the training prior's four-point values
            reuse_four_point(prior, self._prior, np.arange(NA))
        if stop is None:  # a small prediction: its four-point values (and the training's) in shared calls
            self._prefill(prior, NA, full_cov)
        if not full_cov:
            self._warn_cost(prior, NA, batch_size)
        train = self._train
        if not trained:  # the values the training prior has computed just now
            reuse_four_point(prior, self._prior, np.arange(NA))
        P = K[NA:, :NA] @ s.Kinv  # (NB, NA)
        if full_cov:
            K1, EK1 = np.asarray(prior.K1), np.asarray(prior.K1_error)
            K1_parts = (K1[NA:, :NA], K1[NA:, NA:].diagonal(), K1[NA:, NA:])
            EK1_parts = (EK1[NA:, :NA], EK1[NA:, NA:].diagonal(), EK1[NA:, NA:])
            eps = c.expansion_parameter
        else:  # K1 only where the marginal formulas read it
            sel, at_BA, at_bb = _test_pairs(c.pairs, iA, iB)
            K1s, EK1s = np.asarray(c._K1_at(sel)), np.asarray(k1_error_packed(c, sel))
            K1_parts, EK1_parts = (K1s[at_BA], K1s[at_bb], None), (EK1s[at_BA], EK1s[at_bb], None)
        value = _Parts(train, P, *K1_parts, c.vertex.components, np.subtract)
        error = _Parts(self._train_error, np.abs(P), *EK1_parts, _vertex_errors(c), np.add)
        mean, var = gp.mean.copy(), np.empty((NB, nL))
        mean_err, var_err = np.empty((NB, nL)), np.empty((NB, nL))
        Sigma = gp.cov_test.diagonal()
        V1_all, E1_all = [], []
        for start in range(0, NB, batch_size):
            if start and stop_requested(stop, start):
                NB, iB = start, iB[:start]
                mean, var, mean_err, var_err = (a[:start] for a in (mean, var, mean_err, var_err))
                gp = GPPosterior(gp.mean[:start], gp.var[:start], gp.cov_test[:start, :start], gp.log_evidence,
                                 gp.noise)
                break
            sl = slice(start, min(NB, start + batch_size))
            V1 = _test_components(value.components, iB[sl], iA)
            dm, dv = _marginal(value, sl, V1, n)
            mean[sl] += dm
            var[sl] = Sigma[sl, None] + dv
            E1 = _test_components(error.components, iB[sl], iA)
            mean_err[sl], var_err[sl] = _marginal(error, sl, E1, n)
            if full_cov:
                V1_all.append(V1[0])
                E1_all.append(E1[0])
        prior_var = K[NA:NA + NB, NA:NA + NB].diagonal()
        var = clip_rounding(var, prior_var)  # at a training input with noise = 0: 0 up to rounding
        cov = cov_err = None
        if full_cov:
            rows = self._full_cov_rows(NA, NB, prior)
            cov = gp.cov_test[:, None, :, None] * np.eye(nL)[None, :, None, :] + _cov_correction(
                value, iA, iB, np.concatenate(V1_all), n, rows)
            cov_err = _cov_correction(error, iA, iB, np.concatenate(E1_all), n, rows)
            a, i = np.arange(NB)[:, None], np.arange(nL)[None, :]
            cov[a, i, a, i] = clip_rounding(cov[a, i, a, i], prior_var)
        else:  # over the pairs read (those of the test points predicted)
            if NB < XB.shape[0]:
                sel = _test_pairs(c.pairs, iA, iB)[0]
            # the training prior's own (its layers are built: ``_train`` above read its V)
            eps = max(c.expansion_parameter_at(sel), self._prior.expansion_parameter)
            if self.options.get("warn", True):
                prior._check_quadrature()
                prior._check_expansion(eps)
        eps = eps * (prior.n / n)
        logz = self._log_evidence
        validity = posterior_validity(mean=mean, var=var, gp_mean=gp.mean, gp_var=gp.var, noise=self.noise,
                                      prior_var=prior_var, log_evidence=logz, gp_log_evidence=gp.log_evidence,
                                      eps=eps, eta=self._eta)
        self._warn_validity(validity, "posterior")
        scale = np.sqrt(predictive_variance(gp.var, self.noise, prior_var))
        # a test input equal to a training input observed without noise has no 1/n correction to resolve (its mean
        # is the target at every order): not part of the comparison
        off = ~np.isin(iB, iA) if self.noise + self.jitter == 0.0 else np.ones(NB, dtype=bool)
        self._warn_numerical(mean_err[off], (mean - gp.mean)[off], prior, scale[off])
        return FiniteWidthPosterior(mean, var, cov, logz, gp, n, eps, self.noise, validity, mean_error=mean_err,
                                    var_error=var_err, cov_error=cov_err, log_evidence_error=self.log_evidence_error)

    def _prefill(self, prior, NA: int, full_cov: bool) -> None:
        """The four-point values of every layer that the prediction on the joint ``prior`` reads (with ``full_cov``
        all multisets of the joint inputs, else those of the training inputs and one test point), computed in
        shared calls when they fit one (:meth:`ngp.Prior._prefill_four_point`); when the training vertex is not
        computed yet, its values are among them and the training prior takes them over, so that a first
        prediction (``ngp.posterior``) costs one call instead of two (``docs/four-point.md``, "Small problems: one call
        for every layer")."""
        rows = None
        if not full_cov:
            train, test = _distinct_inputs(prior, NA)
            nu = train.size
            layers = len(prior._cumulants)
            if layers * (test.size * math.comb(nu + 3, 3) + math.comb(nu + 3, 4)) > TABLE_CHUNK:
                return
            ms = multisets(nu + 1)  # input nu: a test point
            rows = np.concatenate([train[ms[ms[:, 3] < nu]], _with_test_point(train, test, ms[ms[:, 3] == nu, :3])])
        if prior._prefill_four_point(rows) and "_train" not in self.__dict__:
            back = np.where(np.arange(prior.N) < NA, np.arange(prior.N), -1)
            reuse_four_point(self._prior, prior, back)
            reuse_jacobians(self._prior, prior, back)

    def _warn_cost(self, prior, NA: int, batch_size: int) -> None:
        """A :class:`ngp.CostWarning` before a marginal prediction whose four-point values, in all its batches and
        layers, are estimated beyond :data:`ngp._finite.FOUR_POINT_COST_WARN` seconds: each call of new values
        warns only of itself (:func:`ngp._finite.warn_four_point_cost`), and a prediction of many test points makes
        many calls. The estimate: the values not known yet of the multisets of the training inputs and one test
        point (all of them, or :data:`COST_SAMPLE_ROWS` drawn at random where there are more), for up to four test
        points spread over the new ones, scaled to all of them (first bounded from the largest variance of their inputs,
        :func:`ngp._fourpoint.max_rule_nodes`: the sample's eigen-decompositions run only where that bound is beyond
        the limit)."""
        train, test = _distinct_inputs(prior, NA)
        if not test.size:
            return
        per_point = math.comb(train.size + 3, 3)  # multisets with the test point and three of train + itself
        if per_point <= COST_SAMPLE_ROWS:
            three = np.array(list(itertools.combinations_with_replacement(range(train.size + 1), 3)))
        else:  # sorted draws (the distinct rows are counted below)
            three = np.random.default_rng(0).integers(0, train.size + 1, size=(COST_SAMPLE_ROWS, 3))
        pick = np.unique(test[np.linspace(0, test.size - 1, min(4, test.size)).astype(int)])
        rows = np.unique(_with_test_point(train, pick, three), axis=0)
        scale = test.size * per_point / rows.shape[0]
        if new_four_point_seconds(prior._cumulants, rows, bound=True) * scale <= FOUR_POINT_COST_WARN:
            return  # the cheap bound: no eigen-decompositions for a prediction that cannot take a minute
        seconds = new_four_point_seconds(prior._cumulants, rows) * scale
        if seconds > FOUR_POINT_COST_WARN:
            warn(f"ngp: the four-point values of this prediction, {test.size} new test points with {train.size} "
                 f"training inputs ({per_point} multisets per test point and hidden layer, in batches of "
                 f"{batch_size} test points), take about {duration(seconds)} here; stop= ends a prediction at a "
                 "deadline with the test points done so far (docs/posterior.md, \"Predicting against a deadline\").",
                 CostWarning)

    def _joint_prior(self, XB):
        """The prior on ``[X_train; X_test]`` (its lazy cumulants remember their four-point values, so
        predicting the same test inputs again, e.g. at another width, reuses them)."""
        key = XB.tobytes() + str(XB.shape).encode()
        if key not in self._joint:
            self._joint.clear()
            self._joint[key] = self.net.prior(np.concatenate([self.X_train, XB]), **self.options)
        return self._joint[key]

    def _warn_numerical(self, mean_err, shift, prior, scale) -> None:
        """Warn when the quadrature's estimated error bound reaches :data:`NUMERICAL_WARN` of the 1/n mean shift,
        unless it is below :data:`NUMERICAL_NEGLIGIBLE` of the predictive standard deviations ``scale`` (the shape
        of ``mean_err``) everywhere; the advice depends on the largest pre-activation variance of ``prior`` (beyond
        ``K_ACCURATE`` blocks with several directions of large scale reach the rules' node cap, a floor that
        ``four_point_rtol`` does not move, ``docs/accuracy.md``)."""
        top, size = float(np.max(mean_err, initial=0.0)), float(np.max(np.abs(shift), initial=0.0))
        negligible = bool(np.all(mean_err <= NUMERICAL_NEGLIGIBLE * scale))
        if self.options.get("warn", True) and np.isfinite(top) and top > NUMERICAL_WARN * size and not negligible:
            kmax = max(float(np.max(np.diagonal(np.asarray(K)), initial=0.0)) for K in prior.kernels)
            advice = ("Lower four_point_rtol, or add noise" if not kmax > K_ACCURATE else
                      "Lower four_point_rtol, standardise the inputs, lower C_W/C_b, or add noise: a pre-activation "
                      f"variance reaches {kmax:.3g}, beyond ~{K_ACCURATE:.0f}, where the four-point rules may be at "
                      "their largest and a lower four_point_rtol not lower the bound")
            warn(
                f"posterior: the estimated bound on the numerical error of the four-point quadrature behind V and K1 "
                f"({top:.2g} in the mean, mean_error) is {100 * top / max(size, np.finfo(float).tiny):.3g}% of the "
                f"largest 1/n mean correction ({size:.2g}): the training kernel's conditioning amplifies it "
                f"(docs/accuracy.md). {advice}",
                AccuracyWarning,
            )

    def _check_full_cov(self, NA, NB, prior) -> None:
        limit = self.options.get("max_memory", MAX_MEMORY)
        need = _full_cov_dense_bytes(NA, NB) + 2 * NB * NA * NA * _component_bytes(prior)
        if need > limit:
            raise MemoryError(
                f"predict: full_cov for {NB} test and {NA} training points needs about {need / 1024**3:.3g} GiB "
                f"(> max_memory={limit / 1024**3:.3g} GiB); use full_cov=False (marginal variances) or fewer test points"
            )

    def _full_cov_rows(self, NA, NB, prior) -> int:
        """Test rows per block of the two-test-index components, within ``max_memory``."""
        limit = self.options.get("max_memory", MAX_MEMORY)
        per_row = 2 * NB * NA * NA * _component_bytes(prior)
        return int(max(1, min(NB, (limit - _full_cov_dense_bytes(NA, NB)) // per_row)))


def _full_cov_dense_bytes(NA: int, NB: int) -> int:
    """``V_(bc)(xy)``, ``V_(bx)(cy)`` and the contractions' temporaries of ``full_cov``."""
    return 8 * NB * NB * NA * NA * 8


def _coefficients(solve) -> dict:
    """The exact coefficients of the training cumulants in the corrections: ``yt``, ``Kinv``,
    ``W = yt yt^T - n_L Kinv`` (``solve.weights``) and ``T_i[x, y, z] = yt_i[x] W[y, z] - 2 Kinv[x, y] yt_i[z]`` (the mean's
    contraction of ``V_(b x)(y z)``)."""
    yt, Kinv = solve.ytilde, solve.Kinv
    W = solve.weights
    T = np.einsum("xi,yz->ixyz", yt, W) - 2.0 * np.einsum("xy,zi->ixyz", Kinv, yt)
    return dict(yt=yt, Kinv=Kinv, W=W, T=T)


#: What :meth:`Conditioned.with_targets` leaves behind: the targets, and what was computed from them.
_TARGET_DEPENDENT = ("Y_train", "_solve", "_train", "_train_error", "_log_evidence", "log_evidence_error",
                     "_evidence_checked")


def _distinct_inputs(prior, NA: int):
    """The joint ``prior``'s distinct inputs (indices of its four-point tables) of the first ``NA`` (training) inputs,
    and those of the others that are not among them (new test inputs)."""
    train = np.unique(prior._inverse[:NA])
    return train, np.setdiff1d(prior._inverse[NA:], train)


def _with_test_point(train, points, three) -> np.ndarray:
    """Sorted multiset rows of each distinct input ``b`` of ``points`` with three of ``train`` and ``b``: ``three``
    (R, 3) indices into ``[train, b]`` (index ``train.size``: ``b``); ``(points.size * R, 4)``."""
    return np.concatenate([np.zeros((0, 4), np.int64)] + [np.sort(np.concatenate(
        [np.append(train, b)[three], np.full((len(three), 1), b)], axis=1), axis=1) for b in points])


class _TrainParts(dict):
    """The training pieces of :class:`Conditioned`; ``["V"]``, the dense ``(N_A,)*4`` vertex (or its error),
    is the output layer's attribute ``name``, read when asked for: the layer keeps it (packed only, in a
    pickle), so it is held once."""

    def __init__(self, layer, name: str, **parts):
        super().__init__(**parts)
        self._layer, self._name = layer, name

    def __missing__(self, key):
        if key != "V":
            raise KeyError(key)
        return np.asarray(getattr(self._layer, self._name))


def _contractions(V, coef: dict) -> dict:
    """Contractions of a training ``(N_A,)*4`` vertex (or its error) with the coefficients ``coef``."""
    yt = coef["yt"]
    Z = np.einsum("kxly,xi->kily", V, yt)
    return dict(
        U=np.einsum("gxyz,ixyz->gi", V, coef["T"]),  # (N_A, n_L)
        M_W=np.einsum("klxy,xy->kl", V, coef["W"]),  # sum V_(kl)(xy) W_xy
        M_K=np.einsum("kxly,xy->kl", V, coef["Kinv"]),  # sum V_(kx)(ly) Kinv_xy
        M_y=np.einsum("kily,yi->ikl", Z, yt),  # sum V_(kx)(ly) yt_i[x] yt_i[y]
    )


@dataclasses.dataclass
class _Parts:
    """What one evaluation of the prediction formulas needs: the training pieces ``t``, the projector
    ``P`` (``(N_B, N_A)``), the test blocks of ``K1`` (``K1_BB`` only with ``full_cov``, else ``None``),
    a ``quads -> components`` function, and ``sub`` (``np.subtract`` for the values, ``np.add`` for
    error bounds, whose inputs are errors and absolute coefficients)."""

    t: dict
    P: np.ndarray
    K1_BA: np.ndarray
    K1_bb: np.ndarray  # (N_B,) diagonal of the test block
    K1_BB: np.ndarray | None
    components: object
    sub: object


def _test_pairs(pairs, iA, iB):
    """The pairs whose ``K1`` the marginal formulas read: each test point with each training point and
    with itself, and (to close the two-input recursion under diagonals) each training point with itself.
    Returns the sorted pair indices ``sel`` and the positions in it of ``(b, x)`` (``(N_B, N_A)``) and
    ``(b, b)`` (``(N_B,)``), for test points ``iB`` and training points ``iA`` (distinct-input indices)."""
    idx_BA, idx_bb = pairs.index[iB[:, None], iA[None, :]], pairs.index[iB, iB]
    sel = np.unique(np.concatenate([idx_BA.ravel(), idx_bb, pairs.index[iA, iA]]))
    return sel, np.searchsorted(sel, idx_BA), np.searchsorted(sel, idx_bb)


def _vertex_errors(layer):
    """``quads (M, 4) -> `` estimated errors of ``V_(ab)(cd)`` of ``layer``."""
    return lambda quads: component_errors(layer, *canonical_quads(quads, layer.pairs))


def _marginal(parts: _Parts, sl, V1, n):
    """Mean and same-neuron latent-variance corrections ``(nb, n_L)`` for the test points ``sl``
    (``V1``: the blocks of :func:`_test_components`)."""
    V1, Vbb, Vc = V1
    t, sub = parts.t, parts.sub
    yt, Kinv = t["yt"], t["Kinv"]
    Pb, K1_bA, K1_bb = parts.P[sl], parts.K1_BA[sl], parts.K1_bb[sl]
    Gbar = sub(K1_bA, Pb @ t["K1"])
    mean = (Gbar @ yt) / n + sub(np.einsum("bxyz,ixyz->bi", V1, t["T"]), Pb @ t["U"]) / (2.0 * n)
    Gbb = sub(K1_bb, 2.0 * np.einsum("bk,bk->b", Pb, K1_bA)) + np.einsum("bk,kl,bl->b", Pb, t["K1"], Pb)
    V1W = np.einsum("blxy,xy->bl", V1, t["W"])
    S_pairs = (sub(np.einsum("bxy,xy->b", Vbb, t["W"]), 2.0 * np.einsum("bl,bl->b", Pb, V1W))
               + np.einsum("bk,kl,bl->b", Pb, t["M_W"], Pb))
    A_K = np.einsum("bxly,xy->bl", V1, Kinv)
    S_K = (sub(np.einsum("bxy,xy->b", Vc, Kinv), 2.0 * np.einsum("bl,bl->b", Pb, A_K))
           + np.einsum("bk,kl,bl->b", Pb, t["M_K"], Pb))
    A_y = np.einsum("bily,yi->bil", np.einsum("bxly,xi->bily", V1, yt), yt)  # sum_xy V1[b,x,l,y] yt_i[x] yt_i[y]
    S_y = (sub(np.einsum("bxy,xi,yi->bi", Vc, yt, yt), 2.0 * np.einsum("bl,bil->bi", Pb, A_y))
           + np.einsum("bk,ikl,bl->bi", Pb, t["M_y"], Pb))
    same = sub(Gbb / n + S_pairs / (2.0 * n), S_K / n)
    return mean, same[:, None] + S_y / n


def _cov_correction(parts: _Parts, iA, iB, V1, n, rows: int):
    """``(N_B, n_L, N_B, n_L)`` first-order covariance correction from the components with two test
    indices (``rows`` test points at a time; ``V1``: ``V_(b x)(y z)`` of every test point)."""
    t, sub, P = parts.t, parts.sub, parts.P
    yt, Kinv = t["yt"], t["Kinv"]
    nL = yt.shape[1]
    Vp, Vc = _pair_components(parts.components, iB, iA, rows)  # V_(bc)(xy), V_(bx)(cy)
    K1_AB = parts.K1_BA.T
    Gbb = sub(sub(parts.K1_BB, P @ K1_AB), parts.K1_BA @ P.T) + P @ t["K1"] @ P.T
    V1W = np.einsum("blxy,xy->bl", V1, t["W"])
    S_pairs = sub(sub(np.einsum("bcxy,xy->bc", Vp, t["W"]), V1W @ P.T), P @ V1W.T) + P @ t["M_W"] @ P.T

    def cross(R, M_R):
        A_R = np.einsum("bxly,xy->bl", V1, R)
        B_R = np.einsum("cykx,xy->ck", V1, R)
        return sub(sub(np.einsum("bxcy,xy->bc", Vc, R), A_R @ P.T), P @ B_R.T) + P @ M_R @ P.T

    same = sub(Gbb / n + S_pairs / (2.0 * n), cross(Kinv, t["M_K"]) / n)
    cov = np.einsum("bc,ij->bicj", same, np.eye(nL))
    for i in range(nL):
        for j in range(nL):
            R = np.outer(yt[:, i], yt[:, j])
            cov[:, i, :, j] += cross(R, np.einsum("kxly,xy->kl", t["V"], R)) / n
    return 0.5 * (cov + np.transpose(cov, (2, 3, 0, 1)))


def _log_evidence_error(K, K1, EK1, EV, Y, noise: float, n: int, solve) -> float:
    """Bound on the numerical error of the finite-width log evidence from the errors ``EK1``, ``EV`` of
    ``K1`` and ``V`` on the training inputs: its linear dependence on them with absolute coefficients
    (``d logZ / d K1 = (a a^T - n_L G^-1) / (2 n)``, ``a = G^-1 Y``, ``G = K + K1/n + noise I``)."""
    NA, nL = Y.shape
    G = K + K1 / n + noise * np.eye(NA)
    Ginv = np.linalg.inv(G)
    a = Ginv @ Y
    gauss = np.sum(np.abs(0.5 * (a @ a.T - nL * Ginv)) * EK1) / n
    Kinv, yt = np.abs(solve.Kinv), solve.ytilde
    Ymat = yt @ yt.T
    Q = np.abs(solve.weights)
    corr = (np.einsum("abcd,ab,cd->", EV, Q, Q) + 4.0 * np.einsum("abcd,ac,bd->", EV, Kinv, np.abs(Ymat))
            + 2.0 * nL * np.einsum("abcd,ac,bd->", EV, Kinv, Kinv)) / (8.0 * n)
    return float(gauss + corr)


def _test_components(components, iB, iA):
    """Vertex components (or their errors: ``components`` maps quads ``(M, 4)`` to values) with test
    indices, for test points ``iB`` and training points ``iA``.

    Returns ``V1 (nb, NA, NA, NA)`` with ``V1[b, x, y, z] = V_(b x)(y z)``, ``Vbb (nb, NA, NA)`` with
    ``V_(b b)(x y)`` and ``Vc (nb, NA, NA)`` with ``V_(b x)(b y)``.
    """
    nb, NA = len(iB), len(iA)
    t2, t3 = np.triu_indices(NA)
    P_A = t2.size
    b, x, p = (g.reshape(-1) for g in np.meshgrid(np.arange(nb), np.arange(NA), np.arange(P_A), indexing="ij"))
    q1 = np.stack([iB[b], iA[x], iA[t2[p]], iA[t3[p]]], axis=1)
    bb, pp = (g.reshape(-1) for g in np.meshgrid(np.arange(nb), np.arange(P_A), indexing="ij"))
    q2 = np.stack([iB[bb], iB[bb], iA[t2[pp]], iA[t3[pp]]], axis=1)
    q3 = np.stack([iB[bb], iA[t2[pp]], iB[bb], iA[t3[pp]]], axis=1)
    vals = components(np.concatenate([q1, q2, q3]))
    m1, m2 = q1.shape[0], q2.shape[0]
    v1 = vals[:m1].reshape(nb, NA, P_A)
    V1 = np.empty((nb, NA, NA, NA))
    V1[:, :, t2, t3] = v1
    V1[:, :, t3, t2] = v1
    Vbb = np.empty((nb, NA, NA))
    Vc = np.empty((nb, NA, NA))
    Vbb[:, t2, t3] = Vbb[:, t3, t2] = vals[m1:m1 + m2].reshape(nb, P_A)
    Vc[:, t2, t3] = Vc[:, t3, t2] = vals[m1 + m2:].reshape(nb, P_A)
    return V1, Vbb, Vc


def _pair_components(components, iB, iA, rows: int):
    """``V_(b c)(x y)`` as ``(NB, NB, NA, NA)`` and ``V_(b x)(c y)`` as ``(NB, NA, NB, NA)`` for all test pairs,
    ``rows`` test points ``b`` at a time (bounding the recursion's working memory)."""
    NB, NA = len(iB), len(iA)
    Vp = np.empty((NB, NB, NA, NA))
    Vc = np.empty((NB, NA, NB, NA))
    for start in range(0, NB, rows):
        bs = np.arange(start, min(NB, start + rows))
        b, c, x, y = (g.reshape(-1) for g in np.meshgrid(bs, np.arange(NB), np.arange(NA), np.arange(NA),
                                                           indexing="ij"))
        qp = np.stack([iB[b], iB[c], iA[x], iA[y]], axis=1)
        qc = np.stack([iB[b], iA[x], iB[c], iA[y]], axis=1)
        vals = components(np.concatenate([qp, qc]))
        Vp[bs] = vals[:qp.shape[0]].reshape(bs.size, NB, NA, NA)
        Vc[bs] = vals[qp.shape[0]:].reshape(bs.size, NB, NA, NA).transpose(0, 2, 1, 3)
    return Vp, Vc


#: Working memory (bytes) per vertex component asked of one finite-width layer's recursion: the
#: index bookkeeping and the nine sub-components one layer down (measured 0.55 KB per layer at
#: depths 3 and 5), with a margin; the four-point quadrature of new multisets runs in chunks of
#: ``ngp._finite.table_chunk(max_memory)``, two at once within a quarter of ``max_memory``, outside this figure.
COMPONENT_BYTES = 1536


def _component_bytes(prior) -> int:
    """Working memory per requested vertex component of ``prior`` (all its finite-width layers)."""
    return COMPONENT_BYTES * max(1, sum(not c.gaussian for c in prior._cumulants))


def predict_bytes_per_point(prior, NA: int, nL: int) -> int:
    """Working memory of the marginal path per test point: its ``NA^3/2 + NA^2`` components and the
    dense ``(NA, NA, NA)`` blocks and contractions built from them (values and error bounds)."""
    P_A = NA * (NA + 1) // 2
    return (NA * P_A + 2 * P_A) * _component_bytes(prior) + 8 * NA**3 * 6 + 8 * NA**2 * (nL + 8)


class GPConditioned:
    """The infinite-width (GP) conditioning of the same data: ``.log_evidence``, ``.predict(X_test)``."""

    def __init__(self, parent: Conditioned):
        self._parent = parent

    def __repr__(self) -> str:
        return f"GPConditioned(of {self._parent!r})"

    @property
    def log_evidence(self) -> float:
        p = self._parent
        return gp_log_evidence(p._solve, p.Y_train)

    @float64
    def predict(self, X_test) -> GPPosterior:
        """GP posterior at ``X_test`` (``(N_test, n0)``)."""
        p = self._parent
        XB = as_inputs(X_test, "X_test", in_dim=getattr(p.net, "in_dim", None))
        if XB.shape[1] != p.X_train.shape[1]:  # NumPy's concatenate error named nothing
            raise ValueError(f"X_test: expected {p.X_train.shape[1]} features like X_train, got {XB.shape[1]}")
        prior = p.net.prior(np.concatenate([p.X_train, XB]), **p.options)
        return gp_from_kernel(np.asarray(prior.K), p.N_train, p.Y_train, p.noise, p.jitter, solve=p._solve)
