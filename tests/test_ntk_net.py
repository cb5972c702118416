"""The NTK on engine networks (ngp.MLP, ngp.serial): prior.Theta, Theta1, A, B, D, F, P, Q.

Checked against the recursions of ngp._ntk (themselves checked against Monte Carlo of actual
networks in tests/test_ntk.py), against the engine's own K1 and V, and against the empirical NTK
of actual engine networks (net.init / net.apply, Jacobians by jax.jacrev).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ngp
from ngp import _ntk, scaling


@pytest.fixture
def X():
    rng = np.random.default_rng(3)
    X = rng.normal(size=(3, 4))
    return X / np.linalg.norm(X, axis=1, keepdims=True) * 1.5


def _tanh_serial(width, C_W, C_b):
    return ngp.serial(ngp.Dense(width, C_W=C_W, C_b=C_b), ngp.Elementwise("tanh"),
                      ngp.Dense(width, C_W=C_W, C_b=C_b), ngp.Elementwise("tanh"), ngp.Dense(1, C_W=C_W, C_b=C_b))


def test_mlp_and_serial_match_the_recursions(X):
    hp = dict(C_W=1.5, C_b=0.1)
    lam_W, lam_b = (1.0, 0.7, 1.3), 0.5
    mlp = ngp.MLP(depth=3, width=24, activation="tanh", **hp)
    ser = _tanh_serial(24, **hp)
    ref = _ntk.flow(X, ngp.activation("tanh"), depth=3, widths=[24, 24], lam_W=lam_W, lam_b=lam_b, dntk=True, **hp)
    for net in (mlp, ser):
        p = net.prior(X, lambda_W=lam_W, lambda_b=lam_b)  # K1, V vs the engine's: tests/test_ntk.py
        assert p.Theta.shape == (3, 3) and p.A.shape == (3, 3, 3, 3)
        for name in ("Theta", "Theta1", "A", "B", "D", "F", "P", "Q"):
            np.testing.assert_allclose(getattr(p, name), getattr(ref[-1], name), rtol=1e-12, atol=1e-14)
        for lay, st in zip(p.ntk_layers, ref):
            np.testing.assert_allclose(lay.Theta, st.Theta, rtol=1e-12)
        np.testing.assert_allclose(p.ntk_layers[-1].K, p.K, rtol=1e-12)


def test_learning_rate_defaults_and_duplicates(X):
    net = ngp.MLP(depth=2, width=8, activation="erf", C_W=2.0, C_b=0.3)
    p = net.prior(X)
    G = X @ X.T / X.shape[1]
    # layer 1: Theta = lambda_b + lambda_W G (defaults 1, 1)
    np.testing.assert_allclose(p.thetas[0], 1.0 + G, rtol=1e-14)
    Xd = np.concatenate([X, X[:1]])
    pd = net.prior(Xd)
    np.testing.assert_allclose(pd.Theta[:3, :3], p.Theta, rtol=1e-13)
    np.testing.assert_allclose(pd.A[:3, :3, :3, :3], p.A, rtol=1e-12)
    np.testing.assert_allclose(pd.Theta[3], pd.Theta[0], rtol=1e-14)


def test_scale_step_scales_the_statistics(X):
    a = 0.7
    base = _tanh_serial(16, 1.2, 0.1)
    scaled = ngp.serial(*base.steps, ngp.Scale(a))
    p, q = base.prior(X), scaled.prior(X)
    np.testing.assert_allclose(q.Theta, a**2 * p.Theta, rtol=1e-13)
    np.testing.assert_allclose(q.Theta1, a**2 * p.Theta1, rtol=1e-13)
    np.testing.assert_allclose(q.A, a**4 * p.A, rtol=1e-13)


def test_residual_finite_width_ntk_is_refused_by_name(X):
    net = ngp.serial(ngp.Dense(8), ngp.Residual(ngp.serial(ngp.Elementwise("tanh"), ngp.Dense(8))), ngp.Dense(1))
    with pytest.raises(NotImplementedError, match="Residual"):
        net.prior(X).Theta1


def test_unknown_step_names_itself(X):
    class Twice(ngp.Step):
        def apply(self, params, h):
            return 2 * h

        def flow(self, f):
            return f

        def __repr__(self):
            return "Twice()"

    net = ngp.serial(ngp.Dense(8), Twice(), ngp.Elementwise("tanh"), ngp.Dense(1))
    with pytest.raises(NotImplementedError, match="Twice"):
        net.prior(X).Theta


def _jac_ntk(steps, J, lam, idx):
    """NTK contribution of the Jacobian pytree ``J`` of ``steps`` (nested serial/residual), in the
    engine's non-centred parameters: weight terms * lambda_W / C_W, bias terms * lambda_b / C_b."""
    tot = 0.0
    for s, Js in zip(steps, J):
        if isinstance(s, ngp.Dense):
            JW = Js["W"].reshape(Js["W"].shape[0], -1)
            tot = tot + lam[0][idx[0]] / s.C_W * JW @ JW.T + lam[1][idx[0]] / s.C_b * Js["b"] @ Js["b"].T
            idx[0] += 1
        elif isinstance(s, ngp.Residual):
            tot = tot + _jac_ntk(s.block.steps, Js, lam, idx)
    return tot


