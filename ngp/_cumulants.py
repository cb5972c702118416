"""The cumulant state of one layer of pre-activations, and its four-point vertex on demand.

A :class:`LayerCumulants` holds, for the pre-activations ``z`` of one layer on ``N`` inputs,

* ``K`` (``(N, N)``): the infinite-width kernel, ``E[z_i z_j] = delta_ij (K + K1 / n)``;
* ``K1`` (``(N, N)``): the ``1/n`` shift of the two-point function (computed on first use);
* ``vertex`` (a :class:`Vertex`): the four-point vertex ``V``, connected four-point function
  ``(1/n)`` times the three pairings of ``V``;
* ``n``: the width dividing ``K1`` and ``V`` (the width feeding the layer; ``None`` when the
  layer is exactly Gaussian).

How it was produced is a *map* from the previous layer (a dense step with its activation; the
only finite-width map so far). Everything finite-width is lazy: the GP needs ``K`` only.

The vertex is never forced into a dense ``P x P`` matrix unless asked (``packed()``): a
component ``V_(ab)(cd)`` of layer ``l+1`` needs layer ``l``'s components on the pairs
``{aa, bb, ab} x {cc, dd, cd}`` only (the Jacobian ``J`` has three non-zeros per row), so any set of
components is computed by a recursion closed on those index sets (``components``), and ``K1`` needs
only the components on two-input subsets (``local2``: ``O(N^2)`` per layer). The two-input recursion
is closed on any set of pairs that holds, with each pair ``(a, b)``, the pairs ``(a, a)`` and ``(b, b)``
(``_K1_at``, ``_local2_at``: a prediction's training, test-training and test-diagonal pairs). See
``docs/theory.md``, "Finite-width recursions" and "Computing only what is needed".
"""

from __future__ import annotations

import concurrent.futures
import functools

import numpy as np

from ._activations import Activation
from ._finite import (TABLE_OPTIONS, FourPointTable, fill_tables, four_point_seconds, fresh_components,
                      fresh_covariance, jacobian_hessian, multisets, propagate)
from ._gaussian import K_ACCURATE, auto_orders
from ._pairs import Pairs, array_module, is_concrete
from ._threads import in_background

__all__ = [
    "LayerCumulants",
    "closed_pairs",
    "remember",
    "GaussianLayer",
    "DenseLayer",
    "ScaledLayer",
    "RefusedLayer",
    "DenseMap",
    "Vertex",
    "canonical_quads",
    "local_quads",
    "distinct_rows",
    "layer_rows",
    "sub_rows",
    "local_jacobian",
    "prefill_four_point",
]


def canonical_quads(quads, pairs: Pairs):
    """Pair indices ``(p, q)`` with ``p <= q`` for rows ``(a, b, c, d)`` meaning ``V_(ab)(cd)``."""
    quads = np.asarray(quads, dtype=np.int64).reshape(-1, 4)
    p = pairs.index[quads[:, 0], quads[:, 1]]
    q = pairs.index[quads[:, 2], quads[:, 3]]
    return np.minimum(p, q), np.maximum(p, q)


