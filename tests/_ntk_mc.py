"""Monte Carlo of actual random MLPs for the NTK statistics (tests and benchmarks).

Networks are drawn weight by weight. The stochastic NTK of the last hidden layer over all
neuron pairs, ``H_{j1 j2; ab}`` (``(n, n, N, N)``), is built by its exact forward recursion
``H' = d_ij (lambda_b + lambda_W/n s s^T) + W (s' s' * H) W^T`` (checked against autodiff
Jacobians in tests/test_ntk.py), and the output layer is integrated out exactly given the last
hidden layer (Rao-Blackwell), so that the 1/n statistics are covariances and means of
per-network conditional quantities:

* ``G_ab  = C_b + C_W/n sum_j s_ja s_jb``                 (``E[z z | hidden]``)
* ``T_ab  = lambda_b + lambda_W/n sum_j s s + C_W/n sum_j s'_ja s'_jb H_jj;ab``   (``E[H_ii | hidden]``)
* ``S_pqrs = (C_W/n)^2 sum_{jk} s'_jp s'_jq s'_kr s'_ks H_jk;pr H_jk;qs``  (``E[H_ik;pr H_ik;qs | hidden]``, i != k)
* ``Fh_pqrs = (C_W/n)^2 sum_{jk} s'_jp s_jq s'_kr s_ks H_jk;pr``             (``E[H_ik;pr z_i;q z_k;s | hidden]``)

so ``V = n Cov(G, G)``, ``A = n Cov(T, T)``, ``D = n Cov(T, G)``, ``B = n E[S]``, ``F = n E[Fh]``,
``K1 = n (E G - K)``, ``Theta1 = n (E T - Theta)`` with ``n = n_{L-1}``.
"""

from __future__ import annotations

import math

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np


def _hidden(act, X, key, widths, C_W, C_b, lam_W, lam_b):
    """Pre-activations ``z`` (n, N) and NTK ``H`` (n, n, N, N) of the last hidden layer of one network."""
    n0 = X.shape[1]
    dims = (n0,) + tuple(widths)
    keys = jax.random.split(key, 2 * len(widths))
    G0 = X @ X.T / n0
    W = jax.random.normal(keys[0], (dims[1], n0)) * math.sqrt(C_W[0] / n0)
    b = jax.random.normal(keys[1], (dims[1],)) * math.sqrt(C_b[0])
    z = W @ X.T + b[:, None]  # (n1, N)
    Th1 = lam_b[0] + lam_W[0] * G0
    H = jnp.eye(dims[1])[:, :, None, None] * Th1[None, None]
    d1 = jax.grad(lambda x: jnp.sum(act(x)))
    for l in range(1, len(widths)):
        n_in = dims[l]
        s, ds = act(z), d1(z)
        W = jax.random.normal(keys[2 * l], (dims[l + 1], n_in)) * math.sqrt(C_W[l] / n_in)
        b = jax.random.normal(keys[2 * l + 1], (dims[l + 1],)) * math.sqrt(C_b[l])
        M = ds[:, None, :, None] * ds[None, :, None, :] * H  # (j, k, a, b)
        H = jnp.einsum("ij,jkab,lk->ilab", W, M, W) + jnp.eye(dims[l + 1])[:, :, None, None] * (
            lam_b[l] + lam_W[l] * (s.T @ s) / n_in)[None, None]
        z = W @ s + b[:, None]
    return z, H


def _conditional(act, z, H, C_W, C_b, lam_W, lam_b):
    n = z.shape[0]
    d1 = jax.grad(lambda x: jnp.sum(act(x)))
    s, ds = act(z), d1(z)
    G = C_b + C_W * (s.T @ s) / n
    Hd = jnp.einsum("jjab->jab", H)
    T = lam_b + lam_W * (s.T @ s) / n + C_W * jnp.einsum("ja,jb,jab->ab", ds, ds, Hd) / n
    M = ds[:, None, :, None] * ds[None, :, None, :] * H  # (j,k,p,r) = s'_jp s'_kr H_jk;pr
    N = z.shape[1]
    Mf = M.reshape(n * n, N * N)
    S = (Mf.T @ Mf).reshape(N, N, N, N).transpose(0, 2, 1, 3) * (C_W / n) ** 2  # [p,q,r,s]
    # Fh_pqrs = sum_jk s'_jp s_jq s'_kr s_ks H_jk;pr
    Fh = jnp.einsum("jkpr,jq,ks->pqrs", M, s, s) * (C_W / n) ** 2
    return G, T, S, Fh


