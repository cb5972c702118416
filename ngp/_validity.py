"""Is a first-order (``1/n``) result trustworthy? The size of its first-order terms against the GP's.

The finite-width posterior and evidence are ``GP + (first-order terms)``; the neglected terms are of
the order of the square of the first-order ones (in the units below). The prior's expansion parameter
``max V / (n K^2)`` does not see how the posterior amplifies the vertex through the inverse training
kernel (small noise, targets large against the prior scale), so every finite-width result is judged
on its own first-order terms (``docs/validity.md``):

* ``mean_shift``: ``max |mean - gp.mean| / sqrt(gp.var + noise)`` over test points and outputs (the
  shift of the prediction in units of the GP's predictive standard deviation);
* ``var_change``: ``max |var - gp.var| / (gp.var + noise)`` (relative change of the predictive variance);
* ``evidence_correction``: ``|log_evidence - gp.log_evidence|`` (nats).

Two more measures judge every first-order result, on both paths: ``eps = max |V| / (n K^2)`` (depth over width)
and ``eta``, the prior variance of the log-likelihood ``log p(y | network)`` at first order (training points over
width; exact on the exact path, estimated on the matrix-free one, which judges by these two alone:
:func:`expansion_validity`, ``docs/matrix-free.md``).

A result is *trusted* when all three are at most :data:`MEAN_SHIFT_MAX`, :data:`VAR_CHANGE_MAX` and
:data:`EVIDENCE_MAX`, ``eps`` and ``eta`` at most :data:`EXPANSION_WARN` and :data:`ETA_WARN` (where computed), every
number is finite and no first-order variance is negative. The thresholds are
calibrated against importance sampling of actual networks (``benchmarks/validity_calibration.py``).
"""

from __future__ import annotations

import dataclasses
import math
from typing import ClassVar

import numpy as np

__all__ = [
    "Validity",
    "posterior_validity",
    "without_eps",
    "EPS_CHECK",
    "evidence_validity",
    "expansion_validity",
    "untrusted_message",
    "MEAN_SHIFT_MAX",
    "VAR_CHANGE_MAX",
    "EVIDENCE_MAX",
    "VAR_FLOOR",
    "EXPANSION_WARN",
    "ETA_WARN",
    "ETA_CHECK",
    "first_order_eta",
    "NUMERICAL_WARN",
    "NUMERICAL_NEGLIGIBLE",
    "clip_rounding",
    "predictive_variance",
    "expansion_parameter",
]

#: Largest trusted mean shift, in GP predictive standard deviations.
MEAN_SHIFT_MAX = 0.3
#: Largest trusted relative change of the predictive variance.
VAR_CHANGE_MAX = 0.3
#: Largest trusted first-order evidence correction (nats).
EVIDENCE_MAX = 1.0
#: Expansion parameter ``max |V| / (n K^2)`` above which ngp warns that first-order perturbation theory is not
#: reliable (``docs/validity.md``).
EXPANSION_WARN = 0.3
#: Largest trusted ``eta = Var[log p(y | network)]`` at first order, on both paths (``docs/validity.md``: measured
#: against importance sampling, the first-order answer beats the GP up to ``eta`` of about 1-2.5 and fails near 5).
ETA_WARN = 1.0
#: ngp warns when the estimated numerical error bound of a finite-width mean exceeds this fraction of its largest
#: 1/n correction (``docs/accuracy.md``).
NUMERICAL_WARN = 0.1
#: Floor of the predictive variance, relative to the prior variance at the test point (a test point
#: on a training point with ``noise = 0`` has GP variance 0 up to rounding).
VAR_FLOOR = 1e-8
#: An estimated numerical error bound of a finite-width mean below this many predictive standard deviations
#: (``sqrt(gp.var + noise)``, floored as in :func:`posterior_validity`) is not warned about, however small the
#: 1/n correction it is compared with (a correction that vanishes by symmetry, say).
NUMERICAL_NEGLIGIBLE = 1e-6


