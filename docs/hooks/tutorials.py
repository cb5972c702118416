"""mkdocs hook: render the jupytext tutorials in examples/ as documentation pages.

Each ``examples/NN_name.py`` (percent format) becomes ``tutorials/NN_name.md``: markdown cells
as text, code cells as Python blocks. Nothing is executed at build time.
"""

from __future__ import annotations

from pathlib import Path

import jupytext
from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parents[2]


def on_files(files, config):
    for path in sorted((ROOT / "examples").glob("[0-9][0-9]_*.py")):
        nb = jupytext.read(path)
        body = jupytext.writes(nb, fmt="md")
        if body.startswith("---"):  # drop jupytext's YAML header
            body = body.split("---", 2)[2].lstrip()
        note = f"*Source: `examples/{path.name}` (run it as a script, or open it as a notebook with jupytext).*\n\n"
        files.append(File.generated(config, f"tutorials/{path.stem}.md", content=note + body))
    return files
