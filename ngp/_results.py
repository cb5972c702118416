"""Frozen result records that hold arrays: identity equality and a short ``repr``.

A dataclass's generated ``__eq__`` compares array fields with ``==`` and then asks for their truth value (a
``ValueError`` for any array of more than one entry), and its ``__hash__`` hashes them (a ``TypeError``); its
``repr`` prints every array in full (79,062 characters for a depth flow of 1000 layers). :func:`result` makes a
frozen dataclass that compares and hashes by identity, as NumPy arrays themselves cannot be compared to a bool, and
whose ``repr`` shows arrays of more than :data:`SHOWN` entries by shape and dtype.
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np

__all__ = ["result", "short_repr", "SHOWN"]

#: Arrays (and sequences) of at most this many entries are shown in full in a result's ``repr``.
SHOWN = 8


def short_repr(value) -> str:
    """``repr`` of a field: an array of more than :data:`SHOWN` entries as ``array(shape=..., dtype=...)``, a long
    sequence or mapping by its length, anything else as itself."""
    if hasattr(value, "shape") and hasattr(value, "dtype") and not np.isscalar(value):
        if int(np.prod(value.shape)) <= SHOWN:
            text = np.array2string(np.asarray(value), precision=6, separator=", ", max_line_width=10**6)
            return "array(" + re.sub(r"\s*\n\s*", " ", text) + ")"  # on one line
        return f"array(shape={tuple(value.shape)}, dtype={value.dtype})"
    if isinstance(value, (list, tuple)) and len(value) > SHOWN:
        return f"{type(value).__name__}(len={len(value)})"
    if isinstance(value, dict) and len(value) > SHOWN:
        return f"dict(len={len(value)})"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k!r}: {short_repr(v)}" for k, v in value.items()) + "}"
    return repr(value)


def _repr(self) -> str:
    fields = (f for f in dataclasses.fields(self) if f.repr)
    return f"{type(self).__name__}(" + ", ".join(f"{f.name}={short_repr(getattr(self, f.name))}"
                                                 for f in fields) + ")"


def result(cls):
    """``dataclasses.dataclass(frozen=True, eq=False)`` with the short ``repr`` of :func:`short_repr` (unless the
    class defines its own)."""
    own_repr = "__repr__" in cls.__dict__
    cls = dataclasses.dataclass(frozen=True, eq=False, repr=False)(cls)
    if not own_repr:
        cls.__repr__ = _repr
    return cls
