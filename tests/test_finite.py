"""Finite-width cumulants V and K1 against exact results and Monte Carlo of actual networks."""

import warnings

import jax.numpy as jnp
import numpy as np
import pytest

import ngp
from ngp._finite import FOUR_POINT_ORDERS, _product_expectations, four_point_values, multisets
from ngp._gaussian import pruned_tensor_rule

from ._mc import metric_cumulants


@pytest.fixture(scope="module")
def inputs():
    """The inputs of this file's tests, drawn in file order from one seeded generator."""
    rng = np.random.default_rng(11)
    names_shapes = [("X3", (3, 3)), ("symmetries", (4, 2)), ("mehler", (3, 2)), ("unequal", (2, 3)),
                    ("memory", (12, 2))]
    return {name: rng.normal(size=shape) for name, shape in names_shapes}


@pytest.fixture(scope="module")
def X3(inputs):
    return inputs["X3"]


# ----------------------------------------------------------------------------- exact results
def _linear_exact_cov(X, C_W, C_b, widths):
    """Exact Wishart recursion of THEORY 7.3 for the output metric's covariance."""
    N, n0 = X.shape
    K = C_b[0] + C_W[0] * X @ X.T / n0
    M = np.einsum("ab,cd->abcd", K, K)
    for l, nl in enumerate(widths):  # produce layer l+2 from layer l+1 of width nl
        cb, cw = C_b[l + 1], C_W[l + 1]
        Kn = cb + cw * K
        M = (cb**2 + cb * cw * (K[:, :, None, None] + K[None, None, :, :])
             + cw**2 * (M + (np.transpose(M, (0, 2, 1, 3)) + np.transpose(M, (0, 3, 2, 1))) / nl))
        K = Kn
    return M - np.einsum("ab,cd->abcd", K, K), K


DEEP_LINEAR_WIDTHS = (8, 16, 32, 64)


@pytest.fixture(scope="module")
def deep_linear(X3):
    """Prior and exact Wishart moments of the deep linear network at each width n (widths [n, 2n, n])."""
    C_W, C_b = [1.1, 0.9, 1.2, 0.8], [0.3, 0.2, 0.0, 0.1]
    out = {}
    for n in DEEP_LINEAR_WIDTHS:
        widths = [n, 2 * n, n]
        prior = ngp.MLP(4, widths, activation="linear", C_W=C_W, C_b=C_b).prior(X3, warn=False)
        cov, K = _linear_exact_cov(X3, C_W, C_b, widths)
        V = np.asarray(prior.V)
        # LO recursion: V' = C_W^2 (K_ac K_bd + K_ad K_bc) + C_W^2 (n_l/n_{l-1}) V
        rel = np.max(np.abs(n * cov - V)) / np.max(np.abs(V))
        out[n] = dict(prior=prior, K=K, rel=rel)
    return out


@pytest.mark.parametrize("n", DEEP_LINEAR_WIDTHS)
def test_deep_linear_exact_moments(n, deep_linear):
    d = deep_linear[n]
    np.testing.assert_allclose(d["prior"].K, d["K"], rtol=1e-13)
    np.testing.assert_allclose(d["prior"].K1, 0.0, atol=1e-13)  # E G_hat = K exactly
    # the exact residual is O(1/n): n * rel is a constant (0.1341 * 8 per THEORY 10)
    assert 0.5 / n < d["rel"] < 2.0 / n


def test_deep_linear_residual_halves(deep_linear):
    rel = {n: d["rel"] for n, d in deep_linear.items()}
    ratios = [rel[8] / rel[16], rel[16] / rel[32], rel[32] / rel[64]]
    np.testing.assert_allclose(ratios, 2.0, rtol=0.06)


