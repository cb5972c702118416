"""Infinite-width (NNGP) kernel recursion of an MLP (``docs/theory.md``, "Infinite-width kernel").

``K^(1) = C_b + C_W X X^T / n0`` and ``K^(l+1) = C_b + C_W <s(z_a) s(z_b)>_{K^(l)}``,
with the hyperparameters of the layer being produced.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from ._activations import Activation
from ._gaussian import kernel_bucket, pair_gh, pair_matrix
from ._validate import device

__all__ = ["METHODS", "KERNEL_OPTIONS", "first_layer_kernel", "dense_kernel", "two_point_matrix", "kernel_map"]

#: Ways of computing two-point expectations: closed form where known (``"auto"``),
#: the Mehler series (``"mehler"``), or a dense 2-D Gauss-Hermite rule (``"quadrature"``).
METHODS = ("auto", "closed", "mehler", "quadrature")
#: The options of :func:`two_point_matrix` (every layer kind passes exactly these on to it).
KERNEL_OPTIONS = ("method", "terms", "nodes", "quad_nodes")


#: Concrete kernels of up to this many inputs are computed at a bucketed size (:func:`_bucketed`).
BUCKET_MAX = 512


def first_layer_kernel(X, C_W, C_b):
    """``K^(1) = C_b + C_W X X^T / n0`` for inputs ``X`` of shape ``(N, n0)`` (``C_W``, ``C_b`` may be traced;
    one compiled program per bucket of ``N``, :func:`_bucketed`)."""
    return _bucketed(_first_layer_kernel, X, C_W, C_b, square=False)


def dense_kernel(E2, C_W, C_b):
    """``C_b + C_W E2``: a dense layer's kernel from the two-point function ``E2`` ``(N, N)`` of its input
    (``C_W``, ``C_b`` may be traced; one compiled program per bucket of ``N``, :func:`_bucketed`)."""
    return _bucketed(_dense_kernel, E2, C_W, C_b)


@jax.jit
def _first_layer_kernel(X, C_W, C_b):
    return C_b + C_W * (X @ X.T) / X.shape[1]


@jax.jit
def _dense_kernel(E2, C_W, C_b):
    return C_b + C_W * E2


def _bucketed(fn, A, *args, square: bool = True):
    """``fn(A, *args)``, an ``(N, N)`` result whose entry ``(a, b)`` depends on rows ``a`` and ``b`` of ``A``
    (``(N, n0)``) only, or, ``square``, on the entries ``(a, a)``, ``(b, b)``, ``(a, b)``, ``(b, a)`` of ``A``
    ``(N, N)`` only: with a concrete ``A`` of up to :data:`BUCKET_MAX` rows and concrete ``args``, ``A`` is
    zero-padded to :func:`~ngp._gaussian.kernel_bucket` ``(N)`` rows (and columns, ``square``; the sizes of
    :func:`~ngp._gaussian.pair_matrix`) and the result cut back, so that one compiled program serves every ``N``
    of the bucket (a prediction at a new number of test points compiled these programs again). The ``N x N``
    block is the same arithmetic on the same values: bit-identical for elementwise ``fn``; the first layer's matrix
    product may round differently (XLA:CPU picks its dot kernel by shape: up to 9e-16 relative on small inputs).
    Traced (inside a gradient or a compiled objective): ``fn`` itself."""
    if any(isinstance(a, jax.core.Tracer) for a in (A, *args)) or A.shape[0] > BUCKET_MAX:
        return fn(A, *args)
    N = A.shape[0]
    Nb = kernel_bucket(N)
    if Nb == N:
        return fn(A, *args)
    A = np.asarray(A)
    Ap = np.zeros((Nb, Nb if square else A.shape[1]), dtype=A.dtype)
    Ap[:N, :A.shape[1]] = A
    return device(np.asarray(fn(Ap, *args))[:N, :N])


def two_point_matrix(act: Activation, K, *, method: str = "auto", terms: int | None = None,
                     nodes: int | None = None, quad_nodes: int = 80):
    """``<s(z_a) s(z_b)>_K`` for all pairs ``(a, b)``; shape ``(N, N)``.

    Args:
        act: the activation.
        K: ``(N, N)`` kernel.
        method: one of :data:`METHODS`. ``"closed"`` raises if ``act`` has no closed form.
        terms, nodes: Mehler series length and 1-D rule size (``"mehler"``); ``None``
            picks them from the largest variance (see ``ngp._gaussian.auto_orders``).
        quad_nodes: nodes per dimension of the 2-D rule (``"quadrature"``).
    """
    if method not in METHODS:
        raise ValueError(f"method: expected one of {METHODS}, got {method!r}")
    K = device(K)
    if method in ("auto", "closed") and act.two_point is not None:
        return _bucketed(functools.partial(_closed_matrix, act), K)
    elif method == "closed":
        raise ValueError(f"method: activation {act.name!r} has no closed-form two-point function")
    elif method == "quadrature":
        kd = jnp.diagonal(K)
        E = pair_gh(act.fn, act.fn, kd[:, None], kd[None, :], K, nodes=quad_nodes)
    else:
        E = pair_matrix(act.fn, act.fn, K, terms=terms, nodes=nodes)
    return _bucketed(_symmetrize, E)


@jax.jit
def _symmetrize(E):
    return 0.5 * (E + E.T)


@functools.partial(jax.jit, static_argnums=(0,))
def _closed_matrix(act: Activation, K):
    kd = jnp.diagonal(K)
    E = act.two_point(kd[:, None], kd[None, :], K)
    return 0.5 * (E + E.T)


def kernel_map(act: Activation, K, C_W: float, C_b: float, **options):
    """One layer of the infinite-width recursion: ``C_b + C_W <s s>_K``."""
    return dense_kernel(two_point_matrix(act, K, **options), C_W, C_b)
