"""The ``progress`` option (ngp/_progress.py): what is reported while the four-point values are computed."""

from __future__ import annotations

import sys
from math import comb

import numpy as np
import pytest

import ngp


@pytest.fixture
def inputs():
    return np.random.default_rng(0).normal(size=(9, 3))


def _recorder():
    calls = []
    return calls, lambda done, total, desc: calls.append((done, total, desc))


def _tasks(calls) -> dict:
    """``{desc: [(done, total), ...]}`` in the order reported (one desc may start several tasks)."""
    out = {}
    for done, total, desc in calls:
        out.setdefault(desc, []).append((done, total))
    return out


def test_callable_sees_every_new_multiset_of_every_layer(inputs):
    N = inputs.shape[0]
    net = ngp.MLP(3, 16, activation="tanh")
    calls, report = _recorder()
    V = net.prior(inputs, progress=report).V
    tasks = _tasks(calls)
    assert sorted(tasks) == [f"layer {k}: four-point values ({N} inputs)" for k in (2, 3)]
    for steps in tasks.values():
        starts = [i for i, (done, _) in enumerate(steps) if done == 0]
        assert starts[0] == 0
        computed = 0
        for a, b in zip(starts, starts[1:] + [len(steps)]):  # each task: from 0 up to its total, never down
            done = [d for d, _ in steps[a:b]]
            total = steps[a][1]
            assert done == sorted(done) and done[-1] == total and all(t == total for _, t in steps[a:b])
            computed += total
        assert computed == comb(N + 3, 4)  # every multiset of the layer's table, each once
    np.testing.assert_array_equal(V, net.prior(inputs).V)  # reporting changes nothing


def test_large_tables_report_in_about_sixteen_batches(inputs, monkeypatch):
    from ngp import _finite

    monkeypatch.setattr(_finite, "PROGRESS_CHUNK", 16)  # a table of T new multisets: batches of ceil(T / 16)
    net = ngp.MLP(2, 16, activation="tanh")
    calls, report = _recorder()
    V = net.prior(inputs, progress=report).V
    T = max(t for _, t, _ in calls)  # the largest task: V's multisets after K1's
    assert T > 16 * 16
    done = [d for d, t, _ in calls if t == T]
    assert len(done) == 1 + -(-T // -(-T // 16)) and done[0] == 0 and done[-1] == T  # the start and each batch
    np.testing.assert_allclose(V, net.prior(inputs).V, rtol=1e-12, atol=1e-15)  # batches change rounding only


def test_true_without_tqdm_prints_lines(inputs, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)  # import fails: the plain display
    ngp.MLP(2, 16, activation="tanh").prior(inputs, progress=True).V
    err = capsys.readouterr().err
    assert f"[ngp] layer 2: four-point values ({inputs.shape[0]} inputs): started" in err
    assert "multisets in" in err


def test_true_with_tqdm_shows_a_bar(inputs, capsys):
    pytest.importorskip("tqdm")
    ngp.MLP(2, 16, activation="tanh").prior(inputs, progress=True).V
    assert "layer 2: four-point values" in capsys.readouterr().err


def test_reports_through_condition_predict_and_residual_priors(inputs):
    y = np.sin(inputs[:, :1])
    calls, report = _recorder()
    c = ngp.condition(ngp.MLP(2, 16, activation="tanh"), inputs[:6], y[:6], noise=0.1, progress=report)
    c.predict(inputs[6:])
    assert calls and all(d <= t for d, t, _ in calls)
    calls.clear()
    ngp.ResMLP(2, 16, activation="tanh").prior(inputs[:5], progress=report).V
    assert calls and calls[-1][0] == calls[-1][1]


@pytest.mark.parametrize("bad", ["yes", 1, 0.5])
def test_bad_value_names_the_option(inputs, bad):
    with pytest.raises(TypeError, match="progress: expected"):
        ngp.MLP(2, 16).prior(inputs, progress=bad)
