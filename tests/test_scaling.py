"""Width-scaling family (ngp.scaling): multipliers, predicted exponents, and a short coordinate check
on actual networks (benchmarks/scaling_validation.py runs the full one with +-0.15 tolerances)."""

import numpy as np
import pytest

import ngp
from ngp import _ntk, scaling


def test_presets_and_family_endpoints():
    for name, s in (("ntk", 0.0), ("mup", 1.0)):
        pre, fam = scaling.parameterization(name), scaling.family(s)
        for f in ("C_W", "C_b", "lam_W", "lam_b"):
            assert getattr(pre, f) == getattr(fam, f)
    assert scaling.parameterization(0.25) == scaling.family(0.25)
    with pytest.raises(ValueError):
        scaling.family(1.5)
    with pytest.raises(ValueError):
        scaling.parameterization("nope")
    with pytest.raises(ValueError):
        scaling.Parameterization("bad", C_W=(0, 1, 0))


def test_multipliers():
    m = scaling.multipliers("mup", width=256, depth=4, base_width=64, C_W=2.0, lam_W=1.0, lam_b=0.5, C_b=0.1)
    assert m["C_W"] == (2.0, 2.0, 2.0, 0.5)
    assert m["C_b"] == (0.1, 0.1, 0.1, 0.025)
    assert m["lam_W"] == (4.0, 4.0, 4.0, 1.0)
    assert m["lam_b"] == (2.0, 2.0, 2.0, 0.5)
    s = scaling.multipliers("standard", width=8, depth=3)
    assert s["lam_W"] == (1.0, 8.0, 8.0) and s["C_W"] == (1.0, 1.0, 1.0)
    assert scaling.multipliers("ntk", width=1000, depth=2, C_W=1.3)["C_W"] == (1.3, 1.3)


@pytest.mark.parametrize(
    "spec, regime, ntk, change, feat",
    [
        ("ntk", "kernel (NTK frozen)", 0.0, -1.0, -0.5),
        (0.5, "kernel (NTK frozen)", 0.0, -0.5, -0.25),
        ("mup", "feature learning", 0.0, 0.0, 0.0),
        ("standard", "unstable", 1.0, 1.0, 0.5),
    ],
)
def test_predicted_exponents(spec, regime, ntk, change, feat):
    p = scaling.predicted_exponents(spec, depth=4)
    assert p.regime == regime
    assert p.ntk == pytest.approx(ntk) and p.ntk_change == pytest.approx(change)
    assert p.features[-1] == pytest.approx(feat) and len(p.features) == 3
    assert p.ntk_fluctuation == pytest.approx(ntk - 0.5)


@pytest.mark.parametrize("spec", ["ntk", 0.5, "mup", "standard"])
def test_theory_recursions_scale_as_predicted(spec):
    """The NTK recursions (docs/theory.md) with the width-dependent multipliers reproduce the power
    counting: Theta ~ n^ntk and the NTK standard deviation sqrt((A + 2B)/n) ~ n^ntk_fluctuation."""
    X = np.array([[1.0, 0.3, -0.5], [0.2, -1.0, 0.4]])
    act = ngp.activation("tanh")
    p = scaling.predicted_exponents(spec, depth=3)
    widths = (256, 1024)
    th, sd = [], []
    for n in widths:
        hp = scaling.multipliers(spec, width=n, depth=3, C_W=1.0, C_b=0.1, lam_W=1.0, lam_b=1.0)
        st = _ntk.flow(X, act, depth=3, widths=n, **hp)[-1]
        th.append(np.abs(st.Theta).max())
        sd.append(np.sqrt(np.abs(st.ntk_variance()).max() / n))
    slope = lambda v: np.log(v[1] / v[0]) / np.log(widths[1] / widths[0])
    assert slope(th) == pytest.approx(p.ntk, abs=0.05)
    assert slope(sd) == pytest.approx(p.ntk_fluctuation, abs=0.05)


def test_coordinate_check_short():
    """Actual tanh networks, widths 64 and 256, 2 steps: muP learns features (exponents 0), ntk does not
    (features ~ n^-1/2, NTK change ~ n^-1). Small widths and 2 seeds: tolerance 0.2 on the NTK,
    output and feature exponents, and muP's NTK change (O(1)-noisy at these widths) only has to be
    clearly above ntk's; the benchmark checks all of them within +-0.15 at widths 256..2048."""
    common = dict(widths=(64, 256), depth=2, steps=2, seeds=2)
    mup = scaling.coordinate_check("mup", **common)
    ntk = scaling.coordinate_check("ntk", **common)
    for cc in (mup, ntk):
        dev = cc.deviations()
        assert abs(dev["ntk"]) < 0.1 and abs(dev["output_change"]) < 0.2, dev
        assert all(abs(d) < 0.2 for d in dev["features"]), dev
    assert abs(ntk.deviations()["ntk_change"]) < 0.25
    assert mup.fitted["ntk_change"] > ntk.fitted["ntk_change"] + 0.3
    assert mup.fitted["features"][0] > ntk.fitted["features"][0] + 0.3
    for cc in (mup, ntk):
        assert cc.seeds == 2 and cc.ntk_change.shape == (2,)
        errs = [cc.stderr["ntk"], cc.stderr["ntk_change"], cc.stderr["output_change"], *cc.stderr["features"]]
        assert all(np.isfinite(e) and e > 0 for e in errs), cc.stderr


