"""Small linear-algebra pieces shared by the samplers and the solvers (one definition each)."""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import scipy.linalg

from ._validate import RCOND_MIN

__all__ = ["psd_sqrt", "TrainSolve", "check_conditioning", "well_conditioned", "gaussian_log_evidence", "solve_train",
           "has_duplicates", "refuse_duplicates"]


#: Relative jitter of the Cholesky square root used to draw from ``N(0, G)`` in float64.
SAMPLER_JITTER = 1e-13


def psd_sqrt(G, *, method: str = "cholesky"):
    """A square root ``R`` with ``R R^T = G`` for a (batch of) symmetric PSD matrices, JAX-traceable.

    ``method="cholesky"`` (fast; used to draw from ``N(0, G)``): the Cholesky factor of
    ``G + eps I`` with ``eps = SAMPLER_JITTER * mean(diag G)`` (1e-13) (``1e-5`` in float32), a relative perturbation far below any
    Monte Carlo precision that makes singular PSD matrices (duplicate inputs, ReLU with
    ``C_b = 0``) factorisable (a metric drawn through it is resolved only to ~10 ``SAMPLER_JITTER`` relative, which
    ``ngp.reference`` takes into account). Rows with zero variance (``G_aa = 0``) are exactly zero rows of ``R``. ``method="eigh"`` (robust to small negative eigenvalues from
    cancellation, e.g. conditional covariances): ``U sqrt(max(w, 0))``.
    """
    G = 0.5 * (G + jnp.swapaxes(G, -1, -2))
    n = G.shape[-1]
    if method == "eigh":
        w, U = jnp.linalg.eigh(G)
        return U * jnp.sqrt(jnp.clip(w, 0.0, None))[..., None, :]
    if method != "cholesky":
        raise ValueError(f"method: expected 'cholesky' or 'eigh', got {method!r}")
    tiny = SAMPLER_JITTER if G.dtype == jnp.float64 else 1e-5  # float32: a jitter its precision can resolve
    eps = tiny * jnp.trace(G, axis1=-2, axis2=-1) / n + jnp.finfo(G.dtype).tiny
    R = jnp.linalg.cholesky(G + eps[..., None, None] * jnp.eye(n, dtype=G.dtype))
    # a zero-variance row (e.g. a zero input without bias) is exactly 0 in every draw, not jitter
    return jnp.where((jnp.diagonal(G, axis1=-2, axis2=-1) > 0)[..., :, None], R, 0.0)


@dataclasses.dataclass(frozen=True)
class TrainSolve:
    """Factorised training block ``Kt = K_AA + (noise + jitter) I``.

    Attributes:
        chol: lower Cholesky factor of ``Kt``.
        Kinv: ``Kt^{-1}`` (symmetrised).
        ytilde: ``Kt^{-1} Y``, shape ``(N_train, out_dim)``.
        logdet: ``log det Kt``.
        weights: ``W = ytilde ytilde^T - n_L Kt^{-1}`` ``(N_train, N_train)`` (``n_L = out_dim``): twice the
            derivative of ``log p(y)`` in the kernel, the coefficient of ``V`` in the evidence and in ``eta``.
    """

    chol: np.ndarray
    Kinv: np.ndarray
    ytilde: np.ndarray
    logdet: float

    @property
    def weights(self) -> np.ndarray:
        return self.ytilde @ self.ytilde.T - self.ytilde.shape[1] * self.Kinv


def has_duplicates(K: np.ndarray) -> bool:
    """Whether two inputs have (numerically) identical rows of the kernel ``K``."""
    d = np.sqrt(np.clip(np.diag(K), 0, None))
    gap = d[:, None] ** 2 + d[None, :] ** 2 - 2 * K
    np.fill_diagonal(gap, np.inf)
    return bool(np.any(gap <= 1e-12 * max(float(np.max(d)) ** 2, 1e-300)))


def refuse_duplicates(XA: np.ndarray, noise: float, jitter: float, consequence: str) -> None:
    """``LinAlgError`` naming ``X_train`` when ``noise = jitter = 0`` and two rows of the (concrete) training inputs
    ``XA`` are equal: the training kernel is then singular (``consequence`` says what that means to the caller)."""
    if noise == 0.0 and jitter == 0.0 and np.unique(XA, axis=0).shape[0] < XA.shape[0]:
        raise np.linalg.LinAlgError(
            f"X_train: duplicate training inputs with noise = 0 make the training kernel singular ({consequence}); "
            "use noise > 0, jitter > 0 or remove duplicates")


