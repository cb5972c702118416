"""The command line as a new user meets it (issue 16, issue 10 item 4, issue 15 item 6).

Most checks run without any finite-width computation (CSV reading, options, splits, the budget
rule, the tables). The end-to-end runs share one array shape (4 training rows, 2 test rows,
2 features), so JAX compiles once per test session.
"""

import argparse
import dataclasses
import itertools
import json
import math
import re
import sys
import time
import warnings

import numpy as np
import pytest

from ngp.cli import _budget, _parser, main
from ngp.cli._common import CLIError, fmt_above, given_options, memory_size, table
from ngp.cli._compare import ESS_MIN, Row, cells, notes, numerical_flag
from ngp.cli._csv import read_table
from ngp.cli._regress import _aggregate, _largest_fitting, _splits, check_extreme, row_work
from ngp.datasets import standardize

from ._cli import one_error_line as _one_error_line
from ._cli import write_data as _write




def _csv_rows(n=12, seed=0, scale_x=1.0, scale_y=1.0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 2))
    y = np.sin(X[:, 0]) + 0.5 * X[:, 1]
    return [(a, b * scale_x, t * scale_y) for (a, b), t in zip(X, y)]


# ----------------------------------------------------------------------------- CSV reading
def test_csv_r_style_quoted_header_row_labels_and_na_cells(tmp_path):
    lines = ['"","a","b","target"']
    for i, (a, b, t) in enumerate(_csv_rows(8), start=1):
        lines.append(f'"{i}",{a},{b},{t}')
    lines += ['"9",NA,1.0,2.0', '"10",1.0,,2.0', '"11",1.0,2.0,nan']
    t = read_table(_write(tmp_path, "\n".join(lines) + "\n"), target="target")
    assert t.features == ("a", "b") and t.target == "target"
    assert t.X.shape == (8, 2) and t.rows_read == 11 and t.dropped_lines == (10, 11, 12)
    assert any("row labels" in n for n in t.notes) and any("3 of 11 rows dropped" in n for n in t.notes)
    assert np.allclose(t.y, [r[2] for r in _csv_rows(8)])


def test_csv_semicolon_with_decimal_commas_tabs_and_bom(tmp_path):
    semi = "x;y\n" + "".join(f"{i},5;{2 * i},25\n" for i in range(5))
    t = read_table(_write(tmp_path, semi))
    assert t.delimiter == ";" and np.allclose(t.X[:, 0], np.arange(5) + 0.5)
    assert np.allclose(t.y, 2 * np.arange(5) + 0.25)
    tab = "\ufeffx\ty\n" + "".join(f"{i}\t{i * i}\n" for i in range(4))
    t = read_table(_write(tmp_path, tab, "tab.tsv"))
    assert t.delimiter == "\t" and t.features == ("x",) and np.allclose(t.y, np.arange(4) ** 2)


def test_csv_target_defaults_to_last_column_features_and_ignore(tmp_path):
    path = _write(tmp_path, "a,name,b,y\n1,u,2,3\n4,v,5,6\n7,w,8,9\n")
    with pytest.raises(CLIError, match=r"column 'name' has a non-numeric value 'u' on line 2; choose"):
        read_table(path)
    t = read_table(path, ignore=["name"])
    assert t.target == "y" and t.features == ("a", "b")
    t = read_table(path, features=["b"], target="a")
    assert t.features == ("b",) and np.allclose(t.y, [1, 4, 7])


def test_csv_constant_target_or_feature_is_remarked(tmp_path):
    """A constant feature is left out: kept (standardised to 0) it still counted in the first layer's fan-in and
    changed every model (stackloss with a constant column: GP RMSE 2.459 against 2.501 without, n=8 2.794 against
    3.039), while the note said it carried no information. When every feature is constant, they stay."""
    t = read_table(_write(tmp_path, "a,b,y\n1,2,5\n2,2,5\n3,2,5\n"))
    assert t.notes == (
        "feature 'b' is constant (2): it carries no information and is left out",
        "the target 'y' is constant (5): every model predicts it exactly, so the comparison says nothing")
    assert t.features == ("a",) and t.X.shape == (3, 1) and np.array_equal(t.X[:, 0], [1, 2, 3])
    assert read_table(_write(tmp_path, "a,b,y\n1,2,5\n2,3,5.5\n3,2,5\n")).notes == ()
    t = read_table(_write(tmp_path, "a,b,y\n1,2,5\n1,2,6\n1,2,7\n"))
    assert t.features == ("a", "b") and t.notes == ("feature 'a' is constant (1): it carries no information",
                                                    "feature 'b' is constant (2): it carries no information")


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
        read_table(_write(tmp_path, content), **kwargs)


def test_csv_latin1_byte_exits_2_with_one_line(tmp_path, capsys):
    path = _write(tmp_path, "a,temp\u00e9rature\n1,2\n3,4\n5,6\n", encoding="latin-1")
    line = _one_error_line(capsys, main(["regress", path]))
    assert "not UTF-8" in line and "byte 0xe9 on line 1" in line


# ----------------------------------------------------------------------------- options
def _regress_parser():
    p = _parser()
    return next(a for a in p._actions if isinstance(a, argparse._SubParsersAction)).choices["regress"]


@pytest.mark.parametrize("sub", ["regress", "demo"])
def test_help_explains_every_option_with_its_default(sub):
    p = next(a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction)).choices[sub]
    for action in p._actions:
        if action.help == argparse.SUPPRESS or isinstance(action, argparse._HelpAction):
            continue
        assert action.help, action.dest
        flag = isinstance(action, (argparse._StoreTrueAction, argparse._StoreConstAction))
        if action.option_strings and not flag and action.default not in (None,):
            assert "default" in action.help, (action.dest, action.help)
        for opt in action.option_strings:
            assert "_" not in opt, f"{opt}: options are hyphenated"
    text = " ".join(p.format_help().split())
    assert "--C_W" not in text and "--C_b" not in text and "--no-truth" not in text
    if sub == "regress":
        assert "variance in standardised target units" in text and "N_train^4" in text


def test_old_option_spellings_still_work():
    args = _parser().parse_args(["regress", "x.csv", "--C_W", "1.5", "--C_b", "0.2", "--no-truth"])
    assert args.c_w == 1.5 and args.c_b == 0.2 and args.truth == 0
    args = _parser().parse_args(["regress", "x.csv", "--c-w", "2", "--width", "8,32", "--max-memory", "8G"])
    assert args.c_w == 2.0 and args.width == [8, 32] and args.max_memory == 8 * 1024**3


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--noise", "nan"], "--noise: expected a finite number"),
        (["--noise", "-1"], "--noise: expected a number > 0"),
        (["--four-point-order", "0"], "--four-point-order: expected an integer >= 2"),
        (["--four-point-order", "1000"], "four_point_order=1000: the fixed rule's tensor grid"),  # numpy's 7 TiB
        (["--width", "0"], "--width: expected an integer >= 1"),
        (["--max-memory", "lots"], "--max-memory: expected a size"),
        (["--test-fraction", "1.5"], "--test-fraction: expected a number <= 0.9"),
        (["--c-w", "inf"], "--c-w: expected a finite number"),
        (["--samples", "1"], "--samples: expected an integer >= 2"),
        (["--method", "fast"], "--method: invalid choice: 'fast'"),
        (["--seed", "-1"], "argument --seed: expected an integer >= 0, got '-1'"),
        (["--seed", str(2**63)], f"argument --seed: expected an integer <= {2**63 - 1}"),  # was refused after the work
        (["--width", str(2**63)], "width: must be <= 9007199254740992"),  # was JAX's OverflowError after the work
        (["--width", "8,,32"], "--width: empty item in '8,,32'"),
        (["--width", "8,"], "--width: empty item in '8,'"),
        (["--width", "8,8"], "--width: 8 is given twice in '8,8'"),
        (["--features", "a,,b"], "--features: empty item in 'a,,b'"),
        (["--features", "a,a"], "--features: 'a' is given twice in 'a,a'"),
        (["--ignore", "a,a"], "--ignore: 'a' is given twice in 'a,a'"),
    ],
)
def test_bad_options_exit_2_with_one_line(tmp_path, capsys, argv, message):
    rc = main(["regress", _write(tmp_path, "a,y\n1,2\n3,4\n5,6\n"), *argv])
    assert message in _one_error_line(capsys, rc)


def test_json_pointing_at_a_directory_or_missing_folder(tmp_path, capsys):
    data = _write(tmp_path, "a,y\n1,2\n3,4\n5,6\n")
    for target, message in ((tmp_path, "is a directory"), (tmp_path / "nope" / "r.json", "does not exist")):
        rc = main(["regress", data, "--json", str(target)])
        assert message in _one_error_line(capsys, rc)


