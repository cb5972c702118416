"""NTK at infinite width and its 1/n statistics (ngp._ntk) against actual random networks.

References, all independent of the recursions under test: autodiff Jacobians / Hessian-vector
products of actual networks (tests/_ntk_mc.py), exact closed forms (linear networks, orthant
probabilities), scipy quadrature, and the existing V/K1 code of ngp.Prior. Monte Carlo
tolerances come from the measured standard errors (4.5 sigma over all entries of a tensor).
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.integrate

import ngp
from ngp import _ntk, _training_theory as tt
from tests import _ntk_mc as mc

X3 = np.array([[1.0, 0.3, -0.5], [0.2, -1.0, 0.4], [-0.7, 0.5, 0.9]])
HYPER = dict(C_W=1.5, C_b=0.1, lam_W=1.0, lam_b=0.5)


def _per(depth, **kw):
    return {k: (v,) * depth for k, v in kw.items()}


def _zscore(mc_val, se, th):
    return np.max(np.abs(mc_val - th) / np.maximum(se, 1e-12))


# ----------------------------------------------------------------------------- deterministic checks
def test_state_shapes_and_first_layer():
    st = _ntk.first_layer(X3, finite=True, dntk=True, **HYPER)
    G = X3 @ X3.T / 3
    np.testing.assert_allclose(st.K, 0.1 + 1.5 * G)
    np.testing.assert_allclose(st.Theta, 0.5 + G)
    assert st.A.shape == (3,) * 4 and not np.any(st.A) and not np.any(st.P) and st.n is None


def test_hidden_ntk_recursion_matches_autodiff():
    """The Monte Carlo helper's forward recursion of the hidden NTK equals autodiff Jacobians."""
    for name in ("tanh",):  # the helper's code does not depend on the activation
        fn = ngp.activation(name).fn
        hp = dict(C_W=(1.5,) * 3, C_b=(0.1,) * 3, lam_W=(1.0, 0.7, 1.3), lam_b=(0.5, 0.3, 0.2))
        key = jax.random.PRNGKey(3)
        z, H = mc._hidden(fn, jnp.asarray(X3), key, [5, 6], **hp)
        keys = jax.random.split(key, 4)
        W1 = jax.random.normal(keys[0], (5, 3)) * math.sqrt(1.5 / 3)
        b1 = jax.random.normal(keys[1], (5,)) * math.sqrt(0.1)
        W2 = jax.random.normal(keys[2], (6, 5)) * math.sqrt(1.5 / 5)
        b2 = jax.random.normal(keys[3], (6,)) * math.sqrt(0.1)
        params = [(W1, b1), (W2, b2)]
        Hr = mc.empirical_ntk(fn, params, jnp.asarray(X3), hp["lam_W"], hp["lam_b"])
        np.testing.assert_allclose(np.asarray(Hr), np.asarray(H), atol=1e-12)
        np.testing.assert_allclose(np.asarray(mc.forward(fn, params, jnp.asarray(X3))), np.asarray(z), atol=1e-12)


def test_K1_V_agree_with_prior():
    """The NTK walk's K1 and V on an engine network equal the cumulant engine's (independent code
    paths; relu: exact polar four-point values against the engine's Gauss-Hermite)."""
    for name in ("relu",):  # tanh: both agree with MC (test_layer3_statistics_to_first_order); ~3e-7 apart
        X = X3[:2]
        pr = ngp.MLP(depth=3, width=[10, 20], activation=name, C_W=1.5, C_b=0.1).prior(X, warn=False)
        st = pr.ntk_layers[-1]
        np.testing.assert_allclose(st.K, pr.K, atol=1e-12)
        tol = 1e-4 if name == "relu" else 1e-8  # Prior integrates relu by Gauss-Hermite, ours is exact
        np.testing.assert_allclose(st.V, pr.V, atol=tol * np.abs(pr.V).max())
        np.testing.assert_allclose(st.K1, pr.K1, atol=tol * max(np.abs(pr.K1).max(), 1e-3))


