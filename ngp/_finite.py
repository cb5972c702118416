"""Gaussian expectations behind the finite-width cumulants of a dense layer.

The layer-to-layer recursions (``docs/theory.md``, "Finite-width recursions"; Jacobian form, no K^{-1}):

    V^(l+1)  = C_W^2 Cov_{K^(l)}(s_a s_b, s_c s_d) + (n_l / n_{l-1}) J V^(l) J^T
    K1^(l+1) = (n_l / n_{l-1}) [ J K1^(l) + 1/2 H : V^(l) ]

with ``J = dK^(l+1)/dK^(l)`` and ``H = d^2 K^(l+1)/dK^(l)^2`` taken with respect to the
*unordered* pairs ``(a <= b)`` of the kernel (total derivatives), and ``V`` stored as a
symmetric ``P x P`` matrix over unordered pairs, ``P = N (N + 1) / 2``. ``V^(1) = 0``,
``K1^(1) = K1^(2) = 0``. Each ``K^(l+1)_ab`` depends only on the ``2 x 2`` block
``(K_aa, K_bb, K_ab)``, so ``J`` has three non-zeros per row and ``H`` nine.

``J`` and ``H`` come from closed forms differentiated by autodiff (relu family, linear,
erf, sin: exact, including the delta functions of kinked activations) or, for other
smooth activations, from the heat-equation identities
``dPhi/dK_aa = C_W <s''_a s_b>/2``, ``dPhi/dK_ab = C_W <s'_a s'_b>`` etc. evaluated by the
Mehler series (:func:`ngp._gaussian.pair_matrices`).
"""

from __future__ import annotations

import functools
import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np

from ._activations import Activation
from ._fourpoint import (NODE_SECONDS, RTOL, SMOOTHED_NODE_SECONDS, fixed_rule_split, max_rule_nodes,
                         multiset_expectations, rule_nodes, split_multisets)
from ._gaussian import (auto_orders, check_hand_orders, concrete_max, integer_power, kernel_bucket, pad_rows,
                        padded_rule, pair_matrices, probe_inputs, pruned_tensor_rule)
from ._kernel import KERNEL_OPTIONS, two_point_matrix
from ._pairs import Pairs, array_module, is_concrete, multiset_code, multiset_rows
from ._progress import check_progress, task
from ._threads import THREADS, thread_map
from ._validate import MAX_MEMORY, device, device_if, pad_to, warn
from ._warnings import CostWarning, duration

__all__ = [
    "jacobian_hessian",
    "TABLE_OPTIONS",
    "four_point_values",
    "fresh_covariance",
    "fresh_components",
    "FourPointTable",
    "fill_tables",
    "multisets",
    "packed_positions",
    "propagate",
    "FOUR_POINT_ORDERS",
]

#: Gauss-Hermite nodes per dimension for the four-point expectations, by the number of
#: distinct inputs among (a, b, c, d). The 4-D rule dominates the cost (pruned tensor
#: rule: 3.5e5 nodes at 40 per dimension, 1.1e5 at 24, 2e4 at 14). Measured accuracy
#: (tests/test_finite.py, tanh, K <~ 1): relative error 1.5e-9 at the default 40,
#: 1.7e-8 at 32, 2.4e-7 at 24; for sin at K ~ 4-5 the default loses digits to ~1e-5 (fixed-order rules lose digits as s(sqrt(K) x) sharpens; raise
#: ``four_point_order`` or standardise the inputs). Closed forms are used for linear and sin.
FOUR_POINT_ORDERS = {1: 200, 2: 128, 3: 64, 4: 40}


# ----------------------------------------------------------------------------- J and H
@functools.lru_cache(maxsize=64)
def _closed_phi(act: Activation):
    """Scalar functions phi_off(kaa, kbb, kab) and phi_diag(k) from the activation's closed forms."""
    return act.two_point, act.second_moment


def _jh_closed(act: Activation, K, pairs: Pairs):
    off, diag = _closed_phi(act)
    if not is_concrete(K):
        K = device(K)
        kd = jnp.diagonal(K)
        args = jnp.stack([kd[pairs.a], kd[pairs.b], K[pairs.a, pairs.b]], axis=1)
        J_off, H_off, J_d, H_d = _closed_derivatives(off, diag, args, kd)
        return _merge_diag(pairs, J_off, H_off, J_d, H_d)
    # concrete: rows padded to a bucketed length (copies of row 0), one compilation per bucket
    K = np.asarray(K, dtype=float)
    kd = np.diagonal(K)
    args = np.stack([kd[pairs.a], kd[pairs.b], K[pairs.a, pairs.b]], axis=1)
    P, N = args.shape[0], kd.shape[0]
    J_off, H_off, J_d, H_d = _closed_derivatives(off, diag, device(pad_rows(args, 32)),
                                                 device(pad_rows(kd, 32)))
    return _merge_diag(pairs, np.asarray(J_off)[:P], np.asarray(H_off)[:P], np.asarray(J_d)[:N], np.asarray(H_d)[:N])


@functools.partial(jax.jit, static_argnums=(0, 1))
def _closed_derivatives(off, diag, args, kd):
    f3 = lambda v: off(v[0], v[1], v[2])
    return (
        jax.vmap(jax.grad(f3))(args),
        jax.vmap(jax.hessian(f3))(args),
        jax.vmap(jax.grad(diag))(kd),
        jax.vmap(jax.grad(jax.grad(diag)))(kd),
    )