@pytest.mark.parametrize(
    "content,argv,message",
    [
        (None, [], "no such file"),
        ("a,y\n1,2\n3,4\n5,6\n", ["--activation", "nope"], "unknown activation"),
        ("a,y\n1,2\n3,4\n5,6\n", ["--n-train", "5"], "exceeds the 2-row training pool"),
        ("a,y\n1,2\n3,4\n5,6\n", ["--folds", "9"], "more folds"),
        ("a,b\n1,2\nx,3\n4,5\n", [], "column 'a' has a non-numeric value 'x' on line 3"),
        ("a,b\n1,2\n1_00,3\n4,5\n", [], "column 'a' has a non-numeric value '1_00' on line 3"),  # float(): 100
        ("a,y\n1,2\n3,4\n5,6\n", ["--method", "matrix-free", "--fit-evidence", "finite-width"],
         "--fit-evidence finite-width: the fit runs the exact finite-width evidence"),
        ("a,y\n1,2\n3,4\n5,6\n", ["--method", "matrix-free", "--four-point-order", "8"],
         "--four-point-order: the matrix-free path has no four-point rule"),
        ("a,y\n1,2\n3,4\n5,6\n", ["--method", "matrix-free", "--n-train", "5"], "exceeds the 2-row training pool"),
        ("a,y\n1,2\n3,4\n5,6\n", ["--ignore", "y"], "--ignore: 'y' is the target column"),
        ("a,b,y\n1,2,3\n3,4,5\n5,6,8\n", ["--target", "b", "--ignore", "b"], "--ignore: 'b' is the target column"),
        ("a,b,y\n1,2,3\n3,4,5\n5,6,8\n", ["--features", "a,b", "--ignore", "a"],
         "--ignore: --features lists the feature columns"),
        ("a,b,y\n1,2,3\n3,4,5\n5,6,8\n", ["--features", "a", "--ignore", "b"],
         "--ignore: --features lists the feature columns"),
        ("a,y\n1,2\n3,4\n5,6\n", ["--method", "exact", "--samples", "5"],
         "--samples: the exact path has no Monte-Carlo samples"),
        ("a,y\n1,2\n3,4\n5,6\n", ["--samples", "5"], "--samples: the exact path has no Monte-Carlo samples"),
        ("a,y\n1,2\n3,4\n5,6\n", ["--folds", "3", "--test-fraction", "0.5"], "--test-fraction: with --folds"),
        ("a,y\n1,2\n3,4\n5,6\n", ["--folds", "3", "--test-fraction", "0.2"], "--test-fraction: with --folds"),
        ("a,y\n1,2\n3,4\n5,6\n", ["--fixed", "--fit-evidence", "finite-width"], "--fit-evidence: --fixed keeps"),
        ("a,y\n1,2\n3,4\n5,6\n", ["--fit-evidence", "gp", "--fixed"], "--fit-evidence: --fixed keeps"),
        ("a,y\n1,2\n3,4\n5,6\n", ["--n-train", "2", "--time-budget", "60"],
         "--time-budget: --n-train fixes the training rows"),  # was silently ignored
    ],
)
def test_bad_inputs_exit_2_with_one_line(tmp_path, capsys, content, argv, message, monkeypatch):
    from ngp.cli import _regress

    monkeypatch.setattr(_regress, "fit_hyperparameters", lambda *a, **k: pytest.fail("refused before any fit"))
    path = str(tmp_path / "missing.csv") if content is None else _write(tmp_path, content)
    assert message in _one_error_line(capsys, main(["regress", path, *argv]))


@pytest.mark.parametrize("argv,message", [
    (["--samples", "5"], "--samples: the exact path has no Monte-Carlo samples"),
    (["--method", "matrix-free", "--four-point-order", "8"], "--four-point-order: the matrix-free path has no"),
    (["--n-train", "50"], "--n-train 50 exceeds the 16-row training pool"),
    (["--n-train", "8", "--max-memory", "1M"], "--n-train 8: the finite-width posterior needs about"),
    (["--width", f"8,{2**63}"], "--width: must be <= 9007199254740992"),  # was "ValueError: n: ..." after the work
])
def test_refusals_come_before_any_output(tmp_path, capsys, monkeypatch, argv, message):
    """These were refused only after the data's description (3 lines of stdout) had been printed."""
    from ngp.cli import _regress

    monkeypatch.setattr(_regress, "fit_hyperparameters", lambda *a, **k: pytest.fail("refused before any fit"))
    data = _write(tmp_path, "a,b,y\n" + "".join(f"{a},{b},{t}\n" for a, b, t in _csv_rows(20)))
    rc = main(["regress", data, "--quiet", "--fixed", *argv])
    out, err = capsys.readouterr()
    assert rc == 2 and out == "" and len(err.strip().splitlines()) == 1 and message in err, (out, err)


@pytest.mark.parametrize("sub", [["regress", "x.csv"], ["demo"]])
def test_an_unknown_option_points_at_its_subcommands_help(capsys, sub):
    """`ngp regress x.csv --bogus` said "ngp: error: ... (see 'ngp --help')", whose help lists no option of it."""
    line = _one_error_line(capsys, main([*sub, "--bogus", "1"]))
    assert line == f"ngp {sub[0]}: error: unrecognized arguments: --bogus 1 (see 'ngp {sub[0]} --help')"


def test_an_unknown_activation_is_named_as_typed(tmp_path, capsys):
    """It was refused as "activation: unknown activation 'foo'; ... or a JAX-traceable callable" (the library's
    words) where the other options' errors name the option as typed; now argparse refuses it, before the file is
    read. The library's spellings still pass."""
    line = _one_error_line(capsys, main(["regress", str(tmp_path / "missing.csv"), "--activation", "foo"]))
    assert "argument --activation: unknown activation 'foo'; expected one of erf," in line
    assert "callable" not in line and "(see 'ngp regress --help')" in line
    assert _parser().parse_args(["regress", "x.csv", "--activation", "ReLU"]).activation == "ReLU"


def test_given_options_are_told_from_defaults():
    """Only what the command line gives counts as given (a default equal to a given value is not)."""
    assert given_options(_parser(), ["regress", "x.csv", "--folds", "3", "--fixed"]) == {"command", "data", "folds",
                                                                                         "fixed"}
    assert given_options(_parser(), ["regress", "x.csv", "--test-fraction", "0.2"]) >= {"test_fraction"}
    assert given_options(_parser(), ["demo"]) == {"command"}


def test_a_closed_pipe_is_not_an_input_error(tmp_path, capsys, monkeypatch):
    """`ngp regress ... | head -1`: the reader's exit made the next print raise BrokenPipeError, reported as
    "error: BrokenPipeError" with exit status 2 (bad input); now quiet, status 141 (as SIGPIPE's)."""

    class Closed:
        def write(self, text):
            raise BrokenPipeError(32, "Broken pipe")

        def flush(self):
            pass

        def fileno(self):
            raise ValueError("no descriptor")  # a captured stream: the handler keeps it

    monkeypatch.setattr(sys, "stdout", Closed())
    rows = "\n".join(",".join(map(str, r)) for r in _csv_rows(12))
    rc = main(["regress", _write(tmp_path, "a,b,y\n" + rows + "\n"), "--quiet"])
    assert rc == 141 and capsys.readouterr().err == ""


@pytest.mark.parametrize("argv,message", [
    (["--n-train", "1"], "argument --n-train: expected an integer >= 2, got '1'"),
    (["--seed", "-1"], "argument --seed: expected an integer >= 0, got '-1'"),
    (["--seed", str(2**63)], f"argument --seed: expected an integer <= {2**63 - 1}"),
    (["--out", "{file}"], "is not a folder ({file} is a file); give a folder name"),
    (["--out", "{file}/sub"], "is not a folder ({file} is a file); give a folder name"),
])
def test_demo_bad_options_exit_2_with_one_line_before_any_work(tmp_path, capsys, monkeypatch, argv, message):
    from ngp.cli import _demo

    monkeypatch.setattr(_demo, "profile", lambda: pytest.fail("refused before any work"))
    file = tmp_path / "afile"
    file.write_text("x")
    argv = [a.format(file=file) for a in argv]
    line = _one_error_line(capsys, main(["demo", "--quick", "--no-nuts", "--quiet", *argv]))
    assert message.format(file=file) in line


def test_demo_without_numpyro_says_so_before_any_work(capsys, monkeypatch):
    """Installed with the plots extra only (no numpyro), the demo ran everything else and then ended in an
    ImportError traceback with exit code 1: now one line, exit 2, before any work (--no-nuts skips NUTS)."""
    from ngp.cli import _demo

    monkeypatch.setattr(_demo, "profile", lambda: pytest.fail("refused before any work"))
    monkeypatch.setitem(sys.modules, "numpyro", None)  # import numpyro raises ImportError
    line = _one_error_line(capsys, main(["demo", "--quick", "--quiet"]))
    assert "needs numpyro" in line and "--no-nuts" in line


def test_demo_out_may_be_a_new_folder(tmp_path):
    from ngp.cli._common import output_dir

    assert output_dir(str(tmp_path / "new" / "deeper")) == str(tmp_path / "new" / "deeper")
    assert output_dir(str(tmp_path)) == str(tmp_path)


def test_extreme_test_target_is_refused_before_any_fit(tmp_path, capsys, monkeypatch):
    """A target of 1e300 in a test row: one line naming the target column and the line, not an inf RMSE."""
    from ngp.cli import _regress

    monkeypatch.setattr(_regress, "fit_hyperparameters", lambda *a, **k: pytest.fail("refused before any fit"))
    rows = _csv_rows(20)
    ((_, test),) = _splits(20, argparse.Namespace(seed=0, folds=None, test_fraction=0.2))
    k = int(test[0])
    rows[k] = (rows[k][0], rows[k][1], 1e300)
    data = _write(tmp_path, "a,b,y\n" + "".join(f"{a},{b},{t}\n" for a, b, t in rows))
    line = _one_error_line(capsys, main(["regress", data, "--max-train", "8", "--width", "8", "--quiet"]))
    assert re.search(rf"DATA: column 'y' on line {k + 2} lies \S+e\+(299|300) training standard deviations", line), line
    for folds in (["--folds", "4"], ["--folds", "4", "--n-train", "4"]):  # any fold's test row, before fold 1 runs
        line = _one_error_line(capsys, main(["regress", data, "--width", "8", "--quiet", *folds]))
        assert f"DATA: column 'y' on line {k + 2} lies" in line


