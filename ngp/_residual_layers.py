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

from ._cumulants import LayerCumulants, RefusedLayer, ScaledLayer
from ._residual_cumulants import CHAIN_OPTIONS, chain_start, layer_cumulants, readout, residual_step
from ._validate import MAX_MEMORY

__all__ = ["ResidualChainLayer", "ResidualReadoutLayer", "residual_layer", "readout_layer"]

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


class _ChainDerived(LayerCumulants):
    """A layer whose ``K1`` and packed ``V`` come from one chain computation (``_cumulants``)."""

    @functools.cached_property
    def _cumulants(self):
        raise NotImplementedError

    @functools.cached_property
    def K1(self):
        self._check("K1")
        return np.asarray(self._cumulants.K1)

    @functools.cached_property
    def _packed(self):
        self._check("V")
        return np.asarray(self._cumulants.V)

    @functools.cached_property
    def _local2(self):
        cols = self.pairs.cols
        return self._packed[cols[:, :, None], cols[:, None, :]]

    def _components_pq(self, p, q):
        return self._packed[np.asarray(p, dtype=np.int64), np.asarray(q, dtype=np.int64)]


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

    def __init__(self, K, *, prev, act, C_W, C_b, gamma, xi, branch, options, width, refusal=None):
        super().__init__(K, n=width, width=width)
        self.prev, self.act = prev, act
        self.C_W, self.C_b, self.gamma, self.xi, self.branch = C_W, C_b, gamma, xi, tuple(branch)
        self.options = {k: v for k, v in options.items() if k in CHAIN_OPTIONS}
        self.max_memory = options.get("max_memory")
        self.chain_depth = prev.chain_depth + 1 if isinstance(prev, ResidualChainLayer) else 2
        self.refusal = refusal if refusal is not None else prev.refusal

    def memory_estimate(self) -> int:
        """Bytes of the chain state after this step: ``depth (depth + 1) / 2`` trajectory covariances
        and ``3 depth`` self-interaction blocks, ``P x P`` each, plus work arrays."""
        k, P = self.chain_depth, self.pairs.P
        return int(8 * P * P * (k * (k + 1) // 2 + 3 * k + 12))

    @functools.cached_property
    def chain(self):
        """The :class:`ngp._residual_cumulants.ChainState` after this step."""
        self._check("K1 and V")
        limit = MAX_MEMORY if self.max_memory is None else self.max_memory
        need = self.memory_estimate()
        if need > limit:
            raise MemoryError(
                f"residual chain: the finite-width state of a chain of {self.chain_depth} layers on {self.N} distinct inputs "
                f"needs about {need / 1024**3:.2f} GiB (> max_memory={limit / 1024**3:.2f} GiB); it is dense over "
                "input pairs (P^2 per pair of layers). Use fewer inputs (ngp.condition: a smaller predict batch_size), "
                "or raise max_memory."
            )
        p = self.prev
        if isinstance(p, ResidualChainLayer):
            state = p.chain
        elif p.gaussian:
            state = chain_start(self.act, np.asarray(p.K), n=self.width, **self.options)
        else:
            state = chain_start(self.act, np.asarray(p.K), n=self.width, V=np.asarray(p.vertex.packed()),
                                K1=np.asarray(p.K1), n_prev=p.n, **self.options)
        return residual_step(state, C_W=float(self.C_W), C_b=float(self.C_b), gamma=float(self.gamma),
                             xi=float(self.xi), branch=self.branch)

    @functools.cached_property
    def _cumulants(self):
        return layer_cumulants(self.chain)


class ResidualReadoutLayer(_ChainDerived):
    """A dense step ``z = b + W act(z_chain)`` reading out a :class:`ResidualChainLayer`.

    Conditionally Gaussian given the chain's last metric; ``K1``, ``V`` normalised by the chain width.
    """

    def __init__(self, K, *, chain_layer: ResidualChainLayer, C_W, C_b, width, refusal=None):
        super().__init__(K, n=chain_layer.width, width=width)
        self.chain_layer, self.C_W, self.C_b = chain_layer, C_W, C_b
        self.refusal = refusal if refusal is not None else chain_layer.refusal

    @functools.cached_property
    def _cumulants(self):
        self._check("K1 and V")
        return readout(self.chain_layer.chain, C_W=float(self.C_W), C_b=float(self.C_b))


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
