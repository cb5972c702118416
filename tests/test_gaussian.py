"""Two-point Gaussian expectations: closed forms, Mehler series and 2-D quadrature
against independent adaptive quadrature (scipy)."""

import math

import jax.numpy as jnp
import numpy as np
import pytest

import ngp
from ngp._gaussian import gauss_hermite, hermite_coefficients, mehler_series, pair_gh, pair_matrix, pair_matrices
from ngp._kernel import two_point_matrix

from ._reference import erf_smoothed, gauss_pair, relu_smoothed

BLOCKS = [(1.0, 1.5, 0.9), (0.4, 2.0, -0.5), (2.5, 2.5, 2.4999), (1.2, 0.7, 0.0), (3.0, 2.0, 1.5)]


@pytest.mark.parametrize("kaa,kbb,kab", BLOCKS)
def test_relu_closed_form_against_adaptive_quadrature(kaa, kbb, kab):
    act = ngp.activation("relu")
    ref = gauss_pair(lambda z: max(z, 0.0), kaa, kbb, kab, smoothed=relu_smoothed)
    got = float(act.two_point(kaa, kbb, kab))
    assert abs(got - ref) <= 1e-10 * abs(ref)


@pytest.mark.parametrize("kaa,kbb,kab", BLOCKS)
def test_erf_closed_form_against_adaptive_quadrature(kaa, kbb, kab):
    import math

    act = ngp.activation("erf")
    ref = gauss_pair(math.erf, kaa, kbb, kab, smoothed=erf_smoothed)
    got = float(act.two_point(kaa, kbb, kab))
    assert abs(got - ref) <= 1e-10 * max(abs(ref), 1e-3)


def test_sin_closed_form_stays_finite_at_large_variances():
    """<sin z_a sin z_b> = e^{-(k_aa+k_bb)/2} sinh(k_ab) against 40-digit decimal arithmetic, at variances where
    sinh alone overflows (it gave inf * 0 = NaN, and a sin network on unscaled inputs a FloatingPointError), with
    finite derivatives (the Jacobian and Hessian of the kernel map are its autodiff); a sin network's prior and
    posterior on inputs of variance ~1e4 are finite."""
    import decimal

    import jax

    decimal.getcontext().prec = 40
    act = ngp.activation("sin")

    def exact(kaa, kbb, kab):
        D = decimal.Decimal
        m = (D(kaa) + D(kbb)) / 2
        up, down = (D(kab) - m).exp(), (-D(kab) - m).exp()
        return float((up - down) / 2), float((up + down) / 2)

    for kaa, kbb, kab in [(800.0, 800.0, 790.0), (400.0, 300.0, -340.0), (349.0, 351.0, 1e-3), (1e4, 2e4, 1.2e4),
                          (2e3, 2e3, 2e3), (1.0, 2.0, 0.5), (0.0, 0.0, 0.0)]:
        value, slope = exact(kaa, kbb, kab)
        got = float(act.two_point(kaa, kbb, kab))
        assert abs(got - value) <= 4e-15 * abs(value) + 1e-300, (kaa, kbb, kab, got, value)
        d = float(jax.grad(act.two_point, argnums=2)(kaa, kbb, kab))  # d/dk_ab = e^{-m} cosh(k_ab)
        assert abs(d - slope) <= 4e-15 * abs(slope) + 1e-300, (kaa, kbb, kab, d, slope)
    X = np.random.default_rng(3).normal(size=(5, 2))
    net = ngp.MLP(3, 16, activation="sin", C_W=1.5, C_b=0.1)
    prior = net.prior(100 * X, warn=False)
    assert np.max(np.diag(np.asarray(prior.kernels[0]))) > 1e3
    for value in (prior.K, prior.K1, prior.V):
        assert np.all(np.isfinite(np.asarray(value)))
    post = ngp.posterior(net, 100 * X, np.ones((5, 1)), X[:2], noise=0.1, warn=False)
    assert np.all(np.isfinite(post.mean)) and np.all(np.isfinite(post.var)) and np.isfinite(post.log_evidence)


@pytest.mark.parametrize("name", ["erf", "sin", "linear"])
def test_mehler_and_quadrature_match_closed_forms(name):
    act = ngp.activation(name)
    rng = np.random.default_rng(1)
    A = rng.normal(size=(6, 4))
    K = A @ A.T / 4 + 0.1
    K = jnp.asarray(K)
    closed = two_point_matrix(act, K, method="closed")
    mehler = two_point_matrix(act, K, method="mehler")
    quad = two_point_matrix(act, K, method="quadrature", quad_nodes=120)
    scale = float(jnp.max(jnp.abs(closed)))
    assert float(jnp.max(jnp.abs(mehler - closed))) <= 1e-10 * scale
    assert float(jnp.max(jnp.abs(quad - closed))) <= 1e-10 * scale


def test_relu_quadrature_paths_converge_to_closed_form():
    # Kinks make the numerical paths converge only algebraically (documented); they
    # must approach the closed form as the order grows.
    act = ngp.activation("relu")
    K = jnp.asarray([[1.0, 0.6, -0.3], [0.6, 1.4, 0.2], [-0.3, 0.2, 0.8]])
    closed = two_point_matrix(act, K)
    errs = []
    for t in (50, 200, 400):  # each warns that it is far from the automatic rule (here the closed form)
        with pytest.warns(ngp.AccuracyWarning, match=f"method='mehler', terms={t}, nodes={2 * t + 100} differs"):
            errs.append(float(jnp.max(jnp.abs(two_point_matrix(act, K, method="mehler", terms=t, nodes=2 * t + 100)
                                              - closed))))
    assert errs[0] > errs[1] > errs[2]
    assert errs[2] < 1e-3