@pytest.mark.parametrize("max_train, want", [
    ("8", "training rows: 8 of 16 (--max-train; no timing probe needed)"),
    ("64", "training rows: 16 of 16 (every row of the small training pool; no timing probe needed)"),
])
def test_small_pool_says_why_its_rows_are_used(tmp_path, capsys, monkeypatch, max_train, want):
    from ngp.cli import _regress

    def stop(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(_regress, "_run_folds", stop)
    data = _write(tmp_path, "a,b,y\n" + "".join(f"{a},{b},{t}\n" for a, b, t in _csv_rows(20)))
    assert main(["regress", data, "--max-train", max_train, "--width", "8", "--fixed", "--quiet"]) == 130
    assert want in capsys.readouterr().out


def test_max_memory_reduces_the_training_set_to_what_predicting_needs(tmp_path, capsys):
    """--max-memory 1M: 8 rows' prediction batches need more, so fewer rows are used (as the help says); with
    --n-train the same is refused with one line naming --max-memory."""
    data = _write(tmp_path, "a,b,y\n" + "".join(f"{a},{b},{t}\n" for a, b, t in _csv_rows(20)))
    common = ["regress", data, "--max-train", "8", "--width", "8", "--fixed", "--quiet", "--max-memory", "1M"]
    budget = ["--time-budget", "20"]  # not with --n-train, which is refused with it
    rc = main([*common, *budget])
    out, err = capsys.readouterr()
    assert rc == 0, err
    m = re.search(r"training rows: (\d) of 16 \(--max-train; no timing probe needed\); memory: 8 rows need about "
                  r"\S+ MiB > --max-memory 1 MiB; using (\d)", out)
    assert m and m[1] == m[2] and 2 <= int(m[1]) < 8, out
    assert "finite width n=8" in out
    line = _one_error_line(capsys, main([*common, "--n-train", "8"]))
    assert "--n-train 8: the finite-width posterior needs about" in line and "> --max-memory 1 MiB" in line
    help_text = " ".join(_regress_parser().format_help().split())
    assert "a training set that needs more is reduced to the most rows that fit (--n-train: refused)" in help_text
    big = _write(tmp_path, "a,b,y\n" + "".join(f"{a},{b},{t}\n" for a, b, t in _csv_rows(40)), "big.csv")
    rc = main(["regress", big, *common[4:], *budget])  # a 32-row pool: the probe too runs on the rows that fit
    out, err = capsys.readouterr()
    assert rc == 0, err
    probed = re.search(r"probe: (\d+) training", out)
    assert probed and f"using {probed[1]}" in out, out


def test_expansion_above_the_threshold_reads_above_it():
    assert fmt_above(0.302, 0.3) == "0.302" and fmt_above(0.8, 0.3) == "0.8"
    assert fmt_above(0.3000001, 0.3) == "0.3000001"
    assert fmt_above(0.31, 0.3) == "0.31" and fmt_above(12.0, 0.3) == "12"
    assert cells(Row("finite width n=8", expansion=0.302), truth=False)["1/n size"] == "0.302 (!)"
    assert cells(Row("finite width n=8", expansion=0.2999), truth=False)["1/n size"] == "0.3"
    folds = [[Row("finite width n=8", rmse=1.0, expansion=e)] for e in (0.1, 0.302)]
    assert _aggregate(folds, truth=False)[0]["1/n size"] == "0.302 (!)"


def test_memory_sizes():
    assert memory_size("512M") == 512 * 1024**2 and memory_size("2.5GB") == int(2.5 * 1024**3)
    assert memory_size("4GiB") == 4 * 1024**3 and memory_size(str(2**30)) == 2**30
    with pytest.raises(argparse.ArgumentTypeError):
        memory_size("100K")  # below 1M


# ----------------------------------------------------------------------------- splits, budget, memory
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


def _stub_demo(monkeypatch) -> dict:
    """``ngp demo`` without its fit, finite-width comparison and figure: returns the dict that receives its split."""
    from ngp.cli import _demo
    from ngp.cli._hyper import Hyperparameters

    seen = {}

    def compare(split, make_net, **kwargs):
        seen["split"] = split
        return [Row("GP (infinite width)")], {"prior_s": None}

    monkeypatch.setattr(_demo, "fit_hyperparameters", lambda *a, **k: Hyperparameters(1.0, 0.1, 0.1, "given", "-"))
    monkeypatch.setattr(_demo, "compare", compare)
    monkeypatch.setattr(_demo, "_figure", lambda *a, **k: None)
    return seen


@pytest.mark.parametrize("argv, n_train, n_test, why", [
    ([], 18, 8, "18 training points: every point but 8 held out (seeded) as test points"),
    (["--n-train", "8"], 8, 18, "8 training points (--n-train); the other 18 are test points"),
    (["--n-train", "8", "--n-test", "5"], 8, 5, "the other 18 are test points, 5 of them used (--n-test)"),
])
def test_demo_trains_on_every_point_but_the_held_out_test_points(argv, n_train, n_test, why, monkeypatch, capsys,
                                                                  tmp_path):
    from ngp.cli import _demo

    seen = _stub_demo(monkeypatch)
    assert main(["demo", "--quiet", "--no-nuts", "--out", str(tmp_path), *argv]) == 0
    out = capsys.readouterr().out
    assert f"26 points): {n_train} training points, {n_test} test points" in out and why in out
    dist, _, _ = _demo.profile()
    x = np.concatenate([seen["split"].Xtr[:, 0], seen["split"].Xte[:, 0]])
    assert seen["split"].Xtr.shape[0] == n_train and seen["split"].Xte.shape[0] == n_test
    # the points are the profile's, mapped affinely to inputs: training and test points are distinct points
    assert len(np.unique(np.round(x, 12))) == n_train + n_test
    if n_train + n_test == dist.size:  # every point of the profile is used once
        np.testing.assert_allclose(np.sort(dist[0] + (x - x.min()) * np.ptp(dist) / np.ptp(x)), dist, atol=1e-9)


def _model(train_s=1.0, test_s=0.2, compile_s=5.0):
    return _budget.CostModel(_budget.Probe(8, 2, train_s, test_s, compile_s, 0.0))


def test_cost_model_extrapolates_n4_for_training_and_n3_per_test_row():
    m = _model()
    assert math.isclose(m.training(16), 16.0) and math.isclose(m.per_test(16), 0.1 * 8)
    assert math.isclose(m.estimate(16, 10, folds=2), 5.0 + 2 * (16.0 + 10 * 0.8))


def _brute_work(train, test, n, m):
    """Summed weights max(K_max, 1) over the multisets, counted one by one."""
    w4 = sum(max(max(k[list(c)]), 1.0) for k in train for c in itertools.combinations_with_replacement(range(n), 4))
    w3 = sum(max(max(k[list(c)]), kt, 1.0) for k, kt_row in zip(train, test) for kt in kt_row[:m]
             for c in itertools.combinations_with_replacement(range(n), 3))
    return w4, w3


def test_work_weighs_each_multiset_by_its_largest_variance():
    rng = np.random.default_rng(3)
    train, test = rng.uniform(0.2, 4.0, size=(2, 9)), rng.uniform(0.2, 4.0, size=(2, 3))
    train[0, 5] = 30.0  # an outlying row
    work = _budget.Work(train, test)
    for n, m in ((4, 1), (7, 2), (9, 3)):
        w4, w3 = _brute_work(train, test, n, m)
        assert math.isclose(work.training(n), w4, rel_tol=1e-12) and math.isclose(work.predict(n, m), w3, rel_tol=1e-12)
    assert math.isclose(work.predict(9, 6), 2 * work.predict(9, 3))  # test rows beyond the known: their average


def test_cost_model_with_work_extrapolates_by_weighted_multisets():
    """Rows of variance <= 1: the ratio of the numbers of multisets; an outlying row beyond the probe's rows
    raises the estimate above the count's, one among them lowers it."""
    probe = _budget.Probe(8, 2, 1.0, 0.2, 5.0, 0.0)
    flat = _budget.CostModel(probe, work=_budget.Work(np.full((2, 20), 0.5), np.full((2, 4), 0.5)))
    assert math.isclose(flat.training(16), math.comb(19, 4) / math.comb(11, 4))
    assert math.isclose(flat.predict(16, 4), 0.2 * 2 * math.comb(18, 3) / math.comb(10, 3))
    k = np.ones((1, 20))
    late, early = k.copy(), k.copy()
    late[0, 12], early[0, 3] = 30.0, 30.0
    test = np.ones((1, 4))
    m_late, m_early = (_budget.CostModel(probe, work=_budget.Work(x, test)) for x in (late, early))
    count = math.comb(19, 4) / math.comb(11, 4)
    assert m_late.training(16) > 2 * count and m_early.training(16) < count
    assert m_late.estimate(16, 4) > flat.estimate(16, 4) > m_early.estimate(16, 4)


def test_cost_model_prices_each_fold_by_its_own_rows():
    """k-fold: a split whose pool holds an outlying row costs more than the probe's split; each split predicts at
    most its own test rows; without ``splits`` every fold costs what the probe's split does."""
    probe = _budget.Probe(8, 2, 1.0, 0.2, 5.0, 0.0)
    plain, heavy = np.ones((1, 20)), np.ones((1, 20))
    heavy[0, 10] = 30.0
    w0, w1 = _budget.Work(plain, np.ones((1, 4))), _budget.Work(heavy, np.ones((1, 3)))
    one = _budget.CostModel(probe, work=w0)
    both = dataclasses.replace(one, splits=(w0, w1))
    assert math.isclose(both.training(16, 0), one.training(16)) and both.training(16, 1) > 2 * one.training(16)
    assert math.isclose(both.predict(16, 3, 1), 0.2 * w1.predict(16, 3) / w0.predict(8, 2))
    expect = 5.0 + one.training(16) + one.predict(16, 4) + both.training(16, 1) + both.predict(16, 3, 1)
    assert math.isclose(both.estimate(16, 4, folds=2), expect)
    assert math.isclose(one.estimate(16, 4, folds=2), 5.0 + 2 * (one.training(16) + one.predict(16, 4)))


def test_row_work_reads_the_first_layer_variances_of_the_network():
    """The first hidden layer's variances are C_b + C_W |x|^2 / n0 (an MLP's first pre-activations)."""
    args = _parser().parse_args(["regress", "x.csv", "--target", "y", "--depth", "3", "--c-w", "2.5", "--c-b", "0.1"])
    rng = np.random.default_rng(0)
    Xp, Xt = rng.normal(size=(6, 3)), 3 * rng.normal(size=(2, 3))
    work = row_work(args, Xp, Xt)
    assert work.train.shape == (2, 6) and work.test.shape == (2, 2)  # depth 3: two hidden layers
    np.testing.assert_allclose(work.train[0], 0.1 + 2.5 * np.sum(Xp**2, 1) / 3, rtol=1e-12)
    np.testing.assert_allclose(work.test[0], 0.1 + 2.5 * np.sum(Xt**2, 1) / 3, rtol=1e-12)


def test_cost_model_charges_the_finite_width_fit():
    """With a FitProbe each fold also pays the fit: compile + steps x step seconds x C(N + 3, 4) / C(N_p + 3, 4)
    (the four-row multisets)."""
    fit = _budget.FitProbe(4, 0.5, 3.0, 10)
    assert math.isclose(fit.seconds(4), 3.0 + 10 * 0.5) and math.isclose(fit.seconds(8), 3.0 + 5.0 * 330 / 35)
    assert math.isclose(_budget.FitProbe(2, 0.5, 3.0, 10).seconds(4), 3.0 + 5.0 * 35 / 5)
    assert math.isclose(_budget.FitProbe(8, 0.5, 3.0, 10, gp_s=2.0).seconds(9), 3.0 + 2.0 + 5.0 * 495 / 330)
    m = dataclasses.replace(_model(), fit=fit)
    assert math.isclose(m.estimate(16, 10, folds=2), 5.0 + 2 * (fit.seconds(16) + 16.0 + 10 * 0.8))
    c = _budget.choose(m, pool=200, n_test=20, budget_s=400.0, cap=64, minimum=8)
    plain = _budget.choose(_model(), pool=200, n_test=20, budget_s=400.0, cap=64, minimum=8)
    assert m.estimate(c.n_train, 20) <= 400.0 < m.estimate(c.n_train + 1, 20) and c.n_train < plain.n_train


def test_probe_step_times_the_fastest_later_call():
    calls = []

    def step(n):
        calls.append(n)
        time.sleep({1: 0.3, 2: 0.15}.get(len(calls), 0.05))  # compiling, then a slow call (a busy machine)

    fp = _budget.probe_step(step, 4, 50)
    assert calls == [4, 4, 4] and (fp.n_train, fp.steps) == (4, 50)
    assert 0.04 <= fp.step_s < 0.12 and 0.2 <= fp.compile_s < 0.3


def test_budget_picks_the_largest_affordable_training_set():
    m = _model()
    budget = 60.0
    c = _budget.choose(m, pool=200, n_test=20, budget_s=budget, cap=64, minimum=8, spent_s=10.0)
    assert c.n_test == 20 and m.estimate(c.n_train, 20) <= budget - 10.0 < m.estimate(c.n_train + 1, 20)
    assert "time budget" in c.reason and f"{c.n_train + 1} rows" in c.reason
    c = _budget.choose(m, pool=30, n_test=2, budget_s=1e9, cap=64, minimum=8)
    assert c.n_train == 30 and "all 30 training-pool rows" in c.reason
    c = _budget.choose(m, pool=300, n_test=2, budget_s=1e9, cap=64, minimum=8)
    assert c.n_train == 64 and "--max-train" in c.reason
    c = _budget.choose(m, pool=300, n_test=2, budget_s=1.0, cap=64, minimum=8)
    assert (c.n_train, c.n_test) == (8, 2) and "more than" in c.reason
    # many test rows: the minimum training set with as many test rows as fit (5 + 1 + 0.1 M <= 10)
    c = _budget.choose(m, pool=300, n_test=100, budget_s=10.0, cap=64, minimum=8)
    assert (c.n_train, c.n_test) == (8, 40) and "40 of the 100 test rows" in c.reason
    c = _budget.choose(m, pool=300, n_test=100, budget_s=7.0, cap=64, minimum=8)
    assert (c.n_train, c.n_test) == (8, 20) and "more than" in c.reason


def test_probe_separates_compilation_from_computation():
    import jax
    import jax.numpy as jnp

    def work(nt, mt, mark):
        jax.jit(lambda x: jnp.sin(x) * nt + mt)(jnp.ones(7)).block_until_ready()  # compiles
        time.sleep(0.05)
        mark()
        time.sleep(0.1)

    p = _budget.probe(work, 8, 2)
    assert p.compile_s > 0 and p.n_train == 8 and p.n_test == 2
    assert p.test_s >= 0.09 and p.train_s >= 0.04
    assert p.wall_s >= p.train_s + p.test_s + p.compile_s - 1e-6


def test_probe_compilation_is_at_most_its_wall_time(monkeypatch):
    """Compile events in several threads add up beyond the wall time (a prober at load 10: 65.4 s of compilation in
    a 63.3 s probe, then charged again in every estimate): the probe's compile_s is capped at its wall time."""
    import contextlib

    @contextlib.contextmanager
    def overlapping():
        yield [30.0]  # as if three threads had compiled for 10 s each

    monkeypatch.setattr(_budget, "compile_seconds", overlapping)
    p = _budget.probe(lambda nt, mt, mark: (time.sleep(0.02), mark()), 8, 2)
    assert 0.02 <= p.compile_s == p.wall_s < 1.0


def test_probe_warm_up_is_paid_but_not_timed():
    """The warm-up's compilation counts in ``compile_s`` and its time in ``wall_s``; the timings are
    the timed run's alone (here 0.05 s + 0.1 s against a 0.3 s warm-up)."""
    import jax
    import jax.numpy as jnp

    sizes = []

    def work(nt, mt, mark):
        sizes.append((nt, mt))
        if nt == 4:  # the warm-up: compiles and is slow
            jax.jit(lambda x: jnp.cos(x) * 3.0 + 1.0)(jnp.ones(5)).block_until_ready()
            time.sleep(0.3)
        time.sleep(0.05)
        mark()
        time.sleep(0.1)

    p = _budget.probe(work, 16, 2, warmup=(4, 1))
    assert sizes == [(4, 1), (16, 2)] and (p.n_train, p.n_test) == (16, 2)
    assert p.compile_s > 0
    assert 0.04 <= p.train_s < 0.25 and 0.09 <= p.test_s < 0.25
    assert p.wall_s >= 0.3 + p.train_s + p.test_s


def test_regress_probe_runs_a_warm_up_then_times_the_probe_size(monkeypatch):
    """The CLI's probe warms up on PROBE_WARMUP rows, then times PROBE_TRAIN training rows."""
    from ngp.cli import _regress

    calls = []

    def fake_probe(work, n_train, n_test, *, warmup=None):
        calls.append((n_train, n_test, warmup))
        return _budget.Probe(n_train, n_test, 1.0, 0.1, 0.0, 1.0)

    class Progress:
        def run(self, label, fn):
            return fn(), 0.0

    monkeypatch.setattr(_budget, "probe", fake_probe)
    args = argparse.Namespace(width=[8], noise=0.1, max_memory=None, four_point_order=None, depth=2,
                              activation="tanh", c_w=1.0, c_b=0.0)
    X = np.zeros((30, 2))
    model = _regress._probe(args, X, X[:, :1], X[:1], Progress())
    assert calls == [(_regress.PROBE_TRAIN, 1, (_regress.PROBE_WARMUP[0], 1))]
    assert model.probe.n_train == _regress.PROBE_TRAIN > _regress.PROBE_WARMUP[0]


def test_memory_limit_reduces_the_training_set():
    need = lambda n: 1000 * n**4  # noqa: E731
    n, m = _largest_fitting(64, need, 1000 * 20**4)
    assert n == 20 and m == need(20)
    assert _largest_fitting(10, need, 1e12) == (10, need(10))


# ----------------------------------------------------------------------------- numbers and tables
def test_standardize_is_overflow_safe():
    X = np.array([[1e300, 1.0], [-2e300, 1.0], [3e300, 1.0]])
    Z, Zo, (mu, sd) = standardize(X, np.array([[0.0, 2.0]]))
    assert np.all(np.isfinite(Z)) and np.allclose(Z.mean(axis=0), 0) and np.allclose(Z[:, 0].std(), 1)
    assert np.allclose(Z[:, 1], 0) and np.allclose(Zo[0, 1], 1.0) and np.all(np.isfinite(mu * 0 + sd))
    assert np.allclose((X - mu) / sd, Z)


def test_standardize_treats_a_spread_at_rounding_level_as_constant():
    """A column varying by one ulp became [-1, 1, -1] (mean -1/3: not centred, rounding blown up to unit size); a
    constant column below 5.6e-309 got std inf (1 / its magnitude overflowed, with a RuntimeWarning); ``None`` among
    ``others`` gave a ValueError about shape (), where the docstring promises a TypeError."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Z, (mu, sd) = standardize(np.array([1.0, 1.0 + 2.2e-16, 1.0]))
        assert np.max(np.abs(Z)) < 1e-15 and sd == 1.0 and mu == 1.0
        Z, Zo, (mu, sd) = standardize(np.array([[3e-309], [3e-309]]), np.array([[4e-309]]))
        assert np.all(Z == 0) and sd[0] == 1.0 and Zo[0, 0] == 4e-309 - 3e-309
        Z, _ = standardize(np.array([1.0, 1.0 + 1e-12, 1.0]))  # a real spread (4500 ulp) is still scaled
        np.testing.assert_allclose(Z.std(), 1.0, rtol=1e-3)
        Z, _ = standardize(1.7e18 + 1000.0 * np.arange(6))  # timestamps in ns: ~8 ulp of spread, still scaled
        np.testing.assert_allclose(Z.std(), 1.0, rtol=1e-2)
        Z, _ = standardize(np.array([[1.7e308, 1.0], [-1.7e308, 1.0], [1e308, 1.0]]))  # no overflow beside a constant
        assert np.all(np.isfinite(Z)) and np.all(Z[:, 1] == 0)
    with pytest.raises(TypeError, match=r"others\[0\]: expected an array of real numbers"):
        standardize(np.ones(3), None)


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


def test_notes_print_once_the_library_warnings_that_no_row_flag_reports():
    """The library's own warnings behind a row flag (the expansion parameter, a reference's ESS), raised for real and
    recorded as the commands record them, are left out of the notes when the row says the same; any other warning is
    printed, once."""
    import warnings

    import ngp
    from ngp.cli._common import collect_warnings
    from ngp.reference import importance_posterior

    X = np.array([[0.3, -1.0], [1.2, 0.4]])
    rng = np.random.default_rng(0)
    XA = rng.normal(size=(6, 2))
    with collect_warnings() as messages:
        eps = ngp.MLP(4, 9, activation="tanh").prior(X).expansion_parameter  # above EXPANSION_WARN (test_warnings)
        ref = importance_posterior(ngp.MLP(2, 4, activation="tanh"), XA, 3.0 * np.sin(2 * XA[:, :1]), XA[:1],
                                   noise=1e-4, num_samples=200, seed=0)
        for _ in range(2):
            warnings.warn("fit_hyperparameters: something else", ngp.ConvergenceWarning)
    assert len(messages) == 3, messages
    row = Row("finite width n=9", expansion=eps, truth_ess=float(ref.ess))
    row.flags = [f"unreliable: 1/n expansion parameter {eps:.2g} > 0.3",
                 f"reference unreliable: importance-sampling ESS {ref.ess:.0f} of 200"]
    lines = notes([row], messages, None)
    assert [ln for ln in lines if ln.startswith("warning:")] == ["warning: fit_hyperparameters: something else"]
    row.flags = []  # without the flags every warning is printed
    assert sum(ln.startswith("warning:") for ln in notes([row], messages, None)) == 3


@pytest.mark.parametrize("method", ["exact", "matrix_free"])
def test_notes_leave_out_the_validity_warning_behind_the_untrusted_flag(method):
    """A posterior outside the first-order regime warns (the exact path: terms not small; the matrix-free path:
    outside its validated regime) and its row says "untrusted: ..."; the notes print that once, as the row's flag,
    and still print the library's other warnings."""
    import ngp
    from ngp.cli._common import collect_warnings

    rng = np.random.default_rng(0)
    X = rng.normal(size=(4, 2))
    with collect_warnings() as messages:
        post = ngp.condition(ngp.MLP(2, 2, activation="tanh"), X, 3 * np.sin(2 * X[:, :1]), noise=1e-2,
                             method=method, samples=256).predict(X[:1])
    assert not post.validity.trusted
    row = Row("finite width n=2", flags=["untrusted: " + "; ".join(post.validity.reasons) + " (docs/validity.md)"])
    validity = [w for w in messages if "not small" in w or "validated regime" in w]
    assert len(validity) == 1, messages  # the library raised it, in the text the notes match
    lines = notes([row], messages, None)
    assert not any(w in ln for w in validity for ln in lines)
    assert sum("untrusted" in ln for ln in lines) == 1
    others = [w for w in messages if w not in validity]  # e.g. the prior's expansion parameter (no flag here)
    assert [ln for ln in lines if ln.startswith("warning:")] == [f"warning: {w}" for w in others]


