"""The tutorial notebooks (``examples/*.py``, jupytext percent format) run top to bottom.

Each notebook runs as a plain script in a subprocess with ``NGP_QUICK=1`` (its CI switch:
fewer samples, widths and NUTS steps) and must write at least one figure; each must also
convert to ``.ipynb`` with jupytext.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "examples").glob("[0-9][0-9]_*.py"))
EXPECTED = (
    "01_finite_width_prior.py",
    "02_bayesian_regression.py",
    "03_criticality.py",
    "04_model_selection.py",
    "05_training_tools.py",
    "06_residual.py",
    "07_ntk_and_scaling.py",
    "08_large_data.py",
)


def test_all_notebooks_present():
    assert set(EXPECTED) <= {p.name for p in NOTEBOOKS}, [p.name for p in NOTEBOOKS]


@pytest.mark.validation
@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs(notebook, tmp_path):
    pytest.importorskip("matplotlib")
    if notebook.name.startswith("02_"):
        pytest.importorskip("numpyro")
    if notebook.name.startswith("05_"):
        pytest.importorskip("optax")
        pytest.importorskip("sklearn")
    figdir = tmp_path / "figures"
    env = {
        **os.environ,
        "NGP_QUICK": "1",
        "MPLBACKEND": "Agg",
        "NGP_FIGDIR": str(figdir),
        # works from a source checkout as well as after `pip install .`
        "PYTHONPATH": os.pathsep.join([str(ROOT)] + [p for p in [os.environ.get("PYTHONPATH")] if p]),
    }
    proc = subprocess.run(
        [sys.executable, str(notebook.relative_to(ROOT))],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, f"{notebook.name} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    pngs = list(figdir.glob("*.png"))
    assert pngs, f"{notebook.name} wrote no figure to NGP_FIGDIR:\n{proc.stdout[-2000:]}"


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_converts_with_jupytext(notebook, tmp_path):
    pytest.importorskip("jupytext")
    out = tmp_path / "x.ipynb"
    proc = subprocess.run(
        [sys.executable, "-m", "jupytext", "--to", "ipynb", "--output", str(out), str(notebook)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    import json

    nb = json.loads(out.read_text())
    kinds = {cell["cell_type"] for cell in nb["cells"]}
    assert {"markdown", "code"} <= kinds, kinds