def expansion_parameter(K, V, n) -> float:
    """``max_ab |V_(ab)(ab)| / (n K_aa K_bb)`` over inputs of non-zero variance (the prior's
    :attr:`ngp.Prior.expansion_parameter`) from a dense ``K`` ``(N, N)`` and ``V`` ``(N,) * 4``."""
    d = np.clip(np.diag(np.asarray(K, dtype=float)), 0.0, None)
    s2 = np.outer(d, d)
    vd = np.abs(np.einsum("abab->ab", np.asarray(V, dtype=float)))
    ok = s2 > 0
    return float(np.max(vd[ok] / s2[ok], initial=0.0)) / float(n)


def predictive_variance(gp_var, noise: float, prior_var) -> np.ndarray:
    """The GP's predictive variance ``gp_var + noise`` (``(N_test, out_dim)``), floored at ``VAR_FLOOR`` times the
    prior variance ``prior_var`` (``(N_test,)``) and kept positive: the unit of :func:`posterior_validity`'s measures
    and of the numerical warning's negligible bounds."""
    floor = VAR_FLOOR * np.clip(np.asarray(prior_var, dtype=float), 0.0, None)[:, None]
    denom = np.clip(np.asarray(gp_var, dtype=float), 0.0, None) + float(noise) + floor
    return np.where(denom > 0, denom, np.finfo(float).tiny)


def clip_rounding(var, prior_var) -> np.ndarray:
    """Posterior variances ``var`` (``(N_test, ...)``) with the negative values that lie within rounding of 0
    (at least ``-VAR_FLOOR * prior_var``, ``prior_var`` ``(N_test,)``) set to 0: at a test input equal to a
    training input with ``noise = 0`` the variance is 0, and its computed value a rounding error of either sign.
    Values below that are kept (they are not rounding; the caller warns)."""
    var = np.array(var, dtype=float)
    floor = VAR_FLOOR * np.clip(np.asarray(prior_var, dtype=float), 0.0, None)
    floor = floor.reshape(floor.shape + (1,) * (var.ndim - 1))
    var[(var < 0) & (var >= -floor)] = 0.0
    return var


@dataclasses.dataclass(frozen=True)
class Validity:
    """Size of the first-order terms of a finite-width result against the zeroth order (the GP).

    Attributes:
        mean_shift: ``max |mean - gp.mean| / sqrt(gp.var + noise)`` (``None`` without test points).
        var_change: ``max |var - gp.var| / (gp.var + noise)`` (``None`` without test points).
        evidence_correction: ``|log_evidence - gp.log_evidence|`` in nats (``None`` if not computed).
        negative_variance: whether a first-order posterior variance is negative.
        trusted: every measure within its threshold, all finite, no negative variance.
        reasons: why the result is not trusted (empty when trusted).
        eps: ``max |V| / (n K^2)`` over pairs of inputs (training inputs on the matrix-free path; training and
            predicted test inputs on the exact path), at most ``EXPANSION_WARN`` when trusted (``None`` where not
            judged: ``log_evidence``'s and ``evidence_grid``'s rows, which check it separately).
        eta: prior variance of ``log p(y | network)`` at first order, at most ``ETA_WARN`` when trusted (exact on the
            exact path, estimated on the matrix-free path; ``None`` where not judged: a Gaussian network, and the
            verdict of ``evidence_grid``'s rows, which report it in their own column).
        eta_se: Monte-Carlo standard error of ``eta`` (matrix-free results; else ``None``).
        message: ``"; ".join(reasons)`` (empty when trusted).
    """

    mean_shift: float | None
    var_change: float | None
    evidence_correction: float | None
    negative_variance: bool
    trusted: bool
    reasons: tuple
    eps: float | None = None
    eta: float | None = None
    eta_se: float | None = None

    #: The thresholds (module constants), readable as ``ngp.Validity.EXPANSION_WARN`` and so on.
    MEAN_SHIFT_MAX: ClassVar[float] = MEAN_SHIFT_MAX
    VAR_CHANGE_MAX: ClassVar[float] = VAR_CHANGE_MAX
    EVIDENCE_MAX: ClassVar[float] = EVIDENCE_MAX
    EXPANSION_WARN: ClassVar[float] = EXPANSION_WARN
    ETA_WARN: ClassVar[float] = ETA_WARN
    NUMERICAL_WARN: ClassVar[float] = NUMERICAL_WARN
    NUMERICAL_NEGLIGIBLE: ClassVar[float] = NUMERICAL_NEGLIGIBLE

    @property
    def message(self) -> str:
        return "; ".join(self.reasons)

    def __str__(self) -> str:
        parts = []
        for name, value in (("mean shift", self.mean_shift), ("variance change", self.var_change),
                            ("evidence correction", self.evidence_correction), ("eps", self.eps), ("eta", self.eta)):
            if value is not None:
                parts.append(f"{name} {value:.3g}")
        verdict = "trusted" if self.trusted else "NOT trusted: " + self.message
        return ", ".join(parts) + f" ({verdict})"


