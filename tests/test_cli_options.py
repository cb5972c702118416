"""The command line's options (``ngp.cli``): help with defaults, the old spellings, one-line errors with exit
status 2 (issue 16)."""

import argparse

import pytest

from ngp.cli import _parser, main

from ._cli import one_error_line, write


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
        (["--width", "0"], "--width: expected an integer >= 1"),
        (["--max-memory", "lots"], "--max-memory: expected a size"),
        (["--test-fraction", "1.5"], "--test-fraction: expected a number <= 0.9"),
        (["--c-w", "inf"], "--c-w: expected a finite number"),
    ],
)
def test_bad_options_exit_2_with_one_line(tmp_path, capsys, argv, message):
    rc = main(["regress", write(tmp_path, "a,y\n1,2\n3,4\n5,6\n"), *argv])
    assert message in one_error_line(capsys, rc)


def test_json_pointing_at_a_directory_or_missing_folder(tmp_path, capsys):
    data = write(tmp_path, "a,y\n1,2\n3,4\n5,6\n")
    for target, message in ((tmp_path, "is a directory"), (tmp_path / "nope" / "r.json", "does not exist")):
        rc = main(["regress", data, "--json", str(target)])
        assert message in one_error_line(capsys, rc)


@pytest.mark.parametrize(
    "content,argv,message",
    [
        (None, [], "no such file"),
        ("a,y\n1,2\n3,4\n5,6\n", ["--activation", "nope"], "unknown activation"),
        ("a,y\n1,2\n3,4\n5,6\n", ["--n-train", "5"], "exceeds the 2-row training pool"),
        ("a,y\n1,2\n3,4\n5,6\n", ["--folds", "9"], "more folds"),
        ("a,b\n1,2\nx,3\n4,5\n", [], "column 'a' has a non-numeric value 'x' on line 3"),
    ],
)
def test_bad_inputs_exit_2_with_one_line(tmp_path, capsys, content, argv, message):
    path = str(tmp_path / "missing.csv") if content is None else write(tmp_path, content)
    assert message in one_error_line(capsys, main(["regress", path, *argv]))