def test_parameterization_on_mlp(X):
    net = ngp.MLP(depth=3, width=64, activation="tanh", C_W=1.0, parameterization="mup", base_width=16)
    hp = scaling.multipliers("mup", width=64, depth=3, base_width=16, C_W=1.0, C_b=0.0)
    assert net.C_W == hp["C_W"] and net.lambda_W == hp["lam_W"] and net.lambda_b == hp["lam_b"]
    assert net.C_W[-1] == pytest.approx(0.25) and net.lambda_W[0] == pytest.approx(4.0)
    ref = _ntk.flow(X, ngp.activation("tanh"), depth=3, widths=[64, 64], finite=False, **hp)
    np.testing.assert_allclose(net.prior(X).Theta, ref[-1].Theta, rtol=1e-12)
    assert net != ngp.MLP(depth=3, width=64, activation="tanh", C_W=hp["C_W"], C_b=0.0)


def _empirical_ntk(net, lam_W, lam_b):
    """One network's NTK of output 0 over the inputs, from Jacobians (W = sqrt(C_W/fan_in) W_std,
    b = sqrt(C_b) b_std in the engine's parameters)."""

    def one(key, X):
        params = net.init(key, X.shape[1])
        J = jax.jacrev(lambda p: net.apply(p, X)[:, 0])(params)
        idx = [0]
        tot = _jac_ntk(net.steps, J, (lam_W, lam_b), idx)
        assert idx[0] == net.depth
        return tot

    return one


def test_theta_against_empirical_ntk_of_engine_networks(X):
    """Mean empirical NTK of actual ngp.serial networks: n (mean - Theta) -> Theta1 within 4 SE,
    and the per-neuron NTK variance n Var(H_ab) against A + 2B (diagonal pairs)."""
    n, S = 32, 600
    lam_W, lam_b = (1.0, 0.8, 1.2), (0.5, 0.5, 0.5)
    net = _tanh_serial(n, 1.6, 0.2)
    p = net.prior(X, lambda_W=lam_W, lambda_b=lam_b)
    f = jax.jit(jax.vmap(_empirical_ntk(net, lam_W, lam_b), in_axes=(0, None)))
    keys = jax.random.split(jax.random.PRNGKey(11), S)
    H = np.concatenate([np.asarray(f(keys[s:s + 200], jnp.asarray(X))) for s in range(0, S, 200)])
    m = H.mean(0)
    se = H.std(0, ddof=1) / np.sqrt(S)
    shift = n * (m - p.Theta)
    assert np.all(np.abs(shift - p.Theta1) <= 4 * n * se + 1e-12), (shift, p.Theta1, n * se)
    # NTK variance of one output neuron, entries (aa, aa) and (ab, ab)
    var = n * H.var(0, ddof=1)
    pred = p.ntk_variance()
    iu = np.triu_indices(3)
    pv = np.array([pred[a, b, a, b] for a, b in zip(*iu)])
    mv = var[iu]
    # SE of a variance estimate ~ var sqrt(2/(S-1)) (Gaussian); the NTK's kurtosis at n=32 is mild
    assert np.all(np.abs(mv - pv) <= 4 * mv * np.sqrt(2.0 / (S - 1)) + 4 * pv / n), (mv, pv)


