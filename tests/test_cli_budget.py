"""The time budget of ``ngp regress`` (``ngp.cli._budget`` and its use in ``ngp.cli._regress``; issue 10 item 4,
issue 16): the cost model, the probe, the rows chosen, the finite-width fit's charge.

The end-to-end runs share one array shape (4 training rows, 2 test rows, 2 features), so JAX compiles once per
test session (and the workers share compiled programs on disk).
"""

import argparse
import dataclasses
import math
import time

import numpy as np
import pytest

from ngp.cli import _budget, _parser, main
from ngp.cli._regress import _largest_fitting

from ._cli import real_csv_fixture  # noqa: F401 (the real_csv fixture)


def _model(train_s=1.0, test_s=0.2, compile_s=5.0):
    return _budget.CostModel(_budget.Probe(8, 2, train_s, test_s, compile_s, 0.0))


def test_cost_model_extrapolates_n4_for_training_and_n3_per_test_row():
    m = _model()
    assert math.isclose(m.training(16), 16.0) and math.isclose(m.per_test(16), 0.1 * 8)
    assert math.isclose(m.estimate(16, 10, folds=2), 5.0 + 2 * (16.0 + 10 * 0.8))


def test_cost_model_charges_the_finite_width_fit():
    """With a FitProbe each fold also pays the fit: compile + steps x step seconds x (N / N_p)^4."""
    fit = _budget.FitProbe(4, 0.5, 3.0, 10)
    assert math.isclose(fit.seconds(4), 3.0 + 10 * 0.5) and math.isclose(fit.seconds(8), 3.0 + 5.0 * 16)
    m = dataclasses.replace(_model(), fit=fit)
    assert math.isclose(m.estimate(16, 10, folds=2), 5.0 + 2 * (fit.seconds(16) + 16.0 + 10 * 0.8))
    c = _budget.choose(m, pool=200, n_test=20, budget_s=400.0, cap=64, minimum=8)
    plain = _budget.choose(_model(), pool=200, n_test=20, budget_s=400.0, cap=64, minimum=8)
    assert m.estimate(c.n_train, 20) <= 400.0 < m.estimate(c.n_train + 1, 20) and c.n_train < plain.n_train


def test_probe_step_times_the_second_call():
    calls = []

    def step(n):
        calls.append(n)
        time.sleep(0.3 if len(calls) == 1 else 0.05)

    fp = _budget.probe_step(step, 4, 50)
    assert calls == [4, 4] and (fp.n_train, fp.steps) == (4, 50)
    assert 0.04 <= fp.step_s < 0.2 and 0.2 <= fp.compile_s < 0.3


def test_budget_picks_the_largest_affordable_training_set():
    m = _model()
    budget = 60.0
    c = _budget.choose(m, pool=200, n_test=20, budget_s=budget, cap=64, minimum=8, spent_s=10.0)
    assert c.n_test == 20 and m.estimate(c.n_train, 20) <= budget - 10.0 < m.estimate(c.n_train + 1, 20)
    assert "time budget" in c.reason and f"{c.n_train + 1} rows" in c.reason
    c = _budget.choose(m, pool=30, n_test=2, budget_s=1e9, cap=64, minimum=8)
    assert c.n_train == 30 and "all 30 training-pool rows" in c.reason
    c = _budget.choose(m, pool=300, n_test=2, budget_s=1e9, cap=64, minimum=8)
    assert c.n_train == 64 and "--max-train" in c.reason
    c = _budget.choose(m, pool=300, n_test=2, budget_s=1.0, cap=64, minimum=8)
    assert (c.n_train, c.n_test) == (8, 2) and "more than" in c.reason
    # many test rows: the minimum training set with as many test rows as fit (5 + 1 + 0.1 M <= 10)
    c = _budget.choose(m, pool=300, n_test=100, budget_s=10.0, cap=64, minimum=8)
    assert (c.n_train, c.n_test) == (8, 40) and "40 of the 100 test rows" in c.reason
    c = _budget.choose(m, pool=300, n_test=100, budget_s=7.0, cap=64, minimum=8)
    assert (c.n_train, c.n_test) == (8, 20) and "more than" in c.reason


def test_probe_separates_compilation_from_computation():
    import jax
    import jax.numpy as jnp

    def work(nt, mt, mark):
        jax.jit(lambda x: jnp.sin(x) * nt + mt)(jnp.ones(7)).block_until_ready()  # compiles
        time.sleep(0.05)
        mark()
        time.sleep(0.1)

    p = _budget.probe(work, 8, 2)
    assert p.compile_s > 0 and p.n_train == 8 and p.n_test == 2
    assert p.test_s >= 0.09 and p.train_s >= 0.04
    assert p.wall_s >= p.train_s + p.test_s + p.compile_s - 1e-6


