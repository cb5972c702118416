"""Reading a regression table from a CSV file with the standard library's ``csv`` module.

* UTF-8 text (a byte-order mark is fine); anything else is refused with the offending byte.
* The delimiter is detected: ``,``, ``;``, tab or ``|`` (the one that splits the header and the
  first rows into the same number of fields). Decimal commas (``1,5``) are read as decimal points
  (said in the notes) with ``;``, and with tab or ``|`` where the file's numbers use them unambiguously
  (one comma each, no decimal point, not all of them ``1,234``-shaped); elsewhere a comma in a number
  (``1,234``: a thousands separator, or 1.234?) is a non-numeric value, refused.
* Quoted fields and headers (as R and Excel write them); a first column without a name (row
  labels, as R's ``write.csv`` and pandas write them) is ignored.
* Missing cells (empty, ``NA``, ``NaN``, ``N/A``, ``null``, ``None``, ``?``, ``#N/A``) drop their
  row; the count and the first line numbers are reported.
* Lines starting with ``#`` (comments) and blank lines between records are skipped; the comment lines are
  counted in the notes. A first line whose every cell is a number is refused (data, not a header: a header
  written as ``# x1,x2,y``, as ``numpy.savetxt`` writes it, is a comment).
* Every error names the file, the line and the column; line numbers are the file's, also after a quoted
  field that spans several lines.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import os
import re

import numpy as np

from ._common import CLIError

__all__ = ["Table", "read_table", "MISSING"]

#: Cell values (compared case-insensitively, after stripping spaces) that mean "missing".
MISSING = frozenset({"", "na", "nan", "n/a", "null", "none", "?", "#n/a", "-nan"})
DELIMITERS = (",", ";", "\t", "|")


@dataclasses.dataclass(frozen=True)
class Table:
    """A numeric regression table read from a CSV file.

    Attributes:
        X: ``(rows, features)`` float64 inputs; y: ``(rows,)`` float64 targets.
        features: feature column names; target: target column name.
        lines: ``(rows,)`` line number of each kept row in the file (1-based).
        rows_read: data rows in the file; dropped_lines: line numbers of rows dropped for
            missing values.
        delimiter: the detected delimiter; notes: what was ignored or interpreted, for the report.
    """

    X: np.ndarray
    y: np.ndarray
    features: tuple
    target: str
    lines: np.ndarray
    rows_read: int
    dropped_lines: tuple
    delimiter: str
    notes: tuple


def _decode(path: str) -> str:
    with open(path, "rb") as fh:
        raw = fh.read()
    for bom, name in ((b"\xff\xfe\x00\x00", "UTF-32"), (b"\x00\x00\xfe\xff", "UTF-32"), (b"\xff\xfe", "UTF-16"),
                      (b"\xfe\xff", "UTF-16")):
        if raw.startswith(bom):
            raise CLIError(f"DATA: {path} is {name} text (byte-order mark 0x{bom.hex()}), not UTF-8; re-save it as "
                           f"UTF-8, e.g. iconv -f {name.lower()} -t utf-8 in.csv > out.csv")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        bad = raw[exc.start]
        raise CLIError(
            f"DATA: {path} is not UTF-8 text (byte 0x{bad:02x} on line {line}); re-save it as UTF-8, "
            "e.g. iconv -f latin1 -t utf-8 in.csv > out.csv"
        ) from None


def _skipped(line: str) -> bool:
    """A blank line or a comment (its first non-blank character ``#``), skipped between records."""
    s = line.strip()
    return not s or s.startswith("#")


def _records(lines: list, delimiter: str, comments: list) -> list:
    """``[(line_number, fields)]``: the CSV records of ``lines`` (the file's physical lines), each with the number of
    the line it starts on (1-based; a quoted field may span several lines). Blank and comment lines between
    records are skipped, the comments' ``(line_number, line)`` appended to ``comments``; inside a quoted field they
    are the field's text."""
    state = {"start": True, "line": 0}

    def feed():
        for i, line in enumerate(lines, start=1):
            if state["start"]:
                if _skipped(line):
                    if line.strip():
                        comments.append((i, line))
                    continue
                state["start"], state["line"] = False, i
            yield line

    reader = csv.reader(feed(), delimiter=delimiter)
    out = []
    while True:
        state["start"] = True
        try:
            row = next(reader)
        except StopIteration:
            return out
        out.append((state["line"], row))


def _sniff(lines: list) -> str:
    """The delimiter that splits the header and the first rows into one consistent number (> 1) of fields;
    failing that (a ragged file), the one that splits the header into most fields (comma on ties)."""
    sample = [line for line in lines if not _skipped(line)][:20]
    if not sample:
        return ","

    def score(d):
        counts = [len(r) for r in csv.reader(sample, delimiter=d)]
        return (len(set(counts)) == 1 and counts[0] > 1, counts[0])

    return max(DELIMITERS, key=score)


def _number(cell: str, decimal_comma: bool) -> float | None:
    """The cell's value; ``None`` for a missing cell; raises ValueError for text."""
    s = cell.strip()
    if s.lower() in MISSING:
        return None
    if "_" in s:  # Python's float() reads "1_00" as 100; a CSV cell with an underscore is text
        raise ValueError(f"could not convert string to float: {s!r}")
    try:
        return float(s)
    except ValueError:
        if decimal_comma and s.count(",") == 1:
            return float(s.replace(",", "."))
        raise


def _all_numbers(cells: list, decimal_comma: bool) -> bool:
    """Whether every one of ``cells`` (at least one) is a finite number: a line of data, not of column names."""
    def finite(cell):
        try:
            v = _number(cell, decimal_comma)
        except ValueError:
            return False
        return v is not None and math.isfinite(v)

    return bool(cells) and all(finite(c) for c in cells)


_COMMA_NUMBER = re.compile(r"[+-]?[0-9][0-9,]*,[0-9]+([eE][+-]?[0-9]+)?")  # 1,5  1,234,567  -0,5e3
_ONE_COMMA = re.compile(r"[+-]?[0-9]+,[0-9]+([eE][+-]?[0-9]+)?")
_THOUSANDS = re.compile(r"[+-]?[0-9]{1,3}(,[0-9]{3})+")
_DOT_NUMBER = re.compile(r"[+-]?([0-9]+\.[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?")


def _decimal_commas(rows: list) -> bool:
    """Whether the data cells of a tab- or ``|``-delimited file (``rows``, lists of cells) use decimal commas:
    some number has a comma, every such number has exactly one, no number has a decimal point, and not every
    comma is followed by exactly three digits (``1,234``: a thousands separator, or 1.234?)."""
    cells = [c.strip() for row in rows for c in row]
    commas = [c for c in cells if _COMMA_NUMBER.fullmatch(c)]
    return (bool(commas) and all(_ONE_COMMA.fullmatch(c) for c in commas)
            and not all(_THOUSANDS.fullmatch(c) for c in commas) and not any(_DOT_NUMBER.fullmatch(c) for c in cells))


def _integer(cell: str) -> bool:
    try:
        return float(cell).is_integer()
    except ValueError:
        return False


def read_table(path: str, *, target: str | None = None, features=None, ignore=()) -> Table:
    """Read a numeric regression table (see the module docstring).

    Args:
        path: CSV file with a header line.
        target: name of the column to predict (default: the last column).
        features: names of the feature columns (default: every other column).
        ignore: names of columns to leave out.

    Raises:
        CLIError: a missing or unreadable file, an unknown column, a row with the wrong number of
            fields, a non-numeric or non-finite value, or too few complete rows.
    """
    if not os.path.exists(path):
        raise CLIError(f"DATA: no such file: {path}")
    if os.path.isdir(path):
        raise CLIError(f"DATA: {path} is a directory, not a CSV file")
    try:
        text = _decode(path)
    except OSError as exc:
        raise CLIError(f"DATA: cannot read {path}: {exc.strerror or exc}") from None
    physical = text.splitlines()
    delim = _sniff(physical)
    comments = []
    try:
        parsed = _records(physical, delim, comments)
    except csv.Error as exc:
        raise CLIError(f"DATA: {path} is not valid CSV: {exc}") from None
    if len(parsed) < 2:
        raise CLIError(f"DATA: {path} needs a header line and at least one data row")
    # decimal commas: always in ;-files; in tab and | files where the numbers use them unambiguously (a German
    # spreadsheet's tab export), never in ,-files
    decimal_comma = delim == ";" or (delim in ("\t", "|") and _decimal_commas([r for _, r in parsed[1:]]))
    header_line, header = parsed[0]
    header = [h.strip() for h in header]
    notes = []
    delim_name = "tab" if delim == "\t" else repr(delim)
    if delim != ",":
        notes.append(f"delimiter {delim_name} detected")
    if comments:
        nums = [n for n, _ in comments]
        shown = ", ".join(map(str, nums[:5])) + (", ..." if len(nums) > 5 else "")
        notes.append(f"{len(nums)} comment line{'s' if len(nums) > 1 else ''} (starting with #) skipped: "
                     f"line{'s' if len(nums) > 1 else ''} {shown}")
    skip = set()
    if header and header[0] == "" and len(header) > 1:
        skip.add(0)  # row labels (R's write.csv, pandas' index)
        notes.append("first column has no name (row labels): ignored")
    named = [h for k, h in enumerate(header) if k not in skip]
    quoted = '"' in physical[header_line - 1]  # R's write.csv quotes its names: "2019","2020"
    numbers = _all_numbers(named, decimal_comma)
    if numbers and (quoted or target in named or all(_integer(c) for c in named)):
        # names that are numbers: quoted, one of them the --target, or integers (years, wavelengths, pandas'
        # labels 0, 1, ...); a first line of data (decimals, unquoted) is refused below
        notes.append(f"the column names are numbers ({', '.join(named[:6])}{', ...' if len(named) > 6 else ''}): "
                     f"read as names; if line {header_line} is data, add a header line")
    elif numbers:
        before = [(n, line) for n, line in comments if n < header_line]
        also = ("" if not before else f" (line {before[-1][0]}, {before[-1][1].strip()[:60]!r}, starts with # and is "
                "skipped as a comment: remove the # if it names the columns)")
        raise CLIError(f"DATA: line {header_line} of {path}, read as the header, looks like data (every cell a "
                       f"number); the first line must name the columns{also}")
    if any(h == "" for h in named):
        k = header.index("", 1 if 0 in skip else 0)
        raise CLIError(f"DATA: column {k + 1} of the header (line {header_line}) has no name")
    dup = sorted({h for h in named if named.count(h) > 1})
    if dup:
        raise CLIError(f"DATA: duplicate column name(s) in the header: {', '.join(map(repr, dup))}")
    if len(named) < 2:
        raise CLIError(f"DATA: {path} needs at least two columns (a feature and the target); found {len(named)} "
                       f"(the delimiter should be one of , ; tab |)")

    def check_names(names, option):
        for name in names:
            if name not in named:
                raise CLIError(f"{option}: column {name!r} not in {path} (columns: {', '.join(named)})")

    if target is None:
        target = named[-1]
    check_names([target], "--target")
    check_names(list(ignore), "--ignore")
    if target in ignore:
        raise CLIError(f"--ignore: {target!r} is the target column; choose another with --target or leave it out "
                       "of --ignore")
    auto = features is None
    if auto:
        features = [h for h in named if h != target and h not in ignore]
    else:
        check_names(features, "--features")
        if target in features:
            raise CLIError(f"--features: the target column {target!r} cannot also be a feature")
    if not features:
        raise CLIError("DATA: needs at least one feature column besides the target")
    cols = [header.index(h) for h in features] + [header.index(target)]

    values, lines, dropped, commas = [], [], [], []
    for num, row in parsed[1:]:
        if len(row) != len(header):
            raise CLIError(f"DATA: line {num} has {len(row)} fields, the header (line {header_line}) has {len(header)}")
        out = []
        for k in cols:
            try:
                v = _number(row[k], decimal_comma)
            except ValueError:
                hint = "; choose the feature columns with --features or --ignore" if auto else ""
                if "," in row[k] and not decimal_comma and _all_numbers([row[k].replace(",", "")], False):
                    hint = ("; a comma in a number is read as a decimal comma in ;-delimited files, and in tab or "
                            "| files whose numbers all use one (no decimal points, not all 1,234-shaped: thousands "
                            f"separators are not read; this file's delimiter: {delim_name})") + hint
                raise CLIError(f"DATA: column {header[k]!r} has a non-numeric value {row[k].strip()!r} on line {num}"
                               f"{hint}") from None
            if v is not None and not math.isfinite(v):
                raise CLIError(f"DATA: column {header[k]!r} has the non-finite value {row[k].strip()!r} on line {num}")
            if decimal_comma and v is not None and "," in row[k] and not commas:
                commas.append((num, row[k].strip()))
            out.append(v)
        if any(v is None for v in out):
            dropped.append(num)
            continue
        values.append(out)
        lines.append(num)
    rows_read = len(parsed) - 1
    if commas:
        notes.append(f"decimal commas read as decimal points (delimiter {delim_name}; "
                     f"first on line {commas[0][0]}: {commas[0][1]!r})")
    if dropped:
        shown = ", ".join(map(str, dropped[:5])) + (", ..." if len(dropped) > 5 else "")
        notes.append(f"{len(dropped)} of {rows_read} rows dropped for missing values (lines {shown})")
    if len(values) < 3:
        raise CLIError(f"DATA: {len(values)} complete rows in {path}; at least 3 are needed (training and test rows)")
    data = np.array(values, dtype=float)
    const = [k for k in range(data.shape[1]) if np.all(data[:, k] == data[0, k])]
    names = list(features) + [target]
    # constant features are dropped (unless every feature is): standardised to 0 they would still count in the first
    # layer's fan-in (Var W = C_W / n0) and change every model's prior
    drop = [k for k in const if k < len(features)]
    drop = drop if len(drop) < len(features) else []
    for k in const:
        if k == data.shape[1] - 1:
            notes.append(f"the target {target!r} is constant ({data[0, k]:g}): every model predicts it exactly, so "
                         "the comparison says nothing")
        elif k in drop:
            notes.append(f"feature {names[k]!r} is constant ({data[0, k]:g}): it carries no information and is left "
                         "out")
        else:
            notes.append(f"feature {names[k]!r} is constant ({data[0, k]:g}): it carries no information")
    if drop:
        data = np.delete(data, drop, axis=1)
        features = [f for k, f in enumerate(features) if k not in drop]
    return Table(X=data[:, :-1], y=data[:, -1], features=tuple(features), target=target,
                 lines=np.array(lines), rows_read=rows_read, dropped_lines=tuple(dropped), delimiter=delim,
                 notes=tuple(notes))
