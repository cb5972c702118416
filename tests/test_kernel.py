"""Infinite-width kernels: exact recursions and Monte Carlo of actual random networks."""

import jax.numpy as jnp
import numpy as np
import pytest

import ngp


@pytest.fixture(scope="module")
def X3():
    """Four inputs in three dimensions."""
    return np.random.default_rng(7).normal(size=(4, 3))


def test_first_layer_and_deep_linear_closed_form(X3):
    net = ngp.MLP(4, 16, activation="linear", C_W=[1.3, 0.8, 1.1, 0.9], C_b=[0.1, 0.2, 0.0, 0.3])
    prior = net.prior(X3)
    K = 0.1 + 1.3 * X3 @ X3.T / 3
    np.testing.assert_allclose(prior.kernels[0], K, rtol=1e-14)
    for cw, cb, Kl in zip([0.8, 1.1, 0.9], [0.2, 0.0, 0.3], prior.kernels[1:]):
        K = cb + cw * K
        np.testing.assert_allclose(Kl, K, rtol=1e-13)
    np.testing.assert_allclose(prior.K, K, rtol=1e-13)


def test_relu_angle_recursion():
    # THEORY 7.4: cos theta' = [sin theta + (pi - theta) cos theta] / pi, norms preserved at C_W = 2.
    X = np.array([[1.0, 0.0], [np.cos(1.0), np.sin(1.0)]]) * np.sqrt(2.0)
    net = ngp.MLP(6, 32, activation="relu", C_W=2.0, C_b=0.0)
    prior = net.prior(X)
    theta = 1.0
    for Kl in prior.kernels[1:]:
        theta = np.arccos((np.sin(theta) + (np.pi - theta) * np.cos(theta)) / np.pi)
        np.testing.assert_allclose(np.diag(Kl), [2.0, 2.0], rtol=1e-14)
        np.testing.assert_allclose(Kl[0, 1] / 2.0, np.cos(theta), rtol=1e-13)


def test_depth_one_is_first_layer(X3):
    net = ngp.MLP(1, activation="tanh", C_W=2.0, C_b=0.5)
    np.testing.assert_allclose(net.prior(X3).K, 0.5 + 2 * X3 @ X3.T / 3)


def test_methods_agree_on_a_deep_network(X3):
    net = ngp.MLP(5, 8, activation="erf", C_W=1.7, C_b=0.2)
    a = net.prior(X3).K
    b = net.prior(X3, method="mehler").K
    c = net.prior(X3, method="quadrature", quad_nodes=100).K
    assert float(jnp.max(jnp.abs(a - b))) < 1e-12
    assert float(jnp.max(jnp.abs(a - c))) < 1e-12


def _check_mc(net, X, samples, method, seed, batch_size=256):
    prior = net.prior(X)
    # each network's draws come from its own key (split from seed), so batch_size changes memory only
    s = ngp.sample_networks(net, X, samples, seed=seed, method=method, batch_size=batch_size)
    mean = s.metric.mean(0)
    se = s.metric.std(0, ddof=1) / np.sqrt(samples)
    diff = np.abs(mean - np.asarray(prior.K))
    if net.depth == 1:  # the metric is the deterministic first-layer kernel
        assert diff.max() < 1e-12
        se = np.ones_like(se)
    z = diff / se
    # output samples too (noisier): E[z_i z_i] over neurons
    zz = np.einsum("sai,sbi->sab", s.outputs, s.outputs) / net.out_dim
    z2 = np.abs(zz.mean(0) - np.asarray(prior.K)) / (zz.std(0, ddof=1) / np.sqrt(samples))
    return z.max(), z2.max()


@pytest.mark.parametrize(
    "activation,depth",
    [("tanh", 4), ("relu", 3), ("gelu", 2), ("custom", 4), ("tanh", 1)],
)
def test_kernel_against_actual_weights(activation, depth, X3):
    # Real weight matrices of width 512. The s.e. of the mean metric goes like 1/sqrt(n samples) and the
    # normals drawn like n^2 samples, so 192 networks of width 512 resolve K as well as 96 of width 1024
    # (s.e./K 0.008-0.026 either way) with half the normals; the 1/n bias K1/n is at most 0.2 s.e.
    # (measured: tanh 0.12, relu 0.08, custom 0.20; 0.24-0.43 at width 256)
    act = (lambda x: jnp.sin(x) + 0.3 * jnp.tanh(2 * x)) if activation == "custom" else activation
    net = ngp.MLP(depth, 512, activation=act, C_W=1.5, C_b=0.1, out_dim=2)
    # 8 networks per batch: same draws; a depth-4 run peaks 0.2 GB above its start, against 0.59 GB with 32 per
    # batch (the random-weight temporaries), in the same time
    zmax, z2max = _check_mc(net, X3, 192, "weights", seed=depth, batch_size=8)
    assert zmax < 4.5 and z2max < 4.5


@pytest.mark.parametrize("activation", ["tanh", "relu", "gelu", "swish", "erf"])
@pytest.mark.parametrize("depth", [2, 4])
def test_kernel_against_conditional_sampler(activation, depth, X3):
    net = ngp.MLP(depth, 2048, activation=activation, C_W=[1.2, 1.8, 1.5, 1.0][:depth], C_b=0.05)
    zmax, _ = _check_mc(net, X3, 1500, "conditional", seed=11 * depth)
    assert zmax < 4.5


