"""Layer steps (ngp.serial, Dense, Elementwise, Residual, Scale): contracts, exact identities,
a mixed network against an independent kernel recursion and against Monte Carlo of actual networks."""

import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.integrate
import scipy.stats
from scipy.special import roots_hermitenorm

import ngp

from ._mc import metric_cumulants


@pytest.fixture
def X():
    return np.random.default_rng(7).normal(size=(3, 2))


def mixed(n, C=(1.2, 0.1, 1.8, 0.05, 1.5, 0.1)):
    """tanh then relu hidden layers, unequal widths (2n, n)."""
    return ngp.serial(
        ngp.Dense(2 * n, C_W=C[0], C_b=C[1]), ngp.Elementwise("tanh"),
        ngp.Dense(n, C_W=C[2], C_b=C[3]), ngp.Elementwise("relu"),
        ngp.Dense(1, C_W=C[4], C_b=C[5]),
    )


# ----------------------------------------------------------------------------- independent kernel recursion
def _gh_tanh_kernel(K, m=150):
    """<tanh(z_a) tanh(z_b)> by a 2-D Gauss-Hermite rule on each 2x2 block (Cholesky), written here."""
    x, w = roots_hermitenorm(m)
    w = w / w.sum()
    N = K.shape[0]
    out = np.empty_like(K)
    for a in range(N):
        for b in range(N):
            l11 = math.sqrt(K[a, a])
            l21 = K[a, b] / l11
            l22 = math.sqrt(max(K[b, b] - l21**2, 0.0))
            za = l11 * x[:, None]
            zb = l21 * x[:, None] + l22 * x[None, :]
            out[a, b] = np.sum(w[:, None] * w[None, :] * np.tanh(za) * np.tanh(zb))
    return out


def _quad_relu_kernel(K):
    """<relu(z_a) relu(z_b)> = int_0^inf x E[relu(z_b) | z_a = x] phi_a(x) dx, adaptive quadrature."""
    N = K.shape[0]
    out = np.empty_like(K)
    for a in range(N):
        for b in range(N):
            sa = math.sqrt(K[a, a])
            beta = K[a, b] / K[a, a]
            s = math.sqrt(max(K[b, b] - beta * K[a, b], 0.0))

            def inner(x):
                mu = beta * x
                if s == 0:
                    return max(mu, 0.0)
                r = mu / s
                return mu * scipy.stats.norm.cdf(r) + s * scipy.stats.norm.pdf(r)

            out[a, b] = scipy.integrate.quad(lambda x: x * inner(x) * scipy.stats.norm.pdf(x / sa) / sa, 0, np.inf,
                                             epsabs=1e-14, epsrel=1e-13)[0]
    return out


def test_mixed_network_kernel_against_an_independent_recursion(X):
    net = mixed(32)
    prior = net.prior(X)
    K1 = 0.1 + 1.2 * X @ X.T / X.shape[1]
    K2 = 0.05 + 1.8 * _gh_tanh_kernel(K1)
    K3 = 0.1 + 1.5 * _quad_relu_kernel(K2)
    for got, ref in zip(prior.kernels, (K1, K2, K3)):
        np.testing.assert_allclose(got, ref, rtol=1e-10, atol=1e-12)


# ----------------------------------------------------------------------------- Monte Carlo through apply
def _fit_one_over_n(ns, d, se):
    """Weighted fit ``d = c / n``; returns ``(c, chi, chi of the best constant)``."""
    n = np.asarray(ns, float)
    c = np.sum(d / n / se**2) / np.sum(1 / n**2 / se**2)
    const = np.sum(d / se**2) / np.sum(1 / se**2)
    return c, (d - c / n) / se, (d - const) / se


def _arccos_relu(G):
    """<relu(z_a) relu(z_b)> for z ~ N(0, G) (arc-cosine kernel), batched, written here."""
    d = jnp.sqrt(jnp.diagonal(G, axis1=-2, axis2=-1))
    norm = d[..., :, None] * d[..., None, :]
    c = jnp.clip(G / norm, -1, 1)
    th = jnp.arccos(c)
    return norm * (jnp.sin(th) + (jnp.pi - th) * c) / (2 * jnp.pi)


