"""Residual steps in the cumulant engine: the layer cumulants of residual chains (``docs/theory.md``,
"Residual networks").

A residual step with a skip (``gamma != 0``) produces a layer that is *not* conditionally Gaussian
given one metric: a neuron's own past enters both through the skip and through the metrics it
helped to build. Its cumulants, and those of the dense step that reads it out, therefore come from
the state of the whole residual chain (:class:`ngp._residual_cumulants.ChainState`), built lazily
the first time ``K1`` or ``V`` is asked for (the GP needs ``K`` only, which the engine computes).

* :class:`ResidualChainLayer`: the layer after a residual step; ``K1`` and ``V`` (normalised by the
  chain width ``n``) are the connected cumulants of two neurons of that layer
  (:func:`ngp._residual_cumulants.layer_cumulants`).
* :class:`ResidualReadoutLayer`: a dense step fed by a chain layer (after the chain's activation);
  it is conditionally Gaussian again, so the engine's dense recursion continues from it.

Supported: chains of residual steps whose blocks are ``Elementwise`` / ``Dense`` compositions ending
with a dense step (one or several hidden layers of any width and activation), all applying the same
activation to the stream, started after any conditionally Gaussian layer (a dense step, a scaled one,
a ``gamma = 0`` residual step) and read out by a dense step with that activation. Other patterns
keep ``K`` and refuse ``K1``/``V`` with a message naming what is missing.
"""

from __future__ import annotations

import functools

import jax
import numpy as np

from ._cumulants import LayerCumulants, RefusedLayer, ScaledLayer, remember
from ._fourpoint import RTOL
from ._residual_cumulants import (CHAIN_OPTIONS, PairSet, chain_start, companion_options, layer_cumulants, readout,
                                  residual_step)
from ._validate import MAX_MEMORY, warn
from ._warnings import CostWarning, duration
from ._vertex_error import component_errors, k1_error, k1_error_packed, packed_vertex_error

__all__ = ["ResidualChainLayer", "ResidualReadoutLayer", "residual_layer", "readout_layer"]

#: Seconds per cross-layer expectation of a dense chain (``ResMLP(4, 16)``, tanh, 10 inputs of 2 features: 36.3 s for
#: the 3 P^2 = 9075 expectations of its two chain layers, compilation included, 2 cores; a lower bound kept below
#: that 4 ms), and the estimate beyond which the dense ``V`` gives a :class:`ngp.CostWarning` before it starts.
_DENSE_SECONDS = 2e-3
_DENSE_WARN = 60.0

_UNSUPPORTED = (
    "{step}: finite-width cumulants ({{what}}) of this residual pattern are not implemented: {reason} "
    "(docs/theory.md, 'Residual networks'). Use ngp.sample_networks(net, X, ...) for Monte-Carlo "
    "finite-width statistics, or .K for the exact infinite-width kernel."
)


def _is_tracer(x) -> bool:
    return isinstance(x, jax.core.Tracer)


def _in_chain(layer) -> bool:
    """Whether ``layer`` is (a rescaling of) a residual chain layer: not conditionally Gaussian."""
    while isinstance(layer, ScaledLayer):
        layer = layer.prev
    return isinstance(layer, ResidualChainLayer)


#: Vertex requests (entries and values) a chain layer remembers: a prediction's batches, asked again at another width.
_REQUESTS_KEPT = 8