class DenseMap:
    """The map ``K -> C_b + C_W <f f>_K`` of a dense step fed by activation ``f``, with the data
    its finite-width recursion needs (``J``, ``H`` and the fresh four-point term on demand).

    Attributes:
        act: the activation ``f`` applied to the previous layer (identity: ``linear``).
        K_in: ``(N, N)`` kernel of the previous layer's pre-activations.
        E2: ``(N, N)`` two-point matrix ``<f f>_{K_in}``.
        C_W: weight variance (times fan-in) of the dense step.
        ratio: ``n_in / n_prev``: width of the previous layer over the width feeding it (``None``
            when the previous layer is exactly Gaussian).
        options: quadrature options (``method``, ``terms``, ``nodes``, ``four_point_order``, ``four_point_rtol``).
    """

    def __init__(self, act: Activation, K_in, E2, C_W: float, ratio, pairs: Pairs, options: dict):
        self.act, self.K_in, self.E2, self.C_W, self.ratio = act, K_in, E2, C_W, ratio
        self.pairs = pairs
        self.options = dict(options)

    @functools.cached_property
    def JH(self):
        """``J`` ``(P, 3)`` and ``H`` ``(P, 3, 3)`` with respect to ``(K_aa, K_bb, K_ab)`` per pair."""
        kopts = {k: v for k, v in self.options.items() if k in ("method", "terms", "nodes")}
        return jacobian_hessian(self.act, self.K_in, self.pairs, self.C_W, **kopts)

    def seed_jh(self, other: "DenseMap", index) -> bool:
        """Take over ``other``'s ``J`` and ``H`` (computed already) when its inputs include all of these: ``index[i]``
        is this map's input for ``other``'s input ``i``, or ``-1`` (``(other.pairs.N,)``; e.g. a joint prior's rows
        in the training prior). Only when both kernels are concrete and equal bit for bit on these inputs, the
        activation, ``C_W`` and options are the same and the Mehler orders chosen from the largest variance
        (:func:`ngp._gaussian.auto_orders`) agree: each pair's entries depend only on its block of the kernel, so
        they are the ones this map would compute (to the rounding of the padded call). Returns whether it did."""
        if "JH" in self.__dict__ or "JH" not in other.__dict__ or other.act is not self.act or other.C_W != self.C_W:
            return False
        if other.options != self.options or not (is_concrete(self.K_in) and is_concrete(other.K_in, *other.JH)):
            return False
        index = np.asarray(index, dtype=np.int64).reshape(-1)
        if index.shape != (other.pairs.N,) or index.max(initial=-1) >= self.pairs.N:
            return False
        back = np.full(self.pairs.N, -1, dtype=np.int64)  # other's input of each of these
        held = np.flatnonzero(index >= 0)
        back[index[held]] = held
        if (back < 0).any():
            return False
        K, Ko = np.asarray(self.K_in), np.asarray(other.K_in)
        if not np.array_equal(K, Ko[np.ix_(back, back)]):
            return False
        km, kmo = float(np.max(np.diagonal(K))), float(np.max(np.diagonal(Ko)))
        if km != kmo and ("terms" not in self.options or "nodes" not in self.options):
            # beyond K_ACCURATE auto_orders warns (the layers say so themselves): compared only below it
            if max(km, kmo) > K_ACCURATE or auto_orders(km) != auto_orders(kmo):
                return False
        a, b = back[self.pairs.a], back[self.pairs.b]
        swap = a > b  # other's pair (b, a): its (K_aa, K_bb) columns in the other order
        perm = np.where(swap[:, None], [1, 0, 2], [0, 1, 2])
        J, H = (np.asarray(t)[other.pairs.index[a, b]] for t in other.JH)
        J = np.take_along_axis(J, perm, axis=1)
        H = np.take_along_axis(np.take_along_axis(H, perm[:, :, None], axis=1), perm[:, None, :], axis=2)
        self.__dict__["JH"] = (J, H)
        return True

    @functools.cached_property
    def table(self) -> FourPointTable:
        """Four-point values ``<f f f f>_{K_in}`` of this layer, computed once per multiset."""
        fopts = {k: v for k, v in self.options.items() if k in TABLE_OPTIONS}
        return FourPointTable(self.act, self.K_in, **fopts)

    def fresh(self, quads):
        """``C_W^2 Cov(f_a f_b, f_c f_d)`` for rows ``(a, b, c, d)``."""
        return fresh_components(self.table, quads, self.E2, self.C_W)

    def fresh_packed(self):
        """``(P, P)`` fresh term over all pairs."""
        return fresh_covariance(self.act, self.K_in, self.pairs, self.C_W, E2=self.E2, table=self.table)


