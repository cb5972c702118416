"""Independent references for residual-network cumulants (tests and benchmarks/residual_validation.py).

* :func:`naive_recursion` -- the "MLP recursion with a skip term" (docs/theory.md, residual
  networks: exact only up to the first block and for linear activations);
* :func:`linear_exact` -- the exact finite-width law of a linear residual network (any inputs,
  biases, per-block ``gamma, xi``): a closed recursion for the first two moments of the empirical
  second moment ``M = (1/n) sum_j z_j z_j^T`` of each layer;
* :func:`mc_metric` -- Monte Carlo of actual residual networks: ``n Cov(G_hat)`` and
  ``n (E G_hat - K)`` with standard errors.
"""

import math

import numpy as np

import ngp
from ngp._finite import Pairs, fresh_covariance, jacobian_hessian
from ngp._kernel import kernel_map


def _dense_jacobian(J, pairs):
    """Block-sparse ``(P, 3)`` Jacobian -> dense ``(P, P)``."""
    Jd = np.zeros((pairs.P, pairs.P))
    for t in range(3):
        np.add.at(Jd, (np.arange(pairs.P), pairs.cols[:, t]), J[:, t])
    return Jd


def _kprod(K, pairs):
    a, b = pairs.a, pairs.b
    return K[a][:, a] * K[b][:, b] + K[a][:, b] * K[b][:, a]


def naive_recursion(act, K_first, *, C_W, C_b, gamma, xi):
    """Naive ``(K, K1, V_packed)`` of the readout and of every residual layer (list, layers 2..L)."""
    K = np.asarray(K_first, dtype=float)
    pairs = Pairs.of(K.shape[0])
    P = pairs.P
    V, G1 = np.zeros((P, P)), np.zeros(P)
    out = []
    L = len(C_W)
    for l in range(1, L):
        J1, H1 = (np.asarray(t) for t in jacobian_hessian(act, K, pairs, 1.0))
        cw, cb = C_W[l], C_b[l]
        Jd = cw * _dense_jacobian(J1, pairs)
        fresh = np.asarray(fresh_covariance(act, K, pairs, cw))
        HV = np.einsum("pst,pst->p", H1, V[pairs.cols[:, :, None], pairs.cols[:, None, :]]) * cw
        mlpV, mlpG1 = fresh + Jd @ V @ Jd.T, Jd @ G1 + 0.5 * HV
        G = np.asarray(kernel_map(act, K, cw, cb))
        if l == L - 1:
            out.append((G, pairs.unpack(mlpG1), mlpV))
            break
        g2, x2 = gamma[l - 1] ** 2, xi[l - 1] ** 2
        cross = Jd @ _kprod(K, pairs).T + Jd @ V
        V = g2 * g2 * V + x2 * x2 * mlpV + g2 * x2 * (cross + cross.T)
        G1 = g2 * G1 + x2 * mlpG1
        K = g2 * K + x2 * G
        out.append((K, pairs.unpack(G1), V))
    return out


def linear_exact(K_first, n, *, C_W, C_b, gamma, xi):
    """Exact ``n Cov(G_hat_ab, G_hat_cd)`` ``(N,N,N,N)`` and ``E G_hat`` of the readout metric of a
    linear residual network (plain first layer, blocks ``2 .. L-1``, readout ``L``), width ``n``.

    With ``u_j = sqrt(G_hat) eps_j`` the block gives ``M' = gamma^2 M + gamma xi (1/n) sum (z u^T + u z^T)
    + xi^2 (1/n) sum u u^T``; given the layer, the three pieces have covariances computed exactly
    (``u`` Gaussian), so ``E[M' (x) M']`` is a linear function of ``E[M (x) M]`` and ``E M``.
    """
    K = np.asarray(K_first, dtype=float)
    m1 = K.copy()
    m2 = np.einsum("ab,cd->abcd", K, K) + (np.einsum("ac,bd->abcd", K, K) + np.einsum("ad,bc->abcd", K, K)) / n
    L = len(C_W)
    for l in range(1, L - 1):
        cw, cb, g, x = C_W[l], C_b[l], gamma[l - 1], xi[l - 1]
        s = g * g + x * x * cw
        mm = m1[:, :, None, None] + m1[None, None, :, :]
        EAA = s * s * m2 + s * x * x * cb * mm + x**4 * cb * cb

        # E[M_ac G_bd] etc. written out (G = cb + cw M)
        def mg(perm):  # perm: einsum spec mapping m2 axes (M_pq, M_rs) -> abcd
            return cw * np.einsum(perm, m2)

        t_ac_bd = cb * m1[:, None, :, None] + mg("acbd->abcd")
        t_ad_bc = cb * m1[:, None, None, :] + mg("adbc->abcd")
        t_bc_ad = cb * m1[None, :, :, None] + mg("bcad->abcd")
        t_bd_ac = cb * m1[None, :, None, :] + mg("bdac->abcd")

        def gg(perm, i1, i2):
            return cb * cb + cb * cw * (i1 + i2) + cw * cw * np.einsum(perm, m2)

        G_ac_bd = gg("acbd->abcd", m1[:, None, :, None], m1[None, :, None, :])
        G_ad_bc = gg("adbc->abcd", m1[:, None, None, :], m1[None, :, :, None])
        m2 = EAA + (g * g * x * x / n) * (t_ac_bd + t_ad_bc + t_bc_ad + t_bd_ac) + (x**4 / n) * (G_ac_bd + G_ad_bc)
        m1 = s * m1 + x * x * cb
    cw, cb = C_W[L - 1], C_b[L - 1]
    EG = cb + cw * m1
    cov = cw * cw * (m2 - np.einsum("ab,cd->abcd", m1, m1))
    return n * cov, EG


def mc_metric(net, X, samples, *, seed=0, batch_size=20000):
    """``n Cov(G_hat_p, G_hat_q)`` ``(P,P)``, its s.e., ``n (E G_hat - K)`` ``(P,)`` and its s.e.,
    from ``samples`` actual residual networks (exact conditional sampler)."""
    s = ngp.sample_networks(net, X, samples, seed=seed, method="conditional", batch_size=min(batch_size, samples))
    pairs = Pairs.of(X.shape[0])
    G = s.metric[:, pairs.a, pairs.b]
    n = net.width
    d = G - G.mean(0)
    prod = d[:, :, None] * d[:, None, :]
    V = n * prod.mean(0) * samples / (samples - 1)
    V_se = n * prod.std(0, ddof=1) / math.sqrt(samples)
    K = pairs.pack(np.asarray(net.prior(X).K))
    K1 = n * (G.mean(0) - K)
    K1_se = n * G.std(0, ddof=1) / math.sqrt(samples)
    return V, V_se, K1, K1_se
