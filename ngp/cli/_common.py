"""Pieces shared by the ``ngp`` subcommands: errors, argument types, tables, progress, warnings.

Every bad input ends as one line on stderr and exit code 2 (:class:`CLIError`, or
:class:`Parser`'s one-line ``error``); never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import re
import sys
import tempfile
import threading
import time
import warnings

__all__ = [
    "CLIError",
    "Parser",
    "finite_float",
    "int_at_least",
    "activation_name",
    "memory_size",
    "int_list",
    "name_list",
    "output_file",
    "output_dir",
    "given_options",
    "fmt_above",
    "plural",
    "table",
    "fmt",
    "Progress",
    "collect_warnings",
    "enable_x64",
]


class CLIError(Exception):
    """Bad user input; reported as one line on stderr, exit code 2."""


class Parser(argparse.ArgumentParser):
    """``argparse`` with one-line errors: ``ngp regress: error: <message> (see ngp regress --help)``."""

    def error(self, message):  # noqa: D401 - argparse API
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")

    def parse_args(self, args=None, namespace=None):
        """``argparse``'s, but an argument nobody knows is reported by the subcommand given (``ngp regress: error:
        unrecognized arguments: --bogus (see 'ngp regress --help')``), whose options it was meant for; and a value
        that looks like a negative number or size (``--max-memory -4G``, ``--noise -1e-3``) is the option's value,
        checked by its type, not an unknown option ("expected one argument")."""
        args = sys.argv[1:] if args is None else list(args)
        args, extra = self.parse_known_args(_negative_values(self, args), namespace)
        if extra:
            self._chosen(args).error(f"unrecognized arguments: {' '.join(extra)}")
        return args

    def _chosen(self, args) -> argparse.ArgumentParser:
        """The parser of the subcommand that ``args`` ran (``self`` without one)."""
        for action in self._actions:
            if isinstance(action, argparse._SubParsersAction):
                sub = action.choices.get(getattr(args, action.dest, None))
                if sub is not None:
                    return sub._chosen(args) if isinstance(sub, Parser) else sub
        return self


def _parsers(parser: argparse.ArgumentParser):
    """``parser`` and its subcommands' parsers, at every depth."""
    parsers = [parser]
    while parsers:
        p = parsers.pop()
        yield p
        parsers.extend(c for a in p._actions if isinstance(a, argparse._SubParsersAction) for c in a.choices.values())


def _value_options(parser: argparse.ArgumentParser) -> set[str]:
    """The option strings of ``parser`` and its subcommands that take one value."""
    return {s for p in _parsers(parser) for a in p._actions if a.option_strings and a.nargs is None
            for s in a.option_strings}


_NEGATIVE = re.compile(r"-\.?[0-9][0-9A-Za-z.+-]*")


def _negative_values(parser: argparse.ArgumentParser, argv: list[str]) -> list[str]:
    """``argv`` with ``--option -4G`` joined to ``--option=-4G`` where ``--option`` takes a value and ``-4G`` looks
    like a number or size (argparse reads ``-4G`` and ``-1e-3``, unlike ``-4``, as an option)."""
    options, out = _value_options(parser), []
    it = iter(range(len(argv)))
    for i in it:
        if argv[i] == "--":
            return out + argv[i:]
        if argv[i] in options and i + 1 < len(argv) and _NEGATIVE.fullmatch(argv[i + 1]):
            out.append(f"{argv[i]}={argv[i + 1]}")
            next(it)
        else:
            out.append(argv[i])
    return out


