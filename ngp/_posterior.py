"""Bayesian regression with a finite-width prior, to first order in 1/n (THEORY.md section 5).

Notation: training inputs ``A`` (``N_A``), test inputs ``B`` (``N_B``), ``n = n_{L-1}``,
``n_L`` observed output neurons, ``Kt = K_AA + noise I`` with inverse ``Kt^-1``, whitened
targets ``yt_i = Kt^-1 y_i``, neuron-summed target matrix ``Y = sum_j yt_j yt_j^T``,
GP projector ``P = K_BA Kt^-1`` and residualised objects (each test slot ``b`` replaced
by ``b - P A``), ``Gbar``, ``Gbarbar``, ``Vbar``, ``Vbarbar``.
"""

from __future__ import annotations

import dataclasses
import math
import warnings

import numpy as np
import scipy.linalg

from ._gp import GPPosterior, _solve_train, gp_from_kernel
from ._validate import as_inputs, as_targets, nonneg_float

__all__ = ["FiniteWidthPosterior", "posterior", "finite_width_terms"]


@dataclasses.dataclass(frozen=True)
class FiniteWidthPosterior:
    """Posterior of the latent outputs at the test inputs, to first order in ``1/n``.

    Attributes:
        mean: ``(N_test, out_dim)`` posterior mean.
        var: ``(N_test, out_dim)`` marginal variances of the latent outputs (noise excluded).
        cov: ``(N_test, out_dim, N_test, out_dim)`` posterior covariance, including the
            ``O(1/n)`` covariance between different output neurons.
        log_evidence: log marginal likelihood of all targets to ``O(1/n)``.
        gp: the infinite-width :class:`ngp.GPPosterior` for the same data.
        n: the width ``n_{L-1}`` of the expansion.
        expansion_parameter: ``max |V| / (n K^2)`` of the prior on train and test inputs; the
            neglected terms are of order its square.
        noise: observation-noise variance.
    """

    mean: np.ndarray
    var: np.ndarray
    cov: np.ndarray
    log_evidence: float
    gp: GPPosterior
    n: int | None
    expansion_parameter: float
    noise: float

    @property
    def std(self) -> np.ndarray:
        return np.sqrt(np.clip(self.var, 0.0, None))

    @property
    def mean_correction(self) -> np.ndarray:
        """``mean - gp.mean``: the ``O(1/n)`` shift of the prediction."""
        return self.mean - self.gp.mean


def _evidence(K_AA, G1_AA, V_AAAA, Y, noise, n, jitter=0.0):
    """Finite-width log evidence (THEORY 5, Gaussian part with K + K1/n unexpanded)."""
    NA, nL = Y.shape
    s = _solve_train(K_AA, Y, noise, jitter)
    Kinv = s.Kinv
    yt = s.ytilde
    Ymat = yt @ yt.T
    G = K_AA + G1_AA / n + (noise + jitter) * np.eye(NA)
    try:
        cG = scipy.linalg.cho_factor(G, lower=True)
    except np.linalg.LinAlgError as exc:
        raise np.linalg.LinAlgError(
            "posterior: K_train + K1_train/n + noise I is not positive definite; the 1/n expansion "
            "is not valid here (increase the width or the noise)"
        ) from exc
    logdet = 2.0 * float(np.sum(np.log(np.diag(cG[0]))))
    quad = float(np.sum(Y * scipy.linalg.cho_solve(cG, Y)))
    gauss = -0.5 * quad - 0.5 * nL * (logdet + NA * math.log(2 * math.pi))
    Q = Ymat - nL * Kinv
    corr = (
        np.einsum("abcd,ab,cd->", V_AAAA, Q, Q)
        - 4.0 * np.einsum("abcd,ac,bd->", V_AAAA, Kinv, Ymat)
        + 2.0 * nL * np.einsum("abcd,ac,bd->", V_AAAA, Kinv, Kinv)
    ) / (8.0 * n)
    return gauss + float(corr)


