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


def _bc(M, idx):
    """``(N, N)`` matrix placed on the axes ``idx`` (two letters of ``abcd``) of a 4-tensor."""
    axes = ["abcd".index(ch) for ch in idx]
    arr = M if axes[0] < axes[1] else M.T
    shape = [1] * 4
    shape[min(axes)] = shape[max(axes)] = M.shape[0]
    return np.broadcast_to(arr.reshape(shape), (M.shape[0],) * 4)


def _E_affine(m1, m2, al, be, al2, be2, i1, i2):
    """``E[(al + be M)_{i1} (al2 + be2 M)_{i2}]`` as a 4-tensor over ``abcd``."""
    return (al * al2 + al * be2 * _bc(m1, i2) + be * al2 * _bc(m1, i1)
            + be * be2 * np.einsum(f"{i1}{i2}->abcd", m2))


def linear_exact(K_first, n, *, C_W, C_b, gamma, xi, branch=None, dense_before=None):
    """Exact ``n Cov(G_hat_ab, G_hat_cd)`` ``(N,N,N,N)`` and ``E G_hat`` of the readout metric of a
    linear residual network (plain first layer, blocks ``2 .. L-1``, readout ``L``), width ``n``.

    Block ``l``: ``z' = gamma z + xi u``. One-layer branch: ``u`` has i.i.d. rows ``N(0, G1)`` given the
    layer, ``G1 = C_b + C_W M``. Two-layer branch (``branch[l-1] = (m, C_W2, C_b2)``): a hidden layer of
    width ``m`` with rows ``N(0, G1)``, and ``u`` with rows ``N(0, Ga)``, ``Ga = C_b2 + C_W2 M_a``. With
    ``M' = gamma^2 M + gamma xi (1/n) sum (z u^T + u z^T) + xi^2 (1/n) sum u u^T`` the pieces have exact
    conditional covariances (Gaussian ``u``, Wishart ``M_a``), so ``E[M' (x) M']`` is a linear function
    of ``E[M (x) M]`` and ``E M``: an exact recursion for the first two moments.

    ``dense_before = (n0, C_W0, C_b0)``: the chain's first layer is fed by a Gaussian layer of width
    ``n0`` with kernel ``K_first`` through a dense layer, so its rows are ``N(0, G0)`` given
    ``G0 = C_b0 + C_W0 M0`` (``M0`` Wishart); otherwise its kernel is ``K_first`` exactly.
    """
    K = np.asarray(K_first, dtype=float)
    KK = lambda: (np.einsum("ac,bd->abcd", K, K) + np.einsum("ad,bc->abcd", K, K))  # noqa: E731
    if dense_before is None:
        m1 = K.copy()
        m2 = np.einsum("ab,cd->abcd", K, K) + KK() / n
    else:  # E[M_ab M_cd] = E[G0_ab G0_cd] + (1/n) E[G0_ac G0_bd + G0_ad G0_bc]
        n0, cw0, cb0 = dense_before
        q1 = K.copy()
        q2 = np.einsum("ab,cd->abcd", K, K) + KK() / n0  # moments of M0
        m1 = cb0 + cw0 * q1
        m2 = (_E_affine(q1, q2, cb0, cw0, cb0, cw0, "ab", "cd")
              + (_E_affine(q1, q2, cb0, cw0, cb0, cw0, "ac", "bd") + _E_affine(q1, q2, cb0, cw0, cb0, cw0, "ad", "bc")) / n)
    L = len(C_W)
    for l in range(1, L - 1):
        cw, cb, g, x = C_W[l], C_b[l], gamma[l - 1], xi[l - 1]
        br = None if branch is None else branch[l - 1]
        if br is None:
            c0, c1, m_h, cw2 = cb, cw, None, None
        else:
            m_h, cw2, cb2 = br
            c0, c1 = cb2 + cw2 * cb, cw2 * cw  # E[Ga | M] = c0 + c1 M

        def EMG(i1, i2):  # E[M_{i1} Ga_{i2}]
            return _E_affine(m1, m2, 0.0, 1.0, c0, c1, i1, i2)

        def EGG(i1, i2):  # E[Ga_{i1} Ga_{i2}]
            out = _E_affine(m1, m2, c0, c1, c0, c1, i1, i2)
            if m_h is not None:  # Wishart fluctuation of the hidden layer's second moment
                p, q, r, t = i1[0], i1[1], i2[0], i2[1]
                out = out + (cw2 * cw2 / m_h) * (_E_affine(m1, m2, cb, cw, cb, cw, p + r, q + t)
                                                 + _E_affine(m1, m2, cb, cw, cb, cw, p + t, q + r))
            return out

        g2, x2 = g * g, x * x
        EAA = (g2 * g2 * m2 + g2 * x2 * (EMG("ab", "cd") + EMG("cd", "ab"))
               + x2 * x2 * EGG("ab", "cd"))
        cross = EMG("ac", "bd") + EMG("ad", "bc") + EMG("bc", "ad") + EMG("bd", "ac")
        m2 = EAA + (g2 * x2 / n) * cross + (x2 * x2 / n) * (EGG("ac", "bd") + EGG("ad", "bc"))
        m1 = g2 * m1 + x2 * (c0 + c1 * m1)
    cw, cb = C_W[L - 1], C_b[L - 1]
    EG = cb + cw * m1
    cov = cw * cw * (m2 - np.einsum("ab,cd->abcd", m1, m1))
    return n * cov, EG