class Vertex:
    """The four-point vertex ``V`` of one layer, computed on demand.

    The narrow interface every vertex representation provides:

    * ``components(quads)``: ``V_(ab)(cd)`` for rows ``(a, b, c, d)`` of an ``(M, 4)`` index array;
    * ``local2()``: ``(P, 3, 3)``, the vertex on the pairs ``(aa, bb, ab)`` of each pair ``(a, b)``;
    * ``packed()``: the dense ``(P, P)`` matrix over all unordered pairs (memory ``8 P^2`` bytes).
    """

    def __init__(self, layer: "LayerCumulants"):
        self._layer = layer

    @property
    def pairs(self) -> Pairs:
        return self._layer.pairs

    @property
    def n(self):
        """Width dividing ``V`` (``None``: exactly Gaussian layer, ``V = 0``)."""
        return self._layer.n

    def components(self, quads) -> np.ndarray:
        """``V_(ab)(cd)`` for rows ``(a, b, c, d)`` of ``quads`` (``(M, 4)``)."""
        p, q = canonical_quads(quads, self.pairs)
        return self._layer._components_pq(p, q)

    def local2(self) -> np.ndarray:
        return self._layer._local2

    def packed(self) -> np.ndarray:
        return self._layer._packed


class LayerCumulants:
    """Cumulants of the pre-activations of one layer (see the module docstring); the base class.

    Subclasses say how the layer was produced and implement ``K1``, ``_local2``, ``_components_pq``
    and ``_packed`` (the :class:`Vertex` interface) from the previous layer's cumulants, through
    that same interface only: :class:`GaussianLayer` (exactly Gaussian), :class:`DenseLayer`
    (a dense step after an elementwise activation), :class:`ScaledLayer` (``z -> alpha z``),
    :class:`RefusedLayer` (a step without finite-width support). ``docs/extending.md`` walks
    through adding one.

    Attributes:
        K: ``(N, N)`` infinite-width kernel.
        n: width feeding this layer (divides ``K1`` and ``V``); ``None`` if exactly Gaussian.
        width: number of neurons of this layer.
        refusal: for layers without finite-width support, the message of the ``NotImplementedError``
            raised when ``K1`` or ``V`` are asked for (``None`` otherwise).
    """

    refusal: str | None = None

    def __init__(self, K, *, n, width):
        self.K = K if hasattr(K, "shape") else np.asarray(K)
        self.n = n
        self.width = width
        self.pairs = Pairs.of(self.K.shape[0])
        self.vertex = Vertex(self)

    @property
    def N(self) -> int:
        return self.K.shape[0]

    @property
    def gaussian(self) -> bool:
        """Whether the layer is exactly Gaussian (``K1 = V = 0``)."""
        return False

    def _check(self, what: str):
        if self.refusal is not None:
            raise NotImplementedError(self.refusal.format(what=what))

    @property
    def K1(self) -> np.ndarray:
        """``(N, N)`` ``1/n`` shift of the two-point function."""
        raise NotImplementedError

    @property
    def _local2(self) -> np.ndarray:
        """``(P, 3, 3)``: ``V`` on the pairs ``(aa, bb, ab)`` of every pair ``(a, b)``."""
        raise NotImplementedError

    def _components_pq(self, p, q) -> np.ndarray:
        """``V`` at pair-index rows ``(p, q)`` (``p <= q``)."""
        raise NotImplementedError

    @property
    def _packed(self) -> np.ndarray:
        """``(P, P)`` vertex over all pairs."""
        raise NotImplementedError

    @property
    def _pair_diagonal(self) -> np.ndarray:
        """``(P,)``: ``V_(ab)(ab)`` for every pair (entry ``(2, 2)`` of ``_local2``)."""
        return self._local2[:, 2, 2]

    # the same on a set of pairs ``sel`` (``(S,)`` pair indices, ``None``: all), closed under diagonals
    # (:func:`closed_pairs`); subclasses whose recursion is local to a pair compute only those
    def _K1_at(self, sel) -> np.ndarray:
        """``(S,)``: ``K1`` at the pairs ``sel``."""
        K1p = self.pairs.pack(self.K1)
        return K1p if sel is None else K1p[sel]

    def _local2_at(self, sel) -> np.ndarray:
        """``(S, 3, 3)``: ``_local2`` at the pairs ``sel``."""
        return self._local2 if sel is None else self._local2[sel]

    def _pair_diagonal_at(self, sel) -> np.ndarray:
        """``(S,)``: ``_pair_diagonal`` at the pairs ``sel``."""
        return self._pair_diagonal if sel is None else self._pair_diagonal[sel]

    @property
    def expansion_parameter(self) -> float:
        """``max |V_(ab)(cd)| / (n sqrt(K_aa K_bb K_cc K_dd))`` (0 for an exactly Gaussian layer).

        ``V`` is positive semi-definite over pairs (``n Cov`` of the stochastic metric), so the
        largest normalised entry is on its diagonal: ``max_ab V_(ab)(ab) / (n K_aa K_bb)``.
        """
        return self.expansion_parameter_at(None)

    def expansion_parameter_at(self, sel) -> float:
        """:attr:`expansion_parameter` with the maximum over the pairs ``sel`` only (``None``: all)."""
        if self.gaussian:
            return 0.0
        self._check("the expansion parameter")
        pairs = self.pairs
        a, b = (pairs.a, pairs.b) if sel is None else (pairs.a[sel], pairs.b[sel])
        d = np.clip(np.diag(np.asarray(self.K)), 0.0, None)
        s2 = d[a] * d[b]
        # V_(ab)(ab) is entry (2, 2) of the local block of (a, b); for a == b all entries coincide
        vdiag = np.abs(np.asarray(self._pair_diagonal_at(sel)))
        ok = s2 > 0  # inputs with zero variance (x = 0 with C_b = 0) have V = 0 there
        if not np.any(ok):
            return 0.0
        return float(np.max(vdiag[ok] / s2[ok])) / self.n