# ----------------------------------------------------------------------------- argument types
def finite_float(*, minimum: float | None = None, strict: bool = False, maximum: float | None = None):
    """An argparse type: a finite float, optionally ``>= minimum`` (``> minimum`` if ``strict``)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
        if minimum is not None and (value <= minimum if strict else value < minimum):
            raise argparse.ArgumentTypeError(f"expected a number {'>' if strict else '>='} {minimum:g}, got {text!r}")
        if maximum is not None and value > maximum:
            raise argparse.ArgumentTypeError(f"expected a number <= {maximum:g}, got {text!r}")
        return value

    return parse


def int_at_least(minimum: int, *, off: int | None = None, maximum: int | None = None):
    """An argparse type: an integer ``>= minimum`` (and ``<= maximum`` if given), or exactly ``off``, which turns the
    option off."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum and value != off:
            also = "" if off is None else f" (or {off}: off)"
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}{also}, got {text!r}")
        if maximum is not None and value > maximum:
            raise argparse.ArgumentTypeError(f"expected an integer <= {maximum}, got {text!r}")
        return value

    return parse


_UNITS = {"": 1, "B": 1, "K": 1024, "KB": 1024, "M": 1024**2, "MB": 1024**2, "G": 1024**3, "GB": 1024**3,
          "T": 1024**4, "TB": 1024**4}


def activation_name(text: str) -> str:
    """An argparse type: a name from ``ngp.ACTIVATIONS`` (in any case, as the library reads it)."""
    from ngp import ACTIVATIONS

    if text.strip().lower() not in ACTIVATIONS:
        raise argparse.ArgumentTypeError(f"unknown activation {text!r}; expected one of {', '.join(ACTIVATIONS)}")
    return text


def memory_size(text: str) -> int:
    """An argparse type: bytes from ``4G``, ``512M``, ``2.5GB`` or a plain number of bytes (binary units)."""
    t = text.strip().upper().replace("IB", "B")
    num = t.rstrip("KMGTB")
    unit = t[len(num):]
    try:
        value = float(num) * _UNITS[unit]
    except (ValueError, KeyError):
        raise argparse.ArgumentTypeError(f"expected a size such as 4G, 512M or 2.5GB, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive size such as 4G, 512M or 2.5GB, got {text!r}")
    if not math.isfinite(value) or value < 1024**2:
        raise argparse.ArgumentTypeError(f"expected a size of at least 1M, got {text!r}")
    return int(value)


def _items(text: str, what: str, one) -> list:
    """The comma-separated items of ``text``, each parsed by ``one``; empty items and repeats are refused."""
    parts = [p.strip() for p in text.split(",")]
    if not any(parts):
        raise argparse.ArgumentTypeError(f"expected comma-separated {what}, got {text!r}")
    if not all(parts):
        raise argparse.ArgumentTypeError(f"empty item in {text!r}; expected comma-separated {what}")
    values = [one(p) for p in parts]
    dup = next((v for k, v in enumerate(values) if v in values[:k]), None)
    if dup is not None:
        raise argparse.ArgumentTypeError(f"{dup!r} is given twice in {text!r}")
    return values


def int_list(minimum: int):
    """An argparse type: comma-separated distinct integers ``>= minimum`` (``8,32,128``)."""
    one = int_at_least(minimum)
    return lambda text: _items(text, "integers", one)


def name_list(text: str) -> list[str]:
    """An argparse type: comma-separated distinct column names."""
    return _items(text, "column names", str)


def _try_write_file(text: str, path: str) -> None:
    """Refuse the option's value ``text`` unless the file ``path`` can be opened for writing: tried (opened for
    appending and closed, so an existing file is left as it is; one made by the try is removed again), since
    ``os.access`` says yes to root for files that cannot be made (``/proc/x.json``)."""
    target = os.path.realpath(path)  # a symbolic link's target (a dangling link's too: the try would make it)
    existed = os.path.exists(target)
    if existed and not os.path.isfile(target):  # a pipe or device: opening one may block
        if not os.access(target, os.W_OK):
            raise argparse.ArgumentTypeError(f"{text!r} cannot be written (permission denied)")
        return
    try:
        with open(target, "a", encoding="utf-8"):
            pass
    except OSError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} cannot be written ({exc.strerror or exc})") from None
    if not existed:
        with contextlib.suppress(OSError):
            os.remove(target)


