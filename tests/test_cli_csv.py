"""`ngp regress`'s reading of the CSV file and the checks of its options that come before any work (stop 92's
probe: comment lines, headerless files, decimal commas, line numbers after a multi-line field, UTF-16, ``--json``
over the data, ``--time-budget`` with ``--n-train``, the budget's reasons, write checks that try, negative values).

Each check reads a small file or parses options; nothing here runs a regression.
"""

import argparse
import os
import re

import numpy as np
import pytest

from ngp.cli import CLIError, _budget, main
from ngp.cli._common import output_dir, output_file
from ngp.cli._csv import read_table

from ._cli import one_error_line as _one_error_line
from ._cli import write_data as _write

ROWS = [(0.1257, -0.1321, 0.2821), (0.6404, 0.1049, 0.5974), (-0.5357, 0.3616, -0.7908), (1.3040, 0.9471, 0.7383),
        (-0.7037, -1.2654, -0.1168), (-0.6233, 0.0413, -0.6219)]




def _body(rows=ROWS, delim=","):
    return "".join(delim.join(map(str, r)) + "\n" for r in rows)




@pytest.fixture
def no_work(monkeypatch):
    """Refusals come before the file is read (and so before any work)."""
    from ngp.cli import _regress

    monkeypatch.setattr(_regress, "read_table", lambda *a, **k: pytest.fail("refused before any work"))


# ----------------------------------------------------------------------------- comment lines
def test_comment_lines_are_counted_in_the_notes(tmp_path):
    """A data row starting with # vanished without a word (12 data lines, "11 rows read"): the comment lines are
    now counted, with their line numbers, in the notes the "rows read" line prints."""
    lines = ["x1,x2,y"] + [",".join(map(str, r)) for r in ROWS]
    lines[3] = "#" + lines[3]  # line 4: a data row commented out
    lines.insert(1, "  # a note on line 2")
    t = read_table(_write(tmp_path, "\n".join(lines) + "\n"))
    assert t.rows_read == 5 and t.lines.tolist() == [3, 4, 6, 7, 8]
    assert "2 comment lines (starting with #) skipped: lines 2, 5" in t.notes
    t = read_table(_write(tmp_path, "# one\nx1,x2,y\n" + _body()))
    assert "1 comment line (starting with #) skipped: line 1" in t.notes and t.rows_read == 6
    assert not any("comment" in n for n in read_table(_write(tmp_path, "x1,x2,y\n" + _body())).notes)


# ----------------------------------------------------------------------------- a header that is data
def test_a_first_line_of_numbers_is_refused_as_data(tmp_path):
    """A file without a header lost its first data row to the column names; numpy.savetxt's "# x1,x2,y" header is
    a comment, so its first data row became the header."""
    with pytest.raises(CLIError, match=r"line 1 of .*, read as the header, looks like data \(every cell a number\); "
                                       r"the first line must name the columns$"):
        read_table(_write(tmp_path, _body()))
    with pytest.raises(CLIError, match=r"line 2 of .*looks like data.*\(line 1, '# x1,x2,y', starts with # and is "
                                       r"skipped as a comment: remove the # if it names the columns\)"):
        read_table(_write(tmp_path, "# x1,x2,y\n" + _body()))
    with pytest.raises(CLIError, match="looks like data"):  # a decimal comma in a ;-file is a number too
        read_table(_write(tmp_path, "1;2,5;3\n4;5;6\n7;8;10\n2;1;0\n"))
    t = read_table(_write(tmp_path, "1,2,y\n" + _body()))  # names that are partly numbers stay names
    assert t.features == ("1", "2") and t.rows_read == 6
    # names that are numbers (the reviewer): integers (pandas' labels, years, wavelengths), quoted (R's write.csv),
    # or naming the --target; read as names, said in the notes
    for head, target in (("0,1,2", None), ("400,500,600", None), ('"2019","2020","2021.5"', None),
                         ("0.5,1.5,2.5", "2.5")):
        t = read_table(_write(tmp_path, head + "\n" + _body()), target=target)
        assert t.rows_read == 6 and t.target == head.split(",")[-1].strip('"'), head
        assert any(n.startswith("the column names are numbers (") and "read as names; if line 1 is data, add a "
                   "header line" in n for n in t.notes), t.notes


def test_a_headerless_file_exits_2_with_one_line(tmp_path, capsys, monkeypatch):
    from ngp.cli import _regress

    monkeypatch.setattr(_regress, "fit_hyperparameters", lambda *a, **k: pytest.fail("refused before any fit"))
    line = _one_error_line(capsys, main(["regress", _write(tmp_path, _body()), "--quiet"]))
    assert "looks like data" in line and "must name the columns" in line