def test_mixed_network_vertex_against_actual_networks(X):
    """V of the mixed network against networks drawn with their weights (through Dense.apply).

    The residual |n Cov_MC(G) - V| of the largest component must shrink like 1/n (the theory is
    right to O(1/n)); a wrong V (e.g. the width ratio 1/2 inverted) leaves a width-independent gap.
    """
    ns, dV, se = [4, 8, 16], [], []
    for i, n in enumerate(ns):
        mc = metric_cumulants(mixed(n), X, 150_000, seed=31 + i, method="weights", batch_size=5000)
        Vp = mc["prior"].V_packed
        p, q = np.unravel_index(np.argmax(np.abs(Vp)), Vp.shape)
        dV.append(mc["V"][p, q] - Vp[p, q])
        se.append(mc["V_se"][p, q])
    dV, se = np.array(dV), np.array(se)
    c, chi, chi_const = _fit_one_over_n(ns, dV, se)
    assert np.all(np.abs(chi) < 4.5), (dV, se, c)
    assert abs(dV[0]) > 6 * se[0]  # resolved at the narrowest width ...
    assert np.sum(chi**2) < np.sum(chi_const**2)  # ... and 1/n fits better than a constant gap


def test_mixed_network_K1_against_actual_networks(X):
    """K1 against E[G_hat] of actual networks, Rao-Blackwellised over the readout's input.

    Given the metric G2 of the relu layer's input (drawn through init/apply), E[G_out | G2] =
    C_b + C_W <relu relu>_{G2} exactly; G2 - K2 (mean zero exactly: layer 2 is two layers deep)
    serves as a control variate. The residual n(E G - K) - K1 must shrink like 1/n.
    """
    iu = np.triu_indices(X.shape[0])
    K1l = 0.1 + 1.2 * X @ X.T / X.shape[1]
    K2 = 0.05 + 1.8 * _gh_tanh_kernel(K1l)  # exact mean of G2, independent of the library
    ns, res, ses = [4, 8, 16], [], []
    for n in ns:
        net = mixed(n)
        d1, d2, d3 = net.steps[0], net.steps[2], net.steps[4]

        def one(key, net=net, d1=d1, d2=d2, d3=d3):
            p = net.init(key, X.shape[1])
            G2 = d2.metric(jnp.tanh(d1.apply(p[0], jnp.asarray(X))))
            return G2, d3.C_b + d3.C_W * _arccos_relu(G2)

        # 200k networks in chunks of 25k (each network has its own key: the chunking changes memory only)
        batched, keys = jax.jit(jax.vmap(one)), jax.random.split(jax.random.PRNGKey(n), 200_000)
        G2, Phi = (np.concatenate(a) for a in zip(*(batched(keys[i:i + 25_000]) for i in range(0, 200_000, 25_000))))
        D, F = G2[:, iu[0], iu[1]] - K2[iu], Phi[:, iu[0], iu[1]]
        beta = np.linalg.lstsq(D - D.mean(0), F - F.mean(0), rcond=None)[0]
        R = F - D @ beta
        prior = net.prior(X, warn=False)
        res.append(n * (R.mean(0) - prior.K[iu]) - prior.K1[iu])
        ses.append(n * R.std(0, ddof=1) / np.sqrt(R.shape[0]) + 1e-10)
    res, ses = np.array(res), np.array(ses)
    assert np.max(np.abs(prior.K1)) > 50 * np.max(ses)  # K1 itself is resolved
    for j in range(res.shape[1]):
        c, chi, _ = _fit_one_over_n(ns, res[:, j], ses[:, j])
        assert np.all(np.abs(chi) < 4.5), (j, res[:, j], ses[:, j], c)


