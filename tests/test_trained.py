"""ngp.trained_ensemble: networks trained by gradient descent on the squared error (docs/theory-ntk.md).

Independent checks: the infinite-width ensemble against the gradient-flow ODE solved by a matrix
exponential and against gradient descent iterated step by step; a network without hidden layer
against actual gradient descent on its weights and biases (no NTK involved). The 1/n correction is
the numerics of ``ngp._training_theory`` (checked against Monte Carlo of linearised networks in
tests/test_ntk.py); here: the public function returns exactly those numbers and its parts add up.
"""

import warnings

import numpy as np
import pytest
import scipy.linalg

import ngp
from ngp import _training_theory as tt


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(3)
    XA, XB = rng.normal(size=(4, 3)), rng.normal(size=(2, 3))
    Y = rng.normal(size=(4, 2))
    return XA, XB, Y


@pytest.fixture(scope="module")
def erf_net():
    return ngp.MLP(depth=2, width=16, activation="erf", C_W=1.2, C_b=0.1, out_dim=2, lambda_b=0.5)


def _flow_expm(Theta, K, NA, Y, t):
    """Gradient flow dz/dt = -Theta_{.A} (z_A - y), solved by expm of the augmented linear ODE."""
    N = Theta.shape[0]
    S = np.zeros((NA, N))
    S[:, :NA] = np.eye(NA)
    M = np.zeros((N + Y.shape[1], N + Y.shape[1]))
    M[:N, :N] = -Theta[:, :NA] @ S
    M[:N, N:] = Theta[:, :NA] @ Y
    E = scipy.linalg.expm(t * M)
    Phi, mean = E[:N, :N], E[:N, N:]  # z(t) = Phi z(0) + mean (the mean starts at 0)
    return mean, Phi @ K @ Phi.T


def test_infinite_width_matches_ode_and_iterated_gradient_descent(data, erf_net):
    XA, XB, Y = data
    NA = XA.shape[0]
    r = ngp.trained_ensemble(erf_net, XA, Y, XB, t=0.7, finite_width=False)
    Theta, K = r.prior.Theta, r.prior.K
    np.testing.assert_array_equal(r.prior.X, np.concatenate([XA, XB]))
    mean, cov = _flow_expm(Theta, K, NA, Y, 0.7)
    assert r.mean.shape == (2, 2) and r.cov.shape == (2, 2) and r.mean_train.shape == (4, 2)
    np.testing.assert_allclose(r.mean, mean[NA:], atol=1e-10)
    np.testing.assert_allclose(r.cov, cov[NA:, NA:], atol=1e-10)
    np.testing.assert_allclose(r.mean_train, mean[:NA], atol=1e-10)
    np.testing.assert_allclose(r.cov_train, cov[:NA, :NA], atol=1e-10)
    np.testing.assert_allclose(r.std, np.sqrt(np.diag(cov[NA:, NA:])), atol=1e-10)
    assert r.mean_nlo is None and r.n is None and "infinite width only" in r.included

    eta, steps = 0.15, 23
    g = ngp.trained_ensemble(erf_net, XA, Y, XB, eta=eta, steps=steps, finite_width=False)
    Lmap, m = np.eye(len(K)), np.zeros((len(K), 2))
    for _ in range(steps):
        Lmap = Lmap - eta * Theta[:, :NA] @ Lmap[:NA]
        m = m - eta * Theta[:, :NA] @ (m[:NA] - Y)
    np.testing.assert_allclose(g.mean, m[NA:], atol=1e-10)
    np.testing.assert_allclose(g.cov, (Lmap @ K @ Lmap.T)[NA:, NA:], atol=1e-10)
    np.testing.assert_allclose(g.mean_train, m[:NA], atol=1e-10)
    ref_mean, ref_cov = tt.infinite_width(Theta, K, np.arange(NA), Y, eta=eta, steps=steps)
    np.testing.assert_allclose(g.mean, ref_mean[NA:], atol=1e-12)
    np.testing.assert_allclose(g.cov, ref_cov[NA:, NA:], atol=1e-12)

    c = ngp.trained_ensemble(erf_net, XA, Y, XB, finite_width=False)  # converged: NTK regression
    np.testing.assert_allclose(c.mean, Theta[NA:, :NA] @ np.linalg.solve(Theta[:NA, :NA], Y), atol=1e-10)
    np.testing.assert_allclose(c.mean_train, Y, atol=1e-10)
    np.testing.assert_allclose(c.cov_train, 0, atol=1e-10)
    late_mean, late_cov = _flow_expm(Theta, K, NA, Y, 400.0)
    np.testing.assert_allclose(c.mean, late_mean[NA:], atol=1e-8)
    np.testing.assert_allclose(c.cov, late_cov[NA:, NA:], atol=1e-8)


