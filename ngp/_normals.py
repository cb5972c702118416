"""Standard normal draws of the network samplers, in a program of their own.

JAX's random kernel (threefry) is slow to compile (about 0.5 s in float64 on CPU). Drawn inside each
network's sampler it is compiled again for every network; drawn here, once per number of normals and
batch, so networks with the same shapes (other activations, other ``C_W``, ``C_b``) share it. The draw
is exactly ``jax.random.normal(key, (count,), dtype)`` per key.
"""

from __future__ import annotations

import functools

import jax

__all__ = ["draws"]


@functools.partial(jax.jit, static_argnums=(1, 2))
def draws(keys, count: int, dtype):
    """``jax.random.normal(key, (count,), dtype)`` for every key of ``keys`` (B, 2): ``(B, count)``."""
    return jax.vmap(lambda k: jax.random.normal(k, (count,), dtype))(keys)