def test_relu_chi_and_four_point_exact():
    """<s' s'> of relu is the orthant probability; polar four-point values match scipy quadrature."""
    act = ngp.activation("relu")
    K = np.array([[1.3, 0.4], [0.4, 0.8]])
    tp = _ntk.two_point_stats(act, K)
    rho = 0.4 / math.sqrt(1.3 * 0.8)
    assert tp.chi[0, 1] == pytest.approx(0.25 + math.asin(rho) / (2 * math.pi), abs=1e-14)
    assert tp.chi[0, 0] == pytest.approx(0.5)
    E4 = _ntk.four_point(act, K, [(1, 1, 0, 0), (0, 0, 0, 0)])
    L = np.linalg.cholesky(K)

    def gauss_expect(f):
        def integrand(v, u):
            z = L @ np.array([u, v])
            return f(z) * math.exp(-0.5 * (u * u + v * v)) / (2 * math.pi)

        return scipy.integrate.dblquad(integrand, -9, 9, -9, 9, epsabs=1e-11)[0]

    relu = lambda x: max(x, 0.0)
    step = lambda x: float(x > 0)
    assert E4[(1, 1, 0, 0)][0, 1, 1, 1] == pytest.approx(
        gauss_expect(lambda z: step(z[0]) * step(z[1]) * relu(z[1]) ** 2), abs=2e-7)
    assert E4[(0, 0, 0, 0)][0, 0, 1, 1] == pytest.approx(
        gauss_expect(lambda z: relu(z[0]) ** 2 * relu(z[1]) ** 2), abs=2e-7)


def test_two_point_derivatives_match_finite_differences():
    """Gradients of <s s>, <s' s'> w.r.t. (K_aa, K_bb, K_ab) (heat-equation identities, Mehler) against
    central differences of the same two-point functions."""
    act = ngp.activation("tanh")
    K = np.array([[0.9, 0.3], [0.3, 0.6]])
    tp = _ntk.two_point_stats(act, K)
    h = 1e-5
    for s, (i, j) in enumerate(((0, 0), (1, 1), (0, 1))):
        E = np.zeros((2, 2))
        E[i, j] = E[j, i] = h
        up, dn = _ntk.two_point_stats(act, K + E), _ntk.two_point_stats(act, K - E)
        fd_phi = (up.phi[0, 1] - dn.phi[0, 1]) / (2 * h)
        fd_chi = (up.chi[0, 1] - dn.chi[0, 1]) / (2 * h)
        assert tp.J_phi[0, 1, s] == pytest.approx(fd_phi, rel=1e-6, abs=1e-9)
        assert tp.J_chi[0, 1, s] == pytest.approx(fd_chi, rel=1e-6, abs=1e-9)


@pytest.mark.parametrize("name", ["tanh", "gelu"])
def test_derivative_tables_at_an_input_of_zero_variance(name):
    """An input at the origin with C_b = 0 has z = 0 exactly: <s^(p)(z_a) s^(q)(z_b)> = s^(p)(0) <s^(q)(z_b)>. The
    Stein coefficients c_{j+p} / K^(p/2) are 0/0 there and came out 0 (chi = <s' s'> = 0 instead of s'(0) <s'>):
    trained_ensemble's default finite-width path put the origin's NTK row at lambda_b alone (1 against 3.96 by the
    infinite-width path and 3.98 from actual networks) and its trained mean 15 sigma off. Checked against 1-D
    adaptive quadrature of <s^(q)>."""
    act = ngp.activation(name)
    K = np.array([[0.0, 0.0], [0.0, 0.7]])
    T = _ntk._derivative_tables(act, K)
    for (p, q), table in T.items():
        d_p, d_q = act.derivative(p), act.derivative(q)
        at0 = float(d_p(jnp.zeros(1))[0])
        mean_q = scipy.integrate.quad(lambda x: float(d_q(jnp.asarray([math.sqrt(0.7) * x]))[0])
                                      * math.exp(-x * x / 2) / math.sqrt(2 * math.pi), -12, 12, epsabs=1e-13)[0]
        assert table[0, 1] == pytest.approx(at0 * mean_q, rel=1e-9, abs=1e-12), (p, q)
    rng = np.random.default_rng(0)
    XA, XB = rng.normal(size=(3, 3)), np.zeros((1, 3))
    net = ngp.MLP(3, 16, activation=name, C_W=2.0)
    y = np.array([1.0, -0.7, 0.5])
    # (width 16, gelu: expansion parameter 0.9, warned about since stop 90; the comparison is exact at any width)
    inf, lin = (ngp.trained_ensemble(net, XA, y, XB, finite_width=fw, warn=False) for fw in (False, "linearised"))
    np.testing.assert_allclose(lin.mean, inf.mean, rtol=1e-10)
    np.testing.assert_allclose(lin.cov, inf.cov, rtol=1e-10)