class GaussianLayer(LayerCumulants):
    """An exactly Gaussian layer (``K1 = V = 0``), e.g. the first dense step on deterministic inputs."""

    def __init__(self, K, *, width):
        super().__init__(K, n=None, width=width)

    @property
    def gaussian(self) -> bool:
        return True

    @functools.cached_property
    def K1(self):
        return np.zeros((self.N, self.N))

    @functools.cached_property
    def _local2(self):
        return np.zeros((self.pairs.P, 3, 3))

    def _K1_at(self, sel):
        return np.zeros(self.pairs.P if sel is None else len(sel))

    def _local2_at(self, sel):
        return super()._local2_at(sel) if sel is None else np.zeros((len(sel), 3, 3))

    def _components_pq(self, p, q):
        return np.zeros(np.shape(p))

    @functools.cached_property
    def _packed(self):
        return np.zeros((self.pairs.P, self.pairs.P))


class RefusedLayer(LayerCumulants):
    """A layer whose step has no finite-width cumulants: ``K`` only; ``K1``/``V`` raise ``refusal``."""

    def __init__(self, K, *, n, width, refusal: str):
        super().__init__(K, n=n, width=width)
        self.refusal = refusal

    @property
    def K1(self):
        self._check("K1")

    @property
    def _local2(self):
        self._check("V")

    def _components_pq(self, p, q):
        self._check("V")

    @property
    def _packed(self):
        self._check("V")