SCALAR = {  # independent scalar implementations for the scipy reference
    "tanh": math.tanh,
    "gelu": lambda z: z * 0.5 * math.erfc(-z / math.sqrt(2)),
    "swish": lambda z: z / (1 + math.exp(-z)) if z > -700 else 0.0,
    "softplus": lambda z: max(z, 0.0) + math.log1p(math.exp(-abs(z))),
    "sigmoid": lambda z: 1 / (1 + math.exp(-z)) if z > -700 else 0.0,
}


@pytest.mark.parametrize("name", ["tanh", "gelu", "swish", "softplus", "sigmoid"])
@pytest.mark.parametrize(
    "kaa,kbb,kab", [(1.0, 1.5, 0.9), (0.4, 2.0, -0.5), (2.5, 2.5, 2.4999), (9.0, 8.0, 8.4852), (9.0, 9.0, 9.0)]
)
def test_smooth_activations_to_1e_10(name, kaa, kbb, kab):
    act = ngp.activation(name)
    f = SCALAR[name]
    ref = gauss_pair(f, kaa, kbb, kab)
    K = jnp.asarray([[kaa, kab], [kab, kbb]])
    got = float(two_point_matrix(act, K)[0, 1])
    got_diag = float(two_point_matrix(act, K)[0, 0])
    ref_diag = gauss_pair(f, kaa, kaa, kaa)
    assert abs(got - ref) <= 1e-10 * max(abs(ref), 1e-2), (got, ref)
    assert abs(got_diag - ref_diag) <= 1e-10 * abs(ref_diag)


def test_gauss_hermite_weights_and_moments():
    x, w = gauss_hermite(30)
    assert abs(w.sum() - 1) < 1e-14
    assert abs(np.sum(w * x**4) - 3) < 1e-12
    with pytest.raises(ValueError, match="nodes"):
        gauss_hermite(0)


def test_hermite_coefficients_of_polynomial():
    # z^3 with z = sqrt(k) x:  k^{3/2} (He_3 + 3 He_1) -> c_1 = 3 k^{3/2}, c_3 = sqrt(6) k^{3/2}
    c = hermite_coefficients(lambda z: z**3, jnp.asarray([2.0]), terms=6, nodes=20)
    k32 = 2.0**1.5
    np.testing.assert_allclose(np.asarray(c)[0], [0, 3 * k32, 0, np.sqrt(6) * k32, 0, 0, 0], atol=1e-12)


def test_pair_gh_matches_mehler_for_mixed_functions():
    K = jnp.asarray([[1.0, 0.3], [0.3, 0.5]])
    f, g = jnp.tanh, jnp.sin
    m = pair_matrix(f, g, K)
    q = pair_gh(f, g, 1.0, 0.5, 0.3, nodes=150)
    assert abs(float(m[0, 1]) - float(q)) < 1e-12


def test_pair_matrices_equal_pair_matrix_for_each_pair():
    """The one-program set of Mehler pair matrices equals pair_matrix pair by pair (derivatives of tanh)."""
    from ngp._activations import activation

    act = activation("tanh")
    d = [act.derivative(k) for k in range(3)]
    A = np.random.default_rng(5).normal(size=(7, 3))
    K = 0.2 + A @ A.T / 3
    fgs = ((d[2], d[0]), (d[1], d[1]), (d[0], d[0]))
    got = pair_matrices(fgs, K)
    assert len(got) == 3
    for (f, g), M in zip(fgs, got):
        np.testing.assert_allclose(np.asarray(M), np.asarray(pair_matrix(f, g, K)), rtol=0, atol=1e-14)
    assert not np.allclose(np.asarray(got[0]), np.asarray(got[1]))


@pytest.mark.parametrize("tile", [1, 8, 16])
def test_mehler_series_by_tiles_equals_the_sum_of_its_terms(tile):
    """The tiled Horner loop equals ``sum_k A_k B_k rho^k`` summed term by term in NumPy, for a row count that
    is not a multiple of the tile (13 rows: padded) and several functions at once."""
    rng = np.random.default_rng(11)
    A, B = rng.normal(size=(2, 13, 9)), rng.normal(size=(2, 7, 9))
    rho = np.clip(rng.normal(size=(13, 7)), -1.0, 1.0)
    want = sum(A[:, :, None, k] * B[:, None, :, k] * rho[None] ** k for k in range(9))
    got = np.asarray(mehler_series(jnp.asarray(A), jnp.asarray(B), jnp.asarray(rho), tile=tile))
    assert got.shape == (2, 13, 7)
    np.testing.assert_allclose(got, want, rtol=1e-13, atol=1e-13)


def test_mehler_tables_are_held_once_and_within_their_byte_bound():
    """Building the tables of the fit's variance buckets and the capped orders allocates about one copy of each
    (before stop 58 the unpadded Hermite functions were cached beside the padded table: twice the memory), and
    the cache keeps at most ``TABLE_BYTES``."""
    import tracemalloc

    from ngp import _gaussian

    _gaussian._padded_tables.cache_clear()
    tracemalloc.start()
    try:
        tables = _gaussian.switch_tables()
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    size = sum(a.nbytes for t in tables for a in t)
    assert size > 150e6 and held < 1.1 * size
    assert _gaussian._padded_tables.cache_bytes() == size <= _gaussian.TABLE_BYTES
    # the recurrence written into the padded table: orthonormal Hermite functions (psi psi^T = I on the rule)
    _, _, sw, psi = tables[0]
    assert all(a.ctypes.data % 64 == 0 for t in tables for a in t)  # JAX's CPU backend reads these in place
    assert np.all(psi[:, sw == 0] == 0)
    np.testing.assert_allclose(psi[:200] @ psi[:200].T, np.eye(200), atol=1e-12)