def _chain_bytes(depth: int, P: int) -> int:
    """Bytes of a chain state of ``depth`` layers on ``P`` pairs: ``depth (depth + 1) / 2`` trajectory
    covariances and ``3 depth`` self-interaction blocks, ``P x P`` each, plus work arrays."""
    return int(8 * P * P * (depth * (depth + 1) // 2 + 3 * depth + 12))


def _chunks(pairs, p, q, cap: int):
    """Split the entries ``(p[i], q[i])`` (pair indices) into runs whose :class:`PairSet` holds at most about
    ``cap`` pairs; yields index arrays into the entries. Entries are grouped by their rarest input (in a
    prediction, the test point: its pairs with the training points are what each entry adds), and groups
    are added to a run while its pairs fit (a group that alone holds more than ``cap`` pairs, entry by entry)."""
    quads = np.stack([pairs.a[p], pairs.b[p], pairs.a[q], pairs.b[q]], axis=1)
    freq = np.bincount(quads.ravel(), minlength=pairs.N)
    key = quads[np.arange(quads.shape[0]), np.argmin(freq[quads] * (pairs.N + 1) - quads, axis=1)]
    order = np.argsort(key, kind="stable")
    held = np.zeros(pairs.P, dtype=bool)
    run, count = [], 0

    def blocks_of(g):
        return np.unique(np.concatenate([pairs.cols[p[g]].ravel(), pairs.cols[q[g]].ravel()]))

    for g in np.split(order, np.flatnonzero(np.diff(key[order])) + 1):
        blocks = blocks_of(g)
        units = [(g, blocks)] if blocks.size <= cap else [(g[i:i + 1], blocks_of(g[i:i + 1])) for i in range(g.size)]
        for u, blocks in units:
            new = int(np.count_nonzero(~held[blocks]))
            if run and count + new > cap:
                yield np.concatenate(run)
                held[:] = False
                run, count, new = [], 0, blocks.size
            held[blocks] = True
            run.append(u)
            count += new
    if run:
        yield np.concatenate(run)


class _ChainDerived(LayerCumulants):
    """A layer whose ``K1`` and ``V`` come from a chain computation: on all pairs at once (``_cumulants``) for the
    dense ``V``, else on the :class:`ngp._residual_cumulants.PairSet` of the entries asked for (``_on``), in runs
    that fit the memory budget: ``K1`` and ``V`` on each pair's block cost ``O(P)`` expectations per pair of chain
    layers, and the vertex entries a prediction reads ``O(N_train^3)`` per test point, instead of ``P^2``."""

    chain_depth: int
    max_memory = None

    @functools.cached_property
    def _cumulants(self):
        raise NotImplementedError

    def _on(self, pair_set: PairSet):
        """:class:`ngp._residual_cumulants.Cumulants` of this layer on ``pair_set``."""
        raise NotImplementedError

    @functools.cached_property
    def error_companions(self):
        """The same layer on the companion quadrature (:func:`ngp._residual_cumulants.companion_options`): the
        largest difference of their ``K1`` and ``V`` from this layer's is their error estimate (``ngp._vertex_error``).
        One companion for a chain started after an exactly Gaussian layer; two for one started after a layer that is
        not (the chain is linear in that layer's ``V`` and ``K1``: the companions start from them plus and minus their
        error estimates, so the larger difference is the quadrature's difference plus the chain's response to the
        input metric's errors). ``None`` with ``four_point_order`` (no estimate)."""
        raise NotImplementedError

    @property
    def error_floor(self) -> float:
        """Relative floor of the error estimates by difference: a tenth of ``four_point_rtol`` (the same-layer
        four-point values of one or two distinct inputs run on a fixed rule where its calibrated error is below that,
        the same rule in the companion) and at least 64 ulps (rounding)."""
        return max(64 * float(np.finfo(float).eps), 0.1 * float(self.options.get("four_point_rtol") or RTOL))

    def follow(self, fine: "_ChainDerived") -> None:
        """As the companion of ``fine``: compute on all pairs at once if ``fine`` did (the dense chain, once)."""
        if "_cumulants" in fine.__dict__:
            self._cumulants

    def _cap(self) -> int:
        """Pairs per run: the chain state within a quarter of ``max_memory``, at most 4096."""
        limit = (MAX_MEMORY if self.max_memory is None else self.max_memory) // 4
        return int(min(4096, max(16, np.sqrt(limit / _chain_bytes(self.chain_depth, 1)))))

    @functools.cached_property
    def K1(self):
        self._check("K1")
        if "_cumulants" in self.__dict__:
            return np.asarray(self._cumulants.K1)
        return self.pairs.unpack(self._local_all[0])

    @functools.cached_property
    def _local_all(self):
        return self._local_on(np.arange(self.pairs.P))

    def _local_on(self, sel):
        """``K1`` ``(S,)`` and ``V`` on the blocks ``(S, 3, 3)`` of the pairs ``sel``, by chains on pair sets."""
        self._check("K1 and V")
        K1, L2 = np.empty(sel.size), np.empty((sel.size, 3, 3))
        for rows in _chunks(self.pairs, sel, sel, self._cap()):
            ps = PairSet.for_local(self.pairs, sel[rows])
            c = self._on(ps)
            at = ps.positions(sel[rows])
            K1[rows] = c.K1[at]
            lc = ps.cols[at]
            L2[rows] = c.V[lc[:, :, None], lc[:, None, :]]
        return K1, L2

    def _local(self, sel):
        return remember(self, "_local", sel, self._local_on)

    def _K1_at(self, sel):
        if "_cumulants" in self.__dict__:
            return super()._K1_at(sel)
        return self._local_all[0] if sel is None else self._local(np.asarray(sel, dtype=np.int64))[0]

    @functools.cached_property
    def _packed(self):
        self._check("V")
        return np.asarray(self._cumulants.V)

    @functools.cached_property
    def _local2(self):
        if "_cumulants" not in self.__dict__:
            return self._local_all[1]
        cols = self.pairs.cols
        return self._packed[cols[:, :, None], cols[:, None, :]]

    def _local2_at(self, sel):
        if sel is None or "_cumulants" in self.__dict__:
            return super()._local2_at(sel)
        return self._local(np.asarray(sel, dtype=np.int64))[1]

    def _pair_diagonal_at(self, sel):
        return self._local2_at(sel)[:, 2, 2]

    def _components_pq(self, p, q):
        self._check("V")
        p, q = np.asarray(p, dtype=np.int64).reshape(-1), np.asarray(q, dtype=np.int64).reshape(-1)
        if "_cumulants" in self.__dict__ or p.size == 0:
            return self._packed[p, q]
        # the latest requests are remembered: a prediction at another width (Conditioned.with_width) asks again
        return remember(self, "_components", np.concatenate([p, q]), lambda pq: self._entries_on(p, q),
                        keep=_REQUESTS_KEPT)

    def _entries_on(self, p, q):
        """``V`` at the entries ``(p[i], q[i])`` by chains on pair sets, in runs within the memory budget."""
        out = np.empty(p.size)
        for rows in _chunks(self.pairs, p, q, self._cap()):
            ps = PairSet.for_entries(self.pairs, p[rows], q[rows])
            out[rows] = self._on(ps).V[ps.positions(p[rows]), ps.positions(q[rows])]
        return out


class ResidualChainLayer(_ChainDerived):
    """The layer after a residual step ``z' = gamma z + xi block(z)`` with ``gamma != 0``.

    Attributes:
        prev: the layer the step acts on (a chain layer, or a conditionally Gaussian layer that
            starts the chain).
        act: the activation the block applies to the stream (the chain's activation).
        C_W, C_b: the block's first dense step; ``branch``: its further dense steps as
            ``(hidden width, C_W, C_b, activation of that hidden layer)``.
        gamma, xi: skip and branch weights.
        options: quadrature options (``docs/theory.md``, "Residual networks").

    ``K1``, ``V`` (``(N, N)``, ``(P, P)`` over unordered pairs) are normalised by the width ``n``.
    """

    #: The layer this one is the error companion of, when made before that layer's dense state (both may be held).
    _dense_beside = None
    #: Error companions of a chain started after a layer that is not exactly Gaussian start from that layer's ``V``
    #: and ``K1`` plus this multiple (+1 or -1) of their error estimates (:attr:`error_companions`).
    start_shift = 0.0

    def __init__(self, K, *, prev, act, C_W, C_b, gamma, xi, branch, options, width, refusal=None):
        super().__init__(K, n=width, width=width)
        self.prev, self.act = prev, act
        self.C_W, self.C_b, self.gamma, self.xi, self.branch = C_W, C_b, gamma, xi, tuple(branch)
        self.options = {k: v for k, v in options.items() if k in CHAIN_OPTIONS}
        self.max_memory = options.get("max_memory")
        self.chain_depth = prev.chain_depth + 1 if isinstance(prev, ResidualChainLayer) else 2
        self.refusal = refusal if refusal is not None else prev.refusal

    def memory_estimate(self) -> int:
        """Bytes of the chain state on all pairs after this step (:func:`_chain_bytes`)."""
        return _chain_bytes(self.chain_depth, self.pairs.P)

    @functools.cached_property
    def chain(self):
        """The :class:`ngp._residual_cumulants.ChainState` after this step."""
        self._check("K1 and V")
        limit = MAX_MEMORY if self.max_memory is None else self.max_memory
        beside = self._dense_beside  # this is an error companion made before its layer's dense state
        if beside is not None and "chain" in beside.__dict__:
            limit = max(limit - beside.memory_estimate(), 0)  # both held
        need = self.memory_estimate()
        if need > limit:
            raise MemoryError(
                f"residual chain: the dense V of a chain of {self.chain_depth} layers on {self.N} distinct inputs "
                f"needs about {need / 1024**3:.3g} GiB (> max_memory={limit / 1024**3:.3g} GiB): its state is dense "
                "over input pairs (P^2 per pair of layers). K1 and the predictions of ngp.condition compute only the "
                "entries they read, within max_memory; for V itself use fewer inputs, or raise max_memory."
            )
        self._warn_dense_cost()
        p = self.prev
        if isinstance(p, ResidualChainLayer):
            state = p.chain
        elif p.gaussian:
            state = chain_start(self.act, np.asarray(p.K), n=self.width, **self.options)
        else:
            V, K1 = np.asarray(p.vertex.packed()), np.asarray(p.K1)
            if self.start_shift:
                V, K1 = V + self.start_shift * packed_vertex_error(p), K1 + self.start_shift * k1_error(p)
            state = chain_start(self.act, np.asarray(p.K), n=self.width, V=V, K1=K1, n_prev=p.n, **self.options)
        return residual_step(state, C_W=float(self.C_W), C_b=float(self.C_b), gamma=float(self.gamma),
                             xi=float(self.xi), branch=self.branch)

    def _warn_dense_cost(self) -> None:
        """A :class:`ngp.CostWarning` when the dense chain still to compute (this layer and the earlier ones not yet
        computed: ``(k - 1) P^2`` expectations for the layer of chain depth ``k``) would take more than
        :data:`_DENSE_WARN` seconds at :data:`_DENSE_SECONDS` each; said once, by the last layer asked."""
        todo, layer = [], self
        while isinstance(layer, ResidualChainLayer) and "chain" not in layer.__dict__:
            todo.append(layer)
            layer = layer.prev
        if getattr(self, "_cost_said", False):
            return
        for layer in todo:
            layer._cost_said = True
        P = self.pairs.P
        seconds = sum(layer.chain_depth - 1 for layer in todo) * P**2 * _DENSE_SECONDS
        if seconds > _DENSE_WARN:
            warn(f"residual chain: the dense V on {self.N} distinct inputs ({P} pairs) is {P**2:.3g} cross-layer "
                 f"expectations per earlier chain layer, about {duration(seconds)} or more here (at ~"
                 f"{_DENSE_SECONDS * 1e3:g} ms each; as the number of inputs to the fourth power). The evidence's "
                 "training block needs it; predictions and K1 alone read only their entries (docs/theory-residual.md, "
                 "\"Cost\"): use fewer training inputs for a residual network.", CostWarning)

    def chain_on(self, pair_set: PairSet):
        """The :class:`ngp._residual_cumulants.ChainState` after this step on ``pair_set``."""
        self._check("K1 and V")
        p = self.prev
        if isinstance(p, ResidualChainLayer):
            state = p.chain_on(pair_set)
        elif p.gaussian:
            state = chain_start(self.act, np.asarray(p.K), n=self.width, pairs=pair_set, **self.options)
        else:  # the input metric's fluctuations: the previous layer's V at the needed entries, K1 at the pairs
            i, j = np.nonzero(np.triu(pair_set.need))
            V = np.zeros((pair_set.P, pair_set.P))
            V[i, j] = V[j, i] = p.vertex.components(np.stack([pair_set.a[i], pair_set.b[i], pair_set.a[j],
                                                               pair_set.b[j]], axis=1))
            K1 = np.asarray(p._K1_at(pair_set.index))
            if self.start_shift:
                pi, pj = pair_set.index[i], pair_set.index[j]
                V[i, j] += self.start_shift * component_errors(p, np.minimum(pi, pj), np.maximum(pi, pj))
                V[j, i] = V[i, j]
                K1 = K1 + self.start_shift * k1_error_packed(p, pair_set.index)
            state = chain_start(self.act, np.asarray(p.K), n=self.width, V=V, K1=K1, n_prev=p.n, pairs=pair_set,
                                **self.options)
        return residual_step(state, C_W=float(self.C_W), C_b=float(self.C_b), gamma=float(self.gamma),
                             xi=float(self.xi), branch=self.branch)

    @functools.cached_property
    def _cumulants(self):
        return layer_cumulants(self.chain)

    @functools.cached_property
    def error_companions(self):
        options = companion_options(self.act, self.options)
        p = self.prev
        if options is None:
            return None
        if isinstance(p, ResidualChainLayer):
            prevs = p.error_companions
            if prevs is None:
                return None
            shifts = (0.0,) * len(prevs)
        elif p.gaussian:
            prevs, shifts = (p,), (0.0,)
        else:  # the input metric's errors: one companion from V + E_V, K1 + E_K1, one from V - E_V, K1 - E_K1
            prevs, shifts = (p, p), (1.0, -1.0)
        # the budget left by this chain's dense state (held once computed; pair-set runs hold none), shared by the
        # companions; made before that state (K1 errors asked before V), a companion's own dense state checks it when
        # it is computed
        limit = MAX_MEMORY if self.max_memory is None else self.max_memory
        dense = "chain" in self.__dict__
        left = max(limit - (self.memory_estimate() if dense else 0), 0) // len(prevs)
        comps = []
        for q, shift in zip(prevs, shifts):
            comp = ResidualChainLayer(self.K, prev=q, act=self.act, C_W=self.C_W, C_b=self.C_b, gamma=self.gamma,
                                      xi=self.xi, branch=self.branch, options={**options, "max_memory": left},
                                      width=self.width, refusal=self.refusal)
            comp.start_shift = shift
            if not dense:
                comp._dense_beside = self
            comps.append(comp)
        return tuple(comps)

    def _on(self, pair_set: PairSet):
        return layer_cumulants(self.chain_on(pair_set))


class ResidualReadoutLayer(_ChainDerived):
    """A dense step ``z = b + W act(z_chain)`` reading out a :class:`ResidualChainLayer`.

    Conditionally Gaussian given the chain's last metric; ``K1``, ``V`` normalised by the chain width.
    """

    def __init__(self, K, *, chain_layer: ResidualChainLayer, C_W, C_b, width, refusal=None):
        super().__init__(K, n=chain_layer.width, width=width)
        self.chain_layer, self.C_W, self.C_b = chain_layer, C_W, C_b
        self.options = chain_layer.options
        self.refusal = refusal if refusal is not None else chain_layer.refusal
        self.chain_depth, self.max_memory = chain_layer.chain_depth, chain_layer.max_memory

    @functools.cached_property
    def _cumulants(self):
        self._check("K1 and V")
        return readout(self.chain_layer.chain, C_W=float(self.C_W), C_b=float(self.C_b))

    def _on(self, pair_set: PairSet):
        return readout(self.chain_layer.chain_on(pair_set), C_W=float(self.C_W), C_b=float(self.C_b))

    @functools.cached_property
    def error_companions(self):
        chains = self.chain_layer.error_companions
        return None if chains is None else tuple(
            ResidualReadoutLayer(self.K, chain_layer=c, C_W=self.C_W, C_b=self.C_b, width=self.width,
                                 refusal=self.refusal) for c in chains)


def residual_layer(step, f, K, spec) -> LayerCumulants:
    """The layer after ``step`` (an ``ngp.Residual`` with ``gamma != 0``) applied to the flow ``f``,
    whose kernel ``K`` the engine has computed. ``spec``: the block as ``(act, C_W, C_b, branch)``
    (its first dense step's activation and hyperparameters, then ``(hidden width, C_W, C_b,
    activation)`` per further dense step), or a string saying why the block is not supported."""
    prev, width = f.layer, f.width
    reason = None
    if isinstance(spec, str):
        reason = spec
    else:
        act, C_W, C_b, branch = spec
        if _in_chain(prev) and not isinstance(prev, ResidualChainLayer):
            reason = "a residual chain is rescaled (Scale step) before the next residual step"
        elif isinstance(prev, ResidualChainLayer) and act is not prev.act:
            reason = (f"consecutive residual blocks apply different activations to the stream "
                      f"({prev.act.name!r}, then {act.name!r})")
        elif any(_is_tracer(v) for v in (K, C_W, C_b) + tuple(x for b in branch for x in b[1:3])):
            reason = "the residual-chain cumulants are computed in NumPy and are not differentiable in C_W, C_b"
    if reason is not None:
        refusal = _UNSUPPORTED.format(step=repr(step), reason=reason)
        return RefusedLayer(K, n=width, width=width, refusal=refusal)
    return ResidualChainLayer(K, prev=prev, act=act, C_W=C_W, C_b=C_b, gamma=step.gamma, xi=step.xi,
                              branch=branch, options=f.options, width=width)


def readout_layer(step, f, K, C_W, C_b):
    """The layer after a dense ``step`` fed by a chain layer (``None`` when ``f.layer`` is not in a
    residual chain: the engine's dense recursion applies)."""
    prev = f.layer
    if not _in_chain(prev):
        return None
    reason = None
    if not isinstance(prev, ResidualChainLayer):
        reason = "a residual chain is rescaled (Scale step) before the dense step that reads it out"
    elif f.act is not prev.act:
        reason = (f"the dense step after the residual chain applies {f.act.name!r}, not the chain's "
                  f"activation {prev.act.name!r}")
    elif any(_is_tracer(v) for v in (K, C_W, C_b)):
        reason = "the residual-chain cumulants are computed in NumPy and are not differentiable in C_W, C_b"
    if reason is not None:
        refusal = _UNSUPPORTED.format(step=repr(step), reason=reason)
        return RefusedLayer(K, n=prev.width, width=step.width, refusal=refusal)
    return ResidualReadoutLayer(K, chain_layer=prev, C_W=C_W, C_b=C_b, width=step.width)