def test_numerical_error_bound_marks_the_row_unreliable():
    """A finite-width row whose mean's numerical error bound exceeds a tenth of its 1/n correction is flagged, and
    the library's own warning about it (a separate check in ngp.condition) is not printed twice."""
    import types
    import warnings

    import ngp

    fake = lambda err, shift: types.SimpleNamespace(mean_error=np.array(err), mean_correction=np.array(shift))  # noqa: E731
    assert numerical_flag(fake([[0.009], [0.0]], [[0.1], [-0.02]]), 2) is None
    assert "is 0.11 times the 1/n correction (0.1)" in numerical_flag(fake([[0.011], [0.0]], [[0.1], [-0.02]]), 2)
    assert numerical_flag(fake([[0.0], [5.0]], [[0.1], [9.0]]), 1) is None  # rows past M (a plotting grid) ignored
    assert numerical_flag(types.SimpleNamespace(mean_error=None), 1) is None  # matrix-free: no bound
    # inputs up to 3 with C_W = 10 (first-layer variances up to 90) and a loose four_point_rtol: a bound above the
    # correction
    X = np.linspace(-1.0, 3.0, 5)[:, None]
    net = ngp.MLP(3, 32, activation="tanh", C_W=10.0, C_b=1e-6)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        post = ngp.condition(net, X, np.sin(X), noise=0.12, four_point_rtol=1e-4).predict(np.array([[0.3], [2.0]]))
    messages = [str(w.message) for w in caught]
    flag = numerical_flag(post, 2)
    assert flag is not None and any("numerical error of the four-point quadrature" in m for m in messages)
    # beyond K ~ 36 the bound may have a floor that four_point_rtol does not move (docs/accuracy.md): more advice
    assert any("numerical error" in m and "may be at their largest and a lower four_point_rtol not lower the bound"
               in m for m in messages)
    row = Row("finite width n=32", flags=[flag])
    lines = notes([row], messages, None)
    assert sum("numerical error" in ln for ln in lines) == 1, lines