def test_probe_warm_up_is_paid_but_not_timed():
    """The warm-up's compilation counts in ``compile_s`` and its time in ``wall_s``; the timings are
    the timed run's alone (here 0.05 s + 0.1 s against a 0.3 s warm-up)."""
    import jax
    import jax.numpy as jnp

    sizes = []

    def work(nt, mt, mark):
        sizes.append((nt, mt))
        if nt == 4:  # the warm-up: compiles and is slow
            jax.jit(lambda x: jnp.cos(x) * 3.0 + 1.0)(jnp.ones(5)).block_until_ready()
            time.sleep(0.3)
        time.sleep(0.05)
        mark()
        time.sleep(0.1)

    p = _budget.probe(work, 16, 2, warmup=(4, 1))
    assert sizes == [(4, 1), (16, 2)] and (p.n_train, p.n_test) == (16, 2)
    assert p.compile_s > 0
    assert 0.04 <= p.train_s < 0.25 and 0.09 <= p.test_s < 0.25
    assert p.wall_s >= 0.3 + p.train_s + p.test_s


def test_regress_probe_runs_a_warm_up_then_times_the_probe_size(monkeypatch):
    """The CLI's probe warms up on PROBE_WARMUP rows, then times PROBE_TRAIN training rows."""
    from ngp.cli import _regress

    calls = []

    def fake_probe(work, n_train, n_test, *, warmup=None):
        calls.append((n_train, n_test, warmup))
        return _budget.Probe(n_train, n_test, 1.0, 0.1, 0.0, 1.0)

    class Progress:
        def run(self, label, fn):
            return fn(), 0.0

    monkeypatch.setattr(_budget, "probe", fake_probe)
    args = argparse.Namespace(width=[8], noise=0.1, max_memory=None, four_point_order=None, depth=2,
                              activation="tanh", c_w=1.0, c_b=0.0)
    X = np.zeros((30, 2))
    model = _regress._probe(args, X, X[:, :1], X[:1], Progress())
    assert calls == [(_regress.PROBE_TRAIN, 1, (_regress.PROBE_WARMUP[0], 1))]
    assert model.probe.n_train == _regress.PROBE_TRAIN > _regress.PROBE_WARMUP[0]


def test_memory_limit_reduces_the_training_set():
    need = lambda n: 1000 * n**4  # noqa: E731
    n, m = _largest_fitting(64, need, 1000 * 20**4)
    assert n == 20 and m == need(20)
    assert _largest_fitting(10, need, 1e12) == (10, need(10))


