"""Infinite-width (NNGP) kernel recursion of an MLP (``docs/theory.md``, "Infinite-width kernel").

``K^(1) = C_b + C_W X X^T / n0`` and ``K^(l+1) = C_b + C_W <s(z_a) s(z_b)>_{K^(l)}``,
with the hyperparameters of the layer being produced.
"""

from __future__ import annotations

import collections
import functools
import threading

import jax
import jax.numpy as jnp
import numpy as np

from ._activations import Activation
from ._fourpoint import product_expectations
from ._gaussian import K_ACCURATE, auto_orders, check_hand_orders, kernel_bucket, pair_gh, pair_matrix, probe_inputs
from ._validate import device, warn
from ._warnings import AccuracyWarning

__all__ = ["METHODS", "KERNEL_OPTIONS", "first_layer_kernel", "dense_kernel", "two_point_matrix", "kernel_map"]

#: Ways of computing two-point expectations: closed form where known (``"auto"``),
#: the Mehler series (``"mehler"``), or a dense 2-D Gauss-Hermite rule (``"quadrature"``).
METHODS = ("auto", "closed", "mehler", "quadrature")
#: The options of :func:`two_point_matrix` (every layer kind passes exactly these on to it).
KERNEL_OPTIONS = ("method", "terms", "nodes", "quad_nodes")


#: Relative tolerance of the large-variance pair rule (:func:`_with_large_variances`), relative to the four-point
#: engine's Hölder bound ``(E[s_a^4] E[s_b^4])^(1/4)`` of an entry: the Mehler series' own accuracy in its range.
LARGE_RTOL = 1e-12
#: Largest number of entries (pairs and diagonal entries with an input beyond ``K_ACCURATE``) computed by the
#: large-variance pair rule in one two-point matrix (tanh, two cores: 0.4-0.7 ms each with one input in range,
#: 0.8-1.8 ms with both at variance 50, 6.5 ms at 400: 16 s for 70 such inputs); beyond it the capped Mehler series
#: runs with its warning (``docs/accuracy.md``, "Large variances").
LARGE_ENTRIES_MAX = 2_500
#: An :class:`~ngp.AccuracyWarning` is issued when the pair rule's error estimate of an entry exceeds this fraction
#: of its bound ``sqrt(E[s_a^2] E[s_b^2])`` (the rule reaches ``LARGE_RTOL`` except at extreme variances).
LARGE_WARN = 1e-10


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
    elif method == "auto" and terms is None and nodes is None and (big := _beyond_range(act, K)) is not None:
        return _with_large_variances(act, K, big)
    else:
        E = pair_matrix(act.fn, act.fn, K, terms=terms, nodes=nodes)
    other = method == "quadrature" or (method == "mehler" and act.two_point is not None)
    hand = [f"method={method!r}"] if other else []
    if method == "quadrature":
        hand.append(f"quad_nodes={quad_nodes}")
    else:
        hand += [f"{k}={v}" for k, v in (("terms", terms), ("nodes", nodes)) if v is not None]
    if hand and not isinstance(K, jax.core.Tracer):  # a rule other than the automatic one: compared with it
        idx = probe_inputs(K)
        check_hand_orders((E,), (two_point_matrix(act, np.asarray(K)[np.ix_(idx, idx)]),), idx, K,
                          given="the two-point rule of " + ", ".join(hand), what="<s(z_a) s(z_b)>")
    return _bucketed(_symmetrize, E)


def _beyond_range(act: Activation, K) -> np.ndarray | None:
    """The inputs (an (N,) mask) of finite variance beyond ``K_ACCURATE`` (where the capped Mehler series loses
    digits) when :func:`_with_large_variances` takes over: a concrete kernel with such inputs, a smooth activation
    outside the relu family (the pair rule's domain), at most :data:`LARGE_ENTRIES_MAX` entries to compute by the
    pair rule; else ``None``."""
    if isinstance(K, jax.core.Tracer) or not act.smooth or act.relu_slopes is not None:
        return None
    kd = np.diagonal(np.asarray(K))
    big = np.isfinite(kd) & (kd > K_ACCURATE)
    nb = int(big.sum())
    return big if 0 < nb and nb * (kd.size - nb) + nb * (nb + 1) // 2 <= LARGE_ENTRIES_MAX else None


