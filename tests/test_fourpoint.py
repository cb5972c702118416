"""Four-point expectations (ngp._fourpoint) against independent references.

* relu family: a high-precision mpmath evaluation of a different reduction (direct Stein
  recursion, Plackett's integral on another path, expansion in linear/relu factors instead of
  sign flips), on random, rank-deficient and nearly singular blocks; exact identities
  (the sign-flip sum equals Isserlis' theorem; duplicated directions merge).
* smooth activations: a dense tensor Gauss-Hermite rule at high order (written here in NumPy),
  and the engine's own rule (ngp._finite._product_expectations) at high order.
"""

import itertools
import math
import warnings

import jax
import jax.numpy as jnp
import mpmath as mp
import numpy as np
import pytest

import ngp
from ngp._finite import _product_expectations, multisets
from ngp._fourpoint import multiset_expectations, product_expectations
from ngp._gaussian import gauss_hermite

from ._fourpoint_blocks import holder, random_block
from ._orthant_mp import as_dict, relu_family_product


@pytest.fixture
def rng():
    return np.random.default_rng(20261130)


def _mp_blocks(rng, kind, u):
    """Covariance blocks built in 40-digit arithmetic (then rounded for ngp)."""
    with mp.workdps(40):
        if kind == "random":
            A = rng.normal(size=(u, u + 1))
        elif kind == "rank":  # rank 2
            A = rng.normal(size=(u, 2))
        elif kind == "near":  # inputs 0 and 1 with correlation ~ 1 - 1e-10
            A = rng.normal(size=(u, u))
            A[1] = 1.7 * A[0] + 2e-5 * rng.normal(size=u)
        A = [[mp.mpf(float(x)) for x in row] for row in A]
        S = [[mp.fsum(a * b for a, b in zip(A[i], A[j])) + (mp.mpf("1e-25") if i == j else 0) for j in range(u)]
             for i in range(u)]
    return S, np.array([[float(x) for x in row] for row in S])


@pytest.mark.parametrize(
    "pattern,kind,slopes",
    [
        ((1, 1, 1, 1), "random", (1.0, 0.0)),
        ((1, 1, 1, 1), "rank", (1.0, 0.1)),
        ((2, 1, 1), "near", (1.0, 0.0)),
        ((1, 1, 2), "rank", (1.0, -0.3)),
        ((1, 2, 1), "near", (1.0, 0.2)),
        ((3, 1), "near", (1.0, 0.0)),
        ((2, 2), "random", (1.0, 0.05)),
        ((1, 3), "rank", (1.0, 0.0)),
    ],
)
def test_relu_family_against_mpmath(rng, pattern, kind, slopes):
    S_mp, S = _mp_blocks(rng, kind, len(pattern))
    with mp.workdps(40):
        ref = float(relu_family_product(as_dict(S_mp), pattern, slopes))
    act = ngp.activation("relu") if slopes[1] == 0 else ngp.activation("leaky_relu", slope=slopes[1])
    val, err = product_expectations(act, S, pattern)
    scale = np.prod(np.diag(S) ** (np.asarray(pattern) / 2))
    assert abs(val[0] - ref) <= 1e-12 * scale, (val, ref, scale)
    # the error estimate is honest and small
    assert err[0] >= abs(val[0] - ref) or abs(val[0] - ref) < 1e-15 * scale
    assert err[0] < 1e-12 * scale


def test_relu_sign_flips_sum_to_isserlis(rng):
    """sum_s prod_j s_j^{p_j} E[prod relu(s_j z_j)^{p_j}] = E[prod z_j^{p_j}], on random,
    rank-deficient and nearly singular 4x4 blocks (correlation 1 - 1e-12, exact duplicates)."""
    blocks = []
    for kind in range(6):
        A = rng.normal(size=(4, 4 if kind < 3 else 2))
        if kind == 1:
            A[2] = 0.6 * A[0] - 1.3 * A[1]  # rank 3
        if kind == 2:
            A[3] = -2.0 * A[1] + 1e-6 * rng.normal(size=4)  # correlation -(1 - ~1e-13)
        if kind == 4:
            A[1] = 3.0 * A[0]  # exactly duplicated direction
        blocks.append(A @ A.T)
    C = np.stack(blocks)
    relu = ngp.activation("relu")
    linear = ngp.activation("linear")
    for pattern, idx in (((1, 1, 1, 1), [0, 1, 2, 3]), ((2, 1, 1), [0, 1, 3]), ((2, 2), [1, 3])):
        Cp = C[:, idx][:, :, idx]
        total = 0.0
        for s in itertools.product((1.0, -1.0), repeat=len(pattern)):
            sign = np.prod(np.asarray(s) ** np.asarray(pattern))
            total = total + sign * product_expectations(relu, Cp * np.outer(s, s), pattern)[0]
        exact, _ = product_expectations(linear, Cp, pattern)
        scale = np.prod(np.diagonal(Cp, axis1=1, axis2=2) ** (np.asarray(pattern) / 2), axis=1)
        np.testing.assert_array_less(np.abs(total - exact) / scale, 1e-12)


def test_relu_duplicated_direction_merges(rng):
    """z_b = c z_a (c > 0): relu(z_a) relu(z_b) = c relu(z_a)^2, so the 4-input value is c times
    the 3-input (2, 1, 1) value; both agree to 1e-12 although the 4x4 block is singular."""
    A = rng.normal(size=(3, 4))
    B = np.vstack([A[0], 2.5 * A[0], A[1], A[2]])
    C4 = B @ B.T
    C3 = A @ A.T
    for act in (ngp.activation("relu"), ngp.activation("leaky_relu", slope=0.2)):
        v4, e4 = product_expectations(act, C4, (1, 1, 1, 1))
        v3, _ = product_expectations(act, C3, (2, 1, 1))
        scale = np.prod(np.sqrt(np.diag(C4)))
        assert abs(v4[0] - 2.5 * v3[0]) < 1e-12 * scale
        assert e4[0] < 1e-12 * scale


# ----------------------------------------------------------------------------- smooth activations
def _dense(fn, C, pattern, m):
    """Tensor Gauss-Hermite rule with m nodes per direction in the eigen-coordinates of C."""
    lam, U = np.linalg.eigh(C)
    R = U * np.sqrt(np.clip(lam, 0, None))
    u = len(pattern)
    x, w = gauss_hermite(m)
    grid = np.stack([g.ravel() for g in np.meshgrid(*([x] * (u - 1)), indexing="ij")], axis=1)
    wg = np.prod(np.stack([g.ravel() for g in np.meshgrid(*([w] * (u - 1)), indexing="ij")], axis=1), axis=1)
    f = jax.jit(lambda z: jnp.prod(fn(z) ** jnp.asarray(pattern, dtype=z.dtype), axis=1))
    total = 0.0
    for x1, w1 in zip(x, w):
        if w1 * wg.max() < 1e-21 * w.max() ** u:
            continue
        X = np.concatenate([np.full((grid.shape[0], 1), x1), grid], axis=1)
        total += np.sum(np.asarray(f(jnp.asarray(X @ R.T))) * wg) * w1
    return total


SMOOTH = {
    "tanh": lambda: ngp.activation("tanh"),
    "erf": lambda: ngp.activation("erf"),
    "gelu": lambda: ngp.activation("gelu"),
    "swish": lambda: ngp.activation("swish"),
    "user": lambda: ngp.activation(lambda x: jnp.tanh(x) + 0.1 * x**2, name="tanh_plus_square"),
}


