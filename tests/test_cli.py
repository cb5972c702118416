"""The ngp command line end to end (reduced sizes)."""

import json

import numpy as np
import pytest

from ngp.cli import main


@pytest.mark.validation  # the README's demo, end to end (~2 min on a quiet 2-core machine)
def test_demo_quick_writes_table_and_figure(tmp_path, capsys):
    rc = main(["demo", "--quick", "--no-nuts", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert rc == 0
    assert "Terrain elevation" in out and "finite width n=8" in out and "GP" in out and "|mean-IS|" in out
    fig = tmp_path / "demo_posterior.png"
    assert fig.exists() and fig.stat().st_size > 10_000


@pytest.fixture
def csv_file(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(20, 2))
    y = np.sin(X[:, 0]) + 0.5 * X[:, 1]
    path = tmp_path / "data.csv"
    with open(path, "w") as fh:
        fh.write("a,b,target\n")
        for row, t in zip(X, y):
            fh.write(f"{row[0]},{row[1]},{t}\n")
    return path


def test_regress_table_and_json(csv_file, tmp_path, capsys):
    """Width 4 (expansion parameter 0.88 on these rows, above EXPANSION_WARN = 0.3) is flagged once, by its own
    line: the posterior's untrusted-reasons line leaves the expansion parameter out. Called from Python, the
    command leaves JAX's x64 flag as it found it."""
    import jax

    out_json = tmp_path / "res.json"
    x64 = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", False)  # the run sets it, and gives the caller's value back (it kept it set)
    try:
        rc = main(["regress", str(csv_file), "--target", "target", "--width", "16,4", "--n-train", "6", "--n-test",
                   "3", "--no-truth", "--fixed", "--json", str(out_json)])
        assert jax.config.jax_enable_x64 is False
    finally:
        jax.config.update("jax_enable_x64", x64)
    out = capsys.readouterr().out
    assert rc == 0
    assert "finite width n=16" in out and "finite width n=4" in out and "test RMSE" in out
    assert out.count("1/n expansion parameter") == 1 and "n=4: unreliable: 1/n expansion parameter" in out
    assert "eps = max" not in out
    res = json.loads(out_json.read_text())
    assert res["target"] == "target" and res["features"] == ["a", "b"] and len(res["table"]) == 4


@pytest.mark.parametrize(
    "content,args,message",
    [
        (None, ["--target", "y"], "no such file"),
        ("a,b\n1,2\n", ["--target", "y"], "column 'y' not in"),
        ("a,y\n1,2\nx,3\n", ["--target", "y"], "non-numeric"),
        ("a,y\n1,2\n3\n", ["--target", "y"], "fields"),
        ("a,y\n1,2\n3,4\n5,6\n", ["--target", "y", "--n-train", "5"], "exceeds"),
        ("a,y\n1,2\n3,4\n5,6\n", ["--target", "y", "--n-train", "2", "--n-test", "1", "--activation", "nope"],
         "unknown activation"),
    ],
)
def test_regress_bad_input_exit_code_2(tmp_path, capsys, content, args, message):
    path = tmp_path / "bad.csv"
    if content is not None:
        path.write_text(content)
    rc = main(["regress", str(path), *args])
    err = capsys.readouterr().err
    assert rc == 2
    assert message in err


def test_python_dash_m_entry_point():
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "ngp", "--help"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "demo" in r.stdout and "regress" in r.stdout


def test_regress_drops_the_librarys_cost_warning(csv_file, monkeypatch, capsys):
    """The command prices its own work against --time-budget and says what it chose: the library's CostWarning before
    a long four-point call (docs/four-point.md, "Cost") is not printed. At one second per node every call of the
    quadrature is estimated at hours: the same posterior from Python warns."""
    import ngp
    import ngp._finite as fin

    monkeypatch.setattr(fin, "NODE_SECONDS", 1.0)
    rc = main(["regress", str(csv_file), "--target", "target", "--width", "16", "--n-train", "6", "--n-test", "3",
               "--no-truth", "--fixed"])
    captured = capsys.readouterr()
    assert rc == 0 and "finite width n=16" in captured.out
    assert "four-point values of" not in captured.out + captured.err
    X = np.random.default_rng(0).normal(size=(7, 2))
    with pytest.warns(ngp.CostWarning, match="four-point values of"):
        ngp.posterior(ngp.MLP(3, 16, activation="tanh"), X[:6], np.sin(X[:6, :1]), X[6:], noise=0.1)
