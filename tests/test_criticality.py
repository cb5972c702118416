"""Criticality, universality classes and depth laws (THEORY.md §6, §8, §10).

Independent references: closed forms, scipy adaptive quadrature (``integrate.quad`` with
numpy implementations of sigma and sigma'), and 30-digit mpmath values quoted below.
"""

import math
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate, optimize, special

import ngp
from ngp import criticality as cr

# ----------------------------------------------------------------------------- references
_NP = {
    "tanh": (np.tanh, lambda z: 1.0 / np.cosh(z) ** 2),
    "erf": (special.erf, lambda z: 2.0 / math.sqrt(math.pi) * np.exp(-z * z)),
    "sin": (np.sin, np.cos),
    "gelu": (lambda z: z * special.ndtr(z), lambda z: special.ndtr(z) + z * np.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)),
    "swish": (lambda z: z * special.expit(z), lambda z: special.expit(z) * (1 + z * (1 - special.expit(z)))),
    "sigmoid": (special.expit, lambda z: special.expit(z) * (1 - special.expit(z))),
    "softplus": (lambda z: np.logaddexp(0.0, z), special.expit),
}


def _gauss(f, K):
    """E[f(z)], z ~ N(0, K), by adaptive quadrature in x = z / sqrt(K)."""
    s = math.sqrt(K)
    with warnings.catch_warnings():  # sin at large K: chi_par ~ e^{-2K}, compared absolutely
        warnings.simplefilter("ignore", integrate.IntegrationWarning)
        val, _ = integrate.quad(lambda x: f(s * x) * math.exp(-0.5 * x * x), -40, 40, points=[0.0],
                                epsabs=1e-300, epsrel=1e-13, limit=2000)
    return val / math.sqrt(2 * math.pi)


def _quad_chis(name, K, C_W=1.0):
    """(chi_par, chi_perp, g) with chi_par = (C_W/K) <s s' z> (the sigma' form, not the code's He_2 form)."""
    f, fp = _NP[name]
    chi_par = C_W / K * _gauss(lambda z: f(z) * fp(z) * z, K)
    chi_perp = C_W * _gauss(lambda z: fp(z) ** 2, K)
    return chi_par, chi_perp, _gauss(lambda z: f(z) ** 2, K)


# 30-digit values from mpmath.quad + findroot of chi_par = chi_perp (THEORY §10 prints 12 digits).
GELU = dict(K_star=(3 + math.sqrt(17)) / 2, C_b=0.172922390756067351749853, C_W=1.98305825743754712520548)
SWISH = dict(K_star=14.3201736180257988165873, C_b=0.555143170721530396201231, C_W=1.98800467826949200527129)


# ----------------------------------------------------------------------------- susceptibilities
@pytest.mark.parametrize("name", ["tanh", "erf", "gelu", "swish", "sigmoid", "softplus", "sin"])
def test_susceptibilities_against_adaptive_quadrature(name):
    Ks = np.array([0.05, 1.0, 7.3, 40.0])
    chi_par, chi_perp = cr.susceptibilities(name, Ks, C_W=1.7, C_b=0.2)
    assert chi_par.shape == chi_perp.shape == Ks.shape
    for K, cp, cq in zip(Ks, chi_par, chi_perp):
        rp, rq, _ = _quad_chis(name, K, C_W=1.7)
        # sin: chi_par ~ e^{-2K} underflows relative precision; compare absolutely there.
        assert abs(cp - rp) <= 2e-10 * max(abs(rp), 1e-3), (K, cp, rp)
        assert abs(cq - rq) <= 2e-10 * abs(rq), (K, cq, rq)