def sample_stats(act, X, *, widths, C_W, C_b, lam_W, lam_b, samples, seed=0, batch=64):
    """Per-network conditional quantities of the output layer (depth = len(widths) + 1).

    ``C_W`` etc. are per-layer tuples of length ``depth``. Returns dict of arrays with a
    leading sample axis: ``G``, ``T`` (S, N, N); ``S``, ``Fh`` (S, N, N, N, N).
    """
    X = jnp.asarray(X)
    L = len(widths) + 1
    fn = act.fn if hasattr(act, "fn") else act

    def one(key):
        z, H = _hidden(fn, X, key, widths, C_W, C_b, lam_W, lam_b)
        return _conditional(fn, z, H, C_W[L - 1], C_b[L - 1], lam_W[L - 1], lam_b[L - 1])

    f = jax.jit(jax.vmap(one))
    keys = jax.random.split(jax.random.PRNGKey(seed), samples)
    out = {k: [] for k in ("G", "T", "S", "Fh")}
    for s0 in range(0, samples, batch):
        k = keys[s0:s0 + batch]
        got = k.shape[0]
        if got < batch:
            k = jnp.concatenate([k, jnp.repeat(k[:1], batch - got, axis=0)])
        res = f(k)
        for name, r in zip(("G", "T", "S", "Fh"), res):
            out[name].append(np.asarray(r)[:got])
    return {k: np.concatenate(v) for k, v in out.items()}


def mean_se(x):
    x = np.asarray(x)
    return x.mean(0), x.std(0, ddof=1) / np.sqrt(x.shape[0])


def cov_se(x, y):
    """Sample covariance tensor ``Cov(x_I, y_J)`` over the leading axis, and its standard error."""
    x = np.asarray(x).reshape(x.shape[0], -1)
    y = np.asarray(y).reshape(y.shape[0], -1)
    dx, dy = x - x.mean(0), y - y.mean(0)
    prod = dx[:, :, None] * dy[:, None, :]
    S = x.shape[0]
    return prod.mean(0) * S / (S - 1), prod.std(0, ddof=1) / np.sqrt(S)


def estimates(samples, n, shape_N):
    """MC estimates (and standard errors) of ``K1+nK``-type quantities: returns dict with
    ``G_mean, T_mean`` (and ``_se``), ``V, A, D, B, F`` (and ``_se``), all scaled by ``n``
    where they are 1/n statistics."""
    N = shape_N
    out = {}
    for k in ("G", "T"):
        out[k + "_mean"], out[k + "_mean_se"] = mean_se(samples[k])
    for name, (x, y) in {"V": ("G", "G"), "A": ("T", "T"), "D": ("T", "G")}.items():
        c, se = cov_se(samples[x], samples[y])
        out[name], out[name + "_se"] = n * c.reshape((N,) * 4), n * se.reshape((N,) * 4)
    for name, key in (("B", "S"), ("F", "Fh")):
        m, se = mean_se(samples[key])
        out[name], out[name + "_se"] = n * m, n * se
    return out


# ----------------------------------------------------------------------------- autodiff references
def init_params(key, dims, C_W, C_b):
    """Weights ``W^(l)`` (fan_out, fan_in) with variance ``C_W/fan_in`` and biases with variance ``C_b``."""
    params = []
    keys = jax.random.split(key, 2 * (len(dims) - 1))
    for l in range(len(dims) - 1):
        W = jax.random.normal(keys[2 * l], (dims[l + 1], dims[l])) * math.sqrt(C_W[l] / dims[l])
        b = jax.random.normal(keys[2 * l + 1], (dims[l + 1],)) * math.sqrt(C_b[l])
        params.append((W, b))
    return params


