"""Helpers of the command-line tests: a data file written from text, and the one line a refusal prints."""


def write_data(tmp_path, text, name="data.csv", encoding="utf-8"):
    """``text`` (str, encoded with ``encoding``, or bytes) written to ``tmp_path / name``; returns the path."""
    path = tmp_path / name
    path.write_bytes(text.encode(encoding) if isinstance(text, str) else text)
    return str(path)


def one_error_line(capsys, rc):
    """The one line on stderr of a run refused with exit code 2 (``rc``), without a traceback."""
    err = capsys.readouterr().err
    assert rc == 2, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]