@pytest.mark.parametrize("name", ["tanh", "gelu"])
def test_phase_diagram_against_adaptive_quadrature(name):
    """K after `depth` layers and chi_perp there, on a grid, against scipy's adaptive quadrature of the
    kernel map; kernels that leave [1e-12, 100] are flagged as diverged."""
    CB, CW = np.meshgrid([0.0, 0.3], [0.8, 1.9])
    pd = cr.phase_diagram(name, C_b=CB, C_W=CW, depth=4, K0=0.7)
    assert pd.K.shape == pd.chi_perp.shape == pd.diverged.shape == CB.shape
    f, fp = _NP[name]
    for i in np.ndindex(CB.shape):
        K = 0.7
        for _ in range(3):
            K = CB[i] + CW[i] * _gauss(lambda z: f(z) ** 2, K)
        chi = CW[i] * _gauss(lambda z: fp(z) ** 2, K)
        # 400 Gauss-Hermite nodes: picture accuracy (documented ~1e-6 at K <~ 10)
        assert abs(pd.K[i] - K) <= 1e-6 * K and abs(pd.chi_perp[i] - chi) <= 1e-6 * chi, (i, pd.K[i], K)
    assert not pd.diverged.any()
    big = cr.phase_diagram("relu", C_b=0.1, C_W=[1.0, 4.0], depth=8, K0=1.0)  # chi = C_W / 2: 2^7 growth
    assert big.diverged.tolist() == [False, True]
    with pytest.raises(ValueError, match="C_W"):
        cr.phase_diagram("tanh", C_b=0.0, C_W=[1.0, 0.0], depth=3)
    with pytest.raises(ValueError, match="depth"):
        cr.phase_diagram("tanh", C_b=0.0, C_W=1.0, depth=0)
    with pytest.raises(ValueError, match=r"C_b, C_W: shapes \(2,\) and \(3,\) do not broadcast"):
        cr.phase_diagram("tanh", C_b=[0.0, 0.1], C_W=[1.0, 1.5, 2.0], depth=3)
    with pytest.raises(TypeError, match="C_b: expected real numbers"):
        cr.phase_diagram("tanh", C_b="0.1 0.2", C_W=1.0, depth=3)
    with pytest.raises(TypeError, match="C_W: expected real numbers"):
        cr.phase_diagram("tanh", C_b=0.1, C_W=[1.0 + 1.0j], depth=3)


def test_phase_diagram_and_residual_flows_compute_in_float64_in_a_float32_session():
    """Like every public numerical entry point, ``phase_diagram`` runs in float64 whatever the session's flag
    (``ngp._validate.float64``): the same values with x64 off as on (float32 differs at ~1e-7)."""
    grid = {"C_b": [0.0, 0.3], "C_W": [[1.0], [1.9]], "depth": 4}
    with jax.enable_x64(False), pytest.warns(ngp.AccuracyWarning, match="float32"):
        low = cr.phase_diagram("tanh", **grid)
    ref = cr.phase_diagram("tanh", **grid)
    assert low.K.dtype == np.float64
    np.testing.assert_array_equal(low.K, ref.K)
    np.testing.assert_array_equal(low.chi_perp, ref.chi_perp)
    # residual_depth_flow (and its two siblings) were not wrapped: V with x64 off was 4e-7 relative off, labelled
    # float64, and the warning named only residual_susceptibilities (a prober, stop 92)
    flow = {"C_W": 1.0, "C_b": 0.1, "gamma": 0.8, "xi": 0.6, "K0": 1.0, "depth": 5}
    with jax.enable_x64(False), pytest.warns(ngp.AccuracyWarning, match="residual_depth_flow"):
        low = cr.residual_depth_flow("tanh", **flow)
    ref = cr.residual_depth_flow("tanh", **flow)
    np.testing.assert_array_equal(low.K, ref.K)
    np.testing.assert_array_equal(low.V, ref.V)
    for fn, kw in ((cr.residual_critical_point, {"gamma": 0.8, "xi": 0.6}),
                   (cr.residual_vertex_growth, {"gamma": 0.8, "xi": 0.6})):
        with jax.enable_x64(False), pytest.warns(ngp.AccuracyWarning, match=fn.__name__):
            low = fn(*(("tanh",) if fn is cr.residual_critical_point else ()), **kw)
        assert low == fn(*(("tanh",) if fn is cr.residual_critical_point else ()), **kw)


def test_phase_diagram_and_root_search_leave_the_warning_filters_alone():
    """Both silence NumPy's floating-point warnings of diverging kernels with ``np.errstate`` (per thread), not
    ``warnings.catch_warnings`` (which swaps the process's filters, hiding other threads' warnings meanwhile): the
    activation, traced inside those blocks, sees the caller's filters."""
    seen = []

    def act(z):
        seen.append(list(warnings.filters))
        return jnp.tanh(z)

    before = list(warnings.filters)
    cr.phase_diagram(act, C_b=[0.0, 0.2], C_W=[1.0, 50.0], depth=3)
    cr._half_stable_roots(ngp.activation(lambda z: jnp.tanh(z) + 0.0 * act(z)), (0.01, 10.0))
    assert len(seen) >= 2 and all(f == before for f in seen)


