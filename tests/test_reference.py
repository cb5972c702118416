"""Reference solvers (ngp.reference): importance sampling against exact answers, NUTS against IS."""

import math
import warnings

import numpy as np
import pytest
from scipy import integrate

import ngp
from ngp.reference import importance_posterior, log_likelihood, nuts_posterior
from ngp.reference._importance import RCOND_MIN


@pytest.fixture(scope="module")
def data():
    """Each test's inputs (and targets), drawn from one seeded generator in file order."""
    rng = np.random.default_rng(7)
    normal = rng.normal
    d = {}
    for noise in (0.0, 0.2):
        d["depth_one", noise] = normal(size=(3, 3)), normal(size=(2, 3)), normal(size=(3, 2))
    d["batches"] = normal(size=(2, 2)), normal(size=(2, 2)), 0.5 * normal(size=(2, 2))
    d["wide"] = normal(size=(2, 2)), normal(size=(1, 2))
    d["importance_bad"] = normal(size=(3, 2)), normal(size=(2, 2)), normal(size=(3, 2))
    d["nuts_bad"] = normal(size=(3, 2)), normal(size=(2, 2)), normal(size=(3, 2))
    return d


# --------------------------------------------------------------------------- importance sampling


@pytest.mark.parametrize("noise", [0.0, 0.2])
def test_depth_one_is_exactly_the_gp(noise, data):
    # depth 1: G_hat is the deterministic first-layer kernel, so every weight is equal
    net = ngp.MLP(1, activation="tanh", C_W=1.3, C_b=0.2, out_dim=2)
    XA, XB, Y = data["depth_one", noise]
    post = importance_posterior(net, XA, Y, XB, noise=noise, num_samples=500)
    gp = ngp.gp_posterior(net, XA, Y, XB, noise=noise)
    np.testing.assert_allclose(post.mean, gp.mean, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(post.var, gp.var, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(post.cov, gp.cov, rtol=1e-10, atol=1e-10)
    assert abs(post.log_evidence - gp.log_evidence) < 1e-10 * abs(gp.log_evidence)
    assert post.ess == pytest.approx(500, rel=1e-12) and post.num_samples == 500
    assert np.all(post.mean_se < 1e-12) and np.all(post.var_se < 1e-12) and post.log_evidence_se < 1e-12
    assert post.num_singular == 0


def _scale_mixture_reference(n1, K0, n_train, Y, noise):
    """Posterior moments for G = s K0, s ~ chi2(n1)/n1 (depth-2 linear net, C_b = 0, one input dim).

    Integrates over t = sqrt(chi2) (a smooth integrand for every n1) with adaptive quadrature.
    Returns log evidence, mean (N_test, out), var (N_test, out) and Cov(z_0, z_1) (N_test,).
    """
    A, B = slice(0, n_train), slice(n_train, None)
    out = Y.shape[1]
    log_c = -(n1 / 2 - 1) * math.log(2) - math.lgamma(n1 / 2)

    def integrand(t):
        s = t * t / n1
        K = s * K0[A, A] + noise * np.eye(n_train)
        Kinv = np.linalg.inv(K)
        _, logdet = np.linalg.slogdet(2 * np.pi * K)
        log_like = -0.5 * np.sum(Y * (Kinv @ Y)) - 0.5 * out * logdet
        P = s * K0[B, A] @ Kinv
        m = P @ Y
        c = np.diag(s * K0[B, B] - P @ (s * K0[A, B]))
        if t == 0.0:
            return np.zeros(1 + 3 * m.shape[0] * out)
        dens = math.exp(log_c + (n1 - 1) * math.log(t) - 0.5 * t * t + log_like)
        return dens * np.concatenate([[1.0], m.ravel(), (c[:, None] + m**2).ravel(), m[:, 0] * m[:, 1]])

    v, _ = integrate.quad_vec(integrand, 0, np.inf, epsabs=0, epsrel=1e-11, limit=2000)
    nB = K0.shape[0] - n_train
    Z, rest = v[0], v[1:] / v[0]
    mean = rest[: nB * out].reshape(nB, out)
    second = rest[nB * out: 2 * nB * out].reshape(nB, out)
    cross = rest[2 * nB * out:]
    return math.log(Z), mean, second - mean**2, cross - mean[:, 0] * mean[:, 1]


@pytest.mark.parametrize(
    "width, x_train, noise",
    [(1, [0.9], 0.0), (2, [0.7, -1.2], 0.1)],
    ids=["width1-exact", "width2-noisy"],
)
def test_scale_mixture_against_quadrature(width, x_train, noise):
    # linear activation, C_b = 0, one input dimension: the prior is a Gaussian scale mixture
    C_W = (1.4, 1.1)
    net = ngp.MLP(2, width, activation="linear", C_W=C_W, C_b=0.0, out_dim=2)
    XA = np.array(x_train)[:, None]
    XB = np.array([[0.4], [-1.5]])
    Y = np.array([[0.8, -0.5], [-1.1, 0.3]])[: len(x_train)]
    X = np.vstack([XA, XB])
    K0 = C_W[0] * C_W[1] * (X @ X.T)
    log_z, mean, var, cross = _scale_mixture_reference(width, K0, len(x_train), Y, noise)
    post = importance_posterior(net, XA, Y, XB, noise=noise, num_samples=200_000, seed=3)
    assert post.ess > 0.2 * post.num_samples
    assert abs(post.log_evidence - log_z) < 4 * post.log_evidence_se
    assert np.all(np.abs(post.mean - mean) <= 4 * post.mean_se + 1e-7)
    assert np.all(np.abs(post.var - var) <= 4 * post.var_se + 1e-7)
    # covariance between the two output neurons (finite-width "wiring"); no s.e., loose check
    np.testing.assert_allclose(post.cov[:, 0, :, 1].diagonal(), cross, atol=5e-3 + 0.05 * np.abs(cross).max())
    if noise > 0:
        assert np.all(post.mean_se > 0) and abs(cross).max() > 1e-3  # a non-trivial check
    else:
        # one exactly observed point of a linear function: the test outputs are determined
        # (to the sampler's precision: the square root of a rank-1 kernel is good to ~1e-8)
        np.testing.assert_allclose(post.mean, XB / XA[0, 0] * Y[0], rtol=1e-7)
        assert np.all(np.abs(post.var) < 1e-7)


def _direct_reference(metric, Y, n_train, noise):
    """Self-normalised IS moments and delta-method s.e., computed draw by draw (NumPy)."""
    ll, ms, Cs = [], [], []
    nB, out = metric.shape[1] - n_train, Y.shape[1]
    for G in metric:
        K = G[:n_train, :n_train] + noise * np.eye(n_train)
        try:
            ok = np.min(np.diag(np.linalg.cholesky(K)) ** 2) > RCOND_MIN * np.trace(K)
        except np.linalg.LinAlgError:
            ok = False
        if not ok:
            ll.append(-np.inf), ms.append(np.zeros((nB, out))), Cs.append(np.zeros((nB, nB)))
            continue
        Kinv = np.linalg.inv(K)
        _, logdet = np.linalg.slogdet(2 * np.pi * K)
        ll.append(-0.5 * np.sum(Y * (Kinv @ Y)) - 0.5 * out * logdet)
        ms.append(G[n_train:, :n_train] @ Kinv @ Y)
        Cs.append(G[n_train:, n_train:] - G[n_train:, :n_train] @ Kinv @ G[:n_train, n_train:])
    ll, m, C = np.array(ll), np.array(ms), np.array(Cs)
    w = np.exp(ll - ll.max())
    W = w.sum()
    mean = np.einsum("s,sbi->bi", w, m) / W
    g = np.diagonal(C, axis1=1, axis2=2)[:, :, None] + m**2
    Eg = np.einsum("s,sbi->bi", w, g) / W
    mean_se = np.sqrt(np.einsum("s,sbi->bi", w**2, (m - mean) ** 2)) / W
    phi = (g - Eg) - 2 * mean * (m - mean)
    var_se = np.sqrt(np.einsum("s,sbi->bi", w**2, phi**2)) / W
    log_ev = ll.max() + math.log(W / len(w))
    return dict(mean=mean, var=Eg - mean**2, mean_se=mean_se, var_se=var_se, log_evidence=log_ev,
                ess=W**2 / np.sum(w**2), num_singular=int(np.sum(~np.isfinite(ll))), loglik=ll)


def test_batches_and_singular_draws_match_a_direct_computation(data):
    # ReLU with C_b = 0 at width 2: a training input whose hidden units are all off gives a
    # singular G_AA (zero likelihood for noise = 0). The draws are those of sample_networks,
    # processed in several batches (the last one padded).
    net = ngp.MLP(2, 2, activation="relu", C_W=2.0, C_b=0.0, out_dim=2)
    XA, XB, Y = data["batches"]
    S = 2000
    post = importance_posterior(net, XA, Y, XB, noise=0.0, num_samples=S, seed=11, batch_size=450)
    metric = ngp.sample_networks(net, np.vstack([XA, XB]), S, seed=11, method="conditional").metric
    ref = _direct_reference(metric, Y, 2, 0.0)
    assert post.num_singular == ref["num_singular"] > 0.2 * S
    for name in ("mean", "var", "mean_se", "var_se"):
        np.testing.assert_allclose(getattr(post, name), ref[name], rtol=1e-8, atol=1e-12, err_msg=name)
    assert post.log_evidence == pytest.approx(ref["log_evidence"], rel=1e-10)
    assert post.ess == pytest.approx(ref["ess"], rel=1e-10)
    ll = log_likelihood(metric[:, :2, :2], Y, noise=0.0)
    np.testing.assert_allclose(ll, ref["loglik"], rtol=1e-10)
    # without a batch_size the default batch is cut to what max_memory holds (the default batch, all 2000 draws
    # here, was refused with a MemoryError that advised a smaller batch_size): 450 draws, the same batches as above
    N = XA.shape[0] + XB.shape[0]
    per = 2 * net.memory_per_network(XA.shape[1], N, "conditional") + 8 * N * (N + net.out_dim)
    cut = importance_posterior(net, XA, Y, XB, noise=0.0, num_samples=S, seed=11, max_memory=450.5 * per)
    assert (cut.log_evidence, cut.ess) == (post.log_evidence, post.ess)
    np.testing.assert_array_equal(cut.mean, post.mean)


def test_sampling_memory_errors_advise_only_what_the_caller_can_change(data):
    """``importance_posterior``'s ``MemoryError`` advised ``method='conditional'``, an argument it does not have (it
    samples that way already); ``sample_networks`` with ``method="weights"`` still gets the advice."""
    XA, XB, Y = data["batches"]
    net = ngp.MLP(2, 64, out_dim=Y.shape[1])
    with pytest.raises(MemoryError, match="batch_size") as caught:
        importance_posterior(net, XA, Y, XB, noise=0.1, num_samples=100, batch_size=100, max_memory=1000)
    assert "method" not in str(caught.value)
    with pytest.raises(MemoryError, match="method='conditional'"):
        ngp.sample_networks(net, XA, 100, max_memory=1000)
    with pytest.raises(MemoryError) as caught:
        ngp.sample_networks(net, XA, 100, max_memory=1000, method="conditional")
    assert "method" not in str(caught.value)


def test_wide_network_approaches_the_gp(data):
    n = 1024
    net = ngp.MLP(3, n, activation="tanh", C_W=1.2, C_b=0.05, out_dim=1)
    XA, XB = data["wide"]
    Y = np.array([[0.6], [-0.4]])
    gp = ngp.gp_posterior(net, XA, Y, XB, noise=0.1)
    post = importance_posterior(net, XA, Y, XB, noise=0.1, num_samples=2000, seed=1)
    assert post.ess > 0.99 * post.num_samples
    # finite-width corrections are O(1/n) with O(1) coefficients (THEORY.md section 10)
    assert np.all(np.abs(post.mean - gp.mean) <= 4 * post.mean_se + 2.0 / n)
    assert np.all(np.abs(post.var - gp.var) <= 4 * post.var_se + 2.0 / n)
    assert abs(post.log_evidence - gp.log_evidence) <= 4 * post.log_evidence_se + 2.0 / n


def test_importance_bad_inputs(data):
    net = ngp.MLP(2, 4, activation="tanh", out_dim=2)
    XA, XB, Y = data["importance_bad"]
    with pytest.raises(ValueError, match="noise"):
        importance_posterior(net, XA, Y, XB, noise=-0.1)
    with pytest.raises(ValueError, match="Y_train"):
        importance_posterior(net, XA, Y[:2], XB, noise=0.1)
    with pytest.raises(ValueError, match="Y_train"):
        importance_posterior(net, XA, Y[:, :1], XB, noise=0.1)
    with pytest.raises(ValueError, match="X_test"):
        importance_posterior(net, XA, Y, XB[:, :1], noise=0.1)
    with pytest.raises(ValueError, match="X_train"):
        importance_posterior(net, XA[:, 0], Y, XB, noise=0.1)
    with pytest.raises((TypeError, ValueError), match="num_samples"):
        importance_posterior(net, XA, Y, XB, noise=0.1, num_samples=0)
    with pytest.raises((TypeError, ValueError), match="batch_size"):
        importance_posterior(net, XA, Y, XB, noise=0.1, batch_size=2.5)
    with pytest.raises(ValueError, match="metric"):
        log_likelihood(np.zeros((3, 2)), Y[:2], noise=0.1)


def test_importance_needs_two_draws_and_an_integer_seed(data):
    net = ngp.MLP(2, 4, activation="tanh", out_dim=2)
    XA, XB, Y = data["importance_bad"]
    with pytest.raises(ValueError, match="^num_samples: must be >= 2"):  # one draw has no standard error
        importance_posterior(net, XA, Y, XB, noise=0.1, num_samples=1)
    for seed in ("a", None, 1.5, True):
        with pytest.raises(TypeError, match="^seed: expected a non-negative integer"):
            importance_posterior(net, XA, Y, XB, noise=0.1, num_samples=2, seed=seed)
    with pytest.raises(ValueError, match="^seed: must be >= 0"):
        importance_posterior(net, XA, Y, XB, noise=0.1, num_samples=2, seed=-1)


# --------------------------------------------------------------------------------------- NUTS


def test_nuts_agrees_with_importance_sampling():
    net = ngp.MLP(2, 8, activation="tanh", C_W=1.5, C_b=0.1, out_dim=2)
    rng = np.random.default_rng(1)
    XA, XB, Y = rng.normal(size=(3, 2)), rng.normal(size=(2, 2)), rng.normal(size=(3, 2))
    ref = importance_posterior(net, XA, Y, XB, noise=0.1, num_samples=50_000, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ngp.SamplingWarning)  # mixed chains: no warning
        post = nuts_posterior(net, XA, Y, XB, noise=0.1, num_warmup=300, num_samples=300, num_chains=4, seed=0)
    assert post.samples.shape == (1200, 2, 2) and post.num_samples == 1200
    assert post.cov.shape == (2, 2, 2, 2) and post.rhat.shape == post.ess.shape == (2, 2)
    assert np.all(post.rhat < 1.05) and np.all(post.ess > 200)
    assert post.num_divergences == 0
    assert np.all(np.abs(post.mean - ref.mean) <= 4 * np.hypot(post.mean_se, ref.mean_se))
    assert np.all(np.abs(post.var - ref.var) <= 4 * np.hypot(post.var_se, ref.var_se))
    # ... and the comparison resolves the finite-width effect (the GP is many s.e. away)
    gp = ngp.gp_posterior(net, XA, Y, XB, noise=0.1)
    assert np.max(np.abs(gp.mean - ref.mean) / np.hypot(post.mean_se, ref.mean_se)) > 6
    # the draws follow the reported moments
    np.testing.assert_allclose(post.samples.mean(0), post.mean, atol=5 * post.std.max() / math.sqrt(post.ess.min()))
    np.testing.assert_allclose(post.var, np.einsum("aiai->ai", post.cov))


def test_nuts_warns_of_few_effective_draws():
    # short chains (4 x 25 draws): effective sample sizes of 35-91 and split R-hat up to 1.11 said nothing (only a
    # non-positive ESS warned), where importance_posterior warns below ESS_WARN = 100 (a prober, stop 90)
    net = ngp.MLP(2, 4, activation="tanh", C_W=1.5, C_b=0.1)
    XA, Y, XB = np.array([[-1.0], [0.0], [1.0]]), np.array([0.8, -0.3, 0.6]), np.array([[0.5], [2.0]])
    with pytest.warns(ngp.SamplingWarning, match="effective sample size .* the chains may not have mixed") as seen:
        post = nuts_posterior(net, XA, Y, XB, noise=0.1, num_warmup=50, num_samples=25, num_chains=4, seed=0)
    assert len(seen) == 1
    assert np.nanmin(post.ess) < ngp.reference.ESS_WARN or np.max(post.rhat) > ngp.reference.RHAT_WARN


def test_nuts_bad_inputs(data):
    net = ngp.MLP(2, 4, activation="tanh", out_dim=2)
    XA, XB, Y = data["nuts_bad"]
    with pytest.raises(ValueError, match="noise.*> 0.*importance_posterior"):
        nuts_posterior(net, XA, Y, XB, noise=0.0)
    with pytest.raises(ValueError, match="noise"):
        nuts_posterior(net, XA, Y, XB, noise=-1.0)
    with pytest.raises(ValueError, match="Y_train"):
        nuts_posterior(net, XA, Y.T, XB, noise=0.1)
    with pytest.raises(ValueError, match="X_test"):
        nuts_posterior(net, XA, Y, XB[:, :1], noise=0.1)
    with pytest.raises(ValueError, match="integrate_readout"):
        nuts_posterior(ngp.MLP(1, out_dim=2), XA, Y, XB, noise=0.1)
    with pytest.raises(ValueError, match="chain_method"):
        nuts_posterior(net, XA, Y, XB, noise=0.1, chain_method="threads")
    for seed in ("a", None, 1.5):
        with pytest.raises(TypeError, match="^seed: expected a non-negative integer"):
            nuts_posterior(net, XA, Y, XB, noise=0.1, seed=seed)


def test_nuts_non_positive_ess_gives_nan_standard_errors_with_a_warning():
    from numpyro.diagnostics import effective_sample_size

    from ngp.reference._nuts import _ess

    # anti-correlated or constant chains: NumPyro's estimate is negative or NaN; both are undefined
    alternating = np.array([[1.0, -1, 1, -1, 1.1], [-1, 1, -1, 1, -1.2]])[:, :, None]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert np.isnan(_ess(effective_sample_size, alternating)).all()
        assert np.isnan(_ess(effective_sample_size, np.ones((2, 5, 1)))).all()
    # two chains of five draws: the ESS of some test outputs comes out negative
    rng = np.random.default_rng(0)
    XA, Y, XB = rng.normal(size=(3, 2)), rng.normal(size=3), rng.normal(size=(2, 2))
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        post = nuts_posterior(ngp.MLP(1), XA, Y, XB, noise=0.1, num_warmup=5, num_samples=5, num_chains=2,
                              integrate_readout=False, seed=0)
    assert [type(w.message) for w in seen] == [ngp.SamplingWarning], [str(w.message) for w in seen]
    assert "chains too short" in str(seen[0].message)
    bad = np.isnan(post.mean_se) | np.isnan(post.var_se)
    assert bad.any() and np.all(np.isnan(post.ess) == np.isnan(post.mean_se))
    assert np.all(post.ess[~np.isnan(post.ess)] > 0)
    assert np.all(np.isfinite(post.mean) & np.isfinite(post.var))


def test_reference_import_does_not_import_numpyro(import_facts):
    assert import_facts["numpyro_after_reference"] is False, "numpyro imported eagerly"