def _actual_gradient_descent(XA, Y, XB, *, C_W, C_b, lW, lb, eta, steps):
    """Mean and covariance over initialisations of z = W x + b after ``steps`` gradient-descent steps on
    its parameters (learning rates lambda_W / n0, lambda_b); linear in the initial parameters."""
    n0 = XA.shape[1]
    FA, FB = np.hstack([XA, np.ones((len(XA), 1))]), np.hstack([XB, np.ones((len(XB), 1))])
    lam = np.diag([lW / n0] * n0 + [lb])
    G, g = np.eye(n0 + 1), np.zeros((n0 + 1, Y.shape[1]))  # theta(T) = G theta(0) + g, per output neuron
    for _ in range(steps):
        G = G - eta * lam @ FA.T @ FA @ G
        g = g - eta * lam @ FA.T @ (FA @ g - Y)
    Sigma = np.diag([C_W / n0] * n0 + [C_b])
    return FB @ g, FB @ G @ Sigma @ G.T @ FB.T, FA @ g


def test_network_without_hidden_layer_equals_actual_gradient_descent(data):
    """No NTK involved on the reference side: mean and covariance are exact for a linear model."""
    XA, XB, Y = data
    hp = dict(C_W=1.3, C_b=0.2)
    net = ngp.MLP(depth=1, out_dim=2, lambda_W=0.8, lambda_b=0.6, **hp)
    mean, cov, mean_train = _actual_gradient_descent(XA, Y, XB, lW=0.8, lb=0.6, eta=0.2, steps=31, **hp)
    r = ngp.trained_ensemble(net, XA, Y, XB, eta=0.2, steps=31, finite_width=False)  # the network's rates
    np.testing.assert_allclose(r.mean, mean, atol=1e-10)
    np.testing.assert_allclose(r.cov, cov, atol=1e-10)
    np.testing.assert_allclose(r.mean_train, mean_train, atol=1e-10)
    # explicit learning-rate factors override the network's
    mean, cov, _ = _actual_gradient_descent(XA, Y, XB, lW=0.3, lb=1.7, eta=0.2, steps=31, **hp)
    r = ngp.trained_ensemble(net, XA, Y, XB, eta=0.2, steps=31, finite_width=False, lambda_W=0.3, lambda_b=1.7)
    np.testing.assert_allclose(r.mean, mean, atol=1e-10)
    np.testing.assert_allclose(r.cov, cov, atol=1e-10)
    # no hidden layer: deterministic NTK, the infinite-width answer is exact at convergence
    c = ngp.trained_ensemble(net, XA, Y, XB)
    assert c.n is None and "no hidden layer" in c.included
    np.testing.assert_array_equal(c.mean_nlo, c.mean)
    assert not np.any(c.theta1) and not np.any(c.variance) and c.dntk is None


def test_finite_width_mean_is_the_training_theory_and_parts_add_up(data):
    XA, XB, Y = data
    XA, XB, Y = XA[:2], XB[:1], Y[:2]  # three inputs: the four-point quadratures grow fast with N
    NA, train = 2, np.arange(2)
    net = ngp.MLP(depth=3, width=24, activation="erf", C_W=1.1, C_b=0.05, out_dim=2)
    lin = ngp.trained_ensemble(net, XA, Y, XB)
    assert lin.n == 24 and lin.dntk is None and "linearised network" in lin.included
    st = lin.prior.ntk_layers[-1]
    mean, _ = tt.infinite_width(st.Theta, st.K, train, Y)
    m_fw, parts = tt.finite_width_mean(st.Theta, train, Y, n=24, Theta1=st.Theta1, A=st.A, B=st.B, n_out=2)
    np.testing.assert_allclose(lin.mean, mean[NA:], atol=1e-12)
    np.testing.assert_allclose(lin.mean_nlo, m_fw[NA:], atol=1e-12)
    np.testing.assert_allclose(lin.theta1, parts["theta1"][NA:] / 24, atol=1e-12)
    np.testing.assert_allclose(lin.variance, parts["variance"][NA:] / 24, atol=1e-12)
    np.testing.assert_allclose(lin.mean + lin.theta1 + lin.variance, lin.mean_nlo, atol=1e-12)
    assert np.abs(lin.theta1).max() > 1e-4 and np.abs(lin.variance).max() > 1e-4  # both parts are non-trivial

    with pytest.warns(ngp.ExpansionWarning, match="second-order terms"):
        full = ngp.trained_ensemble(net, XA, Y, XB, finite_width="first_order_dntk")
    assert "NOT a complete prediction" in full.included
    st = full.prior.ntk_layers_dntk[-1]
    m_d, parts_d = tt.finite_width_mean(st.Theta, train, Y, n=24, Theta1=st.Theta1, A=st.A, B=st.B,
                                        P=st.P, Q=st.Q, n_out=2)
    np.testing.assert_allclose(full.mean_nlo, m_d[NA:], atol=1e-12)
    np.testing.assert_allclose(full.dntk, parts_d["dntk"][NA:] / 24, atol=1e-12)
    np.testing.assert_allclose(full.mean + full.theta1 + full.variance + full.dntk, full.mean_nlo, atol=1e-12)
    np.testing.assert_allclose(full.theta1, lin.theta1, atol=1e-12)
    np.testing.assert_allclose(full.variance, lin.variance, atol=1e-12)
    assert np.abs(full.dntk).max() > 1e-4


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        (dict(t=1.0), ValueError, "finite_width='linearised'.*t -> infinity only"),
        (dict(eta=0.1, steps=3, finite_width="first_order_dntk"), ValueError, "t -> infinity only"),
        (dict(eta=0.1, finite_width=False), ValueError, "eta: given without steps"),
        (dict(steps=3, finite_width=False), ValueError, "steps: .*learning rate eta"),
        (dict(t=1.0, eta=0.1, steps=3, finite_width=False), ValueError, "^t: "),
        (dict(t=-1.0, finite_width=False), ValueError, "^t: must be >= 0"),
        (dict(eta=0.0, steps=3, finite_width=False), ValueError, "^eta: must be > 0"),
        (dict(eta=0.1, steps=2.5, finite_width=False), TypeError, "^steps: "),
        (dict(finite_width="full"), ValueError, "^finite_width: expected one of"),
        (dict(finite_width=True), ValueError, "^finite_width: expected one of"),
        (dict(nodez=3), TypeError, "unknown option"),
    ],
)
def test_argument_errors_name_the_argument(data, erf_net, kwargs, exc, match):
    XA, XB, Y = data
    with pytest.raises(exc, match=match):
        ngp.trained_ensemble(erf_net, XA, Y, XB, **kwargs)


