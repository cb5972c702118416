"""Helpers of the command-line tests (tests/test_cli_*.py)."""

import argparse

import numpy as np
import pytest

from ngp.cli import _parser


def one_error_line(capsys, rc):
    """The single stderr line of a run that exited with status 2 (no traceback)."""
    err = capsys.readouterr().err
    assert rc == 2, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def write(tmp_path, text, name="data.csv", encoding="utf-8"):
    """``text`` (str, encoded, or bytes) written to ``tmp_path / name``; returns the path as a string."""
    path = tmp_path / name
    path.write_bytes(text.encode(encoding) if isinstance(text, str) else text)
    return str(path)


def csv_rows(n=12, seed=0, scale_x=1.0, scale_y=1.0):
    """``n`` rows ``(a, b, target)`` with ``target = sin(a) + 0.5 b`` before the scales."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 2))
    y = np.sin(X[:, 0]) + 0.5 * X[:, 1]
    return [(a, b * scale_x, t * scale_y) for (a, b), t in zip(X, y)]


def regress_parser():
    """The ``regress`` subcommand's argument parser."""
    p = _parser()
    return next(a for a in p._actions if isinstance(a, argparse._SubParsersAction)).choices["regress"]


@pytest.fixture(name="real_csv")
def real_csv_fixture(tmp_path):
    """A CSV as R writes it (quoted header, row labels), with NA cells and values of order 1e300."""
    lines = ['"","a","b","target"']
    for i, (a, b, t) in enumerate(csv_rows(12, scale_x=1e300, scale_y=1e300), start=1):
        lines.append(f'"{i}",{a},{b},{t}')
    lines += ['"13",NA,1e300,2e300', '"14",1.0,,2e300']
    return write(tmp_path, "\n".join(lines) + "\n")
