"""Exact Gaussian-process regression with the infinite-width kernel: ``ngp.gp_posterior``."""

from __future__ import annotations

import dataclasses
import functools
import math

import numpy as np
import scipy.linalg

from ._validate import as_inputs, as_targets, nonneg_float

__all__ = ["GPPosterior", "gp_posterior"]

#: Smallest acceptable reciprocal condition number of ``K_train + noise I``.
RCOND_MIN = 1e-12


@dataclasses.dataclass(frozen=True)
class _TrainSolve:
    """Factorised training block ``Ktilde = K_AA + (noise + jitter) I``."""

    chol: np.ndarray  # lower Cholesky factor of Ktilde
    Kinv: np.ndarray  # Ktilde^{-1}
    ytilde: np.ndarray  # Ktilde^{-1} Y, shape (N_train, out_dim)
    logdet: float  # log det Ktilde


def _solve_train(K_AA: np.ndarray, Y: np.ndarray, noise: float, jitter: float, *, what="X_train") -> _TrainSolve:
    n = K_AA.shape[0]
    Kt = K_AA + (noise + jitter) * np.eye(n)
    evals = np.linalg.eigvalsh(Kt)
    lam_max = max(float(evals[-1]), 0.0)
    if lam_max == 0.0 or evals[0] <= RCOND_MIN * lam_max:
        rcond = float(evals[0] / lam_max) if lam_max > 0 else 0.0
        hint = " (duplicate training inputs?)" if _has_duplicates(K_AA) else ""
        raise np.linalg.LinAlgError(
            f"{what}: the training kernel K_train + noise*I is numerically singular{hint}: "
            f"reciprocal condition number {rcond:.2e} <= {RCOND_MIN:g}. Use noise > 0, remove duplicate "
            "inputs, or pass jitter= (added to the diagonal; it biases the result by about jitter/noise)."
        )
    chol = scipy.linalg.cholesky(Kt, lower=True)
    Kinv = scipy.linalg.cho_solve((chol, True), np.eye(n))
    Kinv = 0.5 * (Kinv + Kinv.T)
    ytilde = scipy.linalg.cho_solve((chol, True), Y)
    logdet = 2.0 * float(np.sum(np.log(np.diag(chol))))
    return _TrainSolve(chol, Kinv, ytilde, logdet)


def _has_duplicates(K: np.ndarray) -> bool:
    d = np.sqrt(np.clip(np.diag(K), 0, None))
    gap = d[:, None] ** 2 + d[None, :] ** 2 - 2 * K
    np.fill_diagonal(gap, np.inf)
    return bool(np.any(gap <= 1e-12 * max(float(np.max(d)) ** 2, 1e-300)))


@dataclasses.dataclass(frozen=True)
class GPPosterior:
    """Posterior of the latent outputs at the test inputs (infinite-width prior).

    Attributes:
        mean: ``(N_test, out_dim)`` posterior mean.
        var: ``(N_test, out_dim)`` marginal variances of the latent outputs (noise excluded).
        cov_test: ``(N_test, N_test)`` posterior covariance, the same for every output neuron.
        log_evidence: log marginal likelihood of all targets, ``sum_i log N(y_i | 0, K_AA + noise I)``.
        noise: the observation-noise variance used.
    """

    mean: np.ndarray
    var: np.ndarray
    cov_test: np.ndarray
    log_evidence: float
    noise: float

    @functools.cached_property
    def cov(self) -> np.ndarray:
        """``(N_test, out_dim, N_test, out_dim)`` covariance; zero between different outputs."""
        out = self.mean.shape[1]
        return np.einsum("ab,ij->aibj", self.cov_test, np.eye(out))

    @property
    def std(self) -> np.ndarray:
        """``(N_test, out_dim)`` marginal standard deviations of the latent outputs."""
        return np.sqrt(np.clip(self.var, 0.0, None))


def _split_kernel(net, X_train, X_test, **options):
    XA = as_inputs(X_train, "X_train", in_dim=net.in_dim)
    XB = as_inputs(X_test, "X_test", in_dim=net.in_dim)
    if XA.shape[1] != XB.shape[1]:
        raise ValueError(f"X_test: expected {XA.shape[1]} features like X_train, got {XB.shape[1]}")
    prior = net.prior(np.concatenate([XA, XB]), **options)
    return XA, XB, prior


def gp_from_kernel(K: np.ndarray, n_train: int, Y: np.ndarray, noise: float, jitter: float = 0.0) -> GPPosterior:
    """GP posterior from a joint kernel over ``[train; test]`` (rows ``:n_train`` are train)."""
    K = np.asarray(K, dtype=float)
    K_AA, K_BA, K_BB = K[:n_train, :n_train], K[n_train:, :n_train], K[n_train:, n_train:]
    s = _solve_train(K_AA, Y, noise, jitter)
    mean = K_BA @ s.ytilde
    P = K_BA @ s.Kinv
    cov_test = K_BB - P @ K_BA.T
    cov_test = 0.5 * (cov_test + cov_test.T)
    out = Y.shape[1]
    quad = float(np.sum(Y * s.ytilde))
    log_ev = -0.5 * quad - 0.5 * out * (s.logdet + n_train * math.log(2 * math.pi))
    var = np.repeat(np.diag(cov_test)[:, None], out, axis=1)
    return GPPosterior(mean, var, cov_test, log_ev, noise)


def gp_posterior(net, X_train, Y_train, X_test, *, noise: float, jitter: float = 0.0, **options) -> GPPosterior:
    """Exact GP regression with the infinite-width kernel of ``net``.

    Observations ``y_i(x) = z_i(x) + eps``, ``eps ~ N(0, noise)`` i.i.d.; the output
    neurons are independent a priori and a posteriori.

    Args:
        net: an :class:`ngp.MLP` (anything with ``.prior(X)`` and ``.out_dim``).
        X_train: ``(N_train, n0)`` training inputs.
        Y_train: ``(N_train, out_dim)`` targets.
        X_test: ``(N_test, n0)`` test inputs.
        noise: observation-noise variance ``>= 0``; ``0`` conditions exactly (needs a
            well-conditioned training kernel).
        jitter: optional extra diagonal added to the training kernel (default 0).
        **options: passed to ``net.prior`` (quadrature method etc.).

    Returns:
        :class:`GPPosterior`.

    Raises:
        numpy.linalg.LinAlgError: the training kernel plus noise is numerically singular.
    """
    noise = nonneg_float(noise, "noise")
    jitter = nonneg_float(jitter, "jitter")
    XA, _, prior = _split_kernel(net, X_train, X_test, **options)
    Y = as_targets(Y_train, XA.shape[0], net.out_dim)
    return gp_from_kernel(np.asarray(prior.K), XA.shape[0], Y, noise, jitter)