def _judge(mean_shift, var_change, evidence, negative_variance, checks=None, **fields) -> Validity:
    """A :class:`Validity`: each ``(name, value, limit, unit)`` of ``checks`` (default: the three
    first-order measures against their thresholds) must be finite and at most its limit."""
    reasons = []
    if checks is None:
        checks = _first_order_checks(mean_shift, var_change, evidence)
    for name, value, limit, unit in checks:
        if value is None:
            continue
        if not math.isfinite(value):
            reasons.append(f"{name} is not finite")
        elif value > limit:
            reasons.append(f"{name} {value:.3g} > {limit:g}{(' ' + unit) if unit else ''}")
    if negative_variance:
        reasons.append("a first-order posterior variance is negative")
    return Validity(mean_shift, var_change, evidence, bool(negative_variance), not reasons, tuple(reasons), **fields)


def _evidence_correction(log_evidence, gp_log_evidence) -> float | None:
    if log_evidence is None:
        return None
    diff = float(log_evidence) - float(gp_log_evidence)
    return abs(diff) if math.isfinite(diff) else math.inf


#: The name of the expansion parameter's check in a verdict's reasons (both paths).
EPS_CHECK = "eps = max|V|/(nK^2)"


def without_eps(reasons) -> list:
    """``reasons`` without the expansion parameter's (for callers that say it in their own words)."""
    return [r for r in reasons if not r.startswith(EPS_CHECK)]


#: The name of ``eta``'s check in a verdict's reasons (both paths).
ETA_CHECK = "eta = Var[log p(y | network)]"


def _expansion_check(eps, eta=None) -> tuple:
    """The exact path's checks of the expansion parameter and of ``eta`` (as the matrix-free path's), when known."""
    return ((() if eps is None else ((EPS_CHECK, float(eps), EXPANSION_WARN, ""),))
            + (() if eta is None else ((ETA_CHECK, float(eta), ETA_WARN, ""),)))


def first_order_eta(W, M_W, n) -> float:
    """``eta = (1/4n) sum V_(ab)(cd) W_ab W_cd``, the prior variance of ``log p(y | network)`` at first order, from
    ``W = Kt^-1 Y Y^T Kt^-1 - n_L Kt^-1`` ``(N, N)`` and its contraction ``M_W = sum_cd V_(ab)(cd) W_cd`` ``(N, N)``
    with the training vertex (``log p`` moves by ``sum_ab W_ab dG_ab / 2`` when the network's kernel moves by
    ``dG``, whose covariance is ``V / n``)."""
    return float(np.sum(np.asarray(W) * np.asarray(M_W))) / (4.0 * float(n))


def _first_order_checks(mean_shift, var_change, evidence) -> tuple:
    return (("mean shift", mean_shift, MEAN_SHIFT_MAX, "GP predictive standard deviations"),
            ("relative variance change", var_change, VAR_CHANGE_MAX, ""),
            ("evidence correction", evidence, EVIDENCE_MAX, "nats"))


