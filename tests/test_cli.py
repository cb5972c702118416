"""The ngp command line end to end (reduced sizes)."""

import json
import os

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
    out_json = tmp_path / "res.json"
    rc = main(["regress", str(csv_file), "--target", "target", "--width", "16", "--n-train", "6", "--n-test", "3",
               "--no-truth", "--fixed", "--json", str(out_json)])
    out = capsys.readouterr().out
    assert rc == 0
    assert "finite width n=16" in out and "test RMSE" in out
    res = json.loads(out_json.read_text())
    assert res["target"] == "target" and res["features"] == ["a", "b"] and len(res["table"]) == 3


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


# ----------------------------------------------------------------------------- XLA compile settings
def test_fast_compile_flags_added_once_keeping_the_users_values(monkeypatch, tmp_path, capsys):
    from ngp.cli._common import FAST_COMPILE_FLAGS, LEGACY_EMITTERS, use_fast_compile_flags, xla_accepts

    monkeypatch.setenv("XLA_FLAGS", "--xla_backend_optimization_level=2")
    assert use_fast_compile_flags() is None  # the user's value kept: nothing missing, no probe
    value = use_fast_compile_flags((LEGACY_EMITTERS, *FAST_COMPILE_FLAGS))  # the suite's set
    assert value == "--xla_backend_optimization_level=2 --xla_cpu_use_fusion_emitters=false"
    assert os.environ["XLA_FLAGS"] == value
    monkeypatch.delenv("XLA_FLAGS")
    assert use_fast_compile_flags() == "--xla_backend_optimization_level=1"
    monkeypatch.delenv("XLA_FLAGS")  # the command line sets them before its first computation
    assert main(["regress", str(tmp_path / "missing.csv"), "--target", "y"]) == 2
    assert os.environ["XLA_FLAGS"] == " ".join(FAST_COMPILE_FLAGS)
    # with a GPU/TPU plugin installed the CPU-measured setting is left out, unless JAX runs on the CPU
    monkeypatch.setattr("ngp.cli._common.has_accelerator_plugin", lambda: True)
    monkeypatch.setenv("XLA_FLAGS", "")
    monkeypatch.setenv("JAX_PLATFORMS", "")
    assert use_fast_compile_flags() is None and os.environ["XLA_FLAGS"] == ""
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    assert use_fast_compile_flags() == "--xla_backend_optimization_level=1"
    monkeypatch.undo()
    # a flag this jaxlib does not know would abort XLA: refused, the variable left alone
    assert not xla_accepts("--xla_no_such_flag_in_any_jaxlib=1")
    monkeypatch.setenv("XLA_FLAGS", "")
    assert use_fast_compile_flags(("--xla_no_such_flag_in_any_jaxlib=1",)) is None
    assert os.environ["XLA_FLAGS"] == ""


_VALUES_DIGEST = """
import hashlib, jax, numpy as np
jax.config.update("jax_enable_x64", True)
import ngp
rng = np.random.default_rng(0)
X = rng.normal(size=(5, 2))
net = ngp.MLP(depth=2, width=64, activation="gelu")
p = net.prior(X)
h = hashlib.sha256()
for a in (p.K, p.K1, p.V, ngp.sample_networks(net, X, 32, seed=1).outputs):
    h.update(np.ascontiguousarray(np.asarray(a, dtype=float)).tobytes())
digest = h.hexdigest()
"""


def test_fast_compile_flags_leave_values_bitwise_identical():
    """The suite runs under the CLI's compile setting and the legacy emitters (tests/conftest.py); XLA's
    defaults, set explicitly in a subprocess, give the same bytes for K, K1, V (Gaussian four-point rules
    included) and network draws."""
    import subprocess
    import sys

    from ngp.cli._common import FAST_COMPILE_FLAGS, LEGACY_EMITTERS

    if not all(f in os.environ.get("XLA_FLAGS", "") for f in (LEGACY_EMITTERS, *FAST_COMPILE_FLAGS)):
        pytest.skip("this jaxlib does not accept the suite's compile settings")
    here = {}
    exec(_VALUES_DIGEST, here)
    defaults = "--xla_cpu_use_fusion_emitters=true --xla_backend_optimization_level=2"
    r = subprocess.run([sys.executable, "-c", _VALUES_DIGEST + "print(digest)"], capture_output=True, text=True,
                       env=dict(os.environ, XLA_FLAGS=defaults), timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split()[-1] == here["digest"]