def test_scale_invariant_susceptibilities_are_closed_form():
    K = np.array([[0.3, 2.0], [11.0, 150.0]])
    for slope in (0.0, 0.1, 1.0):
        act = ngp.activation("leaky_relu", slope=slope)
        cp, cq = cr.susceptibilities(act, K, C_W=1.3)
        np.testing.assert_allclose(cp, np.full(K.shape, 1.3 * (1 + slope**2) / 2), rtol=1e-15)
        np.testing.assert_allclose(cq, cp, rtol=1e-15)
    assert isinstance(cr.susceptibilities("relu", 2.0, C_W=2.0)[0], float)


# ----------------------------------------------------------------------------- critical points
@pytest.mark.parametrize("slope", [0.0, 0.01, 0.1, 0.5])
def test_relu_family_critical_points(slope):
    act = ngp.activation("relu") if slope == 0 else ngp.activation("leaky_relu", slope=slope)
    p = cr.critical_point(act)
    assert p.exists and p.universality_class == "scale-invariant"
    assert p.C_b == 0.0 and p.K_star is None
    assert abs(p.C_W - 2 / (1 + slope**2)) < 1e-14
    A2, A4 = (1 + slope**2) / 2, (1 + slope**4) / 2
    assert abs(p.vertex_slope - (3 * A4 / A2**2 - 1)) < 1e-13


def test_known_scale_invariant_numbers():
    assert cr.critical_point("relu").C_W == 2.0 and cr.critical_point("relu").vertex_slope == 5.0
    lin = cr.critical_point("linear")
    assert (lin.C_b, lin.C_W, lin.vertex_slope) == (0.0, 1.0, 2.0)
    leaky = cr.critical_point(ngp.activation("leaky_relu", slope=0.1))
    assert abs(leaky.C_W - 1.9801980198) < 1e-10 and abs(leaky.vertex_slope - 4.8823644741) < 1e-10


@pytest.mark.parametrize(
    "name,C_W,a1",
    [("tanh", 1.0, -2.0), ("sin", 1.0, -1.0), ("erf", math.pi / 4, -2.0)],
)
def test_K_star_zero_class(name, C_W, a1):
    p = cr.critical_point(name)
    assert p.exists and p.universality_class == "K*=0"
    assert p.C_b == 0.0 and p.K_star == 0.0
    assert abs(p.C_W - C_W) < 1e-14
    assert abs(p.a1 - a1) < 1e-12 and abs(p.b1 - a1) < 1e-12 and abs(p.p_perp - 1) < 1e-12
    # chi -> 1 as K -> 0 at the critical C_W, with slopes 2 a1 and b1 (THEORY §6)
    K = 1e-5
    cp, cq = cr.susceptibilities(name, K, C_W=p.C_W)
    assert abs((cp - 1) / K - 2 * a1) < 1e-3 and abs((cq - 1) / K - a1) < 1e-3


def test_gelu_critical_point_against_closed_form_K_star():
    p = cr.critical_point("gelu")
    assert p.exists and p.universality_class == "half-stable"
    assert abs(p.K_star - GELU["K_star"]) < 1e-10  # (3 + sqrt 17)/2 to ~1e-12 in practice
    assert abs(p.C_b - GELU["C_b"]) < 1e-11 and abs(p.C_W - GELU["C_W"]) < 1e-11
    # THEORY §10's 12 printed digits (printed values are rounded: allow 5e-13 + our ~1e-12)
    assert abs(p.K_star - 3.561552812809) < 2e-12
    assert abs(p.C_b - 0.172922390756) < 2e-12 and abs(p.C_W - 1.983058257438) < 2e-12
    # independent check of the defining equations by adaptive quadrature
    cp, cq, g = _quad_chis("gelu", p.K_star, C_W=p.C_W)
    assert abs(cp - 1) < 1e-10 and abs(cq - 1) < 1e-10
    assert abs(p.C_b + p.C_W * g - p.K_star) < 1e-10
    # half-stable details (THEORY §6: f'' = -2.87e-4, stable from above, A* = 4.9043; mpmath gives
    # A* = 4.90422620645042, f'' = -2.87252837464771e-4, so THEORY's A* is off in the last digit)
    assert abs(p.f2 + 2.87252837464771e-4) < 1e-8 * 2.9e-4 and p.stable_side == "above"
    assert abs(p.vertex_slope - 4.90422620645042) < 1e-10