@pytest.mark.parametrize("name", sorted(SMOOTH))
def test_smooth_against_dense_rule(rng, name):
    """1e-9 relative (to prod E[sigma^4]^{p/4}) or better at K <= 2; estimates are honest."""
    act = SMOOTH[name]()
    cases = [((1, 1, 1, 1), 0.3, 40), ((1, 2, 1), 1.0, 100), ((2, 1, 1), 2.0, 160)]
    errs, ests = [], []
    for pattern, K, m in cases:
        C = random_block(rng, len(pattern), K)
        ref = _dense(act.fn, C, pattern, m)
        val, est = product_expectations(act, C, pattern)
        scale = holder(act, C, pattern)
        errs.append(abs(val[0] - ref) / scale)
        ests.append(est[0] / scale)
    errs, ests = np.asarray(errs), np.asarray(ests)
    assert np.all(errs < 1e-9), errs
    assert np.all(ests < 1e-9), ests  # the rule met its target
    # honest: the estimate covers the error wherever it is above the dense reference's own ~1e-12
    assert np.all((ests >= errs) | (errs < 1e-11)), (errs, ests)


@pytest.mark.parametrize("name", ["erf", "sin"])
def test_smoothed_table_against_closed_forms(rng, name):
    """The tabulated E[sigma(mu + s w)] (trapezoid in w, used for activations without a closed form)
    against the closed forms erf(mu / sqrt(1 + 2 s^2)) and sin(mu) exp(-s^2 / 2), for s up to 3:
    within its tolerance, and its error bound covers the actual error."""
    from ngp._fourpoint import _TABLE_H0, _TABLE_LEVELS, _TABLE_W, _smoothed_table

    act = ngp.activation(name)
    mu = rng.uniform(-6, 6, 400)
    s = np.concatenate([[0.0, 1e-8], rng.uniform(0, 3, 398)])
    tol = np.full(mu.size, 1e-12)
    val, bound, evals = _smoothed_table(act.fn, mu, s, tol)
    exact = np.asarray(act.smoothed(jnp.asarray(mu), jnp.asarray(s)))
    err = np.abs(val - exact)
    assert np.all(bound <= tol), bound.max()
    assert np.all(err <= np.maximum(bound, 4e-16)), (err.max(), bound[np.argmax(err - bound)])
    assert evals.max() <= 2 * _TABLE_W / (_TABLE_H0 / 2**_TABLE_LEVELS) + 1  # within the finest level


@pytest.mark.parametrize("name", ["erf", "sin"])
def test_smoothed_table_small_residuals_take_three_nodes(rng, name):
    """Residual stds at most 1e-4 (nearly singular blocks; _TABLE_PAIRS' first bound) take the 3-node Gauss-Hermite rule
    when its change from fn(mu) is within the tolerance: 4 evaluations (3 + 1), within the tolerance of the closed
    form, the bound covering the error; at a tighter tolerance the same points go on to the trapezoid
    rule (4 evaluations more than its own) and still meet it."""
    from ngp._fourpoint import _TABLE_PAIRS, _smoothed_table

    small, fine, coarse = _TABLE_PAIRS[0]
    assert (small, fine, coarse) == (1e-4, 3, 1)
    act = ngp.activation(name)
    mu = rng.uniform(-6, 6, 300)
    s = np.concatenate([[0.0, small], 10 ** rng.uniform(-12, np.log10(small), 298)])
    exact = np.asarray(act.smoothed(jnp.asarray(mu), jnp.asarray(s)))
    val, bound, evals = _smoothed_table(act.fn, mu, s, np.full(mu.size, 1e-8))
    np.testing.assert_array_equal(evals, 4.0)  # s^2 |fn''| / 2 <= 1e-8 at every point (3 + 1 nodes)
    assert np.all(bound <= 1e-8)
    assert np.all(np.abs(val - exact) <= np.maximum(bound, 4e-16)), np.abs(val - exact).max()
    # 1e-17: below the 3-node rule's change wherever s^2 |fn''(mu)| / 2 is above rounding
    big = 0.5 * s**2 * np.abs(np.asarray(jax.vmap(jax.grad(jax.grad(act.fn)))(jnp.asarray(mu)))) > 1e-15
    assert big.sum() > 50
    val2, bound2, evals2 = _smoothed_table(act.fn, mu, s, np.full(mu.size, 1e-17))
    assert np.all(evals2[big] >= 4 + 25)
    assert np.all(np.abs(val2 - exact) <= np.maximum(bound2, 4e-16)), np.abs(val2 - exact).max()


@pytest.mark.parametrize("name", ["erf", "sin", "tanh"])
def test_smoothed_table_gauss_hermite_pairs(rng, name):
    """Residual stds in (1e-4, 0.2] take an embedded Gauss-Hermite pair (10 against 6 nodes up to 0.1, 16
    against 10 up to 0.2: 16 and 26 activation calls instead of the trapezoid rule's 49), kept when the pair's
    change is within the tolerance. Against the closed forms of erf and sin, and scipy's adaptive quadrature
    for tanh (poles at distance pi / 2 from the real axis: the pairs' hardest built-in case): within the
    tolerance, the bound covering the error; at a tolerance near rounding some points go on to the trapezoid
    rule (the pair's calls counted) and still meet it."""
    from scipy.integrate import quad

    from ngp._fourpoint import _TABLE_PAIRS, _smoothed_table

    assert [p[:1] for p in _TABLE_PAIRS[1:]] == [(0.1,), (0.2,)]
    act = ngp.activation(name)
    mu = rng.uniform(-6, 6, 300)
    s = np.concatenate([[1e-4 * (1 + 1e-12), 0.1, 0.2], rng.uniform(1e-4, 0.2, 297)])
    if act.smoothed is not None:
        exact, floor = np.asarray(act.smoothed(jnp.asarray(mu), jnp.asarray(s))), 4e-16
    else:  # quad's own error ~1e-16 (it warns of round-off at 1e-15); the C library's tanh, not JAX's: a JAX call
        # per node took 2.8 of the test's 3 s (the margins against the bound were the same with either: scratch)
        f = {"tanh": math.tanh}[name]

        def one(m, sg):
            return quad(lambda w: f(m + sg * w) * math.exp(-0.5 * w * w), -12, 12, epsabs=1e-15,
                        epsrel=1e-15, limit=200)[0] / math.sqrt(2 * math.pi)

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            exact, floor = np.array([one(m, sg) for m, sg in zip(mu, s)]), 1e-15
    val, bound, evals = _smoothed_table(act.fn, mu, s, np.full(mu.size, 1e-12))
    np.testing.assert_array_equal(evals, np.where(s <= 0.1, 16.0, 26.0))  # every point keeps its pair at 1e-12
    assert np.all(bound <= 1e-12)
    assert np.all(np.abs(val - exact) <= np.maximum(bound, floor)), np.abs(val - exact).max()
    val2, bound2, evals2 = _smoothed_table(act.fn, mu, s, np.full(mu.size, 1e-16))
    on = evals2 > np.where(s <= 0.1, 16.0, 26.0)
    assert on.sum() > 10
    assert np.all(evals2[on] >= np.where(s <= 0.1, 16, 26)[on] + 49)  # the pair's calls, then the trapezoid's
    assert np.all(np.abs(val2 - exact) <= np.maximum(bound2, floor)), np.abs(val2 - exact).max()


def test_rotation_puts_the_regression_along_one_direction(rng):
    """The tabulated path's coordinates: an orthogonal change of basis (the head's covariance R R^T is
    unchanged) after which beta = (|beta|, 0, ...); rows with beta = 0 are left as they are."""
    from ngp._fourpoint import _rotate_to_beta

    R = rng.normal(size=(5, 3, 3))
    beta = rng.normal(size=(5, 3))
    beta[2] = 0.0
    R2, b2 = _rotate_to_beta(R, beta)
    np.testing.assert_allclose(R2 @ np.swapaxes(R2, 1, 2), R @ np.swapaxes(R, 1, 2), atol=1e-13)
    np.testing.assert_allclose(b2[:, 0], np.linalg.norm(beta, axis=1), atol=1e-13)
    np.testing.assert_allclose(b2[:, 1:], 0.0, atol=1e-13)
    np.testing.assert_array_equal(R2[2], R[2])


