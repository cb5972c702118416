"""The documentation builds offline with ``mkdocs build --strict`` (warnings are errors)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_docs_build_strict(tmp_path):
    pytest.importorskip("mkdocs")
    pytest.importorskip("material")
    pytest.importorskip("mkdocstrings_handlers.python")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stdout}\n{proc.stderr}"
    for page in ("index.html", "getting-started/index.html", "conventions/index.html",
                 "accuracy/index.html", "api/index.html"):
        assert (tmp_path / "site" / page).is_file(), page
    api = (tmp_path / "site" / "api" / "index.html").read_text()
    for name in ("ngp.MLP", "ngp.Prior", "ngp.gp_posterior", "ngp.GPPosterior", "ngp.trained_ensemble",
                 "ngp.sample_networks", "ngp.activation"):
        assert f'id="{name}"' in api, f"{name} missing from the API reference"


def test_text_files_hold_no_control_characters():
    """A backslash escape written through a non-raw string (``"\\tanh"``, ``"\\rangle"``, ``"\\approx"``) leaves a
    tab, a carriage return or a bell in the text, which MathJax and terminals show garbled."""
    bad = []
    for pattern in ("*.md", "docs/**/*.md", "ngp/**/*.py", "examples/*.py", "benchmarks/*.py", "tests/*.py"):
        for path in ROOT.glob(pattern):
            text = path.read_bytes().decode("utf-8", errors="replace")
            for num, line in enumerate(text.split("\n"), 1):
                if any(ord(c) < 32 and c != "\n" for c in line):
                    bad.append(f"{path.relative_to(ROOT)}:{num}: {line[:60]!r}")
    assert not bad, "control characters:\n" + "\n".join(bad)


def test_installed_version_is_the_package_version():
    """pyproject.toml said 0.1.0 while ngp.__version__ said 0.2.0: the version now comes from ngp.__version__."""
    import importlib.metadata

    import ngp

    assert importlib.metadata.version("ngp") == ngp.__version__
