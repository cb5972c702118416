"""The ``progress`` option of ``net.prior`` (and of everything that builds a prior): reports of the four-point
values as they are computed, the long part of a finite-width prior (``docs/four-point.md``, "Progress").

``progress=True`` shows a bar per table on stderr (tqdm, where installed: the ``plots`` extra) or, without tqdm,
a line when a table starts, every few seconds while it runs and when it ends. A callable is called as
``progress(done, total, desc)`` when a table starts (``done = 0``) and after every batch of multisets; the calls
of one table come one at a time (its batches run on several threads).
"""

from __future__ import annotations

import dataclasses
import sys
import threading
import time

__all__ = ["ProgressOption", "Task", "check_progress", "labelled", "task"]

#: Seconds between the lines of the display without tqdm.
LINE_SECONDS = 5.0


@dataclasses.dataclass(frozen=True)
class ProgressOption:
    """A checked ``progress`` option: ``report`` the user's callable (``None``: the built-in display) and
    ``label`` the layer its tables belong to (e.g. ``"layer 3"``)."""

    report: object = None
    label: str = ""


def check_progress(value):
    """The ``progress`` option checked: ``None`` when off (``False``/``None``), else a :class:`ProgressOption`."""
    if value is None or value is False:
        return None
    if isinstance(value, ProgressOption):
        return value
    if value is True:
        return ProgressOption()
    if callable(value):
        return ProgressOption(value)
    raise TypeError(f"progress: expected True, False or a callable progress(done, total, desc), got {value!r}")


def labelled(progress, label: str):
    """``progress`` (a :class:`ProgressOption` or ``None``) reporting for ``label``."""
    return None if progress is None else dataclasses.replace(progress, label=label)


class Task:
    """The progress of one table's new multisets: :meth:`update` after each batch, :meth:`close` at the end."""

    def __init__(self, progress: ProgressOption, total: int, desc: str, stream=None):
        self.total, self.done = int(total), 0
        self.desc = f"{progress.label}: {desc}" if progress.label else desc
        self._report, self._lock = progress.report, threading.Lock()
        self._stream = sys.stderr if stream is None else stream
        self._bar, self._t0 = None, time.perf_counter()
        self._last = self._t0
        if self._report is not None:
            self._report(0, self.total, self.desc)
            return
        try:
            from tqdm.auto import tqdm
        except ImportError:
            self._line("started")
        else:
            self._bar = tqdm(total=self.total, desc=self.desc, unit="multiset", file=self._stream, leave=False)

    def _line(self, what: str) -> None:
        print(f"[ngp] {self.desc}: {what}", file=self._stream, flush=True)

    def update(self, n: int) -> None:
        with self._lock:
            self.done += int(n)
            if self._report is not None:
                self._report(self.done, self.total, self.desc)
            elif self._bar is not None:
                self._bar.update(int(n))
            elif time.perf_counter() - self._last >= LINE_SECONDS:
                self._last = time.perf_counter()
                self._line(f"{self.done} of {self.total} multisets ({100 * self.done / max(self.total, 1):.0f}%), "
                           f"{self._last - self._t0:.0f} s")

    def close(self) -> None:
        with self._lock:
            if self._bar is not None:
                self._bar.close()
            elif self._report is None:
                self._line(f"{self.total} multisets in {time.perf_counter() - self._t0:.1f} s")


def task(progress, total: int, desc: str):
    """A :class:`Task` for ``total`` multisets, or ``None`` when ``progress`` is off or there is nothing to do."""
    return None if progress is None or total <= 0 else Task(progress, total, desc)