def test_hyperparameters_line_names_a_bound_and_passes_other_warnings_on(monkeypatch):
    """The fit's bound and convergence warnings (ngp.ConvergenceWarning) go into the printed line; any other
    warning is passed on."""
    import types
    import warnings

    import ngp
    from ngp.cli._hyper import fit_hyperparameters as cli_fit

    def fit(*args, **kwargs):
        warnings.warn("fit_hyperparameters: C_W ended at its upper bound 10, where the evidence may still rise",
                      ngp.ConvergenceWarning)
        warnings.warn("fit_hyperparameters: the optimiser did not report convergence", ngp.ConvergenceWarning)
        warnings.warn("something else", RuntimeWarning)
        warnings.warn("fit_hyperparameters: the finite-width evidence is not finite", ngp.ExpansionWarning)
        return types.SimpleNamespace(finite_width=False, starts=({"stage": "gp"},), success=True, C_W=(10.0,),
                                     C_b=(1e-6,), noise=0.1, log_evidence=-1.0, at_bounds=(("C_W", "upper", 10.0),))

    monkeypatch.setattr(ngp, "fit_hyperparameters", fit)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        hyper = cli_fit(ngp.MLP(2, 8), np.zeros((3, 1)), np.zeros((3, 1)), noise=0.1, fixed=False)
    assert "1 start, C_W at the fit's upper bound 10; --fixed" in hyper.note
    assert [str(w.message) for w in caught] == ["something else",
                                                "fit_hyperparameters: the finite-width evidence is not finite"]


def test_a_large_gp_fit_starts_from_the_fit_on_its_first_rows(monkeypatch):
    """The fit asks the library to start on the first WARM_ROWS rows (``warm_rows``), which it does above that many
    rows; the line says so when it did. (The library's fit is stubbed, with a first stage above ``warm_rows`` rows:
    ``warm_rows`` is tested in tests/test_hyper.py; the time saved is measured by benchmarks/cli_fit_warm.py.)"""
    import types

    import ngp
    from ngp.cli import _hyper

    monkeypatch.setattr(_hyper, "WARM_ROWS", 24)
    calls = []

    def fit(net, X, Y, **kw):
        calls.append((X.shape[0], float(net.dense_steps()[0].C_W), kw["noise"], kw["finite_width"], kw["warm_rows"]))
        first = ({"stage": f"gp, first {kw['warm_rows']} rows"},) if X.shape[0] > kw["warm_rows"] else ()
        return types.SimpleNamespace(finite_width=kw["finite_width"], starts=first + ({"stage": "gp"},), success=True,
                                     C_W=(1.1,), C_b=(0.01,), noise=0.26, log_evidence=-60.0, at_bounds=(),
                                     net=ngp.MLP(3, 8, C_W=1.1, C_b=0.01))

    monkeypatch.setattr(ngp, "fit_hyperparameters", fit)
    net, X, y = ngp.MLP(3, 8, C_W=1.0, C_b=0.1), np.zeros((60, 2)), np.zeros((60, 1))
    hyper = _hyper.fit_hyperparameters(net, X, y, noise=0.1, fixed=False, rows="60 training-pool rows")
    assert calls == [(60, 1.0, 0.1, False, 24)]
    assert (hyper.C_W, hyper.noise, hyper.log_evidence) == (1.1, 0.26, -60.0)
    assert "evidence of 60 training-pool rows, 1 start from the fit on its first 24;" in hyper.note
    for rows, finite in ((24, False), (24, True), (60, True)):
        calls.clear()
        hyper = _hyper.fit_hyperparameters(net, X[:rows], y[:rows], noise=0.1, fixed=False, finite_width=finite)
        assert calls == [(rows, 1.0, 0.1, finite, 24)]
        assert ("1 start from the fit on its first 24;" in hyper.note) == (rows > 24), hyper.note


def test_folds_are_summarised_as_mean_and_standard_error():
    folds = [[Row("GP", rmse=r, loglik=-r, log_evidence=None, expansion=e, time_s=1.0)]
             for r, e in ((1.0, 0.1), (3.0, 0.5))]
    (c,) = _aggregate(folds, truth=False)
    assert c["test RMSE"] == "2 ± 1" and c["log evidence"] == "-" and c["1/n size"] == "0.5 (!)"
    assert c["time [s]"] == "2.0"
    assert table([c], ["model", "test RMSE"]).splitlines()[2].startswith("GP")


# ----------------------------------------------------------------------------- end to end
@pytest.fixture
def real_csv(tmp_path):
    """A CSV as R writes it (quoted header, row labels), with NA cells and values of order 1e300."""
    lines = ['"","a","b","target"']
    for i, (a, b, t) in enumerate(_csv_rows(12, scale_x=1e300, scale_y=1e300), start=1):
        lines.append(f'"{i}",{a},{b},{t}')
    lines += ['"13",NA,1e300,2e300', '"14",1.0,,2e300']
    return _write(tmp_path, "\n".join(lines) + "\n")


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
    flags = [(s["fold"], f) for s in splits for r in s["rows"] for f in r["flags"]]
    assert flags and all(f.startswith(f"fold {k}: ") for k, f in flags)  # each note says its fold
    assert all(f"finite width n=4: {f}" in out for _, f in flags)


def test_path_follows_the_library_rule_unless_method_is_given():
    from ngp import MatrixFreeConditioned
    from ngp.cli._regress import _path

    top = MatrixFreeConditioned.AUTO_EXACT_MAX
    for method, n, want in (("auto", top, "exact"), ("auto", top + 1, "matrix_free"), ("exact", 500, "exact"),
                            ("matrix-free", 4, "matrix_free")):
        assert _path(argparse.Namespace(method=method), n) == want, (method, n)