def test_swish_critical_point_independently():
    p = cr.critical_point("swish")
    assert p.exists and p.universality_class == "half-stable"
    # independent solve: scipy quad chi's and brentq
    def h(K):
        cp, cq, _ = _quad_chis("swish", K)
        return cp / cq - 1

    K_ref = optimize.brentq(h, 12.0, 16.0, xtol=1e-13)
    _, cq, g = _quad_chis("swish", K_ref)
    assert abs(p.K_star - K_ref) < 1e-9 * K_ref
    assert abs(p.C_W - 1 / cq) < 1e-10 and abs(p.C_b - (K_ref - g / cq)) < 1e-9
    # mpmath digits: K* to ~1e-12 relative (the root of a flat function: chi_par - chi_perp has slope ~2e-3)
    assert abs(p.K_star - SWISH["K_star"]) < 1e-10 * SWISH["K_star"]
    assert abs(p.C_b - SWISH["C_b"]) < 1e-11 and abs(p.C_W - SWISH["C_W"]) < 1e-11
    # mpmath: f'' = 5.69958437881e-6 (THEORY: 5.70e-6), A* = 4.92318709099538 (THEORY: 4.9232)
    assert abs(p.f2 - 5.69958437881e-6) < 1e-7 * 5.7e-6 and p.stable_side == "below"
    assert abs(p.vertex_slope - 4.92318709099538) < 1e-10


@pytest.mark.parametrize("name", ["sigmoid", "softplus"])
def test_no_critical_point_for_sigmoid_and_softplus(name):
    p = cr.critical_point(name)
    assert not p.exists and p.universality_class == "none"
    assert p.C_b is None and p.C_W is None and p.K_star is None
    assert "sigma(0)" in p.reason and "no root" in p.reason
    with pytest.raises(ValueError, match="no critical point"):
        cr.asymptotic_law(p, 10)


@pytest.mark.parametrize("fn", [jnp.exp, jnp.cosh])
def test_overflowing_activations_have_a_result_not_an_error(fn):
    """exp and cosh: <sigma^4>_K overflows inside the default K_range. The search treats those K as outside
    the range and says so (it raised FloatingPointError though the docstring says "never raises")."""
    p = cr.critical_point(fn)
    assert not p.exists and p.universality_class == "none"
    assert "overflow" in p.reason and "no root" in p.reason
    lo, hi = p.search_range
    assert lo == 0.01 and 10.0 < hi < 100.0 and f"{hi:.6g}" in p.reason
    q = cr.critical_point(fn, K_range=(0.01, 1.0))  # no overflow there: the plain answer
    assert q.search_range == (0.01, 1.0) and "overflow" not in q.reason
    r = cr.critical_point(fn, K_range=(90.0, 100.0))  # overflows everywhere: nothing searched
    assert r.universality_class == "none" and r.search_range is None and "everywhere" in r.reason


def test_exponential_growth_beyond_the_rules_range_is_refused_not_wrong():
    """exp's average at K peaks near z = 2K, beyond the composite rule's 10 standard deviations once K > 25: above
    K_ACCURATE (~123) susceptibilities were silently wrong (chi_par 1.3e73 against 2 e^248 = 1.0e108 at K = 124, and
    below chi_perp), and phase_diagram raised where its kernels diverge; bounded activations keep their values."""
    e = ngp.activation(jnp.exp, name="exp")
    chi_par, chi_perp = cr.susceptibilities(e, 20.0)
    assert abs(chi_par / (2 * math.exp(40.0)) - 1) < 1e-10 and abs(chi_perp / math.exp(40.0) - 1) < 1e-10
    for K in (124.0, 300.0):
        with pytest.raises(FloatingPointError, match="standard deviations"):
            cr.susceptibilities(e, K)
    d = cr.phase_diagram(jnp.exp, C_b=0.0, C_W=1.0, depth=5)
    assert np.all(d.diverged)
    for name in ("tanh", "gelu", "sin"):  # beyond K_ACCURATE: the composite rule, contained
        with np.errstate(over="ignore"):  # the reference's sech^2 = 1/cosh^2 at |z| > 710: 0, as it should be
            rp, rq, _ = _quad_chis(name, 500.0)
        cp, cq = cr.susceptibilities(name, 500.0)
        assert abs(cp - rp) <= 2e-10 * max(abs(rp), 1e-3) and abs(cq - rq) <= 2e-10 * abs(rq)


