import warnings

import numpy as np
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


def test_evidence_grid_uses_the_matrix_free_paths_own_verdict():
    # On the matrix-free path (the default above 64 training rows) the grid judged rows by the exact path's rule
    # alone (eps <= 0.3, correction <= 1 nat): here width 1600 has eps 0.001 and a correction of 0.5 nat, but
    # eta = Var[log p(y | network)] ~1.2 > 1, which condition(...).validity refuses; the grid called it trusted and
    # best() returned it. Its rows also lacked the Monte-Carlo standard error of the evidence.
    rng = np.random.default_rng(3)
    X = rng.normal(size=(8, 1))
    Y = np.sin(2 * X)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warn=False silences the matrix-free path's regime warnings too
        grid = ngp.evidence_grid(X, Y, widths=[1600], depths=[2], noise=0.001, method="matrix_free", samples=256,
                                 warn=False)
    (row,) = grid.rows
    cond = ngp.condition(ngp.MLP(2, 1600), X, Y, noise=0.001, method="matrix_free", samples=256, warn=False)
    assert row["log_evidence"] == cond.log_evidence and row["log_evidence_se"] == cond.log_evidence_se > 0
    assert row["expansion_parameter"] <= 0.3 and row["evidence_correction"] <= 1.0  # the exact path's rule passes
    assert row["eta"] == cond.validity.eta > 1.0 and not cond.validity.trusted
    assert not row["trusted"]
    with pytest.raises(ValueError, match="no grid point has a trustworthy"):
        grid.best()
    head = grid.table().splitlines()[0].split()
    assert "+-" in head and "eta" in head and "corr" in head
    # 8 rows: the exact path, which since stop 93 judges eta too (computed exactly from V): it was trusted here
    with pytest.warns(ngp.ExpansionWarning, match="1 of 1 grid points"):
        exact = ngp.evidence_grid(X, Y, widths=[1600], depths=[2], noise=0.001)
    (ex,) = exact.rows
    assert ex["log_evidence_se"] == 0.0 and ex["eta"] > 1.0 and not ex["trusted"]
    # the matrix-free estimate of eta agrees with the exact value within its Monte-Carlo error
    assert abs(row["eta"] - ex["eta"]) < 4 * cond.validity.eta_se, (row["eta"], ex["eta"], cond.validity.eta_se)


def test_evidence_grid_table_and_best_on_extreme_rows():
    # columns as wide as their entries (a width of 10**12 broke the layout); best() on rows that are all NaN said
    # "no trustworthy expansion" where no evidence is finite
    X = np.linspace(-1, 1, 4)[:, None]
    Y = 30 * np.sin(3 * X)
    grid = ngp.evidence_grid(X, Y, widths=[1, 10**12], depths=[4], activation="relu", C_W=2.0, noise=1e-8,
                             warn=False)
    lines = grid.table().splitlines()
    assert len({len(line) for line in lines}) == 1  # every line as long as the header
    nan = ngp.EvidenceGrid(tuple(dict(r, log_evidence=float("nan")) for r in grid.rows))
    with pytest.raises(ValueError, match="no grid point has a finite log evidence"):
        nan.best(trusted_only=False)