def _with_large_variances(act: Activation, K, big: np.ndarray):
    """``<s(z_a) s(z_b)>_K`` with the entries that involve an input of variance beyond ``K_ACCURATE`` computed by the
    four-point engine's rule for two inputs (:func:`ngp._fourpoint.product_expectations`, patterns ``(1, 1)`` and
    ``(2,)``: one input integrated from a trapezoid table, which resolves the activation's sharp transition at
    any variance, with an error estimate) and the rest by the Mehler series at its capped orders, as before (so the
    entries in range are those of any kernel with a variance beyond range, bit for bit: a joint prior's training
    block is the training prior's, ``docs/accuracy.md``, "Large variances"). Warns when an
    entry's estimated error exceeds :data:`LARGE_WARN` of its Cauchy-Schwarz bound ``sqrt(E[s_a^2] E[s_b^2])``."""
    K = np.asarray(K, dtype=float)
    kd = np.diagonal(K)
    small = ~big
    Kin = np.where(small[:, None] & small[None, :], K, 0.0)  # the outlying inputs at variance 0 in the series
    terms, nodes = auto_orders(K_ACCURATE)  # the capped orders (not those of the largest variance in range, which
    # test inputs can raise: the training block would then differ from the training prior's and refuse the take-over)
    E = np.array(_bucketed(_symmetrize, pair_matrix(act.fn, act.fn, device(Kin), terms=terms, nodes=nodes)))
    a, b = np.nonzero(np.triu(big[:, None] | big[None, :], 1))
    # the larger variance first: the rule tabulates the second input's residual given the first, best when that
    # residual is small (tanh at variances 900 and 1: estimates 5e-14 this way round, 7e-9 the other; values to 1e-15)
    a, b = np.where(kd[a] >= kd[b], a, b), np.where(kd[a] >= kd[b], b, a)
    C = np.empty((a.size, 2, 2))
    C[:, 0, 0], C[:, 1, 1], C[:, 0, 1] = kd[a], kd[b], K[a, b]
    C[:, 1, 0] = C[:, 0, 1]
    d = np.flatnonzero(big)
    worst = 0.0  # the largest estimate relative to the entry's Cauchy-Schwarz bound sqrt(E[s_a^2] E[s_b^2])
    for (i, j), blocks, pattern in (((d, d), kd[d, None, None], (2,)), ((a, b), C, (1, 1))):  # diagonal first
        if blocks.shape[0]:
            val, err = _pair_rule(act, blocks, pattern)
            E[i, j] = E[j, i] = val
            with np.errstate(all="ignore"):  # a non-finite value, estimate or bound (overflow) counts as inf
                rel = err / np.maximum(np.sqrt(np.abs(E[i, i] * E[j, j])), 1e-300)
            worst = max(worst, float(np.max(np.where(np.isfinite(rel) & np.isfinite(val), rel, np.inf))))
    if worst > LARGE_WARN:
        what = (f"carry estimated errors up to {worst:.1e} of their scale" if np.isfinite(worst) else
                "are not finite (the activation overflows) or have no error estimate")
        warn(f"ngp: two-point expectations at pre-activation variances beyond ~{K_ACCURATE:.0f} (up to "
             f"{kd[big].max():.3g}) {what}; standardise the inputs or lower C_W/C_b", AccuracyWarning)
    return device(E)


#: Entries of the large-variance pair rule remembered (by activation and block, bit for bit), so that a block
#: computed again (a joint prior's training block after the training prior's) gets the same bits: the rule's
#: batched calls round differently by batch (~1e-16), and the four-point take-over needs equal kernels.
PAIR_CACHE = 1 << 17
_pair_cache: collections.OrderedDict = collections.OrderedDict()
_pair_lock = threading.Lock()


def _pair_rule(act: Activation, blocks: np.ndarray, pattern: tuple):
    """``(values, errors)`` of :func:`ngp._fourpoint.product_expectations` for ``blocks`` (b, u, u), the blocks seen
    before (:data:`PAIR_CACHE`, least recently used dropped) taken from memory."""
    keys = [(act, pattern, blk.tobytes()) for blk in blocks]
    val, err = np.empty(len(keys)), np.empty(len(keys))
    new = []
    with _pair_lock:
        for k, key in enumerate(keys):
            hit = _pair_cache.get(key)
            if hit is None:
                new.append(k)
            else:
                _pair_cache.move_to_end(key)
                val[k], err[k] = hit
    if new:
        with np.errstate(all="ignore"):  # an overflowing activation: non-finite values, warned about by the caller
            v, e = product_expectations(act, blocks[new], pattern, rtol=LARGE_RTOL)
        val[new], err[new] = v, e
        with _pair_lock:
            for k, vk, ek in zip(new, v, e):
                _pair_cache[keys[k]] = (float(vk), float(ek))
            while len(_pair_cache) > PAIR_CACHE:
                _pair_cache.popitem(last=False)
    return val, err


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
