"""Jacobian regularisation (Hoffman, Roberts & Yaida 2019, arXiv:1908.02729) with VJPs only."""

from __future__ import annotations

import numbers
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["jacobian_penalty", "jacobian_regularized"]


def _check_num_projections(num_projections):
    if num_projections is None:
        return None
    if isinstance(num_projections, bool) or not isinstance(num_projections, numbers.Integral):
        raise TypeError(f"num_projections: expected a positive integer or None, got {num_projections!r}")
    if num_projections < 1:
        raise ValueError(f"num_projections: must be >= 1 (or None for the exact norm), got {num_projections}")
    return int(num_projections)


def _outputs_and_penalty(apply_fn, params, x, key, num_projections):
    """``(apply_fn(params, x), 1/2 mean_b ||J_b||_F^2)``, the penalty from VJPs of the batched outputs."""
    num_projections = _check_num_projections(num_projections)
    if not callable(apply_fn):
        raise TypeError(f"apply_fn: expected a callable apply_fn(params, x), got {type(apply_fn).__name__}")
    if key is not None and not isinstance(key, (jax.Array, np.ndarray)):  # a bare seed met JAX's key checks deep inside
        raise TypeError(f"key: expected a jax.random key (e.g. jax.random.PRNGKey(0)), got {type(key).__name__}")
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.inexact):  # integer (pixel) or boolean inputs: derivatives need a float
        x = x.astype(jnp.result_type(float))
    if x.ndim < 1 or x.shape[0] < 1:
        raise ValueError(f"x: expected a batch of shape (B, ...) with B >= 1, got shape {x.shape}")
    out, vjp = jax.vjp(lambda inp: apply_fn(params, inp), x)
    if out.ndim < 1 or out.shape[0] != x.shape[0]:
        raise ValueError(
            f"apply_fn: expected outputs of shape (B, ...) with B = {x.shape[0]} (one row per input), got {out.shape}"
        )
    B = out.shape[0]
    flat = out.reshape(B, -1)
    C = flat.shape[1]

    def sq_norm(v):  # ||v_b^T J_b||^2 summed over the batch, for cotangents v of shape (B, C)
        (g,) = vjp(v.reshape(out.shape).astype(out.dtype))
        return jnp.sum(jnp.square(g))

    if num_projections is None:  # exact: one VJP per output direction e_c (the same e_c for every example)
        eye = jnp.eye(C, dtype=flat.dtype)
        total = jnp.sum(jax.vmap(lambda e: sq_norm(jnp.broadcast_to(e, (B, C))))(eye))
    else:
        if key is None:
            raise ValueError("key: a jax.random key is required when num_projections is not None")
        # v_{p,b} uniform on the unit sphere of R^C, independently per projection and example
        # (drawn flat and reshaped: XLA compiles threefry for a 1-D shape much faster)
        v = jax.random.normal(key, (num_projections * B * C,), dtype=flat.dtype).reshape(num_projections, B, C)
        v = v / jnp.linalg.norm(v, axis=-1, keepdims=True)
        total = C * jnp.sum(jax.vmap(sq_norm)(v)) / num_projections
    return out, 0.5 * total / B


def jacobian_penalty(
    apply_fn: Callable, params, x, key=None, *, num_projections: int | None = 1
) -> jax.Array:
    """Half the batch-mean squared Frobenius norm of the input-output Jacobian.

    Returns ``R = 1/(2B) sum_b ||J_b||_F^2`` with ``J_b = d f(x_b) / d x_b`` of shape ``(C, D)``
    (``C`` outputs, ``D`` input entries per example). ``loss + lambda_JR * R`` is the joint loss of
    Hoffman, Roberts & Yaida (2019), ``L + lambda_JR/2 ||J||_F^2`` averaged over the batch; the
    reference code's ``JacobianReg(n=num_projections)`` returns the same ``R``.

    Estimator: for each example and each of the ``num_projections`` draws, ``v_b`` is uniform on
    the unit sphere of ``R^C`` and ``C ||v_b^T J_b||^2`` is an unbiased estimate of ``||J_b||_F^2``
    (``E v v^T = I/C``) with variance ``2 (C tr A^2 - (tr A)^2) / (C + 2)``, ``A = J_b J_b^T``; for
    ``C = 1`` it is exact. ``num_projections=None`` sums ``||e_c^T J_b||^2`` over the ``C`` output
    directions instead (exact; ``C`` VJPs, vectorised). Only vector-Jacobian products of the
    batched function are used, never full Jacobians.

    Args:
        apply_fn: ``apply_fn(params, x) -> outputs`` of shape ``(B, C)`` (or ``(B, ...)``, flattened
            to ``C`` outputs). Examples must not interact (no batch statistics), so that the VJP of
            the batch with per-example cotangents gives each example's own ``v_b^T J_b``.
        params: the network parameters (any pytree); the penalty is differentiable in them.
        x: inputs of shape ``(B, ...)`` (integer inputs, e.g. pixel values, are taken as floats).
        key: a ``jax.random`` key (needed unless ``num_projections=None``).
        num_projections: projections per example (>= 1), or ``None`` for the exact norm.

    Returns:
        A scalar.
    """
    return _outputs_and_penalty(apply_fn, params, x, key, num_projections)[1]


def jacobian_regularized(
    loss_fn: Callable, apply_fn: Callable, *, lambda_jr: float, num_projections: int | None = 1
) -> Callable:
    """Wrap a loss as ``loss + lambda_jr * jacobian_penalty`` (one forward pass for both).

    Args:
        loss_fn: ``loss_fn(outputs, y) -> scalar``, e.g. a batch-mean cross-entropy.
        apply_fn: ``apply_fn(params, x) -> outputs`` of shape ``(B, C)``.
        lambda_jr: the paper's ``lambda_JR >= 0``; the total is
            ``loss + lambda_JR/2 * (1/B) sum_b ||J_b||_F^2``.
        num_projections: as in :func:`jacobian_penalty`.

    Returns:
        ``f(params, x, y, key) -> scalar``, ready for ``jax.grad`` / ``jax.value_and_grad`` and an
        optax update.
    """
    from .._validate import nonneg_float

    lambda_jr = nonneg_float(lambda_jr, "lambda_jr")
    num_projections = _check_num_projections(num_projections)
    for name, fn in (("loss_fn", loss_fn), ("apply_fn", apply_fn)):  # checked here, not at the first call
        if not callable(fn):
            raise TypeError(f"{name}: expected a callable, got {type(fn).__name__}")

    def total_loss(params, x, y, key=None):
        out, penalty = _outputs_and_penalty(apply_fn, params, x, key, num_projections)
        return loss_fn(out, y) + lambda_jr * penalty

    return total_loss
