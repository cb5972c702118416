"""Fluctuation-dissipation relations of SGD (Yaida 2018, arXiv:1810.00004) and the FDR scheduler.

Conventions (the reference scheduler's SGD): with ``g_t = grad f(theta_t) + lambda theta_t`` (minibatch
gradient plus weight decay), ``v_0 = 0``, ``v_{t+1} = mu v_t + (1 - d) g_t`` and ``theta_{t+1} = theta_t - eta
v_{t+1}``: ``torch.optim.SGD`` when ``d = 0`` (with ``d > 0`` PyTorch's first buffer is ``g_1`` and it ignores
``d`` when ``mu = 0``; docs/training.md).
In a stationary state E|theta|^2 and E[theta . v] do not change from step to step; these two
conditions give E[theta_t . v_t] = -(eta/2) E|v|^2 and then

    E[theta_t . g_t] = (eta/2) (1 + mu)/(1 - d) E|v_t|^2,

the first FDR: O_L = theta_t . g_t and O_R = (eta/2)(1 + mu)/(1 - d) |v_t|^2 with v_t the buffer
*before* the step (in a stationary state E|v_t|^2 = E|v_{t+1}|^2, so either buffer gives the same
expectation; the buffer before the step is the reference code's choice). docs/training.md has
the derivation.
"""

from __future__ import annotations

import numbers
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from .._validate import nonneg_float, positive_float

__all__ = ["fdr_observables", "fdr_sgd", "fdr_monitor", "FDRSGDState", "FDRMonitorState"]


def _tree_dot(a, b):
    return sum(jnp.vdot(x, y).real for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)))


def fdr_observables(params, grads, velocity, *, learning_rate, momentum=0.0, dampening=0.0, weight_decay=0.0):
    """The two sides of the first fluctuation-dissipation relation at one SGD step.

    ``O_L = theta . (grad f + lambda theta)`` and ``O_R = (eta/2) (1 + mu)/(1 - d) |v|^2``, with
    ``v = velocity`` the momentum buffer *before* the step (``v <- mu v + (1 - d) g``,
    ``theta <- theta - eta v``, ``g`` including the weight decay: the module's conventions). Dot
    products run over all leaves. In a stationary state ``E[O_L] = E[O_R]``.

    Args:
        params: the parameters ``theta`` (a pytree).
        grads: the (minibatch) loss gradient at ``params``, *without* weight decay; same structure.
        velocity: the momentum buffer before the step; same structure.
        learning_rate: ``eta > 0`` (a number, or a JAX scalar, which may be traced).
        momentum: ``mu`` in [0, 1).
        dampening: ``d`` in [0, 1).
        weight_decay: ``lambda >= 0``.

    Returns:
        ``(O_L, O_R)``, two scalars.
    """
    if not isinstance(learning_rate, jax.core.Tracer):
        learning_rate = positive_float(learning_rate, "learning_rate")
    if not any(isinstance(v, jax.core.Tracer) for v in (momentum, dampening, weight_decay)):  # traced: unchecked
        momentum, dampening, weight_decay = _check_sgd(momentum, dampening, weight_decay, require_decay=False)
    shape = jax.tree_util.tree_structure(params), [jnp.shape(x) for x in jax.tree_util.tree_leaves(params)]
    for name, tree in (("grads", grads), ("velocity", velocity)):  # leaves were paired by position, whatever they were
        got = jax.tree_util.tree_structure(tree), [jnp.shape(x) for x in jax.tree_util.tree_leaves(tree)]
        if got != shape:
            raise ValueError(f"{name}: expected the structure and leaf shapes of params ({shape[0]}, {shape[1]}), "
                             f"got ({got[0]}, {got[1]})")
    return _observables(params, grads, velocity, learning_rate, momentum, dampening, weight_decay)


def _observables(params, grads, velocity, learning_rate, momentum, dampening, weight_decay):
    """:func:`fdr_observables` without the argument checks (the optimisers check their hyperparameters once)."""
    o_l = _tree_dot(params, grads) + weight_decay * _tree_dot(params, params)
    o_r = 0.5 * learning_rate * (1.0 + momentum) / (1.0 - dampening) * _tree_dot(velocity, velocity)
    return o_l, o_r


_MARKS = 1024  # half-window marks kept: the half-running averages are exact up to 1023 windows after a restart