def _merge_diag(pairs: Pairs, J_off, H_off, J_d, H_d):
    d = np.nonzero(pairs.diag)[0]
    ad = pairs.a[d]
    if is_concrete(J_off, H_off, J_d, H_d):
        J, H = np.array(J_off, dtype=float), np.array(H_off, dtype=float)
        J[d], H[d] = 0.0, 0.0
        J[d, 0], H[d, 0, 0] = np.asarray(J_d)[ad], np.asarray(H_d)[ad]
        return J, H
    J = device(J_off).at[d].set(0.0).at[d, 0].set(device(J_d)[ad])
    H = device(H_off).at[d].set(0.0).at[d, 0, 0].set(device(H_d)[ad])
    return J, H


def _jh_mehler(act: Activation, K, pairs: Pairs, **options):
    d = [act.derivative(k) for k in range(5)]
    terms, nodes = options.get("terms"), options.get("nodes")

    fgs = tuple((d[p], d[q]) for p, q in ((2, 0), (1, 1), (4, 0), (2, 2), (3, 1)))
    M20, M11, M40, M22, M31 = pair_matrices(fgs, K, terms=terms, nodes=nodes)
    if (terms is not None or nodes is not None) and is_concrete(K):  # hand-set orders: compared with the automatic
        idx = probe_inputs(K)
        given = ", ".join(f"{k}={v}" for k, v in (("terms", terms), ("nodes", nodes)) if v is not None)
        check_hand_orders((M20, M11, M40, M22, M31), pair_matrices(fgs, np.asarray(K)[np.ix_(idx, idx)]), idx, K,
                          given="the Mehler rule of " + given, what="derivative expectations <s^(p)(z_a) s^(q)(z_b)>")
    a, b = pairs.a, pairs.b
    xp = array_module(K, M20, M11, M40, M22, M31)
    if xp is np:
        M20, M11, M40, M22, M31 = (np.asarray(M) for M in (M20, M11, M40, M22, M31))
    # heat-equation identities: d/dK_aa <F> = <d_a^2 F>/2, d/dK_ab <F> = <d_a d_b F> (a != b)
    J_off = xp.stack([0.5 * M20[a, b], 0.5 * M20[b, a], M11[a, b]], axis=1)
    h_aa_aa, h_bb_bb = 0.25 * M40[a, b], 0.25 * M40[b, a]
    h_aa_bb = 0.25 * M22[a, b]
    h_aa_ab, h_bb_ab = 0.5 * M31[a, b], 0.5 * M31[b, a]
    h_ab_ab = M22[a, b]
    H_off = xp.stack(
        [
            xp.stack([h_aa_aa, h_aa_bb, h_aa_ab], axis=1),
            xp.stack([h_aa_bb, h_bb_bb, h_bb_ab], axis=1),
            xp.stack([h_aa_ab, h_bb_ab, h_ab_ab], axis=1),
        ],
        axis=1,
    )
    traced = isinstance(K, jax.core.Tracer)
    kd = jnp.diagonal(K) if traced else np.diagonal(np.asarray(K))
    if nodes is None:
        nodes = auto_orders(concrete_max(kd) if traced else float(np.max(kd, initial=-np.inf)))[1]
    x, w = (device(t, dtype=jnp.result_type(float)) for t in padded_rule(int(nodes)))
    if traced:
        J_d, H_d = _diag_derivatives(act, kd, x, w)
    else:  # zero-padded to a bucketed length: one compilation for every N of the bucket
        N = kd.shape[0]
        kp = np.zeros(kernel_bucket(N))
        kp[:N] = kd
        J_d, H_d = (np.asarray(t)[:N] for t in _diag_derivatives(act, device(kp), x, w))
    return _merge_diag(pairs, J_off, H_off, J_d, H_d)


@functools.partial(jax.jit, static_argnums=(0,))
def _diag_derivatives(act: Activation, kd, x, w):
    """d/dk <s^2>_k = <s'^2 + s s''> and d^2/dk^2 <s^2>_k = <2 s s(4) + 8 s' s(3) + 6 s''^2> / 4, by the
    rule ``(x, w)`` (:func:`ngp._gaussian.padded_rule`)."""
    s, s1, s2, s3, s4 = (act.derivative(k) for k in range(5))
    z = jnp.sqrt(jnp.maximum(kd, 0.0))[..., None] * x  # expect_1d with the padded rule
    J_d = jnp.sum(w * (s1(z) ** 2 + s(z) * s2(z)), axis=-1)
    H_d = 0.25 * jnp.sum(w * (2 * s(z) * s4(z) + 8 * s1(z) * s3(z) + 6 * s2(z) ** 2), axis=-1)
    return J_d, H_d


def jacobian_hessian(act: Activation, K, pairs: Pairs, C_W: float, *, method: str = "auto", **options):
    """``J`` (P, 3) and ``H`` (P, 3, 3) of the kernel map ``K -> C_b + C_W <s s>_K``.

    Row ``p = (a, b)``: derivatives with respect to ``(K_aa, K_bb, K_ab)`` (the columns
    ``pairs.cols[p]``); for ``a == b`` only column 0 is used.
    """
    K = device(K)
    if act.two_point is not None and method in ("auto", "closed"):
        J, H = _jh_closed(act, K, pairs)
    else:
        if not act.smooth and act.two_point is not None:  # method "mehler"/"quadrature" asked for a kinked one
            raise ValueError(
                f"method: {method!r} integrates smooth activations only; {act.name!r} is kinked, so the derivatives "
                "behind its K1 and V exist only in closed form (method='auto' or 'closed')")
        if not act.smooth:
            raise ValueError(
                f"activation {act.name!r} is declared non-smooth and has no closed-form kernel: its "
                "curvature (delta functions) cannot be integrated numerically, so V and K1 are unavailable. "
                "Use a named activation ('relu', 'leaky_relu', ...) or a smooth callable."
            )
        opts = {k: options[k] for k in ("terms", "nodes") if k in options}
        J, H = _jh_mehler(act, K, pairs, **opts)
    return C_W * J, C_W * H