def test_array_errors_name_the_argument(data, erf_net):
    XA, XB, Y = data
    with pytest.raises(ValueError, match="^Y_train: expected shape"):
        ngp.trained_ensemble(erf_net, XA, Y[:, :1], XB, finite_width=False)
    with pytest.raises(ValueError, match="^X_test: expected 3 features"):
        ngp.trained_ensemble(erf_net, XA, Y, XB[:, :2], finite_width=False)
    with pytest.raises(TypeError, match="^X_test: "):
        ngp.trained_ensemble(erf_net, XA, Y, None, finite_width=False)
    with pytest.raises(ValueError, match="^X_train: duplicated rows"):
        ngp.trained_ensemble(erf_net, np.vstack([XA, XA[:1]]), np.vstack([Y, Y[:1]]), XB, finite_width=False)
    with pytest.raises(ValueError, match="^X_train: the training NTK block is singular"):
        near = np.vstack([XA, XA[:1] + 1e-9])
        ngp.trained_ensemble(erf_net, near, np.vstack([Y, Y[:1]]), XB, finite_width=False)
    # distinct inputs mapped to one feature by a Scale(0) step: the message blamed the inputs alone (a prober)
    zero = ngp.serial(ngp.Dense(8), ngp.Scale(0.0), ngp.Elementwise("erf"), ngp.Dense(8, C_b=0.1),
                      ngp.Elementwise("erf"), ngp.Dense(Y.shape[1]))
    with pytest.raises(ValueError, match=r"^X_train: the training NTK block is singular .* e\.g\. through a "
                                         r"Scale\(0\) step"):
        ngp.trained_ensemble(zero, XA, Y, XB, finite_width=False)


def test_memory_limit_is_checked_before_computing(data, erf_net):
    XA, XB, Y = data
    with pytest.raises(MemoryError, match="max_memory"):
        ngp.trained_ensemble(erf_net, XA, Y, XB, max_memory=1e5)  # 6 inputs: 8 * 6^4 * 22 bytes > 1e5


def test_divergent_gradient_descent_warns(data, erf_net):
    XA, XB, Y = data
    with pytest.warns(ngp.ConvergenceWarning, match="gradient descent diverges"):
        ngp.trained_ensemble(erf_net, XA, Y, XB, eta=50.0, steps=2, finite_width=False)


def test_overflowing_divergent_gradient_descent_names_eta(data, erf_net):
    XA, XB, Y = data
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no ConvergenceWarning or numpy overflow warning before the error
        with pytest.raises(ValueError, match=r"^eta: .*diverges \(eta must be < 2 / .*overflow.*lower eta"):
            ngp.trained_ensemble(erf_net, XA, Y, XB, eta=50.0, steps=400, finite_width=False)


@pytest.mark.parametrize("finite_width", [False, "linearised"])
def test_zero_learning_rates_are_refused_by_name(data, erf_net, finite_width):
    XA, XB, Y = data
    with pytest.raises(ValueError, match="^lambda_W, lambda_b: the training NTK is zero"):
        ngp.trained_ensemble(erf_net, XA, Y, XB, lambda_W=0.0, lambda_b=0.0, finite_width=finite_width)


def test_architecture_without_finite_width_statistics_is_refused(data):
    XA, XB, Y = data
    net = ngp.ResMLP(depth=3, width=16, out_dim=2)
    with pytest.raises(NotImplementedError, match="finite-width NTK statistics .* of Residual steps"):
        ngp.trained_ensemble(net, XA, Y, XB)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        r = ngp.trained_ensemble(net, XA, Y, XB, finite_width=False)  # infinite width: Theta exists
    np.testing.assert_allclose(r.mean_train, Y, atol=1e-10)
