"""Issue 15: no silent NaN, no silent nonsense (edge inputs, resource limits, float32, validity)."""

import json
import math
import os
import subprocess
import sys
import textwrap
import warnings

import jax
import jax.numpy as jnp
import mpmath as mp
import numpy as np
import pytest

import ngp
from ngp import _activations
from ngp import criticality as cr


# ----------------------------------------------------------------------------- relu family at theta -> 0
def _mp_two_point(slopes, kaa, kbb, kab):
    """``<s_a s_b>`` of ``a_+ z Theta(z) + a_- z Theta(-z)`` in mpmath (arc-cosine kernel)."""
    ap, am = (mp.mpf(s) for s in slopes)
    r = mp.sqrt(kaa * kbb - kab**2)
    th = mp.acos(kab / mp.sqrt(kaa * kbb))
    j_pp = (r + kab * (mp.pi - th)) / (2 * mp.pi)
    j_pm = (r - kab * th) / (2 * mp.pi)
    return (ap**2 + am**2) * j_pp - 2 * ap * am * j_pm


def _mp_derivatives(slopes, v, *, hessian=True):
    """Gradient (3,) and Hessian (3, 3) in ``(kaa, kbb, kab)`` at the float point ``v``, by mpmath."""
    with mp.workdps(40):
        x = tuple(mp.mpf(float(t)) for t in v)
        f = lambda a, b, c: _mp_two_point(slopes, a, b, c)  # noqa: E731
        g = np.array([float(mp.diff(f, x, tuple(int(i == j) for j in range(3)))) for i in range(3)])
        if not hessian:
            return g
        H = np.empty((3, 3))
        for i in range(3):
            for j in range(i, 3):
                order = [0, 0, 0]
                order[i] += 1
                order[j] += 1
                H[i, j] = H[j, i] = float(mp.diff(f, x, tuple(order)))
    return g, H


@pytest.fixture(scope="module")
def relu_derivatives():
    def make(act):
        f3 = lambda v: act.two_point(v[0], v[1], v[2])  # noqa: E731
        return jax.jit(jax.grad(f3)), jax.jit(jax.hessian(f3))

    return make


@pytest.mark.parametrize("name,params,theta", [("leaky_relu", {"slope": 0.2}, 0.5), ("relu", {}, 1e-2),
                                               ("leaky_relu", {"slope": 0.2}, 3e-3)])
def test_relu_family_jacobian_hessian_match_mpmath(relu_derivatives, name, params, theta):
    act = ngp.activation(name, **params)
    grad, hess = relu_derivatives(act)
    kaa, kbb = 1.3, 0.7
    v = np.array([kaa, kbb, math.cos(theta) * math.sqrt(kaa * kbb)])
    g_ref, H_ref = _mp_derivatives(act.relu_slopes, v)
    assert np.allclose(np.asarray(grad(jnp.asarray(v))), g_ref, rtol=0, atol=1e-12)
    H = np.asarray(hess(jnp.asarray(v)))
    assert np.max(np.abs(H - H_ref)) <= 1e-9 * np.max(np.abs(H_ref))
    assert np.allclose(H, H.T, rtol=0, atol=1e-12 * np.max(np.abs(H)))


def test_relu_hessian_matches_finite_differences(relu_derivatives):
    grad, hess = relu_derivatives(ngp.activation("leaky_relu", slope=0.1))
    v = jnp.asarray([0.9, 1.6, 0.4])
    h = 1e-6
    fd = np.stack([(np.asarray(grad(v + h * e)) - np.asarray(grad(v - h * e))) / (2 * h) for e in jnp.eye(3)])
    assert np.allclose(np.asarray(hess(v)), fd, rtol=1e-7, atol=1e-8)


@pytest.mark.parametrize("theta", [1e-5, 1e-7, 0.0])
def test_relu_jacobian_has_its_limit_at_coincident_inputs(relu_derivatives, theta):
    """``dPhi/dK_ab = <s'_a s'_b> = (pi - theta) / (2 pi)`` and ``dPhi/dK_aa = sqrt(det) / 4 pi K_aa``: finite
    and continuous at ``theta = 0`` (autodiff of arccos gave inf - inf = nan there)."""
    grad, hess = relu_derivatives(ngp.activation("relu"))
    kaa, kbb = 1.3, 0.7
    s = math.sqrt(kaa * kbb)
    kab = math.cos(theta) * s
    g = np.asarray(grad(jnp.asarray([kaa, kbb, kab])))
    if theta > 0:  # mpmath at the float inputs; the float rounding of K_aa K_bb - K_ab^2 costs ~1e-16 / theta
        exact = _mp_derivatives((1.0, 0.0), [kaa, kbb, kab], hessian=False)
    else:
        exact = np.array([0.0, 0.0, 0.5])
    assert np.allclose(g, exact, rtol=0, atol=1e-15 / theta if theta > 0 else 1e-15)
    assert np.all(np.isfinite(np.asarray(hess(jnp.asarray([kaa, kbb, kab])))))