# ----------------------------------------------------------------------------- four-point term
def multisets(N: int) -> np.ndarray:
    """All sorted 4-tuples ``a <= b <= c <= d`` of ``range(N)``, shape ``(M, 4)`` in code order."""
    return np.array(list(itertools.combinations_with_replacement(range(N), 4)), dtype=np.int64).reshape(-1, 4)


def _product_expectations(act: Activation, K, ms: np.ndarray, orders: dict, batch_elems: int | None = None):
    """``<s_a s_b s_c s_d>`` for every multiset row of ``ms`` (M, 4), by Gauss-Hermite in the
    span of the distinct inputs (eigen square root, safe for singular blocks)."""
    traced = isinstance(K, jax.core.Tracer)
    K = device(K) if traced else np.asarray(K)
    if batch_elems is None:  # node evaluations per compiled batch: larger on accelerators
        batch_elems = 4_000_000 if jax.default_backend() == "cpu" else 200_000_000
    out = jnp.zeros(ms.shape[0], dtype=jnp.result_type(float)) if traced else np.zeros(ms.shape[0])
    pieces = []  # concrete kernel: (rows, batch result) assembled once at the end, without per-batch array ops
    pattern_rows = split_multisets(ms)  # pattern -> (rows, distinct inputs in order)
    homogeneous = act.relu_slopes is not None
    for pattern, (rows, idx) in pattern_rows.items():
        u = len(pattern)
        nodes, weights = pruned_tensor_rule(u, orders[u])
        per = max(1, batch_elems // (nodes.shape[0] * u))
        pat = tuple(pattern)

        # two batch shapes per rule (a small one for short requests), so few shapes get compiled
        per = 1 << int(np.floor(np.log2(per)))
        if rows.size <= max(1, per // 32):
            per = max(1, per // 32)
        put = device_if(traced or rows.size > per)  # several batches (or a trace) read the rule
        nodes_j, weights_j = put(nodes), put(weights)
        if traced:  # every batch in one sequential map: a jitted gradient holds one batch's values at a time
            batches = -(-rows.size // per)
            sel = pad_to(idx, batches * per)
            res = _product_batches(act.fn, pat, homogeneous, device(sel.reshape(batches, per, u)), K, nodes_j,
                                   weights_j)
            out = out.at[rows].set(res.reshape(-1)[: rows.size])
            continue
        for s in range(0, rows.size, per):
            sel = idx[s : s + per]
            pad = per - sel.shape[0]
            if pad:
                sel = np.concatenate([sel, np.repeat(sel[:1], pad, axis=0)])
            # the blocks gathered here: the compiled batch does not depend on the number of inputs
            C = K[sel[:, :, None], sel[:, None, :]]
            pieces.append((rows[s : s + per], per - pad, _product_block(act.fn, C, np.asarray(pat, np.int32),
                                                                          nodes_j, weights_j)))
    for r, m, res in pieces:
        out[r] = np.asarray(res)[:m]
    return out if traced else device(out)


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _product_batches(fn, pattern, homogeneous, ix, K, nodes, weights):
    """``E[prod_j fn(z_j)^pattern_j]`` for batches of index tuples ``ix`` (batches, b, u) -> (batches, b).

    The batches run one after another (``lax.map``): under ``jax.jit`` of a gradient the program holds one
    batch's node values at a time, not every batch's at once (a Python loop of batches let XLA keep them all
    live: 22 GB for the gradient at 8 inputs, ``docs/four-point.md``)."""
    expect = _gaussian_product(fn, pattern, homogeneous)
    return jax.lax.map(lambda i: expect(K[i[:, :, None], i[:, None, :]], nodes, weights), ix)


@functools.partial(jax.jit, static_argnums=(0,))
def _product_block(fn, C, powers, nodes, weights):
    """``E[prod_j fn(z_j)^powers_j]`` for a batch of covariance blocks ``C`` (b, u, u), ``powers`` (u,)
    integers 1..4 (an argument: one compilation serves every pattern with ``u`` inputs). Values only
    (concrete kernels); the rule of :func:`_gaussian_product`."""
    return jnp.prod(integer_power(fn(_eigen_nodes(C, nodes)), powers), axis=-1) @ weights


def _eigen_nodes(C, nodes):
    """The rule's nodes ``(q, u)`` mapped to ``z = R x`` with ``R R^T = C`` (eigen square root, safe for
    singular blocks): ``(b, q, u)`` for blocks ``C`` (b, u, u)."""
    w_, U = jnp.linalg.eigh(C)
    return jnp.einsum("qj,bij->bqi", nodes, U * jnp.sqrt(jnp.clip(w_, 0.0, None))[:, None, :])


@functools.lru_cache(maxsize=256)
def _gaussian_product(fn, pattern, homogeneous=False):
    """``C -> E[prod_j fn(z_j)^pattern_j]``, ``z ~ N(0, C)`` (batched ``(b, u, u) -> (b,)``) by the rule
    ``(nodes, weights)`` in the eigenbasis of ``C``; its derivative is Price's theorem,
    ``dE/dC_ij = E[d_i d_j F] / 2`` (symmetric ``dC``), so singular and degenerate blocks have finite
    derivatives (the eigen square root's derivative does not exist there).

    ``homogeneous``: ``fn(l z) = l fn(z)`` for ``l > 0`` (the relu family). Its second derivative
    is a delta function that autodiff sees as 0, so Price's diagonal terms ``E[d_i^2 F]`` are
    replaced by Euler's relation for scaling ``z_i``: ``C_ii E[d_i^2 F] = p_i E[F] - sum_{j != i}
    C_ij E[d_i d_j F]`` (0 where ``C_ii = 0``); the off-diagonal terms need only ``fn'``.
    """
    pat = np.asarray(pattern)  # a constant (a JAX array created here would leak from the first trace)
    rep = np.repeat(np.arange(pat.size), pat)  # products, not powers: d(x^1)/dx = x^0 has a NaN slope at 0

    def F(z):  # (u,) -> scalar
        return jnp.prod(fn(z)[rep])

    @jax.custom_jvp
    def expect(C, nodes, weights):
        z = _eigen_nodes(C, nodes)
        return jnp.prod(fn(z)[..., rep], axis=-1) @ weights

    @expect.defjvp
    def expect_jvp(primals, tangents):
        C, nodes, weights = primals
        dC = tangents[0]
        z = _eigen_nodes(C, nodes)
        out = jnp.prod(fn(z)[..., rep], axis=-1) @ weights
        hess = jax.vmap(jax.vmap(jax.hessian(F)))(z)  # (b, q, u, u)
        Edd = jnp.einsum("bqij,q->bij", hess, weights)
        if homogeneous:
            eye = jnp.eye(pat.size, dtype=bool)
            off = jnp.where(eye, 0.0, Edd * C).sum(axis=-1)  # sum_{j != i} C_ij E[d_i d_j F]
            cii = jnp.diagonal(C, axis1=-2, axis2=-1)
            ok = cii > 0
            dd = jnp.where(ok, (pat * out[:, None] - off) / jnp.where(ok, cii, 1.0), 0.0)
            Edd = jnp.where(eye, dd[:, :, None], Edd)
        return out, 0.5 * jnp.einsum("bij,bij->b", Edd, dC)

    return expect


def four_point_values(act: Activation, K, ms: np.ndarray, *, method: str = "auto",
                      four_point_order: int | None = None, four_point_rtol: float | None = None,
                      errors: bool = False):
    """``<s_a s_b s_c s_d>_K`` for every row ``(a, b, c, d)`` of ``ms`` (``(M, 4)``, sorted rows).

    Rules (``docs/theory.md``, "Gaussian expectations"; details in ``docs/four-point.md``):

    * a closed form where the activation declares one (``Activation.four_point``; linear, sin);
    * otherwise, on concrete kernels, :func:`ngp._fourpoint.multiset_expectations`: the exact
      orthant rule for the relu family, an anisotropic Gauss-Hermite rule with an error estimate
      for smooth activations (relative tolerance ``four_point_rtol``, default
      :data:`ngp._fourpoint.RTOL`);
    * under a JAX trace (``jax.grad``/``jax.jacfwd`` of ``ngp.log_evidence``), or when
      ``four_point_order`` is given, the pruned tensor Gauss-Hermite rule of jnp with its Price's-theorem
      derivative (:data:`FOUR_POINT_ORDERS`).

    Returns the values ``(M,)`` (NumPy on concrete kernels, JAX under a trace); with ``errors=True`` also ``(M,)`` estimates of their
    absolute numerical errors (0 for closed forms, NaN for the fixed-order rule, which has none).
    """
    ms = np.asarray(ms, dtype=np.int64).reshape(-1, 4)
    if ms.shape[0] == 0:
        return (jnp.zeros(0), np.zeros(0)) if errors else jnp.zeros(0)
    if method in ("auto", "closed") and act.four_point is not None:
        if is_concrete(K):  # blocks padded to a bucketed count (copies of the first): one compilation per bucket
            C = np.asarray(K, dtype=float)[ms[:, :, None], ms[:, None, :]]
            vals = np.asarray(_closed_four_point(act.four_point, device(pad_rows(C, 64))))[:C.shape[0]]
            return (vals, np.zeros(ms.shape[0])) if errors else vals
        K = device(K)
        C = K[ms[:, :, None], ms[:, None, :]]
        vals = act.four_point(C)
        return (vals, np.zeros(ms.shape[0])) if errors else vals
    if four_point_order is None and not isinstance(K, jax.core.Tracer):
        rtol = RTOL if four_point_rtol is None else float(four_point_rtol)
        Kn = np.asarray(K, dtype=float)
        # rows the fixed rule below already computes to rtol / 10 (by the calibration) stay on it
        fast, errs = fixed_rule_split(act, Kn, ms, FOUR_POINT_ORDERS, rtol=rtol)
        vals = np.zeros(ms.shape[0])
        if fast.any():
            vals[fast] = np.asarray(_product_expectations(act, Kn, ms[fast], FOUR_POINT_ORDERS))
        if not fast.all():
            vals[~fast], errs[~fast] = multiset_expectations(act, Kn, ms[~fast], rtol=rtol)
        return (vals, errs) if errors else vals
    orders = dict(FOUR_POINT_ORDERS)
    if four_point_order is not None:
        orders[4] = int(four_point_order)
        orders[3] = int(np.ceil(1.6 * int(four_point_order)))  # same ratio as the defaults (64 / 40)
    vals = _product_expectations(act, K, ms, orders)
    return (vals, np.full(ms.shape[0], np.nan)) if errors else vals


@functools.partial(jax.jit, static_argnums=(0,))
def _closed_four_point(four_point, C):
    """An activation's closed-form four-point values for blocks ``C`` (M, 4, 4), compiled."""
    return four_point(C)


#: New multisets per quadrature call of :class:`FourPointTable` (bounds the rule's working memory:
#: measured 0.35 GB above the process at 8000 tanh multisets, 1.3 GB at 40000 in one call). Two calls run at
#: once (:func:`ngp._threads.thread_map`).
TABLE_CHUNK = 8192
#: With the ``progress`` option, a table's new multisets go in about 16 chunks (at least this many multisets each, at
#: most :data:`TABLE_CHUNK`), so that its reports come more often than once per 8192.
PROGRESS_CHUNK = 1024
#: Working memory (bytes) of the rule per new multiset of one call, the largest measured (see TABLE_CHUNK).
TABLE_ROW_BYTES = 45_000
#: The options of a layer's four-point table (:class:`FourPointTable`): every layer kind passes exactly these on.
TABLE_OPTIONS = ("method", "four_point_order", "four_point_rtol", "max_memory", "progress")


def table_chunk(max_memory=None) -> int:
    """New multisets per quadrature call: :data:`TABLE_CHUNK`, fewer where the two calls at once would
    need more than a quarter of ``max_memory`` (bytes; ``None``: the default budget), but at least 256."""
    limit = MAX_MEMORY if max_memory is None else max_memory
    return int(min(TABLE_CHUNK, max(256, limit // (8 * TABLE_ROW_BYTES))))


#: Estimated seconds (:func:`warn_four_point_cost`) of one call's new four-point values beyond which a
#: :class:`ngp.CostWarning` comes before it.
FOUR_POINT_COST_WARN = 60.0
#: A :func:`warn_four_point_cost` estimate names large variances as the cause when the rules have at least this many
#: times the nodes they would have at variances up to 1.
VARIANCE_COST_RATIO = 3.0
#: Where the rules have :data:`VARIANCE_WARN_RATIO` times or more those nodes, a call estimated beyond
#: :data:`VARIANCE_COST_WARN` seconds warns already (as a residual chain's cross-layer expectations do): a prior and
#: its predictions run several such calls (``ngp.posterior`` on 18 terrain rows and 8 test rows, depth 3, ``C_W = 10``:
#: 8 calls of 0.3-33 s, 77-82 s in all, against 9.9 s at ``C_W = 1``; docs/four-point.md, "Cost").
VARIANCE_WARN_RATIO = 10.0
VARIANCE_COST_WARN = 5.0


def warn_four_point_cost(act: Activation, K, ms: np.ndarray, options: dict, inputs: str) -> None:
    """A :class:`ngp.CostWarning` before the four-point values of the sorted multiset rows ``ms`` (M, 4) of the
    concrete kernel ``K`` (``options``: a table's, :data:`TABLE_OPTIONS`; ``inputs``: their inputs, in words) when
    the adaptive smooth rule would take more than :data:`FOUR_POINT_COST_WARN` seconds by
    :func:`ngp._fourpoint.rule_nodes` at :data:`ngp._fourpoint.NODE_SECONDS` per node (``SMOOTHED_NODE_SECONDS`` for
    activations with a closed-form ``smoothed``; it says whether large
    variances are the cause: rules :data:`VARIANCE_COST_RATIO` times or more those at variances up to 1), or more than
    :data:`VARIANCE_COST_WARN` seconds where large variances make the rules :data:`VARIANCE_WARN_RATIO` times or more
    (a text that depends only on the activation, the largest variance rounded down to 1, 2, 5, 10, ... and the ratio in
    words, so that Python's filter shows it about once per layer). Closed forms, the relu family and the fixed rule
    (``four_point_order``) are not estimated. The costly part, a sample's eigen-decompositions, runs only where a bound
    on every multiset's rule exceeds the smaller limit."""
    if not _estimated(act, options):
        return
    M = ms.shape[0]
    rtol, rate = _rtol(options), _node_seconds(act)
    K = np.asarray(K, dtype=float)
    limit = min(FOUR_POINT_COST_WARN, VARIANCE_COST_WARN)
    if four_point_seconds(act, K, ms, options, bound=True) <= limit:
        return
    variance = float(np.max(np.diag(K)[np.unique(ms)]))  # for the text (the bound read it too; only past it again)
    nodes, low = rule_nodes(act, K, ms, rtol=rtol)
    seconds = M * nodes * rate
    cure = "standardised inputs or smaller C_W, C_b cut the cost most"
    if seconds > FOUR_POINT_COST_WARN:
        why = (f"; variances this large make the rules ~{nodes / low:.0f}x those at variances up to 1: {cure}"
               if nodes >= VARIANCE_COST_RATIO * low else "")
        warn(f"ngp: the four-point values of {M} new multisets of {inputs} ({act.name!r}, pre-activation "
             f"variances up to {variance:.2g}) take about {duration(seconds)} here (~{nodes:.2g} quadrature nodes "
             f"each at ~{1 / rate:.0g} nodes/s on 2 cores{why}). A prior computes such values for every "
             "hidden layer; progress=True shows them as they run (docs/four-point.md, \"Cost\").", CostWarning)
    elif seconds > VARIANCE_COST_WARN and nodes >= VARIANCE_WARN_RATIO * low:
        times = "tens" if nodes < 100 * low else "hundreds" if nodes < 1000 * low else "thousands"
        warn(f"ngp: pre-activation variances above {_step_below(variance):g} make the four-point quadrature of "
             f"{act.name!r} {times} of times costlier per multiset than at variances up to 1 (a call here: "
             f"{duration(VARIANCE_COST_WARN)} or more), and V, K1 and predictions run many such calls: {cure} "
             "(docs/four-point.md, \"Cost\").", CostWarning)


def _estimated(act: Activation, options: dict) -> bool:
    """Whether a table's four-point values run by the adaptive smooth rule, whose cost is estimated: not a closed
    form, the relu family or the fixed rule (``four_point_order``)."""
    return not (options.get("four_point_order") is not None or act.relu_slopes is not None or not act.smooth
                or (act.four_point is not None and options.get("method", "auto") in ("auto", "closed")))


def _rtol(options: dict) -> float:
    return RTOL if options.get("four_point_rtol") is None else float(options["four_point_rtol"])


def _node_seconds(act: Activation) -> float:
    """Seconds per first-round rule node (:data:`ngp._fourpoint.NODE_SECONDS`; ``SMOOTHED_NODE_SECONDS`` where the
    split input has a closed form)."""
    return NODE_SECONDS if act.smoothed is None else SMOOTHED_NODE_SECONDS


def four_point_seconds(act: Activation, K, ms: np.ndarray, options: dict, *, bound: bool = False) -> float:
    """Estimated seconds of the four-point values of the sorted multiset rows ``ms`` (M, 4) of the concrete kernel
    ``K`` (``options``: a table's): ``M`` times the first round's rule nodes (:func:`ngp._fourpoint.rule_nodes`, a
    sample of the rows) times the rate per node, as :func:`warn_four_point_cost` estimates; 0 where the values are
    not estimated (closed forms, the relu family, the fixed rule). ``bound=True``: an upper bound on that estimate
    from the largest variance of the rows' inputs (:func:`ngp._fourpoint.max_rule_nodes`, no eigen-decompositions)."""
    if not _estimated(act, options) or not ms.shape[0]:
        return 0.0
    K = np.asarray(K, dtype=float)
    if bound:
        nodes = max_rule_nodes(act, float(np.max(np.diag(K)[np.unique(ms)])), rtol=_rtol(options))
    else:
        nodes, _ = rule_nodes(act, K, ms, rtol=_rtol(options))
    return ms.shape[0] * nodes * _node_seconds(act)


def _step_below(x: float) -> float:
    """The largest of ..., 1, 2, 5, 10, 20, ... at most ``x > 0``: a coarse value for a warning's text (the calls of
    one layer, on its training and joint priors, then say the same, which Python's filter shows once)."""
    e = math.floor(math.log10(x))
    m = x / 10.0**e
    return max(k for k in (1, 2, 5, 10) if k <= m * (1 + 1e-12)) * 10.0**e


class FourPointTable:
    """``<s_a s_b s_c s_d>_K`` for multisets of one kernel, each computed once and remembered.

    Args:
        act: the activation ``s``.
        K: ``(N, N)`` kernel.
        max_memory: bytes the prior may use (``None``: the default budget); the quadrature's two calls at
            once take at most a quarter of it (:func:`table_chunk`).
        progress: the prior's ``progress`` option (:func:`ngp._progress.check_progress`): new values are
            reported batch by batch.
        **options: ``method``, ``four_point_order``, ``four_point_rtol`` (see :func:`four_point_values`).
    """

    def __init__(self, act: Activation, K, *, max_memory=None, progress=None, **options):
        self.act, self.K, self.options = act, K, options
        self.progress = check_progress(progress)
        self.chunk = table_chunk(max_memory)
        self.N = K.shape[0]
        self._codes = np.zeros(0, dtype=np.int64)
        self._vals = np.zeros(0)
        self._errs = np.zeros(0)

    def _lookup(self, ms_sorted):
        ms_sorted = np.asarray(ms_sorted, dtype=np.int64).reshape(-1, 4)
        codes = multiset_code(ms_sorted, self.N)
        uniq, first, inverse = np.unique(codes, return_index=True, return_inverse=True)
        pos = np.searchsorted(self._codes, uniq)
        known = np.zeros(uniq.size, dtype=bool)
        if self._codes.size:
            known = self._codes[np.minimum(pos, self._codes.size - 1)] == uniq
        new = np.nonzero(~known)[0]
        if not isinstance(self.K, jax.core.Tracer):  # concrete: NumPy bookkeeping (no per-shape compilations)
            vals, errs = np.zeros(uniq.size), np.zeros(uniq.size)
            if np.any(known):
                vals[known] = np.asarray(self._vals)[pos[known]]
                errs[known] = self._errs[pos[known]]
            if new.size:  # in chunks: the quadrature's working memory grows with the rows of one call
                rows = ms_sorted[first[new]]
                warn_four_point_cost(self.act, self.K, rows, self.options, f"{self.N} inputs")
                size = self.chunk if self.progress is None else min(self.chunk, max(PROGRESS_CHUNK, -(-new.size // 16)))
                parts = self._computed([rows[i:i + size] for i in range(0, rows.shape[0], size)])
                fresh = np.concatenate([np.asarray(v) for v, _ in parts])
                ferr = np.concatenate([np.asarray(e, dtype=float) for _, e in parts])
                vals[new], errs[new] = fresh, ferr
                self._remember(uniq[new], fresh, ferr)
            inverse = inverse.reshape(-1)
            return vals[inverse], errs[inverse]
        vals = jnp.zeros(uniq.size, dtype=jnp.result_type(float))
        errs = np.zeros(uniq.size)
        if np.any(known):
            vals = vals.at[np.nonzero(known)[0]].set(self._vals[pos[known]])
            errs[known] = self._errs[pos[known]]
        if new.size:
            ((fresh, ferr),) = self._computed([ms_sorted[first[new]]])
            fresh = device(fresh)
            vals = vals.at[new].set(fresh)
            errs[new] = ferr
            self._remember(uniq[new], fresh, ferr)
        inverse = inverse.reshape(-1)
        return vals[inverse], errs[inverse]

    def _computed(self, chunks: list) -> list:
        """``four_point_values`` (values, errors) of each chunk of sorted rows, on the pool's threads, reported
        to the ``progress`` option chunk by chunk."""
        job = task(self.progress, sum(r.shape[0] for r in chunks), f"four-point values ({self.N} inputs)")

        def one(rows):
            out = four_point_values(self.act, self.K, rows, errors=True, **self.options)
            if job is not None:
                job.update(rows.shape[0])
            return out

        try:
            return thread_map(one, chunks)
        finally:
            if job is not None:
                job.close()

    def seed(self, other: "FourPointTable", index) -> int:
        """Take over the values ``other`` has computed, where its inputs are some of these.

        ``index[i]`` is this table's input for ``other``'s input ``i`` (``(other.N,)``), or ``-1`` where it
        has none (then only ``other``'s multisets of mapped inputs are taken: e.g. the training rows of a
        joint prior). Nothing is taken unless both kernels are concrete, equal bit for bit on the mapped
        inputs (so the values are those this table would compute, up to the rule's batching), and the
        activation and options are the same. Values already known here are kept. Returns the number of
        values taken.
        """
        index = np.asarray(index, dtype=np.int64).reshape(-1)
        if (other is self or other._codes.size == 0 or index.shape != (other.N,)
                or not (is_concrete(self.K) and is_concrete(other.K))
                or other.act is not self.act or other.options != self.options):
            return 0
        mapped = np.flatnonzero(index >= 0)
        K, Ko = np.asarray(self.K), np.asarray(other.K)
        if not np.array_equal(K[np.ix_(index[mapped], index[mapped])], Ko[np.ix_(mapped, mapped)]):
            return 0
        rows = index[multiset_rows(other._codes, other.N)]
        inside = np.all(rows >= 0, axis=1)
        codes = multiset_code(np.sort(rows[inside], axis=1), self.N)
        new = ~np.isin(codes, self._codes)
        self._remember(codes[new], np.asarray(other._vals)[inside][new], other._errs[inside][new])
        return int(new.sum())

    def unknown(self, ms_sorted) -> np.ndarray:
        """The distinct rows of sorted multisets ``ms_sorted`` (M, 4) whose values are not known yet (code order)."""
        codes = np.unique(multiset_code(np.asarray(ms_sorted, dtype=np.int64).reshape(-1, 4), self.N))
        return multiset_rows(codes[~np.isin(codes, self._codes)], self.N)

    def _remember(self, codes, vals, errs) -> None:
        """Add new multisets (codes not yet known) with their values and estimates, keeping codes sorted."""
        if codes.size == 0:
            return
        codes_all = np.concatenate([self._codes, codes])
        order = np.argsort(codes_all, kind="stable")
        xp = np if isinstance(self._vals, np.ndarray) and isinstance(vals, np.ndarray) else jnp
        self._codes = codes_all[order]
        self._vals = xp.concatenate([xp.asarray(self._vals), xp.asarray(vals)])[order]
        self._errs = np.concatenate([self._errs, np.asarray(errs, dtype=float)])[order]

    def __call__(self, ms_sorted):
        """Values for sorted rows ``(M, 4)`` (a JAX array; differentiable in the kernel)."""
        return self._lookup(ms_sorted)[0]

    def errors(self, ms_sorted) -> np.ndarray:
        """Estimated absolute numerical errors ``(M,)`` of the values for sorted rows ``(M, 4)``
        (computing the values if needed; NaN where the rule gives no estimate)."""
        return self._lookup(ms_sorted)[1]


#: :func:`fill_tables` runs its multisets in one call up to twice this many, else in one chunk per thread.
FILL_SPLIT = 256


def fill_tables(tables, rows) -> int:
    """Compute the values that ``tables`` (:class:`FourPointTable`) do not know yet for their sorted multiset rows
    (``rows[i]``, ``(M_i, 4)``, of ``tables[i]``), the tables of one activation and options in shared quadrature calls.

    Such tables (concrete kernels) are stacked into one block-diagonal kernel, so their multisets go through
    :func:`four_point_values` together, in chunks of the smallest of their ``chunk`` (a table's ``progress`` reports
    its multisets when the calls are done):
    each value depends only on its multiset's block of the kernel, so it is the one its table would compute alone (to
    the rounding of the rule's batching), and one call's fixed cost (a few rounds of the adaptive rule, each a
    host-device round trip) is paid once instead of once per table: for small priors that cost dominates
    (``docs/four-point.md``, "Small problems: one call for every layer"). Other tables compute theirs as
    usual. Returns the number of values computed.
    """
    groups, done = [], 0
    for t, r in zip(tables, rows):
        new = t.unknown(r)
        if not new.size:
            continue
        done += new.shape[0]
        if not is_concrete(t.K):
            t._lookup(new)
            continue
        for g in groups:
            if g[0][0].act is t.act and g[0][0].options == t.options:
                g.append((t, new))
                break
        else:
            groups.append([(t, new)])
    for g in groups:
        if len(g) == 1:
            g[0][0]._lookup(g[0][1])
            continue
        sizes = [t.N for t, _ in g]
        off = np.cumsum([0] + sizes)
        Kb = np.zeros((off[-1], off[-1]))
        for (t, _), o, n in zip(g, off, sizes):
            Kb[o:o + n, o:o + n] = np.asarray(t.K, dtype=float)
        ms = np.concatenate([new + o for (_, new), o in zip(g, off)])
        inputs = (f"{sizes[0]} inputs" if len(set(sizes)) == 1 else f"{min(sizes)}-{max(sizes)} inputs")
        warn_four_point_cost(g[0][0].act, Kb, ms, g[0][0].options, f"{inputs} in {len(g)} tables (layers)")
        # one chunk per thread once each holds FILL_SPLIT multisets (the two threads overlap one chunk's host work
        # with the other's kernels), at most a table's chunk
        size = min(min(t.chunk for t, _ in g), max(FILL_SPLIT, -(-ms.shape[0] // THREADS)))
        first = g[0][0]
        jobs = [task(t.progress, new.shape[0], f"four-point values ({t.N} inputs)") for t, new in g]
        try:
            parts = thread_map(lambda r: four_point_values(first.act, Kb, r, errors=True, **first.options),
                               [ms[i:i + size] for i in range(0, ms.shape[0], size)])
            for job, (_, new) in zip(jobs, g):
                if job is not None:
                    job.update(new.shape[0])
        finally:
            for job in jobs:
                if job is not None:
                    job.close()
        vals = np.concatenate([np.asarray(v, dtype=float) for v, _ in parts])
        errs = np.concatenate([np.asarray(e, dtype=float) for _, e in parts])
        at = np.cumsum([0] + [new.shape[0] for _, new in g])
        for (t, new), a, b in zip(g, at[:-1], at[1:]):
            t._remember(multiset_code(new, t.N), vals[a:b], errs[a:b])
    return done


def fresh_components(table: FourPointTable, quads, E2, C_W: float) -> np.ndarray:
    """``C_W^2 [<s_a s_b s_c s_d> - <s_a s_b><s_c s_d>]`` for rows ``(a, b, c, d)`` of ``quads``.

    Args:
        table: the four-point values of the layer (:class:`FourPointTable`).
        quads: ``(M, 4)`` input indices, meaning the vertex component ``(ab)(cd)``.
        E2: ``(N, N)`` two-point matrix ``<s_a s_b>_K``.
    """
    quads = np.asarray(quads, dtype=np.int64).reshape(-1, 4)
    E4 = table(np.sort(quads, axis=1))
    if not any(isinstance(t, jax.core.Tracer) for t in (E4, E2, C_W)):  # concrete: NumPy (no per-shape compilations)
        E2 = np.asarray(E2)
        return C_W**2 * (np.asarray(E4) - E2[quads[:, 0], quads[:, 1]] * E2[quads[:, 2], quads[:, 3]])
    E2 = device(E2)
    return C_W**2 * (E4 - E2[quads[:, 0], quads[:, 1]] * E2[quads[:, 2], quads[:, 3]])


def packed_positions(pairs: Pairs) -> np.ndarray:
    """``(P, P)`` positions in :func:`multisets` ``(N)`` of the multiset of every pair of pairs ``(p, q)``."""
    N = pairs.N
    pa, pb = pairs.a, pairs.b
    quad = np.stack(np.broadcast_arrays(pa[:, None], pb[:, None], pa[None, :], pb[None, :]), axis=-1)
    quad = np.sort(quad, axis=-1)
    return np.searchsorted(multiset_code(multisets(N), N), multiset_code(quad, N))


def fresh_covariance(act: Activation, K, pairs: Pairs, C_W: float, *, E2=None, table=None, **options):
    """``C_W^2 Cov_K(s_a s_b, s_c s_d)`` as a ``(P, P)`` matrix over all unordered pairs. ``options``: a new table's
    (:data:`TABLE_OPTIONS`, as :class:`FourPointTable`) and the two-point matrix's (``method``, ``terms``,
    ``nodes``, ``quad_nodes``)."""
    K = np.asarray(K) if is_concrete(K) else device(K)
    N = pairs.N
    ms = multisets(N)
    if table is None:
        table = FourPointTable(act, K, **{k: v for k, v in options.items() if k in TABLE_OPTIONS})
    T4 = table(ms)[packed_positions(pairs)]
    if E2 is None:
        kopts = {k: v for k, v in options.items() if k in KERNEL_OPTIONS}
        E2 = two_point_matrix(act, K, **kopts)
    E2 = pairs.pack(E2)
    if is_concrete(T4, E2, C_W):
        T4, E2 = np.asarray(T4), np.asarray(E2)
    return C_W**2 * (T4 - E2[:, None] * E2[None, :])


# ----------------------------------------------------------------------------- propagation
def propagate(J, H, V, G1, pairs: Pairs, ratio: float):
    """``ratio * J V J^T`` (P, P) and ``ratio * (J G1 + H:V/2)`` (P,)."""
    xp = array_module(J, H, V, G1, ratio)
    J, H, V, G1 = (xp.asarray(t) for t in (J, H, V, G1))
    cols = pairs.cols
    A = sum(J[:, s, None] * V[cols[:, s], :] for s in range(3))  # (J V)
    JVJ = sum(A[:, cols[:, t]] * J[None, :, t] for t in range(3))
    HV = xp.einsum("pst,pst->p", H, V[cols[:, :, None], cols[:, None, :]])
    JG = xp.einsum("ps,ps->p", J, G1[cols])
    JVJ = 0.5 * (JVJ + JVJ.T)
    return ratio * JVJ, ratio * (JG + 0.5 * HV)
