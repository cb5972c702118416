"""Networks trained by gradient descent on the squared error: NTK predictions.

Conventions (docs/theory.md, NTK section): loss ``L = 1/2 sum_{i, alpha in A} (z_{i;alpha} -
y_{i;alpha})^2`` over the training inputs ``A``; parameters move by ``theta_mu <- theta_mu -
eta lambda_mu dL/dtheta_mu`` (the learning-rate tensor of the NTK); gradient flow is the limit
``eta -> 0`` with time ``t = eta * steps``. Inputs are indexed ``0..N-1``; ``train`` selects
the training rows, every row (training ones included) gets a prediction.

Infinite width (the NTK ``Theta`` is deterministic and frozen, the initial outputs are
``N(0, K)`` and independent of it):

    z(t) = z(0) - P_t (z_A(0) - y),   P_t = Theta_{.A} Theta_AA^{-1} (1 - E_t),

with ``E_t = exp(-t Theta_AA)`` (gradient flow) or ``(1 - eta Theta_AA)^steps`` (gradient descent).

First order in ``1/n`` (``n = n_{L-1}``), ``t -> infinity``: :func:`finite_width_mean`.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg

__all__ = ["infinite_width", "finite_width_mean", "MeanCorrection"]


def _decay(ThAA, *, t, eta, steps):
    h, U = np.linalg.eigh(0.5 * (ThAA + ThAA.T))
    if np.any(h <= 0):
        raise ValueError("training NTK block is not positive definite (duplicated training inputs?)")
    if t is None and steps is None:
        return np.zeros_like(ThAA), h, U
    if steps is not None:
        if eta is None:
            raise ValueError("steps requires the learning rate eta")
        f = (1.0 - eta * h) ** int(steps)
    else:
        f = np.exp(-float(t) * h)
    return (U * f) @ U.T, h, U


def infinite_width(Theta, K, train, y, *, t: float | None = None, eta: float | None = None,
                   steps: int | None = None):
    """Mean ``(N, n_out)`` and covariance ``(N, N)`` (per output neuron) of the trained ensemble.

    Args:
        Theta: ``(N, N)`` infinite-width NTK (learning rates included).
        K: ``(N, N)`` infinite-width kernel of the outputs at initialisation.
        train: indices (or boolean mask) of the training inputs.
        y: ``(N_A,)`` or ``(N_A, n_out)`` targets.
        t: gradient-flow time; ``None`` (with ``steps=None``) means ``t -> infinity``.
        eta, steps: gradient descent with step ``eta`` for ``steps`` steps instead.
    """
    Theta, K = np.asarray(Theta, float), np.asarray(K, float)
    idx = np.arange(Theta.shape[0])[train]
    y = np.asarray(y, float)
    y2 = y[:, None] if y.ndim == 1 else y
    ThAA = Theta[np.ix_(idx, idx)]
    E, _, _ = _decay(ThAA, t=t, eta=eta, steps=steps)
    Pt = Theta[:, idx] @ scipy.linalg.solve(ThAA, np.eye(len(idx)) - E, assume_a="pos")
    mean = Pt @ y2
    KA = K[:, idx]
    cov = K + Pt @ K[np.ix_(idx, idx)] @ Pt.T - Pt @ KA.T - KA @ Pt.T
    return (mean[:, 0] if y.ndim == 1 else mean), 0.5 * (cov + cov.T)


class MeanCorrection(dict):
    """Pieces of the ``1/n`` correction of the trained ensemble mean (each ``(N, n_out)``),
    already multiplied by ``n``: ``mean = infinite + (theta1 + variance + dntk) / n``."""


def finite_width_mean(Theta, train, y, *, n: int, Theta1, A, B, P=None, Q=None, n_out: int | None = None):
    """First-order ``1/n`` ensemble mean of networks trained to convergence (gradient flow).

    ``E[z_{i;beta}(inf)] = (Theta_{beta A} Theta_AA^{-1} y_i) + (1/n) [c_theta1 + c_var + c_dntk]``
    with (all residualised: a test slot ``beta`` minus its projection on the training slots)

    * ``c_theta1 = (Theta1_{beta A} - P Theta1_AA) Theta_AA^{-1} y_i`` (mean NTK shift);
    * ``c_var = -sum C_{beta a1 a2 a3} Theta^{a1 a2} (Theta^{-1} y_i)_{a3}`` with
      ``C = A_{b a1 a2 a3} + B_{b a2 a1 a3} + n_out B_{b a3 a1 a2}`` (NTK fluctuations);
      ``c_theta1 + c_var`` is the complete 1/n mean of the *linearised* network (its NTK frozen
      at its random initial value), hence exact to this order when only the last layer trains;
    * ``c_dntk`` (when ``P, Q`` are given): the first-order effect of the NTK's motion during
      training, through the dNTK-preactivation correlators. Not included: terms second order in
      the NTK's motion (dNTK products) and the ddNTK means, which need statistics not computed here.

    Args:
        Theta, Theta1: ``(N, N)``; A, B, P, Q: ``(N, N, N, N)`` of the output layer.
        train: training indices; y: ``(N_A,)`` or ``(N_A, n_out)`` targets.
        n: the width ``n_{L-1}`` dividing the statistics.
        n_out: number of output neurons trained together (default: ``y``'s columns).

    Returns:
        ``(mean, MeanCorrection)`` with ``mean`` shaped like ``y`` per input ``(N, ...)``.
    """
    Theta = np.asarray(Theta, float)
    N = Theta.shape[0]
    idx = np.arange(N)[train]
    y = np.asarray(y, float)
    y2 = y[:, None] if y.ndim == 1 else y
    n_out = y2.shape[1] if n_out is None else int(n_out)
    ThAA = Theta[np.ix_(idx, idx)]
    cho = scipy.linalg.cho_factor(ThAA)
    Ainv = scipy.linalg.cho_solve(cho, np.eye(len(idx)))
    Pm = Theta[:, idx] @ Ainv  # (N, N_A) projector
    u = Ainv @ y2  # Theta^{-1} y, (N_A, n_out)
    m0 = Pm @ y2

    def resid(T):  # subtract the projection of the first (test) slot on the training slots
        return T - np.tensordot(Pm, T[idx], axes=(1, 0))

    Th1 = np.asarray(Theta1, float)
    c_theta1 = resid(Th1[:, idx]) @ u
    A, B = np.asarray(A, float), np.asarray(B, float)
    ix = np.ix_(np.arange(N), idx, idx, idx)
    C = (A[ix] + B.transpose(0, 2, 1, 3)[ix] + n_out * B.transpose(0, 2, 3, 1)[ix])
    c_var = -np.einsum("bxyz,xy,zi->bi", resid(C), Ainv, u)
    out = MeanCorrection(theta1=c_theta1, variance=c_var)
    total = c_theta1 + c_var
    if P is not None and Q is not None:
        c_dntk = _dntk_term(Theta, idx, Pm, np.asarray(P, float), np.asarray(Q, float), y2, n_out)
        out["dntk"] = c_dntk
        total = total + c_dntk
    mean = m0 + total / n
    if y.ndim == 1:
        mean = mean[:, 0]
        out = MeanCorrection({k: v[:, 0] for k, v in out.items()})
    return mean, out


def _dntk_term(Theta, idx, Pm, P, Q, y2, n_out):
    """``n E[dz_beta]`` from the first-order dNTK solution of gradient flow (docs/theory.md).

    ``dz_{i;beta} = sum_{k j} sum_{d a} [dH^s_{ikj; beta d a} - P_{beta g} dH^s_{ikj; g d a}] M^{kj}_{d a}``,
    ``dH^s_{ikj;bda} = dH_{ikj;bda} + dH_{kij;dba}``, ``M^{kj}_{da} = int_0^inf eps_{k;d}(t) int_0^t eps_{j;a}``
    with ``eps(t) = exp(-Theta_AA t)(z_A(0) - y)``; the mean uses ``E[dH_{i0i1i2} z_{i3}]`` (P, Q).
    """
    ThAA = Theta[np.ix_(idx, idx)]
    h, U = np.linalg.eigh(0.5 * (ThAA + ThAA.T))
    c = 1.0 / (h[:, None] * (h[:, None] + h[None, :]))  # int e^{-h_i t} (1 - e^{-h_j t}) / h_j dt
    # M_{d a; g1 g2} = sum_{pq} U_{d p} U_{a q} c_pq U_{g1 p} U_{g2 q}
    Mt = np.einsum("dp,aq,pq,xp,yq->daxy", U, U, c, U, U)
    N = Theta.shape[0]
    ii = np.ix_(np.arange(N), idx, idx, idx)
    Qt = Q.transpose(0, 2, 1, 3)  # Q_{a0 a2 a1 a3}

    def corr(i0, i1, i2, i3):
        """n E[dH_{i0 i1 i2} z_{i3}] as (N, N, N, N) over (a0, a1, a2, a3)."""
        return (i0 == i3 and i1 == i2) * P + (i0 == i1 and i2 == i3) * Q + (i0 == i2 and i1 == i3) * Qt

    # neuron i = 0; the other neurons enter only through equality patterns of (k, j) with 0:
    # representatives and multiplicities
    m = n_out - 1
    reps = [((0, 0), 1.0), ((0, 1), m), ((1, 0), m), ((1, 1), m), ((1, 2), m * (m - 1))]
    acc = np.zeros((N, y2.shape[1]))
    for (k, j), wgt in reps:
        if wgt == 0:
            continue
        # dH^s_{0kj; b d a} = dH_{0kj; b d a} + dH_{k0j; d b a}; E[X eps_{k;g1} eps_{j;g2}] =
        # -y_{j;g2} E[X z_{k;g1}] - y_{k;g1} E[X z_{j;g2}] (the other terms vanish by parity), and
        # only the targets of neuron 0 survive (E[X z] = 0 by parity unless j == 0, resp. k == 0).
        for neurons, swap in (((0, k, j), False), ((k, 0, j), True)):
            for zneuron, ok, spec in ((k, j == 0, "bdag,dagy,yi->bi"), (j, k == 0, "bdag,dayg,yi->bi")):
                if not ok:
                    continue
                T = corr(*neurons, zneuron)
                T = (T.transpose(1, 0, 2, 3) if swap else T)[ii]  # [b, d, a, g], train slots d, a, g
                acc = acc - wgt * np.einsum(spec, T, Mt, y2)
    return acc - Pm @ acc[idx]