class ScaledLayer(LayerCumulants):
    """``z -> alpha z`` of the previous layer: ``K -> alpha^2 K``, ``K1 -> alpha^2 K1``, ``V -> alpha^4 V``."""

    def __init__(self, prev: LayerCumulants, alpha: float):
        super().__init__(alpha**2 * prev.K, n=prev.n, width=prev.width)
        self.prev, self.alpha = prev, alpha
        self.refusal = prev.refusal

    @property
    def gaussian(self) -> bool:
        return self.prev.gaussian

    @functools.cached_property
    def K1(self):
        return self.alpha**2 * self.prev.K1

    @functools.cached_property
    def _local2(self):
        return self.alpha**4 * self.prev._local2

    def _K1_at(self, sel):
        return super()._K1_at(sel) if sel is None else self.alpha**2 * self.prev._K1_at(sel)

    def _local2_at(self, sel):
        return super()._local2_at(sel) if sel is None else self.alpha**4 * self.prev._local2_at(sel)

    def _pair_diagonal_at(self, sel):
        return super()._pair_diagonal_at(sel) if sel is None else self.alpha**4 * self.prev._pair_diagonal_at(sel)

    def _components_pq(self, p, q):
        return self.alpha**4 * self.prev._components_pq(p, q)

    @functools.cached_property
    def _packed(self):
        return self.alpha**4 * self.prev._packed

    @functools.cached_property
    def _pair_diagonal(self):
        return self.alpha**4 * self.prev._pair_diagonal