def output_file(text: str) -> str:
    """An argparse type: a file path that can be written (tried before any work starts: :func:`_try_write_file`)."""
    path = os.path.abspath(os.path.expanduser(text))
    if os.path.isdir(path):
        raise argparse.ArgumentTypeError(f"{text!r} is a directory; give a file name")
    if not os.path.isdir(os.path.dirname(path)):
        raise argparse.ArgumentTypeError(f"the folder of {text!r} does not exist")
    _try_write_file(text, path)
    return text


def output_dir(text: str) -> str:
    """An argparse type: a folder that exists or can be made, and written (checked before any work starts).

    Tried, not asked of ``os.access`` (which says yes to root for ``/proc``): a temporary file is made and removed
    in an existing folder, and a temporary folder in the nearest existing one above a new folder (the command makes
    the new folders only when it writes the figure, so nothing is left behind by a run refused later)."""
    path = os.path.abspath(os.path.expanduser(text))
    while not os.path.exists(path):  # the nearest existing folder is where the new ones are made
        path = os.path.dirname(path)
    if not os.path.isdir(path):
        raise argparse.ArgumentTypeError(f"{text!r} is not a folder ({path} is a file); give a folder name")
    new = path != os.path.abspath(os.path.expanduser(text))
    try:
        if new:
            os.rmdir(tempfile.mkdtemp(prefix=".ngp-write-test-", dir=path))
        else:
            fd, tmp = tempfile.mkstemp(prefix=".ngp-write-test-", dir=path)
            os.close(fd)
            os.remove(tmp)
    except OSError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} cannot be written ({exc.strerror or exc})") from None
    return text


def given_options(parser: argparse.ArgumentParser, argv: list[str]) -> set[str]:
    """The destinations of the options given in ``argv`` (not filled in by defaults): ``parser`` is parsed again
    with every default suppressed (``parser`` is changed: build a fresh one)."""
    for p in _parsers(parser):
        p._defaults.clear()
        for action in p._actions:
            action.default = argparse.SUPPRESS
    return set(vars(parser.parse_args(argv)))


# ----------------------------------------------------------------------------- output
def fmt(value, spec: str = ".4g") -> str:
    """A number for a table cell (``-`` for ``None``)."""
    if value is None:
        return "-"
    return format(value, spec)