def test_tanh_integrates_one_input_by_table():
    """tanh, swish and callables have no closed-form smoothing: one input of power 1 is integrated from
    a table, so a (1, 1, 1, 1) entry costs three activation calls per node plus the table."""
    C = random_block(np.random.default_rng(5), 4, 1.0)
    for act in (ngp.activation("tanh"), ngp.activation(lambda x: jnp.tanh(x) + 0.1 * x**2, name="tps")):
        st = {}
        product_expectations(act, C, (1, 1, 1, 1), stats=st)
        assert 3 * st["nodes"][0] < st["evaluations"][0] < 3.5 * st["nodes"][0], st


@pytest.mark.parametrize("name", ["tanh", "user"])
def test_table_path_with_a_zero_residual_against_a_product_rule(name, monkeypatch):
    """Four inputs of a rank-3 kernel, ``z = A xi`` with ``A`` (4, 3) (the split input a combination of the others,
    as for the first layer's kernel of 2-feature inputs): the kernel evaluates the split input itself instead of a
    table, also where the computed residual variance is rounding noise above 0 (within 64 ulps of the variance,
    taken as 0). Checked against a 100-node Gauss-Hermite product rule in ``xi`` to 1e-9 relative, with an
    honest estimate. Two blocks have an exactly representable ``z4 = a z1 + b z2`` (residual exactly 0), six are
    generic."""
    from ngp import _fourpoint as fp

    act = SMOOTH[name]()
    A = np.random.default_rng(3).normal(size=(6, 4, 3))
    A *= np.sqrt(np.random.default_rng(3).uniform(0.5, 1.0, size=(6, 4, 1)) / np.sum(A**2, axis=2, keepdims=True))
    exact = [[[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0]], [[1, 0, 0], [0, 0.5, 0], [0, 0, 1], [0.5, 0.75, 0]]]
    A = np.concatenate([np.asarray(exact, dtype=float), A])
    C = A @ np.swapaxes(A, 1, 2)
    assert np.all(fp._smooth_setup(act, C, (1, 1, 1, 1))[2] == 0.0)  # the case named
    with monkeypatch.context() as m:  # some residuals are rounding noise above 0
        m.setattr(fp, "_RESIDUAL_ZERO", 0.0)
        assert np.any(fp._smooth_setup(act, C, (1, 1, 1, 1))[2] > 0)
    val, est = product_expectations(act, C, (1, 1, 1, 1))
    x, w = gauss_hermite(100)
    xi = np.stack([g.ravel() for g in np.meshgrid(x, x, x, indexing="ij")], axis=1)
    wi = np.prod(np.stack([g.ravel() for g in np.meshgrid(w, w, w, indexing="ij")], axis=1), axis=1)
    for k in range(C.shape[0]):
        ref = wi @ np.prod(np.asarray(act.fn(jnp.asarray(xi @ A[k].T))), axis=1)
        scale = holder(act, C[k], (1, 1, 1, 1))
        assert abs(val[k] - ref) / scale < 1e-9 and est[k] / scale < 1e-9, (k, val[k] - ref, est[k])
        assert est[k] >= abs(val[k] - ref) or abs(val[k] - ref) < 1e-12 * scale, (k, val[k] - ref, est[k])


def test_error_estimates_honest_and_not_absurd(rng):
    """At a loose tolerance the errors are visible: the estimate covers the actual error in most
    cases and is within a factor 1000 of it."""
    act = ngp.activation("tanh")
    C = np.stack([random_block(rng, 3, K) for K in (0.3, 0.6, 1.0, 1.0, 1.5, 2.0)])
    val, est = product_expectations(act, C, (1, 1, 2), rtol=1e-6)
    ref = np.array([_dense(act.fn, c, (1, 1, 2), 120) for c in C])
    err = np.abs(val - ref)
    assert np.mean(est >= err) >= 5 / 6, (err, est)
    assert np.all(est <= 1e3 * np.maximum(err, 1e-12)), (err, est)


def test_adapter_reproduces_engine_rule_at_high_order():
    X = np.random.default_rng(0).normal(size=(4, 3))
    K = np.asarray(ngp.MLP(2, 4, activation="tanh", C_W=0.8, C_b=0.1).prior(X).kernels[0])
    ms = multisets(4)
    act = ngp.activation("tanh")
    ref = _product_expectations(act, jnp.asarray(K), ms, {1: 300, 2: 160, 3: 96, 4: 48})
    val, err = multiset_expectations(act, K, ms)
    assert val.shape == err.shape == (ms.shape[0],)
    # the engine's rule at order 48 is itself accurate to a few 1e-9 here
    assert np.max(np.abs(val - ref)) < 1e-8 * np.max(np.abs(ref))
    assert np.max(err) < 1e-9 * np.max(np.abs(ref))
    # the relu family is exact, the old rule converges slowly through the kinks
    relu = ngp.activation("relu")
    val, err = multiset_expectations(relu, K, ms)
    ref = _product_expectations(relu, jnp.asarray(K), ms, {1: 300, 2: 160, 3: 96, 4: 40})
    assert np.max(np.abs(val - ref)) < 1e-4 * np.max(np.abs(ref))
    assert np.max(err) < 1e-12 * np.max(np.abs(val))


def test_bad_arguments():
    tanh = ngp.activation("tanh")
    with pytest.raises(ValueError, match="pattern"):
        product_expectations(tanh, np.eye(2), (1, 0))
    with pytest.raises(ValueError, match="shape"):
        product_expectations(tanh, np.eye(3), (1, 1))
    with pytest.raises(ValueError, match="rtol"):
        product_expectations(tanh, np.eye(2), (1, 1), rtol=0.0)
    kinked = ngp.activation(lambda x: jnp.maximum(x, 0.0), smooth=False)
    with pytest.raises(ValueError, match="non-smooth"):
        product_expectations(kinked, np.eye(2), (2, 2))
    with pytest.raises(ValueError, match="ms"):
        multiset_expectations(tanh, np.eye(3), np.zeros((2, 3), dtype=int))


# ----------------------------------------------------------------------------- the engine's V
def test_engine_relu_vertex_against_mpmath():
    """Depth 2 relu network: V at the output is C_W^2 Cov(s s, s s) at the first kernel; every
    four-input component against the 40-digit orthant evaluation (the old rule reached ~1e-5)."""
    X = np.random.default_rng(3).normal(size=(4, 3))
    C_W = 2.0
    prior = ngp.MLP(2, 8, activation="relu", C_W=C_W, C_b=0.1).prior(X, warn=False)
    K = np.asarray(prior.kernels[0])
    with mp.workdps(40):
        E4 = relu_family_product(as_dict(K), (1, 1, 1, 1))
        E2 = {(a, b): relu_family_product(as_dict(K[np.ix_([a, b], [a, b])]), (1, 1)) for a, b in ((0, 1), (2, 3))}
        ref = float(C_W**2 * (E4 - E2[0, 1] * E2[2, 3]))
    V = prior.V[0, 1, 2, 3]
    assert abs(V - ref) <= 1e-12 * abs(ref), (V, ref)
    assert np.max(prior.V_error) <= 1e-12 * np.max(np.abs(prior.V))


