"""Notebooks and the README as users run them (issue 16): the quick start prints its results, tutorials show
figures inline in Jupyter and still write them to files."""


import pytest




ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]


@pytest.mark.validation
def test_readme_quick_start_prints_its_results(tmp_path):
    """The README's quick start, run as a script, prints every result (fewer importance samples here)."""
    import os
    import subprocess
    import sys

    text = (ROOT / "README.md").read_text()
    block = text.split("## Quick start", 1)[1].split("```python", 1)[1].split("```", 1)[0]
    assert "num_samples=100_000" in block
    script = tmp_path / "quick_start.py"
    script.write_text(block.replace("num_samples=100_000", "num_samples=2_000"))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT)] + [p for p in [os.environ.get("PYTHONPATH")] if p])}
    proc = subprocess.run([sys.executable, "-W", "always", str(script)], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for what in ("K (infinite-width kernel)", "expansion parameter", "posterior mean, GP", "finite width",
                 "log evidence", "numerical error bound", "importance sampling", "sampled outputs",
                 "gelu at criticality"):
        assert what in proc.stdout, what
    assert "Warning" not in proc.stderr, proc.stderr[-3000:]


def test_tutorials_show_figures_inline_and_write_files():
    notebooks = sorted((ROOT / "examples").glob("[0-9][0-9]_*.py"))
    assert notebooks
    for nb in notebooks:
        text = nb.read_text()
        assert "matplotlib.use(" not in text and "plt.close(" not in text, nb.name
        assert "savefig(" not in text and "ngp.plot.show(fig, os.path.join(FIGDIR" in text, nb.name


def test_show_writes_the_file_and_displays_only_in_a_kernel(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    pytest.importorskip("IPython")
    import sys
    import types

    import IPython.display
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    import ngp

    shown = []
    monkeypatch.setattr(IPython.display, "display", lambda obj: shown.append(obj))
    fig = plt.figure()
    monkeypatch.delitem(sys.modules, "ipykernel", raising=False)
    assert ngp.plot.show(fig, str(tmp_path / "a.png")) == str(tmp_path / "a.png")
    assert (tmp_path / "a.png").stat().st_size > 0 and not shown and not plt.fignum_exists(fig.number)
    fig = plt.figure()
    monkeypatch.setitem(sys.modules, "ipykernel", types.ModuleType("ipykernel"))
    monkeypatch.setattr(IPython, "get_ipython", lambda: types.SimpleNamespace(kernel=object()))
    ngp.plot.show(fig, str(tmp_path / "b.png"))
    assert shown == [fig] and (tmp_path / "b.png").exists() and not plt.fignum_exists(fig.number)


def test_show_displays_inline_in_a_real_jupyter_kernel(tmp_path):
    """nbclient executes a notebook cell that calls ngp.plot.show: the output holds the PNG, the file exists."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    pytest.importorskip("matplotlib")
    import os

    code = (f"import sys; sys.path.insert(0, {str(ROOT)!r})\n"
            "import matplotlib.pyplot as plt\nimport ngp.plot\n"
            "fig, ax = plt.subplots(); ax.plot([0, 1], [1, 0])\n"
            f"ngp.plot.show(fig, {str(tmp_path / 'fig.png')!r})")
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(code)])
    env_backend = os.environ.pop("MPLBACKEND", None)
    try:
        nbclient.NotebookClient(nb, timeout=300, kernel_name="python3").execute()
    finally:
        if env_backend is not None:
            os.environ["MPLBACKEND"] = env_backend
    outputs = nb.cells[0].outputs
    assert sum("image/png" in o.get("data", {}) for o in outputs) == 1, outputs
    assert (tmp_path / "fig.png").stat().st_size > 0
