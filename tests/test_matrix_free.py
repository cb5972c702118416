"""Matrix-free finite-width posterior (``ngp._matrix_free``).

The reference is the exact first-order posterior computed with the dense four-point vertex
(``ngp.condition(..., method="exact")``, dense vertex components): an independent code path. Its
numbers, for the small problems below, are stored in ``tests/data/matrix_free_reference.json``
by ``benchmarks/matrix_free_validation.py`` (the dense path takes minutes for gelu, too slow here).
Tolerances come from the standard errors the estimator reports (4 s.e.), and every comparison
also checks that those errors resolve the 1/n correction, so a test cannot pass by reporting
huge errors.
"""

import json
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

import ngp
from ngp import _matrix_free as mf

# Monte-Carlo estimator checks compile large kernels (minutes on 2 cores): run by .ci/run-validation
pytestmark = pytest.mark.validation

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = 4096


@pytest.fixture(scope="module")
def refs():
    return json.loads((Path(__file__).parent / "data" / "matrix_free_reference.json").read_text())


def _problem(ref, width=None):
    act = ngp.activation(ref["act"])
    L = ref["depth"]
    C_W, C_b = (ref["C_W"],) * L, (ref["C_b"],) * L
    kb = mf.kernel_blocks(act, np.array(ref["XA"]), np.array(ref["XB"]), C_W, C_b)
    widths = ((width or ref["width"]),) * (L - 1)
    return act, kb, C_W, C_b, widths, np.array(ref["Y"])


def _run(ref, *, samples=SAMPLES, seed=0, width=None, **kw):
    act, kb, C_W, C_b, widths, Y = _problem(ref, width)
    kw.setdefault("warn", False)
    return mf.matrix_free_posterior(act, kb, C_W, C_b, widths, Y, noise=ref["noise"], samples=samples, seed=seed, **kw)


def _compare(r, ref):
    out = {}
    for q, val, se in (("mean", r.mean, r.mean_se), ("var", r.var, r.var_se), ("log_evidence", r.log_evidence, r.log_evidence_se)):
        val, se = np.ravel(val), np.ravel(se)
        exact, gp = np.ravel(ref[q]), np.ravel(ref["gp_" + q])
        out[q] = (val, se, exact, gp)
    return out