def test_curvature_of_the_kernel_map_at_small_variances():
    """g'' was <sigma^2 He_4> / (4 K^2), a sum of terms of order K cancelling to order K^2: relative error ~1.5e-16/K
    (1.8e-8 at K = 1e-8), which enters K1. Against tanh's Taylor series g = K - 2K^2 + 17/3 K^3 - 62/3 K^4 +
    1382/15 K^5 (the next term moves g'' by 1.5e-12 at K = 1e-4), read off
    the public flow: K1 at layer 3 = g''(K^(2)) V^(2) / 2 (C_W = 1, K1 = 0 below)."""
    for K0 in (1e-4, 1e-8):
        f = cr.depth_flow("tanh", C_W=1.0, C_b=0.0, K0=K0, depth=3)
        k = f.K[1]
        assert abs(2 * f.K1[2] / f.V[1] - (-4 + 34 * k - 248 * k**2 + 5528 / 3 * k**3)) < 1e-12 * 4
    with pytest.raises(ValueError, match="K0: variance 1e-160 < 1e-150"):
        cr.depth_flow("tanh", C_W=1.0, C_b=0.0, K0=1e-160, depth=3)  # was K1 = nan, silently


def test_critical_point_warns_beyond_the_accurate_range():
    """The docstring promises a warning for K_range beyond K_ACCURATE ~ 123."""
    with pytest.warns(ngp.AccuracyWarning, match="K_range"):
        p = cr.critical_point("sigmoid", K_range=(50.0, 200.0))
    assert p.universality_class == "none"


@pytest.mark.parametrize("power", [2, 3])
def test_monomials_have_no_critical_point(power):
    p = cr.critical_point(lambda x: x**power)
    assert not p.exists and p.universality_class == "none"
    assert "monomial" in p.reason


def test_user_callables_are_classified():
    p = cr.critical_point(lambda x: 2.0 * jnp.tanh(x))
    assert p.universality_class == "K*=0" and abs(p.C_W - 0.25) < 1e-14 and abs(p.a1 + 2) < 1e-12
    from jax.scipy.special import ndtr

    # an Activation object skips ngp.activation's (eager, compile-heavy) callable checks
    q = cr.critical_point(ngp.Activation("my_gelu", lambda x: x * ndtr(x)), K_range=(0.5, 20.0))
    assert q.universality_class == "half-stable" and abs(q.K_star - GELU["K_star"]) < 1e-10
    r = cr.critical_point(lambda x: x + x**3, K_range=(0.1, 10.0))  # sigma(0) = 0 but a1 = 6 > 0
    assert r.universality_class == "none" and "a1" in r.reason


@pytest.mark.parametrize("fn,ap,am", [(lambda x: jnp.maximum(x, 0.0), 1.0, 0.0), (jnp.abs, 1.0, -1.0),
                                       (lambda x: jnp.where(x > 0, x, 0.1 * x), 1.0, 0.1)])
def test_kinked_callables_of_the_relu_family_are_scale_invariant(fn, ap, am):
    """A kinked callable equal to a_+ z Theta(z) + a_- z Theta(-z) was classified "none" with the reason "chi_par(K) =
    chi_perp(K) has no root" (they are equal at every K): now the family's closed-form critical point."""
    p = cr.critical_point(ngp.activation(fn, name="mine", smooth=False))
    A2, A4 = (ap**2 + am**2) / 2, (ap**4 + am**4) / 2
    assert p.exists and p.universality_class == "scale-invariant" and p.C_b == 0.0
    assert abs(p.C_W - 1 / A2) < 1e-14 / A2 and abs(p.vertex_slope - (3 * A4 / A2**2 - 1)) < 1e-12