def test_engine_vertex_error_covers_actual_error():
    """tanh depth 3 at variances up to ~3: V at the default tolerance against V at a 1000x tighter
    one; the propagated estimate V_error bounds the difference, and is not absurdly pessimistic."""
    X = np.random.default_rng(0).normal(size=(4, 3))
    net = ngp.MLP(3, 16, activation="tanh", C_W=1.2, C_b=0.1)
    prior = net.prior(X, warn=False)
    tight = net.prior(X, warn=False, four_point_rtol=1e-12)
    err = np.abs(prior.V - tight.V)
    est = prior.V_error
    assert np.all(err <= est + 1e-3 * tight.V_error.max() + 1e-15)
    assert np.max(est) <= 1e-8 * np.max(np.abs(tight.V))
    assert np.max(est) <= 1e3 * max(np.max(err), 1e-12 * np.max(np.abs(tight.V)))
    # the explicit fixed-order rule carries no estimate
    fixed = net.prior(X, warn=False, four_point_order=24)
    assert np.all(np.isnan(fixed.V_error[0, 1, 2, 3]))
    with pytest.raises(ValueError, match="four_point_rtol"):
        net.prior(X, four_point_rtol=2.0)


def test_engine_k1_error_and_component_errors():
    """tanh depth 4 at variances <= 0.63: K1 at four_point_rtol = 1e-6 against 1e-12; K1_error (the two-input
    vertex errors carried through K1's recursion) covers the largest difference and is within 1e3 of it;
    per entry it is an estimate (measured up to 3.7x below the difference, on the single-input rows).
    The errors of chosen components (the recursion the posterior uses) equal the dense ones."""
    from ngp._vertex_error import component_errors, local2_error, packed_vertex_error

    X = 0.7 * np.random.default_rng(1).normal(size=(5, 3))
    net = ngp.MLP(4, 16, activation="tanh", C_W=1.2, C_b=0.1)
    loose = net.prior(X, warn=False, four_point_rtol=1e-6)
    tight = net.prior(X, warn=False, four_point_rtol=1e-12)
    diff, est = np.abs(loose.K1 - tight.K1), loose.K1_error
    assert np.max(diff) <= np.max(est) <= 1e3 * np.max(diff)
    assert np.all(diff <= 10 * est + tight.K1_error)
    assert np.all(loose.layers[1].K1_error == 0)  # K1 of the first two layers is exactly 0
    fresh = net.prior(X, warn=False, four_point_rtol=1e-6)._cumulants[-1]
    P = fresh.pairs.P
    p, q = np.triu_indices(P)
    comp = component_errors(fresh, p, q)  # before any dense error exists on this prior
    dense = packed_vertex_error(loose._cumulants[-1])
    np.testing.assert_allclose(comp, dense[p, q], rtol=1e-12, atol=0)
    cols = fresh.pairs.cols
    np.testing.assert_allclose(local2_error(fresh), dense[cols[:, :, None], cols[:, None, :]], rtol=1e-12, atol=0)


def _trapezoid(fn, C, pattern, h):
    """Trapezoidal rule with step ``h`` on [-9, 9]^u in the eigen-coordinates of C: exponentially
    accurate for integrands analytic in a strip (tanh(s x): error ~ exp(-pi^2 / (s h))), an
    independent reference at large variances where Gauss-Hermite converges slowly."""
    lam, U = np.linalg.eigh(C)
    R = U * np.sqrt(np.clip(lam, 0, None))
    u = len(pattern)
    x = np.arange(-9.0, 9.0 + h / 2, h)
    w = h * np.exp(-x * x / 2) / np.sqrt(2 * np.pi)
    grid = np.stack([g.ravel() for g in np.meshgrid(*([x] * (u - 1)), indexing="ij")], axis=1)
    wg = np.prod(np.stack([g.ravel() for g in np.meshgrid(*([w] * (u - 1)), indexing="ij")], axis=1), axis=1)
    f = jax.jit(lambda z: jnp.prod(fn(z) ** jnp.asarray(pattern, dtype=z.dtype), axis=1))
    total = 0.0
    for x1, w1 in zip(x, w):
        X = np.concatenate([np.full((grid.shape[0], 1), x1), grid], axis=1)
        total += np.sum(np.asarray(f(jnp.asarray(X @ R.T))) * wg) * w1
    return total


@pytest.mark.parametrize("K", [3.0, 5.0])
def test_error_estimate_honest_at_large_variance(rng, K):
    """tanh at variances 3 and 5, where Gauss-Hermite converges slowly (the rule may hit its largest
    orders): the estimate covers the error against a trapezoidal reference (two steps agree to
    < 1e-13), and is not absurdly pessimistic."""
    act = ngp.activation("tanh")
    for pattern, h in (((2, 2), 0.04), ((3, 1), 0.04), ((2, 1, 1), 0.09)):
        C = random_block(rng, len(pattern), K)[None]
        val, est = product_expectations(act, C, pattern)
        for i in range(1):
            ref = _trapezoid(act.fn, C[i], pattern, h)
            ref2 = _trapezoid(act.fn, C[i], pattern, 1.25 * h)
            scale = holder(act, C[i], pattern)
            assert abs(ref - ref2) < 1e-13 * scale, (pattern, ref, ref2)
            err = abs(val[i] - ref)
            assert est[i] >= err or err < 1e-13 * scale, (pattern, K, err / scale, est[i] / scale)
            assert est[i] <= 1e4 * max(err, 1e-12 * scale), (pattern, K, err / scale, est[i] / scale)


def _mp_fourth_moment(f, K, *, dps):
    """``E[f(z)^4]`` for ``z ~ N(0, K)`` by mpmath quadrature at ``dps`` digits (``f`` an mpmath function)."""
    s = mp.sqrt(K)
    with mp.workdps(dps):
        return float(mp.quad(lambda x: f(s * x) ** 4 * mp.npdf(x), [-mp.inf, -5, -2, -1, 0, 1, 2, 5, mp.inf]))


@pytest.mark.parametrize("K", [9.0, 16.0, 100.0])
def test_tolerance_met_at_large_variance(rng, K):
    """tanh at variances 9, 16 and 100, beyond the 250-node Gauss-Hermite rule (its error in <tanh^4> is 2e-5
    and 4e-4 at 9 and 16), and at 100 beyond the 255-node trapezoid rule (1.2e-5 in <tanh^4>; two directions of
    the wide rules stay within their node cap): the ladder's trapezoid rules meet the default tolerance (1e-9 of
    the Hoelder scale) and say so, against 30-digit mpmath (one input) and a trapezoidal reference whose two steps
    agree to < 1e-13 (two inputs)."""
    act = ngp.activation("tanh")
    blocks = [((4,), np.array([[[K]]]), _mp_fourth_moment(mp.tanh, K, dps=30))]
    h = 0.03 if K <= 16 else 0.012
    for pattern in ((2, 2), (3, 1)):
        C = random_block(rng, 2, K)
        ref, ref2 = _trapezoid(act.fn, C, pattern, h), _trapezoid(act.fn, C, pattern, 1.25 * h)
        assert abs(ref - ref2) < 1e-13 * holder(act, C, pattern), (pattern, ref, ref2)
        blocks.append((pattern, C[None], ref))
    for pattern, C, ref in blocks:
        val, est = product_expectations(act, C, pattern)
        scale = holder(act, C[0], pattern)
        assert abs(val[0] - ref) <= 1e-9 * scale, (pattern, abs(val[0] - ref) / scale)
        assert abs(val[0] - ref) <= est[0] + 1e-14 * scale and est[0] <= 1e-9 * scale, (pattern, est[0] / scale)