def posterior_validity(*, mean, var, gp_mean, gp_var, noise: float, prior_var, log_evidence=None,
                       gp_log_evidence=None, eps=None, eta=None) -> Validity:
    """Validity of a finite-width posterior at test points.

    Args:
        mean, var: ``(N_test, out_dim)`` first-order posterior mean and latent variance.
        gp_mean, gp_var: ``(N_test, out_dim)`` the GP's (zeroth order).
        noise: observation-noise variance.
        prior_var: ``(N_test,)`` prior variance ``K_bb`` at the test points (sets the variance floor
            :data:`VAR_FLOOR` ``* K_bb``).
        log_evidence, gp_log_evidence: finite-width and GP log evidence (optional).
        eps: the expansion parameter ``max |V| / (n K^2)`` (optional): when given, also at most
            :data:`EXPANSION_WARN` (stop 91: a result with ``eps = 1.0`` was trusted, and further from importance
            sampling than the GP's).
        eta: the prior variance of ``log p(y | network)`` at first order (optional): when given, also at most
            :data:`ETA_WARN` (stop 93: at ``eta = 5.0`` an evidence correction of 0.83 nats was trusted and further
            from importance sampling than the GP's, where the matrix-free path refused the same problem).
    """
    mean, var, gp_mean, gp_var = (np.asarray(a, dtype=float) for a in (mean, var, gp_mean, gp_var))
    denom = predictive_variance(gp_var, noise, prior_var)
    finite = np.all(np.isfinite(mean)) and np.all(np.isfinite(var))
    if not finite:
        shift = change = math.inf
    else:
        shift = float(np.max(np.abs(mean - gp_mean) / np.sqrt(denom), initial=0.0))
        change = float(np.max(np.abs(var - gp_var) / denom, initial=0.0))
    negative = bool(np.any(var < 0))
    evidence = _evidence_correction(log_evidence, gp_log_evidence)
    return _judge(shift, change, evidence, negative, _first_order_checks(shift, change, evidence)
                  + _expansion_check(eps, eta), eps=None if eps is None else float(eps),
                  eta=None if eta is None else float(eta))


def evidence_validity(log_evidence, gp_log_evidence, eps=None, eta=None) -> Validity:
    """Validity of a finite-width log evidence (no test points): the evidence correction, and the expansion
    parameter ``eps`` and ``eta`` when given (as :func:`posterior_validity`)."""
    evidence = _evidence_correction(log_evidence, gp_log_evidence)
    return _judge(None, None, evidence, False, _first_order_checks(None, None, evidence) + _expansion_check(eps, eta),
                  eps=None if eps is None else float(eps), eta=None if eta is None else float(eta))


def expansion_validity(eps: float, eta: float, eta_se: float = 0.0, *, eps_max: float, eta_max: float,
                       negative_variance: bool = False) -> Validity:
    """Validity of a matrix-free first-order result (``docs/matrix-free.md``, "Validity").

    Args:
        eps: ``max |V| / (n K^2)`` over pairs of training inputs.
        eta: the prior variance of ``log p(y | network)`` at first order; ``eta_se`` its standard error.
        eps_max, eta_max: the limits of the validated regime.
        negative_variance: whether a first-order posterior variance is negative.

    Trusted when ``eps <= eps_max``, ``eta <= eta_max`` (both finite) and no variance is negative;
    ``mean_shift``, ``var_change`` and ``evidence_correction`` are ``None``.
    """
    eps, eta, eta_se = float(eps), float(eta), float(eta_se)
    checks = ((EPS_CHECK, eps, eps_max, ""),
              (ETA_CHECK, eta, eta_max, f"(+- {eta_se:.2g})"))
    return _judge(None, None, None, negative_variance, checks, eps=eps, eta=eta, eta_se=eta_se)


def untrusted_message(what: str, validity: "Validity", n) -> str:
    """The warning text for a first-order result ``what`` that ``validity`` does not trust, at width ``n``."""
    why = "; ".join(r + (" (eta grows with the training points over the width)" if r.startswith(ETA_CHECK) else "")
                    for r in validity.reasons)
    return (f"{what}: the first-order (1/n) terms are not small ({why}); the finite-width "
            f"result is not reliable at width {n} (docs/validity.md): widen the network, add noise, or standardise the "
            "targets to the prior's output scale")