# ----------------------------------------------------------------------------- decimal commas
@pytest.mark.parametrize("delim,name", [("\t", "tab"), ("|", "'|'")])
def test_decimal_commas_in_tab_files_only_where_unambiguous(tmp_path, delim, name):
    """Tab and | files read every comma as a decimal comma, so an English TSV's thousands separator (1,234) was
    read as 1.234; a German spreadsheet's tab export (1,5) is read (the reviewer: refusing every comma there broke
    it), and said in the notes."""
    def table(rows):
        return delim.join(["price", "area", "rooms"]) + "\n" + "".join(delim.join(r) + "\n" for r in rows)

    for rows in ([("999", "120", "3"), ("1,234", "163", "5"), ("870", "99", "2")],  # thousands or 1.234?
                 [("999,5", "120", "3"), ("1,25", "16.3", "5"), ("870", "99", "2")]):  # commas and a point
        with pytest.raises(CLIError, match=(r"column 'price' has a non-numeric value '[0-9,]+' on line [23]; a comma "
                                            r"in a number is read as a decimal comma in ;-delimited files, and in tab "
                                            r"or \| files whose numbers all use one .* this file's delimiter: "
                                            rf"{re.escape(name)}\)")):
            read_table(_write(tmp_path, table(rows)), target="price")
    t = read_table(_write(tmp_path, table([("999,5", "120", "3"), ("1234,25", "163", "5"), ("870", "99,125", "2")])),
                   target="price")
    assert np.allclose(t.y, [999.5, 1234.25, 870]) and np.allclose(t.X[:, 0], [120, 163, 99.125])
    assert f"decimal commas read as decimal points (delimiter {name}; first on line 2: '999,5')" in t.notes


def test_decimal_commas_in_a_semicolon_file_are_said(tmp_path):
    t = read_table(_write(tmp_path, "x;y\n1;2\n2,5;3\n3;4,25\n"))
    assert np.allclose(t.X[:, 0], [1, 2.5, 3]) and np.allclose(t.y, [2, 3, 4.25])
    assert "decimal commas read as decimal points (delimiter ';'; first on line 3: '2,5')" in t.notes
    assert not any("decimal" in n for n in read_table(_write(tmp_path, "x;y\n1;2\n2.5;3\n3;4\n")).notes)


# ----------------------------------------------------------------------------- line numbers
def test_line_numbers_after_a_multiline_quoted_field(tmp_path):
    """Physical lines were zipped with records: after a quoted field spanning two lines every later row had the
    previous row's line number (errors, dropped rows, --json's lines)."""
    head = 'note,x1,x2,y\n"ok",1,2,3\n"first line\nsecond line",2,3,4\n"ok",3,4,6\n'
    t = read_table(_write(tmp_path, head + '"ok",4,,5\n"ok",5,6,9\n'), ignore=["note"])
    assert t.lines.tolist() == [2, 3, 5, 7] and t.dropped_lines == (6,)
    assert "1 of 5 rows dropped for missing values (lines 6)" in t.notes
    with pytest.raises(CLIError, match="non-numeric value 'bad' on line 6"):
        read_table(_write(tmp_path, head + '"ok",bad,5,5\n'), ignore=["note"])
    # a blank line and a line starting with # inside a quoted field are the field's text, not skipped
    t = read_table(_write(tmp_path, 'note,x,y\n"a\n\n# b",1,2\n"c",2,3\n"d",3,5\n'), ignore=["note"])
    assert t.lines.tolist() == [2, 5, 6] and not any("comment" in n for n in t.notes)


# ----------------------------------------------------------------------------- UTF-16
def test_a_utf16_file_is_named_with_its_conversion(tmp_path, capsys):
    """It was "not UTF-8 text (byte 0xff on line 1)" with a hint to convert from latin1."""
    path = _write(tmp_path, "x,y\n1,2\n2,3\n3,5\n".encode("utf-16"))
    line = _one_error_line(capsys, main(["regress", path, "--quiet"]))
    assert "is UTF-16 text" in line and "iconv -f utf-16 -t utf-8 in.csv > out.csv" in line and "latin1" not in line


# ----------------------------------------------------------------------------- --json over the data
def test_json_naming_the_data_file_is_refused_before_any_work(tmp_path, capsys, no_work):
    """`ngp regress d.csv --json d.csv` wrote the results over the data."""
    data = _write(tmp_path, "x1,x2,y\n" + _body())
    before = open(data, "rb").read()
    line = _one_error_line(capsys, main(["regress", data, "--json", data, "--quiet"]))
    assert line.startswith("ngp regress: error: --json: ") and "is the data file itself" in line
    os.symlink(data, tmp_path / "link.json")
    line = _one_error_line(capsys, main(["regress", data, "--json", str(tmp_path / "link.json"), "--quiet"]))
    assert "--json" in line and "is the data file itself" in line
    assert open(data, "rb").read() == before


# ----------------------------------------------------------------------------- --time-budget with --n-train
def test_time_budget_with_n_train_is_refused(tmp_path, capsys, no_work):
    """--time-budget was silently ignored when --n-train was given."""
    data = _write(tmp_path, "x1,x2,y\n" + _body())
    line = _one_error_line(capsys, main(["regress", data, "--n-train", "4", "--time-budget", "0.5", "--quiet"]))
    assert "--time-budget: --n-train fixes the training rows" in line