def test_relu_statistics_name_an_input_of_zero_variance():
    # relu with C_b = 0 and an input x = 0: the statistics said "need distinct, non-collinear inputs" (the inputs are
    # distinct) after a RuntimeWarning of a division by zero
    import warnings

    X = np.vstack([np.random.default_rng(0).normal(size=(2, 3)), np.zeros((1, 3))])
    p = ngp.MLP(3, 8, activation="relu", C_b=0.0).prior(X, warn=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ValueError, match="1 input.s. have zero pre-activation variance .an input x = 0 with C_b"):
            p.Theta1


def test_deep_linear_exact():
    """Linear networks: Theta^(l+1) = lambda_b + lambda_W K + C_W Theta, and the NTK mean has no 1/n shift."""
    X = X3
    st = _ntk.flow(X, ngp.activation("linear"), depth=4, widths=[8, 12, 8], **HYPER)
    K = 0.1 + 1.5 * X @ X.T / 3
    Th = 0.5 + X @ X.T / 3
    for layer in st[1:]:
        Th = 0.5 + 1.0 * K + 1.5 * Th
        K = 0.1 + 1.5 * K
        np.testing.assert_allclose(layer.Theta, Th, rtol=1e-12)
        np.testing.assert_allclose(layer.K, K, rtol=1e-12)
        assert np.abs(layer.Theta1).max() < 1e-10 and np.abs(layer.K1).max() < 1e-10


# ----------------------------------------------------------------------------- Monte Carlo
@pytest.fixture(scope="module")
def layer2_samples():
    act = ngp.activation("tanh")
    n, S = 8, 6000
    smp = mc.sample_stats(act, X3, widths=[n], samples=S, seed=1, batch=500, **_per(2, **HYPER))
    return mc.estimates(smp, n, 3), _ntk.flow(X3, act, depth=2, widths=[n], **HYPER)[-1]


@pytest.mark.parametrize("name", ["V", "A", "B", "D", "F"])
def test_layer2_statistics_exact_at_any_width(layer2_samples, name):
    """One hidden layer: the fresh terms are the whole answer at any width (no 1/n^2 residual)."""
    est, st = layer2_samples
    assert _zscore(est[name], est[name + "_se"], getattr(st, name)) < 4.5
    assert np.abs(getattr(st, name)).max() > 0.1  # a non-trivial tensor


def test_layer2_mean_ntk_has_no_shift(layer2_samples):
    est, st = layer2_samples
    assert _zscore(est["T_mean"], est["T_mean_se"], st.Theta) < 4.5
    assert np.all(st.Theta1 == 0)


@pytest.fixture(scope="module")
def layer3_samples():
    """Depth 3, widths 24: the propagated terms of every recursion."""
    act = ngp.activation("tanh")
    n, S = 24, 4000
    smp = mc.sample_stats(act, X3, widths=[n, n], samples=S, seed=2, batch=500, **_per(3, **HYPER))
    return mc.estimates(smp, n, 3), _ntk.flow(X3, act, depth=3, widths=[n, n], **HYPER)[-1], n