# ----------------------------------------------------------------------------- exact identities
def test_a_kernel_recursion_that_overflows_says_where_and_at_which_variance():
    """exp on inputs of variance up to 5.2: the second layer's variances are e^{2 K_1} (up to 3.3e4 here), and the
    readout's <e^z e^z> = e^{2 K_2} overflows; the error names the step, the activation and that variance."""
    X = 2 * np.random.default_rng(0).normal(size=(4, 2))
    fed = np.exp(2 * np.max(np.sum(X**2, axis=1) / 2))  # <e^z e^z> at the first layer's variances, C_W = 1, C_b = 0
    net = ngp.MLP(3, 16, activation=ngp.activation(jnp.exp), C_W=1.0, C_b=0.0)
    with pytest.warns(ngp.AccuracyWarning, match="variance"), pytest.raises(FloatingPointError) as err:
        net.prior(X)  # (3.3e4 is beyond the Mehler series' accurate range: warned)
    message = str(err.value)
    assert message.startswith("Dense(1, ") and "'exp'" in message and f"applied to: {fed:.3g})" in message


def test_mehler_kernel_of_a_fast_growing_activation_at_large_variance():
    """<e^{z_a} e^{z_b}> = e^{(K_aa + K_bb)/2 + K_ab} by the Mehler series and its 1-D diagonal at variances up to 30:
    the diagonal's rule has nodes whose weights underflow to 0 and where e^{2z} overflows (0 * inf was NaN at 13.4);
    and a network on standard inputs reaching variance 13.4 has a finite kernel."""
    from ngp._kernel import two_point_matrix

    act = ngp.activation(jnp.exp)
    for k in (1.0, 13.4, 30.0):
        K = np.array([[k, 0.9 * k], [0.9 * k, 1.1 * k]])
        exact = np.exp(0.5 * (np.diag(K)[:, None] + np.diag(K)[None, :]) + K)
        np.testing.assert_allclose(np.asarray(two_point_matrix(act, K)), exact, rtol=1e-12)
    X = np.random.default_rng(0).normal(size=(4, 2))
    K = np.asarray(ngp.MLP(3, 16, activation=act, C_W=1.0, C_b=0.0).prior(X, warn=False).K)
    K2 = np.exp(0.5 * (np.sum(X**2, axis=1)[:, None] + np.sum(X**2, axis=1)[None, :]) / 2 + X @ X.T / 2)
    np.testing.assert_allclose(K, np.exp(0.5 * (np.diag(K2)[:, None] + np.diag(K2)[None, :]) + K2), rtol=1e-11)


def test_mlp_is_a_serial_composition(X):
    mlp = ngp.MLP(4, [12, 24, 8], activation="gelu", C_W=[1.1, 0.9, 1.3, 0.8], C_b=[0.2, 0.0, 0.1, 0.05], out_dim=2)
    ser = ngp.serial(ngp.Dense(12, C_W=1.1, C_b=0.2), ngp.Elementwise("gelu"), ngp.Dense(24, C_W=0.9),
                     ngp.Elementwise("gelu"), ngp.Dense(8, C_W=1.3, C_b=0.1), ngp.Elementwise("gelu"),
                     ngp.Dense(2, C_W=0.8, C_b=0.05))
    assert mlp.steps == ser.steps and mlp.depth == ser.depth == 4 and ser.widths == (12, 24, 8) and ser.n_last == 8
    a, b = mlp.prior(X, warn=False), ser.prior(X, warn=False)
    np.testing.assert_array_equal(a.V, b.V)
    np.testing.assert_array_equal(a.K1, b.K1)


