"""``ngp regress`` as a new user meets it (``ngp.cli._regress``, ``_compare``, ``_hyper``; issue 16, issue 15
item 6): the seeded split, overflow-safe scaling, the table, folds, fitted hyperparameters, end to end.

The end-to-end runs share one array shape (4 training rows, 2 test rows, 2 features), so JAX compiles once per
test session (and the workers share compiled programs on disk).
"""

import argparse
import json
import math

import numpy as np
import pytest

from ngp.cli import main
from ngp.cli._common import CLIError, table
from ngp.cli._compare import ESS_MIN, Row, cells, notes
from ngp.cli._csv import read_table
from ngp.cli._regress import _aggregate, _splits, check_extreme
from ngp.datasets import standardize

from ._cli import real_csv_fixture  # noqa: F401 (the real_csv fixture)


def test_split_is_fixed_by_the_seed_and_independent_of_n_train():
    a = argparse.Namespace(seed=3, folds=None, test_fraction=0.2, n_train=None)
    b = argparse.Namespace(seed=3, folds=None, test_fraction=0.2, n_train=10)
    (pa, ta), (pb, tb) = _splits(50, a)[0], _splits(50, b)[0]
    assert np.array_equal(ta, tb) and np.array_equal(pa, pb) and len(ta) == 10
    assert sorted(np.concatenate([pa, ta]).tolist()) == list(range(50))
    folds = _splits(23, argparse.Namespace(seed=0, folds=4, test_fraction=0.2))
    tests = np.concatenate([t for _, t in folds])
    assert sorted(tests.tolist()) == list(range(23))
    for pool, test in folds:
        assert not set(pool) & set(test) and len(pool) + len(test) == 23


def test_standardize_is_overflow_safe():
    X = np.array([[1e300, 1.0], [-2e300, 1.0], [3e300, 1.0]])
    Z, Zo, (mu, sd) = standardize(X, np.array([[0.0, 2.0]]))
    assert np.all(np.isfinite(Z)) and np.allclose(Z.mean(axis=0), 0) and np.allclose(Z[:, 0].std(), 1)
    assert np.allclose(Z[:, 1], 0) and np.allclose(Zo[0, 1], 1.0) and np.all(np.isfinite(mu * 0 + sd))
    assert np.allclose((X - mu) / sd, Z)


def test_extreme_test_input_is_refused_with_its_column_and_line():
    with pytest.raises(CLIError, match=r"column 'b' on line 7 lies 1e\+300"):
        check_extreme(np.array([[0.1, 0.2], [0.3, 1e300]]), np.array([5, 7]), ("a", "b"))
    check_extreme(np.array([[0.1, 30.0]]), np.array([2]), ("a", "b"))


def test_unreliable_reference_and_expansion_are_marked_in_the_table():
    row = Row("finite width n=2", rmse=1.0, loglik=-1.0, log_evidence=-3.0, expansion=0.8, truth_gap=0.178,
              truth_se=0.07, truth_ess=5.0, gp_truth_gap=0.2)
    c = cells(row, truth=True)
    assert c["|mean-IS|"] == "unreliable (ESS 5)" and c["1/n size"].endswith("(!)")
    row.truth_ess, row.expansion = 5 * ESS_MIN, 0.01
    c = cells(row, truth=True)
    assert c["|mean-IS|"] == "0.18 ± 0.07" and "(!)" not in c["1/n size"]
    row.flags = ["unreliable: 1/n expansion parameter 0.8 > 0.3"]
    lines = notes([row], ["ngp: the 1/n expansion parameter max|V|/(n K^2) = 0.8 exceeds 0.3", "other"], 2.0)
    assert any("share one computation" in ln for ln in lines)
    assert sum("expansion parameter" in ln for ln in lines) == 1 and "warning: other" in lines