class DenseLayer(LayerCumulants):
    """A dense step fed by an elementwise activation of the previous layer (:class:`DenseMap`).

    ``V' = C_W^2 Cov(f f, f f) + r J V J^T`` and ``K1' = r (J K1 + H:V / 2)`` with ``r = n_in / n_prev``.
    """

    def __init__(self, K, *, prev: LayerCumulants, dense_map: DenseMap, width: int):
        super().__init__(K, n=prev.width, width=width)
        self.prev, self.map = prev, dense_map
        self.refusal = prev.refusal

    # ------------------------------------------------------------------ K1 (O(N^2) per layer)
    @functools.cached_property
    def _local2(self) -> np.ndarray:
        return self._local2_on(None)

    def _local2_at(self, sel) -> np.ndarray:
        return remember(self, "_local2", sel, self._local2_on, full=super()._local2_at)

    def _local2_on(self, sel) -> np.ndarray:
        self._check("V")
        pairs = self.pairs
        fresh = self.map.fresh(local_quads(pairs, sel)).reshape(-1, 3, 3)
        if self.prev.gaussian:
            return fresh
        Jl = local_jacobian(self.map.JH[0], pairs, sel)  # (S, 3, 3)
        prev = self.prev._local2_at(sel)
        xp = array_module(fresh, Jl, prev, self.map.ratio)
        return fresh + self.map.ratio * xp.einsum("pst,ptu,pvu->psv", Jl, prev, Jl)

    @functools.cached_property
    def _pair_diagonal(self) -> np.ndarray:
        return self._pair_diagonal_at(None)

    def _pair_diagonal_at(self, sel) -> np.ndarray:
        """``V_(ab)(ab)`` alone: its fresh term needs only the multisets ``(a, a, b, b)``, and its
        propagated term the previous layer's ``_local2`` (which ``K1`` needs anyway)."""
        if "_local2" in self.__dict__:
            return self._local2[:, 2, 2] if sel is None else self._local2[sel, 2, 2]
        self._check("V")
        pairs = self.pairs
        a, b = (pairs.a, pairs.b) if sel is None else (pairs.a[sel], pairs.b[sel])
        vals = self.map.fresh(np.stack([a, b, a, b], axis=1))
        if self.prev.gaussian:
            return vals
        Jab = local_jacobian(self.map.JH[0], pairs, sel)[:, 2]  # (S, 3): K'_ab against the pairs (aa, bb, ab)
        prev = self.prev._local2_at(sel)
        xp = array_module(vals, Jab, prev, self.map.ratio)
        return vals + self.map.ratio * xp.einsum("pt,ptu,pu->p", Jab, prev, Jab)

    @functools.cached_property
    def K1(self) -> np.ndarray:
        self._check("K1")
        if self.prev.gaussian:
            return np.zeros((self.N, self.N))
        return self.pairs.unpack(self._K1_on(None))

    def _K1_at(self, sel) -> np.ndarray:
        return remember(self, "K1", sel, self._K1_on, full=super()._K1_at)

    def _K1_on(self, sel) -> np.ndarray:
        self._check("K1")
        pairs = self.pairs
        if self.prev.gaussian:
            return np.zeros(pairs.P if sel is None else len(sel))
        J, H = self.map.JH
        if sel is None:
            cols = pairs.cols
        else:
            J, H, cols = J[sel], H[sel], closed_pairs(pairs, sel)
        K1p, L2 = self.prev._K1_at(sel), self.prev._local2_at(sel)
        xp = array_module(J, H, K1p, L2)
        G1 = xp.einsum("ps,ps->p", J, K1p[cols]) + 0.5 * xp.einsum("pst,pst->p", H, L2)
        return self.map.ratio * G1

    # ------------------------------------------------------------------ V on demand
    def _components_pq(self, p, q) -> np.ndarray:
        self._check("V")
        p, q = np.asarray(p, dtype=np.int64), np.asarray(q, dtype=np.int64)
        if p.size == 0:
            return np.zeros(p.shape)
        if "_packed" in self.__dict__:
            return self._packed[p, q]
        pairs = self.pairs
        up, uq, quads, inverse = layer_rows(self, p, q)
        if self.prev.gaussian:
            vals = self.map.fresh(quads)
        else:  # concrete: this layer's four-point values in the background while the layers below prepare theirs
            J, _ = self.map.JH
            concrete = is_concrete(self.map.K_in, self.map.E2, self.map.C_W)  # traced: on this thread, below
            job = in_background(self.map.fresh, quads) if concrete else None
            try:
                sub = self.prev._components_pq(*sub_rows(pairs, up, uq)).reshape(up.size, 3, 3)
            except Exception:
                if job is not None:  # no work of this call outlives it (an interrupt does not wait)
                    concurrent.futures.wait([job])
                raise
            vals = job.result() if job is not None else self.map.fresh(quads)
            xp = array_module(vals, J, sub, self.map.ratio)
            vals = vals + self.map.ratio * xp.einsum("us,ust,ut->u", J[up], sub, J[uq])
        return vals[inverse]

    @functools.cached_property
    def _packed(self) -> np.ndarray:
        self._check("V")
        fresh = self.map.fresh_packed()
        if self.prev.gaussian:
            return fresh
        J, H = self.map.JH
        JVJ, _ = propagate(J, H, self.prev._packed, np.zeros(self.pairs.P), self.pairs, self.map.ratio)
        return fresh + JVJ