def _rank2_reference(fn, C, pattern, n=40001):
    """``E[prod_j fn(z_j)^p_j]`` for a block ``C`` of rank 2 (up to rounding) in NumPy: a trapezoid of ``n`` nodes
    on [-10, 10] along the leading eigenvector, 9-node Gauss-Hermite along the second (its variance is tiny here),
    summed by blocks of 1024 in NumPy and the block sums exactly (``math.fsum``: 1.2e-16 of the Hoelder scale from
    an exact sum of all terms on the test below, where that took 70% of the test's time)."""
    lam, U = np.linalg.eigh(C)
    lam = np.clip(lam, 0.0, None)
    a1 = U[:, -1] * np.sqrt(lam[-1])
    a2 = U[:, -2] * np.sqrt(lam[-2]) if len(lam) > 1 else np.zeros(1)
    u = np.linspace(-10.0, 10.0, n)
    wu = (20.0 / (n - 1)) * np.exp(-u * u / 2) / np.sqrt(2 * np.pi)
    t, wt = np.polynomial.hermite_e.hermegauss(9)
    z = u[None, :, None] * a1 + t[:, None, None] * a2  # (9, n, d)
    terms = (wt / wt.sum())[:, None] * wu * np.prod(np.asarray(jax.jit(fn)(z)) ** np.asarray(pattern), axis=-1)
    terms = np.concatenate([terms.ravel(), np.zeros(-terms.size % 1024)])
    return math.fsum(terms.reshape(-1, 1024).sum(axis=1))


@pytest.mark.parametrize("name, rtol", [("tanh", 1e-9), ("gelu", 1e-13)])
def test_wide_rules_resolve_large_variances_of_one_feature_inputs(name, rtol):
    """The first layer of inputs with one feature (``K = C_b + C_W x x^T``, rank 2) at ``C_W = 10``, ``C_b = 1e-6``
    (``ngp regress`` on statsmodels' engel): variances up to 182, where the 255-node trapezoid rule erred by 1e-3
    for tanh (and said so); along the one direction of large scale the wide rules (up to 2047 nodes) meet the
    tolerance, against a NumPy quadrature of the rank-2 integral, with honest estimates. gelu at ``rtol = 1e-13``:
    its fourth power grows, and rules truncated at 8 err by ~1e-12 of the scale, which their companions on the
    same span do not show (the wide rules span [-10, 10])."""
    act = ngp.activation(name)
    x = np.array([-1.09, 0.31, 2.21, 4.27])
    K = 1e-6 + 10.0 * np.outer(x, x)
    ms = np.array(list(itertools.combinations_with_replacement(range(4), 4)))
    val, est = multiset_expectations(act, K, ms, rtol=rtol)
    for row, v, e in zip(ms, val, est):
        idx, pattern = np.unique(row, return_counts=True)
        C = K[np.ix_(idx, idx)]
        ref = _rank2_reference(act.fn, C, pattern)
        scale = holder(act, C, tuple(pattern))
        assert abs(v - ref) <= e + 1e-14 * scale, (row, abs(v - ref) / scale, e / scale)
        assert e <= rtol * scale, (row, e / scale)


def test_raised_rules_stay_within_the_node_cap():
    """Refinement raises every direction one ladder step; a rule with a direction above 255 nodes (a wide rule)
    runs only while its node counts multiply to at most ``_WIDE_NODES``; otherwise only the directions below the
    narrow top rise, or none (the row is capped). Initial rules beyond the cap are narrowed."""
    from ngp import _fourpoint as fp

    n = np.asarray(fp.LADDER, dtype=float)
    top, wide = fp._NARROW_TOP, len(fp.LADDER) - 1
    assert fp.LADDER[top] == 255 and fp.LADDER[wide] == 2047
    cases = [([5, 10, 20], [6, 11, 21]),  # narrow: every direction rises
             ([top, 3, 0], [top + 1, 4, 1]),  # one large direction, few nodes in the others: into the wide rules
             ([top, top, top], [top, top, top]),  # three wide directions would exceed the cap: capped
             ([top + 4, 30, 10], [top + 4, 30, 10]),  # 1023 x 251 x 12 nodes: nothing can rise within the cap
             ([wide, 3], [wide, 4]),  # the ladder's end: that direction stays
             ([top + 3, 26, 8], [top + 3, 27, 9])]  # 1023 x 184 x 12 would exceed; 767 x 184 x 12 does not
    for lad, want in cases:
        assert fp._raised(np.array([lad]))[0].tolist() == want, (lad, want)
    np.testing.assert_array_equal(fp._affordable(np.array([[wide, wide], [wide, 5], [top + 2, 20]])),
                                  [[top, top], [wide, 5], [top + 2, 20]])
    rng = np.random.default_rng(3)
    for d in (1, 2, 3, 4):
        lad = fp._affordable(rng.integers(0, len(fp.LADDER), size=(500, d)))
        up = fp._raised(lad)
        assert fp._within_nodes(lad).all() and fp._within_nodes(up).all()
        assert np.all(up >= lad) and np.all(up - lad <= 1)
        full = (up == np.minimum(lad + 1, wide)).all(axis=1)
        assert np.all(full | ~((up > lad) & (lad >= top)).any(axis=1))  # a partial rise keeps the wide directions
        assert np.all((np.prod(n[up], axis=1) <= fp._WIDE_NODES) | (up.max(axis=1) <= top))


def test_traced_rule_agrees_with_concrete_rule():
    """Under a JAX trace the engine uses the fixed jnp rule (FOUR_POINT_ORDERS); on concrete kernels
    the error-estimated rule. The two agree within the sum of their error estimates (the fixed rule's
    from the calibration, ngp._fourpoint.fixed_rule_errors)."""
    from ngp._finite import FOUR_POINT_ORDERS, four_point_values
    from ngp._fourpoint import fixed_rule_errors, split_multisets

    X = np.random.default_rng(1).normal(size=(4, 3))
    net = ngp.MLP(3, 16, activation="tanh", C_W=1.0, C_b=0.1)
    act = ngp.activation("tanh")
    K = np.asarray(net.prior(X, warn=False).kernels[0])
    ms = multisets(4)
    val, est = four_point_values(act, K, ms, errors=True)
    traced = jax.jit(lambda k: four_point_values(act, k, ms))(jnp.asarray(K))
    fixed = np.zeros(ms.shape[0])
    for pattern, (rows, idx) in split_multisets(ms).items():
        fixed[rows] = fixed_rule_errors(act, K[idx[:, :, None], idx[:, None, :]], pattern, FOUR_POINT_ORDERS[len(pattern)])
    diff = np.abs(np.asarray(traced) - np.asarray(val))
    assert np.all(diff <= est + fixed), (diff.max(), (est + fixed).min())


_MP_ACTS = {"tanh": mp.tanh, "erf": mp.erf, "gelu": lambda z: z * (1 + mp.erf(z / mp.sqrt(2))) / 2,
            "swish": lambda z: z / (1 + mp.exp(-z)), "sin": mp.sin, "callable sin": mp.sin}