def mc_metric(net, X, samples, *, seed=0, batch_size=5000):
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


def branch_network(act, n, blocks, readout):
    """``ngp.serial`` residual network of :func:`mc_branch_chain`'s description (see there)."""
    C_W1, C_b1 = blocks[0]
    steps = [ngp.Dense(n, C_W=C_W1, C_b=C_b1)]
    for C_W, C_b, gamma, xi, branch in blocks[1:]:
        widths = [int(m) for m, _, _ in branch] + [n]
        cs = [(C_W, C_b)] + [(cw, cb) for _, cw, cb in branch]
        inner = []
        for w, (cw, cb) in zip(widths, cs):
            inner += [ngp.Elementwise(act), ngp.Dense(w, C_W=cw, C_b=cb)]
        steps.append(ngp.Residual(ngp.serial(*inner), gamma=gamma, xi=xi))
    return ngp.serial(*steps, ngp.Elementwise(act), ngp.Dense(1, C_W=readout[0], C_b=readout[1]))


def mc_branch_chain(act, X, n, blocks, readout, samples, *, seed=0, batch_size=5000):
    """Monte Carlo of residual chains with multi-layer branches (actual networks, exact conditional sampler).

    First layer ``C_b1 + C_W1 X X^T / n0`` given as ``blocks[0] = (C_W1, C_b1)``; each later entry is
    ``(C_W, C_b, gamma, xi, branch)`` with ``branch`` a tuple of ``(m, C_W_l, C_b_l)`` as in
    ``ngp._residual_cumulants.residual_step``; ``readout = (C_W, C_b)``. Returns the readout metric
    statistics of :func:`mc_metric` (``n Cov``, s.e., ``n E G_hat``, s.e.) without subtracting ``K``.
    """
    net = branch_network(act, n, blocks, readout)
    s = ngp.sample_networks(net, X, samples, seed=seed, method="conditional", batch_size=min(batch_size, samples))
    pairs = Pairs.of(X.shape[0])
    Gs = s.metric[:, pairs.a, pairs.b]
    d = Gs - Gs.mean(0)
    prod = d[:, :, None] * d[:, None, :]
    return (n * prod.mean(0) * samples / (samples - 1), n * prod.std(0, ddof=1) / math.sqrt(samples),
            n * Gs.mean(0), n * Gs.std(0, ddof=1) / math.sqrt(samples))