@pytest.mark.parametrize("name", ["Theta1", "A", "B", "D", "F"])
def test_layer3_statistics_to_first_order(layer3_samples, name):
    """MC of actual networks agrees with the recursions up to the 1/n^2 remainder.

    Tolerance: 4.5 standard errors plus 3 max|theory| / n (the measured remainder of these
    statistics is below 2.8 max|theory| / n at n >= 16; benchmarks/ntk_validation.py fits its
    1/n slope). Dropping any propagated term makes the error O(max|theory|) and fails.
    """
    est, st, n = layer3_samples
    if name == "Theta1":
        mcv, se, th = n * (est["T_mean"] - st.Theta), n * est["T_mean_se"], st.Theta1
    else:
        mcv, se, th = est[name], est[name + "_se"], getattr(st, name)
    resid = np.abs(mcv - th) - 4.5 * se
    assert np.max(resid) < 3.0 * np.abs(th).max() / n, (name, np.max(np.abs(mcv - th)), np.abs(th).max())


def test_theta_against_empirical_ntk_relu():
    """relu (closed forms) infinite-width NTK against the empirical NTK of wide networks."""
    act = ngp.activation("relu")
    X = X3[:2]
    n, S = 48, 1000
    hp = dict(C_W=2.0, C_b=0.05, lam_W=1.0, lam_b=0.3)
    smp = mc.sample_stats(act, X, widths=[n, n], samples=S, seed=4, batch=500, **_per(3, **hp))
    st = _ntk.flow(X, act, depth=3, widths=[n, n], **hp)[-1]
    m, se = mc.mean_se(smp["T"])
    # E[H] = Theta + Theta1/n + O(1/n^2)
    assert _zscore(m, se, st.Theta + st.Theta1 / n) < 4.5
    assert np.all(np.abs(m - st.Theta) < 4.5 * se + 3 * np.abs(st.Theta1) / n + 1e-3)


@pytest.fixture(scope="module")
def dntk_samples():
    """E[dH z] of depth-2 networks with two outputs (separates P and Q) by Hessian-vector products."""
    act = ngp.activation("tanh")
    X = X3[:2]
    n, S, depth = 8, 3000, 2
    hp = _per(depth, **HYPER)
    dims = (3, n, 2)

    def one(k):
        p = mc.init_params(k, dims, hp["C_W"], hp["C_b"])
        dH, z = mc.dntk_times_z(act.fn, p, jnp.asarray(X), hp["lam_W"], hp["lam_b"])
        P = 0.5 * (jnp.einsum("abc,d->abcd", dH[0, 1, 1], z[0]) + jnp.einsum("abc,d->abcd", dH[1, 0, 0], z[1]))
        Q = 0.5 * (jnp.einsum("abc,d->abcd", dH[0, 0, 1], z[1]) + jnp.einsum("abc,d->abcd", dH[1, 1, 0], z[0]))
        return P, Q

    f = jax.jit(jax.vmap(one))
    keys = jax.random.split(jax.random.PRNGKey(1), S)
    Ps, Qs = zip(*[f(keys[s:s + 1000]) for s in range(0, S, 1000)])
    st = _ntk.flow(X, act, depth=depth, widths=[n], dntk=True, **HYPER)[-1]
    return n * np.concatenate(Ps), n * np.concatenate(Qs), st


@pytest.mark.parametrize("name", ["P", "Q"])
def test_dntk_correlators_exact_at_layer_2(dntk_samples, name):
    Ps, Qs, st = dntk_samples
    arr = Ps if name == "P" else Qs
    m, se = mc.mean_se(arr)
    th = getattr(st, name)
    assert _zscore(m, se, th) < 4.5
    assert np.abs(th).max() > 0.1


