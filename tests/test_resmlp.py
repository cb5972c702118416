"""Residual MLPs (THEORY.md §8): kernel recursion vs actual residual networks, MLP limit, API."""

import math

import numpy as np
import pytest

import ngp
from ngp import _resmlp
from ngp import criticality as cr
from ngp._gp import gp_from_kernel

ResMLP = getattr(ngp, "ResMLP", _resmlp.ResMLP)


@pytest.fixture(scope="module")
def inputs():
    """Three inputs for most tests plus test inputs and targets, drawn in that order from one generator."""
    rng = np.random.default_rng(5)
    X3 = rng.normal(size=(3, 4))
    XB = rng.normal(size=(2, 4))
    return dict(X3=X3, XB=XB, Y=rng.normal(size=(2, 2)))


@pytest.fixture(scope="module")
def X3(inputs):
    return inputs["X3"]


def _zscore(samples, K):
    """max |mean(G_hat) - K| in units of the MC standard error of the mean."""
    G = samples.metric
    se = G.std(0, ddof=1) / math.sqrt(G.shape[0])
    return float(np.max(np.abs(G.mean(0) - np.asarray(K)) / se))


def _kernel_by_hand(net, X):
    act = net.activation
    K = net.C_b[0] + net.C_W[0] * X @ X.T / X.shape[1]
    for layer in range(1, net.depth):
        phi = np.asarray(ngp._kernel.kernel_map(act, K, net.C_W[layer], net.C_b[layer]))
        if layer < net.depth - 1:
            K = net.gamma[layer - 1] ** 2 * K + net.xi[layer - 1] ** 2 * phi
        else:
            K = phi
    return K


# ----------------------------------------------------------------------------- MLP limit
@pytest.mark.parametrize("activation", ["tanh", "relu"])
def test_gamma_zero_xi_one_is_the_mlp_kernel(activation, X3):
    kw = dict(activation=activation, C_W=[1.2, 1.6, 1.4, 0.9, 1.1], C_b=0.1, out_dim=2)
    res = ResMLP(5, 32, gamma=0.0, xi=1.0, **kw).prior(X3)
    mlp = ngp.MLP(5, 32, **kw).prior(X3)
    assert len(res.kernels) == 5
    for a, b in zip(res.kernels, mlp.kernels):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_weights_sampler_is_the_documented_forward_pass(X3):
    # Rebuild each network by hand (NumPy) from the same normal draws: plain first layer,
    # residual blocks gamma z + xi (b + W tanh z), plain readout (integrated given G_hat).
    import jax

    n, L, S, out = 6, 4, 3, 2
    C_W, C_b, gam, xi = [1.3, 0.7, 1.9, 1.1], [0.2, 0.1, 0.3, 0.05], [0.9, -0.4], [0.5, 1.2]
    net = ResMLP(L, n, activation="tanh", C_W=C_W, C_b=C_b, gamma=gam, xi=xi, out_dim=out)
    s = ngp.sample_networks(net, X3, S, seed=3)
    keys = jax.random.split(jax.random.PRNGKey(3), S)
    n0, N = X3.shape[1], X3.shape[0]
    for k in range(S):
        flat = np.asarray(jax.random.normal(keys[k], (n0 * n + n + 2 * (n * n + n) + N * out,)))
        take = lambda size, _p=[0]: (flat[_p[0]:_p[0] + size], _p.__setitem__(0, _p[0] + size))[0]
        z = X3 @ take(n0 * n).reshape(n0, n) * math.sqrt(C_W[0] / n0) + take(n) * math.sqrt(C_b[0])
        for l in (1, 2):
            W, b = take(n * n).reshape(n, n), take(n)
            z = gam[l - 1] * z + xi[l - 1] * (np.tanh(z) @ W * math.sqrt(C_W[l] / n) + b * math.sqrt(C_b[l]))
        h = np.tanh(z)
        G = C_b[3] + C_W[3] * h @ h.T / n
        np.testing.assert_allclose(s.metric[k], G, rtol=1e-12)
        R = np.asarray(ngp._linalg.psd_sqrt(G))  # the output layer given G_hat: z = R eps
        np.testing.assert_allclose(R @ R.T, G, rtol=1e-12)
        np.testing.assert_allclose(s.outputs[k], R @ take(N * out).reshape(N, out), rtol=1e-10, atol=1e-12)


