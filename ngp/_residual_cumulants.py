"""Finite-width cumulants of residual networks to first order in ``1/n`` (docs/theory.md, residual networks).

A **chain** is a run of layers ``1 .. k`` of equal width ``n`` joined by residual blocks

    z^(j+1)_i = gamma_j z^(j)_i + xi_j [ b_i + sum_l W_il sigma(z^(j)_l) ],   Var W = C_W / n, Var b = C_b,

whose first layer has i.i.d. rows ``N(0, G_hat^0)`` given an *input metric* ``G_hat^0``: the
network's first layer (``G_hat^0 = K^(1)`` exactly), or the layer after a dense layer of width
``n_prev`` (``E G_hat^0 = K + K1 / n_prev``, ``n_prev Cov G_hat^0 = V``). A plain MLP layer is a
chain of one layer; ``gamma = 0, xi = 1`` blocks are plain layers. The metric of layer ``j``,
``G_hat^j = C_b + (C_W / n) sum_l s(z^(j)_l)`` with ``s_ab(z) = sigma(z_a) sigma(z_b)``, drives
block ``j`` or, at the end of the chain, a dense readout (``z_out`` i.i.d. ``N(0, G_hat^k)``).

Theory (derived and checked against Monte Carlo of actual networks in docs/theory.md). With
``g^j = sqrt(n) (G_hat^j - G^j)`` and the infinite-width single-neuron trajectory
``z^1 -> z^2 -> ...`` (``Cov(z^i_a, z^j_b) = Gamma(i, j) Sigma^i_ab`` for ``i <= j``,
``Gamma(i, j) = gamma_i ... gamma_{j-1}``), the empirical measure of layer ``k`` fluctuates as

    sqrt(n) <F, mu^k - nu^k> = X^k[F] + sum_{j<k} w^(k)_j  grad<F>_{Sigma^k} . g^j,
    w^(k)_j = xi_j^2 gamma_{j+1}^2 ... gamma_{k-1}^2   (w^(k)_0 = gamma_1^2 ... gamma_{k-1}^2),

where ``X`` is the Gaussian field of independent trajectories, ``Cov(X^i[A], X^j[B]) =
Cov(A(z^i), B(z^j))``. Hence ``g^k = C_W (X^k[s] + J^k sum_j w_j g^j)`` (``J^k = grad <s>`` at
``Sigma^k``, the MLP Jacobian over unordered pairs) and ``V = Cov(g^k, g^k)``. The metric's mean
shift ``kappa^k = n (E G_hat^k - G^k)`` obeys

    kappa^k / C_W = J^k . sum_j w_j kappa^j + 1/2 H^k : Cov(sum_j w_j g^j, sum_j w_j g^j)
                    + sum_{i <= j < k} w_j sum_{r, q} Cov(D_r s_p(z^k), s_q(z^i)) W^{j,i}_{rq},

the last term being the *self-interaction*: a neuron's own past enters its metric. Here
``D_r = d/dSigma_r`` acts as ``d_a d_b`` (``r = (a, b)``, ``a != b``) or ``d_a^2 / 2``, and
``g^j = sum_i W^{j,i} X^i[s] + U^j g^0``. For ``gamma = 0`` everything reduces to the MLP
recursions ``V' = C_W^2 Cov(s, s) + J V J^T``, ``K1' = J K1 + H:V/2``.

Multi-layer branches (``residual_step(..., branch=...)``): the branch's hidden layers are fresh
neurons given the metric feeding them, so the metric that drives the block is
``d^k = B^k g^k + zeta^k`` (``B`` the product of the branch layers' Jacobians, ``zeta`` an
independent Gaussian source whose covariance and mean follow the MLP recursions, with the
hidden widths' ratios); ``w_j g^j`` and ``kappa^j`` above are then those of ``d^j``.

Representation and cost. ``V`` is stored over unordered input pairs (``P = N (N+1) / 2``,
:class:`ngp._finite.Pairs`). A chain of ``k`` layers keeps the trajectory covariances
``Y(i, j)_pq = Cov(s_p(z^i), s_q(z^j))`` (``k^2 / 2`` matrices ``P x P``): each new layer costs
``k P^2`` cross-layer expectations of four activations (Gauss-Hermite in the ``<= 4``
distinct Gaussian variables) plus ``3 k P^2`` for the self-interaction, and ``O(k^2 P^3)``
matrix work. Same-layer quantities (kernel map, ``J``, ``H``, ``Cov(s, s)``) are the MLP's
(:mod:`ngp._kernel`, :mod:`ngp._finite`), so ``gamma = 0`` reproduces ``ngp.MLP`` to rounding.

Accuracy. Smooth activations: the cross-layer expectations use derivatives by autodiff and, per
problem, the tensor rule of the four-point engine's calibrated one-dimensional rules along the
eigen-directions of its covariance, at ``four_point_rtol`` (:func:`_smooth_calibrated`; the isotropic
rule ``CROSS_ORDERS`` where that is at least as fine). Measured (``benchmarks/residual_cross_accuracy.py``,
docs/theory-residual.md): trajectory covariances within ~1e-11 of the four-point engine at ``rtol = 1e-12``
(Hoelder scale) up to largest eigenvalues of 8, ``K1`` of a 5-input tanh ResMLP within 4e-9 of the same
rules at ``four_point_rtol = 1e-12`` up to first-layer variances of 3.5. The fixed isotropic rule (the
option ``cross_orders``; the default before) converges slowly once a direction's variance exceeds ~1
(``K1`` off by 1e-6, 1e-4, 0.5% and 42% at first-layer variances 0.6, 1.1, 2.3 and 14) and warns where
(:func:`_unresolved_variance`); a calibrated rule capped at ``CROSS_MAX_NODES`` warns too. Kinked
activations (relu family): second derivatives are moved onto the Gaussian weight by
integration by parts (Stein), so only the continuous kinks remain; Gauss-Hermite then
converges algebraically, ~1e-4 - 1e-3 relative at the default orders (the same accuracy class
as ``ngp.MLP``'s four-point function of relu with three or four distinct inputs).
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
from scipy import special

from ._cache import frozen_lru
from ._activations import Activation, activation as _make_activation
from ._finite import TABLE_OPTIONS, FourPointTable, fresh_components, fresh_covariance, jacobian_hessian
from ._fourpoint import LADDER, RTOL, bucket4, calibrated_orders, rule_tiles, tensor_rule_size
from ._gaussian import pruned_tensor_rule
from ._kernel import KERNEL_OPTIONS, kernel_map, two_point_matrix
from ._pairs import Pairs
from ._validate import device, pad_to, warn
from ._warnings import AccuracyWarning, CostWarning

__all__ = [
    "ChainState",
    "Cumulants",
    "PairSet",
    "CROSS_ORDERS",
    "CROSS_MAX_NODES",
    "CHAIN_OPTIONS",
    "RELU_ORDERS",
    "COMPANION_RTOL_FACTOR",
    "companion_options",
    "chain_start",
    "residual_step",
    "readout",
    "layer_cumulants",
    "mlp_step",
    "resmlp_cumulants",
]

#: Smooth activations: isotropic Gauss-Hermite nodes per dimension for the cross-layer expectations, by the
#: number ``d`` of distinct Gaussian variables (2 to 4). A problem whose calibrated rule (the four-point engine's
#: one-dimensional calibration at ``four_point_rtol`` along the eigen-directions of its covariance) needs more nodes
#: in some direction is integrated with that calibrated rule instead, and one whose rule calibrated on the activation
#: and its first two derivatives is smaller, with that rule (:func:`_smooth_calibrated`). Options
#: ``cross_orders={d: m}`` run this fixed rule with ``m`` nodes for every ``d``-variable problem (not converged at
#: variances above ~1: module docstring, "Accuracy"; an ``AccuracyWarning`` says so).
CROSS_ORDERS = {2: 128, 3: 64, 4: 40}
#: Calibrated rules of more nodes than this are lowered (their largest directions first) with an ``AccuracyWarning``
#: (a rule of this size costs ~0.2 s per problem, at 8-13 ns per node in 4-D; it is never built as a node array).
CROSS_MAX_NODES = 2**24
#: Calibrated rules run in the four-point engine's tiles (:func:`ngp._fourpoint.rule_tiles`: ``16 x 16`` nodes, a block
#: of the leading directions' pruned rule times a block of the last direction's nodes): tiles per compiled call, and per
#: call of the smaller shape that takes the rest; prefix blocks per bank (one upload of the rules' nodes, ~4 MB in
#: 4-D, shared by the calls of the rules it holds).
_CROSS_TILES = 1024
_CROSS_TILES_SMALL = 128
_CROSS_BANK_BLOCKS = 2**13
#: Tiles per flush of a bank's calls (:func:`_bank_sums`): their indices and sums, ~84 bytes a tile, are held for
#: one flush (22 MB), not for every (problem, tile) pair of the bank (docs/posterior.md, "What max_memory bounds").
_CROSS_FLUSH_TILES = 2**18
#: Calibrated rules drop tensor nodes of weight below ``_CROSS_CUTOFF * four_point_rtol`` times the largest (as the
#: four-point engine's rules).
_CROSS_CUTOFF = 1e-5
#: Seconds per node of the calibrated rules (measured warm on 2 cores: 7-11 ns in 3-D and 4-D) and the estimated time
#: of one batch of four-variable cross-layer expectations beyond which large variances get a :class:`ngp.CostWarning`
#: before the batch starts (:func:`_warn_cost`).
_CROSS_NODE_SECONDS = 1.1e-8
_CROSS_COST_WARN = 5.0
#: Relu family: one direction is integrated exactly, the other ``d - 1`` by Gauss-Hermite with this
#: many nodes per dimension (``cross_orders`` overrides these as well).
RELU_ORDERS = {2: 96, 3: 48, 4: 32}
#: The fixed smooth rules warn where the calibrated rules (``ngp._fourpoint``) would need more nodes for this
#: tolerance (or ``four_point_rtol`` if looser) in a direction of a problem (``AccuracyWarning``).
_CROSS_WARN_RTOL = 1e-6
#: Relu family: (outer node, interval) elements per batch of the exact-line expectations (:func:`_relu_batch` holds
#: ~57 float64 work values per element: 56 MB at this size, 670 MB at 1.5e6; at least one problem per batch). A relu
#: ``ResMLP(4, 64)`` prior on 6 inputs: 20-28 s and 0.35 GB peak, against 35-37 s and 0.98 GB at 1.5e6.
_BATCH_ELEMS = 150_000
_FRESH_OPTIONS = tuple(dict.fromkeys(KERNEL_OPTIONS + TABLE_OPTIONS))
#: Options a residual chain keeps (``ngp._residual_layers`` filters a prior's options by them). ``cross_iso=False`` runs
#: every smooth problem on its calibrated rule, never on the isotropic one (the companion quadrature below).
CHAIN_OPTIONS = _FRESH_OPTIONS + ("cross_orders", "cross_iso")
#: The companion quadrature behind a chain's error estimates (:func:`companion_options`): calibrated rules at this
#: many times ``four_point_rtol`` (at most :data:`_COMPANION_MAX_RTOL`).
COMPANION_RTOL_FACTOR = 100.0
_COMPANION_MAX_RTOL = 0.1


def _fixed_orders(act: Activation, options: dict) -> dict:
    """``{d: nodes per dimension}`` of the fixed cross-layer rules: the relu family's :data:`RELU_ORDERS`, then the
    option ``cross_orders`` (smooth activations: only the ``d`` it names; the others run calibrated rules)."""
    out = dict(RELU_ORDERS) if act.relu_slopes is not None else {}
    out.update({int(k): int(v) for k, v in dict(options.get("cross_orders") or {}).items()})
    return out


def companion_options(act: Activation, options: dict) -> dict | None:
    """The options of the *companion* chain whose difference from a chain run with ``options`` estimates that chain's
    quadrature error (``ngp._vertex_error``; docs/theory-residual.md, "Error estimates"): every expectation on a looser
    rule than the chain's, so that the difference is about the companion's own error, a bound on the chain's.
    Calibrated rules (smooth activations, the four-point table of the same-layer terms) at
    :data:`COMPANION_RTOL_FACTOR` times ``four_point_rtol``, never on the isotropic rule (``cross_iso=False``: a problem
    that the chain runs on it would get the same values); fixed rules (the relu family's :data:`RELU_ORDERS`,
    ``cross_orders``) at half the nodes per direction. ``None`` with ``four_point_order`` (a fixed rule without
    estimate for the same-layer terms, as for an MLP)."""
    if options.get("four_point_order") is not None:
        return None
    rtol = float(options.get("four_point_rtol") or RTOL)
    out = dict(options, four_point_rtol=min(COMPANION_RTOL_FACTOR * rtol, _COMPANION_MAX_RTOL), cross_iso=False,
               progress=False)
    fixed = _fixed_orders(act, options)
    if fixed:
        out["cross_orders"] = {d: max(2, m // 2) for d, m in fixed.items()}
    return out


# ============================================================================ public containers
@dataclasses.dataclass(frozen=True)
class Cumulants:
    """Cumulants of the pre-activations of one layer (the MLP state).

    ``E[z_i z_j] = delta_ij (K + K1 / n)`` and the connected four-point function of different
    neurons ``i != j`` is ``V_(ab)(cd) / n`` (docs/theory.md conventions), ``n`` the width that
    normalises them (``None``: exactly Gaussian, ``K1 = V = 0``).

    Attributes:
        K: ``(N, N)`` kernel.
        K1: ``(N, N)`` 1/n correction of the two-point function (``(P,)`` at the pairs of a :class:`PairSet`).
        V: ``(P, P)`` vertex over unordered pairs (``pairs``; on a :class:`PairSet`, exact at its blocks' entries).
        n: normalising width or ``None``.
        pairs: :class:`ngp._finite.Pairs` bookkeeping (``pairs.unpack4(V)`` gives ``(N,N,N,N)``).
    """

    K: np.ndarray
    K1: np.ndarray
    V: np.ndarray
    n: int | None
    pairs: Pairs = dataclasses.field(repr=False)

    @property
    def V4(self) -> np.ndarray:
        """``(N, N, N, N)`` vertex ``V[a, b, c, d] = V_(ab)(cd)``."""
        return np.asarray(self.pairs.unpack4(self.V))


@dataclasses.dataclass(frozen=True)
class ChainState:
    """State of a residual chain after its layer ``k = len(sigma)`` (see the module docstring).

    All fluctuations are in units of the chain width ``n``: ``g^j = sqrt(n) (G_hat^j - G^j)``.

    Attributes:
        act: the activation.
        n: chain width.
        pairs: pair bookkeeping for the ``N`` inputs.
        sigma: infinite-width kernels ``Sigma^1 .. Sigma^k`` of the chain's layers, ``(N, N)`` each.
        gamma, xi: skip and branch weights of the blocks applied so far (``k - 1`` each).
        jh: ``(J^j, H^j)`` for ``j = 1 .. k-1``: Jacobian ``(P, 3)`` and Hessian ``(P, 3, 3)``
            of ``Sigma -> <s>_Sigma`` at ``Sigma^j`` (columns ``pairs.cols``; ``C_W`` not included).
        W: ``W[j-1][i-1]`` ``(P, P)``: coefficient of ``X^i[s]`` in ``d^j`` (``1 <= i <= j <= k-1``),
            ``d^j = sqrt(n) (D_hat^j - D^j)`` the fluctuation of the metric that *drives* block ``j``
            (the metric of layer ``j`` for a one-layer branch, that of the branch's last hidden
            layer otherwise; ``d^0 = g^0`` the input metric).
        U: ``U[j]``: tuple of ``(P, P)`` coefficients of the independent sources in ``d^j``
            (``0 <= j <= k-1``; ``U[0] = (I,)``; sources added later count as zero).
        kappa: ``n (E D_hat^j - D^j)`` ``(P,)`` for ``j = 0 .. k-1``.
        sources: covariances ``(P, P)`` of the independent Gaussian sources: ``g^0`` (input metric)
            and the fresh fluctuations of the hidden layers of multi-layer branches.
        Y: ``{(i, j): (P, P)}`` trajectory covariances ``Cov(s_p(z^i), s_q(z^j))``, ``1 <= i <= j <= k``.
        Z: ``Z[i-1]`` ``(P, 3, P)``, ``i = 1 .. k-1``: self-interaction covariances
            ``Cov(D_r s_p(z^k), s_q(z^i))`` of the current layer (see :func:`_cross_layers`).
        options: quadrature options (``method``, ``terms``, ``nodes``, ``quad_nodes``,
            ``four_point_order``, ``four_point_rtol``, ``cross_orders``, ``cross_iso``) and ``max_memory`` (bytes;
            bounds the four-point table's chunks), as for an MLP (:data:`ngp._finite.TABLE_OPTIONS`).
    """

    act: Activation
    n: int
    pairs: Pairs = dataclasses.field(repr=False)
    sigma: tuple
    gamma: tuple
    xi: tuple
    jh: tuple
    W: tuple
    U: tuple
    kappa: tuple
    sources: tuple = dataclasses.field(repr=False)
    Y: dict = dataclasses.field(repr=False)
    Z: tuple = dataclasses.field(repr=False)
    options: dict = dataclasses.field(default_factory=dict, repr=False)

    @property
    def depth(self) -> int:
        """Number of chain layers so far."""
        return len(self.sigma)

    @property
    def K(self) -> np.ndarray:
        """``(N, N)`` infinite-width kernel of the current layer."""
        return self.sigma[-1]


@dataclasses.dataclass(frozen=True, eq=False)
class PairSet:
    """Some of the unordered pairs of ``N`` inputs, closed under diagonals (with ``(a, b)`` it holds ``(a, a)``
    and ``(b, b)``), and the entries of the ``(P, P)`` chain matrices to compute on them.

    A chain run on a pair set computes its trajectory covariances only at the entries ``need`` and is exact on
    every output entry whose blocks (``cols`` of its two pairs) it needs: the chain's linear maps act within
    the block ``(aa, bb, ab)`` of each pair, and each trajectory covariance is a function of its own inputs'
    kernel entries (module docstring, "Representation and cost"). :meth:`for_entries` and :meth:`for_local`
    build the sets a prediction asks for.

    Attributes:
        N: number of inputs (kernels stay ``(N, N)``).
        index: ``(P,)`` sorted indices of the pairs in ``Pairs.of(N)``.
        a, b, diag: the pairs' inputs (``a <= b``) and ``a == b``.
        cols: ``(P, 3)`` positions in this set of ``(a, a), (b, b), (a, b)``.
        need: ``(P, P)`` symmetric bool, the entries to compute.
    """

    N: int
    index: np.ndarray
    a: np.ndarray
    b: np.ndarray
    diag: np.ndarray
    cols: np.ndarray
    need: np.ndarray = dataclasses.field(repr=False)

    @property
    def P(self) -> int:
        return self.a.size

    def pack(self, M):
        """``(N, N)`` -> ``(P,)`` values at the set's pairs."""
        return np.asarray(M)[self.a, self.b]

    def positions(self, p) -> np.ndarray:
        """Positions in the set of the pairs ``p`` (indices in ``Pairs.of(N)``, held by the set)."""
        return np.searchsorted(self.index, np.asarray(p, dtype=np.int64))

    @classmethod
    def _of(cls, pairs: Pairs, p, q) -> "PairSet":
        """The blocks of the pairs ``p`` and ``q`` (``(M,)`` each), needing ``block(p) x block(q)``."""
        bp, bq = pairs.cols[p], pairs.cols[q]  # (M, 3) the blocks, as pair indices
        index = np.unique(np.concatenate([bp.ravel(), bq.ravel()]))
        pos = np.full(pairs.P, -1, dtype=np.int64)
        pos[index] = np.arange(index.size)
        need = np.zeros((index.size, index.size), dtype=bool)
        lp, lq = pos[bp], pos[bq]
        need[lp[:, :, None], lq[:, None, :]] = True
        need |= need.T
        return cls(pairs.N, index, pairs.a[index], pairs.b[index], pairs.diag[index], pos[pairs.cols[index]], need)

    @classmethod
    def for_entries(cls, pairs: Pairs, p, q) -> "PairSet":
        """The set on which a chain gives ``V`` at the entries ``(p[i], q[i])`` (pair indices)."""
        return cls._of(pairs, np.asarray(p, dtype=np.int64), np.asarray(q, dtype=np.int64))

    @classmethod
    def for_local(cls, pairs: Pairs, sel) -> "PairSet":
        """The set on which a chain gives ``K1`` and ``V`` on the blocks ``(aa, bb, ab)`` of the pairs ``sel``."""
        sel = np.asarray(sel, dtype=np.int64)
        return cls._of(pairs, sel, sel)


# ============================================================================ MLP building blocks
def _kopts(options):
    return {k: v for k, v in options.items() if k in KERNEL_OPTIONS}


def _jh(act, K, pairs, options):
    J, H = jacobian_hessian(act, device(K), pairs, 1.0, **_kopts(options))
    return np.asarray(J), np.asarray(H)


def _same_layer(act, K, pairs, options):
    opts = {k: v for k, v in options.items() if k in _FRESH_OPTIONS}
    if not isinstance(pairs, PairSet):
        return np.asarray(fresh_covariance(act, device(K), pairs, 1.0, **opts))
    K = np.asarray(K)  # a pair set: the needed entries only
    p, q = np.nonzero(np.triu(pairs.need))
    table = FourPointTable(act, K, **{k: v for k, v in opts.items() if k in TABLE_OPTIONS})
    E2 = two_point_matrix(act, K, **_kopts(opts))
    out = np.zeros((pairs.P, pairs.P))
    out[p, q] = out[q, p] = fresh_components(table, np.stack([pairs.a[p], pairs.b[p], pairs.a[q], pairs.b[q]], 1),
                                             E2, 1.0)
    return out


def _jac_left(J, M, pairs):
    """``J M`` for the block-sparse Jacobian ``J`` ``(P, 3)`` and a ``(P, X)`` matrix ``M``."""
    cols = pairs.cols
    return sum(J[:, s, None] * M[cols[:, s], :] for s in range(3))


def _hess_contract(H, C, pairs):
    """``(H : C)_p = sum_{s,t} H[p, s, t] C[cols[p, s], cols[p, t]]`` ``(P,)``."""
    cols = pairs.cols
    return np.einsum("pst,pst->p", H, C[cols[:, :, None], cols[:, None, :]])


# ============================================================================ cross-layer quadrature
@frozen_lru(16)
def _rule(d: int, m: int, cutoff: float = 1e-15):
    """Tensor Gauss-Hermite rule for ``N(0, I_d)``, nodes with negligible weight pruned
    (:func:`ngp._gaussian.pruned_tensor_rule`), weights renormalised to sum 1."""
    nodes, w = pruned_tensor_rule(d, m, cutoff)
    return nodes, w / w.sum()


#: Problems per compiled call of the smooth kernel (padded; one compilation per activation and shape).
_SMOOTH_BATCH = 16


def _integrands(act: Activation, dL: int, dR: int, z):
    """At nodes ``z`` (Q, d): the left integrands (4, Q) (``s_p`` of the later layer and its three ``D_r s_p``) and
    the right one (Q,) (``s_q`` of the earlier layer) of :func:`_smooth_batch`."""
    d1, d2 = act.derivative(1), act.derivative(2)
    s = act.fn
    right = s(z[:, dL]) * s(z[:, dL + dR - 1])
    za, zb = z[:, 0], z[:, dL - 1]
    sa, sb = s(za), s(zb)
    if dL == 1:
        D0 = d1(za) ** 2 + sa * d2(za)
        lefts = [sa * sb, D0, D0, D0]
    else:
        lefts = [sa * sb, 0.5 * d2(za) * sb, 0.5 * sa * d2(zb), d1(za) * d1(zb)]
    return jnp.stack(lefts), right


@functools.lru_cache(maxsize=64)
def _smooth_kernel(act: Activation, dL: int, dR: int):
    """Compiled ``(C (B, d, d), nodes, weights) -> (B, 4)`` for :func:`_smooth_batch` (one problem
    at a time inside, so memory stays at one node grid)."""

    def one(C, nodes, weights):
        lam, Q = jnp.linalg.eigh(C)
        z = nodes @ (Q * jnp.sqrt(jnp.clip(lam, 0.0, None))[None, :]).T  # (Q, d)
        left, right = _integrands(act, dL, dR, z)
        eR = right @ weights
        return left @ (right * weights) - (left @ weights) * eR

    return jax.jit(lambda Cs, nodes, weights: jax.lax.map(lambda C: one(C, nodes, weights), Cs))


def _smooth_batch(act, dL, dR, C, nodes, weights):
    """Smooth activations: ``Cov(s_p(u), s_q(w))`` and ``Cov(D_r s_p(u), s_q(w))`` by Gauss-Hermite.

    ``y ~ N(0, C_b)`` with ``d = dL + dR`` variables: ``u = y[:dL]`` (inputs ``a, b`` of the later
    layer; ``a == b`` when ``dL == 1``), ``w = y[dL:]`` (inputs ``c, d`` of the earlier one).
    Returns ``(B, 4)``: the trajectory covariance and the self-interaction covariances for
    ``r = (a, a), (b, b), (a, b)`` (for ``dL == 1`` the three are equal), derivatives by autodiff.
    """
    fn = _smooth_kernel(act, dL, dR)
    nodes_j, weights_j = device(nodes), device(weights)
    out = np.empty((C.shape[0], 4))
    for start in range(0, C.shape[0], _SMOOTH_BATCH):
        part = C[start:start + _SMOOTH_BATCH]
        got = part.shape[0]
        if got < _SMOOTH_BATCH:
            part = pad_to(part, _SMOOTH_BATCH)
        out[start:start + got] = np.asarray(fn(device(part), nodes_j, weights_j))[:got]
    return out


# ---------------------------------------------------------------- relu family: exact along a line
_T_INF = 40.0  # |t| beyond which the standard normal has no mass in float64


def _poly_mul(p, q):
    """Product of polynomials given by coefficient arrays ``(..., dp)`` and ``(..., dq)``."""
    out = np.zeros(np.broadcast_shapes(p.shape[:-1], q.shape[:-1]) + (p.shape[-1] + q.shape[-1] - 1,))
    for i in range(p.shape[-1]):
        for j in range(q.shape[-1]):
            out[..., i + j] += p[..., i] * q[..., j]
    return out


def _truncated_moments(lo, hi, kmax):
    """``int_lo^hi t^k phi(t) dt`` for ``k = 0 .. kmax`` (standard normal density ``phi``)."""
    pl = np.exp(-0.5 * lo * lo) / math.sqrt(2 * math.pi)
    ph = np.exp(-0.5 * hi * hi) / math.sqrt(2 * math.pi)
    M = [special.ndtr(hi) - special.ndtr(lo), pl - ph]
    tl, th = np.ones_like(lo), np.ones_like(hi)
    for k in range(2, kmax + 1):
        tl, th = tl * lo, th * hi
        M.append(tl * pl - th * ph + (k - 1) * M[k - 2])
    return np.stack(M, axis=-1)


def _relu_batch(slopes, dL, dR, alpha, beta, U, weights):
    """Relu family: the outputs of :func:`_smooth_batch`, with ``y = alpha t + beta`` and ``t ~ N(0, 1)``
    integrated exactly.

    ``alpha`` ``(B, d)``, ``beta`` ``(B, Q, d)`` (the other directions at the outer nodes), ``U``
    ``(B, d, d) = C^-1``. On each interval between the kinks ``t = -beta_j / alpha_j`` every
    ``sigma(y_j)`` is linear in ``t``, so the integrand is a polynomial (degree <= 6 with the Stein
    weight ``(U y)_c (U y)_e - U_ce`` that carries ``D_r``) integrated by truncated normal moments.
    """
    a_plus, a_minus = slopes
    d = dL + dR
    with np.errstate(divide="ignore", invalid="ignore"):
        tau = np.where(alpha[:, None, :] == 0, _T_INF, -beta / alpha[:, None, :])
    tau = np.sort(np.clip(tau, -_T_INF, _T_INF), axis=-1)
    ends = np.full(tau.shape[:-1] + (1,), _T_INF)
    edges = np.concatenate([-ends, tau, ends], axis=-1)
    lo, hi = edges[..., :-1], edges[..., 1:]  # (B, Q, d + 1) intervals
    M = _truncated_moments(lo, hi, 6)
    al = alpha[:, None, None, :]
    be = np.broadcast_to(beta[:, :, None, :], lo.shape + (d,))  # (B, Q, I, d)
    c = np.where(al * (0.5 * (lo + hi))[..., None] + be > 0, a_plus, a_minus)
    lin = np.stack([c * be, c * al], axis=-1)  # sigma(y_j) = lin[..., j, 0] + lin[..., j, 1] t
    left0 = _poly_mul(lin[..., 0, :], lin[..., dL - 1, :])
    right = _poly_mul(lin[..., dL, :], lin[..., d - 1, :])
    Ub = np.einsum("bij,bqj->bqi", U, beta)[:, :, None, :]
    Ua = np.einsum("bij,bj->bi", U, alpha)[:, None, None, :]
    Uy = np.stack(np.broadcast_arrays(Ub, Ua), axis=-1)  # (U y)_c = Uy[..., c, 0] + Uy[..., c, 1] t

    def stein(ci, ei, f):
        w = _poly_mul(Uy[..., ci, :], Uy[..., ei, :])
        w[..., 0] -= U[:, ci, ei][:, None, None]
        return f * _poly_mul(left0, w)

    def expect(poly):
        return np.sum(poly * M[..., :poly.shape[-1]], axis=(-1, -2)) @ weights

    lefts = [left0, stein(0, 0, 0.5), stein(dL - 1, dL - 1, 0.5), stein(0, dL - 1, 1.0)]
    eR = expect(right)
    return np.stack([expect(_poly_mul(lf, right)) - expect(lf) * eR for lf in lefts], axis=1)


def _line_direction(R):
    """Unit ``v`` maximising ``min_j |R_j . v| / |R_j|`` over signed sums of the normalised rows."""
    Rn = R / np.linalg.norm(R, axis=1, keepdims=True)
    best, best_v = -1.0, None
    for signs in itertools.product((1.0, -1.0), repeat=R.shape[0] - 1):
        v = (np.array((1.0,) + signs)[:, None] * Rn).sum(0)
        norm = np.linalg.norm(v)
        if norm < 1e-12:
            continue
        v = v / norm
        score = np.min(np.abs(Rn @ v))
        if score > best:
            best, best_v = score, v
    return best_v


def _relu_problems(C, m):
    """Line direction, outer Gauss-Hermite rule (``d - 1`` dimensions) and ``alpha, beta, U``."""
    B, d, _ = C.shape
    nodes, weights = _rule(d - 1, m)
    L = np.linalg.cholesky(C)
    alpha = np.empty((B, d))
    perp = np.empty((B, d, d - 1))
    for b in range(B):
        v = _line_direction(L[b])
        Q, _ = np.linalg.qr(np.column_stack([v, np.eye(d)]))
        alpha[b] = L[b] @ v
        perp[b] = L[b] @ Q[:, 1:d]
    beta = np.einsum("qe,bde->bqd", nodes, perp)
    return alpha, beta, np.linalg.inv(C), weights


def _run_batches(act, dL, dR, C, m):
    """Chunked, padded calls of the batch kernels; returns ``(B, 4)``."""
    relu = act.relu_slopes is not None
    d = dL + dR
    n_nodes = _rule(d - 1 if relu else d, m)[0].shape[0]
    per = max(1, _BATCH_ELEMS // (n_nodes * (d + 1))) if relu else C.shape[0]
    out = np.empty((C.shape[0], 4))
    for start in range(0, C.shape[0], per):
        part = C[start:start + per]
        got = part.shape[0]
        if relu:
            res = _relu_batch(tuple(act.relu_slopes), dL, dR, *_relu_problems(part, m))
        else:
            res = _smooth_batch(act, dL, dR, part, *_rule(d, m))
        out[start:start + got] = res[:got]
    return out


def _calibrated_orders(act: Activation, scales: np.ndarray, rtol: float):
    """Per-problem node counts ``(B, d)`` for direction ``scales`` (B, d) (largest first) at ``rtol``, each rule
    lowered to at most :data:`CROSS_MAX_NODES` nodes (its largest directions first); also the largest variance of
    a lowered direction (0 if none was)."""
    orders = calibrated_orders(act, scales, rtol)
    cutoff = _CROSS_CUTOFF * rtol
    lowered = 0.0
    for b in np.nonzero(np.prod(orders.astype(float), axis=1) > CROSS_MAX_NODES)[0]:
        o = orders[b]
        while tensor_rule_size(tuple(o), cutoff) > CROSS_MAX_NODES:
            j = int(np.argmax(o))
            o[j] = LADDER[max(LADDER.index(int(o[j])) - 1, 0)]
            lowered = max(lowered, float(scales[b, j]) ** 2)
    return orders, lowered


@functools.lru_cache(maxsize=64)
def _calibrated_kernel(act: Activation, dL: int, dR: int):
    """Compiled ``(R (G, d, d), XP (nP, d-1, TP), PW (nP, TP), XL (nM, TM), WL (nM, TM), idx (T, 3)) -> (T, 9)``: tile
    ``t`` pairs the block ``idx[t, 0]`` of the leading directions' nodes with the block ``idx[t, 1]`` of the last
    direction's (:func:`ngp._fourpoint.rule_tiles`) for the problem ``y = R[idx[t, 2]] x``, ``x ~ N(0, I)``, and
    returns the weighted sums of ``left * right`` (4), ``left`` (4) and ``right`` (1) of :func:`_integrands` over its
    nodes. The ``TP x TM`` nodes are formed by broadcasting (no node array on the host); the sums are elementwise
    products reduced per tile (a batched dot over the tiles ran 2.5x slower in XLA:CPU). One program per activation
    and shape."""

    def run(RB, XP, PW, XL, WL, idx):
        T, d = idx.shape[0], RB.shape[-1]
        X, P, xl, wl = XP[idx[:, 0]], PW[idx[:, 0]], XL[idx[:, 1]], WL[idx[:, 1]]  # (T, d-1, TP), (T, TP), (T, TM)
        R = RB[idx[:, 2]]  # (T, d, d)
        z = jnp.stack([(sum(R[:, k, j, None] * X[:, j] for j in range(d - 1))[:, :, None]
                        + (R[:, k, d - 1, None] * xl)[:, None, :]).reshape(-1) for k in range(d)], axis=1)
        left, right = _integrands(act, dL, dR, z)
        w = (P[:, :, None] * wl[:, None, :]).reshape(-1)
        rw = right * w
        return jnp.stack([(f * g).reshape(T, -1).sum(axis=1) for g in (rw, w) for f in left]
                         + [rw.reshape(T, -1).sum(axis=1)], axis=1)

    return jax.jit(run)


@functools.lru_cache(maxsize=64)
def _derivative_activations(act: Activation) -> tuple:
    """``sigma'`` and ``sigma''`` of ``act`` as activations (one object each per activation: the calibration tables
    are cached on them), for calibrating the self-interaction integrands, which carry them."""
    return tuple(Activation(f"{act.name}_d{k}", act.derivative(k)) for k in (1, 2))


def _smooth_calibrated(act: Activation, dL: int, dR: int, C: np.ndarray, rtol: float, *, iso: bool = True):
    """:func:`_smooth_batch` with a rule per problem that the calibration says is converged at ``rtol``.

    Each covariance of ``C`` (B, d, d) is diagonalised on the host; a problem whose calibrated orders along its
    eigen-directions (:func:`ngp._fourpoint.calibrated_orders`) are all within the isotropic rule
    (:data:`CROSS_ORDERS`) runs on that rule, unless the rule calibrated on ``sigma``, ``sigma'`` and ``sigma''`` (the
    self-interaction integrands carry the derivatives; the calibration of ``sigma`` alone leaves ``K1`` above the
    tolerance) has fewer nodes, which it then runs on (gelu: 1.7-10x faster, errors within the tolerance,
    docs/theory-residual.md, sections 6 and 9); the others run on the tensor rule of the calibrated
    one-dimensional rules along their eigen-directions (Gauss-Hermite and, at large scales, trapezoid rules; pruned as
    :func:`ngp._fourpoint.tensor_rule`), its largest order last, in the four-point engine's tiles
    (:func:`ngp._fourpoint.rule_tiles`, cached per rule: the leading directions' pruned rule and the last direction's
    nodes, never the node array): problems that need the same orders share a rule, rules share banks on the device, and
    every (problem, tile) pair runs through one compiled kernel. ``iso=False``: every problem on its calibrated rule
    (of ``sigma``).
    Returns ``(B, 4)`` and the largest variance of a direction whose rule was capped (0 if none).
    """
    B, d, _ = C.shape
    lam, Q = np.linalg.eigh(C)
    lam, Q = np.clip(lam[:, ::-1], 0.0, None), Q[:, :, ::-1]
    R = Q * np.sqrt(lam)[:, None, :]
    orders, lowered = _calibrated_orders(act, np.sqrt(lam), rtol)
    iso = np.all(orders <= CROSS_ORDERS[d], axis=1) & iso  # the isotropic rule is at least as fine in every direction
    cutoff = _CROSS_CUTOFF * rtol
    if iso.any():  # ... but a rule calibrated on sigma, sigma' and sigma'' may be smaller: then that one
        rows = np.nonzero(iso)[0]
        fine = functools.reduce(np.maximum, [calibrated_orders(a, np.sqrt(lam[rows]), rtol)
                                             for a in _derivative_activations(act)], orders[rows])
        n_iso = _rule(d, CROSS_ORDERS[d])[0].shape[0]
        size = {o: tensor_rule_size(tuple(sorted(o)), cutoff) for o in set(map(tuple, fine.tolist()))}
        smaller = np.array([size[tuple(o)] < n_iso for o in fine.tolist()])
        orders[rows[smaller]] = fine[smaller]
        iso[rows[smaller]] = False
    out = np.empty((B, 4))
    if iso.any():
        out[iso] = _run_batches(act, dL, dR, C[iso], CROSS_ORDERS[d])
    rest = np.nonzero(~iso)[0]
    if not rest.size:
        return out, lowered
    _warn_cost(act, orders[rest], lam[rest], rtol, d)
    fn = _calibrated_kernel(act, dL, dR)
    sums = np.zeros((B, 9))
    uniq, inv = np.unique(orders[rest], axis=0, return_inverse=True)
    by_rule = np.argsort(inv.ravel(), kind="stable")
    groups = np.split(rest[by_rule], np.cumsum(np.bincount(inv.ravel(), minlength=uniq.shape[0]))[:-1])
    bank, blocks = [], 0  # (problems, tiles of the rule with its largest order last); the tiles of one bank held
    for o, rows in zip(uniq, groups):
        perm = np.argsort(o, kind="stable")  # the largest order last: the tiles' long direction
        R[rows] = R[rows][:, :, perm]
        o = tuple(int(m) for m in o[perm])
        tiles = rule_tiles(o, cutoff, d)
        if bank and 1 + blocks + tiles[0].shape[0] > _CROSS_BANK_BLOCKS:
            _bank_sums(fn, R, bank, d, sums)
            bank, blocks = [], 0
        bank.append((rows, o[-1], tiles))
        blocks += tiles[0].shape[0]
    _bank_sums(fn, R, bank, d, sums)
    out[rest] = sums[rest, :4] - sums[rest, 4:8] * sums[rest, 8:]
    return out, lowered


def _warn_cost(act: Activation, orders: np.ndarray, lam: np.ndarray, rtol: float, d: int) -> None:
    """A :class:`ngp.CostWarning` before a batch of four-variable calibrated rules (``orders`` (B, d) at ``rtol``,
    eigenvalues ``lam`` (B, d)) whose nodes would take more than :data:`_CROSS_COST_WARN` seconds at
    :data:`_CROSS_NODE_SECONDS` each, where large variances make the rules many times those at variances below ~1 (the
    isotropic rule): a network evaluated at such variances runs many such batches. The text depends on the activation
    and the largest variance (one significant digit) only, so Python's filter shows it once per call site."""
    if d != 4:
        return
    cutoff = _CROSS_CUTOFF * rtol
    uniq, count = np.unique(orders, axis=0, return_counts=True)
    nodes = sum(tensor_rule_size(tuple(o), cutoff) * int(c) for o, c in zip(uniq.tolist(), count))
    iso = _rule(d, CROSS_ORDERS[d])[0].shape[0]
    if nodes * _CROSS_NODE_SECONDS <= _CROSS_COST_WARN or nodes <= 10 * iso * orders.shape[0]:
        return
    var = float(f"{float(lam.max()):.1g}")
    size = tensor_rule_size(tuple(_calibrated_orders(act, np.full((1, d), math.sqrt(var)), RTOL)[0][0]),
                            _CROSS_CUTOFF * RTOL)  # at the default tolerance: the same text for the error companion
    warn(f"residual cumulants: at pre-activation variances up to ~{var:g} a four-variable cross-layer "
         f"expectation's rule for {act.name!r} has ~{size / iso:.0f}x the nodes it has below ~1 at the default "
         f"tolerance (~{1 / _CROSS_NODE_SECONDS:.0g} nodes/s), and K1, V and predictions run many such batches: "
         "minutes (a posterior on 4 training and 2 test inputs of variance ~2000: 3.5 min; more inputs, more: about as "
         "the number of input pairs squared). Standardised inputs or smaller C_W, C_b "
         "cut the cost most (docs/theory-residual.md, \"Quadrature\").", CostWarning)


def _bank_sums(fn, R, bank, d: int, sums) -> None:
    """Adds to ``sums`` (B, 9) the kernel's sums of every (problem, tile) pair of the rules in ``bank`` (``(problems,
    last order, tiles)`` each), their nodes uploaded once; calls of :data:`_CROSS_TILES` tiles (the rest in calls of
    :data:`_CROSS_TILES_SMALL`), dispatched in flushes of about :data:`_CROSS_FLUSH_TILES` tiles whose results are read
    before the next flush is built (the tiles' indices and per-tile sums, 84 bytes per tile, are held for one flush, not
    for the whole bank). Padding tiles read block 0, of zero weights."""
    nP = np.array([t[0].shape[0] for _, _, t in bank])
    pbase = 1 + np.cumsum(nP) - nP  # block 0: zero weights, for padding tiles
    last = {}
    for _, m, t in bank:  # the last direction's blocks depend on its order only
        last.setdefault(m, t)
    mstart = dict(zip(last, np.cumsum([0] + [t[2].shape[0] for t in last.values()])))
    TP, TM = bank[0][2][0].shape[2], bank[0][2][2].shape[1]  # the tile shape
    XP = np.zeros((bucket4(1 + nP.sum(), max(64, _CROSS_BANK_BLOCKS // 4)), d - 1, TP))  # few shapes, compilations
    PW = np.zeros((XP.shape[0], TP))
    XL = np.zeros((bucket4(sum(t[2].shape[0] for t in last.values()), 256), TM))
    WL = np.zeros_like(XL)
    for (_, _, t), p0 in zip(bank, pbase):
        XP[p0:p0 + t[0].shape[0]], PW[p0:p0 + t[0].shape[0]] = t[0], t[1]
    for key, t in last.items():
        XL[mstart[key]:mstart[key] + t[2].shape[0]], WL[mstart[key]:mstart[key] + t[2].shape[0]] = t[2], t[3]
    probs = np.concatenate([rows for rows, _, _ in bank])  # the bank's problems (each in one rule)
    first = np.cumsum([0] + [rows.size for rows, _, _ in bank])
    args = (device(pad_to(R[probs], bucket4(probs.size, 1024))),) + tuple(device(a) for a in (XP, PW, XL, WL))
    local = np.zeros((probs.size, 9))
    flush, count = [], 0  # (prefix blocks, last-direction blocks, first problem, problems) of the next flush
    for (rows, m, t), p0, f0 in zip(bank, pbase, first):
        per = max(1, _CROSS_FLUSH_TILES // t[4].size)  # problems of this rule per flush
        for s in range(0, rows.size, per):
            k = min(per, rows.size - s)
            flush.append(((t[4] + p0).astype(np.int32), (t[5] + mstart[m]).astype(np.int32), f0 + s, k))
            count += k * t[4].size
            if count >= _CROSS_FLUSH_TILES:
                _flush_tiles(fn, args, flush, local)
                flush, count = [], 0
    if flush:
        _flush_tiles(fn, args, flush, local)
    sums[probs] += local


def _flush_tiles(fn, args, flush, local) -> None:
    """Runs the tiles of ``flush`` (:func:`_bank_sums`) through ``fn`` (all calls dispatched before any is read) and
    adds each tile's sums to its problem's row of ``local``."""
    tiles = np.concatenate([np.stack([np.tile(pb, k), np.tile(mb, k),
                                      np.repeat(np.arange(f, f + k, dtype=np.int32), pb.size)], axis=1)
                            for pb, mb, f, k in flush])
    pending, st = [], 0
    while st < tiles.shape[0]:
        left = tiles.shape[0] - st
        T = _CROSS_TILES if left > _CROSS_TILES // 2 else _CROSS_TILES_SMALL
        part = tiles[st:st + T]
        idx = np.zeros((T, 3), np.int32)  # padding: block 0 of zero weights
        idx[:part.shape[0]] = part
        pending.append((part.shape[0], fn(*args, device(idx))))
        st += T
    res = np.concatenate([np.asarray(r)[:n] for (n, _), r in zip(pending, jax.device_get([r for _, r in pending]))])
    for k in range(9):
        local[:, k] += np.bincount(tiles[:, 2], weights=res[:, k], minlength=local.shape[0])


def _cross_layers(act, S_k, earlier, pairs, options):
    """Trajectory and self-interaction covariances between layer ``k`` and earlier layers ``i``.

    ``earlier`` is a list of ``(Sigma^i, Gam)`` with ``Cov(z^k, z^i) = Gam Sigma^i``. Returns one
    ``(Y, Z)`` per entry: ``Y`` ``(P, P)`` with ``Y[q, p] = Cov(s_q(z^i), s_p(z^k))`` and ``Z``
    ``(P, 3, P)`` with ``Z[p, t, q] = Cov(D_r s_p(z^k), s_q(z^i))``, ``r = pairs.cols[p, t]``:
    ``D_r = d/dSigma_r``, i.e. ``d_a d_b`` for ``r = (a, b)``, ``a != b``, and ``d_a^2 / 2`` for
    ``r = (a, a)``; for a diagonal ``p`` only ``t = 0`` is non-zero. All problems of one shape are
    integrated in one batch.
    """
    P = pairs.P
    out = [(np.zeros((P, P)), np.zeros((P, 3, P))) for _ in earlier]
    live = [j for j, (_, Gam) in enumerate(earlier) if Gam != 0.0]
    if not live:
        return out
    if act.name == "linear":  # s = z z: Cov(z_c z_d, z'_a z'_b) = Gam^2 (S_ca S_db + S_cb S_da); D_r s constant
        a, b = pairs.a, pairs.b
        for j in live:
            S_i, Gam = earlier[j]
            out[j][0][:] = Gam * Gam * (S_i[a][:, a] * S_i[b][:, b] + S_i[a][:, b] * S_i[b][:, a])
        return out
    relu = act.relu_slopes is not None
    if relu:
        for j in live:
            _check_regular(S_k, *earlier[j], pairs)
    orders = _fixed_orders(act, options)  # smooth: calibrated rules unless cross_orders fixes d's rule
    rtol = float(options.get("four_point_rtol") or RTOL)
    short = 0.0  # largest variance of a direction that a fixed smooth rule resolves with fewer nodes than needed
    lowered = 0.0  # largest variance of a direction whose calibrated rule was capped
    if isinstance(pairs, PairSet):  # the needed entries only
        p, q = np.nonzero(pairs.need)
    else:
        p, q = (g.ravel() for g in np.meshgrid(np.arange(P), np.arange(P), indexing="ij"))
    lefts = np.stack([pairs.a[p], pairs.b[p]], axis=1)
    rights = np.stack([pairs.a[q], pairs.b[q]], axis=1)
    dL = np.where(pairs.diag[p], 1, 2)
    dR = np.where(pairs.diag[q], 1, 2)
    for l_d in (1, 2):
        for r_d in (1, 2):
            sel = np.nonzero((dL == l_d) & (dR == r_d))[0]
            if sel.size == 0:
                continue
            li, ri = lefts[sel][:, :l_d], rights[sel][:, :r_d]
            d = l_d + r_d
            blocks = []
            for j in live:
                S_i, Gam = earlier[j]
                C = np.empty((sel.size, d, d))
                C[:, :l_d, :l_d] = S_k[li[:, :, None], li[:, None, :]]
                C[:, l_d:, l_d:] = S_i[ri[:, :, None], ri[:, None, :]]
                X = Gam * S_i[li[:, :, None], ri[:, None, :]]
                C[:, :l_d, l_d:] = X
                C[:, l_d:, :l_d] = np.swapaxes(X, 1, 2)
                blocks.append(C)
            Cs = np.concatenate(blocks)
            if d in orders:
                if not relu:
                    short = max(short, _unresolved_variance(act, Cs, orders[d], max(rtol, _CROSS_WARN_RTOL)))
                    vals = _run_batches(act, l_d, r_d, Cs, orders[d])
                else:
                    dead = np.any(np.diagonal(Cs, axis1=1, axis2=2) == 0, axis=1)
                    vals = np.zeros((Cs.shape[0], 4))
                    if not dead.all():
                        vals[~dead] = _run_batches(act, l_d, r_d, Cs[~dead], orders[d])
            else:
                vals, low = _smooth_calibrated(act, l_d, r_d, Cs, rtol, iso=bool(options.get("cross_iso", True)))
                lowered = max(lowered, low)
            vals = vals.reshape(len(live), sel.size, 4)
            for v, j in zip(vals, live):
                Y, Z = out[j]
                Y[q[sel], p[sel]] = v[:, 0]
                Z[p[sel], 0, q[sel]] = v[:, 1]
                if l_d == 2:
                    Z[p[sel], 1, q[sel]] = v[:, 2]
                    Z[p[sel], 2, q[sel]] = v[:, 3]
    if short:
        warn(
            f"residual cumulants: the fixed cross-layer Gauss-Hermite rule (cross_orders={orders}) is not "
            f"converged at a direction of variance {short:.3g}: these expectations may err by more "
            f"than {max(rtol, _CROSS_WARN_RTOL):g} of their Hoelder scale, and K1 and V by more than that relative "
            "(measured on a 5-input tanh ResMLP: K1 off by 1e-6, 1e-4, 0.5% and 42% at first-layer variances 0.6, "
            "1.1, 2.3 and 14; the default calibrated rules are converged; docs/theory-residual.md, "
            "\"Quadrature\").", AccuracyWarning)
    if lowered:
        warn(
            f"residual cumulants: a cross-layer expectation's calibrated rule was capped at {CROSS_MAX_NODES} nodes "
            f"(a direction of variance {lowered:.3g}); its error may exceed four_point_rtol={rtol:g}. Smaller "
            "pre-activation variances (C_W, C_b, input scale) avoid it (docs/theory-residual.md, \"Quadrature\").",
            AccuracyWarning)
    return out


def _unresolved_variance(act: Activation, C: np.ndarray, m: int, rtol: float) -> float:
    """The largest eigenvalue among the problems ``C`` (B, d, d) whose calibrated rule at ``rtol``
    (:func:`ngp._fourpoint.calibrated_orders`, along the eigen-directions) needs more than ``m`` nodes in a
    direction; 0 if none does."""
    lam = np.clip(np.linalg.eigvalsh(C), 0.0, None)
    short = np.any(calibrated_orders(act, np.sqrt(lam), rtol) > m, axis=1)
    return float(lam[short].max()) if short.any() else 0.0


#: Rounding amplification of the kinked-activation self-interaction term: its relative error is about this over the
#: square of the smallest relative 2x2 determinant of a pair (measured on relu and leaky-relu ResMLPs, two inputs
#: merging: 1e-16 to 2e-14, the largest against a reference extrapolated from well-separated inputs: K1 off by 2.2% at
#: a determinant of 9.2e-7, by 6.6e-4 at 5.7e-6, by a factor 300 at 6.4e-9).
_STEIN_ROUNDING = 2e-14
#: The term is refused when that estimate exceeds this (a determinant below ~1.4e-6) and warned about above
#: :data:`_STEIN_WARN` (below ~1.4e-4).
_STEIN_REFUSE = 1e-2
_STEIN_WARN = 1e-6


def _check_regular(S_k, S_i, Gam, pairs):
    """The Stein weights (relu family) need each pair's covariance, and the noise the blocks add
    between the two layers, to be regular: the weights ``(C^-1 y)_c (C^-1 y)_e`` amplify rounding by about the
    inverse square of the relative determinant (:data:`_STEIN_ROUNDING`), so an error where that makes the term
    wrong by more than :data:`_STEIN_REFUSE` relative, a warning (with the estimate) beyond :data:`_STEIN_WARN`.
    Inputs of zero variance in ``S_k`` (``x = 0`` with ``C_b = 0``: exactly 0 in every network) are left out: their
    problems are exactly 0 (:func:`_cross_layers`)."""
    a, b = pairs.a[~pairs.diag], pairs.b[~pairs.diag]
    alive = np.diag(S_k) > 0
    a, b = a[alive[a] & alive[b]], b[alive[a] & alive[b]]
    worst = 1.0
    for A in (S_k, S_k - Gam * Gam * S_i):
        if np.any(np.diag(A)[alive] <= 0):
            worst = 0.0
            break
        if a.size:
            worst = min(worst, float(np.min((A[a, a] * A[b, b] - A[a, b] ** 2) / (A[a, a] * A[b, b]))))
    amplified = _STEIN_ROUNDING / worst**2 if worst > 0 else np.inf
    if amplified > _STEIN_REFUSE:
        raise ValueError(
            "residual cumulants: for a kinked activation the self-interaction term needs every pair of "
            "inputs to stay linearly independent through the chain (a 2x2 kernel block or the noise "
            f"added by the residual blocks is singular or nearly so: relative determinant {max(worst, 0.0):.1e}, where "
            f"rounding would make the term wrong by ~{min(amplified, 1e300):.0e} relative: duplicate or near-duplicate "
            "inputs, inputs so small against C_b that their kernel rows nearly coincide, or xi = 0). Merge "
            "near-duplicate inputs, or use a smooth activation."
        )
    if amplified > _STEIN_WARN:
        warn(
            f"residual cumulants: two inputs are nearly collinear (relative 2x2 determinant {worst:.1e}); "
            f"the kinked-activation self-interaction term loses digits to rounding (~{amplified:.0e} relative, not "
            "in K1_error or V_error). Merge near-duplicate inputs.",
            AccuracyWarning)


# ============================================================================ chain steps
def chain_start(act: Activation, K, *, n: int, V=None, K1=None, n_prev: int | None = None, pairs=None,
                **options) -> ChainState:
    """Start a chain at a layer whose rows are i.i.d. ``N(0, G_hat^0)`` given the input metric.

    Args:
        act: activation of the chain's blocks (applied to this layer's pre-activations).
        K: ``(N, N)`` kernel of this layer (``E G_hat^0`` at infinite width).
        n: width of the chain.
        V: ``(P, P)`` vertex of this layer (``n_prev Cov G_hat^0``), or ``None`` (exactly Gaussian).
        K1: ``(N, N)`` 1/n correction of this layer (``n_prev (E G_hat^0 - K)``), or ``None``.
        n_prev: the width normalising ``V`` and ``K1`` (required when either is given).
        pairs: a :class:`PairSet` to run the chain on (``V`` then ``(P, P)`` over it, needed entries only, and
            ``K1`` ``(N, N)`` or ``(P,)`` at its pairs); default: all pairs of the ``N`` inputs.
        **options: quadrature options, see :class:`ChainState`.
    """
    unknown = set(options) - set(CHAIN_OPTIONS)
    if unknown:
        raise TypeError(f"residual cumulants: unknown option(s) {sorted(unknown)}; expected some of {CHAIN_OPTIONS}")
    K = np.asarray(K, dtype=float)
    pairs = Pairs.of(K.shape[0]) if pairs is None else pairs
    P = pairs.P
    if (V is not None or K1 is not None) and n_prev is None:
        raise ValueError("chain_start: n_prev is required with V or K1")
    ratio = 1.0 if n_prev is None else n / n_prev
    V0 = np.zeros((P, P)) if V is None else ratio * np.asarray(V, dtype=float)
    K1 = None if K1 is None else np.asarray(K1, dtype=float)
    kap0 = np.zeros(P) if K1 is None else ratio * (K1 if K1.ndim == 1 else pairs.pack(K1))
    Y = {(1, 1): _same_layer(act, K, pairs, options)}
    return ChainState(act, int(n), pairs, (K,), (), (), (), (), ((np.eye(P),),), (kap0,), (V0,), Y, (),
                      dict(options))


def _gamma(state: ChainState, i: int, j: int) -> float:
    """``Gamma(i, j) = gamma_i ... gamma_{j-1}`` (layers 1-based, ``i <= j``)."""
    return float(np.prod(state.gamma[i - 1:j - 1])) if j > i else 1.0


def _weights(state: ChainState, k: int) -> np.ndarray:
    """``w^(k)_j``, ``j = 0 .. k-1``: the weight of ``G^j`` in ``Sigma^k``."""
    g2 = np.asarray(state.gamma, dtype=float) ** 2
    xi2 = np.concatenate([[1.0], np.asarray(state.xi, dtype=float) ** 2])
    return np.array([xi2[j] * np.prod(g2[j:k - 1]) for j in range(k)])


def _Yget(state: ChainState, i: int, j: int) -> np.ndarray:
    return state.Y[(i, j)] if i <= j else state.Y[(j, i)].T


def _source_cov(state: ChainState, U1, U2) -> np.ndarray:
    """``sum_s U1[s] Cov(source s) U2[s]^T`` (coefficient tuples may be shorter than ``sources``)."""
    P = state.pairs.P
    out = np.zeros((P, P))
    for u1, u2, cov in zip(U1, U2, state.sources):
        out = out + u1 @ cov @ u2.T
    return out


def _accumulated(state: ChainState):
    """For the current layer ``k``: weights ``w``, ``A^{k,i}`` (i = 1..k-1), the source
    coefficients ``B^k`` and ``Cov(R, R)`` of the response ``R = sum_j w_j d^j``."""
    k = state.depth
    w = _weights(state, k)
    P = state.pairs.P
    A = [sum(w[j] * state.W[j - 1][i - 1] for j in range(i, k)) for i in range(1, k)]
    B = []
    for j in range(k):
        for s_idx, u in enumerate(state.U[j]):
            if s_idx == len(B):
                B.append(np.zeros((P, P)))
            B[s_idx] = B[s_idx] + w[j] * u
    C = _source_cov(state, B, B)
    for i in range(1, k):
        for i2 in range(1, k):
            C = C + A[i - 1] @ _Yget(state, i, i2) @ A[i2 - 1].T
    return w, A, tuple(B), 0.5 * (C + C.T)


def _metric(state: ChainState, C_W: float, C_b: float):
    """The metric of the current layer ``k``: ``G^k``, its ``g^k`` coefficients and ``kappa^k``."""
    act, pairs, k = state.act, state.pairs, state.depth
    S = state.sigma[-1]
    G = np.asarray(kernel_map(act, device(S), C_W, C_b, **_kopts(state.options)))
    J, H = _jh(act, S, pairs, state.options)
    w, A, B, Cw = _accumulated(state)
    P = pairs.P
    W_row = [C_W * _jac_left(J, Ai, pairs) for Ai in A] + [C_W * np.eye(P)]
    U_k = tuple(C_W * _jac_left(J, Bs, pairs) for Bs in B)
    shift = sum(w[j] * state.kappa[j] for j in range(k))
    m = (_jac_left(J, shift[:, None], pairs)[:, 0] + 0.5 * _hess_contract(H, Cw, pairs))
    for i in range(1, k):
        m = m + np.einsum("ptq,ptq->p", state.Z[i - 1], A[i - 1][pairs.cols])
    return G, (J, H), W_row, U_k, C_W * m


def _metric_cov(state: ChainState, W_row, U_k) -> np.ndarray:
    """``Cov(g^k, g^k)`` of a metric with coefficients ``W_row`` (on ``X^1..X^k``) and ``U_k``."""
    k = state.depth
    V = _source_cov(state, U_k, U_k)
    for i in range(1, k + 1):
        for i2 in range(1, k + 1):
            V = V + W_row[i - 1] @ _Yget(state, i, i2) @ W_row[i2 - 1].T
    return 0.5 * (V + V.T)


def _branch(state: ChainState, G, W_row, U_k, kap, branch):
    """Propagate the stream metric of layer ``k`` through the hidden layers of a multi-layer branch.

    ``branch`` lists ``(m, C_W, C_b)`` or ``(m, C_W, C_b, activation)`` per hidden branch layer: its
    width ``m``, the weight and bias variances of the layer that reads it, and the activation applied
    to it (default: the chain's). Each hidden layer is fresh given the metric feeding
    it, so the driving metric is ``d = B g^k + zeta``: ``B`` the product of the layers' Jacobians
    (``C_W`` included) and ``zeta`` an independent source whose covariance (in units of the stream
    width ``n``, hence the ``n / m`` factors) and the mean shift follow the MLP recursions.
    Returns ``(D, W_d, U_d, kappa_d, Vzeta)`` (``Vzeta`` ``None`` for a one-layer branch).
    """
    if not branch:
        return G, W_row, U_k, kap, None
    pairs, n = state.pairs, state.n
    P = pairs.P
    K, kappa = G, kap
    Cg = _metric_cov(state, W_row, U_k)
    B = np.eye(P)
    Vz = np.zeros((P, P))
    for entry in branch:
        m, cw, cb = entry[:3]
        act = _make_activation(entry[3]) if len(entry) > 3 else state.act
        J1, H1 = _jh(act, K, pairs, state.options)
        J = cw * J1
        fresh = cw * cw * (n / m) * _same_layer(act, K, pairs, state.options)
        kappa = _jac_left(J, kappa[:, None], pairs)[:, 0] + 0.5 * cw * _hess_contract(H1, Cg, pairs)
        JCg = _jac_left(J, Cg, pairs)
        Cg = _jac_left(J, JCg.T, pairs) + fresh
        JVz = _jac_left(J, Vz, pairs)
        Vz = _jac_left(J, JVz.T, pairs) + fresh
        B = _jac_left(J, B, pairs)
        K = np.asarray(kernel_map(act, device(K), cw, cb, **_kopts(state.options)))
    W_d = [B @ Wi for Wi in W_row]
    U_d = tuple(B @ u for u in U_k) + (np.zeros((P, P)),) * (len(state.sources) - len(U_k)) + (np.eye(P),)
    return K, W_d, U_d, kappa, 0.5 * (Vz + Vz.T)


def residual_step(state: ChainState, *, C_W: float, C_b: float, gamma: float, xi: float,
                  branch=()) -> ChainState:
    """Apply the block ``z' = gamma z + xi u`` with a branch ``u`` fed by ``sigma(z)``.

    One-layer branch (default): ``u = b + W sigma(z)``, ``Var W = C_W / n``, ``Var b = C_b``.
    Multi-layer branch: ``branch = ((m_1, C_W_2, C_b_2), ..., (m_{d-1}, C_W_d, C_b_d))`` gives
    ``a^1 = b + W sigma(z)`` of width ``m_1`` (``C_W, C_b``), ``a^l = b + W sigma(a^{l-1})`` of width
    ``m_l`` (``C_W_l, C_b_l``), and ``u = a^d = b + W sigma(a^{d-1})`` of width ``n``. A fourth entry
    ``(m, C_W, C_b, activation)`` sets the activation applied to that hidden layer (default: the
    chain's ``act``, which is also the one applied to the stream).
    """
    G, jh, W_row, U_k, kap = _metric(state, C_W, C_b)
    D, W_d, U_d, kap_d, Vz = _branch(state, G, W_row, U_k, kap, tuple(branch))
    gamma, xi = float(gamma), float(xi)
    S_new = gamma * gamma * state.sigma[-1] + xi * xi * D
    k = state.depth
    new = dataclasses.replace(
        state,
        sigma=state.sigma + (S_new,),
        gamma=state.gamma + (gamma,),
        xi=state.xi + (xi,),
        jh=state.jh + (jh,),
        W=state.W + (tuple(W_d),),
        U=state.U + (tuple(U_d),),
        kappa=state.kappa + (kap_d,),
        sources=state.sources + (() if Vz is None else (Vz,)),
        Y=dict(state.Y),
    )
    act, pairs = state.act, state.pairs
    earlier = [(new.sigma[i - 1], _gamma(new, i, k + 1)) for i in range(1, k + 1)]
    Zs = []
    for i, (Y, Z) in enumerate(_cross_layers(act, S_new, earlier, pairs, state.options), start=1):
        new.Y[(i, k + 1)] = Y
        Zs.append(Z)
    new.Y[(k + 1, k + 1)] = _same_layer(act, S_new, pairs, state.options)
    return dataclasses.replace(new, Z=tuple(Zs))


def readout(state: ChainState, *, C_W: float, C_b: float) -> Cumulants:
    """Cumulants of a dense layer ``z_out = b + W sigma(z)`` fed by the chain's current layer.

    Returns the MLP state of the new layer: ``K = G^k``, ``K1 = kappa^k``, ``V = Cov(g^k, g^k)``,
    normalised by the chain width ``n``.
    """
    G, _, W_row, U_k, kap = _metric(state, C_W, C_b)
    pairs = state.pairs
    return Cumulants(G, _unpacked(pairs, kap), _metric_cov(state, W_row, U_k), state.n, pairs)


def layer_cumulants(state: ChainState) -> Cumulants:
    """Cumulants of the chain's current layer itself (``K1``, ``V`` in units of the chain width).

    ``K1 = sum_j w_j kappa^j`` and ``V = Cov(X[zz], R) + Cov(R, X[zz]) + Cov(R, R)`` with the
    response ``R = sum_j w_j g^j``: the connected four-point function of two different neurons.
    These describe the layer; they are *not* a state from which the chain can be continued
    (a residual layer is not conditionally Gaussian given one metric).
    """
    pairs, k = state.pairs, state.depth
    w, A, B, Cw = _accumulated(state)
    K1 = sum(w[j] * state.kappa[j] for j in range(k))
    V = Cw.copy()
    a, b = pairs.a, pairs.b
    for i in range(1, k):
        Gam = _gamma(state, i, k)
        if Gam == 0.0:
            continue
        S = state.sigma[i - 1]
        Ji = state.jh[i - 1][0]
        # Cov(z^k_a z^k_b, s_q(z^i)) = Gam^2 sum_r J^i_{q r} (S_a c S_b d + S_a d S_b c), r = (c, d)
        Kprod = S[a][:, a] * S[b][:, b] + S[a][:, b] * S[b][:, a]  # (P pairs of (ab), P pairs r)
        Jd = np.zeros((pairs.P, pairs.P))
        for t in range(3):
            np.add.at(Jd, (np.arange(pairs.P), pairs.cols[:, t]), Ji[:, t])
        Jd[pairs.diag, :] = 0.0
        Jd[pairs.diag, pairs.cols[pairs.diag, 0]] = Ji[pairs.diag, 0]
        T = Gam * Gam * Kprod @ Jd.T  # (P_ab, P_q)
        X = T @ A[i - 1].T
        V = V + X + X.T
    return Cumulants(state.sigma[-1], _unpacked(pairs, K1), V, state.n, pairs)


def _unpacked(pairs, K1p):
    """``K1`` as ``(N, N)`` over all pairs, as it is (``(P,)``) on a :class:`PairSet`."""
    return K1p if isinstance(pairs, PairSet) else pairs.unpack(K1p)


# ============================================================================ conveniences
def mlp_step(act: Activation, K, K1, V, *, n_prev: int | None, n: int, C_W: float, C_b: float,
             **options) -> Cumulants:
    """A plain dense layer: from layer ``l`` (cumulants normalised by ``n_prev``) of width ``n``
    to layer ``l + 1`` (normalised by ``n``). Equals the MLP recursion."""
    return readout(chain_start(act, K, n=n, V=V, K1=K1, n_prev=n_prev, **options), C_W=C_W, C_b=C_b)


def resmlp_cumulants(act: Activation, K_first, *, n: int, C_W, C_b, gamma, xi, **options) -> list[Cumulants]:
    """Per-layer cumulants of ``ngp.ResMLP``: plain first layer (kernel ``K_first``), residual
    blocks ``2 .. L-1``, dense readout ``L``.

    Args:
        act: activation.
        K_first: ``(N, N)`` first-layer kernel ``C_b^(1) + C_W^(1) X X^T / n0``.
        n: hidden width.
        C_W, C_b: ``L`` values (one per weight layer; index 0 is the first layer, unused here).
        gamma, xi: ``L - 2`` values (blocks ``2 .. L-1``).

    Returns:
        ``L`` :class:`Cumulants`: layer 1 (Gaussian, ``n = None``), the residual layers
        ``2 .. L-1`` (:func:`layer_cumulants`) and the readout ``L``; all but the first
        normalised by ``n``. ``K``, ``K1``, ``V`` do not depend on ``n``.

    Inputs should be distinct (deduplicate them first, as ``ngp.Prior`` does): for the relu family
    a repeated or collinear pair of inputs raises ``ValueError``.
    """
    L = len(C_W)
    if len(C_b) != L or len(gamma) != max(L - 2, 0) or len(xi) != max(L - 2, 0):
        raise ValueError("resmlp_cumulants: expected L values of C_W, C_b and L - 2 of gamma, xi")
    K_first = np.asarray(K_first, dtype=float)
    pairs = Pairs.of(K_first.shape[0])
    out = [Cumulants(K_first, np.zeros_like(K_first), np.zeros((pairs.P, pairs.P)), None, pairs)]
    if L == 1:
        return out
    state = chain_start(act, K_first, n=n, **options)
    for l in range(1, L - 1):
        state = residual_step(state, C_W=C_W[l], C_b=C_b[l], gamma=gamma[l - 1], xi=xi[l - 1])
        out.append(layer_cumulants(state))
    out.append(readout(state, C_W=C_W[L - 1], C_b=C_b[L - 1]))
    return out