# ----------------------------------------------------------------------------- trained networks
def test_gradient_descent_closed_form_matches_iteration():
    """Kernel gradient descent iterated step by step equals the closed form (mean and covariance)."""
    rng = np.random.default_rng(0)
    Z = rng.normal(size=(6, 6))
    Th = Z @ Z.T / 6 + 0.5 * np.eye(6)
    K = 0.7 * Th + 0.1
    train = np.array([0, 2, 3])
    y = np.array([0.5, -1.0, 0.2])
    eta, steps = 0.1, 37
    mean, cov = tt.infinite_width(Th, K, train, y, eta=eta, steps=steps)
    # z_t = z_0 - M_t (z_A(0) - y) is linear in z_0: propagate the mean and the linear map
    Lmap, m = np.eye(6), np.zeros(6)
    for _ in range(steps):
        Lmap = Lmap - eta * Th[:, train] @ Lmap[train]
        m = m - eta * Th[:, train] @ (m[train] - y)
    np.testing.assert_allclose(mean, m, atol=1e-12)
    np.testing.assert_allclose(cov, Lmap @ K @ Lmap.T, atol=1e-12)
    mean_inf, cov_inf = tt.infinite_width(Th, K, train, y)
    np.testing.assert_allclose(mean_inf[train], y, atol=1e-12)
    np.testing.assert_allclose(cov_inf[np.ix_(train, train)], 0, atol=1e-12)


def test_linearised_network_trained_mean_at_first_order():
    """Ensemble mean of converged linearised networks (the NTK frozen at its random initial value):
    Monte Carlo against infinite width + (Theta1, A, B) correction; the correction is resolved."""
    act = ngp.activation("tanh")
    X = np.array([[1.0, 0.3, -0.5], [0.2, -1.0, 0.4], [-0.7, 0.5, 0.9], [0.5, 0.5, 0.5], [-0.3, -0.8, 0.1]])
    X = X * math.sqrt(3) / np.linalg.norm(X, axis=1, keepdims=True)
    train, test = np.array([0, 1, 2]), np.array([3, 4])
    y = 1.2 * np.array([1.0, -0.7, 0.5])
    hp = dict(C_W=1.0, C_b=0.0, lam_W=1.0, lam_b=0.0)
    n, S = 24, 2000
    st = _ntk.flow(X, act, depth=3, widths=[n, n], **hp)[-1]
    m_inf, _ = tt.infinite_width(st.Theta, st.K, train, y)
    m_fw, parts = tt.finite_width_mean(st.Theta, train, y, n=n, Theta1=st.Theta1, A=st.A, B=st.B)
    Xj, yj = jnp.asarray(X), jnp.asarray(y)
    per = _per(3, **hp)

    def lin(key):  # output-sign-averaged converged prediction H_{.A} H_AA^{-1} y of one network
        k1, k2 = jax.random.split(key)
        z, H = mc._hidden(act.fn, Xj, k1, [n, n], **per)
        w = jax.random.normal(k2, (n,)) * math.sqrt(hp["C_W"] / n)
        s, ds = act.fn(z), jax.grad(lambda v: jnp.sum(act.fn(v)))(z)
        g = w[:, None] * ds  # (n, N)
        Hout = hp["lam_W"] * (s.T @ s) / n + jnp.einsum("ja,jkab,kb->ab", g, H, g)
        return Hout[:, train] @ jnp.linalg.solve(Hout[np.ix_(train, train)], yj)

    f = jax.jit(jax.vmap(lin))
    keys = jax.random.split(jax.random.PRNGKey(5), S)
    vals = np.concatenate([np.asarray(f(keys[s:s + 1000])) for s in range(0, S, 1000)])
    m, se = mc.mean_se(vals)
    corr = (parts["theta1"] + parts["variance"])[test]
    mc_shift, se_n = n * (m - m_inf)[test], n * se[test]
    assert np.all(np.abs(mc_shift) > 4 * se_n)  # the finite-width shift is resolved
    # first order: remainder O(1/n) relative (measured ~10% at n = 32) plus 4 standard errors
    assert np.all(np.abs(mc_shift - corr) < 4 * se_n + 0.25 * np.abs(corr))