def plural(n: int, noun: str) -> str:
    """``n`` and the noun, plural unless ``n`` is 1: ``1 test row``, ``2 test rows``."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def fmt_above(value: float, limit: float, digits: int = 2) -> str:
    """``value`` (> ``limit``) with at least ``digits`` significant digits and enough more to read above ``limit``."""
    for d in range(digits, 18):
        text = format(value, f".{d}g")
        if float(text) > limit:
            break
    return text


def table(rows: list[dict], columns: list[str]) -> str:
    """A plain-text table of ``rows`` (dicts of strings) with the given columns."""
    cells = [[str(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    line = "  ".join(c.ljust(w) for c, w in zip(columns, widths))
    sep = "  ".join("-" * w for w in widths)
    body = ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join([line.rstrip(), sep, *(b.rstrip() for b in body)])


# ----------------------------------------------------------------------------- progress
class Progress:
    """Progress of the long stages on stderr (stdout stays the results).

    On a terminal with tqdm installed every stage gets a bar; a stage with an estimated duration
    shows elapsed against the estimate, and beside it the library's latest report (:meth:`library`:
    which layer's four-point values, how many of how many). Elsewhere (pipes, CI) each stage prints one
    line when it starts and one when it ends. ``quiet`` silences both.
    """

    def __init__(self, *, quiet: bool = False, stream=None):
        self.quiet = quiet
        self.stream = sys.stderr if stream is None else stream
        self._status = ""
        self._tqdm = None
        if not quiet and getattr(self.stream, "isatty", lambda: False)():
            try:
                from tqdm.auto import tqdm

                self._tqdm = tqdm
            except ImportError:  # pragma: no cover - tqdm comes with the plots extra
                pass

    def note(self, text: str) -> None:
        if not self.quiet:
            print(f"[ngp] {text}", file=self.stream, flush=True)

    def items(self, iterable, desc: str, total: int | None = None):
        """Iterate with a bar (terminal) or start/end lines."""
        if self.quiet:
            yield from iterable
            return
        if self._tqdm is not None:
            yield from self._tqdm(iterable, desc=desc, total=total, file=self.stream, leave=False)
            return
        t0 = time.perf_counter()
        self.note(f"{desc} ...")
        yield from iterable
        self.note(f"{desc}: done in {time.perf_counter() - t0:.1f} s")

    def library(self):
        """The library's ``progress`` option for the stages run here: ``None`` without bars, else a callable
        whose latest report is shown beside the running stage's bar."""
        if self.quiet or self._tqdm is None:
            return None

        def report(done: int, total: int, desc: str) -> None:
            self._status = f"{desc}: {done}/{total}"

        return report

    def run(self, desc: str, fn, *, estimate: float | None = None):
        """``fn()`` with progress; returns ``(result, seconds)``.

        With an ``estimate`` (seconds) the bar shows the elapsed time against it. The work runs in
        a helper thread so that the bar moves while it computes; exceptions are re-raised here.
        """
        t0 = time.perf_counter()
        est = f" (estimated {estimate:.0f} s)" if estimate is not None else ""
        if self.quiet or self._tqdm is None:
            self.note(f"{desc}{est} ...")
            out = fn()
            dt = time.perf_counter() - t0
            self.note(f"{desc}: done in {dt:.1f} s")
            return out, dt
        box = {}

        def work():
            try:
                box["out"] = fn()
            except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
                box["exc"] = exc

        worker = threading.Thread(target=work, daemon=True)
        total = None if estimate is None else max(1.0, float(estimate))
        bar = self._tqdm(total=total, desc=desc + est, file=self.stream, leave=False, unit="s",
                         bar_format="{desc}: {bar} {elapsed}{postfix}" if total else "{desc}: {elapsed}{postfix}")
        self._status = ""
        with bar:
            worker.start()
            while worker.is_alive():
                worker.join(0.5)
                now = time.perf_counter() - t0
                bar.n = min(now, total) if total else now
                bar.set_postfix_str(self._status, refresh=False)
                bar.refresh()
        dt = time.perf_counter() - t0
        if "exc" in box:
            raise box["exc"]
        return box["out"], dt


@contextlib.contextmanager
def collect_warnings():
    """Record the library's warnings (to print them after the table instead of mid-output).

    Yields a list that receives each distinct message once.
    """
    messages: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            yield messages
        finally:
            for w in caught:
                if issubclass(w.category, DeprecationWarning):
                    continue
                text = str(w.message)
                if text not in messages:
                    messages.append(text)


def enable_x64() -> None:
    """The CLI computes in float64 (the library itself never flips this at import) and keeps its
    compiled programs on disk (:func:`enable_compilation_cache`)."""
    import jax

    jax.config.update("jax_enable_x64", True)
    enable_compilation_cache()


#: Environment variable naming the folder of the CLI's JAX compilation cache ("" turns the cache off).
CACHE_ENV = "NGP_CACHE_DIR"


def compilation_cache_dir() -> str | None:
    """The folder of the CLI's persistent compilation cache, or ``None`` (off).

    ``$NGP_CACHE_DIR`` if set (empty: off), else ``$XDG_CACHE_HOME/ngp/jax`` (``~/.cache/ngp/jax``).
    """
    path = os.environ.get(CACHE_ENV)
    if path is None:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        path = os.path.join(base, "ngp", "jax")
    return path or None


def enable_compilation_cache() -> str | None:
    """Keep JAX's compiled programs on disk so a later run skips compiling them (``docs/cli.md``).

    Every array shape the finite-width computation meets costs a compilation (most of a first
    run's time on a loaded machine); with the cache a later run on any data of the same sizes
    loads them instead. Returns the folder, or ``None`` when off or not writable (then nothing changes).
    """
    path = compilation_cache_dir()
    if path is None:
        return None
    try:
        os.makedirs(path, exist_ok=True)
        if not os.access(path, os.W_OK):
            return None
    except OSError:
        return None
    import jax

    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
    return path