class FDRMonitorState(NamedTuple):
    """State of :func:`fdr_monitor` (every field a JAX array, so it can be jitted and scanned).

    Attributes:
        count: steps taken in all.
        since_restart: steps since the averages restarted (at the start, after a cut of
            :func:`fdr_sgd`, or when the monitor's learning rate changed).
        learning_rate: the learning rate of the latest step.
        velocity: the momentum buffer (the monitor's own copy for :func:`fdr_monitor`).
        sum_ol: the sum of ``O_L`` since the restart.
        sum_or: the sum of ``O_R`` since the restart.
        marks_ol: ``sum_ol`` after ``floor(j * window / 2)`` steps, ``j = 0, 1, ...`` (a ring buffer
            of 1024 marks), from which the half-running averages are read.
        marks_or: the same for ``sum_or``.
        ratio: the half-running ratio ``<O_L>/<O_R>`` at the latest check,
            the averages taken over the second half of all steps since the restart (``nan`` before
            the first check).
        last_ol: ``O_L`` of the latest step.
        last_or: ``O_R`` of the latest step.
    """

    count: jax.Array
    since_restart: jax.Array
    learning_rate: jax.Array
    velocity: Any
    sum_ol: jax.Array
    sum_or: jax.Array
    marks_ol: jax.Array
    marks_or: jax.Array
    ratio: jax.Array
    last_ol: jax.Array
    last_or: jax.Array


class FDRSGDState(NamedTuple):
    """State of :func:`fdr_sgd`.

    Attributes:
        learning_rate: the current learning rate.
        ratio: the half-running ratio ``<O_L>/<O_R>`` at the latest check
            (see :class:`FDRMonitorState`; ``nan`` before the first check).
        num_decays: how many times the learning rate was cut.
        decay_steps: the step counts (``count`` after the step) at which it was cut, ``-1`` beyond
            ``num_decays`` (the schedule history; its length is ``history_size``, the last entry is
            overwritten by further cuts).
        decay_ratios: the ratio that triggered each cut (``nan`` beyond ``num_decays``).
        monitor: the observables' bookkeeping (a :class:`FDRMonitorState`; its ``velocity`` is the
            optimiser's momentum buffer).
    """

    learning_rate: jax.Array
    ratio: jax.Array
    num_decays: jax.Array
    decay_steps: jax.Array
    decay_ratios: jax.Array
    monitor: FDRMonitorState


def _check_window(window):
    if isinstance(window, bool) or not isinstance(window, numbers.Integral):
        raise TypeError(f"window: expected an integer number of steps, got {window!r}")
    if window < 2:
        raise ValueError(f"window: must be >= 2 steps (the ratio is averaged over its second half), got {window}")
    return int(window)


def _check_sgd(momentum, dampening, weight_decay, *, require_decay):
    momentum = nonneg_float(momentum, "momentum")
    if momentum >= 1:
        raise ValueError(f"momentum: must be in [0, 1), got {momentum}")
    dampening = nonneg_float(dampening, "dampening")
    if dampening >= 1:
        raise ValueError(f"dampening: must be in [0, 1) (the FDR divides by 1 - dampening), got {dampening}")
    if require_decay:
        weight_decay = positive_float(weight_decay, "weight_decay")
    else:
        weight_decay = nonneg_float(weight_decay, "weight_decay")
    return momentum, dampening, weight_decay


def _monitor_init(params, learning_rate=jnp.nan):
    leaves = jax.tree_util.tree_leaves(params)
    dtype = jnp.result_type(*leaves) if leaves else jnp.float32
    zero = jnp.zeros((), dtype)
    return FDRMonitorState(
        count=jnp.zeros((), jnp.int32),
        since_restart=jnp.zeros((), jnp.int32),
        learning_rate=jnp.asarray(learning_rate, dtype),
        velocity=jax.tree_util.tree_map(jnp.zeros_like, params),
        sum_ol=zero,
        sum_or=zero,
        marks_ol=jnp.zeros((_MARKS,), dtype),
        marks_or=jnp.zeros((_MARKS,), dtype),
        ratio=jnp.full((), jnp.nan, dtype),
        last_ol=zero,
        last_or=zero,
    )


def _restart(state, when):
    """Forget the averages (not the momentum buffer) where ``when`` is true."""
    zero = jnp.zeros_like(state.sum_ol)
    return state._replace(
        since_restart=jnp.where(when, 0, state.since_restart),
        sum_ol=jnp.where(when, zero, state.sum_ol),
        sum_or=jnp.where(when, zero, state.sum_or),
        marks_ol=jnp.where(when, 0.0, state.marks_ol).astype(state.marks_ol.dtype),
        marks_or=jnp.where(when, 0.0, state.marks_or).astype(state.marks_or.dtype),
    )