def forward(fn, params, X):
    """Outputs ``(n_L, N)`` of the MLP ``z' = W s(z) + b`` (no activation on the input)."""
    h = X.T
    for l, (W, b) in enumerate(params):
        z = W @ h + b[:, None]
        h = fn(z)
    return z


def lr_tree(params, lam_W, lam_b):
    """Learning-rate tensor: ``lambda_W / fan_in`` for weights, ``lambda_b`` for biases."""
    return [(jnp.full(W.shape, lam_W[l] / W.shape[1]), jnp.full(b.shape, lam_b[l]))
            for l, (W, b) in enumerate(params)]


def empirical_ntk(fn, params, X, lam_W, lam_b):
    """``H_{i1 i2; a1 a2}`` (n_L, n_L, N, N) by reverse-mode Jacobians."""
    lam = lr_tree(params, lam_W, lam_b)
    jac = jax.jacrev(lambda p: forward(fn, p, X))(params)  # leaves (n_L, N, *shape)
    leaves_j = jax.tree_util.tree_leaves(jac)
    leaves_l = jax.tree_util.tree_leaves(lam)
    H = 0.0
    for J, lm in zip(leaves_j, leaves_l):
        Jf = J.reshape(J.shape[0], J.shape[1], -1)
        H = H + jnp.einsum("iap,p,jbp->ijab", Jf, lm.reshape(-1), Jf)
    return H


def dntk_times_z(fn, params, X, lam_W, lam_b):
    """``dH_{i0 i1 i2; a0 a1 a2}`` (n_L^3 N^3) by Hessian-vector products, and the outputs ``z``."""
    lam = lr_tree(params, lam_W, lam_b)
    flat, unravel = jax.flatten_util.ravel_pytree(params)
    lam_flat, _ = jax.flatten_util.ravel_pytree(lam)
    f = lambda p: forward(fn, unravel(p), X)  # (n_L, N)
    z = f(flat)
    J = jax.jacrev(f)(flat)  # (n_L, N, P)
    nL, N = z.shape
    U = (J * lam_flat).reshape(nL * N, -1)  # lambda * grad z_{i a}

    # H_{i0 a0} u for all directions u: d/deps grad z_{i0 a0}(p + eps u) = jacobian of J along u
    HU = jax.vmap(lambda u: jax.jvp(lambda p: jax.jacrev(f)(p), (flat,), (u,))[1])(U)  # (nL N, nL, N, P)
    # dH[i0,a0,i1,a1,i2,a2] = sum_P U[(i1 a1)] . HU[(i2 a2), i0, a0]
    dH = jnp.einsum("xp,yiap->iaxy", U, HU).reshape(nL, N, nL, N, nL, N)
    return dH.transpose(0, 2, 4, 1, 3, 5), z  # [i0, i1, i2, a0, a1, a2]


def train_gd(fn, params, X, train, y, lam_W, lam_b, *, eta, steps):
    """Full-batch gradient descent on ``1/2 sum (z_A - y)^2`` with learning rates ``eta * lambda``;
    returns the outputs ``(n_L, N)`` on all inputs after ``steps`` steps and the final loss."""
    lam = lr_tree(params, lam_W, lam_b)
    XA = X[train]

    def loss(p):
        return 0.5 * jnp.sum((forward(fn, p, XA) - y) ** 2)

    def body(_, p):
        g = jax.grad(loss)(p)
        return jax.tree_util.tree_map(lambda w, gw, lw: w - eta * lw * gw, p, g, lam)

    p = jax.lax.fori_loop(0, steps, body, params)
    return forward(fn, p, X), loss(p)


def flip_output(params):
    """The same network with the output layer negated (``z -> -z``, NTK unchanged)."""
    W, b = params[-1]
    return params[:-1] + [(-W, -b)]
