"""Reading the CSV table (``ngp.cli._csv``): quoted headers as R writes them, NA cells, delimiters, the
column and line named in every error (issue 16)."""


import numpy as np
import pytest

from ngp.cli import main
from ngp.cli._common import CLIError
from ngp.cli._csv import read_table

from ._cli import csv_rows, one_error_line, write


def test_csv_r_style_quoted_header_row_labels_and_na_cells(tmp_path):
    lines = ['"","a","b","target"']
    for i, (a, b, t) in enumerate(csv_rows(8), start=1):
        lines.append(f'"{i}",{a},{b},{t}')
    lines += ['"9",NA,1.0,2.0', '"10",1.0,,2.0', '"11",1.0,2.0,nan']
    t = read_table(write(tmp_path, "\n".join(lines) + "\n"), target="target")
    assert t.features == ("a", "b") and t.target == "target"
    assert t.X.shape == (8, 2) and t.rows_read == 11 and t.dropped_lines == (10, 11, 12)
    assert any("row labels" in n for n in t.notes) and any("3 of 11 rows dropped" in n for n in t.notes)
    assert np.allclose(t.y, [r[2] for r in csv_rows(8)])


def test_csv_semicolon_with_decimal_commas_tabs_and_bom(tmp_path):
    semi = "x;y\n" + "".join(f"{i},5;{2 * i},25\n" for i in range(5))
    t = read_table(write(tmp_path, semi))
    assert t.delimiter == ";" and np.allclose(t.X[:, 0], np.arange(5) + 0.5)
    assert np.allclose(t.y, 2 * np.arange(5) + 0.25)
    tab = "\ufeffx\ty\n" + "".join(f"{i}\t{i * i}\n" for i in range(4))
    t = read_table(write(tmp_path, tab, "tab.tsv"))
    assert t.delimiter == "\t" and t.features == ("x",) and np.allclose(t.y, np.arange(4) ** 2)


def test_csv_target_defaults_to_last_column_features_and_ignore(tmp_path):
    path = write(tmp_path, "a,name,b,y\n1,u,2,3\n4,v,5,6\n7,w,8,9\n")
    with pytest.raises(CLIError, match=r"column 'name' has a non-numeric value 'u' on line 2; choose"):
        read_table(path)
    t = read_table(path, ignore=["name"])
    assert t.target == "y" and t.features == ("a", "b")
    t = read_table(path, features=["b"], target="a")
    assert t.features == ("b",) and np.allclose(t.y, [1, 4, 7])


@pytest.mark.parametrize(
    "content,kwargs,message",
    [
        ("a,b\n1,2\n2,3\n3,4\n", {"target": "y"}, "--target: column 'y' not in"),
        ("a,b,a\n1,2,3\n", {}, "duplicate column"),
        ("a,y\n1,2\n3\n4,5\n", {}, "line 3 has 1 fields"),
        ("a,y\n1,2\n3,inf\n4,5\n", {}, "column 'y' has the non-finite value 'inf' on line 3"),
        ("a,y\n1,2\nNA,3\n", {}, "1 complete rows"),
        ("a,y\n1,2\n", {"features": ["y"]}, "cannot also be a feature"),
    ],
)
def test_csv_errors_name_line_and_column(tmp_path, content, kwargs, message):
    with pytest.raises(CLIError, match=message):
        read_table(write(tmp_path, content), **kwargs)


def test_csv_latin1_byte_exits_2_with_one_line(tmp_path, capsys):
    path = write(tmp_path, "a,temp\u00e9rature\n1,2\n3,4\n5,6\n", encoding="latin-1")
    line = one_error_line(capsys, main(["regress", path]))
    assert "not UTF-8" in line and "byte 0xe9 on line 1" in line