@pytest.mark.parametrize("name", sorted(_MP_ACTS))
def test_fixed_rule_error_of_a_fourth_power(name):
    """The fixed rule's calibrated error (``fixed_rule_errors``) for one input to the fourth power, ``E[s(z)^4]``,
    against mpmath quadrature at variances 1-64: the actual error is at most ``1 / FIXED_MARGIN`` (10) times
    the estimate, the margin the split relies on, and the split keeps no such entry on the fixed rule whose
    error exceeds the tolerance. A calibration on the powers
    1 and 2 alone missed that ``s^4`` oscillates faster: for sin at variance 32 it claimed 1e-12 of the
    Hoelder scale for an error of 9.7e-9, at 64 for 4.7e-4, and the split kept both on the fixed rule
    (rtol 1e-9) for ``jnp.sin`` given as a callable (the named sin has a closed-form smoothing and never
    stays on the fixed rule)."""
    from ngp._finite import FOUR_POINT_ORDERS
    from ngp._fourpoint import FIXED_MARGIN, RTOL, fixed_rule_errors, fixed_rule_split

    act, f = ngp.activation(jnp.sin if name == "callable sin" else name), _MP_ACTS[name]
    c = np.array([1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0])
    K = np.diag(c)  # one input per variance: every entry in one call
    ms = np.repeat(np.arange(c.size)[:, None], 4, axis=1)
    ref = np.array([_mp_fourth_moment(f, v, dps=20) for v in c])
    err = np.abs(np.asarray(_product_expectations(act, jnp.asarray(K), ms, FOUR_POINT_ORDERS)) - ref)
    est = fixed_rule_errors(act, c[:, None, None], (4,), FOUR_POINT_ORDERS[1])
    scale = np.array([holder(act, np.array([[v]]), (4,)) for v in c])
    assert np.all(err <= est / FIXED_MARGIN), (c, err / scale, est / scale)
    kept, _ = fixed_rule_split(act, K, ms, FOUR_POINT_ORDERS)
    assert np.all(err[kept] <= RTOL * scale[kept]), (c[kept], err[kept] / scale[kept])


@pytest.mark.parametrize("chunk, tiles, pattern", [(4096, (8192, 2048, 128), (1, 2, 1)), (8, (256, 64, 8), (1, 2, 1)),
                                                    (8, (64, 32, 8), (1, 1, 1)), (4096, (8192, 2048, 128), (4, 1, 3)),
                                                    (4096, (64, 32, 8), (1, 2, 1))])
def test_rules_sharing_tile_calls_equal_direct_sums(rng, monkeypatch, chunk, tiles, pattern):
    """Rows of different rules share the tile kernel's calls (in chunks of jobs, each call padded with
    zero-weight tiles): every row's sum equals its rule's tiles summed directly in NumPy, and differs from
    its pruned tensor rule only by nodes that rule drops (each below the pruning threshold). Inputs of
    power p are p factor rows of the kernel: powers 1 to 4, 3 to 8 rows."""
    import ngp._fourpoint as fp

    monkeypatch.setattr(fp, "_JOB_CHUNK", chunk)  # chunk 8: several chunks; small tiles: calls of all three shapes
    monkeypatch.setattr(fp, "_TILES_LARGE", tiles[0])
    monkeypatch.setattr(fp, "_TILES", tiles[1])
    monkeypatch.setattr(fp, "_TILES_SMALL", tiles[2])
    shapes = set()
    kernel = fp._tile_kernel
    monkeypatch.setattr(fp, "_tile_kernel", lambda *a: shapes.add(a[-1].shape[0]) or kernel(*a))
    R = rng.normal(size=(30, 3, 3)) * 0.6
    cutoff = 3e-14  # not the library's cutoff
    jobs = {o: np.sort(rng.choice(30, k, replace=False)) for o, k in (((12, 8, 5), 11), ((19, 10, 7), 3), ((26, 14, 10), 5), ((9,), 4), ((7, 20), 6))}
    Rk, active, bk = fp._kernel_rows(pattern, R, np.zeros((30, 3)), 3)
    res = fp._evaluate_rules(jnp.tanh, None, Rk, active, bk, np.zeros(30), jobs, cutoff)
    assert shapes <= set(tiles) and (tiles[0] > 64 or tiles[0] in shapes), shapes  # small tiles: the large shape runs
    for orders, rows in jobs.items():
        d = len(orders)
        Rr = R[rows][:, :, 3 - d:] if d < 3 else R[rows]
        XP, PW, XL, WL, pb, mb, n = fp.rule_tiles(orders, cutoff, 3)
        x = np.concatenate([np.broadcast_to(XP[pb][:, :, :, None], (pb.size, 2, fp._TP, fp._TM)).reshape(pb.size, 2, -1),
                            np.broadcast_to(XL[mb][:, None, None, :], (pb.size, 1, fp._TP, fp._TM)).reshape(pb.size, 1, -1)], axis=1)
        w = (PW[pb][:, :, None] * WL[mb][:, None, :]).reshape(-1)
        x = np.moveaxis(x, 1, 2).reshape(-1, 3)[:, 3 - d:]
        f_t = np.prod(np.tanh(np.einsum("bjk,nk->bnj", Rr, x)) ** np.array(pattern), axis=2)
        q, mag, n_res, serr, _ = res[orders]
        np.testing.assert_allclose(q, f_t @ w, rtol=1e-12, atol=1e-15)
        assert n_res == n == np.count_nonzero(w)
        np.testing.assert_array_equal(serr, 0.0)
        idx, wp = fp._tensor_rule(orders, cutoff)  # the pruned rule: a subset of the tiles' nodes
        assert n >= wp.size
        xp = np.stack([fp._rule1d(m)[0][idx[:, k]] for k, m in enumerate(orders)], axis=1)
        f_p = np.prod(np.tanh(np.einsum("bjk,nk->bnj", Rr, xp)) ** np.array(pattern), axis=2)
        thr = cutoff * np.prod([fp._rule1d(m)[1].max() for m in orders])
        assert np.all(np.abs(q - f_p @ wp) <= (n - wp.size) * thr + 1e-15)
        assert np.isclose(w.sum(), wp.sum() + w[w <= thr].sum(), rtol=0, atol=1e-15)  # extra nodes all below thr


@pytest.mark.parametrize("name, pattern", [("tanh", (1, 2, 1)), ("tanh", (4, 1, 3)), ("sigmoid", (1, 1, 2))])
def test_exp_split_kernel_equals_direct_sums(rng, monkeypatch, name, pattern):
    """An activation's exp_split (sigma(x) = h(exp(kappa x)), one exponential per partial node and per
    last-direction node of a tile) gives the kernel's sums of the direct evaluation to a few ulps of the sum
    of |f|, and so does its ratio form (h = n / d: one division per node); a row not split_ok evaluates
    directly, a row not ratio_ok by h, in calls of their own: the other rows of the chunk keep their form."""
    import ngp._fourpoint as fp

    act = ngp.activation(name)
    R = rng.normal(size=(30, 3, 3)) * 0.8
    jobs = {o: np.sort(rng.choice(30, k, replace=False)) for o, k in (((12, 8, 5), 11), ((26, 14, 10), 5), ((7, 20), 6))}
    Rk, active, bk = fp._kernel_rows(pattern, R, np.zeros((30, 3)), 3)
    args = (act.fn, None, Rk, active, bk, np.zeros(30), jobs, 1e-14)
    direct = fp._evaluate_rules(*args)
    absf = fp._evaluate_rules(lambda x: jnp.abs(act.fn(x)), *args[1:])  # sum w |f| per row
    # the kernel form of each call's tiles, and the rows they serve
    job_rows = np.concatenate(list(jobs.values()))  # the row of each job, in the order of the jobs
    kernel, forms = fp._tile_kernel, []
    monkeypatch.setattr(fp, "_tile_kernel", lambda *a: forms.append(
        (a[2], set(job_rows[np.asarray(a[-1])[np.asarray(a[-1])[:, 0] > 0, 3]].tolist()))) or kernel(*a))
    split = fp._evaluate_rules(*args, split=act.exp_split, split_ok=np.ones(30, bool))
    assert {len(f) for f, _ in forms} == {2}  # the split was used, in every call
    forms.clear()
    ones = np.ones(30, bool)
    ratio = fp._evaluate_rules(*args, split=act.exp_split, split_ok=ones, ratio=act.exp_ratio, ratio_ok=ones)
    assert {len(f) for f, _ in forms} == {4}  # its ratio form was used, in every call
    forms.clear()
    for o in jobs:
        for res in (split, ratio):
            assert not np.array_equal(res[o][0], direct[o][0])  # the split was used
            assert np.all(np.abs(res[o][0] - direct[o][0]) <= 16 * fp._EPS * absf[o][0]), (o, res[o][0] - direct[o][0])
    # one row (in one chunk with the others) not split_ok, or not ratio_ok: each call's tiles keep their form
    bad = jobs[(7, 20)][0]
    not_ok = fp._evaluate_rules(*args, split=act.exp_split, split_ok=np.arange(30) != bad, ratio=act.exp_ratio,
                                ratio_ok=ones)
    assert {(f if f is None else len(f), frozenset(r) == {bad}) for f, r in forms} == {(None, True), (4, False)}
    forms.clear()
    not_ratio = fp._evaluate_rules(*args, split=act.exp_split, split_ok=ones, ratio=act.exp_ratio,
                                   ratio_ok=np.arange(30) != bad)
    assert {(len(f), frozenset(r) == {bad}) for f, r in forms} == {(2, True), (4, False)}
    for res in (not_ok, not_ratio):
        for o in jobs:
            assert np.all(np.abs(res[o][0] - direct[o][0]) <= 16 * fp._EPS * absf[o][0])


