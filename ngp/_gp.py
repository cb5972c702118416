"""Exact Gaussian-process regression with the infinite-width kernel: ``ngp.gp_posterior``."""

from __future__ import annotations

import functools
import math

import numpy as np

from ._linalg import solve_train
from ._validate import train_test, warn
from ._validity import clip_rounding
from ._warnings import AccuracyWarning
from ._results import result

__all__ = ["GPPosterior", "gp_posterior", "gp_from_kernel", "gp_log_evidence"]


@result
class GPPosterior:
    """Posterior of the latent outputs at the test inputs (infinite-width prior).

    Attributes:
        mean: ``(N_test, out_dim)`` posterior mean.
        var: ``(N_test, out_dim)`` marginal variances of the latent outputs (noise excluded).
        cov_test: ``(N_test, N_test)`` posterior covariance, the same for every output neuron (``None`` on the
            matrix-free path, which forms no test x test block).
        log_evidence: log marginal likelihood of all targets, ``sum_i log N(y_i | 0, K_AA + noise I)``.
        noise: the observation-noise variance used.
    """

    mean: np.ndarray
    var: np.ndarray
    cov_test: np.ndarray
    log_evidence: float
    noise: float

    @functools.cached_property
    def cov(self) -> np.ndarray | None:
        """``(N_test, out_dim, N_test, out_dim)`` covariance; zero between different outputs. ``None`` where no test x
        test block was formed (``cov_test`` is ``None``: the matrix-free path)."""
        if self.cov_test is None:
            return None
        out = self.mean.shape[1]
        return np.einsum("ab,ij->aibj", self.cov_test, np.eye(out))

    @property
    def std(self) -> np.ndarray:
        """``(N_test, out_dim)`` marginal standard deviations of the latent outputs."""
        return np.sqrt(np.clip(self.var, 0.0, None))


def gp_log_evidence(solve, Y) -> float:
    """``sum_i log N(y_i | 0, Kt)`` from a factorised training block (``ngp._linalg.TrainSolve``)."""
    n_train, out = Y.shape
    quad = float(np.sum(Y * solve.ytilde))
    return -0.5 * quad - 0.5 * out * (solve.logdet + n_train * math.log(2 * math.pi))


def gp_from_kernel(K: np.ndarray, n_train: int, Y: np.ndarray, noise: float, jitter: float = 0.0,
                   *, solve=None) -> GPPosterior:
    """GP posterior from a joint kernel over ``[train; test]`` (rows ``:n_train`` are train)."""
    K = np.asarray(K, dtype=float)
    K_AA, K_BA, K_BB = K[:n_train, :n_train], K[n_train:, :n_train], K[n_train:, n_train:]
    s = solve if solve is not None else solve_train(K_AA, Y, noise, jitter)
    mean = K_BA @ s.ytilde
    P = K_BA @ s.Kinv
    cov_test = K_BB - P @ K_BA.T
    cov_test = 0.5 * (cov_test + cov_test.T)
    # rounding at a test input equal to a training input with noise = 0 (variance 0): clipped to 0
    d = clip_rounding(np.diag(cov_test), np.diag(K_BB))
    np.fill_diagonal(cov_test, d)
    if np.any(d < 0):
        warn(f"gp_posterior: a posterior variance is negative beyond rounding ({float(np.min(d)):.3g}); the "
             "training kernel is too ill-conditioned for this noise: add noise or jitter", AccuracyWarning)
    out = Y.shape[1]
    var = np.repeat(d[:, None], out, axis=1)
    return GPPosterior(mean, var, cov_test, gp_log_evidence(s, Y), noise)


def gp_posterior(net, X_train, Y_train, X_test, *, noise: float, jitter: float = 0.0, **options) -> GPPosterior:
    """Exact GP regression with the infinite-width kernel of ``net``.

    Observations ``y_i(x) = z_i(x) + eps``, ``eps ~ N(0, noise)`` i.i.d.; the output
    neurons are independent a priori and a posteriori.

    Args:
        net: a network (:class:`ngp.MLP`, :class:`ngp.ResMLP`, :func:`ngp.serial`, ...).
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
    XA, XB, Y, noise, jitter = train_test(net, X_train, Y_train, X_test, noise, jitter, test_required=True)
    prior = net.prior(np.concatenate([XA, XB]), **options)
    return gp_from_kernel(np.asarray(prior.K), XA.shape[0], Y, noise, jitter)