def test_regress_budget_path_reports_rows_and_why(real_csv, capsys, monkeypatch):
    """The probe is replaced by a known cost model; the run then uses the rows the budget affords."""
    from ngp.cli import _regress

    monkeypatch.setattr(_regress, "PROBE_TRAIN", 2)
    monkeypatch.setattr(_regress, "MIN_TRAIN", 2)
    model = _budget.CostModel(_budget.Probe(2, 2, 1.0, 0.5, 0.0, 1.0))  # 4 rows: 16 s + 2 x 2 s = 20 s
    monkeypatch.setattr(_regress, "_probe", lambda *a, **k: model)
    rc = main(["regress", real_csv, "--n-test", "2", "--time-budget", "30", "--quiet", "--fixed"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "training rows: 4 of 10 (time budget: 4 rows take an estimated 20 s, 5 rows" in out
    assert "probe: 2 training + 2 test rows" in out and "baseline (training mean)" in out


def test_regress_probe_uses_the_fitted_hyperparameters(real_csv, capsys, monkeypatch):
    """Without --fixed the probe runs with the GP-evidence fit on the pool (the quadrature's cost depends on
    C_W and the noise); when the budget then takes the whole pool, the run reuses that fit (one fit in all)."""
    from ngp.cli import _hyper, _regress

    monkeypatch.setattr(_regress, "PROBE_TRAIN", 2)
    monkeypatch.setattr(_regress, "MIN_TRAIN", 2)
    seen, fitted = [], []

    def probe(args, Xp, yp, Xt, progress, hyper=None):
        seen.append(hyper)
        return _budget.CostModel(_budget.Probe(2, 2, 1e-3, 1e-3, 0.0, 1.0))

    inner = _hyper.fit_hyperparameters

    def counted(*args, **kwargs):
        fitted.append(args[1].shape[0])
        return inner(*args, **kwargs)

    monkeypatch.setattr(_regress, "_probe", probe)
    monkeypatch.setattr(_regress, "fit_hyperparameters", counted)
    rc = main(["regress", real_csv, "--n-test", "2", "--width", "4", "--quiet"])
    out = capsys.readouterr().out
    assert rc == 0
    (hyper,) = seen
    assert hyper is not None and hyper.source == "fitted"
    assert "training rows: 10 of 10 (all 10 training-pool rows fit" in out
    assert fitted == [10] and hyper.describe() in out  # the run's values are the probe's (same rows)


def test_regress_budgets_the_finite_width_fit(real_csv, capsys, monkeypatch):
    """--fit-evidence finite-width: a step of the fit is timed on FIT_PROBE_ROWS rows with the GP fit's values
    (the fit's start), and the rows chosen leave time for FIT_STEPS such steps (the fit is then run, here
    replaced by its start, the GP fit: its cost is not under test). The 10-row pool would be used whole without a probe
    under --fit-evidence gp; here it is probed."""
    from ngp.cli import _hyper, _regress

    monkeypatch.setattr(_regress, "MIN_TRAIN", 2)
    model = _budget.CostModel(_budget.Probe(2, 2, 0.0, 0.0, 0.0, 1.0))  # free: all 10 rows fit without the fit
    monkeypatch.setattr(_regress, "_probe", lambda *a, **k: model)
    seen, fitted = [], []

    def step_work(args, Xp, yp, hyper):
        seen.append((Xp.shape, hyper))
        return lambda n: None

    def probe_step(step, n, steps):
        step(n)
        return _budget.FitProbe(n, 1.0, 0.0, steps)  # a step on 4 rows takes 1 s

    inner = _hyper.fit_hyperparameters

    def fit(*args, finite_width, **kwargs):
        fitted.append((args[1].shape[0], finite_width))
        return seen[0][1] if finite_width else inner(*args, finite_width=False, **kwargs)

    monkeypatch.setattr(_regress, "fit_step_work", step_work)
    monkeypatch.setattr(_budget, "probe_step", probe_step)
    monkeypatch.setattr(_regress, "fit_hyperparameters", fit)
    rc = main(["regress", real_csv, "--n-test", "2", "--width", "4", "--fit-evidence", "finite-width",
               "--time-budget", "120", "--quiet"])
    out = capsys.readouterr().out
    assert rc == 0
    ((shape, hyper),) = seen
    assert shape[0] == 10 and hyper.source == "fitted"  # the GP fit of the pool, the finite-width fit's start
    # FIT_STEPS steps of 1 s x (N / 4)^4: 4 rows 50 s, 5 rows 122 s (the GP fit spends a few of the 120 s)
    assert _regress.FIT_STEPS == 50
    assert "training rows: 4 of 10 (time budget: 4 rows take an estimated 50 s, 5 rows 122 s" in out, out
    assert fitted == [(10, False), (4, True)]
    assert "a step of the finite-width evidence fit on 4 rows took 1.0 s" in out
    # --n-train: no budget, but the fit's estimate is printed before it starts
    fitted.clear()
    rc = main(["regress", real_csv, "--n-test", "2", "--width", "4", "--fit-evidence", "finite-width",
               "--n-train", "8", "--quiet"])
    out = capsys.readouterr().out
    assert rc == 0 and fitted == [(10, False), (8, True)] and "training rows: 8 of 10 (--n-train)" in out
    assert "took 1.0 s (0 s compiling before); a fit is charged 50 steps ~ N_train^4; at 8 rows about 800 s" in out


def test_fit_step_work_is_a_step_of_the_finite_width_fit():
    """The timed step is the finite-width evidence at the given hyperparameters and its gradient in their logs
    (checked against ngp.log_evidence and central differences; a linear network keeps it fast)."""
    import ngp
    from ngp.cli import _hyper, _regress

    args = _parser().parse_args(["regress", "x.csv", "--activation", "linear", "--width", "8", "--depth", "2"])
    X = np.random.default_rng(0).normal(size=(6, 2))
    y = X[:, :1] - 0.5 * X[:, 1:]
    hyper = _hyper.Hyperparameters(1.3, 0.2, 0.4, "fitted", "")
    step = _regress.fit_step_work(args, X, y, hyper)
    grad, value = step(3)

    def evidence(t):
        net = ngp.MLP(2, 8, activation="linear", C_W=math.exp(t[0]), C_b=math.exp(t[1]))
        return float(ngp.log_evidence(net, X[:3], y[:3], noise=math.exp(t[2])))

    t0 = np.log([1.3, 0.2, 0.4])
    assert float(value) == pytest.approx(evidence(t0), rel=1e-10)
    h = 1e-5
    fd = [(evidence(t0 + h * e) - evidence(t0 - h * e)) / (2 * h) for e in np.eye(3)]
    np.testing.assert_allclose(np.asarray(grad), fd, rtol=1e-6, atol=1e-8)
    fp = _budget.probe_step(step, 3, 7)
    assert fp.n_train == 3 and fp.steps == 7 and fp.step_s > 0