def test_exp_split_only_where_accurate_and_in_range():
    """Rows use the exponential split only when its error (a few ulps per factor, absolute) stays below a
    tenth of the tolerance relative to the entry's Hoelder bound, and exp(kappa x) stays in range at every
    node: tiny and huge variances evaluate directly; the split's error is added to the estimates."""
    import ngp._fourpoint as fp

    act = ngp.activation("tanh")
    C = np.stack([v * (0.5 * np.eye(4) + 0.5) for v in (1e-12, 1e-4, 0.5, 2.0, 1e3)])
    m4 = fp._fourth_moments(act, C)
    rows = fp._SmoothRows(act, C, (1, 1, 1, 1), 1e-9, 7, m4)
    np.testing.assert_array_equal(rows.split_ok, [False, True, True, True, False])
    np.testing.assert_array_equal(rows.split_err[~rows.split_ok], 0.0)
    assert np.all(rows.split_err[rows.split_ok] <= 0.1 * 1e-9 * rows.scale[rows.split_ok])
    assert np.all(rows.split_err[rows.split_ok] >= 4 * fp._EPS * rows.scale[rows.split_ok])
    tight = fp._SmoothRows(act, C, (1, 1, 1, 1), 1e-13, 7, m4)  # 1e-4: the split's error is above 1e-14
    np.testing.assert_array_equal(tight.split_ok, [False, False, True, True, False])
    np.testing.assert_array_equal(rows.ratio_ok, rows.split_ok)
    # the ratio form only where a node's exponents, summed over the factors (powers counted), stay below
    # _RATIO_EXP at every node of |x| <= 32: K = 10 is in range for h (each input below _SPLIT_EXP), not for n / d
    for v, pattern, ok in ((2.0, (1, 1, 1, 1), True), (10.0, (1, 1, 1, 1), False), (2.0, (4,), True),
                           (10.0, (4,), False)):
        Cv = v * (0.5 * np.eye(len(pattern)) + 0.5)[None]
        r = fp._SmoothRows(act, Cv, pattern, 1e-9, 7, fp._fourth_moments(act, Cv))
        assert r.split_ok[0] and r.ratio_ok[0] == ok, (v, pattern)
        worst = 2.0 * 32 * np.abs(r.R[0]).sum(axis=1) @ np.asarray(r.head_pattern, dtype=float)
        assert (worst <= fp._RATIO_EXP) == ok and fp._RATIO_EXP + 8 * np.log(2) < np.log(np.finfo(float).max)
    assert not fp._SmoothRows(ngp.activation("erf"), C, (1, 1, 1, 1), 1e-9, 7, m4).ratio_ok.any()
    assert not fp._SmoothRows(ngp.activation("erf"), C, (1, 1, 1, 1), 1e-9, 7, m4).split_ok.any()


def test_pruned_rule_matches_masked_outer_products():
    """The prefix-count construction of the pruned tensor rule keeps exactly the nodes (and weights)
    of the plain masked outer-product construction."""
    from ngp._fourpoint import LADDER, _rule1d, _tensor_rule

    rng = np.random.default_rng(5)
    for _ in range(40):
        d = int(rng.integers(1, 5))
        orders = tuple(int(LADDER[k]) for k in sorted(rng.integers(0, 20, d), reverse=True))
        cutoff = float(10.0 ** rng.uniform(-15, -8))
        xs = [_rule1d(m) for m in orders]
        wmax = [float(w.max()) for _, w in xs]
        thr = cutoff * float(np.prod(wmax))
        nodes, weights = np.zeros((1, 0)), np.ones(1)
        for k, (x, w) in enumerate(xs):
            W = weights[:, None] * w[None, :]
            i, j = np.nonzero(W * float(np.prod(wmax[k + 1:])) > thr)
            nodes, weights = np.concatenate([nodes[i], x[j][:, None]], axis=1), W[i, j]
        idx, w_new = _tensor_rule(orders, cutoff)
        x_new = np.stack([_rule1d(m)[0][idx[:, k]] for k, m in enumerate(orders)], axis=1)
        a = np.lexsort(np.c_[x_new, w_new].T)
        b = np.lexsort(np.c_[nodes, weights].T)
        assert x_new.shape == nodes.shape
        np.testing.assert_array_equal(x_new[a], nodes[b])
        np.testing.assert_array_equal(w_new[a], weights[b])


def test_table_calls_cover_points_with_bounded_padding():
    """The tabulation's calls (``_pieces``) cover every point once, in consecutive calls of the few
    compiled sizes ``256 * 4**k <= per``, padding fewer than 4096 points (one padded call per level)."""
    from ngp._fourpoint import _pieces

    sizes = {256 * 4**k for k in range(8)}
    for per in (256, 1024, 4096, 16384, 65536):
        for n in [*range(0, 1200, 7), 4095, 4096, 4097, 5000, 16383, 16385, 70000, 300001]:
            calls = _pieces(n, per)
            assert [st for st, _ in calls] == list(np.cumsum([0] + [s for _, s in calls])[:-1])
            assert all(s in sizes and s <= per for _, s in calls)
            padded = sum(s for _, s in calls) - n
            assert 0 <= padded < 4096 and (n == 0) == (not calls)
            assert not calls or calls[-1][0] < n  # no call of padding alone