def _monitor_step(state, grads, params, *, learning_rate, momentum, dampening, weight_decay, window):
    """Observables of this step, the new momentum buffer and the half-running averages.

    Every ``window`` steps after a restart (``t = k window``) the ratio of the sums of O_L and O_R
    over steps ``floor(t/2) + 1 .. t`` is stored in ``ratio``, as in Yaida's reference scheduler.
    Returns the new state and ``at_check`` (True when this step was a check).
    """
    if params is None:
        raise ValueError("params: the FDR observables need the parameters; call update(grads, state, params)")
    o_l, o_r = _observables(params, grads, state.velocity, learning_rate, momentum, dampening, weight_decay)
    velocity = jax.tree_util.tree_map(
        lambda v, g, p: momentum * v + (1.0 - dampening) * (g + weight_decay * p), state.velocity, grads, params
    )
    dtype = state.sum_ol.dtype
    sum_ol, sum_or = (state.sum_ol + o_l).astype(dtype), (state.sum_or + o_r).astype(dtype)
    t = state.since_restart + 1
    j = (2 * t + window - 1) // window  # the mark at floor(j window / 2) steps, if that is now
    is_mark = (j * window) // 2 == t
    slot = j % _MARKS
    marks_ol = jnp.where(is_mark, state.marks_ol.at[slot].set(sum_ol), state.marks_ol)
    marks_or = jnp.where(is_mark, state.marks_or.at[slot].set(sum_or), state.marks_or)
    at_check = t % window == 0
    k = t // window
    first = jnp.maximum(k, 2 * k - _MARKS + 1) % _MARKS  # the mark at floor(t/2) (or the oldest kept)
    ratio = jnp.where(at_check, (sum_ol - marks_ol[first]) / (sum_or - marks_or[first]), state.ratio)
    new = FDRMonitorState(
        count=state.count + 1,
        since_restart=t,
        learning_rate=jnp.asarray(learning_rate, dtype),
        velocity=velocity,
        sum_ol=sum_ol,
        sum_or=sum_or,
        marks_ol=marks_ol,
        marks_or=marks_or,
        ratio=ratio.astype(dtype),
        last_ol=jnp.asarray(o_l, dtype),
        last_or=jnp.asarray(o_r, dtype),
    )
    return new, at_check


def _gradient_transformation(init, update):
    import optax  # optional dependency: imported only when an optimiser is built

    return optax.GradientTransformation(init, update)


def fdr_monitor(
    learning_rate: float | Callable, *, momentum: float = 0.0, dampening: float = 0.0,
    weight_decay: float = 0.0, window: int = 1000,
):
    """An optax transformation that passes gradients through unchanged and measures the FDR.

    For users who keep their own optimiser: put it first in the chain, with the hyperparameters of
    that optimiser, e.g. ``optax.chain(fdr_monitor(eta, momentum=mu, weight_decay=lam),
    optax.add_decayed_weights(lam), optax.sgd(eta, momentum=mu))`` (optax's ``sgd`` is PyTorch's
    with ``dampening = 0``). It keeps its own copy of the momentum buffer built from the gradients
    it sees, computes ``O_L`` and ``O_R`` (:func:`fdr_observables`) every step and, every ``window``
    steps, the half-running ratio ``<O_L>/<O_R>`` as :func:`fdr_sgd` does
    (:class:`FDRMonitorState`). The averages restart whenever the learning rate changes, so it
    suits constant or piecewise-constant schedules. It never changes the updates; a ratio near 1
    says SGD has reached its stationary state at the current learning rate.

    Args:
        learning_rate: ``eta``, a float or an optax schedule ``count -> eta``.
        momentum: ``mu`` in [0, 1).
        dampening: ``d`` in [0, 1).
        weight_decay: ``lambda >= 0`` (the relation needs a stationary state; see :func:`fdr_sgd`).
        window: steps per window (>= 2).
    """
    momentum, dampening, weight_decay = _check_sgd(momentum, dampening, weight_decay, require_decay=False)
    window = _check_window(window)
    schedule = learning_rate if callable(learning_rate) else None
    if schedule is None:
        learning_rate = positive_float(learning_rate, "learning_rate")

    def init(params):
        return _monitor_init(params, schedule(0) if schedule is not None else learning_rate)

    def update(grads, state, params=None):
        eta = schedule(state.count) if schedule is not None else learning_rate
        state = _restart(state, jnp.asarray(eta, state.learning_rate.dtype) != state.learning_rate)
        new, _ = _monitor_step(
            state, grads, params, learning_rate=eta, momentum=momentum, dampening=dampening,
            weight_decay=weight_decay, window=window,
        )
        return grads, new

    return _gradient_transformation(init, update)