def finite_width_terms(K, K1, V, n, n_train, Y, noise, jitter=0.0):
    """Posterior mean, covariance and evidence from the prior cumulants on ``[train; test]``.

    Args:
        K, K1: ``(N, N)`` kernel and its 1/n correction; rows ``:n_train`` are training inputs.
        V: ``(N, N, N, N)`` vertex.
        n: width ``n_{L-1}``.
        Y: ``(n_train, n_L)`` targets.

    Returns:
        ``(mean (N_B, n_L), cov (N_B, n_L, N_B, n_L), log_evidence, gp)``.
    """
    K, K1, V = (np.asarray(t, dtype=float) for t in (K, K1, V))
    A = slice(0, n_train)
    B = slice(n_train, K.shape[0])
    NB, nL = K.shape[0] - n_train, Y.shape[1]
    gp = gp_from_kernel(K, n_train, Y, noise, jitter)
    s = _solve_train(K[A, A], Y, noise, jitter)
    Kinv, yt = s.Kinv, s.ytilde
    Ymat = yt @ yt.T
    P = K[B, A] @ Kinv  # (NB, NA)
    R = np.hstack([-P, np.eye(NB)])  # test slot minus its regression on the training slots
    Sigma = gp.cov_test
    Gbar = R @ K1[:, A]  # (NB, NA)
    Gbb = R @ K1 @ R.T  # (NB, NB)
    V_xAAA = V[:, A][:, :, A][:, :, :, A]  # (N, NA, NA, NA)
    Vbar = np.einsum("bk,kxyz->bxyz", R, V_xAAA)
    V_xxAA = V[:, :, A][:, :, :, A]  # (N, N, NA, NA)
    Vbb_pairs = np.einsum("bk,cl,klxy->bcxy", R, R, V_xxAA)  # V_(b1 b2)(a1 a2)
    V_xAxA = V[:, A][:, :, :, A]  # (N, NA, N, NA)
    Vbb_cross = np.einsum("bk,cl,kxly->bxcy", R, R, V_xAxA)  # V_(b1 a1)(b2 a2)
    W = Ymat - nL * Kinv
    mean = (
        gp.mean
        + (Gbar @ yt) / n
        + (np.einsum("bxyz,xi,yz->bi", Vbar, yt, W) - 2.0 * np.einsum("bxyz,xy,zi->bi", Vbar, Kinv, yt)) / (2.0 * n)
    )
    same = Sigma + Gbb / n + np.einsum("bcxy,xy->bc", Vbb_pairs, W) / (2.0 * n)
    same = same - np.einsum("bxcy,xy->bc", Vbb_cross, Kinv) / n
    cov = np.einsum("bc,ij->bicj", same, np.eye(nL)) + np.einsum("bxcy,xi,yj->bicj", Vbb_cross, yt, yt) / n
    cov = 0.5 * (cov + np.transpose(cov, (2, 3, 0, 1)))
    logev = _evidence(K[A, A], K1[A, A], V[A][:, A][:, :, A][:, :, :, A], Y, noise, n, jitter)
    return mean, cov, logev, gp


def posterior(net, X_train, Y_train, X_test, *, noise: float, jitter: float = 0.0, **options) -> FiniteWidthPosterior:
    """Bayesian regression with ``net``'s finite-width prior, to first order in ``1/n``.

    Observations ``y_i(x) = z_i(x) + eps``, ``eps ~ N(0, noise)``. The prior is the
    nearly-Gaussian output distribution of :meth:`ngp.MLP.prior` (``K``, ``K1``, ``V``);
    the posterior mean, covariance and evidence are expanded to ``O(1/n_{L-1})``
    (THEORY.md section 5). With several outputs the prediction for output ``i``
    depends on the targets of the other outputs through ``Y = sum_j yt_j yt_j^T``.

    Args:
        net: an :class:`ngp.MLP`.
        X_train: ``(N_train, n0)`` training inputs.
        Y_train: ``(N_train, out_dim)`` targets of all ``out_dim`` output neurons.
        X_test: ``(N_test, n0)`` test inputs.
        noise: observation-noise variance ``>= 0`` (``0``: exact conditioning).
        jitter: optional extra diagonal on the training kernel.
        **options: passed to ``net.prior`` (``four_point_order``, ``max_memory``, ...). The
            posterior amplifies quadrature errors in ``V`` by the conditioning of the training
            kernel: keep the default ``four_point_order`` (see the docs' validity page).

    Returns:
        :class:`FiniteWidthPosterior` (``.gp`` holds the infinite-width answer).

    Raises:
        numpy.linalg.LinAlgError: singular training kernel (e.g. duplicate inputs with ``noise = 0``).
        NotImplementedError: architectures without finite-width cumulants (residual networks).
    """
    noise = nonneg_float(noise, "noise")
    jitter = nonneg_float(jitter, "jitter")
    XA = as_inputs(X_train, "X_train", in_dim=net.in_dim)
    XB = as_inputs(X_test, "X_test", in_dim=net.in_dim)
    if XA.shape[1] != XB.shape[1]:
        raise ValueError(f"X_test: expected {XA.shape[1]} features like X_train, got {XB.shape[1]}")
    Y = as_targets(Y_train, XA.shape[0], net.out_dim)
    if noise == 0.0 and jitter == 0.0:
        uniq = np.unique(XA, axis=0)
        if uniq.shape[0] < XA.shape[0]:
            raise np.linalg.LinAlgError(
                "X_train: duplicate training inputs with noise = 0 make the training kernel singular "
                "(exact conditioning on two values of the same function); use noise > 0 or remove duplicates"
            )
    prior = net.prior(np.concatenate([XA, XB]), **options)
    n = prior.n
    if n is None:  # depth 1: the prior is exactly Gaussian
        gp = gp_from_kernel(np.asarray(prior.K), XA.shape[0], Y, noise, jitter)
        return FiniteWidthPosterior(gp.mean, gp.var, gp.cov, gp.log_evidence, gp, None, 0.0, noise)
    V = prior.V
    mean, cov, logev, gp = finite_width_terms(prior.K, prior.K1, V, n, XA.shape[0], Y, noise, jitter)
    NB, nL = mean.shape
    var = np.einsum("bibi->bi", cov).copy()
    if np.any(var < 0):
        warnings.warn(
            "posterior: a first-order posterior variance is negative; the 1/n expansion has broken down "
            f"(expansion parameter {prior.expansion_parameter:.3g})",
            RuntimeWarning,
            stacklevel=2,
        )
    return FiniteWidthPosterior(mean, var, cov, logev, gp, n, prior.expansion_parameter, noise)
