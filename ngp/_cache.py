"""Caches of NumPy tables bounded by their size in bytes (quadrature rules, Hermite tables), and tables that
JAX reads without a copy."""

from __future__ import annotations

import functools
import threading

import numpy as np

__all__ = ["aligned_empty", "aligned_zeros", "arrays", "byte_lru", "frozen_lru"]


def aligned_empty(shape, dtype=float) -> np.ndarray:
    """An uninitialised C-contiguous array starting at a 64-byte boundary: JAX's CPU backend uses the buffer of
    such an array in place instead of copying it (``jax.device_put``, or as an argument of a compiled call), so a
    cached read-only table costs its size once, not once more per transfer."""
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape)) * dtype.itemsize
    buf = np.empty(nbytes + 64, dtype=np.uint8)
    start = -buf.ctypes.data % 64
    return buf[start:start + nbytes].view(dtype).reshape(shape)


def aligned_zeros(shape) -> np.ndarray:
    """:func:`aligned_empty` filled with zeros (float64)."""
    out = aligned_empty(shape)
    out[...] = 0.0
    return out


def arrays(x):
    """The NumPy arrays in ``x`` (an array or nested tuples and lists)."""
    if isinstance(x, np.ndarray):
        return [x]
    return [a for y in x for a in arrays(y)] if isinstance(x, (tuple, list)) else []


def frozen_lru(maxsize: int | None = 128):
    """``functools.lru_cache`` whose results' NumPy arrays are made read-only: a cached rule is shared by every
    caller and may be read in place by a pending JAX computation, so a write to it would corrupt both."""
    def deco(fn):
        @functools.lru_cache(maxsize=maxsize)
        @functools.wraps(fn)
        def cached(*args, **kwargs):
            out = fn(*args, **kwargs)
            for a in arrays(out):
                a.setflags(write=False)
            return out

        return cached
    return deco


def byte_lru(limit: int):
    """Cache of a function of hashable arguments whose results hold NumPy arrays (made read-only),
    dropping the least recently used results beyond ``limit`` bytes (the latest result is always kept).
    Safe to call from several threads (two may compute the same result; the first stored is kept).
    The cached function has ``cache_bytes()`` (bytes held) and ``cache_clear()``."""
    def deco(fn):
        cache, size, lock = {}, [0], threading.Lock()

        @functools.wraps(fn)
        def cached(*args):
            with lock:
                hit = cache.pop(args, None)
                if hit is not None:
                    cache[args] = hit  # most recent last
                    return hit
            made = fn(*args)
            with lock:
                hit = cache.pop(args, None)
                if hit is None:
                    hit = made
                    for a in arrays(hit):
                        a.setflags(write=False)
                        size[0] += a.nbytes
                cache[args] = hit
                while size[0] > limit and len(cache) > 1:
                    size[0] -= sum(a.nbytes for a in arrays(cache.pop(next(iter(cache)))))
            return hit

        def cache_clear():
            with lock:
                cache.clear()
                size[0] = 0

        cached.cache_bytes = lambda: size[0]
        cached.cache_clear = cache_clear
        return cached
    return deco
