"""Standard normal draws of the network samplers, one compiled program per bucket of sizes.

JAX's random kernel (threefry) is slow to compile (about 0.5 s in float64 on CPU) and is compiled
for every shape. The samplers draw :func:`size` ``(count)`` normals per network, ``count`` rounded up
to a power of 2, in a program of their own (:func:`draws`), and use the first ``count``. With JAX's
partitionable threefry (its default) a prefix of a longer draw is the shorter draw itself, so the
numbers are exactly ``jax.random.normal(key, (count,))`` whatever the bucket; without it the size is
not rounded.
"""

from __future__ import annotations

import functools

import jax

__all__ = ["size", "draws"]

#: Smallest bucket (normals per network).
_MIN_SIZE = 256


def size(count: int) -> int:
    """Normals drawn per network for ``count`` used ones: the next power of 2 (at least 256) when a prefix of a
    draw is the shorter draw (partitionable threefry), else ``count``."""
    if not jax.config.jax_threefry_partitionable:
        return int(count)
    return max(_MIN_SIZE, 1 << (int(count) - 1).bit_length())


@functools.partial(jax.jit, static_argnums=(1, 2))
def draws(keys, n: int, dtype):
    """``jax.random.normal(key, (n,), dtype)`` for every key of ``keys`` (B, 2): ``(B, n)``."""
    return jax.vmap(lambda k: jax.random.normal(k, (n,), dtype))(keys)
