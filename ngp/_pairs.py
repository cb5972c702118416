"""Bookkeeping of unordered input pairs ``(a <= b)``: the index space of kernels and vertices.

``V`` is symmetric under ``a <-> b``, ``c <-> d`` and ``(ab) <-> (cd)`` only, so it is stored as a
symmetric ``P x P`` matrix over the ``P = N (N + 1) / 2`` unordered pairs (``docs/theory.md``,
"Conventions").
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["Pairs", "multiset_code", "is_concrete", "array_module"]


def is_concrete(*arrays) -> bool:
    """True when no argument is a JAX tracer (values known now, nothing to differentiate)."""
    return not any(isinstance(t, jax.core.Tracer) for t in arrays)


def array_module(*arrays):
    """``numpy`` for concrete arguments, ``jax.numpy`` when any is traced: the engine's bookkeeping runs
    in NumPy on concrete kernels (eager ``jax.numpy`` compiles every operation for every new shape)."""
    return np if is_concrete(*arrays) else jnp


@dataclasses.dataclass(frozen=True, eq=False)
class Pairs:
    """Index bookkeeping for the ``P = N(N+1)/2`` unordered pairs ``a <= b``."""

    N: int
    a: np.ndarray  # (P,)
    b: np.ndarray  # (P,)
    index: np.ndarray  # (N, N) pair index of (a, b) and (b, a)
    cols: np.ndarray  # (P, 3) pair indices of (a, a), (b, b), (a, b)
    diag: np.ndarray  # (P,) bool, a == b

    @classmethod
    @functools.lru_cache(maxsize=32)
    def of(cls, N: int) -> "Pairs":
        a, b = np.triu_indices(N)
        index = np.empty((N, N), dtype=np.int64)
        index[a, b] = np.arange(a.size)
        index[b, a] = np.arange(a.size)
        cols = np.stack([index[a, a], index[b, b], index[a, b]], axis=1)
        return cls(N, a, b, index, cols, a == b)

    @property
    def P(self) -> int:
        return self.a.size

    def pack(self, M):
        """``(N, N)`` symmetric matrix -> ``(P,)`` vector over pairs (NumPy or JAX, as given)."""
        return _array(M)[self.a, self.b]

    def unpack(self, v):
        """``(P,)`` -> ``(N, N)``."""
        return _array(v)[self.index]

    def unpack4(self, Vp):
        """``(P, P)`` -> ``(N, N, N, N)`` with ``V[a, b, c, d] = V_(ab)(cd)``."""
        return _array(Vp)[self.index[:, :, None, None], self.index[None, None, :, :]]


def _array(M):
    return M if isinstance(M, jax.core.Tracer) else np.asarray(M)


def multiset_code(t, N: int):
    """Integer code of sorted 4-tuples ``t[..., :4]`` of indices in ``range(N)`` (for lookups)."""
    t = np.asarray(t, dtype=np.int64)
    return ((t[..., 0] * N + t[..., 1]) * N + t[..., 2]) * N + t[..., 3]


def multiset_rows(codes, N: int) -> np.ndarray:
    """The sorted 4-tuples ``(M, 4)`` of :func:`multiset_code` values ``codes`` (``(M,)``)."""
    codes = np.asarray(codes, dtype=np.int64).reshape(-1)
    return np.stack([(codes // N**k) % N for k in (3, 2, 1, 0)], axis=1)
