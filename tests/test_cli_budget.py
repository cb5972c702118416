"""The time budget of ``ngp regress`` (``ngp.cli._budget`` and its use in ``ngp.cli._regress``; issue 10 item 4,
issue 16): the cost model, the probe, the rows chosen, the finite-width fit's charge, without a finite-width
computation. The budget's end-to-end runs are in test_cli_regress.py, with the others: one module holds every
compile-heavy CLI run, so one worker compiles their shared shapes and the conftest releases them once.
"""

import dataclasses
import math
import time

from ngp.cli import _budget
from ngp.cli._regress import _largest_fitting


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


def test_memory_limit_reduces_the_training_set():
    need = lambda n: 1000 * n**4  # noqa: E731
    n, m = _largest_fitting(64, need, 1000 * 20**4)
    assert n == 20 and m == need(20)
    assert _largest_fitting(10, need, 1e12) == (10, need(10))