# ----------------------------------------------------------------------------- variances beyond the Mehler range
@pytest.fixture(scope="module")
def wide_kernel():
    """Four inputs of variances 1, 80, 400 and 900 (three beyond the Mehler series' range, K ~ 36), correlated."""
    rng = np.random.default_rng(3)
    X = rng.normal(size=(4, 3))
    X *= np.sqrt(np.array([1.0, 80.0, 400.0, 900.0]) / np.sum(X**2, axis=1))[:, None]
    return X @ X.T


@pytest.mark.parametrize("name", ["tanh", "swish", "sigmoid"])
def test_two_point_matrix_beyond_the_mehler_range_matches_adaptive_quadrature(name, wide_kernel):
    """Entries with an input beyond K_ACCURATE come from the four-point engine's two-input rule (the Mehler series,
    capped at 3000 terms, is off by up to ~1e-5 there): every entry within 1e-11 of nested adaptive quadrature split
    at the activations' transitions, with no warning; the capped series alone misses by far more (so this test tells
    the two apart)."""
    import math
    import warnings

    from ngp._kernel import two_point_matrix

    from ._reference import gauss_pair_sharp

    act = ngp.activation(name)
    f = {"tanh": math.tanh, "swish": lambda z: z / (1 + math.exp(-z)) if z > -700 else 0.0,
         "sigmoid": lambda z: 1 / (1 + math.exp(-z)) if z > -700 else 0.0}[name]
    K = wide_kernel
    ref = np.array([[gauss_pair_sharp(f, K[a, a], K[b, b], K[a, b]) for b in range(4)] for a in range(4)])
    with warnings.catch_warnings():
        warnings.simplefilter("error", ngp.AccuracyWarning)
        E = np.asarray(two_point_matrix(act, K))
    scale = np.sqrt(np.outer(np.diag(ref), np.diag(ref)))  # |E_ab| <= sqrt(E_aa E_bb)
    np.testing.assert_array_less(np.abs(E - ref), 1e-11 * np.maximum(scale, 1.0))
    with pytest.warns(ngp.AccuracyWarning, match="variance reaches"):
        capped = np.asarray(two_point_matrix(act, K, method="mehler"))
    if name != "swish":  # swish grows like relu: its capped series stays within ~1e-10 relative
        assert np.max(np.abs(capped - ref) / np.maximum(scale, 1.0)) > 1e-9


def test_prior_at_a_large_variance_matches_one_dimensional_quadrature():
    """MLP(2, 32), tanh, one input of variance 400: K = <tanh^2> and V = <tanh^4> - <tanh^2>^2 (C_W = 1, C_b = 0)
    against adaptive quadrature, to 1e-13, within the stated V_error; stop 85 measured K off by 1.0e-5 and V by 1.9e-5
    with V_error 3.5e-14 (the capped Mehler series)."""
    import warnings

    from ._reference import quiet_quad as _quiet_quad

    def moment(p, k=400.0):
        return _quiet_quad(lambda x: np.tanh(np.sqrt(k) * x) ** p * np.exp(-x * x / 2) / np.sqrt(2 * np.pi),
                          -40, 40, points=[0.0], epsabs=1e-15, epsrel=1e-14, limit=1000)[0]

    with warnings.catch_warnings():
        warnings.simplefilter("error", ngp.AccuracyWarning)
        prior = ngp.MLP(2, 32, activation="tanh", C_W=1.0, C_b=0.0).prior(np.array([[20.0]]))
        K, V, V_error = (float(np.asarray(a).ravel()[0]) for a in (prior.K, prior.V, prior.V_error))
    e2, e4 = moment(2), moment(4)
    assert abs(K - e2) < 1e-13
    assert abs(V - (e4 - e2**2)) < max(1e-13, 4 * V_error)


def test_joint_prior_at_large_variances_has_the_training_priors_kernel_bit_for_bit():
    """The pair rule's batched calls round differently by batch (~1e-16), which made a joint prior's training block
    differ from the training prior's kernel and so refused the four-point take-over of a prediction (recomputing the
    training vertex); its entries are remembered per block, so the bits agree."""
    rng = np.random.default_rng(0)
    X, Z = 12 * rng.normal(size=(6, 2)), 12 * rng.normal(size=(3, 2))  # first-layer variances up to ~300
    small = 0.5 * rng.normal(size=(6, 2))
    small[0] *= 30  # one training input beyond range, test inputs (variances ~10) above the others: the series' orders
    net = ngp.MLP(3, 64, activation="tanh")  # must not follow the largest variance in range (a review found that)
    for XA, XB in ((X, Z), (small, 2 * rng.normal(size=(2, 2)))):
        train, joint = net.prior(XA), net.prior(np.vstack([XA, XB]))
        for lt, lj in zip(train.layers, joint.layers):
            np.testing.assert_array_equal(np.asarray(lt.K), np.asarray(lj.K)[:6, :6])


def test_beyond_the_pair_rule_budget_the_capped_series_runs_with_its_warning(wide_kernel, monkeypatch):
    from ngp import _kernel

    monkeypatch.setattr(_kernel, "LARGE_ENTRIES_MAX", 5)  # the wide kernel has 3 inputs beyond range: 9 entries
    act = ngp.activation("tanh")
    with pytest.warns(ngp.AccuracyWarning, match="variance reaches"):
        E = np.asarray(_kernel.two_point_matrix(act, wide_kernel))
        capped = np.asarray(_kernel.two_point_matrix(act, wide_kernel, method="mehler"))
    np.testing.assert_array_equal(E, capped)
