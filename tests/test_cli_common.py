"""Pieces shared by the subcommands (``ngp.cli._common``): memory sizes and progress (issue 16)."""

import argparse
import time

import pytest

from ngp.cli._common import memory_size



def test_memory_sizes():
    assert memory_size("512M") == 512 * 1024**2 and memory_size("2.5GB") == int(2.5 * 1024**3)
    assert memory_size("4GiB") == 4 * 1024**3 and memory_size(str(2**30)) == 2**30
    with pytest.raises(argparse.ArgumentTypeError):
        memory_size("100K")  # below 1M


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
    text = stream.getvalue()
    assert "stage one" in text and "stage two" in text
    if not tty:
        assert "stage one (estimated 1 s) ..." in text and "stage one: done in" in text
    quiet = Stream()
    Progress(quiet=True, stream=quiet).run("silent", lambda: None)
    assert quiet.getvalue() == ""