def test_linear_vertex_closed_form(X3):
    # THEORY 7.5: linear, C_b = 0, equal widths: V = (l-1) C_W^{2(l-1)} (K_ac K_bd + K_ad K_bc)
    net = ngp.MLP(5, 10, activation="linear", C_W=1.3, C_b=0.0)
    prior = net.prior(X3, warn=False)
    K1 = np.asarray(prior.kernels[0])
    for lay in prior.layers:
        l = lay.index
        ref = (l - 1) * 1.3 ** (2 * (l - 1)) * (np.einsum("ac,bd->abcd", K1, K1) + np.einsum("ad,bc->abcd", K1, K1))
        np.testing.assert_allclose(lay.V, ref, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("L", [2, 3, 5, 8])
def test_relu_single_input_law(L):
    # single input, C_b = 0, C_W = 2: V/K^2 = 5 (L-1) at first order, K1 = 0
    x = np.array([[0.7, -1.2]])
    net = ngp.MLP(L, 32, activation="relu", C_W=2.0, C_b=0.0)
    prior = net.prior(x, warn=False)
    K = float(prior.K[0, 0])
    assert abs(float(prior.V[0, 0, 0, 0]) / K**2 - 5 * (L - 1)) < 1e-11 * L
    assert abs(float(prior.K1[0, 0])) < 1e-13
    # exact law: n Var(G)/K^2 = n[(1 + 5/n)^(L-1) - 1] = 5(L-1) + O(1/n)
    for n in (32, 256, 4096):
        exact = n * ((1 + 5 / n) ** (L - 1) - 1)
        assert abs(exact - 5 * (L - 1)) <= 25 * (L - 1) ** 2 / n


def test_first_layers_are_gaussian_and_two_layers_exact(X3):
    net1 = ngp.MLP(1, activation="tanh")
    p1 = net1.prior(X3)
    assert np.all(p1.V == 0) and np.all(p1.K1 == 0)
    net2 = ngp.MLP(2, 5, activation="tanh", C_W=1.5, C_b=0.1)
    p2 = net2.prior(X3, warn=False)
    assert np.all(p2.K1 == 0)
    # V^(2) = C_W^2 Cov(s s, s s) exactly at any width: check against a tiny-width MC
    mc = metric_cumulants(net2, X3, 200_000, seed=5)
    z = np.abs(mc["V"] - p2.V_packed) / mc["V_se"]
    assert z.max() < 4.5, z.max()


def test_vertex_symmetries(inputs):
    X = inputs["symmetries"]
    p = ngp.MLP(3, 16, activation="tanh", C_W=1.4, C_b=0.2).prior(X, warn=False)
    V = p.V
    np.testing.assert_allclose(V, np.transpose(V, (1, 0, 2, 3)), atol=1e-15)
    np.testing.assert_allclose(V, np.transpose(V, (0, 1, 3, 2)), atol=1e-15)
    np.testing.assert_allclose(V, np.transpose(V, (2, 3, 0, 1)), atol=1e-14)
    # not symmetric under the exchange of the second and third index
    assert np.max(np.abs(V - np.transpose(V, (0, 2, 1, 3)))) > 1e-3 * np.max(np.abs(V))
    np.testing.assert_allclose(p.K1, p.K1.T, atol=1e-15)


def test_duplicated_inputs_are_handled(X3):
    X = np.vstack([X3, X3[1:2]])
    net = ngp.MLP(3, 16, activation="tanh")
    p = net.prior(X, warn=False)
    q = net.prior(X3, warn=False)
    np.testing.assert_allclose(p.V[:3, :3, :3, :3], q.V, atol=1e-15)
    np.testing.assert_allclose(p.V[3, 3, 3, 3], q.V[1, 1, 1, 1], atol=1e-15)
    np.testing.assert_allclose(p.K1[3], p.K1[1], atol=1e-15)


# ----------------------------------------------------------------------------- independent paths
def test_closed_form_and_mehler_derivative_paths_agree(inputs):
    # erf: J, H by autodiff of the arcsin kernel vs heat-equation derivatives by Mehler
    X = inputs["mehler"]
    net = ngp.MLP(4, 12, activation="erf", C_W=1.5, C_b=0.1)
    a = net.prior(X, warn=False)
    b = net.prior(X, method="mehler", warn=False)
    np.testing.assert_allclose(b.V, a.V, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(b.K1, a.K1, rtol=1e-8, atol=1e-10)


def test_four_point_quadrature_accuracy():
    # documented accuracy: ~1e-8 relative for pre-activation variances K <~ 1 ...
    X = np.random.default_rng(0).normal(size=(4, 3))
    K = jnp.asarray(ngp.MLP(2, 4, activation="tanh", C_W=0.8, C_b=0.1).prior(X).kernels[0])
    assert float(jnp.max(jnp.diagonal(K))) < 1.3
    ms = multisets(4)
    sin = ngp.activation("sin")
    exact = four_point_values(sin, K, ms)  # the closed form the activation declares
    quad = _product_expectations(sin, K, ms, FOUR_POINT_ORDERS)
    assert np.max(np.abs(quad - exact)) < 1e-10 * np.max(np.abs(exact))
    tanh = ngp.activation("tanh")
    lo = _product_expectations(tanh, K, ms, FOUR_POINT_ORDERS)
    hi = _product_expectations(tanh, K, ms, {**FOUR_POINT_ORDERS, 3: 96, 4: 56})
    assert np.max(np.abs(lo - hi)) < 1e-8 * np.max(np.abs(hi))
    # ... and ~1e-5 at K ~ 4-5 (larger variances need a larger four_point_order)
    K4 = 4 * K
    exact = four_point_values(sin, K4, ms)
    quad = _product_expectations(sin, K4, ms, FOUR_POINT_ORDERS)
    assert np.max(np.abs(quad - exact)) < 1e-5 * np.max(np.abs(exact))


def test_pruned_rule_equals_the_masked_tensor_grid():
    """The pruned rule (built from the weight tensor alone) keeps exactly the nodes and weights, in the same
    order, of the plain construction from full meshgrids, and integrates a polynomial exactly."""
    from ngp._gaussian import gauss_hermite

    for u, m, cutoff in ((1, 9, 1e-15), (2, 12, 1e-15), (3, 10, 1e-8), (4, 8, 1e-15), (4, 11, 1e-6)):
        x, w = gauss_hermite(m)
        nodes = np.stack([g.ravel() for g in np.meshgrid(*([x] * u), indexing="ij")], axis=1)
        weights = np.prod(np.stack([g.ravel() for g in np.meshgrid(*([w] * u), indexing="ij")], axis=1), axis=1)
        keep = weights > cutoff * weights.max()
        got_x, got_w = pruned_tensor_rule.__wrapped__(u, m, cutoff)
        np.testing.assert_array_equal(got_x, nodes[keep])
        np.testing.assert_array_equal(got_w, weights[keep])
    x, w = pruned_tensor_rule.__wrapped__(4, 12, 0.0)  # unpruned: exact for degree < 2m in each direction
    # E[z1^2 z2^4 z3^6 z4^0] = 1 * 3 * 15 for independent standard normals
    assert abs(np.sum(w * x[:, 0] ** 2 * x[:, 1] ** 4 * x[:, 2] ** 6) - 45.0) < 1e-11


# ----------------------------------------------------------------------------- Monte Carlo
def _residuals(activation, L, widths_fn, ns, X, C_W, C_b, samples, seed):
    out = []
    for i, n in enumerate(ns):
        net = ngp.MLP(L, widths_fn(n), activation=activation, C_W=C_W, C_b=C_b)
        mc = metric_cumulants(net, X, samples, seed=seed + i)
        prior = mc["prior"]
        Vp = prior.V_packed
        p, q = np.unravel_index(np.argmax(np.abs(Vp)), Vp.shape)
        out.append(
            dict(n=n, dV=mc["V"][p, q] - Vp[p, q], dV_se=mc["V_se"][p, q], V=Vp[p, q],
                 dG=mc["G1"] - prior.K1, dG_se=mc["G1_se"], K1=prior.K1)
        )
    return out


def _check_one_over_n(res, key):
    """n * residual must agree across widths (the residual is O(1/n^2) in the cumulant)."""
    vals = np.array([r["n"] * r[key] for r in res])
    ses = np.array([r["n"] * r[key + "_se"] for r in res])
    # consistency of n*d across widths within 4 combined standard errors plus the
    # next-order drift allowed by the widest pair (|n d| itself sets the scale)
    for i in range(len(res) - 1):
        diff = abs(vals[i] - vals[i + 1])
        assert diff < 4 * np.hypot(ses[i], ses[i + 1]) + 0.5 * max(abs(vals[i]), abs(vals[i + 1])), (vals, ses)
    # and the residual at the widest width is small compared with the narrowest one
    return vals, ses


@pytest.mark.parametrize(
    "activation,L,C_W,C_b",
    [("tanh", 3, 1.0, 0.0), ("tanh", 4, 1.5, 0.1), ("gelu", 3, 1.983058257438, 0.172922390756), ("relu", 3, 2.0, 0.1)],
)
def test_vertex_and_K1_against_monte_carlo(activation, L, C_W, C_b, X3):
    ns = {"tanh": [8, 16, 32], "gelu": [16, 32], "relu": [32, 64]}[activation]
    res = _residuals(activation, L, lambda n: n, ns, X3, C_W, C_b, 100_000, seed=100 * L)
    dV = np.array([r["dV"] for r in res])
    se = np.array([r["dV_se"] for r in res])
    n = np.array(ns, dtype=float)
    # (1) the vertex is right at leading order: n*dV is flat in n (slope of log|dV| ~ -1)
    vals, ses = _check_one_over_n(res, "dV")
    # (2) fitted slope of dV vs n: d = c / n  (weighted least squares for c, then chi^2)
    c = np.sum(dV * (1 / n) / se**2) / np.sum((1 / n) ** 2 / se**2)
    chi = (dV - c / n) / se
    assert np.all(np.abs(chi) < 4.5), (dV, se, c)
    # a constant offset (a wrong V) would not fit c/n: compare with the best constant
    const = np.sum(dV / se**2) / np.sum(1 / se**2)
    if abs(dV[0]) > 8 * se[0]:
        assert np.sum(chi**2) < np.sum(((dV - const) / se) ** 2)
    # (3) K1: n(E G - K) - K1 is within 4.5 s.e. + O(1/n) at every width
    for r in res:
        tol = 4.5 * r["dG_se"] + 0.2 * np.max(np.abs(r["K1"])) * 8 / r["n"]
        assert np.all(np.abs(r["dG"]) < tol), (r["n"], r["dG"], r["dG_se"])


def test_unequal_widths_ratio_placement(inputs):
    # THEORY 10 'tanh-2in-uneq': widths [n, 2n, n/2]; the ratio n_l/n_{l-1} must not be inverted
    X = inputs["unequal"]
    res = _residuals("tanh", 4, lambda n: [2 * n, 4 * n, n], [16, 32], X, 1.0, 0.0, 100_000, seed=7)
    for r in res:
        assert abs(r["dV"]) < 4.5 * r["dV_se"] + 0.4 * abs(r["V"]) / r["n"], r
    # and with the ratio inverted the prediction would be off by O(1) (THEORY: 2.4 max|V|)


@pytest.mark.parametrize("options,bad", [({"nodes": 20}, True), ({"terms": 5}, True), ({"terms": 20}, True),
                                         ({"method": "quadrature", "quad_nodes": 10}, True),
                                         ({"method": "quadrature"}, True), ({"nodes": 400}, False),
                                         ({"terms": 60}, False)])
def test_hand_set_orders_are_compared_with_the_automatic_rule(inputs, options, bad):
    # Hand-set quadrature orders far below the automatic ones gave K, K1 and V off by 1e-7 to 1e2 (nodes=1: K = 0)
    # while K1_error and V_error stayed ~1e-10, and the 2-D rule of method="quadrature" (80 nodes) K1 off by 3e-4 at
    # a first-layer variance of 4.5: now a warning states the difference on probe inputs; orders accurate to better
    # than ~1e-10 stay quiet (reference: the automatic rule, 1e-10 or better here).
    X = inputs["symmetries"]
    net = ngp.MLP(3, 32, activation="tanh", C_W=1.5, C_b=0.1)
    ref = net.prior(X)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        p = net.prior(X, **options)
        err = max(float(np.max(np.abs(getattr(p, q) - getattr(ref, q))) / np.max(np.abs(getattr(ref, q))))
                  for q in ("K", "K1"))
    stated = [float(str(w.message).split(" by ")[1].split()[0]) for w in caught
              if issubclass(w.category, ngp.AccuracyWarning) and "differs from the automatic rule" in str(w.message)]
    if bad:
        assert err > 1e-8 and stated  # a real error, and said
        assert max(stated) > 0.1 * err  # of the size of the output's error (the last layer's is read on it)
    else:
        assert err < 1e-9 and not stated


def test_kinked_activations_refuse_numerical_derivative_rules(inputs):
    # relu with method="quadrature" said "declared non-smooth and has no closed-form kernel" (it has one)
    with pytest.raises(ValueError, match="method: 'quadrature' integrates smooth activations only"), \
            pytest.warns(ngp.AccuracyWarning, match="differs from the automatic rule"):  # its K: 2-D rule vs closed
        ngp.MLP(3, 16, activation="relu").prior(inputs["memory"][:3], method="quadrature", warn=False).K1


def test_memory_guard_and_bad_options(inputs):
    net = ngp.MLP(3, 16)
    X = inputs["memory"]
    p = net.prior(X, max_memory=1000)
    with pytest.raises(MemoryError, match="GiB"):
        p.V
    with pytest.raises(TypeError, match="unknown option"):
        net.prior(X, bogus=1)
    for given in ({}, {"method": "mehler"}):  # quad_nodes without the 2-D rule was ignored without a word
        with pytest.raises(ValueError, match="quad_nodes: read only by method='quadrature'"):
            net.prior(X, quad_nodes=10, **given)
    kinked = ngp.MLP(3, 16, activation=ngp.activation(lambda x: jnp.maximum(x, 0), smooth=False))
    with pytest.raises(ValueError, match="non-smooth"):
        kinked.prior(X[:3], warn=False).V


def test_expansion_warning(X3):
    net = ngp.MLP(6, 8, activation="relu", C_W=2.0)
    p = net.prior(X3)
    with pytest.warns(ngp.ExpansionWarning, match="expansion parameter"):
        p.V
    assert p.expansion_parameter > 0.3
    wide = ngp.MLP(3, 1000, activation="tanh").prior(X3)
    assert wide.expansion_parameter < 0.01


@pytest.mark.parametrize("activation", ["tanh", "relu"])
def test_expansion_parameter_equals_dense_definition(X3, activation):
    """The expansion parameter (from V_(ab)(ab) alone: the fresh (a, a, b, b) term and the previous
    layer's two-input blocks, without the last layer's) equals max_ab V_(ab)(ab) / (n K_aa K_bb) of the
    dense V, at every layer, with a rescaled output (Scale step) too."""
    net = ngp.serial(ngp.Dense(8, C_W=1.3, C_b=0.1), ngp.Elementwise(activation), ngp.Dense(8, C_W=1.3, C_b=0.1),
                     ngp.Elementwise(activation), ngp.Dense(1, C_W=1.3, C_b=0.1), ngp.Scale(0.7))
    lazy, dense = net.prior(X3, warn=False), net.prior(X3, warn=False)
    for l_lazy, l_dense in zip(lazy.layers, dense.layers):
        if l_dense.n is None:
            continue
        d = np.diag(l_dense.K)
        V = l_dense.V
        ref = max(V[a, b, a, b] / (d[a] * d[b]) for a in range(len(d)) for b in range(len(d))) / l_dense.n
        assert l_lazy.expansion_parameter == pytest.approx(ref, rel=1e-12)


def test_four_point_table_chunks_give_the_same_values(monkeypatch):
    """FourPointTable computes new multisets in chunks of TABLE_CHUNK (bounded quadrature memory): the
    values and error estimates equal one call of four_point_values to rounding, and cached rows are reused."""
    from ngp import _finite

    rng = np.random.default_rng(4)
    X = rng.normal(size=(5, 2))
    K = np.asarray(ngp.MLP(2, 8, activation="tanh", C_W=1.4, C_b=0.1).prior(X).K)
    act = ngp.MLP(2, 8, activation="tanh").prior(X)._cumulants[-1].map.act
    ms = multisets(5)
    whole, whole_err = four_point_values(act, K, ms, errors=True)
    calls = []
    inner = _finite.four_point_values

    def counted(*args, **kwargs):
        calls.append(len(args[2]))
        return inner(*args, **kwargs)

    monkeypatch.setattr(_finite, "TABLE_CHUNK", 16)
    monkeypatch.setattr(_finite, "four_point_values", counted)
    table = _finite.FourPointTable(act, K)
    # the same rules on every row; only the batching of the compiled sums differs (rounding)
    np.testing.assert_allclose(table(ms[:40]), whole[:40], rtol=1e-13, atol=0)
    assert calls == [16, 16, 8]
    np.testing.assert_allclose(table(ms), whole, rtol=1e-13, atol=0)  # only the 30 new rows are computed
    # the estimates are differences of two rule sums (x the tail factor): they inherit the sums' rounding,
    # which the rule itself budgets as 64 eps |sum| (measured: 1.4e-16 on estimates of ~5e-11)
    np.testing.assert_allclose(table.errors(ms), whole_err, rtol=1e-13, atol=64 * np.finfo(float).eps * np.max(np.abs(whole)))
    assert calls == [16, 16, 8, 16, 14] and len(ms) == 70


def test_four_point_table_chunks_fit_a_quarter_of_max_memory(monkeypatch):
    """With a small ``max_memory`` the prior's four-point tables compute fewer new multisets per call, so
    that two calls at once take at most a quarter of it (TABLE_ROW_BYTES per multiset); the values are
    those of the default chunks."""
    from ngp import _finite

    calls = []
    inner = _finite.four_point_values

    def counted(*args, **kwargs):
        calls.append(len(args[2]))
        return inner(*args, **kwargs)

    monkeypatch.setattr(_finite, "four_point_values", counted)
    X = np.random.default_rng(5).normal(size=(12, 2))  # 1365 multisets per layer
    net = ngp.MLP(3, 8, activation="tanh", C_W=1.4, C_b=0.1)
    limit = 300 * 8 * _finite.TABLE_ROW_BYTES
    small = net.prior(X, max_memory=limit)
    V_small = np.asarray(small.V)
    assert [c.map.table.chunk for c in small._cumulants[1:]] == [300, 300]
    assert max(calls) == 300 and sum(calls) == 2 * 1365
    calls.clear()
    V = np.asarray(net.prior(X).V)
    assert max(calls) > 300 and sum(calls) == 2 * 1365 and _finite.table_chunk() == _finite.TABLE_CHUNK
    np.testing.assert_allclose(V_small, V, rtol=1e-12, atol=1e-14 * np.max(np.abs(V)))
    assert _finite.table_chunk(1) == 256  # a floor: tiny budgets still make progress


@pytest.fixture
def counted_rows(monkeypatch):
    """Every row the four-point tables compute (``ngp._finite.four_point_values`` counted)."""
    from ngp import _finite

    rows, inner = [], _finite.four_point_values

    def counted(act, K, ms, **kwargs):
        rows.append(np.asarray(ms).copy())
        return inner(act, K, ms, **kwargs)

    monkeypatch.setattr(_finite, "four_point_values", counted)
    return rows


def test_joint_prior_takes_over_the_training_four_point_values(counted_rows, monkeypatch):
    """reuse_four_point: the joint prior on [X_train; X_test] computes only multisets with a test input;
    its V equals the V it computes on its own (training block to rounding, the rest within the estimates).
    A duplicated training input makes the two priors' distinct-input indices differ (the joint prior's
    distinct inputs are sorted), so the index map is exercised."""
    from ngp._prior import reuse_four_point

    rng = np.random.default_rng(7)
    XA, XB = rng.normal(size=(4, 2)), rng.normal(size=(2, 2))
    XA[3] = XA[1]
    NA, X = XA.shape[0], np.concatenate([XA, XB])
    net = ngp.MLP(3, 16, activation="tanh", C_W=1.3, C_b=0.1)
    source = net.prior(XA, warn=False)
    V_train = np.asarray(source.V)
    alone = net.prior(X, warn=False)
    V_alone, E_alone = np.asarray(alone.V), np.asarray(alone.V_error)
    joint = net.prior(X, warn=False)
    known = sum(c.map.table._codes.size for c in source._cumulants if hasattr(c, "map"))
    assert known > 0 and reuse_four_point(joint, source, np.arange(NA)) == known
    assert reuse_four_point(joint, source, np.arange(NA)) == 0  # already known
    counted_rows.clear()
    V, E = np.asarray(joint.V), np.asarray(joint.V_error)
    train = np.unique(joint._inverse[:NA])  # the joint prior's indices of the distinct training inputs
    assert train.size == 3 and not np.array_equal(train, np.arange(3))
    computed = np.concatenate(counted_rows)
    assert computed.size and not np.any(np.all(np.isin(computed, train), axis=1)), "a training-only multiset was computed again"
    np.testing.assert_allclose(V[:NA, :NA, :NA, :NA], V_train, rtol=1e-13, atol=0)
    np.testing.assert_allclose(E[:NA, :NA, :NA, :NA], np.asarray(source.V_error), rtol=1e-13, atol=0)
    assert np.all(np.abs(V - V_alone) <= E + E_alone)
    # the same in a prediction: after conditioning, predict computes only multisets with a test input
    cond = ngp.condition(net, XA, np.sin(XA[:, :1]), noise=0.1, warn=False)
    cond._train
    counted_rows.clear()
    post = cond.predict(XB)
    computed = np.concatenate(counted_rows)
    assert not np.any(np.all(np.isin(computed, train), axis=1))
    from ngp import _posterior

    monkeypatch.setattr(_posterior, "reuse_four_point", lambda *args: 0)  # the prediction computing everything
    own = ngp.condition(net, XA, np.sin(XA[:, :1]), noise=0.1, warn=False).predict(XB)
    assert np.all(np.abs(post.mean - own.mean) <= post.mean_error + own.mean_error)
    assert np.all(np.abs(post.var - own.var) <= post.var_error + own.var_error)


def test_fill_tables_computes_several_tables_in_one_call(counted_rows):
    """fill_tables: tables of one activation and options share one quadrature call (their kernels stacked block
    by block); each gets the values and estimates it computes alone (to the rounding of the batching); a table of
    other options gets its own call; known values are not computed again."""
    from ngp import _finite

    X = np.random.default_rng(11).normal(size=(5, 2))
    prior = ngp.MLP(4, 16, activation="tanh", C_W=1.4, C_b=0.1).prior(X, warn=False)
    act = prior._cumulants[-1].map.act
    Ks = [np.asarray(c.map.K_in) for c in prior._cumulants[1:]]  # three different kernels
    ms = multisets(5)
    alone = [four_point_values(act, K, ms, errors=True) for K in Ks]
    counted_rows.clear()
    tables = [_finite.FourPointTable(act, K) for K in Ks] + [_finite.FourPointTable(act, Ks[0], four_point_rtol=1e-8)]
    assert _finite.fill_tables(tables, [ms, ms[:40], ms, ms[:7]]) == 70 + 40 + 70 + 7
    assert [r.shape[0] for r in counted_rows] == [180, 7]  # the three default tables together, then the other
    for t, (v, e), n in zip(tables, alone, (70, 40, 70)):
        vals, errs = t._lookup(ms[:n])
        np.testing.assert_allclose(vals, v[:n], rtol=1e-13, atol=0)
        np.testing.assert_allclose(errs, e[:n], rtol=1e-13, atol=64 * np.finfo(float).eps * np.max(np.abs(v)))
    assert len(counted_rows) == 2  # the lookups above found every value
    assert _finite.fill_tables(tables, [ms[:7]] * 4) == 0 and len(counted_rows) == 2


def test_small_priors_and_predictions_compute_every_layer_in_one_call(counted_rows, monkeypatch):
    """A prior's V on a few inputs computes all its layers' four-point values in one call (one per layer before),
    the same values, and so does ngp.log_evidence; a first prediction (ngp.posterior; condition + marginal predict) computes the training and
    test values in one call, which the training prior takes over; a prior too large for one call is left to its
    layers."""
    from ngp import _finite
    from ngp._prior import Prior

    rng = np.random.default_rng(12)
    XA, XB, Y = rng.normal(size=(3, 2)), rng.normal(size=(2, 2)), rng.normal(size=(3, 1))
    net = ngp.MLP(4, 16, activation="tanh", C_W=1.4, C_b=0.1)
    V = np.asarray(net.prior(XA, warn=False).V)
    assert [r.shape[0] for r in counted_rows] == [3 * 15]  # three dense layers, 15 multisets of 3 inputs each
    counted_rows.clear()
    with monkeypatch.context() as m:
        m.setattr(Prior, "_prefill_four_point", lambda self, rows=None: False)
        V_layers = np.asarray(net.prior(XA, warn=False).V)
        assert [r.shape[0] for r in counted_rows] == [15, 15, 15]
        own = ngp.condition(net, XA, Y, noise=0.1, warn=False)
        post_own, pred_own = ngp.posterior(net, XA, Y, XB, noise=0.1, warn=False), own.predict(XB)
    np.testing.assert_allclose(V, V_layers, rtol=1e-13, atol=1e-15 * np.max(np.abs(V)))
    counted_rows.clear()
    post = ngp.posterior(net, XA, Y, XB, noise=0.1, warn=False)
    assert [r.shape[0] for r in counted_rows] == [3 * 70]  # every multiset of the 5 inputs
    counted_rows.clear()
    cond = ngp.condition(net, XA, Y, noise=0.1, warn=False)
    pred = cond.predict(XB)  # marginal: the training multisets and those of each test point with them
    assert [r.shape[0] for r in counted_rows] == [3 * (15 + 2 * 20)]
    assert all(c.map.table._codes.size == 15 for c in cond._prior._cumulants[1:])  # taken over
    for a, b in [(post, post_own), (pred, pred_own)]:
        for name in ("mean", "var", "log_evidence"):
            np.testing.assert_allclose(getattr(a, name), getattr(b, name), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(post.cov, post_own.cov, rtol=1e-12, atol=1e-15)
    counted_rows.clear()  # the evidence's own path (ngp.log_evidence, what the hyperparameter fits evaluate)
    logz = ngp.log_evidence(net, XA, Y, noise=0.1, finite_width=True, warn=False)  # (eta 1.6 > 1 here)
    assert [r.shape[0] for r in counted_rows] == [3 * 15]
    assert logz == pytest.approx(own.log_evidence, rel=1e-13, abs=0)
    counted_rows.clear()
    monkeypatch.setattr(_finite, "TABLE_CHUNK", 40)  # 45 values over the layers: more than one call holds
    net.prior(XA, warn=False).V
    assert [r.shape[0] for r in counted_rows] == [15, 15, 15]


def test_first_prediction_takes_the_jacobians_over_from_the_joint_prior(monkeypatch):
    """ngp.posterior computes each dense layer's J and H once, on the joint inputs, and the training prior takes
    them over (the values its own would have, bit for bit here: the same padded call); seed_jh maps pairs whose
    inputs come in the other order (J's and H's (K_aa, K_bb) swapped), and refuses other kernels, activations,
    C_W, options or Mehler orders."""
    from ngp import _cumulants, _gaussian, _posterior
    from ngp._prior import reuse_jacobians

    calls = []
    original = _cumulants.jacobian_hessian

    def spy(act, K, *args, **kwargs):
        calls.append(np.shape(K)[0])
        return original(act, K, *args, **kwargs)

    monkeypatch.setattr(_cumulants, "jacobian_hessian", spy)
    rng = np.random.default_rng(21)
    XA, XB, Y = rng.normal(size=(4, 2)), rng.normal(size=(2, 2)), rng.normal(size=(4, 1))
    net = ngp.MLP(4, 16, activation="tanh", C_W=1.0, C_b=0.0)  # variances below 1.25: the same Mehler orders
    post = ngp.posterior(net, XA, Y, XB, noise=0.1, warn=False)
    assert calls == [6, 6]  # the two layers fed by a finite-width one, on the joint inputs only
    calls.clear()
    with monkeypatch.context() as m:
        m.setattr(_posterior, "reuse_jacobians", lambda *args: 0)
        own = ngp.posterior(net, XA, Y, XB, noise=0.1, warn=False)
    assert sorted(calls) == [4, 4, 6, 6]
    for name in ("mean", "var", "cov", "log_evidence", "mean_error", "var_error"):
        np.testing.assert_array_equal(getattr(post, name), getattr(own, name))

    # the joint inputs in another order: the training pairs (a, b) are the joint's (b, a)
    perm = np.array([5, 3, 0, 4, 2, 1])
    X = np.concatenate([XA, XB])
    joint, train = net.prior(X[perm], warn=False), net.prior(XA, warn=False)
    rows = np.where(perm < 4, perm, -1)  # the joint's row r holds X[perm[r]]: training row perm[r]
    assert reuse_jacobians(train, joint, rows) == 2  # the joint prior computes its own first
    fresh = net.prior(XA, warn=False)
    for t, f in zip(train._cumulants[2:], fresh._cumulants[2:]):
        for got, want in zip(t.map.__dict__["JH"], f.map.JH):
            np.testing.assert_allclose(got, want, rtol=1e-15, atol=1e-300)
    assert reuse_jacobians(train, joint, rows) == 0  # already known
    first = np.where(np.arange(6) < 4, np.arange(6), -1)
    for other in (ngp.MLP(4, 16, activation="tanh", C_W=1.1, C_b=0.0),
                  ngp.MLP(4, 16, activation="erf", C_W=1.0, C_b=0.0)):
        assert reuse_jacobians(net.prior(XA, warn=False), other.prior(X, warn=False), first) == 0
    assert reuse_jacobians(net.prior(XA, warn=False, terms=210, nodes=520), net.prior(X, warn=False), first) == 0
    wide = ngp.MLP(4, 16, activation="tanh", C_W=2.5, C_b=0.0)  # deeper variances above 1.25: orders from the largest
    small, big = wide.prior(XA, warn=False), wide.prior(np.concatenate([XA, 3 * XB]), warn=False)
    assert [_gaussian.auto_orders(np.max(np.diag(K))) for K in small.kernels[1:3]] != [
        _gaussian.auto_orders(np.max(np.diag(K))) for K in big.kernels[1:3]]
    assert reuse_jacobians(small, big, first) == 0
    with pytest.raises(ValueError, match="rows"):
        reuse_jacobians(net.prior(XA, warn=False), joint, np.arange(5))


def test_four_point_values_are_taken_only_from_the_same_kernel_and_options():
    """A table takes nothing from a prior of another kernel (C_W) or other quadrature options; a wrong row
    map is refused by name."""
    from ngp._prior import reuse_four_point

    rng = np.random.default_rng(8)
    XA, XB = rng.normal(size=(3, 2)), rng.normal(size=(1, 2))
    X = np.concatenate([XA, XB])
    net = ngp.MLP(3, 16, activation="tanh", C_W=1.3, C_b=0.1)
    for other, options in [(ngp.MLP(3, 16, activation="tanh", C_W=1.2, C_b=0.1), {}),
                           (net, {"four_point_rtol": 1e-8})]:
        source = other.prior(XA, warn=False, **options)
        source.K1  # the four-point values of the training pairs
        assert any(c.map.table._codes.size for c in source._cumulants if hasattr(c, "map"))
        assert reuse_four_point(net.prior(X, warn=False), source, np.arange(3)) == 0
    with pytest.raises(ValueError, match="rows"):
        reuse_four_point(net.prior(X, warn=False), net.prior(XA, warn=False), np.arange(4))


@pytest.mark.parametrize("scaled", [False, True])
def test_K1_on_a_closed_set_of_pairs_equals_the_full_K1(scaled):
    """``_K1_at(sel)``, ``_local2_at(sel)``, their error estimates and the expansion parameter on a set of pairs
    closed under diagonals are the full ones at those pairs (computed first on their own, nothing cached), through
    dense and scaled layers; a set without the diagonals is refused by name."""
    from ngp._cumulants import closed_pairs
    from ngp._pairs import Pairs
    from ngp._vertex_error import k1_error, k1_error_packed, local2_error

    X = np.random.default_rng(11).normal(size=(5, 2))
    steps = [ngp.Dense(16, C_W=1.3, C_b=0.1), ngp.Elementwise("tanh"), ngp.Dense(16, C_W=1.2, C_b=0.1),
             ngp.Elementwise("tanh"), ngp.Dense(16, C_W=1.1, C_b=0.2)]
    net = ngp.serial(*steps, ngp.Scale(0.7)) if scaled else ngp.serial(*steps, ngp.Elementwise("tanh"), ngp.Dense(1))
    pairs = Pairs.of(5)
    sel = np.unique(np.concatenate([pairs.index[[0, 3, 4], [3, 1, 4]], pairs.index[[0, 1, 3, 4], [0, 1, 3, 4]]]))
    part = net.prior(X, warn=False)._cumulants[-1]
    got = (np.asarray(part._K1_at(sel)), np.asarray(k1_error_packed(part, sel)), np.asarray(part._local2_at(sel)),
           np.asarray(local2_error(part.prev if scaled else part, sel)), part.expansion_parameter_at(sel))
    assert part.__dict__.get("K1") is None and "_local2" not in part.__dict__  # computed on the pairs only
    full = net.prior(X, warn=False)._cumulants[-1]
    want = (pairs.pack(full.K1)[sel], pairs.pack(k1_error(full))[sel], np.asarray(full._local2)[sel],
            local2_error(full.prev if scaled else full)[sel])
    for g, w in zip(got, want):
        assert np.all(np.isfinite(g)) and np.any(g != 0)
        np.testing.assert_allclose(g, w, rtol=1e-12, atol=1e-15)
    diag = np.abs(np.asarray(full._local2)[sel, 2, 2]) / (np.diag(full.K)[pairs.a[sel]] * np.diag(full.K)[pairs.b[sel]])
    assert got[4] == pytest.approx(diag.max() / full.n, rel=1e-12)
    assert got[4] <= full.expansion_parameter
    with pytest.raises(ValueError, match="sel"):
        closed_pairs(pairs, pairs.index[[0], [3]])


@pytest.mark.parametrize("M, distinct", [(5000, 40), (3000, 2000)])
def test_distinct_rows_equals_numpy_unique(M, distinct):
    """The recursion's deduplication of pair-index rows (marking ranked codes when their range is small, sorting
    when not: the two cases) gives ``numpy.unique``'s distinct rows, order and inverse."""
    from ngp._cumulants import distinct_rows
    from ngp._pairs import Pairs

    pairs = Pairs.of(200)
    rng = np.random.default_rng(3)
    vals = rng.choice(pairs.P, size=distinct, replace=False)
    p, q = np.sort(rng.choice(vals, size=(2, M)), axis=0)
    uniq, inverse = np.unique(p * pairs.P + q, return_inverse=True)
    up, uq, quads, inv = distinct_rows(pairs, p, q)
    np.testing.assert_array_equal(up, uniq // pairs.P)
    np.testing.assert_array_equal(uq, uniq % pairs.P)
    np.testing.assert_array_equal(inv, inverse.reshape(-1))
    np.testing.assert_array_equal(quads, np.stack([pairs.a[up], pairs.b[up], pairs.a[uq], pairs.b[uq]], axis=1))
    assert up.size < M and np.issubdtype(inv.dtype, np.integer)
    span = np.unique(p).size * np.unique(q).size
    assert (span <= 8 * M + 2**20) == (distinct < 100)  # the case named


def test_marginal_prediction_computes_no_value_with_two_test_inputs(counted_rows):
    """Marginal predictions read K1 at test-training pairs and each test point with itself only: no four-point
    value with two different test inputs is computed (the test-test pairs of the joint K1 were O(N_test^2) of
    them), and the means, variances and their error bounds are those of the full K1 (``full_cov=True``)."""
    rng = np.random.default_rng(9)
    XA, XB = rng.normal(size=(4, 2)), rng.normal(size=(3, 2))
    net = ngp.MLP(3, 16, activation="tanh", C_W=1.3, C_b=0.1)
    cond = ngp.condition(net, XA, np.sin(XA[:, :1]), noise=0.1, warn=False)
    cond._train
    counted_rows.clear()
    post = cond.predict(XB)
    computed = np.concatenate(counted_rows)
    test = np.arange(4, 7)  # the joint prior's indices of the test inputs (no duplicates: the user's order)
    distinct_test = [np.unique(row[np.isin(row, test)]).size for row in computed]
    assert max(distinct_test) == 1, "a four-point value with two test inputs was computed"
    full = cond.predict(XB, full_cov=True)
    for f in ("mean", "var", "mean_error", "var_error"):
        np.testing.assert_allclose(getattr(post, f), getattr(full, f), rtol=1e-12, atol=1e-16, err_msg=f)
    assert 0 < post.expansion_parameter <= full.expansion_parameter


def test_marginal_prediction_warns_on_its_own_expansion_parameter():
    """A marginal prediction (K1 on the pairs it reads only) still checks the expansion parameter on those pairs."""
    rng = np.random.default_rng(10)
    XA, XB = rng.normal(size=(3, 2)), rng.normal(size=(2, 2))
    net = ngp.MLP(3, 2, activation="tanh", C_W=1.3, C_b=0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cond = ngp.condition(net, XA, np.sin(XA[:, :1]), noise=0.1)
        cond._train
    with pytest.warns(ngp.ExpansionWarning, match="expansion parameter"):
        post = cond.predict(XB)
    assert post.expansion_parameter > 0.3


def test_jitted_gradient_of_the_traced_rule_holds_one_batch_at_a_time():
    """Under ``jax.jit`` of a gradient the traced rule's batches run one after another: the compiled program's
    temporary memory is about one batch's, not the sum over batches (a loop of batches let XLA keep every
    batch's node values live: 22 GB for the evidence's gradient at 8 inputs). The gradient equals the one
    taken outside ``jax.jit``."""
    import jax

    tanh = ngp.activation("tanh")
    X = np.random.default_rng(5).normal(size=(7, 3))
    K = jnp.asarray(X @ X.T / 3 + 0.1)
    ms = multisets(7)
    ms = ms[np.all(np.diff(ms, axis=1) > 0, axis=1)]  # the 35 rows of four distinct inputs
    orders = {1: 20, 2: 20, 3: 16, 4: 16}
    q = pruned_tensor_rule(4, 16)[1].size
    batch_elems = 4 * q  # one row per batch: 35 batches

    def total(K):
        return jnp.sum(_product_expectations(tanh, K, ms, orders, batch_elems=batch_elems) ** 2)

    compiled = jax.jit(jax.grad(total)).lower(K).compile()
    one_batch = q * 4 * 4 * 8  # bytes of the Hessian values at one row's nodes
    temp = compiled.memory_analysis().temp_size_in_bytes
    assert temp < 8 * one_batch, (temp, one_batch)  # measured 5.3 (the rule, the nodes, one batch); 143 before
    g = np.asarray(compiled(K))
    assert np.allclose(g, np.asarray(jax.grad(total)(K)), rtol=1e-12, atol=1e-14)
    assert np.all(np.isfinite(g)) and np.abs(g).max() > 0


class _Stop(Exception):
    """Raised by a patched four_point_values: no quadrature ran."""


def _refuse(*args, **kwargs):
    raise _Stop


@pytest.mark.parametrize("act, N, C_W, seconds, said", [
    ("tanh", 12, 10.0, 1e-6, "2730 new multisets of 12 inputs in 2 tables (layers)"),  # every layer in one call
    ("tanh", 12, 1.0, 1e-5, "2730 new multisets of 12 inputs in 2 tables (layers)"),
    ("tanh", 17, 10.0, 1e-6, "4845 new multisets of 17 inputs ("),  # past one call: each layer's table on its own
    ("tanh", 12, 10.0, 2e-8, "variances above 20 make the four-point quadrature of 'tanh' tens of times"),  # ~10 s
    ("tanh", 12, 1.0, 5e-7, None),  # ~8 s at variances below 3 (rules 1.5-1.8x): no warning
    ("erf", 12, 1.0, 1e-4, "2730 new multisets of 12 inputs in 2 tables (layers)"),  # its own rate (smoothed)
])
def test_a_long_four_point_call_is_a_cost_warning_before_it_starts(monkeypatch, act, N, C_W, seconds, said):
    # the estimate is the first round's rule nodes (tests/test_fourpoint.py checks them against the nodes run) times
    # NODE_SECONDS, raised here so that a small problem passes the limits (60 s; 5 s where variances make the rules
    # 10x those at variances up to 1); the warning comes before any quadrature, and names large variances as the
    # cause only where they make the rules several times larger
    import ngp._finite as fin
    X = np.random.default_rng(0).normal(size=(N, 2))
    net = ngp.MLP(3, 64, activation=act, C_W=C_W, C_b=0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ngp.CostWarning)
        assert net.prior(X[:6], warn=False).V.shape == (6,) * 4  # at the measured speed: no warning
    monkeypatch.setattr(fin, "SMOOTHED_NODE_SECONDS" if act == "erf" else "NODE_SECONDS", seconds)
    monkeypatch.setattr(fin, "four_point_values", _refuse)
    with warnings.catch_warnings(record=True) as caught, pytest.raises(_Stop):
        warnings.simplefilter("always")
        net.prior(X, warn=False).V
    said_here = [w for w in caught if issubclass(w.category, ngp.CostWarning)]
    if said is None:
        assert not said_here, [str(w.message) for w in said_here]
        return
    text = str(said_here[0].message)
    assert said in text and f"'{act}'" in text and ("standardised inputs" in text) == (C_W == 10.0), text
    if seconds > 2e-8:
        assert " minutes here" in text, text
        assert ("variances this large make the rules" in text) == (C_W == 10.0), text
    assert said_here[0].filename == __file__