def test_a_constant_activation_is_said_to_be_constant():
    """An all-zero activation's reason said its Gaussian averages overflow everywhere (chi_par/chi_perp was 0/0)."""
    for fn in (lambda x: 0.0 * x, lambda x: 0.0 * x + 2.0):
        p = cr.critical_point(ngp.activation(fn, name="const"))
        assert not p.exists and "constant" in p.reason and "overflow" not in p.reason


def test_kinked_callable_outside_the_family_is_searched_without_error():
    """A kinked callable off the family (a second kink at z = 1) raised brentq's "f(a) and f(b) must have different
    signs": the grid and the refinement used different rules, whose values differ in sign near a root."""
    p = cr.critical_point(ngp.activation(lambda x: jnp.maximum(x, 0.0) + 0.01 * jnp.maximum(x - 1.0, 0.0),
                                         name="two_kinks", smooth=False))
    assert p.universality_class in ("half-stable", "none") and p.reason


def test_a_callable_reading_a_changed_global_is_not_served_the_old_results():
    """The compilation caches keyed a callable on its code, closure and defaults only: a ``lambda x: jnp.tanh(s * x)``
    over a global ``s`` (a loop in a script) got the first ``s``'s susceptibilities, flow and critical point."""
    ns = {"jnp": jnp}
    exec("f = lambda x: jnp.tanh(s * x)", ns)  # one function object, its global s changed between calls
    for s in (1.0, 2.0, 0.5):
        ns["s"] = s
        chi_par, chi_perp = cr.susceptibilities(ns["f"], 0.5)
        sech2 = lambda z: 1.0 / np.cosh(s * z) ** 2
        assert abs(chi_perp - _gauss(lambda z: (s * sech2(z)) ** 2, 0.5)) < 1e-10 * chi_perp
        assert abs(chi_par - _gauss(lambda z: np.tanh(s * z) * s * sech2(z) * z, 0.5) / 0.5) < 1e-10 * chi_par
        K2 = cr.depth_flow(ns["f"], C_W=1.0, C_b=0.0, K0=1.0, depth=2).K[1]
        assert abs(K2 - _gauss(lambda z: np.tanh(s * z) ** 2, 1.0)) < 1e-10
        p = cr.critical_point(ns["f"])  # tanh(s x): C_W = 1 / s^2, a1 = -2 s^2
        assert abs(p.C_W - 1 / s**2) < 1e-12 and abs(p.a1 + 2 * s**2) < 1e-9
    # a global array rebound, and a global helper reading a rebound global (keyed on the function object, stale)
    exec("def g(x):\n    return jnp.tanh(a * x)\n\ndef inner(x):\n    return jnp.tanh(t * x)\n\n"
         "def h(x):\n    return inner(x)\n", ns)
    for s in (1.0, 2.0):
        ns["a"], ns["t"] = jnp.array(s), s
        want = _gauss(lambda z: (s / np.cosh(s * z) ** 2) ** 2, 1.0)
        for name in ("g", "h"):
            assert abs(cr.susceptibilities(ns[name], 1.0)[1] - want) < 1e-10 * want, (name, s)