def test_residual_theta_against_empirical_ntk(X):
    """Infinite-width NTK of a residual network (ngp.ResMLP) against the mean empirical NTK of wide
    actual residual networks (n = 256; residual O(1/n) ~ 0.01 relative, within 4 SE + that)."""
    n, S = 256, 120
    net = ngp.ResMLP(depth=4, width=n, activation="tanh", C_W=1.2, C_b=0.1, gamma=0.8, xi=0.6)
    lam = ((1.0,) * 4, (0.5,) * 4)
    Th = net.prior(X, lambda_b=0.5).Theta
    f = jax.jit(jax.vmap(_empirical_ntk(net, *lam), in_axes=(0, None)))
    H = np.concatenate([np.asarray(f(k, jnp.asarray(X))) for k in np.split(jax.random.split(jax.random.PRNGKey(2), S), 3)])
    m, se = H.mean(0), H.std(0, ddof=1) / np.sqrt(S)
    assert np.all(np.abs(m - Th) < 4 * se + 3.0 * np.abs(Th).max() / n), (m, Th, se)
    # the check can fail: dropping the skip's NTK (gamma = 0) misses by many standard errors
    no_skip = ngp.ResMLP(depth=4, width=n, activation="tanh", C_W=1.2, C_b=0.1, gamma=0.0, xi=0.6)
    assert np.max(np.abs(m - no_skip.prior(X, lambda_b=0.5).Theta) / se) > 20


def test_learning_rate_options_are_checked_when_the_prior_is_made(X, monkeypatch):
    """``net.prior(X, lambda_W=-1)`` was accepted and refused only when an NTK statistic was read (after the
    prior's work); a wrong count of factors likewise. Both are refused by name before any work now."""
    from ngp import _prior

    net = ngp.MLP(3, 16)
    monkeypatch.setattr(_prior.Flow, "start", lambda *a: pytest.fail("the prior's work began"))
    with pytest.raises(ValueError, match="lambda_W"):
        net.prior(X, lambda_W=-1.0)
    with pytest.raises(ValueError, match="lambda_b"):
        net.prior(X, lambda_b=[1.0, 2.0])  # three dense steps
    monkeypatch.undo()
    Y = np.ones((3, 1))  # the paths that do not read them still refuse invalid values (they were accepted silently)
    with pytest.raises(ValueError, match=r"lambda_W\[1\]: must be >= 0"):
        ngp.condition(net, X, Y, noise=0.1, method="matrix_free", lambda_W=[1.0, -1.0, 1.0])
    with pytest.raises(ValueError, match="lambda_b: must be >= 0"):
        ngp.log_evidence(net, X, Y, noise=0.1, lambda_b=-2.0)
    assert net.prior(X, lambda_W=np.array([1.0, 0.5, 2.0]), lambda_b=(0.0, 1.0, 1.0)).Theta.shape == (3, 3)


def test_ntk_statistics_warn_like_K1_at_small_width(X):
    # Theta1, A and trained_ensemble's 1/n mean said nothing at width 1 (expansion parameter 2.4, where K1 warns);
    # against 1e5 linearised networks their mean_nlo was 6.6 sigma off at width 2 (a prober, stop 90)
    import warnings

    y = np.array([1.0, -1.0])
    for width, expected in ((1, True), (64, False)):
        net = ngp.MLP(3, width, activation="tanh")
        for what in ("Theta1", "A", "ensemble"):
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                if what == "ensemble":
                    ngp.trained_ensemble(net, X[:2], y, X[2:])
                else:
                    getattr(net.prior(X), what)
            said = [w for w in caught if issubclass(w.category, ngp.ExpansionWarning)
                    and "expansion parameter" in str(w.message)]
            assert bool(said) == expected, (width, what)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ngp.MLP(3, 1).prior(X, warn=False).Theta1
