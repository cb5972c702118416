"""GP regression against a dense, independent linear-algebra reference."""

import numpy as np
import pytest
from scipy.stats import multivariate_normal

import ngp


@pytest.fixture(scope="module")
def data():
    """Training inputs XA (7, 2), test inputs XB (4, 2), targets Y (7, 3) from one seeded generator."""
    rng = np.random.default_rng(3)
    XA = rng.normal(size=(7, 2))
    XB = rng.normal(size=(4, 2))
    return XA, XB, rng.normal(size=(7, 3))


@pytest.fixture(scope="module")
def net():
    return ngp.MLP(3, 32, activation="tanh", C_W=1.6, C_b=0.2, out_dim=3)


def _dense_reference(net, XA, XB, Y, noise):
    K = np.asarray(net.prior(np.vstack([XA, XB])).K)
    KAA, KBA, KBB = K[:7, :7], K[7:, :7], K[7:, 7:]
    Kt = KAA + noise * np.eye(7)
    inv = np.linalg.inv(Kt)
    mean = KBA @ inv @ Y
    cov = KBB - KBA @ inv @ KBA.T
    logev = sum(multivariate_normal(np.zeros(7), Kt).logpdf(Y[:, i]) for i in range(3))
    return mean, cov, logev


@pytest.mark.parametrize("noise", [0.0, 0.05, 1.0])
def test_gp_posterior_matches_dense_reference(noise, data, net):
    XA, XB, Y = data
    post = ngp.gp_posterior(net, XA, Y, XB, noise=noise)
    mean, cov, logev = _dense_reference(net, XA, XB, Y, noise)
    np.testing.assert_allclose(post.mean, mean, rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(post.cov_test, cov, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(post.var, np.repeat(np.diag(cov)[:, None], 3, 1), rtol=1e-8, atol=1e-10)
    assert abs(post.log_evidence - logev) < 1e-8 * abs(logev)
    assert post.mean.shape == (4, 3) and post.var.shape == (4, 3)
    assert post.cov.shape == (4, 3, 4, 3)
    np.testing.assert_allclose(post.cov[:, 0, :, 0], post.cov_test)
    assert np.all(post.cov[:, 0, :, 1] == 0)


def test_exact_interpolation_at_training_points(data, net):
    XA, XB, Y = data
    post = ngp.gp_posterior(net, XA, Y, XA[:3], noise=0.0)
    np.testing.assert_allclose(post.mean, Y[:3], atol=1e-8)
    assert np.all(np.abs(post.var) < 1e-8)


def test_one_dimensional_targets_for_single_output(data):
    XA, XB, Y = data
    net = ngp.MLP(2, 16, activation="relu", C_W=2.0)
    a = ngp.gp_posterior(net, XA, Y[:, 0], XB, noise=0.1)
    b = ngp.gp_posterior(net, XA, Y[:, :1], XB, noise=0.1)
    np.testing.assert_allclose(a.mean, b.mean)


def test_duplicate_inputs_without_noise_raise_clearly(data, net):
    XA, XB, Y = data
    X = np.vstack([XA, XA[:1]])
    with pytest.raises(np.linalg.LinAlgError, match="singular.*duplicate"):
        ngp.gp_posterior(net, X, np.vstack([Y, Y[:1]]), XB, noise=0.0)
    # with noise it is fine, and jitter is an explicit alternative
    post = ngp.gp_posterior(net, X, np.vstack([Y, Y[:1]]), XB, noise=0.0, jitter=1e-6)
    assert np.all(np.isfinite(post.mean))


def test_bad_gp_inputs(data, net):
    XA, XB, Y = data
    with pytest.raises(ValueError, match="noise"):
        ngp.gp_posterior(net, XA, Y, XB, noise=-0.1)
    with pytest.raises(ValueError, match="Y_train"):
        ngp.gp_posterior(net, XA, Y[:5], XB, noise=0.1)
    with pytest.raises(ValueError, match="Y_train"):
        ngp.gp_posterior(net, XA, Y[:, :2], XB, noise=0.1)
    with pytest.raises(ValueError, match="X_test"):
        ngp.gp_posterior(net, XA, Y, XB[:, :1], noise=0.1)
    with pytest.raises(ValueError, match="X_train"):
        ngp.gp_posterior(net, XA[:, 0], Y, XB, noise=0.1)
    with pytest.raises(ValueError, match="Y_train.*non-finite"):
        ngp.gp_posterior(net, XA, np.where(Y > 1, np.nan, Y), XB, noise=0.1)