def test_regress_takes_the_matrix_free_path_above_the_exact_limit(tmp_path, capsys, monkeypatch):
    """--max-train above 64 with a pool that large (``--method auto``): every pool row, no probe, the matrix-free
    estimator with the given --samples and --seed, run once (the evidence comes with the predictions: a run for it
    alone doubled the work), and its standard errors in the table, the notes and --json."""
    import ngp
    from ngp import _conditioned_mf as cmf
    from ngp.cli import _regress

    rows = _csv_rows(90, seed=4)
    data = _write(tmp_path, "a,b,y\n" + "".join(f"{a},{b},{t}\n" for a, b, t in rows))
    seen = []
    condition = ngp.condition

    def spy(*args, **kwargs):
        cond = condition(*args, **kwargs)
        seen.append((kwargs, cond))
        return cond

    monkeypatch.setattr(ngp, "condition", spy)
    monkeypatch.setattr(_regress, "_probe", lambda *a, **k: pytest.fail("the matrix-free path needs no probe"))
    runs, estimator = [], cmf.mf.matrix_free_posterior
    monkeypatch.setattr(cmf.mf, "matrix_free_posterior", lambda *a, **k: runs.append(a[1][-1][1].shape) or
                        estimator(*a, **k))
    out_json = tmp_path / "res.json"
    rc = main(["regress", data, "--max-train", "100", "--n-test", "3", "--width", "4,64", "--samples", "256",
               "--seed", "3", "--fixed", "--json", str(out_json), "--quiet"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert runs == [(3, 72)]  # one run, at the 3 test rows: both widths and the evidence read it
    assert "training rows: 72 of 72 (every row of the training pool)" in out
    assert ("finite-width path: matrix-free (Monte-Carlo estimate of the vertex terms, 256 samples per layer, "
            "seed 3") in out
    kwargs, cond = seen[-1]  # the comparison's (the memory check before it builds one too, to read its estimate)
    assert all(k["method"] == "matrix_free" for k, _ in seen) and kwargs["samples"] == 256 and kwargs["seed"] == 3
    assert cond.method == "matrix_free" and cond.X_train.shape == (72, 2)
    res = json.loads(out_json.read_text())
    assert res["method"] == "matrix_free" and res["settings"]["method"] == "auto" and res["settings"]["samples"] == 256
    (split,) = res["splits"]
    fw = {r["model"]: r for r in split["rows"] if r["model"].startswith("finite")}
    # the standard errors in the target's units: the estimator's at the test rows, times the training targets' scale
    arr = np.array(rows)
    fit, test = np.array(split["fit_lines"]) - 2, np.array(split["test_lines"]) - 2  # line 2 holds row 0
    _, Xte, _ = standardize(arr[fit, :2], arr[test, :2])
    _, (_, sd) = standardize(arr[fit, 2:])
    for w in (4, 64):
        with pytest.warns(ngp.ExpansionWarning, match="validated regime"):  # as in the CLI's notes: untrusted
            post = (cond if w == 4 else cond.with_width(w)).predict(Xte)
        r = fw[f"finite width n={w}"]
        assert r["mean_se"] == pytest.approx(float(np.max(post.mean_se)) * float(sd[0]), rel=1e-12)
        assert r["var_se"] == pytest.approx(float(np.max(post.var_se)) * float(sd[0]) ** 2, rel=1e-12)
        assert r["log_evidence_se"] == pytest.approx(post.log_evidence_se, rel=1e-12) and r["log_evidence_se"] > 0
        assert f"finite width n={w}: matrix-free estimate (256 samples per layer): standard errors up to" in out
    assert fw["finite width n=64"]["mean_se"] < fw["finite width n=4"]["mean_se"]  # every 1/n term scales with n
    assert "share one matrix-free run (K1 exact, the vertex terms by Monte Carlo)" in out and "probe" not in out
    assert all("±" in c["log evidence"] for c in res["table"] if c["model"].startswith("finite"))


def test_matrix_free_rows_fit_max_memory(tmp_path, capsys):
    """On the matrix-free path --max-memory bounds the estimator's arrays (its memory estimate, predicting every test
    row at once): the largest number of training rows that fits is used and said, and --n-train above it is refused
    with one line."""
    import ngp
    from ngp.cli._regress import _fit_memory

    X = np.random.default_rng(0).normal(size=(72, 2))
    args = argparse.Namespace(depth=3, width=[4], activation="tanh", c_w=1.0, c_b=0.0, noise=0.1, max_memory=1024**2)

    def need(n):
        return ngp.condition(ngp.MLP(3, 4, activation="tanh"), X[:n], X[:n, :1], noise=0.1,
                             method="matrix_free").memory_estimate(3)

    n, note = _fit_memory(72, X, X[:, :1], args, False, path="matrix_free", n_test=3)
    assert need(n) <= 1024**2 < need(n + 1) and n < 72
    assert note == (f"memory: 72 rows need about {need(72) / 1024**2:.3g} MiB with 3 test rows > --max-memory "
                    f"1 MiB; using {n}")
    assert _fit_memory(n, X, X[:, :1], args, False, path="matrix_free", n_test=3) == (n, None)
    data = _write(tmp_path, "a,b,y\n" + "".join(f"{a},{b},{t}\n" for a, b, t in _csv_rows(60)))
    rc = main(["regress", data, "--method", "matrix-free", "--n-train", str(n + 1), "--n-test", "3", "--max-memory",
               "1M", "--fixed"])
    assert f"--n-train {n + 1}: the matrix-free posterior needs about" in _one_error_line(capsys, rc)


def test_regress_budget_path_reports_rows_and_why(real_csv, capsys, monkeypatch):
    """The probe is replaced by a known cost model; the run then uses the rows the budget affords."""
    from ngp.cli import _regress

    monkeypatch.setattr(_regress, "PROBE_TRAIN", 2)
    monkeypatch.setattr(_regress, "MIN_TRAIN", 2)
    model = _budget.CostModel(_budget.Probe(2, 2, 1.0, 0.5, 0.0, 1.0))  # 4 rows: 16 s + 2 x 2 s = 20 s
    monkeypatch.setattr(_regress, "_probe", lambda *a, **k: model)
    rc = main(["regress", real_csv, "--n-test", "2", "--time-budget", "30", "--quiet", "--fixed"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "training rows: 4 of 10 (time budget: 4 rows take an estimated 20 s, 5 rows" in out
    assert "probe: 2 training + 2 test rows" in out and "baseline (training mean)" in out


def test_regress_predictions_stop_at_the_budget_and_every_row_is_scored_on_the_rest(real_csv, tmp_path, capsys):
    """A budget already spent when the predictions start: the first batch of test rows (2 of 4) is predicted, no
    more, and the whole table (baseline, GP, finite width) is what a run asking for just those 2 test rows gives."""
    common = ["regress", real_csv, "--test-fraction", "0.5", "--max-train", "4", "--width", "4", "--fixed", "--quiet"]
    runs = {}
    for name, extra in (("cut", ["--n-test", "4", "--time-budget", "0.001"]), ("asked", ["--n-test", "2"])):
        path = tmp_path / f"{name}.json"
        rc = main(common + extra + ["--json", str(path)])
        out, err = capsys.readouterr()
        assert rc == 0, err
        runs[name] = (out, json.loads(path.read_text()))
    (out, cut), (_, asked) = runs["cut"], runs["asked"]
    (split,), (ref,) = cut["splits"], asked["splits"]
    assert split["test_lines"] == ref["test_lines"] and len(split["test_lines"]) == 2
    assert split["train_lines"] == ref["train_lines"] and ref["cut"] is None
    assert "stopped after 2 of the 4 test rows" in split["cut"] and "stopped after 2 of the 4 test rows" in out
    for a, b in zip(split["rows"], ref["rows"]):
        assert a["model"] == b["model"]
        for key in ("rmse", "loglik", "log_evidence", "expansion"):
            assert (a[key] is None and b[key] is None) or a[key] == pytest.approx(b[key], rel=1e-12), (a["model"], key)
    assert "only 2 test rows" in out


def test_deadline_stop_projects_the_next_batch_from_the_rows_done():
    from ngp.cli._compare import deadline_stop

    now = [100.0]
    clock = lambda: now[0]  # noqa: E731
    uniform = deadline_stop(130.0, 2, clock=clock)
    now[0] = 120.0  # 2 rows in 20 s: the next 2 projected to end at 140 > 130
    assert uniform(2)
    now[0] = 110.0  # 2 rows in 10 s: the next 2 end at 120
    assert not uniform(2)
    # by the cost model: rows 3-4 estimated 3x rows 1-2, so 10 s done project 30 s more
    estimate = [0.0, 1.0, 2.0, 5.0, 8.0].__getitem__
    now[0] = 100.0
    early, late = deadline_stop(135.0, 2, estimate, clock=clock), deadline_stop(145.0, 2, estimate, clock=clock)
    now[0] = 110.0  # ends at 140
    assert early(2) and not late(2)
    # the last batch holds what is left: 4 of 5 rows in 10 s project one more row, 2.5 s (not 4 rows, 10 s)
    now[0] = 100.0
    tight, loose, whole = (deadline_stop(112.0, 4, total=5, clock=clock), deadline_stop(113.0, 4, total=5, clock=clock),
                           deadline_stop(113.0, 4, clock=clock))
    now[0] = 110.0
    assert tight(4) and not loose(4) and whole(4)


def test_later_folds_keep_their_estimated_time():
    from ngp.cli._regress import _deadline

    model = _budget.CostModel(_budget.Probe(2, 2, 1.0, 0.5, 3.0, 1.0))  # 4 rows: 16 s + 2 x 2 s per test row
    # fold 1 of 3 (2 test rows each): the two later folds keep 16 + 4 s each (compiled by the first, as estimated)
    assert _deadline(model, 4, [2, 2, 2], 0, 500.0) == pytest.approx(500.0 - 2 * 20.0)
    assert model.estimate(4, 2, folds=3) == pytest.approx(3.0 + 3 * 20.0)
    assert _deadline(model, 4, [2, 2, 2], 2, 500.0) == pytest.approx(500.0)
    now = time.perf_counter()  # without a cost model the time left is shared equally
    due = _deadline(None, 4, [2, 2], 0, now + 100.0)
    assert now + 49.0 < due < now + 50.5


def test_regress_folds_price_each_fold_by_its_own_rows_and_fit(real_csv, tmp_path, capsys, monkeypatch):
    """--folds 3 under the budget: each fold's Work holds its own pool's and test rows' variances at its own GP fit
    (the run's): over a standardised pool (columns of mean 0 and variance 1) the first layer's mean is C_b + C_W."""
    from ngp.cli import _regress

    monkeypatch.setattr(_regress, "PROBE_TRAIN", 2)
    monkeypatch.setattr(_regress, "MIN_TRAIN", 2)
    seen, inner = [], _budget.choose

    def probe(args, Xp, yp, Xt, progress, hyper=None, **kwargs):
        work = _regress.row_work(args, Xp, Xt, hyper)
        return _budget.CostModel(_budget.Probe(2, 2, 1e-3, 1e-3, 0.0, 1.0), work=work)

    def choose(model, **kwargs):
        seen.append(model)
        return inner(model, **kwargs)

    monkeypatch.setattr(_regress, "_probe", probe)
    monkeypatch.setattr(_budget, "choose", choose)
    out_json = tmp_path / "res.json"
    rc = main(["regress", real_csv, "--folds", "3", "--n-test", "2", "--width", "4", "--quiet",
               "--json", str(out_json)])
    capsys.readouterr()
    assert rc == 0
    (model,) = seen
    splits = json.loads(out_json.read_text())["splits"]
    assert len(model.splits) == 3 and model.splits[0] is model.work
    for work, split in zip(model.splits, splits):
        pool, h = len(split["fit_lines"]), split["hyperparameters"]
        assert work.train.shape == (2, pool) and work.test.shape == (2, 12 - pool)  # 12 complete rows
        assert math.isclose(work.train[0].mean(), h["C_b"] + h["C_W"], rel_tol=1e-9)
    assert len({round(s["hyperparameters"]["C_W"], 9) for s in splits}) == 3  # three fits, one per fold


def test_regress_probe_uses_the_fitted_hyperparameters(real_csv, capsys, monkeypatch):
    """Without --fixed the probe runs with the GP-evidence fit on the pool (the quadrature's cost depends on
    C_W and the noise); when the budget then takes the whole pool, the run reuses that fit (one fit in all)."""
    from ngp.cli import _hyper, _regress

    monkeypatch.setattr(_regress, "PROBE_TRAIN", 2)
    monkeypatch.setattr(_regress, "MIN_TRAIN", 2)
    seen, fitted = [], []

    def probe(args, Xp, yp, Xt, progress, hyper=None, **kwargs):
        seen.append(hyper)
        return _budget.CostModel(_budget.Probe(2, 2, 1e-3, 1e-3, 0.0, 1.0))

    inner = _hyper.fit_hyperparameters

    def counted(*args, **kwargs):
        fitted.append(args[1].shape[0])
        return inner(*args, **kwargs)

    monkeypatch.setattr(_regress, "_probe", probe)
    monkeypatch.setattr(_regress, "fit_hyperparameters", counted)
    rc = main(["regress", real_csv, "--n-test", "2", "--width", "4", "--quiet"])
    out = capsys.readouterr().out
    assert rc == 0
    (hyper,) = seen
    assert hyper is not None and hyper.source == "fitted"
    assert "training rows: 10 of 10 (all 10 training-pool rows fit" in out
    assert fitted == [10] and hyper.describe() in out  # the run's values are the probe's (same rows)


def test_regress_budgets_the_finite_width_fit(real_csv, capsys, monkeypatch, tmp_path):
    """--fit-evidence finite-width: a step of the fit is timed on FIT_PROBE_ROWS rows with the GP fit's values
    (the fit's start), and the rows chosen leave time for FIT_STEPS such steps (the fit is then run, here
    replaced by its start, the GP fit: its cost is not under test). The 10-row pool would be used whole without a probe
    under --fit-evidence gp; here it is probed."""
    from ngp.cli import _hyper, _regress

    monkeypatch.setattr(_regress, "MIN_TRAIN", 2)
    model = _budget.CostModel(_budget.Probe(2, 2, 0.0, 0.0, 0.0, 1.0))  # free: all 10 rows fit without the fit
    monkeypatch.setattr(_regress, "_probe", lambda *a, **k: model)
    seen, fitted = [], []

    def step_work(args, Xp, yp, hyper):
        seen.append((Xp.shape, hyper))
        return lambda n: None

    def probe_step(step, n, steps):
        step(n)
        return _budget.FitProbe(n, 10.0, 0.0, steps)  # a step on FIT_PROBE_ROWS rows takes 10 s

    inner = _hyper.fit_hyperparameters

    def fit(*args, finite_width, **kwargs):
        fitted.append((args[1].shape[0], finite_width))
        return seen[0][1] if finite_width else inner(*args, finite_width=False, **kwargs)

    monkeypatch.setattr(_regress, "fit_step_work", step_work)
    monkeypatch.setattr(_budget, "probe_step", probe_step)
    monkeypatch.setattr(_regress, "fit_hyperparameters", fit)
    rc = main(["regress", real_csv, "--n-test", "2", "--width", "4", "--fit-evidence", "finite-width",
               "--time-budget", "200", "--quiet", "--json", str(tmp_path / "r.json")])
    out = capsys.readouterr().out
    assert rc == 0
    ((shape, hyper),) = seen
    assert shape[0] == 10 and hyper.source == "fitted"  # the GP fit of the pool, the finite-width fit's start
    # FIT_STEPS steps of 10 s x C(N + 3, 4) / C(11, 4): 9 rows 150 s, 10 rows 216.7 s, and the GP stage charged what
    # the pool's GP fit took (it also spends a few of the 200 s)
    assert (_regress.FIT_STEPS, _regress.FIT_PROBE_ROWS) == (10, 8)
    est = re.search(r"training rows: 9 of 10 \(time budget: 9 rows take an estimated (\d+(?:\.\d+)?) s, 10 rows "
                    r"(\d+(?:\.\d+)?) s", out)
    gp = re.search(r"a fit is charged (\d+) s for its GP stage and 10 steps ~ C\(N_train \+ 3, 4\)", out)
    assert est and gp, out
    assert abs(float(est[2]) - float(est[1]) - 200 / 3) <= 1 and abs(float(est[1]) - 150 - int(gp[1])) <= 1
    probe = json.loads((tmp_path / "r.json").read_text())["fit_probe"]  # --json records the fit's probe
    assert (probe["n_train"], probe["step_s"], probe["steps"]) == (8, 10.0, 10)
    assert abs(probe["gp_s"] - int(gp[1])) <= 0.5
    assert fitted == [(10, False), (9, True)]
    assert "a step of the finite-width evidence fit on 8 rows took 10.0 s" in out
    # --n-train: no budget, but the fit's estimate is printed before it starts
    fitted.clear()
    rc = main(["regress", real_csv, "--n-test", "2", "--width", "4", "--fit-evidence", "finite-width",
               "--n-train", "8", "--quiet"])
    out = capsys.readouterr().out
    assert rc == 0 and fitted == [(10, False), (8, True)] and "training rows: 8 of 10 (--n-train)" in out
    est = re.search(r"took 10.0 s \(0 s compiling before\); a fit is charged (\d+) s for its GP stage and 10 steps "
                    r"~ C\(N_train \+ 3, 4\); at 8 rows about (\d+) s", out)
    assert est and abs(int(est[2]) - 100 - int(est[1])) <= 1, out


def test_fit_step_work_is_a_step_of_the_finite_width_fit():
    """The timed step is the finite-width evidence at the given hyperparameters and its gradient in their logs
    (checked against ngp.log_evidence and central differences; a linear network keeps it fast)."""
    import ngp
    from ngp.cli import _hyper, _regress

    args = _parser().parse_args(["regress", "x.csv", "--activation", "linear", "--width", "8", "--depth", "2"])
    X = np.random.default_rng(0).normal(size=(6, 2))
    y = X[:, :1] - 0.5 * X[:, 1:]
    hyper = _hyper.Hyperparameters(1.3, 0.2, 0.4, "fitted", "")
    step = _regress.fit_step_work(args, X, y, hyper)
    grad, value = step(3)

    def evidence(t):
        net = ngp.MLP(2, 8, activation="linear", C_W=math.exp(t[0]), C_b=math.exp(t[1]))
        return float(ngp.log_evidence(net, X[:3], y[:3], noise=math.exp(t[2])))

    t0 = np.log([1.3, 0.2, 0.4])
    assert float(value) == pytest.approx(evidence(t0), rel=1e-10)
    h = 1e-5
    fd = [(evidence(t0 + h * e) - evidence(t0 - h * e)) / (2 * h) for e in np.eye(3)]
    np.testing.assert_allclose(np.asarray(grad), fd, rtol=1e-6, atol=1e-8)
    fp = _budget.probe_step(step, 3, 7)
    assert fp.n_train == 3 and fp.steps == 7 and fp.step_s > 0


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


# ----------------------------------------------------------------------------- README and notebooks
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


@pytest.mark.parametrize("tty", [False, True])
def test_progress_reports_each_stage_and_reraises(tty):
    import io

    from ngp.cli._common import Progress

    class Stream(io.StringIO):
        def isatty(self):
            return tty

    stream = Stream()
    prog = Progress(stream=stream)
    out, dt = prog.run("stage one", lambda: (time.sleep(0.6), 42)[1], estimate=1.0)
    assert out == 42 and dt >= 0.6
    with pytest.raises(ZeroDivisionError):
        prog.run("stage two", lambda: 1 / 0)
    assert list(prog.items(range(3), "loop")) == [0, 1, 2]
    report = prog.library()  # the library's progress option: reports shown beside a bar, none without bars
    assert (report is None) == (not tty)
    if tty:
        prog.run("stage three", lambda: (report(5, 10, "layer 2: four-point values (9 inputs)"), time.sleep(0.7)))
    text = stream.getvalue()
    assert "stage one" in text and "stage two" in text
    if not tty:
        assert "stage one (estimated 1 s) ..." in text and "stage one: done in" in text
    else:
        assert "layer 2: four-point values (9 inputs): 5/10" in text
    quiet = Stream()
    Progress(quiet=True, stream=quiet).run("silent", lambda: None)
    assert quiet.getvalue() == ""


def test_deadline_batches_fit_max_memory_instead_of_fewer_training_rows():
    """The deadline's batches (a fifth of the test rows) are cut to what --max-memory allows: the run keeps its
    training rows (reducing them for the batches shrank a default 64-row run to 36-50 rows at 100-300 test rows),
    and predict no longer refuses the batch (it raised MemoryError before the cap)."""
    import ngp
    from ngp.cli._common import Progress
    from ngp.cli._compare import Split, compare, deadline_batch

    rng = np.random.default_rng(0)
    Xtr, Xte = rng.normal(size=(8, 2)), rng.normal(size=(30, 2))
    net = ngp.MLP(2, 8)
    cond = ngp.condition(net, Xtr, np.sin(Xtr[:, :1]), noise=0.1, method="exact")
    per_row = cond.memory_estimate(1) - cond.memory_estimate(0)
    assert cond.memory_estimate(0) == net.prior(Xtr).memory_estimate() and per_row > 0
    limit = 3 * per_row + per_row // 2  # three rows fit, the deadline's six do not
    assert deadline_batch(30) == 6 and 6 * per_row > limit
    with pytest.raises(MemoryError, match="batch_size=6"):
        ngp.condition(net, Xtr, np.sin(Xtr[:, :1]), noise=0.1, max_memory=limit).predict(Xte, batch_size=6)
    split = Split(Xtr, np.sin(Xtr[:, :1]), Xte, np.sin(Xte[:, :1]), 1.0, 0.0)
    rows, info = compare(split, lambda w: ngp.MLP(2, w), widths=[8], noise=0.1, progress=Progress(quiet=True),
                         options={"method": "exact", "max_memory": limit}, deadline=time.perf_counter() + 600)
    assert [r.model for r in rows][-1] == "finite width n=8" and not info["failed"], info["failed"]
    assert info["posteriors"][8].mean.shape == (30, 1)


def test_deadline_clock_starts_after_the_training_block(monkeypatch):
    """The deadline's stop was made before the exact path's training block, so the first batch's projection counted
    the block (33 s) as prediction time: a 90 s run of 60 diabetes rows stopped after 3 of 12 test rows with 40 s
    left. Now its clock starts when the predictions do."""
    import ngp
    from ngp import _posterior
    from ngp.cli import _compare
    from ngp.cli._common import Progress

    events = []
    evidence = _posterior.Conditioned.log_evidence

    def slow_evidence(self):
        value = evidence.fget(self)
        events.append("training block done")
        return value

    def stop_made(*args, **kwargs):
        events.append("deadline clock started")
        return deadline_stop(*args, **kwargs)

    deadline_stop = _compare.deadline_stop
    monkeypatch.setattr(_posterior.Conditioned, "log_evidence", property(slow_evidence))
    monkeypatch.setattr(_compare, "deadline_stop", stop_made)
    rng = np.random.default_rng(0)
    Xtr, Xte = rng.normal(size=(6, 2)), rng.normal(size=(10, 2))
    split = _compare.Split(Xtr, np.sin(Xtr[:, :1]), Xte, np.sin(Xte[:, :1]), 1.0, 0.0)
    _compare.compare(split, lambda w: ngp.MLP(2, w), widths=[8], noise=0.1, progress=Progress(quiet=True),
                     options={"method": "exact"}, deadline=time.perf_counter() + 600)
    assert events[:2] == ["training block done", "deadline clock started"], events


def test_truth_of_one_network_is_refused_by_name(tmp_path, capsys):
    """Importance sampling needs two draws for its standard errors: --truth 1 ended in the library's
    "num_samples: must be >= 2"; now argparse names --truth (0 still turns it off)."""
    data = _write(tmp_path, "a,b,y\n" + "".join(f"{a},{b},{t}\n" for a, b, t in _csv_rows(20)))
    line = _one_error_line(capsys, main(["regress", data, "--truth", "1", "--quiet"]))
    assert "--truth" in line and ">= 2 (or 0: off)" in line


def _fake_compare(split, make_net, **kwargs):
    """``compare``'s rows and info without the computation: a baseline without a time, like the real one's."""
    rows = [Row("baseline (training mean)", 1.0, -1.0), Row("GP (infinite width)", 0.5, -0.5, -3.0, 0.0, time_s=0.1),
            Row("finite width n=4", 0.4, -0.4, -3.1, 0.1, time_s=0.2)]
    return rows, {"n_test": split.Xte.shape[0], "method": "exact", "prior_s": 1.5, "cut": None}


def test_regress_one_test_row_is_said_in_the_singular(tmp_path, capsys, monkeypatch):
    from ngp.cli import _regress

    monkeypatch.setattr(_regress, "compare", _fake_compare)
    data = _write(tmp_path, "a,b,y\n" + "".join(f"{a},{b},{t}\n" for a, b, t in _csv_rows(5)))
    assert main(["regress", data, "--n-train", "4", "--fixed", "--width", "4", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "split (seed 0): 1 test row (20%, the same for every --n-train), 4-row training pool" in out
    assert "* only 1 test row: the test metrics are noisy" in out and "1 test rows" not in out


def test_regress_folds_table_and_note_say_what_they_sum(tmp_path, capsys, monkeypatch):
    """With --folds the baseline's time read "0.0" (one split: "-"), and the note said "share one computation of
    K1, V" beside the sum of the folds' computations."""
    from ngp.cli import _regress

    monkeypatch.setattr(_regress, "compare", _fake_compare)
    data = _write(tmp_path, "a,b,y\n" + "".join(f"{a},{b},{t}\n" for a, b, t in _csv_rows(12)))
    assert main(["regress", data, "--folds", "3", "--n-train", "4", "--fixed", "--width", "4", "--quiet"]) == 0
    out = capsys.readouterr().out
    rows = {ln[:24].strip(): ln.split()[-1] for ln in out.splitlines() if ln.startswith(("baseline", "GP", "finite"))}
    assert rows == {"baseline (training mean)": "-", "GP (infinite width)": "0.3", "finite width n=4": "0.6"}, out
    assert ("* each fold's finite-width rows share one computation of K1, V and the predictions: 4.5 s in all 3 "
            "folds (not in the rows' times)") in out
    assert notes([], [], 1.5)[0] == ("the finite-width rows share one computation of K1, V and the predictions: "
                                     "1.5 s (not in the rows' times)")  # one split: as before
    # docs/cli.md said the table shows mean ± s.e. over the folds, but "1/n size" is the largest over them
    assert ('* the table shows the mean ± standard error over the 3 folds, but the "1/n size" column is the largest '
            "over the folds and the times are their sums") in out


def test_demo_sizes_the_expansion_on_the_test_points_only():
    """``ngp demo``'s "1/n size" (and flags) covered the plotting grid's points too (0.25 instead of 0.22 at width 8
    with --quick --no-nuts): the grid is now predicted apart, after the test points."""
    import ngp
    from ngp.cli._common import Progress
    from ngp.cli._compare import Split, compare

    rng = np.random.default_rng(0)
    X = rng.normal(size=(6, 2))
    y = np.sin(X[:, :1]) + 0.5 * X[:, 1:]
    split = Split(X[:4], y[:4], X[4:], y[4:], 1.0, 0.0)
    grid = 0.01 * rng.normal(size=(3, 2))  # near 0 (C_b = 0): a larger expansion parameter than the test points'

    def make(w):
        return ngp.MLP(3, w, activation="tanh", C_W=1.0, C_b=0.0)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rows, info = compare(split, make, widths=[4], noise=0.1, progress=Progress(quiet=True), extra_test=grid)
        alone, _ = compare(split, make, widths=[4], noise=0.1, progress=Progress(quiet=True))
        cond = ngp.condition(make(4), split.Xtr, split.ytr, noise=0.1)
        joint = cond.predict(np.concatenate([split.Xte, grid])).expansion_parameter
        on_grid = cond.predict(grid)
    assert rows[-1].expansion == pytest.approx(alone[-1].expansion, rel=1e-12) and joint > 1.05 * rows[-1].expansion
    assert info["posteriors"][4].mean.shape == (2, 1)
    np.testing.assert_allclose(info["grid"]["finite"][4].mean, on_grid.mean, rtol=1e-12)
    np.testing.assert_allclose(info["grid"]["gp"].mean, on_grid.gp.mean, rtol=1e-12)


def test_demo_says_the_scale_of_its_noise_and_one_test_point(tmp_path, capsys, monkeypatch):
    """"noise is a variance in units of the prior's output variance" was loose: the targets are scaled to the
    initial prior's mean output variance on the training points (0.333 at the defaults), and the fit changes the
    prior. Also "1 test points" and "the other 1 are test points"."""
    seen = _stub_demo(monkeypatch)
    for argv, n_test in (([], 8), (["--n-train", "25"], 1)):
        assert main(["demo", "--quiet", "--no-nuts", "--out", str(tmp_path), *argv]) == 0
        out = capsys.readouterr().out
        variance = float(np.var(seen["split"].ytr))
        assert (f"noise is a variance of the targets scaled to variance {variance:.3g} on the training points (the "
                "prior's mean output variance there before the fit, at C_W=1, C_b=0.1)") in out
        assert "units of the prior's output variance" not in out
    assert f"{np.var(seen['split'].ytr):.3g}" == "0.33"  # 25 training points (18: 0.333, the default's)
    assert "25 training points, 1 test point\n" in out and "(--n-train); the other is a test point\n" in out
    help_text = " ".join(next(a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction))
                         .choices["demo"].format_help().split())
    assert "units of the prior's output variance" not in help_text and "0.333 at the defaults" in help_text