@pytest.mark.parametrize("key", ["tanh-L2", "tanh-L3", "tanh-L4", "gelu-L3", "relu-L3"])
def test_matches_exact_path(refs, key):
    ref = refs[key]
    r = _run(ref, samples=4 * SAMPLES, seed=7)
    for q, (val, se, exact, gp) in _compare(r, ref).items():
        assert np.all(np.abs(val - exact) <= 4 * se), (q, val, exact, se)
        # the check has teeth: the reported error resolves the 1/n correction
        assert np.max(se) < 0.25 * np.max(np.abs(exact - gp)), (q, se, exact - gp)
    # the GP part and its evidence are exact
    np.testing.assert_allclose(r.gp_mean.ravel(), ref["gp_mean"], rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(r.gp_log_evidence, ref["gp_log_evidence"], rtol=1e-10)


@pytest.mark.parametrize("key", ["tanh-L2", "tanh-L3"])
def test_standard_errors_are_honest(refs, key):
    """Over 50 seeds the z-scores against the exact answer have unit spread."""
    ref = refs[key]
    zs = {q: [] for q in ("mean", "var", "log_evidence")}
    for seed in range(50):
        r = _run(ref, samples=1024, seed=seed)
        for q, (val, se, exact, _) in _compare(r, ref).items():
            zs[q].append((val - exact) / se)
    for q, z in zs.items():
        z = np.concatenate(z)
        assert 0.8 <= np.std(z) <= 1.25, (q, np.std(z))
        assert abs(np.mean(z)) < 4 / np.sqrt(z.size) + 0.15, (q, np.mean(z))


def test_k1_matches_dense_vertex(refs):
    """K1 from the pair-restricted recursion equals the dense path's K1 (which uses all of V)."""
    for key, rtol in (("tanh-L3", 1e-7), ("tanh-L4", 1e-7), ("gelu-L3", 1e-7), ("relu-L3", 1e-7)):
        # relu: both exact (dense: Gaussian orthant rule; here: the angular rule, next test)
        ref = refs[key]
        act, kb, C_W, C_b, widths, _ = _problem(ref)
        K1AA, K1BA, k1B, _, _ = mf.finite_width_blocks(act, kb, C_W, C_b, widths)
        K1 = np.array(ref["K1"])
        NA = K1AA.shape[0]
        scale = np.max(np.abs(K1))
        np.testing.assert_allclose(K1AA, K1[:NA, :NA], atol=rtol * scale)
        np.testing.assert_allclose(K1BA, K1[NA:, :NA], atol=rtol * scale)
        np.testing.assert_allclose(k1B, np.diag(K1)[NA:], atol=rtol * scale)


def test_relu_pair_moments_exact():
    """Angular rule for E[relu(z_x)^p relu(z_y)^q] against 2-D adaptive quadrature."""
    from scipy import integrate

    act = ngp.activation("relu")
    K = np.array([[1.3, -0.4], [-0.4, 0.7]])
    L = np.linalg.cholesky(K)
    got = mf._angular_moments(act, jnp.array([1.3]), jnp.array([0.7]), jnp.array([[-0.4]]), ((2, 2), (3, 1), (1, 3)))
    for (p, q), g in zip(((2, 2), (3, 1), (1, 3)), np.asarray(got)[:, 0, 0]):
        def f(v, u):
            z = L @ np.array([u, v])
            return max(z[0], 0) ** p * max(z[1], 0) ** q * np.exp(-(u * u + v * v) / 2) / (2 * np.pi)

        want = integrate.dblquad(f, -10, 10, -10, 10, epsabs=1e-12)[0]
        assert abs(g - want) < 1e-9, (p, q, g, want)


def test_deep_linear_network_is_exact():
    """Deep linear nets (C_b = 0): K1 = 0 and V_(xx)(xx) = 2 (L - 1) K_xx^2 exactly (docs/theory.md)."""
    act = ngp.activation("linear")
    rng = np.random.default_rng(1)
    XA, XB = rng.normal(size=(5, 3)), rng.normal(size=(2, 3))
    L = 4
    C_W, C_b = (0.9,) * L, (0.0,) * L
    kb = mf.kernel_blocks(act, XA, XB, C_W, C_b)
    K1AA, K1BA, k1B, (p, q, r, t), _ = mf.finite_width_blocks(act, kb, C_W, C_b, (7,) * (L - 1))
    scale = float(np.max(np.abs(kb[-1][0])))
    assert np.max(np.abs(K1AA)) < 1e-12 * scale and np.max(np.abs(K1BA)) < 1e-12 * scale
    np.testing.assert_allclose(p, 2 * (L - 1) * np.diagonal(kb[-1][0]) ** 2, rtol=1e-12)


def test_kernel_blocks_match_prior(refs):
    ref = refs["tanh-L3"]
    act, kb, *_ = _problem(ref)
    net = ngp.MLP(ref["depth"], ref["width"], activation=ref["act"], C_W=ref["C_W"], C_b=ref["C_b"])
    XA, XB = np.array(ref["XA"]), np.array(ref["XB"])
    kernels = net.prior(np.concatenate([XA, XB])).kernels
    NA = XA.shape[0]
    for (KAA, KBA, kB), K in zip(kb, kernels):
        np.testing.assert_allclose(KAA, K[:NA, :NA], atol=1e-12)
        np.testing.assert_allclose(KBA, K[NA:, :NA], atol=1e-12)
        np.testing.assert_allclose(kB, np.diag(K)[NA:], atol=1e-12)


def test_reproducible_for_fixed_seed(refs):
    ref = refs["tanh-L3"]
    a, b, c = (_run(ref, seed=s) for s in (3, 3, 4))
    np.testing.assert_array_equal(a.mean, b.mean)
    np.testing.assert_array_equal(a.var_se, b.var_se)
    assert a.log_evidence == b.log_evidence
    assert not np.array_equal(a.mean, c.mean)


def test_more_samples_smaller_errors(refs):
    ref = refs["tanh-L3"]
    small, big = _run(ref, samples=1024), _run(ref, samples=16 * 1024)
    for a, b in ((small.mean_se, big.mean_se), (small.var_se, big.var_se), (small.log_evidence_se, big.log_evidence_se)):
        assert np.max(b) < 0.5 * np.max(a)


def test_validity_diagnostic_scales_with_width_and_warns(refs):
    ref = refs["tanh-L3"]
    r32 = _run(ref, width=32)
    r8 = _run(ref, width=8)
    # same samples: the first-order vertex terms scale exactly like 1/n
    assert r8.validity.eta == pytest.approx(4 * r32.validity.eta, rel=1e-10)
    assert r8.validity.eps == pytest.approx(4 * r32.validity.eps, rel=1e-10)
    # the widest power-of-two fraction of 32 outside the validated regime (eps and eta grow like 1/width)
    narrow = 1
    while r32.validity.eta * narrow <= mf.ETA_MAX and r32.validity.eps * narrow <= mf.EPS_MAX:
        narrow *= 2
        assert narrow <= 32
    with pytest.warns(ngp.ExpansionWarning, match="validated regime"):
        _run(ref, width=32 // narrow, warn=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        big = _run(ref, width=4096, warn=True)
    assert big.validity.trusted


def test_bad_arguments(refs):
    ref = refs["tanh-L3"]
    act, kb, C_W, C_b, widths, Y = _problem(ref)
    with pytest.raises(ValueError, match="len"):
        mf.matrix_free_posterior(act, kb, C_W[:-1], C_b, widths, Y, noise=0.1)
    with pytest.raises(ValueError, match="depth"):
        mf.matrix_free_posterior(act, kb[:1], C_W[:1], C_b[:1], (), Y, noise=0.1)
    kink = ngp.activation(lambda x: jnp.abs(x), smooth=False)
    with pytest.raises(ValueError, match="non-smooth"):
        mf.matrix_free_posterior(kink, kb, C_W, C_b, widths, Y, noise=0.1)
    XA = np.array(ref["XA"])
    kb2 = mf.kernel_blocks(act, np.concatenate([XA, XA[:1]]), np.array(ref["XB"]), C_W, C_b)
    with pytest.raises(np.linalg.LinAlgError):
        mf.matrix_free_posterior(act, kb2, C_W, C_b, widths, np.concatenate([Y, Y[:1]]), noise=0.0)


SHARDED = textwrap.dedent(
    """
    import json, sys
    import jax
    jax.config.update("jax_enable_x64", True)
    import numpy as np
    import ngp
    from ngp import _matrix_free as mf
    ref = json.loads(sys.argv[1])
    act = ngp.activation(ref["act"])
    L = ref["depth"]
    C_W, C_b = (ref["C_W"],) * L, (ref["C_b"],) * L
    kb = mf.kernel_blocks(act, np.array(ref["XA"]), np.array(ref["XB"]), C_W, C_b)
    args = (act, kb, C_W, C_b, (ref["width"],) * (L - 1), np.array(ref["Y"]))
    one = mf.matrix_free_posterior(*args, noise=ref["noise"], samples=1024, seed=5, warn=False)
    many = mf.matrix_free_posterior(*args, noise=ref["noise"], samples=1024, seed=5, warn=False, devices=jax.devices())
    print(json.dumps(dict(n=len(jax.devices()), a=[one.mean.tolist(), one.var.tolist(), one.log_evidence, one.mean_se.tolist()],
                          b=[many.mean.tolist(), many.var.tolist(), many.log_evidence, many.mean_se.tolist()])))
    """
)


def test_sharded_over_devices_matches_one_device(refs):
    """The batch axis split over 4 (forced host) devices gives the same numbers as one device."""
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
           "PYTHONPATH": os.pathsep.join([str(ROOT)] + [p for p in [os.environ.get("PYTHONPATH")] if p])}
    proc = subprocess.run([sys.executable, "-c", SHARDED, json.dumps(refs["relu-L3"])], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["n"] == 4
    for a, b in zip(out["a"], out["b"]):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-14)


# ------------------------------------------------------------------ public API: ngp.condition(solver=...)
def _net(ref, width=None):
    return ngp.MLP(ref["depth"], width or ref["width"], activation=ref["act"], C_W=ref["C_W"], C_b=ref["C_b"])


@pytest.mark.filterwarnings("ignore:ngp. the first-order finite-width posterior is outside")
def test_condition_matrix_free_agrees_with_exact_path(refs):
    """ngp.condition(..., solver="matrix_free") against the dense exact path's numbers (4 reported s.e.),
    its evidence equal to the prediction's, and with_width equal to rescaling the 1/n terms."""
    ref = refs["tanh-L2"]
    XA, XB, Y = np.array(ref["XA"]), np.array(ref["XB"]), np.array(ref["Y"])
    cond = ngp.condition(_net(ref), XA, Y, noise=ref["noise"], solver="matrix_free", samples=4 * SAMPLES, seed=7)
    assert cond.method == "matrix_free"
    post = cond.predict(XB)
    assert post.method == "matrix_free" and post.cov is None
    for q, se in (("mean", post.mean_se), ("var", post.var_se), ("log_evidence", post.log_evidence_se)):
        val, se = np.ravel(getattr(post, q)), np.ravel(se)
        exact, gp = np.ravel(ref[q]), np.ravel(ref["gp_" + q])
        assert np.all(np.abs(val - exact) <= 4 * se), (q, val, exact, se)
        assert np.max(se) < 0.25 * np.max(np.abs(exact - gp)), (q, se)
    np.testing.assert_allclose(post.gp.mean.ravel(), ref["gp_mean"], rtol=1e-9, atol=1e-12)
    # the evidence does not depend on the test inputs (same training samples)
    assert cond.log_evidence == post.log_evidence and cond.log_evidence_se == post.log_evidence_se
    # the exact path's Validity, carrying the matrix-free diagnostics (eps, eta) of the training side
    assert isinstance(cond.validity, ngp.Validity) and isinstance(post.validity, ngp.Validity)
    assert post.validity.eps == cond.validity.eps == cond.expansion_parameter == post.expansion_parameter
    assert post.validity.eta == cond.validity.eta and post.validity.negative_variance == bool(np.any(post.var < 0))
    np.testing.assert_allclose(cond.gp.log_evidence, ref["gp_log_evidence"], rtol=1e-10)
    # a wider network: every 1/n term scaled by n_old / n_new
    wide = cond.with_width(4 * ref["width"]).predict(XB)
    np.testing.assert_allclose(wide.mean - wide.gp.mean, (post.mean - post.gp.mean) / 4, rtol=1e-10, atol=1e-15)
    np.testing.assert_allclose(wide.mean_se, post.mean_se / 4, rtol=1e-12)
    with pytest.raises(NotImplementedError, match="full_cov"):
        cond.predict(XB, full_cov=True)


def test_condition_solver_choice():
    rng = np.random.default_rng(0)
    net = ngp.MLP(3, 16, activation="tanh")
    small, big = rng.normal(size=(10, 2)), rng.normal(size=(65, 2))
    # construction does no work on either path beyond the training solve
    assert ngp.condition(net, small, small[:, :1], noise=0.1).method == "exact"
    assert ngp.condition(net, big, big[:, :1], noise=0.1).method == "matrix_free"
    assert ngp.condition(net, big, big[:, :1], noise=0.1, solver="exact").method == "exact"
    assert ngp.condition(net, small, small[:, :1], noise=0.1, solver="matrix_free").method == "matrix_free"
    scaled = ngp.serial(ngp.Dense(16), ngp.Elementwise("tanh"), ngp.Scale(0.5), ngp.Dense(1))
    with pytest.raises(NotImplementedError, match="fully connected"):
        ngp.condition(scaled, small, small[:, :1], noise=0.1, solver="matrix_free")
    mixed = ngp.serial(ngp.Dense(16), ngp.Elementwise("tanh"), ngp.Dense(16), ngp.Elementwise("relu"), ngp.Dense(1))
    assert ngp.condition(mixed, big, big[:, :1], noise=0.1).method == "exact"  # auto: not supported -> exact
    with pytest.raises(ValueError, match="solver"):
        ngp.condition(net, small, small[:, :1], noise=0.1, solver="dense")