# ----------------------------------------------------------------------------- depth laws
@pytest.mark.parametrize("slope,A", [(0.0, 5.0), (1.0, 2.0), (0.1, 4.8823644741)])
def test_scale_invariant_vertex_grows_linearly(slope, A):
    act = ngp.activation("leaky_relu", slope=slope)
    p = cr.critical_point(act)
    flow = cr.depth_flow(act, C_W=p.C_W, C_b=0.0, K0=1.7, depth=60)
    np.testing.assert_allclose(flow.K, 1.7, rtol=1e-14)
    np.testing.assert_allclose(flow.V_over_K2, A * np.arange(60), rtol=1e-10, atol=1e-12)
    assert np.all(flow.K1 == 0)
    law = cr.asymptotic_law(p, 60, K0=1.7)
    np.testing.assert_allclose(flow.V_over_K2, law.V_over_K2, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(law.K, flow.K)


def test_relu_vertex_is_exactly_five_per_layer():
    flow = cr.depth_flow("relu", C_W=2.0, C_b=0.0, K0=0.4, depth=12)
    np.testing.assert_allclose(flow.V_over_K2, 5.0 * np.arange(12), rtol=1e-14, atol=0)


def test_K_star_zero_laws_tanh_match_theory_numbers():
    # THEORY §6: K(-a1) l = 1.160, 1.024, 1.0033, 1.0004 and V/(K^2 l) = 0.552, 0.648, 0.664, 0.6664
    # at l = 10, 1e2, 1e3, 1e4 (tanh at criticality, K^(1) = 1).
    flow = cr.depth_flow("tanh", C_W=1.0, C_b=0.0, K0=1.0, depth=10_000)
    l = np.array([10, 100, 1000, 10_000])
    Kl, v = flow.K[l - 1] * 2 * l, flow.V_over_K2[l - 1] / l
    # printed digits: half a unit of the last printed digit
    assert np.all(np.abs(Kl - [1.160, 1.024, 1.0033, 1.0004]) <= [5e-4, 5e-4, 5e-5, 5e-5])
    assert np.all(np.abs(v - [0.552, 0.648, 0.664, 0.6664]) <= [5e-4, 5e-4, 5e-4, 5e-5])
    assert abs(v[-1] - 2 / 3) < 0.005 and abs(v[-2] - 2 / 3) < 0.005
    law = cr.asymptotic_law(cr.critical_point("tanh"), l)
    np.testing.assert_allclose(flow.K[l - 1][-1], law.K[-1], rtol=1e-3)
    np.testing.assert_allclose(flow.V_over_K2[l - 1][-1], law.V_over_K2[-1], rtol=0.005)
    # chi -> 1 - 2/l and 1 - 1/l (p_perp = 1)
    assert abs(flow.chi_parallel[-1] - (1 - 2 / 10_000)) < 1e-6
    assert abs(flow.chi_perp[-1] - (1 - 1 / 10_000)) < 1e-6


@pytest.mark.parametrize("name", ["erf", "sin"])
def test_K_star_zero_vertex_law_is_universal(name):
    p = cr.critical_point(name)
    flow = cr.depth_flow(name, C_W=p.C_W, C_b=0.0, K0=1.0, depth=10_000)
    assert abs(flow.V_over_K2[-1] / 10_000 - 2 / 3) < 0.005
    assert abs(flow.K[-1] * (-p.a1) * 10_000 - 1) < 1e-3


def test_half_stable_point_is_a_marginal_fixed_point():
    # Only the practical-depth statement is tested (THEORY §6 warns about the 1/l asymptotics).
    p = cr.critical_point("gelu")
    flow = cr.depth_flow("gelu", C_W=p.C_W, C_b=p.C_b, K0=p.K_star, depth=100)
    np.testing.assert_allclose(flow.K, p.K_star, rtol=1e-11)
    law = cr.asymptotic_law(p, 100)
    np.testing.assert_allclose(flow.V_over_K2, law.V_over_K2, rtol=1e-9, atol=1e-12)
    # from the stable side (above, f'' < 0) the kernel creeps towards K* without crossing it
    up = cr.depth_flow("gelu", C_W=p.C_W, C_b=p.C_b, K0=1.5 * p.K_star, depth=200)
    assert np.all(np.diff(up.K) < 0) and up.K[-1] > p.K_star
    assert up.K[-1] > 1.3 * p.K_star  # marginal: it barely moves in 200 layers


@pytest.mark.parametrize("act,C_W,C_b", [("tanh", 1.3, 0.1), ("relu", 2.0, 0.0), ("relu", 1.5, 0.2)])
def test_depth_flow_matches_the_multi_input_recursion(act, C_W, C_b):
    # ngp.MLP(...).prior(X).layers (Jacobian form on the N x N kernel, THEORY §2b/3) with one
    # input and equal widths must reproduce the scalar recursions of depth_flow.
    x = np.array([[0.8, -1.1, 0.3]])
    prior = ngp.MLP(6, 512, activation=act, C_W=C_W, C_b=C_b).prior(x)
    flow = cr.depth_flow(act, C_W=C_W, C_b=C_b, K0=C_b + C_W * float(x[0] @ x[0]) / 3, depth=6)
    layers = prior.layers
    assert [lay.n for lay in layers] == [None] + [512] * 5
    K = np.array([lay.K[0, 0] for lay in layers])
    K1 = np.array([lay.K1[0, 0] for lay in layers])
    V = np.array([lay.V[0, 0, 0, 0] for lay in layers])
    np.testing.assert_allclose(K, flow.K, rtol=1e-12)
    np.testing.assert_allclose(V, flow.V, rtol=1e-10, atol=1e-12 * np.max(V))
    np.testing.assert_allclose(K1, flow.K1, rtol=1e-10, atol=1e-12 * np.max(V))
    np.testing.assert_allclose(V / K**2, flow.V_over_K2, rtol=1e-10, atol=1e-12)


def test_K1_source_matches_a_finite_difference():
    # K1^(3) = (C_W / 2) g''(K^(2)) V^(2): compare g'' with a central difference of g.
    flow = cr.depth_flow("tanh", C_W=1.3, C_b=0.2, K0=0.9, depth=3)
    K2 = flow.K[1]
    g = lambda K: (cr.susceptibilities("tanh", K, C_W=1.0)[0])  # g'(K)
    h = 1e-4
    g2 = (g(K2 + h) - g(K2 - h)) / (2 * h)
    assert abs(flow.K1[2] - 0.5 * 1.3 * g2 * flow.V[1]) < 1e-8


# ----------------------------------------------------------------------------- residual networks
def test_residual_susceptibilities():
    K = np.array([0.3, 1.0, 4.0])
    cp, cq = cr.susceptibilities("tanh", K, C_W=1.4)
    rp, rq = cr.residual_susceptibilities("tanh", K, C_W=1.4, gamma=0.8, xi=0.6)
    np.testing.assert_allclose(rp, 0.64 + 0.36 * cp, rtol=1e-15)
    np.testing.assert_allclose(rq, 0.64 + 0.36 * cq, rtol=1e-15)
    # critical relu block with gamma^2 + xi^2 = 1 is critical
    assert cr.residual_susceptibilities("relu", 3.0, C_W=2.0, gamma=0.6, xi=0.8) == pytest.approx((1.0, 1.0), abs=1e-15)


def test_residual_vertex_growth():
    assert cr.residual_vertex_growth(gamma=0.0, xi=1.0) == 2.0
    for xi2 in (0.1, 0.5, 0.9):
        g2 = 1 - xi2
        got = cr.residual_vertex_growth(gamma=math.sqrt(g2), xi=math.sqrt(xi2))
        assert abs(got - (2 * xi2**2 + 4 * g2 * xi2)) < 1e-15
    with pytest.raises(ValueError, match="gamma, xi"):
        cr.residual_vertex_growth(gamma=0.0, xi=0.0)


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: cr.susceptibilities("tanh", 0.0), "K"),
        (lambda: cr.susceptibilities("tanh", [1.0, -2.0]), "K"),
        (lambda: cr.susceptibilities("swishh", 1.0), "activation"),
        (lambda: cr.susceptibilities("tanh", 1.0, C_W=0.0), "C_W"),
        (lambda: cr.susceptibilities("tanh", 1.0, C_b=-0.1), "C_b"),
        (lambda: cr.depth_flow("tanh", C_W=1.0, C_b=0.0, K0=1.0, depth=0), "depth"),
        (lambda: cr.depth_flow("tanh", C_W=1.0, C_b=0.0, K0=-1.0, depth=3), "K0"),
        (lambda: cr.critical_point("tanh", K_range=(2.0, 1.0)), "K_range"),
        (lambda: cr.residual_susceptibilities("tanh", 1.0, gamma=float("nan"), xi=1.0), "gamma"),
        (lambda: cr.depth_flow("tanh", C_W=1.0, C_b=0.0, K0=[1.0, 2.0], depth=3), "K0: expected a real number"),
        (lambda: cr.phase_diagram("tanh", C_b=0.0, C_W=1.0, K0=[1.0, 2.0], depth=3), "K0: expected a real number"),
        (lambda: cr.asymptotic_law(cr.critical_point("tanh"), "ab"), "depth: expected real numbers"),
        (lambda: cr.asymptotic_law(cr.critical_point("tanh"), [1.0, "x"]), "depth: expected real numbers"),
        (lambda: cr.phase_diagram("tanh", C_b="0.1", C_W=1.0, depth=3), "C_b: expected real numbers"),
    ],
)
def test_bad_arguments(call, match):
    with pytest.raises((ValueError, TypeError), match=match):
        call()