@pytest.mark.parametrize("v", [[1.0, 1.0, 1.0 + 2e-16], [1.0, 1.0, -1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
def test_relu_two_point_derivatives_finite_at_the_edges(relu_derivatives, v):
    """Rounding past correlation 1, anti-parallel inputs and zero-variance inputs (x = 0, C_b = 0)."""
    act = ngp.activation("relu")
    grad, hess = relu_derivatives(act)
    v = jnp.asarray(v)
    assert np.isfinite(float(act.two_point(v[0], v[1], v[2])))
    assert np.all(np.isfinite(np.asarray(grad(v)))) and np.all(np.isfinite(np.asarray(hess(v))))


def test_relu_K1_is_continuous_as_inputs_merge():
    """K1_ab -> K1_aa (= 0 for the relu family) as the angle between two inputs closes; before the fix it
    was nan below theta ~ 1e-8 and lost digits like 1/theta above."""
    net = ngp.MLP(4, 64, activation="relu", C_W=2.0, C_b=0.1)
    vals = []
    for th in (1e-4, 1e-6, 1e-9):
        p = net.prior(np.array([[1.0, 0.0], [math.cos(th), math.sin(th)]]), warn=False)
        assert np.all(np.isfinite(p.K1)) and np.all(np.isfinite(p.V))
        vals.append(p.K1[0, 1])
    scale = np.max(np.abs(net.prior(np.array([[1.0, 0.0]]), warn=False).V))
    assert np.max(np.abs(vals)) < 1e-8 * scale


def test_relu_parallel_inputs_without_bias_are_exactly_homogeneous():
    """relu, C_b = 0, x_b = 2 x_a: z_b = 2 z_a in every network, so V_(ij)(kl) = 2^(#b) V_(aa)(aa) and K1 = 0."""
    p = ngp.MLP(3, 64, activation="relu", C_W=2.0, C_b=0.0).prior(np.array([[1.0, 0.5], [2.0, 1.0]]), warn=False)
    V = p.V
    idx = np.indices(V.shape).sum(axis=0)  # number of b indices in (i, j, k, l)
    assert np.allclose(V, V[0, 0, 0, 0] * 2.0**idx, rtol=1e-10, atol=0)
    assert np.max(np.abs(p.K1)) < 1e-9 * V[0, 0, 0, 0]


def test_issue_near_duplicate_test_point():
    """Issue 15 item 1: a test point equal to a training point up to rounding."""
    net = ngp.MLP(3, 64, activation="relu", C_W=2.0, C_b=0.1)
    near = ngp.posterior(net, [[0.5], [1.0]], [0.2, 0.1], [[0.5 + 1e-9]], noise=0.1)
    same = ngp.posterior(net, [[0.5], [1.0]], [0.2, 0.1], [[0.5]], noise=0.1)  # duplicates merged exactly
    for a, b in ((near.mean, same.mean), (near.var, same.var)):
        assert np.all(np.isfinite(a)) and np.allclose(a, b, rtol=1e-6, atol=1e-9)
    assert near.expansion_parameter == pytest.approx(same.expansion_parameter, rel=1e-6)
    assert near.validity.trusted


# ----------------------------------------------------------------------------- zero-variance inputs
def test_zero_input_with_critical_relu_drops_out_exactly():
    """relu, C_b = 0: the network output at x = 0 is exactly 0, so a training point there with target 0
    carries no information: the posterior equals the one without it, and the evidence differs by
    log N(0 | 0, noise) (issue 15 item 3)."""
    net = ngp.MLP(3, 64, activation="relu", C_W=2.0, C_b=0.0)
    noise = 0.1
    with_zero = ngp.posterior(net, [[0.0], [1.0], [-0.5]], [0.0, 0.5, 0.2], [[2.0], [0.0]], noise=noise)
    without = ngp.posterior(net, [[1.0], [-0.5]], [0.5, 0.2], [[2.0], [0.0]], noise=noise)
    assert np.allclose(with_zero.mean, without.mean, rtol=1e-10, atol=1e-12)
    assert np.allclose(with_zero.var, without.var, rtol=1e-10, atol=1e-12)
    gauss0 = -0.5 * math.log(2 * math.pi * noise)
    assert with_zero.log_evidence - without.log_evidence == pytest.approx(gauss0, abs=1e-10)
    # the zero test point: exactly zero mean and variance
    assert np.abs(with_zero.mean[1]).max() < 1e-12 and np.abs(with_zero.var[1]).max() < 1e-12


@pytest.mark.parametrize("act", ["relu", "tanh", "gelu", "sin", "erf"])
def test_zero_input_row_gives_finite_cumulants(act):
    p = ngp.MLP(4, 16, activation=act, C_W=2.0 if act == "relu" else 1.0, C_b=0.0).prior(
        np.array([[0.0, 0.0], [1.0, 0.5], [-0.3, 0.8]]), warn=False)
    assert np.all(np.isfinite(p.K1)) and np.all(np.isfinite(p.V))
    assert np.all(p.V[0] == 0) and np.all(p.K1[0] == 0)  # z(0) = 0 in every network


@pytest.mark.parametrize("method", ["conditional", "weights"])
def test_sampled_networks_are_exactly_zero_at_a_zero_input(method):
    """relu, C_b = 0: z(0) = 0 in every network; the conditional sampler's Cholesky jitter must not
    leak into the zero row (it gave metric entries ~3e-3 in float32, ~3e-7 relative in float64)."""
    net = ngp.MLP(3, 16, activation="relu", C_W=2.0, C_b=0.0)
    s = ngp.sample_networks(net, np.array([[0.0, 0.0], [1.0, 0.5], [1.0, 0.5]]), 64, seed=0, method=method)
    assert np.all(s.outputs[:, 0] == 0) and np.all(s.metric[:, 0, :] == 0) and np.all(s.metric[:, :, 0] == 0)
    assert np.all(np.isfinite(s.outputs)) and np.all(s.metric[:, 1, 1] > 0)


# ----------------------------------------------------------------------------- resource limits
def test_huge_networks_raise_memory_error_before_work():
    X = np.ones((5, 2))
    with pytest.raises(MemoryError, match="GiB"):
        ngp.sample_networks(ngp.MLP(3, 10**9), X, 10)
    with pytest.raises(MemoryError, match="GiB"):
        ngp.sample_networks(ngp.MLP(3, 10**8), X, 10, method="conditional")  # ~3 TB before the check
    with pytest.raises(MemoryError, match="importance_posterior.*GiB"):
        ngp.reference.importance_posterior(ngp.MLP(3, 10**9), X[:2], np.ones(2), X[2:], noise=0.1)
    with pytest.raises(MemoryError, match="nuts_posterior.*GiB"):
        ngp.reference.nuts_posterior(ngp.MLP(3, 10**9), X[:2], np.ones(2), X[2:], noise=0.1)
    with pytest.raises(MemoryError, match="nuts_posterior"):
        ngp.reference.nuts_posterior(ngp.MLP(2, 16), X[:2], np.ones(2), X[2:], noise=0.1, max_memory=1e4)


def test_predict_memory_is_bounded_by_max_memory(monkeypatch):
    """The exact path's predict works in test-point batches (and full_cov in rows of test points) sized
    from max_memory, with the same numbers as one batch; a budget below one test point's working
    memory is a MemoryError with the estimate before any vertex work."""
    from ngp import _posterior

    rng = np.random.default_rng(0)
    XA, XB, Y = rng.normal(size=(6, 2)), rng.normal(size=(5, 2)), rng.normal(size=(6, 2))
    net = ngp.MLP(3, 16, activation="sin", C_W=1.2, C_b=0.1, out_dim=2)  # closed-form four-point values: fast
    ref = ngp.condition(net, XA, Y, noise=0.1, method="exact").predict(XB, full_cov=True)
    per_point = _posterior.predict_bytes_per_point(net.prior(np.concatenate([XA, XB])), 6, 2)
    calls = {"batches": 0, "rows": []}
    test_components, pair_components = _posterior._test_components, _posterior._pair_components

    def counted_batches(*args):
        calls["batches"] += 1
        return test_components(*args)

    def counted_rows(*args):
        calls["rows"].append(args[-1])
        return pair_components(*args)

    monkeypatch.setattr(_posterior, "_test_components", counted_batches)
    monkeypatch.setattr(_posterior, "_pair_components", counted_rows)
    small = ngp.condition(net, XA, Y, noise=0.1, method="exact", max_memory=int(4.5 * per_point))
    got = small.predict(XB, full_cov=True)
    # 2 + 2 + 1 test points; full_cov 2 rows at a time; each for the components and for their error bounds
    assert calls["batches"] == 2 * 3 and calls["rows"] == [2, 2]
    for a, b in ((got.mean, ref.mean), (got.var, ref.var), (got.cov, ref.cov)):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-15)
    tight = ngp.condition(net, XA, Y, noise=0.1, method="exact", max_memory=int(1.5 * per_point))
    calls["batches"] = 0
    with pytest.raises(MemoryError, match="one test point needs about .* GiB .*max_memory"):
        tight.predict(XB)
    with pytest.raises(MemoryError, match="batch_size=5 needs about .*max_memory"):
        small.predict(XB, batch_size=5)
    assert calls["batches"] == 0


def test_importance_error_does_not_blame_zero_noise_when_noise_is_positive():
    net = ngp.MLP(2, 8, activation="relu", C_W=2.0, C_b=0.0)
    X = np.array([[1.0], [2.0]])  # parallel inputs, C_b = 0: the training metric is singular in every draw
    with pytest.raises(ValueError, match="zero likelihood") as info:
        ngp.reference.importance_posterior(net, X, [1.0, 2.0], [[0.5]], noise=1e-14, num_samples=64)
    assert "noise = 0 the" not in str(info.value) and "raise the noise" in str(info.value)


# ----------------------------------------------------------------------------- float32 sessions
_FLOAT32_SCRIPT = textwrap.dedent("""
    import json, warnings
    import jax, numpy as np, ngp
    assert not jax.config.jax_enable_x64
    warnings.simplefilter("ignore")
    out = {}
    net = ngp.MLP(3, 16, activation="tanh", C_b=0.1)
    XA, XB = np.linspace(-1, 1, 4)[:, None], np.array([[0.3], [1.4]])
    Y = np.sin(2 * XA[:, 0])
    p = net.prior(np.concatenate([XA, XB]))
    out["dtype"] = str(p.K.dtype) + str(p.K1.dtype) + str(p.V.dtype)
    out["K1"] = p.K1.tolist()
    post = ngp.posterior(net, XA, Y, XB, noise=0.0)
    out["post"] = [post.mean.ravel().tolist(), post.var.ravel().tolist(), post.log_evidence]
    imp = ngp.reference.importance_posterior(net, XA, Y, XB, noise=0.0, num_samples=4000, seed=3)
    out["imp"] = [imp.mean.ravel().tolist(), imp.log_evidence]
    out["chi"] = list(ngp.criticality.susceptibilities("tanh", 2.5))
    relu = ngp.MLP(3, 32, activation="relu", C_W=2.0, C_b=0.0)
    Xd = np.array([[0.0, 0.0], [1.0, 0.5], [1.0, 0.5], [2.0, 1.0]])  # zero row, duplicate, parallel
    s = ngp.sample_networks(relu, Xd, 4000, method="conditional", seed=1)
    out["samples"] = [str(s.outputs.dtype), float(np.mean(~np.isfinite(s.outputs))),
                      s.metric.mean(axis=0).tolist(), (s.metric.std(axis=0) / np.sqrt(4000)).tolist()]
    print(json.dumps(out))
""")


@pytest.mark.validation
def test_float32_session_gives_float64_results():
    """Issue 15 item 5: with x64 off every path is right: the numerics run in float64 (scoped), the
    samplers in float32 without nan."""
    env = dict(os.environ, JAX_ENABLE_X64="0", PYTHONPATH=os.pathsep.join(
        [os.path.dirname(os.path.dirname(os.path.abspath(ngp.__file__)))] + sys.path))
    got = subprocess.run([sys.executable, "-c", _FLOAT32_SCRIPT], capture_output=True, text=True, env=env,
                         timeout=600)
    assert got.returncode == 0, got.stderr[-3000:]
    out = json.loads(got.stdout.strip().splitlines()[-1])
    assert out["dtype"] == "float64" * 3
    net = ngp.MLP(3, 16, activation="tanh", C_b=0.1)
    XA, XB = np.linspace(-1, 1, 4)[:, None], np.array([[0.3], [1.4]])
    Y = np.sin(2 * XA[:, 0])
    assert np.allclose(out["K1"], net.prior(np.concatenate([XA, XB])).K1, rtol=1e-12, atol=1e-14)
    post = ngp.posterior(net, XA, Y, XB, noise=0.0, warn=False)
    assert np.allclose(out["post"][0], post.mean.ravel(), rtol=1e-10)
    assert np.allclose(out["post"][1], post.var.ravel(), rtol=1e-8)
    assert out["post"][2] == pytest.approx(post.log_evidence, rel=1e-10)
    imp = ngp.reference.importance_posterior(net, XA, Y, XB, noise=0.0, num_samples=4000, seed=3)
    assert np.allclose(out["imp"][0], imp.mean.ravel(), rtol=1e-10) and out["imp"][1] == pytest.approx(
        imp.log_evidence, rel=1e-10)
    assert np.allclose(out["chi"], cr.susceptibilities("tanh", 2.5), rtol=1e-12)
    dtype, bad, metric_mean, metric_se = out["samples"]
    assert dtype == "float32" and bad == 0.0
    K = ngp.MLP(3, 32, activation="relu", C_W=2.0, C_b=0.0).prior(
        np.array([[0.0, 0.0], [1.0, 0.5], [1.0, 0.5], [2.0, 1.0]])).K
    assert np.all(np.abs(np.array(metric_mean) - K) <= 5 * np.array(metric_se) + 1e-5 * np.max(K))


# ----------------------------------------------------------------------------- smaller items
def test_small_argument_errors_are_named():
    X, y = np.array([[0.0], [1.0]]), np.array([0.0, 1.0])
    with pytest.raises(ValueError, match="widths"):
        ngp.evidence_grid(X, y, widths=[8, -4], depths=[2], noise=0.1)
    with pytest.raises(TypeError, match="widths"):
        ngp.evidence_grid(X, y, widths="16", depths=[2], noise=0.1)
    with pytest.raises(TypeError, match="complex"):
        ngp.posterior(ngp.MLP(2, 8), np.array([[1 + 1j], [0.0]]), y, [[0.0]], noise=0.1)
    with pytest.raises(TypeError, match="C_W"):
        ngp.MLP(2, 8, C_W="1.0")
    with pytest.raises(TypeError, match="JAX-traceable"):
        ngp.MLP(2, 8, activation=np.tanh)
    assert ngp.activation("leaky_relu", slope=np.float32(0.1)).relu_slopes == (1.0, pytest.approx(0.1))
    with pytest.raises(ValueError, match="four_point_order"):
        ngp.MLP(3, 8).prior(np.ones((2, 1)), four_point_order=0)
    with pytest.raises(TypeError, match="max_memory"):
        ngp.MLP(3, 8).prior(np.ones((2, 1)), max_memory="big")
    with pytest.raises(TypeError, match="width"):
        ngp.MLP(3, 8.0)
    with pytest.raises(TypeError, match="depth"):
        ngp.MLP(2.0, 8)
    # residual networks have a finite-width posterior since issue 12 (refusals: tests/test_residual_engine.py)
    res = ngp.posterior(ngp.ResMLP(3, 8), [[0.0], [1.0]], [0.0, 0.5], [[2.0]], noise=0.1)
    assert np.all(np.isfinite(res.mean)) and np.all(np.isfinite(res.var))


def _np_expect(f, K):
    from scipy.integrate import quad

    s = math.sqrt(K)
    g = lambda z: f(z) * math.exp(-0.5 * z * z / K) / math.sqrt(2 * math.pi * K)  # noqa: E731
    pts = [p for p in (-30.0, -8.0, -2.0, 0.0, 2.0, 8.0, 30.0) if abs(p) < 12 * s]
    return quad(g, -12 * s, 12 * s, points=pts, limit=4000, epsabs=0, epsrel=1e-13)[0]


@pytest.mark.parametrize("K", [50.0, 1e3, 1e6])
def test_tanh_susceptibilities_at_large_variance(K):
    """Issue 15 item 7: chi_perp(tanh, K = 1e6) was 1.4e-20 (true 5.32e-4)."""
    chi_par, chi_perp = cr.susceptibilities("tanh", K)
    sech = lambda z: 2.0 * math.exp(-abs(z)) / (1.0 + math.exp(-2.0 * abs(z)))  # noqa: E731 (no cosh overflow)
    ref_perp = _np_expect(lambda z: sech(z) ** 4, K)
    ref_par = _np_expect(lambda z: math.tanh(z) * z * sech(z) ** 2, K) / K
    assert chi_perp == pytest.approx(ref_perp, rel=1e-10)
    assert chi_par == pytest.approx(ref_par, rel=1e-10)


def test_susceptibilities_refuse_unresolvable_variances():
    with pytest.raises(ValueError, match="K"):
        cr.susceptibilities("tanh", 1e9)


# ----------------------------------------------------------------------------- validity of the posterior
def test_quickstart_with_zero_noise_is_flagged():
    """Issue 15 item 2: expansion parameter 0.057, but the first-order mean shift is thousands of GP
    standard deviations: the posterior must say so."""
    X = np.random.default_rng(0).normal(size=(5, 2))
    Y = np.random.default_rng(1).normal(size=(3, 2))
    net = ngp.MLP(depth=3, width=64, activation="tanh", C_W=1.0, C_b=0.0, out_dim=2)
    with pytest.warns(ngp.ExpansionWarning, match="not small"):
        fw = ngp.posterior(net, X[:3], Y, X[3:], noise=0.0)
    v = fw.validity
    assert not v.trusted and v.mean_shift > 100 and v.evidence_correction > 1e4
    shift = np.max(np.abs(fw.mean - fw.gp.mean) / np.sqrt(fw.gp.var))
    assert v.mean_shift == pytest.approx(shift, rel=1e-6)
    cond = ngp.condition(net, X[:3], Y, noise=0.0, warn=False)
    assert not cond.validity.trusted and cond.validity.mean_shift is None


def test_benign_posterior_is_trusted_and_quiet():
    net = ngp.MLP(3, 64, activation="tanh", C_b=0.1)
    XA = np.linspace(-1, 1, 4)[:, None]
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        fw = ngp.posterior(net, XA, 0.3 * np.sin(2 * XA[:, 0]), [[0.2]], noise=0.1)
    assert fw.validity.trusted and fw.validity.reasons == ()
    assert fw.validity.mean_shift < 0.05 and fw.validity.evidence_correction < 0.1
    assert "trusted" in str(fw.validity)


def test_matrix_free_validity_is_a_validity():
    """The matrix-free diagnostic (eps, eta) is an ngp.Validity like the exact path's, with the same verdict rule
    (eps <= EPS_MAX and eta <= ETA_MAX, all finite, no negative variance)."""
    from ngp import _matrix_free as mf

    ok = mf.validity(0.5 * mf.EPS_MAX, 0.5 * mf.ETA_MAX, 0.01)
    assert isinstance(ok, ngp.Validity) and ok.trusted and ok.reasons == () and ok.message == ""
    assert (ok.eps, ok.eta, ok.eta_se) == (0.5 * mf.EPS_MAX, 0.5 * mf.ETA_MAX, 0.01)
    assert ok.mean_shift is None and "eps" in str(ok) and "(trusted)" in str(ok)
    for eps, eta in ((2 * mf.EPS_MAX, 0.0), (0.0, 2 * mf.ETA_MAX), (float("nan"), 0.0)):
        bad = mf.validity(eps, eta)
        assert not bad.trusted and len(bad.reasons) == 1 and bad.message == bad.reasons[0]
        assert "validated regime" in mf.regime_warning(bad)
    neg = mf.validity(0.0, 0.0, negative_variance=True)
    assert not neg.trusted and neg.negative_variance and "negative" in neg.message


def test_the_exact_paths_verdict_judges_the_expansion_parameter():
    """The exact path's ``trusted`` ignored ``eps`` (the matrix-free path's does not): a prober's gelu ``ResMLP`` at
    width 8 had ``eps = 1.0``, every first-order measure under its threshold, ``trusted``, and mean, variance and
    evidence further from importance sampling than the GP's. Here relu depth 3 at width 8 (``eps = 1.25``, the
    first-order measures 0.010, 0.019 and 0.32 and ``eta`` 0.28, all under; at noise 0.1 ``eta`` is 1.02, over):
    not trusted for ``eps`` alone, on both paths, with the
    prior's expansion warnings only (no second warning for the same reason); at width 64 (``eps = 0.16``) trusted."""
    rng = np.random.default_rng(0)
    X, XB = rng.normal(size=(4, 2)), rng.normal(size=(2, 2))
    Y = np.sin(X[:, 0])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cond = ngp.condition(ngp.MLP(3, 8, activation="relu"), X, Y, noise=0.2)
        post = cond.predict(XB)
        mf = ngp.condition(ngp.MLP(3, 8, activation="relu"), X, Y, noise=0.2, method="matrix_free", samples=256)
    for v in (post.validity, cond.validity, mf.validity):
        assert not v.trusted and v.eps > 1.2 and [r for r in v.reasons if r.startswith("eps")], v
    assert post.validity.reasons == ("eps = max|V|/(nK^2) 1.25 > 0.3",)
    assert max(post.validity.mean_shift, post.validity.var_change) < ngp.Validity.VAR_CHANGE_MAX
    said = {str(w.message) for w in caught if issubclass(w.category, ngp.ExpansionWarning)}
    assert said and all("expansion parameter" in m or "validated regime" in m for m in said), said
    wide_cond = ngp.condition(ngp.MLP(3, 64, activation="relu"), X, Y, noise=0.2)
    wide = wide_cond.predict(XB)
    assert wide.validity.trusted and wide.validity.eps < 0.2
    # at another width (with_width) the prior has not judged eps: the verdict's warning says it (it was silent)
    with pytest.warns(ngp.ExpansionWarning, match=r"posterior: .*eps = max\|V\|/\(nK\^2\) 1\.25 > 0\.3"):
        narrow = wide_cond.with_width(8).predict(XB)
    assert not narrow.validity.trusted


def test_evidence_grid_flags_and_skips_untrusted_rows():
    """The first-order evidence correction is ``c / n`` (here ``c = 3.06e4`` nats, also from the equation
    of ``docs/theory.md`` "Evidence" evaluated by hand on ``prior.K, K1, V``): 7662 nats at width 4, 59.9
    at 512 (untrusted too), 0.47 at 65536 (trusted: below ``EVIDENCE_MAX`` = 1 nat)."""
    X = np.linspace(-1, 1, 5)[:, None]
    y = 3.0 * np.sin(3 * X[:, 0])  # targets far above the prior's scale: narrow widths untrusted
    with pytest.warns(ngp.ExpansionWarning, match="trusted"):
        grid = ngp.evidence_grid(X, y, widths=[4, 512, 65536], depths=[3], noise=0.01)
    rows = {r["width"]: r for r in grid.rows}
    assert not rows[4]["trusted"] and not rows[512]["trusted"] and rows[65536]["trusted"]
    for r in grid.rows:
        assert r["evidence_correction"] == pytest.approx(abs(r["log_evidence"] - r["log_evidence_gp"]))
    # first order: the correction scales as 1/n (the unexpanded metric adds O(1/n^2))
    assert rows[512]["evidence_correction"] * 512 == pytest.approx(rows[65536]["evidence_correction"] * 65536,
                                                                   rel=1e-3)
    assert grid.best()["width"] == 65536
    assert "NO" in grid.table()


def _relu_polar_expectation(C, pat):
    """``E[prod_j relu(z_j)^p_j]`` for ``z ~ N(0, C)`` (2x2), total degree 4, by exact radial
    integration (``int r^5 e^{-r^2/2} dr = 8``) and adaptive quadrature in the angle."""
    from scipy.integrate import quad

    w_, U = np.linalg.eigh(C)
    R = U * np.sqrt(w_)

    def g(phi):
        z = R @ np.array([np.cos(phi), np.sin(phi)])
        return np.prod(np.maximum(z, 0.0) ** np.array(pat))

    return 8.0 / (2 * np.pi) * quad(g, 0.0, 2 * np.pi, limit=500, epsabs=1e-14, epsrel=1e-13)[0]


@pytest.mark.parametrize("pat", [(2, 2), (1, 3), (3, 1)])
def test_relu_four_point_derivative_matches_exact_polar_quadrature(pat):
    """Price's derivative of the relu four-point rule (Euler's relation on the diagonal, where relu''
    is a delta function autodiff cannot see) against the derivative of an independent adaptive
    quadrature; the rule itself (128 nodes a dimension) is accurate to ~1e-3 for kinked integrands."""
    from ngp._finite import FOUR_POINT_ORDERS, _gaussian_product
    from ngp._gaussian import pruned_tensor_rule

    rng = np.random.default_rng(0)
    A = rng.normal(size=(2, 2))
    C0 = A @ A.T + 0.3 * np.eye(2)
    dC = np.array([[1.0, 0.3], [0.3, -0.5]])
    nodes, w = pruned_tensor_rule(2, FOUR_POINT_ORDERS[2])
    relu = _activations.activation("relu")
    f = lambda C: _gaussian_product(relu.fn, pat, True)(C[None], jnp.asarray(nodes), jnp.asarray(w))[0]
    jv = float(jax.jvp(f, (jnp.asarray(C0),), (jnp.asarray(dC),))[1])
    h = 1e-4
    exact = (_relu_polar_expectation(C0 + h * dC, pat) - _relu_polar_expectation(C0 - h * dC, pat)) / (2 * h)
    assert np.isfinite(jv)
    assert jv == pytest.approx(exact, rel=3e-3)


@pytest.mark.validation
def test_relu_evidence_gradient_finite_with_zero_input_and_duplicates():
    """Zero input row, critical C_b = 0 and a duplicated row: value and gradient finite (no NaN)."""
    X = np.array([[0.0, 0.0], [1.0, 0.5], [1.0, 0.5 + 1e-12], [-0.3, 0.8]])
    Y = np.array([[0.1], [0.4], [0.4], [-0.2]])
    net = ngp.MLP(3, 32, activation="relu", C_W=2.0, C_b=0.0)
    f = lambda cw: ngp.log_evidence(net, X, Y, noise=0.1, C_W=cw, C_b=0.0)
    val, g = jax.value_and_grad(f)(2.0)
    assert np.isfinite(float(val)) and np.isfinite(float(g))
    h = 1e-4
    with pytest.warns(ngp.ExpansionWarning, match="expansion parameter"):  # 0.31 on these rows, above 0.3
        fd = (float(f(2.0 + h)) - float(f(2.0 - h))) / (2 * h)
    assert float(g) == pytest.approx(fd, rel=3e-3, abs=1e-3 * abs(fd))


@pytest.mark.validation
def test_cli_flags_untrusted_finite_width_rows(tmp_path, capsys):
    """`ngp regress` with little noise on rough targets: the finite-width row is marked, with the reason."""
    from ngp.cli import main

    rng = np.random.default_rng(3)
    x = rng.normal(size=(16, 2))
    y = 5.0 * np.sign(x[:, 0]) + rng.normal(size=16)
    path = tmp_path / "d.csv"
    path.write_text("a,b,target\n" + "\n".join(f"{a},{b},{t}" for (a, b), t in zip(x, y)))
    rc = main(["regress", str(path), "--target", "target", "--width", "4", "--depth", "3", "--noise",
               "0.001", "--n-train", "10", "--n-test", "4", "--activation", "relu", "--c-w", "2.0", "--fixed",
               "--quiet"])
    out = capsys.readouterr()
    assert rc == 0
    assert "finite width n=4: untrusted:" in out.out
    assert "docs/validity.md" in out.out


# ----------------------------------------------------------------------------- log_evidence's own arguments
def test_log_evidence_checks_its_hyperparameters_and_singular_kernels():
    """ngp.log_evidence's C_W/C_b overrides get the checks of ngp.Dense (a negative C_W gave the evidence of
    pure noise, a negative C_b NaN or an unrelated LinAlgError); duplicate inputs with noise = 0 raise a
    LinAlgError naming X_train (the GP path returned NaN); traced values (gradients) are not checked."""
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(4, 2)), np.sin(rng.normal(size=4))
    net = ngp.MLP(3, 16)
    for fw in (False, True):
        with pytest.raises(ValueError, match=r"C_W: must be > 0"):
            ngp.log_evidence(net, X, y, noise=0.1, C_W=-1.0, finite_width=fw)
        with pytest.raises(ValueError, match=r"C_W\[1\]: must be > 0"):
            ngp.log_evidence(net, X, y, noise=0.1, C_W=[1.0, -1.0, 1.0], finite_width=fw)
        with pytest.raises(ValueError, match=r"C_b: must be >= 0"):
            ngp.log_evidence(net, X, y, noise=0.1, C_b=-0.01, finite_width=fw)
        with pytest.raises(ValueError, match=r"C_W: must be finite"):
            ngp.log_evidence(net, X, y, noise=0.1, C_W=float("nan"), finite_width=fw)
        with pytest.raises(TypeError, match=r"C_W"):
            ngp.log_evidence(net, X, y, noise=0.1, C_W="a", finite_width=fw)
        with pytest.raises(np.linalg.LinAlgError, match="X_train: duplicate training inputs"):
            ngp.log_evidence(net, np.vstack([X, X[:1]]), np.r_[y, y[:1]], noise=0.0, finite_width=fw)
    # the same values as the network's own, given as overrides (numbers, a JAX array) or traced
    ref = float(ngp.log_evidence(net, X, y, noise=0.1, finite_width=False))
    assert float(ngp.log_evidence(net, X, y, noise=0.1, C_W=jnp.ones(3), C_b=0.0, finite_width=False)) == ref
    g = jax.grad(lambda c: ngp.log_evidence(net, X, y, noise=0.1, C_W=jnp.stack([c, 1.0, c]), finite_width=False))
    assert np.isfinite(float(g(1.0)))


def test_log_evidence_refuses_what_condition_refuses_and_warns_as_it_does():
    """Duplicated inputs with different targets at noise 1e-13 (reciprocal condition number 1e-13): condition refused,
    ngp.log_evidence returned +8.1e14 (the GP's -1.25e12) without a word; at noise 1e-4 (well conditioned) +383 against
    the GP's -258 with no warning, where Conditioned.log_evidence warns. The matrix-free path passed its pivot check
    on the singular kernel (evidence 2.3e15 with an eta warning only)."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(5, 2))
    y = np.sin(X[:, 0])
    Xd, yd = np.r_[X, X[:2]], np.r_[y, y[:2] + 0.5]
    net = ngp.MLP(2, 16)
    for fw in (True, False):
        with pytest.raises(np.linalg.LinAlgError, match="X_train: the training kernel .* numerically singular"):
            ngp.log_evidence(net, Xd, yd, noise=1e-13, finite_width=fw)
        with pytest.raises(np.linalg.LinAlgError, match="numerically singular"):
            ngp.condition(net, Xd, yd, noise=1e-13)
    with pytest.warns(ngp.ExpansionWarning, match="log_evidence: the first-order"):
        v = float(ngp.log_evidence(net, Xd, yd, noise=1e-4))
    with pytest.warns(ngp.ExpansionWarning):
        c = ngp.condition(net, Xd, yd, noise=1e-4)
        assert abs(v - c.log_evidence) < 1e-6 * abs(v)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # trusted: quiet; warn=False: quiet
        ngp.log_evidence(net, X, y, noise=0.1)
        ngp.log_evidence(net, Xd, yd, noise=1e-4, warn=False)
    with pytest.raises(np.linalg.LinAlgError, match="numerically singular"):
        ngp.condition(net, np.r_[X, X[:1]], np.r_[y, y[:1] + 0.3], noise=1e-13, method="matrix_free",
                      samples=64).log_evidence


def test_missing_or_ragged_inputs_are_named():
    """X_test=None reached np.concatenate in gp_posterior and importance_posterior (a raw 'all the input arrays must
    have same number of dimensions'); a ragged X_train reached np.ndim in condition's path choice ('inhomogeneous
    shape'); ngp.activation(np.tanh) is covered in test_activations.py."""
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(4, 2)), rng.normal(size=4)
    net = ngp.MLP(2, 16)
    calls = [lambda: ngp.gp_posterior(net, X, y, None, noise=0.1),
             lambda: ngp.posterior(net, X, y, None, noise=0.1),
             lambda: ngp.reference.importance_posterior(net, X, y, None, noise=0.1, num_samples=100),
             lambda: ngp.reference.nuts_posterior(net, X, y, None, noise=0.1)]
    for call in calls:
        with pytest.raises(TypeError, match=r"X_test: expected a numeric array of shape \(N_test, n0\), got None"):
            call()
    with pytest.raises(TypeError, match=r"X_train: expected a numeric array"):
        ngp.condition(net, [[1.0, 2.0], [3.0]], [1.0, 2.0], noise=0.1)


def test_a_fixed_four_point_order_beyond_memory_is_refused_before_any_work():
    """four_point_order=1000 ran until numpy failed to allocate a 30.5 GiB weight tensor (the CLI then advised raising
    --max-memory, which is not the cause): refused at the option's check, with the estimate, against max_memory."""
    X = np.random.default_rng(0).normal(size=(3, 2))
    with pytest.raises(MemoryError, match=r"four_point_order=1000: .* needs about 1.12e\+04 GiB \(> max_memory=4 GiB"):
        ngp.MLP(2, 16).prior(X, four_point_order=1000)
    with pytest.raises(MemoryError, match="four_point_order=100"):
        ngp.MLP(2, 16).prior(X, four_point_order=100, max_memory=2**30)  # 100^4 x 12 bytes = 1.1 GiB
    assert ngp.MLP(2, 16).prior(X, four_point_order=30).V.shape == (3, 3, 3, 3)


def test_evidence_and_fits_run_in_float64_in_a_float32_session():
    """log_evidence and fit_hyperparameters were not wrapped: in a float32 session V came out NaN (a LinAlgError
    blaming the expansion, NaN gradients), the GP evidence float32, the fit elsewhere (C_W 0.652 against 0.619), all
    without the float32 warning; the matrix-free path computed in float32 (1/n means 1-1.6 s.e. off). Concrete calls
    now run in float64 with the warning; a finite-width evidence traced in float32 is refused by name; a float32
    call no longer fills the four-point calibration cache (error estimates 33x larger after one)."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(4, 2))
    Y = np.sin(X[:, :1])
    net = ngp.MLP(2, 32, activation="tanh", C_W=1.5, C_b=0.1)
    ref = [float(ngp.log_evidence(net, X, Y, noise=0.1, finite_width=fw)) for fw in (True, False)]
    mf = dict(noise=0.05, method="matrix_free", samples=256, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ngp.ExpansionWarning)
        ref_mf = ngp.condition(net, X, Y, **mf).predict(X[:2])
    with jax.enable_x64(False):
        for fw, r in zip((True, False), ref):
            with pytest.warns(ngp.AccuracyWarning, match="float32"):
                v = ngp.log_evidence(net, X, Y, noise=0.1, finite_width=fw)
            assert v.dtype == np.float64 and float(v) == r
        with pytest.warns(ngp.AccuracyWarning, match="float32"), pytest.raises(ValueError, match="finite_width: under"):
            jax.grad(lambda nz: ngp.log_evidence(net, X, Y, noise=nz))(0.1)
        with pytest.warns(ngp.AccuracyWarning, match="float32"):  # a Gaussian network has no 1/n terms: not refused
            g = jax.grad(lambda nz: ngp.log_evidence(ngp.MLP(1), X, Y, noise=nz))(0.1)
        assert np.isfinite(float(g))
        # a duplicate with different targets at noise 1e-9: -1.2e7 under jit (the test's threshold, 1e-12, was below
        # float32's rounding); NaN now, as the concrete call refuses
        Xd, Yd = np.r_[X, X[:1]], np.r_[Y, Y[:1] + 0.3]
        with pytest.warns(ngp.AccuracyWarning, match="float32"):
            v = jax.jit(lambda nz: ngp.log_evidence(ngp.MLP(2, 32), Xd, Yd, noise=nz, finite_width=False))(1e-9)
        assert np.isnan(float(v))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ngp.ExpansionWarning)
            with pytest.warns(ngp.AccuracyWarning, match="float32"):
                low_mf = ngp.condition(net, X, Y, **mf).predict(X[:2])
    assert low_mf.mean.dtype == np.float64
    np.testing.assert_array_equal(low_mf.mean, ref_mf.mean)
    # NTK statistics are read after net.prior's float64 scope has closed: they were float32 (Theta1 2.5e-6 off at depth
    # 3); a C_W no other test uses, so that no cached float64 table answers for them
    deep = ngp.MLP(3, 32, activation="tanh", C_W=1.4321, C_b=0.1)
    with jax.enable_x64(False), warnings.catch_warnings():
        warnings.simplefilter("ignore", ngp.AccuracyWarning)
        theta1 = deep.prior(X).Theta1
    np.testing.assert_array_equal(theta1, deep.prior(X).Theta1)


def test_traced_arguments_of_functions_that_are_not_differentiable_are_named():
    """jax.grad through gp_posterior / posterior / a network's C_W raised JAX's TracerArrayConversionError naming
    nothing; a jitted evidence of duplicate inputs with noise 0 returned a finite value set by rounding (16.02,
    where the concrete call refuses): NaN now."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(4, 2))
    Y = np.sin(X[:, :1])
    net = ngp.MLP(2, 32)
    with pytest.raises(TypeError, match="noise: expected a concrete number, got a traced value"):
        jax.grad(lambda nz: ngp.gp_posterior(net, X, Y, X[:2], noise=nz).mean.sum())(0.1)
    with pytest.raises(TypeError, match="C_W: expected a concrete number, got a traced value"):
        jax.grad(lambda c: ngp.MLP(2, 32, C_W=c).prior(X).K.sum())(1.0)
    _check_jitted_evidence_of_duplicates(net, X, Y, finite_width=False)
    # a near-duplicate (reciprocal condition number 9.8e-14): the concrete call refuses, and the jitted one gave
    # -3.7e11 (its test read the Cholesky pivots, whose ratio is ~20x the reciprocal condition number); NaN now
    Xn, Yn = np.r_[X, X[:1] + 3e-6], np.r_[Y, Y[:1] + 0.3]
    with pytest.raises(np.linalg.LinAlgError, match="reciprocal condition number 9.8"):
        ngp.log_evidence(net, Xn, Yn, noise=0.0, finite_width=False)
    assert np.isnan(float(jax.jit(lambda nz: ngp.log_evidence(net, Xn, Yn, noise=nz, finite_width=False))(0.0)))
    # and its gradient: it was exactly 0 (a jnp.where's gradient in the refused branch), which an optimiser reads as
    # a stationary point
    value, grad = jax.value_and_grad(lambda nz: ngp.log_evidence(net, Xn, Yn, noise=nz, finite_width=False))(0.0)
    assert np.isnan(float(value)) and np.isnan(float(grad))


def _check_jitted_evidence_of_duplicates(net, X, Y, *, finite_width):
    Xd, Yd = np.r_[X, X[:1]], np.r_[Y, Y[:1]]
    f = jax.jit(lambda nz: ngp.log_evidence(net, Xd, Yd, noise=nz, finite_width=finite_width))
    assert np.isnan(float(f(0.0)))
    want = float(ngp.log_evidence(net, Xd, Yd, noise=0.1, finite_width=finite_width))
    assert float(f(0.1)) == pytest.approx(want, rel=1e-6)


@pytest.mark.validation
def test_jitted_finite_width_evidence_of_duplicates_is_nan():
    """The finite-width half of the check above (its compilation, 4-5 s and ~0.8 GB, is the default run's largest
    single allocation): 16.02 where the concrete call refuses, NaN now."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(4, 2))
    _check_jitted_evidence_of_duplicates(ngp.MLP(2, 32), X, np.sin(X[:, :1]), finite_width=True)


def test_prediction_at_noiseless_training_inputs_is_exact_and_quiet():
    """At a test input equal to a training input observed with noise = 0 the posterior mean is the target and
    the variance 0, at every order in 1/n: the GP's variance was -3e-16 (sqrt NaN), the first-order one raised
    a false negative-variance ExpansionWarning and an AccuracyWarning about error bounds of V's quadrature that
    do not matter there. Now: variances >= 0 (rounding clipped), neither warning (the evidence correction's,
    noise = 0, stays), means at the targets within their bounds; the other point keeps its positive variance."""
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(4, 2)), np.sin(rng.normal(size=4))
    net = ngp.MLP(3, 32)
    XB = np.vstack([X[:3], [[0.3, 0.1]]])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        p = ngp.posterior(net, X, y, XB, noise=0.0)
        g = ngp.gp_posterior(net, X, y, XB, noise=0.0)
        m = ngp.condition(net, X, y, noise=0.0).predict(XB)
        ngp.posterior(net, X, y, X[:3], noise=0.0)  # only training inputs
    said = [str(w.message) for w in caught]
    assert not [s for s in said if "numerical error" in s or "negative" in s], said
    for post in (p, m):  # the target, within the bounds (the training and joint priors' V differ by rounding)
        assert np.all(np.abs(post.mean[:3, 0] - y[:3]) <= post.mean_error[:3, 0] + 1e-13)
        assert np.all(post.var >= 0) and np.all(post.var[:3] <= post.var_error[:3] + 1e-13)
        assert post.var[3, 0] > 1e-4
    assert np.all(np.einsum("aiai->ai", p.cov) >= 0)
    assert np.all(g.var >= 0) and np.all(np.isfinite(g.std)) and np.all(np.diag(g.cov_test) >= 0)
    np.testing.assert_allclose(g.mean[:3, 0], y[:3], rtol=0, atol=1e-12)


def test_negligible_error_bounds_are_not_warned_about():
    """A 1/n mean correction that vanishes by symmetry (a ResMLP at a zero input: ~1e-17) made any error bound
    look huge against it (a 6.5e6 % AccuracyWarning for a bound of 5e-13): bounds below NUMERICAL_NEGLIGIBLE
    predictive standard deviations are not warned about (test_posterior.py::test_numerical_error_warning keeps
    the warning where the bound matters)."""
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(4, 2)), np.sin(rng.normal(size=4))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        q = ngp.posterior(ngp.ResMLP(3, 32), X, y, np.zeros((1, 2)), noise=0.1)
    sd = np.sqrt(q.gp.var + 0.1)
    assert np.max(np.abs(q.mean_correction)) < 1e-12 and 0 < np.max(q.mean_error) < ngp.Validity.NUMERICAL_WARN
    assert np.max(q.mean_error) > 0.1 * np.max(np.abs(q.mean_correction))  # the ratio alone would warn
    assert np.max(q.mean_error / sd) < 1e-6


def test_condition_checks_net_options_and_flags_by_name():
    """A bad net gave AttributeError (None) or a shape error quoting a property object (the class ngp.MLP); the
    matrix-free path ignored misspelled options (max_memroy: no memory cap); the exact path took samples=-3 and
    seed="x" (both paths check them now; the exact path does not read them); full_cov="no" counted as True."""
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(5, 2)), rng.normal(size=5)
    net = ngp.MLP(2, 64)  # (width 16: eta 1.23 on these random targets, an ExpansionWarning)
    for bad in (None, "net", ngp.MLP):
        with pytest.raises(TypeError, match="net: expected a network"):
            ngp.condition(bad, X, y, noise=0.1)
    with pytest.raises(TypeError, match=r"unknown option\(s\) \['max_memroy'\]"):
        ngp.condition(net, X, y, noise=0.1, method="matrix_free", max_memroy=10)
    with pytest.raises(ValueError, match="samples"):
        ngp.condition(net, X, y, noise=0.1, samples=-3)
    with pytest.raises(TypeError, match="seed"):
        ngp.condition(net, X, y, noise=0.1, method="exact", seed="x")
    for method in ("exact", "matrix_free"):
        cond = ngp.condition(net, X, y, noise=0.1, method=method, **({"samples": 64} if method != "exact" else {}))
        with pytest.raises(TypeError, match="full_cov: expected True or False"):
            cond.predict(X[:1], full_cov="no")
        # a fraction of a byte was rounded down to 0 (the exact path then refused everything, the matrix-free path
        # said "must be > 0, got 0.0"); None, the matrix-free path's documented "no bound", was a TypeError
        with pytest.raises(ValueError, match=r"^max_memory: a number of bytes, at least 1, got 0\.5"):
            ngp.condition(net, X, y, noise=0.1, method=method, max_memory=0.5)
        none = ngp.condition(net, X, y, noise=0.1, method=method, max_memory=None,
                             **({"samples": 64} if method != "exact" else {})).predict(X[:1])
        np.testing.assert_array_equal(none.mean, cond.predict(X[:1]).mean)
    with pytest.raises(ValueError, match=r"^max_memory: a number of bytes, at least 1, got 0\.5"):
        ngp.sample_networks(net, X, 2, max_memory=0.5)


def test_zero_dimensional_arrays_count_as_numbers_and_flags():
    """Integer and boolean options given as concrete 0-d arrays (jnp.array(1) as a seed, np.bool_) are accepted, as
    before the checks by name; floats, bools as integers, and numbers as flags are not."""
    from ngp._validate import check_seed, count, flag

    assert check_seed(jnp.array(1)) == 1 and count(np.int64(4), "n") == 4 and flag(jnp.array(False), "f") is False
    X = np.random.default_rng(0).normal(size=(3, 2))
    a = ngp.sample_networks(ngp.MLP(2, 4), X, 2, seed=jnp.array(1)).outputs
    np.testing.assert_array_equal(a, ngp.sample_networks(ngp.MLP(2, 4), X, 2, seed=1).outputs)
    for bad in (jnp.array(1.5), jnp.array(True), 2.0):
        with pytest.raises(TypeError, match="seed"):
            check_seed(bad)
    with pytest.raises(TypeError, match="full_cov"):
        flag(0, "full_cov")
    assert ngp.datasets.synthetic_1d(4, seed=None)[0].shape == (4, 1)  # None: fresh randomness, as documented


def test_posterior_takes_solver_as_methods_earlier_name():
    """ngp.posterior(..., solver="exact") raised a raw TypeError (condition got solver twice); solver is method's
    documented earlier name: "exact" gives the default's answer, "matrix_free" the same refusal as method=."""
    rng = np.random.default_rng(0)
    X, Z = rng.normal(size=(3, 2)), rng.normal(size=(1, 2))
    net = ngp.MLP(2, 32, activation="tanh")
    Y = np.sin(X[:, :1])
    ref = ngp.posterior(net, X, Y, Z, noise=0.1)
    np.testing.assert_array_equal(ngp.posterior(net, X, Y, Z, noise=0.1, solver="exact").mean, ref.mean)
    with pytest.raises(ValueError, match="solver: ngp.posterior needs the exact path"):
        ngp.posterior(net, X, Y, Z, noise=0.1, solver="matrix_free")
    with pytest.raises(ValueError, match="solver: expected one of"):
        ngp.posterior(net, X, Y, Z, noise=0.1, solver="fast")


def test_fuzzed_arguments_are_named():
    """Found by fuzzing the public API: a bare OverflowError from multipliers whose squares overflow (C_W = 1e300,
    Scale(1e300), gamma = 1e160, criticality's xi = 1e300); JAX's 'grad requires real-valued outputs' for an
    activation returning booleans; smooth="False" read as True; criticality's K = "1" read as 1.0; a non-callable
    loss_fn accepted until the first call; method=<array> met NumPy's 'truth value is ambiguous'; targets of 1e80
    blamed on K + K1/n; a depth-1 network's rank-deficient NTK blamed on duplicate inputs; the fit's default noise
    bounds crossed for targets of variance below 1e-7 (numpy's 'high - low < 0')."""
    X = np.linspace(-1, 1, 8).reshape(4, 2)
    Y = np.array([0.1, -0.2, 0.3, 0.0])
    for make, name in ((lambda: ngp.MLP(2, 8, C_W=1e300), "C_W"), (lambda: ngp.MLP(2, 8, C_b=1e80), "C_b"),
                       (lambda: ngp.Scale(1e300), "alpha"), (lambda: ngp.ResMLP(3, 8, gamma=1e160), "gamma"),
                       (lambda: ngp.criticality.residual_depth_flow("tanh", C_W=1, C_b=0, gamma=1, xi=1e300, K0=1,
                                                                    depth=5), "xi")):
        with pytest.raises(ValueError, match=f"^{name}: .* is too large: the finite-width cumulants use its fourth"):
            make()
    assert ngp.MLP(2, 8, C_W=1e70).C_W == (1e70, 1e70)
    # learning-rate factors (a prober, stop 92): lambda_W = 1e200 was a bare OverflowError from the NTK's A, and
    # lambda_b = 1e200 an A of inf without a word
    net = ngp.MLP(3, 8)
    for make, name in ((lambda: ngp.MLP(3, 8, lambda_W=1e200), "lambda_W"),
                       (lambda: ngp.MLP(3, 8, lambda_b=[1.0, 1e200, 1.0]), r"lambda_b\[1\]"),
                       (lambda: net.prior(X, lambda_b=1e200), "lambda_b"),
                       (lambda: ngp.trained_ensemble(net, X, Y, X[:1], lambda_W=1e200), "lambda_W")):
        with pytest.raises(ValueError, match=f"^{name}: .* is too large: the NTK's 1/n statistics use its powers"):
            make()
    assert ngp.MLP(3, 8, lambda_W=1e70).lambda_W == (1e70,) * 3
    # a parameterization's multiplied value: said when the network is built, not at prior.Theta (the reviewer)
    with pytest.raises(ValueError, match=r"^lambda_W: layer 1's value times the 'mup' parameterization's multiplier "
                                         r"at width \(1000, 1000\) \(base_width 1\) is 1e\+77"):
        ngp.MLP(3, 1000, lambda_W=1e74, parameterization="mup")
    for fn in (lambda x: x > 0, lambda x: (x > 0).astype(int), lambda x: x + 1j):
        with pytest.raises(TypeError, match="^activation: .* must return real floating-point values"):
            ngp.MLP(3, 8, activation=fn)
    with pytest.raises(TypeError, match="^smooth: expected True or False"):
        ngp.activation(jnp.tanh, smooth="False")
    for K in ("1", True):
        with pytest.raises(TypeError, match="^K: expected a positive number"):
            ngp.criticality.susceptibilities("tanh", K)
    with pytest.raises(TypeError, match="^loss_fn: expected a callable"):
        ngp.train.jacobian_regularized(3, lambda p, x: x, lambda_jr=0.1)
    for kw in ({"method": np.array(["exact", "auto"])}, {"solver": np.array(["exact"])}):
        with pytest.raises(TypeError, match=f"^{next(iter(kw))}: expected one of"):
            ngp.condition(ngp.MLP(3, 8), X, Y, noise=0.1, **kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ngp.ExpansionWarning)
        with pytest.raises(ValueError, match="^Y_train: the log evidence overflows"):
            ngp.log_evidence(ngp.MLP(3, 8), X, Y * 1e80, noise=0.1)
        with pytest.raises(ValueError, match=r"^log_evidence: the network's finite-width cumulants \(K1, V\)"), \
                np.errstate(over="ignore", invalid="ignore"):
            ngp.log_evidence(ngp.MLP(3, 8, activation="relu", C_W=1e60), X, Y, noise=0.1)  # not the targets
        # under jax.grad (not jit) duplicates at noise 0 raised a LinAlgError (a concrete boolean): NaN, as documented
        Xd, Yd = np.r_[X, X[:1]], np.r_[Y, Y[:1]]
        value, grad = jax.value_and_grad(lambda nz: ngp.log_evidence(ngp.MLP(3, 8), Xd, Yd, noise=nz))(0.0)
        assert np.isnan(float(value)) and np.isnan(float(grad))
    assert ngp.activation(lambda x: jnp.tanh(x).astype(jnp.bfloat16)).smooth  # a JAX float type: accepted
    # the NTK is singular in exact arithmetic: its smallest eigenvalue is rounding, clamped at 0 where negative
    # (0.00e+00 or ~1e-17 by the BLAS build), never the old negative reciprocal condition
    rounding = r"(0\.00e\+00|\d\.\d\de-(1[6-9]|2\d))"
    with pytest.raises(ValueError, match=rf"^X_train: .* NTK block is singular .* condition {rounding} .* NTK's rank"):
        ngp.trained_ensemble(ngp.MLP(1), X, Y, X[:2])
    with pytest.raises(ValueError, match="^K0: the pre-activation variance must be > 0"):  # ignored when unused
        ngp.criticality.asymptotic_law(ngp.criticality.critical_point("tanh"), 5, K0=-1)
    masked = np.ma.masked_array(X, mask=np.eye(4, 2, dtype=bool))
    with pytest.raises(ValueError, match="^X: a masked array with 2 masked entries"):
        ngp.MLP(3, 8).prior(masked)
    with pytest.raises(ValueError, match="^Y_train: a masked array with 1 masked"):
        ngp.gp_posterior(ngp.MLP(3, 8), X, np.ma.masked_array(Y, mask=[0, 1, 0, 0]), X[:1], noise=0.1)
    assert ngp.MLP(3, 8).prior(np.ma.masked_array(X)).K.shape == (4, 4)  # nothing masked: fine
    with pytest.raises(ValueError, match="^Y_train: the targets' variance overflows"):  # was 'noise: must be finite'
        ngp.fit_hyperparameters(ngp.MLP(3, 8), X, Y * 1e199, finite_width=False)
    with pytest.warns(ngp.ConvergenceWarning, match="C_W ended at its lower bound"):  # tiny targets: tiny C_W
        fit = ngp.fit_hyperparameters(ngp.MLP(3, 8), X, Y * 1e-3, finite_width=False, num_starts=2)
    assert 0 < fit.noise < 10 * np.var(Y * 1e-3)