def test_scale_step_is_a_rescaled_dense_step(X):
    # Scale(alpha) right after a dense step multiplies its weights and biases by alpha: C -> alpha^2 C
    alpha = 1.7
    a = ngp.serial(ngp.Dense(16, C_W=0.8, C_b=0.1), ngp.Elementwise("tanh"), ngp.Dense(16, C_W=1.1, C_b=0.2),
                   ngp.Scale(alpha), ngp.Elementwise("tanh"), ngp.Dense(1))
    b = ngp.serial(ngp.Dense(16, C_W=0.8, C_b=0.1), ngp.Elementwise("tanh"),
                   ngp.Dense(16, C_W=1.1 * alpha**2, C_b=0.2 * alpha**2), ngp.Elementwise("tanh"), ngp.Dense(1))
    pa, pb = a.prior(X, warn=False), b.prior(X, warn=False)
    np.testing.assert_allclose(pa.V, pb.V, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(pa.K1, pb.K1, rtol=1e-12, atol=1e-14)
    # and its own cumulant map: K -> alpha^2 K, K1 -> alpha^2 K1, V -> alpha^4 V
    c = ngp.serial(ngp.Dense(16, C_b=0.1), ngp.Elementwise("tanh"), ngp.Dense(16), ngp.Elementwise("tanh"),
                   ngp.Dense(3, C_b=0.1))
    d = ngp.serial(*c.steps, ngp.Scale(alpha))
    pc, pd = c.prior(X, warn=False), d.prior(X, warn=False)
    np.testing.assert_allclose(pd.K, alpha**2 * pc.K, rtol=1e-14)
    np.testing.assert_allclose(pd.K1, alpha**2 * pc.K1, rtol=1e-14)
    np.testing.assert_allclose(pd.V, alpha**4 * pc.V, rtol=1e-14)
    assert len(pd.layers) == len(pc.layers)


def test_identity_scale_between_a_residual_chain_and_its_readout(X):
    """Scale(1.0) after a residual chain made K1 and V unavailable (a rescaled chain is not supported); the identity
    now leaves the network's cumulants as they are."""
    block = ngp.serial(ngp.Elementwise("tanh"), ngp.Dense(16, 1.5, 0.1))
    head, tail = (ngp.Dense(16, 1.5, 0.1), ngp.Residual(block, 0.8, 0.6)), (ngp.Elementwise("tanh"), ngp.Dense(1))
    a, b = ngp.serial(*head, *tail).prior(X, warn=False), ngp.serial(*head, ngp.Scale(1.0), *tail).prior(X, warn=False)
    np.testing.assert_array_equal(a.K1, b.K1)
    np.testing.assert_array_equal(a.V, b.V)


def test_rescaled_chain_keeps_its_layers_kernels_and_names_what_it_refuses(X):
    """A chain rescaled before its readout has no K1/V: each refusal names what was asked (K1 was refused as "the
    expansion parameter"), and the layers' kernels stay readable (``prior.layers`` refused as a whole)."""
    block = ngp.serial(ngp.Elementwise("tanh"), ngp.Dense(16, 1.5, 0.1))
    head, tail = (ngp.Dense(16, 1.5, 0.1), ngp.Residual(block, 0.8, 0.6)), (ngp.Elementwise("tanh"), ngp.Dense(1))
    p = ngp.serial(*head, ngp.Scale(2.0), *tail).prior(X)
    q = ngp.serial(*head, *tail).prior(X, warn=False)
    for what, word in (("K1", "(K1)"), ("V", "(V)"), ("expansion_parameter", "(the expansion parameter)")):
        with pytest.raises(NotImplementedError, match=re.escape(word)):
            getattr(p, what)
    np.testing.assert_array_equal(p.layers[0].K, q.layers[0].K)
    np.testing.assert_array_equal(p.layers[-1].K, p.K)


def test_residual_without_skip_is_its_block(X):
    block = ngp.serial(ngp.Elementwise("tanh"), ngp.Dense(16, C_W=1.3, C_b=0.1))
    res = ngp.serial(ngp.Dense(16, C_b=0.1), ngp.Residual(block, gamma=0.0, xi=0.6), ngp.Elementwise("tanh"),
                     ngp.Dense(1))
    ref = ngp.serial(ngp.Dense(16, C_b=0.1), ngp.Elementwise("tanh"), ngp.Dense(16, C_W=1.3 * 0.36, C_b=0.1 * 0.36),
                     ngp.Elementwise("tanh"), ngp.Dense(1))
    a, b = res.prior(X, warn=False), ref.prior(X, warn=False)
    np.testing.assert_allclose(a.V, b.V, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(a.K1, b.K1, rtol=1e-12, atol=1e-15)


def test_consecutive_elementwise_steps_compose(X):
    a = ngp.serial(ngp.Dense(8, C_b=0.1), ngp.Elementwise("tanh"), ngp.Elementwise("sin"), ngp.Dense(1))
    b = ngp.serial(ngp.Dense(8, C_b=0.1), ngp.Elementwise(lambda x: jnp.sin(jnp.tanh(x))), ngp.Dense(1))
    pa, pb = a.prior(X, warn=False), b.prior(X, warn=False)
    np.testing.assert_allclose(pa.K, pb.K, rtol=1e-13)
    np.testing.assert_allclose(pa.V, pb.V, rtol=1e-12, atol=1e-15)


def test_elementwise_on_inputs_is_a_feature_map(X):
    net = ngp.serial(ngp.Elementwise("tanh"), ngp.Dense(4, C_W=1.3, C_b=0.2))
    F = np.tanh(X)
    np.testing.assert_allclose(net.prior(X).K, 0.2 + 1.3 * F @ F.T / 2, rtol=1e-14)
    assert np.all(net.prior(X).V == 0)


# ----------------------------------------------------------------------------- forward pass
def test_init_apply_is_the_documented_forward_pass(X):
    net = mixed(5)
    params = net.init(jax.random.PRNGKey(0), 2)
    h = X
    for step, p in zip(net.steps, params):
        if isinstance(step, ngp.Dense):
            h = h @ (np.asarray(p["W"]) * math.sqrt(step.C_W / h.shape[1])) + np.asarray(p["b"]) * math.sqrt(step.C_b)
        else:
            h = np.asarray(step.activation.fn(h))
    np.testing.assert_allclose(np.asarray(net.apply(params, jnp.asarray(X))), h, rtol=1e-13)
    assert net.apply(params, jnp.asarray(X)).shape == (3, 1)
    # no bias parameter when C_b = 0
    assert "b" not in ngp.Dense(3).init(jax.random.PRNGKey(1), 2)


def test_residual_forward_pass(X):
    block = ngp.serial(ngp.Elementwise("tanh"), ngp.Dense(4, C_W=1.1, C_b=0.2))
    net = ngp.serial(ngp.Dense(4), ngp.Residual(block, gamma=0.7, xi=0.4), ngp.Elementwise("tanh"), ngp.Dense(1))
    p = net.init(jax.random.PRNGKey(2), 2)
    z = net.steps[0].apply(p[0], X)
    z = 0.7 * z + 0.4 * block.apply(p[1], z)
    out = net.steps[3].apply(p[3], jnp.tanh(z))
    np.testing.assert_allclose(np.asarray(net.apply(p, X)), np.asarray(out), rtol=1e-13)


# ----------------------------------------------------------------------------- contracts over every step
STEPS = [
    ngp.Dense(5, C_W=1.2, C_b=0.1),
    ngp.Elementwise("relu"),
    ngp.Scale(0.5),
    ngp.Residual(ngp.serial(ngp.Elementwise("tanh"), ngp.Dense(6)), gamma=0.8, xi=0.5),
    ngp.serial(ngp.Elementwise("erf"), ngp.Dense(3)),
]


@pytest.mark.parametrize("step", STEPS, ids=repr)
def test_step_contract(step, X):
    # hashable, equal to an equal description, a readable repr
    assert hash(step) == hash(step) and step == step
    assert repr(step)
    # a network ending with a dense readout: prior K symmetric PSD, samples of the right shape
    net = ngp.serial(ngp.Dense(6, C_b=0.1), step, ngp.Elementwise("tanh"), ngp.Dense(2))
    prior = net.prior(X)
    K = prior.K
    np.testing.assert_allclose(K, K.T, atol=1e-15)
    assert np.min(np.linalg.eigvalsh(K)) > -1e-12 * np.max(np.abs(K))
    params = net.init(jax.random.PRNGKey(0), X.shape[1])
    assert net.apply(params, jnp.asarray(X)).shape == (X.shape[0], 2)
    s = ngp.sample_networks(net, X, 8, method="weights")
    assert s.outputs.shape == (8, 3, 2) and np.all(np.isfinite(s.outputs))
    s = ngp.sample_networks(net, X, 8, method="conditional")
    assert s.metric.shape == (8, 3, 3) and np.all(np.isfinite(s.metric))


def test_residual_finite_width_is_refused_by_name(X):
    # residual chains are supported (tests/test_residual_engine.py); blocks applying different
    # activations to the stream are not, and say so by name
    tanh = ngp.Residual(ngp.serial(ngp.Elementwise("tanh"), ngp.Dense(6)), gamma=0.7, xi=0.6)
    relu = ngp.Residual(ngp.serial(ngp.Elementwise("relu"), ngp.Dense(6)), gamma=0.8, xi=0.5)
    net = ngp.serial(ngp.Dense(6), tanh, relu, ngp.Elementwise("relu"), ngp.Dense(1))
    prior = net.prior(X)
    assert prior.K.shape == (3, 3)
    for attr in ("K1", "V"):
        with pytest.raises(NotImplementedError, match=r"Residual\(.*gamma=0.8, xi=0.5\)"):
            getattr(prior, attr)


def test_bad_networks_and_steps():
    with pytest.raises(TypeError, match="width"):
        ngp.Dense(3.5)
    with pytest.raises(ValueError, match="C_W"):
        ngp.Dense(3, C_W=0)
    with pytest.raises(ValueError, match="C_b"):
        ngp.Dense(3, C_b=-1)
    with pytest.raises(TypeError, match="alpha"):
        ngp.Scale("2")
    with pytest.raises(TypeError, match="steps"):
        ngp.serial(ngp.Dense(3), "tanh")
    with pytest.raises(ValueError, match="Dense"):
        ngp.serial(ngp.Elementwise("tanh"))
    with pytest.raises(ValueError, match="block"):
        ngp.Residual(ngp.Elementwise("tanh"))
    X = np.ones((2, 2))
    with pytest.raises(ValueError, match="end with a Dense"):
        ngp.serial(ngp.Dense(3), ngp.Elementwise("tanh")).prior(X)
    with pytest.raises(ValueError, match="keep the width"):
        ngp.serial(ngp.Dense(3), ngp.Residual(ngp.serial(ngp.Elementwise("tanh"), ngp.Dense(4))), ngp.Dense(1)).prior(X)
    with pytest.raises(ValueError, match="pre-activations"):
        ngp.serial(ngp.Dense(3), ngp.Elementwise("tanh"), ngp.Residual(ngp.serial(ngp.Dense(3))), ngp.Dense(1)).prior(X)


# ----------------------------------------------------------------------------- condition / predict
def test_condition_predict_equals_posterior():
    rng = np.random.default_rng(3)
    XA, XB, Y = 0.5 * rng.normal(size=(4, 2)), 0.5 * rng.normal(size=(5, 2)), rng.normal(size=(4, 2)) * 0.5
    net = ngp.serial(ngp.Dense(24, C_b=0.1), ngp.Elementwise("tanh"), ngp.Dense(16, C_W=1.3),
                     ngp.Elementwise("gelu"), ngp.Dense(2, C_b=0.05))
    full = ngp.posterior(net, XA, Y, XB, noise=0.05)
    cond = ngp.condition(net, XA, Y, noise=0.05)
    # ngp.posterior computes the training four-point values in one call with the test ones (a small problem), the
    # condition alone in its own: the same rules, summed in other batches (rounding)
    assert cond.log_evidence == pytest.approx(full.log_evidence, rel=1e-14, abs=0)
    assert cond.gp.log_evidence == full.gp.log_evidence
    for kw in ({}, {"batch_size": 2}, {"batch_size": 1, "full_cov": True}):
        pred = cond.predict(XB, **kw)
        np.testing.assert_allclose(pred.mean, full.mean, rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(pred.var, full.var, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(np.einsum("bibi->bi", full.cov), full.var, rtol=1e-12)
    assert cond.predict(XB).cov is None
    # predicting in two halves gives the same numbers (training work reused)
    halves = [cond.predict(XB[:2]), cond.predict(XB[2:])]
    np.testing.assert_allclose(np.concatenate([h.mean for h in halves]), full.mean, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(np.concatenate([h.var for h in halves]), full.var, rtol=1e-12, atol=1e-15)
    gp = cond.gp.predict(XB)
    np.testing.assert_allclose(gp.mean, full.gp.mean, rtol=1e-12)


def test_a_pickled_condition_predicts_without_the_training_work(monkeypatch):
    """``ngp.condition(...)`` pickles with what it has computed: loaded, its evidence is there (no four-point value
    computed) and its prediction computes only the test points' four-point values, as many as the original's, with
    the same numbers to rounding (docs/posterior.md, "Saving a conditioned model"): unpickled arrays lose their
    memory layout (64-byte alignment, a transposed view stored as a copy), which NumPy's loops round by; measured
    one ulp in one variance under the suite's XLA flags, none without them. (In a new process:
    benchmarks/conditioned_pickle.py, equal predictions at 16, 32 and 64 training points.)"""
    import pickle

    from ngp import _finite

    rng = np.random.default_rng(3)
    XA, XB, Y = 0.5 * rng.normal(size=(4, 2)), 0.5 * rng.normal(size=(2, 2)), rng.normal(size=(4, 2)) * 0.5
    net = ngp.MLP(2, 16, activation="tanh", C_b=0.1, out_dim=2)  # one hidden layer: little to compile
    cond = ngp.condition(net, XA, Y, noise=0.05)
    evidence, evidence_error = cond.log_evidence, cond.log_evidence_error  # the training block
    blob = pickle.dumps(cond)
    seen, values = [], _finite.four_point_values
    monkeypatch.setattr(_finite, "four_point_values", lambda act, K, ms, **kw: seen.append(len(ms)) or values(
        act, K, ms, **kw))
    pred = cond.predict(XB)
    live = sum(seen)
    assert live > 0
    full = cond.predict(XB, full_cov=True)  # reads the dense training vertex (cross-output covariance)
    before = sum(seen)
    loaded = pickle.loads(blob)
    assert loaded.log_evidence == evidence and sum(seen) == before  # nothing computed for it
    got = loaded.predict(XB)
    assert sum(seen) == before + live  # the test points' values, no training ones
    for name in ("mean", "var", "mean_error"):
        np.testing.assert_allclose(getattr(got, name), getattr(pred, name), rtol=1e-14, atol=0, err_msg=name)
    # the dense (N,)*4 vertex and its error are stored packed only, and rebuilt bitwise when read
    layer, live_layer = loaded._prior.layers[-1], cond._prior.layers[-1]
    assert {"V", "V_error"} <= set(live_layer.__dict__) and not {"V", "V_error"} & set(layer.__dict__)
    assert loaded.log_evidence_error == evidence_error
    got_full = loaded.predict(XB, full_cov=True)
    np.testing.assert_allclose(got_full.cov, full.cov, rtol=1e-14, atol=1e-17)
    np.testing.assert_array_equal(layer.V, live_layer.V)
    np.testing.assert_array_equal(layer.V_error, live_layer.V_error)
    back = pickle.loads(pickle.dumps(pred))  # the posterior itself
    for a, b in ((back, pred), (back.gp, pred.gp)):
        np.testing.assert_array_equal(a.mean, b.mean)
        np.testing.assert_array_equal(a.var, b.var)


def test_with_width_matches_a_new_network():
    rng = np.random.default_rng(4)
    XA, XB, Y = rng.normal(size=(3, 2)), rng.normal(size=(2, 2)), rng.normal(size=(3, 1))
    cond = ngp.condition(ngp.MLP(3, 16, C_b=0.1), XA, Y, noise=0.1)
    other = ngp.condition(ngp.MLP(3, 64, C_b=0.1), XA, Y, noise=0.1)
    w = cond.with_width(64)
    assert w.n == 64
    np.testing.assert_allclose(w.log_evidence, other.log_evidence, rtol=1e-12)
    np.testing.assert_allclose(w.predict(XB).mean, other.predict(XB).mean, rtol=1e-12)
    with pytest.raises(ValueError, match="equal hidden widths"):
        ngp.condition(ngp.MLP(3, [8, 16]), XA, Y, noise=0.1).with_width(4)


def test_condition_method_names_the_path():
    """``ngp.condition(..., method=)`` chooses the path (the issue's name; ``solver=`` is the same choice);
    ``net.prior``'s derivative methods pass through to the prior. Construction only solves the training
    kernel, so no Monte-Carlo work runs here."""
    rng = np.random.default_rng(0)
    net = ngp.MLP(3, 16, activation="erf")
    X = rng.normal(size=(6, 2))
    Y = X[:, :1]
    assert ngp.condition(net, X, Y, noise=0.1).method == "exact"
    assert ngp.condition(net, X, Y, noise=0.1, method="exact").method == "exact"
    assert ngp.condition(net, X, Y, noise=0.1, method="matrix_free").method == "matrix_free"
    assert ngp.condition(net, X, Y, noise=0.1, solver="matrix_free").method == "matrix_free"
    assert ngp.condition(net, X, Y, noise=0.1, method="matrix_free", solver="matrix_free").method == "matrix_free"
    with pytest.raises(ValueError, match="method='exact' and solver='matrix_free'"):
        ngp.condition(net, X, Y, noise=0.1, method="exact", solver="matrix_free")
    with pytest.raises(ValueError, match="method: expected one of"):
        ngp.condition(net, X, Y, noise=0.1, method="dense")
    with pytest.raises(ValueError, match="method: ngp.posterior needs the exact path"):
        ngp.posterior(net, X, Y, X[:2], noise=0.1, method="matrix_free")
    # the prior's own option still reaches the prior: same numbers as a prior built with it
    via = ngp.condition(net, X, Y, noise=0.1, method="quadrature")
    direct = ngp.Conditioned(net, X, Y, noise=0.1, method="quadrature")
    assert via.method == "exact" and via.options == {"method": "quadrature"} and via.log_evidence == direct.log_evidence
    default = ngp.condition(net, X, Y, noise=0.1)
    assert via.log_evidence == pytest.approx(default.log_evidence, rel=1e-8)


def test_with_targets_reuses_the_cumulants_and_matches_a_new_condition(monkeypatch):
    """Other targets on the same training inputs (several target columns, resampled targets): ``with_targets``
    computes no four-point value for the training block or for test points already predicted, and its evidence,
    error bound and predictions (full covariance included) are those of a new ``ngp.condition`` on those targets;
    the original is unchanged; targets of the wrong shape raise naming ``Y_train``."""
    from ngp import _finite

    rng = np.random.default_rng(7)
    XA, XB = 0.5 * rng.normal(size=(5, 2)), 0.5 * rng.normal(size=(3, 2))
    Y1, Y2 = 0.5 * rng.normal(size=(5, 2)), 0.5 * rng.normal(size=(5, 2))
    net = ngp.MLP(2, 16, activation="tanh", C_b=0.1, out_dim=2)
    cond = ngp.condition(net, XA, Y1, noise=0.05)
    before = cond.predict(XB, full_cov=True)
    evidence = cond.log_evidence
    seen, values = [], _finite.four_point_values
    monkeypatch.setattr(_finite, "four_point_values", lambda act, K, ms, **kw: seen.append(len(ms)) or values(
        act, K, ms, **kw))
    other = cond.with_targets(Y2)
    got = other.predict(XB, full_cov=True)
    got_evidence, got_error = other.log_evidence, other.log_evidence_error
    assert seen == []  # nothing integrated again
    monkeypatch.setattr(_finite, "four_point_values", values)
    ref_cond = ngp.condition(net, XA, Y2, noise=0.05)
    ref = ref_cond.predict(XB, full_cov=True)
    np.testing.assert_allclose(got_evidence, ref_cond.log_evidence, rtol=1e-12)
    np.testing.assert_allclose(got_error, ref_cond.log_evidence_error, rtol=1e-9)
    for name in ("mean", "var", "cov", "mean_error", "var_error"):
        np.testing.assert_allclose(getattr(got, name), getattr(ref, name), rtol=1e-10, atol=1e-15, err_msg=name)
    np.testing.assert_allclose(got.gp.mean, ref.gp.mean, rtol=1e-12)
    assert np.max(np.abs(got.mean - before.mean)) > 0.01  # the targets matter
    assert cond.log_evidence == evidence
    np.testing.assert_array_equal(cond.predict(XB, full_cov=True).mean, before.mean)
    with pytest.raises(ValueError, match="Y_train"):
        cond.with_targets(Y2[:4])