def test_slope_standard_error_is_calibrated():
    """The fitted exponent's standard error (seed spread, delta method) matches the actual scatter of
    the fitted exponent over independent synthetic data sets: power law n^-1 times positive noise with
    a 35% seed-to-seed spread (like the per-network NTK change), 16 seeds at 4 widths."""
    rng = np.random.default_rng(7)
    widths = (128, 256, 512, 1024)
    k = 8.0  # gamma shape: coefficient of variation 1/sqrt(8) = 0.35
    fits = [scaling._slope(widths, np.array(widths, float)[:, None] ** -1.0 * rng.gamma(k, 1 / k, (4, 16)))
            for _ in range(2000)]
    slope, se = np.array(fits).T
    assert abs(slope.mean() + 1.0) < 4 * slope.std() / np.sqrt(len(slope))
    assert np.median(se) == pytest.approx(slope.std(), rel=0.1)  # s.e. of the sd over 2000 fits: 1.6%


def test_multipliers_unequal_widths():
    m = scaling.multipliers("mup", width=[100, 400, 50], depth=4, lam_W=1.0, C_W=1.0)
    assert m["lam_W"] == (100.0, 100.0, 400.0, 1.0)  # input: fan-out; hidden: fan-in
    assert m["C_W"] == (1.0, 1.0, 1.0, 1.0 / 50)


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        (dict(lr=float("nan")), ValueError, "lr: must be finite"),
        (dict(lr=0.0), ValueError, "lr: must be > 0"),
        (dict(X=np.full((3, 2), np.nan)), ValueError, "X: contains non-finite"),
        (dict(X=np.ones((3, 2)), y=np.ones(4)), ValueError, r"y: expected shape \(3, 1\)"),
        (dict(y=np.full(8, np.inf)), ValueError, "y: contains non-finite"),
        (dict(widths=[8, 8]), ValueError, "widths: need at least two different"),
        (dict(widths=[8, 16, 16]), ValueError, "widths: each width once"),  # counted twice in the fit before
        (dict(widths=[8, 16.0]), TypeError, r"widths\[1\]"),
        (dict(steps=0), ValueError, "steps"),
        (dict(seeds=1.5), TypeError, "seeds"),
        (dict(seeds=1), ValueError, r"seeds: must be >= 2"),  # one seed: every standard error NaN, silently
        (dict(depth=1), ValueError, "depth"),
    ],
)
def test_coordinate_check_rejects_bad_arguments(kwargs, error, match):
    """A nan learning rate or nan inputs gave nan exponents silently; a short y a raw JAX shape error."""
    args = dict(widths=[8, 16], depth=2, seeds=2, steps=1) | kwargs
    with pytest.raises(error, match=match):
        scaling.coordinate_check("ntk", **args)


def test_coordinate_check_warns_on_nan_exponents():
    """Zero learning-rate factors: nothing changes, log(0) has no slope: nan exponents with a warning."""
    with pytest.warns(ngp.ConvergenceWarning, match="output_change"):
        cc = scaling.coordinate_check("ntk", widths=[4, 8], depth=2, seeds=2, steps=1, lam_W=0.0, lam_b=0.0)
    assert np.isnan(cc.fitted["output_change"]) and np.isnan(cc.stderr["output_change"])


@pytest.mark.parametrize(
    "kwargs,error,match",
    [
        (dict(C_W=-1.0), ValueError, "C_W: must be > 0"),
        (dict(C_W=[1.0, 0.0, 1.0]), ValueError, r"C_W\[1\]: must be > 0"),
        (dict(C_b=-0.1), ValueError, "C_b: must be >= 0"),
        (dict(lam_W=-1.0), ValueError, "lam_W: must be >= 0"),
        (dict(lam_b=float("nan")), ValueError, "lam_b: must be finite"),
        (dict(width=0), ValueError, "width: must be > 0"),
        (dict(base_width=-2.0), ValueError, "base_width: must be > 0"),
        (dict(depth=3.0), TypeError, "depth"),
        (dict(depth=1), ValueError, "depth"),
    ],
)
def test_multipliers_reject_bad_values(kwargs, error, match):
    """A negative C_W came back scaled, (-1, -1, -1/64), instead of an error."""
    with pytest.raises(error, match=match):
        scaling.multipliers("mup", **(dict(width=64, depth=3) | kwargs))


def test_family_rejects_non_numbers():
    with pytest.raises(TypeError, match="s: expected a real number"):
        scaling.family("a")
    with pytest.raises(ValueError, match="s: must be finite"):
        scaling.family(float("nan"))


@pytest.mark.parametrize("value", [3, float("nan"), -0.5])
def test_a_bad_parameterization_number_names_parameterization(value):
    """MLP(2, 16, parameterization=3) said "family: s must be in [0, 1]" (and NaN "s: must be finite"): the user
    gave parameterization, not s."""
    with pytest.raises(ValueError, match=r"parameterization: a number s must be in \[0, 1\]"):
        ngp.MLP(2, 16, parameterization=value)