def test_folds_are_summarised_as_mean_and_standard_error():
    folds = [[Row("GP", rmse=r, loglik=-r, log_evidence=None, expansion=e, time_s=1.0)]
             for r, e in ((1.0, 0.1), (3.0, 0.5))]
    (c,) = _aggregate(folds, truth=False)
    assert c["test RMSE"] == "2 ± 1" and c["log evidence"] == "-" and c["1/n size"] == "0.5 (!)"
    assert c["time [s]"] == "2.0"
    assert table([c], ["model", "test RMSE"]).splitlines()[2].startswith("GP")


def test_regress_end_to_end(real_csv, tmp_path, capsys):
    out_json = tmp_path / "res.json"
    rc = main(["regress", real_csv, "--n-train", "4", "--n-test", "2", "--width", "1", "--truth", "50",
               "--json", str(out_json), "--quiet", "--fixed"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert "14 rows read, 12 complete" in out and "2 of 14 rows dropped" in out and "row labels" in out
    assert "training rows: 4 of 10 (--n-train)" in out
    assert "hyperparameters: C_W=1, C_b=0, noise=0.1 (given values (--fixed))" in out
    for name in ("baseline (training mean)", "GP (infinite width)", "finite width n=1"):
        assert name in out
    assert "nan" not in out.lower().replace("nats", "")
    assert "(!)" in out and "finite width n=1: unreliable: 1/n expansion parameter" in out  # --width 1
    assert "unreliable (ESS" in out  # 50 draws: the effective sample size is below 100
    res = json.loads(out_json.read_text())
    (split,) = res["splits"]
    rows = {r["model"]: r for r in split["rows"]}
    assert res["n_train"] == 4 and len(split["train_lines"]) == 4 and len(split["test_lines"]) == 2
    assert all(math.isfinite(r["rmse"]) and r["rmse"] > 1e250 for r in rows.values())  # in the target's units
    assert rows["finite width n=1"]["truth_ess"] < ESS_MIN
    # the test rows are the seeded split's, whatever the number of training rows
    lines = np.array([ln for ln in range(2, 16) if ln not in (14, 15)])
    ((_, test),) = _splits(12, argparse.Namespace(seed=0, folds=None, test_fraction=0.2))
    assert split["test_lines"] == lines[test[:2]].tolist()


def test_regress_folds_end_to_end(real_csv, tmp_path, capsys):
    """--folds 3: each fold's pool (the other folds' rows) sets its scaling and hyperparameters, its posterior uses
    the pool's first --n-train rows, and the table shows mean ± standard error over the folds."""
    out_json = tmp_path / "res.json"
    rc = main(["regress", real_csv, "--folds", "3", "--n-train", "4", "--n-test", "2", "--width", "4", "--fixed",
               "--json", str(out_json), "--quiet"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    res = json.loads(out_json.read_text())
    splits = res["splits"]
    assert [s["fold"] for s in splits] == [1, 2, 3]
    for k, model in enumerate(r["model"] for r in splits[0]["rows"]):  # mean ± standard error, in units of 1e300
        v = np.array([s["rows"][k]["rmse"] for s in splits]) / 1e300
        want = f"{format(1e300 * v.mean(), '.4g')} ± {format(1e300 * v.std(ddof=1) / math.sqrt(3), '.2g')}"
        assert res["table"][k]["test RMSE"] == want, model
    lines = set(range(2, 16)) - {14, 15}  # the 12 complete rows' line numbers
    for s in splits:
        assert len(s["fit_lines"]) == 8 and s["train_lines"] == s["fit_lines"][:4] and len(s["test_lines"]) == 2
        assert not set(s["fit_lines"]) & set(s["test_lines"]) and set(s["fit_lines"]) | set(s["test_lines"]) <= lines
    pools = [set(s["fit_lines"]) for s in splits]
    assert all(len(a & b) == 4 for i, a in enumerate(pools) for b in pools[i + 1:])  # 3 folds of 4 rows
    assert "3-fold cross-validation" in out and "±" in out
    assert "± inf" not in out and "± nan" not in out  # targets of order 1e300: no overflow in the spread


def test_regress_fits_hyperparameters_by_default(real_csv, tmp_path, capsys):
    """Without --fixed the CLI prints the ML-II values: those of ngp.fit_hyperparameters on the training pool
    (its first --max-train rows, standardised by them), whose GP evidence beats the given values'; the
    table's GP evidence is that of the rows the posterior uses, at the fitted values."""
    import ngp
    from ngp.cli import _hyper

    out_json = tmp_path / "res.json"
    rc = main(["regress", real_csv, "--n-train", "4", "--n-test", "2", "--width", "8", "--json", str(out_json),
               "--quiet"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    res = json.loads(out_json.read_text())
    (split,) = res["splits"]
    hyper = split["hyperparameters"]
    assert hyper["source"] == "fitted" and "fitted: maximum of the GP evidence of 10 training-pool rows" in out
    assert f"hyperparameters: C_W={hyper['C_W']:.4g}, C_b={hyper['C_b']:.4g}, noise={hyper['noise']:.4g}" in out
    data = read_table(real_csv)
    lines = list(data.lines)
    pool = [lines.index(ln) for ln in split["fit_lines"]]
    assert len(pool) == 10 and split["fit_lines"][:4] == split["train_lines"]
    Xf = standardize(data.X[pool])[0]
    yf = standardize(data.y[pool, None])[0]
    net = ngp.MLP(3, 8, activation="tanh", C_W=1.0, C_b=0.0)
    fit = ngp.fit_hyperparameters(net, Xf, yf, noise=0.1, finite_width=False, num_starts=_hyper.NUM_STARTS,
                                  seed=0, max_iter=_hyper.MAX_ITER)
    np.testing.assert_allclose([hyper["C_W"], hyper["C_b"], hyper["noise"]], [fit.C_W[0], fit.C_b[0], fit.noise],
                               rtol=1e-8)
    given = float(ngp.log_evidence(net, Xf, yf, noise=0.1, finite_width=False))
    assert hyper["log_evidence"] >= given
    fitted = ngp.MLP(3, 8, activation="tanh", C_W=hyper["C_W"], C_b=hyper["C_b"])
    used = float(ngp.log_evidence(fitted, Xf[:4], yf[:4], noise=hyper["noise"], finite_width=False))
    gp_row = next(r for r in split["rows"] if r["model"].startswith("GP"))
    assert gp_row["log_evidence"] == pytest.approx(used, rel=1e-6)


def test_regress_hyperparameters_and_scaling_do_not_depend_on_n_train(real_csv, tmp_path, capsys):
    """Two runs that differ only in --n-train fit the same hyperparameters on the same pool rows, and their
    baseline row (the training rows' mean and variance, in the target's units) is computed from the raw CSV."""
    runs = {}
    for n in (2, 4):
        out_json = tmp_path / f"res{n}.json"
        assert main(["regress", real_csv, "--n-train", str(n), "--n-test", "2", "--width", "8", "--json",
                     str(out_json), "--quiet"]) == 0
        runs[n] = json.loads(out_json.read_text())["splits"][0]
    capsys.readouterr()
    assert runs[2]["hyperparameters"] == runs[4]["hyperparameters"]
    assert runs[2]["fit_lines"] == runs[4]["fit_lines"] and runs[2]["test_lines"] == runs[4]["test_lines"]
    data = read_table(real_csv)
    lines = list(data.lines)
    unit = 1e300  # the fixture's scale: the formulas below would overflow in the CSV's own units
    for n, split in runs.items():
        y_tr = data.y[[lines.index(ln) for ln in split["train_lines"]]] / unit
        y_te = data.y[[lines.index(ln) for ln in split["test_lines"]]] / unit
        base = next(r for r in split["rows"] if r["model"].startswith("baseline"))
        assert len(y_tr) == n
        assert base["rmse"] / unit == pytest.approx(np.sqrt(np.mean((y_te - y_tr.mean()) ** 2)), rel=1e-10)
        var = y_tr.var()
        loglik = np.mean(-0.5 * np.log(2 * np.pi * var) - 0.5 * (y_te - y_tr.mean()) ** 2 / var) - np.log(unit)
        assert base["loglik"] == pytest.approx(loglik, rel=1e-10)