def fdr_sgd(
    learning_rate: float, *, momentum: float = 0.0, dampening: float = 0.0, weight_decay: float = 1e-3,
    window: int = 1000, tolerance: float = 0.01, decay: float = 0.9, history_size: int = 32,
):
    """SGD whose learning rate is cut when the FDR says it is stationary (Yaida's reference scheduler).

    The update is ``v <- mu v + (1 - d)(grad + lambda theta)``, ``theta <- theta - eta v`` from ``v = 0`` (the
    transformation returns ``-eta v``; pass ``params`` to ``update``): ``torch.optim.SGD`` when ``d = 0``; with
    ``d > 0`` the reference code's rule, which PyTorch's differs from in its first buffer (``g``) and in ignoring
    ``d`` when ``mu = 0`` (docs/training.md, "The fluctuation-dissipation relation of SGD"). Every ``window`` steps the
    averages of ``O_L`` and ``O_R`` (:func:`fdr_observables`) over the second half of all steps
    since the last cut are compared (Yaida's half-running averages: at ``t`` steps after the cut,
    steps ``floor(t/2) + 1 .. t``). If ``|<O_L>/<O_R> - 1| < tolerance`` the learning rate is
    multiplied by ``1 - decay`` and the averages restart (a new window); otherwise the averaging
    span keeps growing, so the ratio gets more precise the longer SGD stays at one learning rate.
    Memory is constant (1024 half-window marks: exact up to 1023 windows after a cut, the latest
    1023 half-windows beyond); ``update`` is jit- and scan-friendly.

    Weight decay must be positive: the relation holds only in a stationary state, and without
    weight decay there often is none. Cross-entropy on separable data has no minimum at finite
    weights, so ``|theta|`` grows for ever; along scale-invariant directions (normalised layers)
    ``theta . grad f = 0``, so ``|theta_{t+1}|^2 = |theta_t|^2 + eta^2 |v_{t+1}|^2`` grows every
    step while ``O_L = 0 < O_R``. Weight decay confines ``theta`` and makes equilibrium reachable,
    in about ``(1 - mu) / (eta (1 - d) lambda)`` steps along directions it alone confines.

    Args:
        learning_rate: the initial ``eta > 0``.
        momentum: ``mu`` in [0, 1).
        dampening: ``d`` in [0, 1).
        weight_decay: ``lambda > 0``.
        window: steps between checks (>= 2).
        tolerance: cut when the ratio is within this of 1 (> 0).
        decay: the cut multiplies ``eta`` by ``1 - decay``; in (0, 1).
        history_size: how many cuts ``decay_steps`` records.

    Returns:
        An ``optax.GradientTransformation`` with state :class:`FDRSGDState`.
    """
    learning_rate = positive_float(learning_rate, "learning_rate")
    momentum, dampening, weight_decay = _check_sgd(momentum, dampening, weight_decay, require_decay=True)
    window = _check_window(window)
    tolerance = positive_float(tolerance, "tolerance")
    decay = positive_float(decay, "decay")
    if decay >= 1:
        raise ValueError(f"decay: must be in (0, 1) (the learning rate is multiplied by 1 - decay), got {decay}")
    if isinstance(history_size, bool) or not isinstance(history_size, numbers.Integral) or history_size < 1:
        raise ValueError(f"history_size: must be a positive integer, got {history_size!r}")

    def init(params):
        monitor = _monitor_init(params, learning_rate)
        dtype = monitor.ratio.dtype
        return FDRSGDState(
            learning_rate=jnp.asarray(learning_rate, dtype),
            ratio=monitor.ratio,
            num_decays=jnp.zeros((), jnp.int32),
            decay_steps=jnp.full((history_size,), -1, jnp.int32),
            decay_ratios=jnp.full((history_size,), jnp.nan, dtype),
            monitor=monitor,
        )

    def update(grads, state, params=None):
        eta = state.learning_rate
        monitor, at_check = _monitor_step(
            state.monitor, grads, params, learning_rate=eta, momentum=momentum, dampening=dampening,
            weight_decay=weight_decay, window=window,
        )
        updates = jax.tree_util.tree_map(lambda v: (-eta * v).astype(v.dtype), monitor.velocity)
        fire = at_check & (jnp.abs(monitor.ratio - 1.0) < tolerance)
        monitor = _restart(monitor, fire)
        slot = jnp.minimum(state.num_decays, history_size - 1)
        new = FDRSGDState(
            learning_rate=jnp.where(fire, eta * (1.0 - decay), eta).astype(eta.dtype),
            ratio=monitor.ratio,
            num_decays=state.num_decays + fire.astype(jnp.int32),
            decay_steps=jnp.where(fire, state.decay_steps.at[slot].set(monitor.count), state.decay_steps),
            decay_ratios=jnp.where(fire, state.decay_ratios.at[slot].set(monitor.ratio), state.decay_ratios),
            monitor=monitor,
        )
        return updates, new

    return _gradient_transformation(init, update)