def test_kernel_recursion_per_block(X3):
    net = ResMLP(5, 64, activation="erf", C_W=1.5, C_b=0.05, gamma=[0.9, 0.5, 1.0], xi=[0.4, 1.0, 0.3])
    prior = net.prior(X3)
    np.testing.assert_allclose(prior.K, _kernel_by_hand(net, X3), rtol=1e-13)
    # linear blocks, C_b = 0: K^(l) = (gamma^2 + xi^2 C_W) K^(l-1) exactly
    lin = ResMLP(4, 8, activation="linear", C_W=1.2, gamma=0.6, xi=0.8).prior(X3)
    K1 = 1.2 * X3 @ X3.T / 4
    np.testing.assert_allclose(lin.kernels[2], (0.36 + 0.64 * 1.2) ** 2 * K1, rtol=1e-14)
    np.testing.assert_allclose(lin.K, 1.2 * lin.kernels[2], rtol=1e-14)


# ----------------------------------------------------------------------------- Monte Carlo
def test_kernel_against_actual_residual_networks(X3):
    # Real weight matrices, width 512, two residual blocks with different (gamma, xi). The
    # O(1/n) bias of E[G_hat] (~1e-3 K) is far below the MC standard error (~1.5e-2 K).
    net = ResMLP(4, 512, activation="tanh", C_W=1.5, C_b=0.1, gamma=[0.9, 0.7], xi=[0.6, 0.8])
    K = np.asarray(net.prior(X3).K)
    s = ngp.sample_networks(net, X3, 96, seed=21, method="weights", batch_size=8)  # same draws; 0.2 GB (0.59 at 32)
    assert s.outputs.shape == (96, 3, 1) and s.metric.shape == (96, 3, 3)
    assert _zscore(s, K) < 4.5
    # and the plain MLP kernel is clearly rejected by the same samples
    mlp = np.asarray(ngp.MLP(4, 512, activation="tanh", C_W=1.5, C_b=0.1).prior(X3).K)
    assert _zscore(s, mlp) > 10


def test_kernel_against_conditional_residual_sampler(X3):
    # relu is not odd: the residual net has O(1/n) odd cumulants and a K1 ~ 0.5 K (THEORY §8),
    # but K is exact at leading order; width 512 keeps the 1/n shift below ~0.3 s.e.
    # (S a multiple of batch_size: one compiled batch shape.)
    net = ResMLP(5, 512, activation="relu", C_W=1.4, C_b=0.1, gamma=0.8, xi=0.6)
    K = np.asarray(net.prior(X3).K)
    s = ngp.sample_networks(net, X3, 2048, seed=7, method="conditional", batch_size=1024)
    assert _zscore(s, K) < 4.5
    mlp = np.asarray(ngp.MLP(5, 512, activation="relu", C_W=1.4, C_b=0.1).prior(X3).K)
    assert _zscore(s, mlp) > 10


def test_linear_residual_vertex_growth_is_exact():
    # Linear blocks, one input, C_b = 0: the empirical second moment Q of a layer obeys
    # E[Q'^2] = E[Q^2] (s^2 + c/n), s = gamma^2 + xi^2 C_W, c = 2 xi^4 C_W^2 + 4 gamma^2 xi^2 C_W,
    # so E[G_hat^2] / K^2 = (1 + 2/n) prod_blocks (1 + c / (n s^2)) at the readout, whose
    # leading order is 1 + [2 + sum_blocks residual_vertex_growth] / n (THEORY §8).
    n, S = 64, 40_960
    gam, xi, cw = [0.7, 0.5, 0.9, 0.3], [0.7, 0.9, 0.5, 1.0], 1.1
    net = ResMLP(6, n, activation="linear", C_W=cw, C_b=0.0, gamma=gam, xi=xi)
    X = np.array([[1.3, -0.4]])
    K = float(np.asarray(net.prior(X).K)[0, 0])
    exact = 1 + 2 / n
    lo = 2.0
    for g, x in zip(gam, xi):
        s, c = g * g + x * x * cw, 2 * x**4 * cw**2 + 4 * g * g * x * x * cw
        exact *= 1 + c / (n * s * s)
        lo += cr.residual_vertex_growth(gamma=g, xi=x, C_W=cw)
    assert abs(n * (exact - 1) - lo) < 0.5  # leading order vs exact: O(1/n) apart
    G = ngp.sample_networks(net, X, S, seed=11, method="conditional", batch_size=4096).metric[:, 0, 0]
    m1 = G.mean() / K
    m2 = np.mean(G**2) / K**2
    se1 = G.std(ddof=1) / math.sqrt(S) / K
    se2 = (G**2).std(ddof=1) / math.sqrt(S) / K**2
    assert abs(m1 - 1) < 4.5 * se1
    assert abs(m2 - exact) < 4.5 * se2
    # the plain-MLP value (1 + 2/n)^5 is rejected: the skips slow the growth of V/K^2
    assert abs(m2 - (1 + 2 / n) ** 5) > 5 * se2  # expected separation ~7.7 s.e.