def prefill_four_point(layers, rows=None) -> bool:
    """Every dense layer's four-point values among ``layers`` (a flow's :class:`LayerCumulants`, on the same ``N``
    inputs) on the multiset rows ``rows`` (sorted, ``(M, 4)``; ``None``: all multisets) in shared quadrature calls
    (:func:`ngp._finite.fill_tables`), when the values not known yet fit one call (a table's chunk,
    :data:`ngp._finite.TABLE_CHUNK` multisets, over the layers): a small problem's cost is then one call's fixed cost
    instead of one per layer (``docs/four-point.md``, "Small problems: one call for every layer"). Larger ones are
    left to the layers (computed as they are asked for). Returns whether the values were computed here."""
    dense = [c for c in layers if isinstance(c, DenseLayer) and c.refusal is None]
    if not dense:
        return False
    N = dense[0].map.table.N
    limit = min(c.map.table.chunk for c in dense)
    if rows is None:
        if len(dense) * (N * (N + 1) * (N + 2) * (N + 3) // 24) > limit:
            return False
        rows = multisets(N)
    new = [c.map.table.unknown(rows) for c in dense]
    if sum(r.shape[0] for r in new) > limit:
        return False
    fill_tables([c.map.table for c in dense], new)
    return True


def new_four_point_seconds(layers, rows, *, bound: bool = False) -> float:
    """Estimated seconds of the four-point values that the dense layers among ``layers`` (on the same inputs) do not
    know yet on the sorted multiset rows ``rows`` (M, 4) (:func:`ngp._finite.four_point_seconds`, per layer;
    ``bound=True``: its cheap upper bound)."""
    total = 0.0
    for c in layers:
        if isinstance(c, DenseLayer) and c.refusal is None and is_concrete(c.map.K_in):
            table = c.map.table
            total += four_point_seconds(table.act, table.K, table.unknown(rows), table.options, bound=bound)
    return total


def local_quads(pairs: Pairs, sel=None) -> np.ndarray:
    """``(9 S, 4)`` rows ``(x)(y)`` for ``x, y`` in the pairs ``(aa, bb, ab)`` of every pair ``(a, b)`` (of
    the pair indices ``sel``, ``None``: all): the components behind ``_local2``, in its ``(S, 3, 3)`` order."""
    cols = pairs.cols if sel is None else pairs.cols[sel]  # (S, 3) pair indices of aa, bb, ab
    qa = np.stack([pairs.a[cols], pairs.b[cols]], axis=-1)  # (S, 3, 2)
    return np.concatenate(np.broadcast_arrays(qa[:, :, None, :], qa[:, None, :, :]), axis=-1).reshape(-1, 4)


def closed_pairs(pairs: Pairs, sel) -> np.ndarray:
    """``(S, 3)``: the positions in ``sel`` (``(S,)`` pair indices) of the pairs ``(aa, bb, ab)`` of each of
    its pairs; raises ``ValueError`` unless ``sel`` holds them (is closed under diagonals)."""
    sel = np.asarray(sel, dtype=np.int64)
    pos = np.full(pairs.P, -1, dtype=np.int64)
    pos[sel] = np.arange(sel.size)
    cols = pos[pairs.cols[sel]]
    if np.any(cols < 0):
        raise ValueError("sel: a set of pairs must hold (a, a) and (b, b) with each pair (a, b)")
    return cols


def remember(layer, name: str, sel, compute, *, full=None, keep: int = 1):
    """``compute(sel)``, remembered on ``layer`` for the latest ``keep`` values of ``sel`` per ``name`` (a prediction
    asks each layer for the same set of pairs twice: for its own ``K1`` and for the next layer's). With ``full``,
    ``full(sel)`` instead when ``sel`` is ``None`` (all pairs) or the layer holds ``name`` on all pairs."""
    if full is not None and (sel is None or name in layer.__dict__):
        return full(sel)
    sel = np.asarray(sel, dtype=np.int64)
    key = sel.tobytes()
    memo = layer.__dict__.setdefault("_pair_subsets", {}).setdefault(name, {})
    if key in memo:
        memo[key] = memo.pop(key)  # most recent last
        return memo[key]
    out = compute(sel)
    memo[key] = out
    while len(memo) > keep:
        memo.pop(next(iter(memo)))
    return out


def _ranks(x, n: int):
    """The distinct values of ``x`` (``(M,)`` integers in ``[0, n)``), sorted, and each entry's rank among
    them (int32 where it fits): by marking (no sort)."""
    mark = np.zeros(n, dtype=bool)
    mark[x] = True
    vals = np.flatnonzero(mark)
    del mark
    rank = np.zeros(n, dtype=np.int32 if vals.size < 2**31 else np.int64)
    rank[vals] = np.arange(vals.size)
    return vals, rank[x]


def distinct_rows(pairs: Pairs, p, q):
    """The distinct pair-index rows of ``(p, q)`` (``p <= q``), in increasing ``(p, q)``: ``up``, ``uq`` (U,),
    their components as quads ``(U, 4)``, and the inverse ``(M,)`` (integers) mapping each row to its distinct one.

    The rows' ``p`` and ``q`` are ranked among their own distinct values (a few thousand in a prediction's
    recursion); the ranked codes are then deduplicated by marking when their range is at most a few times the
    number of rows (3x faster than :func:`numpy.unique` on 6e6 rows, in less working memory), else by sorting."""
    p, q = np.asarray(p, dtype=np.int64).reshape(-1), np.asarray(q, dtype=np.int64).reshape(-1)
    vp, rp = _ranks(p, pairs.P)
    vq, rq = _ranks(q, pairs.P)
    span = vp.size * vq.size
    small = span <= 8 * p.size + 2**20
    code = rp.astype(np.int32 if small and span < 2**31 else np.int64) * vq.size + rq
    del rp, rq
    if small:
        uniq, inverse = _ranks(code, span)
    else:
        uniq, inverse = np.unique(code, return_inverse=True)
    up, uq = vp[uniq // vq.size], vq[uniq % vq.size]
    return up, uq, np.stack([pairs.a[up], pairs.b[up], pairs.a[uq], pairs.b[uq]], axis=1), inverse.reshape(-1)


def layer_rows(layer, p, q):
    """:func:`distinct_rows` of ``layer.pairs`` for rows ``(p, q)``, remembered on ``layer`` until the next call,
    which takes it if it asks for the same rows (a prediction's value recursion and then its error recursion ask
    each layer for the same rows; the rows are kept, not copied: the recursion's own arrays, never written after)."""
    memo = layer.__dict__.pop("_distinct_rows", None)
    if memo is not None and memo[0].shape == p.shape and np.array_equal(memo[0], p) and np.array_equal(memo[1], q):
        return memo[2]
    out = distinct_rows(layer.pairs, p, q)
    layer.__dict__["_distinct_rows"] = (p, q, out)
    return out


def sub_rows(pairs: Pairs, up, uq):
    """Pair-index rows ``(9 U,)`` twice (``p' <= q'``) of the previous layer's components that ``V_(up)(uq)``
    needs: the pairs ``(aa, bb, ab)`` of each side, ``(U, 3, 3)`` in row-major order."""
    cp, cq = pairs.cols[up], pairs.cols[uq]  # (U, 3)
    pp = np.broadcast_to(cp[:, :, None], (up.size, 3, 3)).reshape(-1)
    qq = np.broadcast_to(cq[:, None, :], (up.size, 3, 3)).reshape(-1)
    return np.minimum(pp, qq), np.maximum(pp, qq)


def local_jacobian(J, pairs: Pairs, sel=None):
    """``(S, 3, 3)``: the rows of ``J`` (``(P, 3)``) for the pairs ``(aa, bb, ab)`` of each pair (of the pair
    indices ``sel``, ``None``: all), in local columns.

    ``K'_aa`` depends on ``K_aa`` only (column 0 of its own row), likewise ``K'_bb``; ``K'_ab`` on all three.
    For ``a == b`` the three local pairs coincide and every row is ``(J_aa, 0, 0)``.
    """
    xp = array_module(J)
    J = xp.asarray(J)
    cols, diag = (pairs.cols, pairs.diag) if sel is None else (pairs.cols[sel], pairs.diag[sel])
    Jab = J if sel is None else J[sel]
    zero = xp.zeros(Jab.shape[0], dtype=J.dtype)
    Jaa, Jbb = J[cols[:, 0], 0], J[cols[:, 1], 0]
    rows = xp.stack([xp.stack([Jaa, zero, zero], 1), xp.stack([zero, Jbb, zero], 1), Jab], axis=1)
    diag_rows = xp.stack([Jab[:, 0], zero, zero], 1)[:, None, :] * xp.ones((1, 3, 1), dtype=J.dtype)
    return xp.where(diag[:, None, None], diag_rows, rows)