def test_refinement_steps_one_rung_and_reuses_the_previous_rule(rng, monkeypatch):
    """An entry whose estimate misses the tolerance is recomputed one ladder step higher in every
    direction, and the rule it just ran is its companion: after the first round (a rule and its
    companion one step lower) every round runs one new rule per entry, never one it ran before. The
    value is the last rule's and the estimate at least the difference of the last two rules; the
    result meets the tolerance against the dense tensor rule at high order."""
    from ngp import _fourpoint as fp

    act = ngp.activation("tanh")
    pattern = (3, 1)  # most random blocks of this pattern need a second round
    C = np.stack([random_block(rng, 2, 1.0) for _ in range(6)])
    rounds = []
    original = fp._evaluate_rules

    def spy(act_fn, smoothed, Rk, active, beta, sigma, jobs, *args, **kwargs):
        out = original(act_fn, smoothed, Rk, active, beta, sigma, jobs, *args, **kwargs)
        sums = out if not kwargs.get("flat") else {o: (out[0][0][k:k + jobs[o].size],) for o, k in out[1].items()}
        rounds.append({o: (np.array(rows), np.array(sums[o][0])) for o, rows in jobs.items()})
        return out

    monkeypatch.setattr(fp, "_evaluate_rules", spy)
    rtol = 1e-11
    val, est = product_expectations(act, C, pattern, rtol=rtol)
    rung = {m: i for i, m in enumerate(fp.LADDER)}
    history = [[] for _ in range(C.shape[0])]  # per entry: per round, the (orders, value) it ran
    for jobs in rounds:
        ran = [[] for _ in range(C.shape[0])]
        for o, (rows, sums) in jobs.items():
            for r, q in zip(rows, sums):
                ran[r].append((o, q))
        for i in range(C.shape[0]):
            if ran[i]:
                history[i].append(sorted(ran[i], key=lambda t: sum(rung[m] for m in t[0])))
    assert sum(len(h) > 1 for h in history) >= 2  # refinement happened
    for i, h in enumerate(history):
        (coarse, qc), (fine, q) = h[0]
        assert [rung[m] for m in coarse] == [max(rung[m] - 1, 0) for m in fine]
        for before, now in zip(h, h[1:]):
            assert len(now) == 1  # one new rule; its companion is the rule of the round before
            (o_prev, q_prev), (o_now, q_now) = before[-1], now[0]
            assert [rung[m] for m in o_now] == [rung[m] + 1 for m in o_prev]
            q, qc = q_now, q_prev
        assert val[i] == q
        assert est[i] >= abs(q - qc)
        ref = _dense(act.fn, C[i], pattern, 200)
        scale = holder(act, C[i], pattern)
        assert abs(val[i] - ref) < rtol * scale + 1e-13 * abs(ref), (i, abs(val[i] - ref) / scale)
        assert est[i] < rtol * scale


@pytest.mark.parametrize("name,pattern,C", [
    ("gelu", (1, 3), [[1.0442547836247102, 0.11408002445059408], [0.11408002445059408, 0.18438404383665585]]),
    ("gelu", (3, 1), [[0.3308142030021619, 0.0442235648366283], [0.0442235648366283, 0.041545660815972864]]),
    ("swish", (3, 1), [[0.1529919522697132, 0.10936363459987716], [0.10936363459987716, 0.31177427338548847]]),
])
def test_cubed_inputs_calibrated_on_their_power(name, pattern, C):
    """Blocks of a tanh network's kernel (a 16 x 100 prediction) on which the rule calibrated on powers 1
    and 2 stopped at two rules that agreed while both erred (gelu: 4.5 and 1.5 times the tolerance,
    swish: 4.1 times, with estimates below it): a cubed input is calibrated on cubes too. Against the
    dense rule at high order, the tolerance is met and the estimate covers the error."""
    act = ngp.activation(name)
    C = np.asarray(C)
    val, est = product_expectations(act, C[None], pattern)
    ref = _dense(act.fn, C, pattern, 200)
    scale = holder(act, C, pattern)
    err = abs(val[0] - ref)
    assert err < 1e-9 * scale, err / scale
    assert est[0] >= err or err < 1e-12 * scale, (err / scale, est[0] / scale)


@pytest.mark.parametrize("name", ["tanh", "erf"])
def test_patterns_share_rule_passes_with_unchanged_values(rng, monkeypatch, name):
    """The patterns of a multiset table run their refinement rounds together: the patterns with an input of
    power 1 share one rule pass per round, and (2, 2) with (4,) another, so the passes are the rounds of the
    slowest pattern of each group, not their sum. Every value, estimate and evaluation count equals the
    pattern computed alone (the same rules on the same rows; tanh tabulates its split input, erf has a
    closed form) up to the rounding of the sums (a job's tiles split differently across kernel calls: a few
    ulps of values of size ~0.1, times the tail factor, at most 19, in the estimates: 1% of the tolerance)."""
    from ngp import _fourpoint as fp

    act = ngp.activation(name)
    X = rng.normal(size=(6, 3))
    K = 1.5 * X @ X.T / 3 + 0.2
    ms = multisets(6)
    passes = []
    original = fp._evaluate_rules

    def spy(*args, **kwargs):
        passes.append(args[6])
        return original(*args, **kwargs)

    monkeypatch.setattr(fp, "_evaluate_rules", spy)
    st = {}
    val, err = multiset_expectations(act, K, ms, rtol=1e-10, stats=st)
    joint = len(passes)
    rounds = {}
    for pattern, (rows, idx) in fp.split_multisets(ms).items():
        passes.clear()
        one = {}
        v, e = product_expectations(act, K[idx[:, :, None], idx[:, None, :]], pattern, rtol=1e-10, stats=one)
        np.testing.assert_allclose(val[rows], v, rtol=0, atol=1e-15)
        np.testing.assert_allclose(err[rows], e, rtol=0, atol=1e-13)
        np.testing.assert_array_equal(st["evaluations"][rows], one["evaluations"])
        rounds[pattern] = len(passes)
    closed = [r for p, r in rounds.items() if 1 in p]
    assert len(closed) == 6 and sum(closed) > max(closed) + 1  # several patterns, most refine
    assert joint == max(closed) + max(rounds[(2, 2)], rounds[(4,)])


@pytest.mark.parametrize("name", ["tanh", "swish", "gelu", "user"])
def test_max_rule_nodes_bounds_every_multisets_first_rule(name):
    # the cost checks' cheap bound (ngp._finite.warn_four_point_cost, the prediction's check) against the first-round
    # rule of every multiset of two kernels: generic correlations at variances up to ~30, and independent inputs of
    # equal variance (the isotropic rule the bound assumes); every pattern occurs, and the bound is reached there
    from ngp._fourpoint import max_rule_nodes, rule_nodes
    act = (ngp.activation(lambda x: jnp.tanh(x) + 0.1 * x**2, name="tanh_plus_square") if name == "user"
           else ngp.activation(name))
    X = np.random.default_rng(1).normal(size=(7, 2))
    ms = multisets(7)
    for K, tight in ((0.1 + 10.0 * X @ X.T / 2, False), (2.5 * np.eye(7), True)):
        bound = max_rule_nodes(act, np.max(np.diag(K)))
        nodes = np.array([rule_nodes(act, K, m[None])[0] for m in ms])
        assert nodes.max() <= bound, (nodes.max(), bound)
        if tight:
            assert nodes.max() == bound


@pytest.mark.parametrize("C_W", [1.0, 10.0])
def test_rule_nodes_are_the_first_rounds_rules_of_the_nodes_run(C_W):
    # rule_nodes (the cost warning's estimate) against the nodes the rule reports running on the same multisets: the
    # first round's rules are part of them, and the companions and refinement add 1.6-2.6x (measured); its sample
    # of 512 rows stays within 5% of the mean over every row (1.3% measured); variances of ~27 (C_W = 10) make the
    # rules 10x and more those at variances up to 1, variances below 1 leave them as they are
    from ngp._fourpoint import max_rule_nodes, rule_nodes
    act = ngp.MLP(1, activation="tanh").activation
    X = np.random.default_rng(0).normal(size=(12, 2))
    K = 0.1 + C_W * X @ X.T / 2
    ms = multisets(12)
    st = {}
    multiset_expectations(act, K, ms, stats=st)
    nodes, low = rule_nodes(act, K, ms, sample=None)
    assert nodes < st["nodes"].mean() < 4 * nodes, (nodes, st["nodes"].mean())
    assert abs(rule_nodes(act, K, ms)[0] / nodes - 1) < 0.05
    assert nodes <= max_rule_nodes(act, np.max(np.diag(K)))
    assert (nodes > 10 * low) if C_W == 10.0 else (nodes < 3 * low)
    nodes, low = rule_nodes(act, K / np.max(np.diag(K)), ms, sample=None)
    assert nodes == low