# ----------------------------------------------------------------------------- API
def test_gp_posterior_with_a_residual_network(inputs):
    net = ResMLP(4, 64, activation="tanh", C_W=1.2, C_b=0.1, gamma=0.8, xi=0.6, out_dim=2)
    XA, XB, Y = inputs["X3"][:2], inputs["XB"], inputs["Y"]
    post = ngp.gp_posterior(net, XA, Y, XB, noise=0.1)
    K = np.asarray(net.prior(np.concatenate([XA, XB])).K)
    ref = gp_from_kernel(K, 2, Y, 0.1)
    np.testing.assert_allclose(post.mean, ref.mean, rtol=1e-12)
    np.testing.assert_allclose(post.cov_test, ref.cov_test, rtol=1e-12, atol=1e-14)
    mlp_kw = dict(activation="tanh", C_W=1.2, C_b=0.1, out_dim=2)
    a = ngp.gp_posterior(ResMLP(4, 64, gamma=0.0, xi=1.0, **mlp_kw), XA, Y, XB, noise=0.1)
    b = ngp.gp_posterior(ngp.MLP(4, 64, **mlp_kw), XA, Y, XB, noise=0.1)
    np.testing.assert_allclose(a.mean, b.mean, rtol=1e-13)
    assert a.log_evidence == pytest.approx(b.log_evidence, rel=1e-13)


def test_shapes_and_repr(X3):
    net = ResMLP(5, 8, activation="relu", gamma=[1.0, 0.5, 0.2], xi=0.7, out_dim=3, in_dim=4)
    assert net.n_blocks == 3 and net.widths == (8, 8, 8, 8) and net.n_last == 8
    assert net.gamma == (1.0, 0.5, 0.2) and net.xi == (0.7, 0.7, 0.7)
    assert "ResMLP(depth=5" in repr(net) and "gamma=[1.0, 0.5, 0.2]" in repr(net)
    assert ResMLP(1, activation="tanh").prior(X3).K.shape == (3, 3)
    assert ResMLP(2, 4).n_blocks == 0


@pytest.mark.parametrize(
    "kwargs,exc,match",
    [
        (dict(depth=0, width=4), ValueError, "depth"),
        (dict(depth=3), ValueError, "width"),
        (dict(depth=3, width=[4, 4]), TypeError, "equal widths"),
        (dict(depth=4, width=4, gamma=[1.0]), ValueError, "gamma: expected 2 values"),
        (dict(depth=4, width=4, xi=[1.0, float("nan")]), ValueError, r"xi\[1\]"),
        (dict(depth=4, width=4, gamma="a"), TypeError, "gamma"),
        (dict(depth=4, width=4, C_W=-1.0), ValueError, "C_W"),
        (dict(depth=4, width=4, C_b=-0.1), ValueError, "C_b"),
        (dict(depth=4, width=4, activation="nope"), ValueError, "activation"),
    ],
)
def test_bad_arguments(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        ResMLP(**kwargs)


def test_bad_sampler_method(X3):
    with pytest.raises(ValueError, match="method"):
        ResMLP(3, 4).sampler(2, "exact")
    with pytest.raises(ValueError, match="in_dim"):
        ResMLP(3, 4, in_dim=3).prior(X3)
