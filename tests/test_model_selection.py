import pytest

import ngp
from ngp.datasets import synthetic_1d


def test_evidence_grid_matches_posterior_and_picks_best():
    X, y = synthetic_1d(6, seed=1)
    y = 0.5 * y
    grid = ngp.evidence_grid(X, y, widths=[16, 64], depths=[1, 2, 3], C_W=[1.0, 1.5], noise=0.05)
    assert len(grid.rows) == 2 * 3 * 2
    for r in grid.rows:
        net = ngp.MLP(r["depth"], r["width"], activation="tanh", C_W=r["C_W"], C_b=r["C_b"])
        post = ngp.posterior(net, X, y, X[:1], noise=0.05, warn=False)
        assert r["log_evidence"] == pytest.approx(post.log_evidence, rel=1e-10, abs=1e-10)
        assert r["log_evidence_gp"] == pytest.approx(post.gp.log_evidence, rel=1e-10)
    best = grid.best()
    trusted = [r for r in grid.rows if r["expansion_parameter"] <= 0.3
               and abs(r["log_evidence"] - r["log_evidence_gp"]) <= 2]
    assert best["log_evidence"] == max(r["log_evidence"] for r in trusted)
    assert "logZ (1/n)" in grid.table()


def test_evidence_grid_bad_input():
    X, y = synthetic_1d(4)
    with pytest.raises(ValueError, match="noise"):
        ngp.evidence_grid(X, y, widths=[8], depths=[2], noise=-1)
    with pytest.raises(ValueError, match="widths"):
        ngp.evidence_grid(X, y, widths=[], depths=[2], noise=0.1)
    with pytest.raises(TypeError, match="^Y_train: expected a real numeric array"):
        ngp.evidence_grid(X, "abc", widths=[4], depths=[2], noise=0.1)
    with pytest.raises(ValueError, match="^Y_train: expected shape"):
        ngp.evidence_grid(X, y[:3], widths=[4], depths=[2], noise=0.1)