def check_conditioning(K_AA: np.ndarray, noise: float, jitter: float = 0.0, *, what: str = "X_train") -> np.ndarray:
    """``K_AA + (noise + jitter) I``, or a ``LinAlgError`` naming ``what`` when its reciprocal condition number is
    ``<= RCOND_MIN`` (or it is not finite)."""
    Kt = K_AA + (noise + jitter) * np.eye(K_AA.shape[0])
    evals = np.linalg.eigvalsh(Kt)
    lam_max = max(float(evals[-1]), 0.0)
    if not np.all(np.isfinite(evals)) or lam_max == 0.0 or evals[0] <= RCOND_MIN * lam_max:
        rcond = float(max(evals[0], 0.0) / lam_max) if lam_max > 0 and np.isfinite(evals[0]) else 0.0
        hint = " (duplicate training inputs?)" if np.all(np.isfinite(K_AA)) and has_duplicates(K_AA) else ""
        raise np.linalg.LinAlgError(
            f"{what}: the training kernel K_train + noise*I is numerically singular{hint}: "
            f"reciprocal condition number {rcond:.2e} <= {RCOND_MIN:g}. Use noise > 0, remove duplicate "
            "inputs, or pass jitter= (added to the diagonal; it biases the result by about jitter/noise)."
        )
    return Kt


#: Iterations of :func:`well_conditioned`'s eigenvalue estimates (each adds ~0.03 s to a traced evidence's compilation).
CONDITION_ITERATIONS = 3


def well_conditioned(Kt, L):
    """:func:`check_conditioning`'s test as a JAX boolean, for traced kernels: ``Kt`` ``(N, N)`` (with the noise on its
    diagonal) and its lower Cholesky factor ``L``. The extreme eigenvalues are estimated by
    :data:`CONDITION_ITERATIONS` steps of inverse iteration (through ``L``) and of power iteration, ``O(N^2)`` each
    (an eigendecomposition costs 7-17x the Cholesky at N = 256-1000): the smallest is over-estimated and the largest
    under-estimated, so the test never fails where the concrete one passes, and misses only kernels within the
    estimates' error of its threshold (the estimates converge in one or two steps where one eigenvalue is far below
    the others, as for near-duplicate inputs). Computed on stopped gradients: the test adds no derivative. In float32
    the threshold is ``10 eps`` (``1.2e-6``) where ``RCOND_MIN`` is below its rounding."""
    Kt, L = jax.lax.stop_gradient(Kt), jax.lax.stop_gradient(L)
    N = Kt.shape[0]
    start = jnp.cos(jnp.arange(1, N + 1, dtype=Kt.dtype) * 1.2345)  # fixed, not orthogonal to any eigenvector
    unit = lambda v: v / jnp.linalg.norm(v)  # noqa: E731
    solve = lambda v: jax.scipy.linalg.cho_solve((L, True), v)  # noqa: E731
    x, y = unit(start), unit(start)
    for _ in range(CONDITION_ITERATIONS):
        x, y = unit(solve(x)), unit(Kt @ y)
    lam_min, lam_max = 1.0 / (x @ solve(x)), y @ Kt @ y
    ok = jnp.all(jnp.isfinite(L)) & jnp.isfinite(lam_min) & (lam_max > 0)
    return ok & (lam_min > max(RCOND_MIN, 10 * float(jnp.finfo(Kt.dtype).eps)) * lam_max)


def gaussian_log_evidence(L, Y):
    """``sum_i log N(y_i | 0, L L^T)`` over the columns ``y_i`` of ``Y`` ``(N, out_dim)``, from the lower Cholesky
    factor ``L`` ``(N, N)`` of the covariance (JAX-traceable)."""
    N, out = Y.shape
    w = jax.scipy.linalg.solve_triangular(L, Y, lower=True)
    logdet = 2.0 * jnp.sum(jnp.log(jnp.diagonal(L)))
    return -0.5 * jnp.sum(w * w) - 0.5 * out * (logdet + N * math.log(2 * math.pi))


def solve_train(K_AA: np.ndarray, Y: np.ndarray, noise: float, jitter: float = 0.0, *,
                what: str = "X_train") -> TrainSolve:
    """Cholesky solve of ``K_AA + (noise + jitter) I`` with a conditioning check.

    Raises:
        numpy.linalg.LinAlgError: reciprocal condition number ``<= RCOND_MIN`` (the message names
            ``what`` and suggests noise, removing duplicates, or ``jitter``).
    """
    n = K_AA.shape[0]
    Kt = check_conditioning(K_AA, noise, jitter, what=what)
    chol = scipy.linalg.cholesky(Kt, lower=True)
    Kinv = scipy.linalg.cho_solve((chol, True), np.eye(n))
    Kinv = 0.5 * (Kinv + Kinv.T)
    ytilde = scipy.linalg.cho_solve((chol, True), Y)
    logdet = 2.0 * float(np.sum(np.log(np.diag(chol))))
    return TrainSolve(chol, Kinv, ytilde, logdet)