# ----------------------------------------------------------------------------- the budget's reasons
def _numbers(text):
    return [float(v) for v in re.findall(r"(\d+(?:\.\d+)?) s\b", text)]


def test_budget_reasons_show_their_comparisons():
    """Rounded to whole seconds they contradicted themselves: "22 rows take an estimated 2 s, 23 rows 2 s, 2 s left
    of --time-budget 3 s" and "estimated 0 s, more than the 0 s left of --time-budget 0 s"."""
    model = _budget.CostModel(_budget.Probe(8, 2, 0.05, 0.01, 0.0, 0.0))  # 8 rows 0.06 s, growing as N^4
    c = _budget.choose(model, pool=100, n_test=2, budget_s=3.0, cap=64, minimum=8, spent_s=0.5)
    est, nxt, left = _numbers(c.reason)[:3]
    assert est <= left < nxt and f"{c.n_train + 1} rows" in c.reason, c.reason
    assert c.reason.endswith("2.5 s left of --time-budget 3 s"), c.reason
    c = _budget.choose(model, pool=100, n_test=2, budget_s=0.01, cap=64, minimum=8)
    assert "more than" in c.reason and c.reason.endswith("--time-budget 0.01 s"), c.reason
    est, left = _numbers(c.reason)[:2]
    assert est > left, c.reason
    assert _budget.seconds(2.4996, 2.5001, 2.5) == ["2.4996", "2.5001", "2.5"]
    assert _budget.seconds(20.0, 143.21, 0.0) == ["20", "143", "0"]


# ----------------------------------------------------------------------------- write checks that try
@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux's /proc")
def test_unwritable_json_and_out_are_refused_before_any_work(tmp_path, capsys, no_work, monkeypatch):
    """os.access says yes to root for /proc: the run printed its whole table and failed at the end. The tries leave
    nothing behind."""
    data = _write(tmp_path, "x1,x2,y\n" + _body())
    line = _one_error_line(capsys, main(["regress", data, "--json", "/proc/ngp-test.json", "--quiet"]))
    assert "argument --json: '/proc/ngp-test.json' cannot be written" in line
    from ngp.cli import _demo

    monkeypatch.setattr(_demo, "profile", lambda: pytest.fail("refused before any work"))
    for out in ("/proc/ngp-test", "/proc/ngp-test/deeper"):
        line = _one_error_line(capsys, main(["demo", "--quick", "--no-nuts", "--quiet", "--out", out]))
        assert f"argument --out: '{out}' cannot be written" in line
    existing = tmp_path / "old.json"
    existing.write_text("keep")
    assert output_file(str(existing)) == str(existing) and existing.read_text() == "keep"
    assert output_file(str(tmp_path / "new.json")) and not (tmp_path / "new.json").exists()
    assert output_dir(str(tmp_path)) == str(tmp_path) and output_dir(str(tmp_path / "a" / "b"))
    # a dangling link: the try made its target and left it (the reviewer)
    os.symlink(tmp_path / "target.json", tmp_path / "link.json")
    assert output_file(str(tmp_path / "link.json")) and not (tmp_path / "target.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data.csv", "link.json", "old.json"]


def test_a_refused_write_is_refused_even_where_os_access_says_yes(tmp_path, monkeypatch):
    """The write checks try the write; os.access (yes for root, also where the write fails) is not asked. The
    folder's refusal is simulated (a read-only folder does not refuse root, who runs CI)."""
    from ngp.cli import _common

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(os, "access", lambda *a, **k: True)  # as it answers root
    monkeypatch.setattr(_common, "open", refuse, raising=False)
    monkeypatch.setattr(_common.tempfile, "mkstemp", refuse)
    monkeypatch.setattr(_common.tempfile, "mkdtemp", refuse)
    for check, path in ((output_file, tmp_path / "r.json"), (output_dir, tmp_path), (output_dir, tmp_path / "new")):
        with pytest.raises(argparse.ArgumentTypeError, match="cannot be written \\(Permission denied\\)"):
            check(str(path))
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- negative values
@pytest.mark.parametrize("argv,message", [
    (["--max-memory", "-4G"], "argument --max-memory: expected a positive size such as 4G, 512M or 2.5GB, got '-4G'"),
    (["--max-memory", "0"], "argument --max-memory: expected a positive size"),
    (["--noise", "-1e-3"], "argument --noise: expected a number > 0, got '-1e-3'"),
])
def test_a_negative_value_reaches_its_options_check(tmp_path, capsys, argv, message, no_work):
    """argparse read -4G and -1e-3 as options: "argument --max-memory: expected one argument"."""
    line = _one_error_line(capsys, main(["regress", _write(tmp_path, "x1,x2,y\n" + _body()), *argv]))
    assert message in line
