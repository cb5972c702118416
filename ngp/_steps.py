"""Layer steps: one definition per layer gives both the random network and its cumulants.

A network is a composition ``ngp.serial(step, step, ...)`` of steps (the idea of
neural-tangents' ``stax``, carried to finite width). Each step defines, once,

* its forward pass on actual parameters: ``init(key, in_dim)`` -> params and
  ``apply(params, h)`` (used by :func:`ngp.sample_networks`, the importance sampler and the
  NUTS model), plus ``draw(h, normals)``: the same step with its parameters given as standard
  normal draws, or, for a dense step, its exact conditional-Gaussian law given its input;
* how it maps the cumulant state of its input to that of its output (``flow``): the kernel
  ``K``, and where the step supports finite width, ``K1`` and the vertex ``V``
  (``ngp._cumulants``).

Steps: :class:`Dense`, :class:`Elementwise`, :class:`Residual`, :class:`Serial`; a whole network is
an :class:`ngp.Network` (``ngp.serial(...)``, ``ngp/_network.py``).
Parameters are non-centred: a dense step stores standard normals ``W`` ``(in_dim, width)`` and
``b`` ``(width,)`` and applies ``h @ (sqrt(C_W / in_dim) W) + sqrt(C_b) b`` (no ``b`` when
``C_b = 0``). Conventions: ``docs/theory.md``; adding a step: ``docs/extending.md``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ._activations import Activation, activation as make_activation, made_by
from ._cumulants import DenseLayer, DenseMap, GaussianLayer, LayerCumulants, ScaledLayer
from ._kernel import KERNEL_OPTIONS, dense_kernel, first_layer_kernel, two_point_matrix
from ._linalg import psd_sqrt
from ._pairs import is_concrete
from ._progress import labelled
from ._residual_layers import readout_layer, residual_layer
from ._validate import MAX_WIDTH, count, device, multiplier, nonneg_float, positive_float, real

__all__ = ["Step", "Dense", "Elementwise", "Scale", "Residual", "Serial", "Flow", "IDENTITY", "compose"]

#: The identity activation (what a representation "is" before any elementwise step).
IDENTITY = make_activation("linear")


@functools.lru_cache(maxsize=256)
def compose(first: Activation, then: Activation) -> Activation:
    """``then(first(x))`` as one activation (closed forms kept only when one of them is the identity)."""
    if first is IDENTITY:
        return then
    if then is IDENTITY:
        return first
    f, g = first.fn, then.fn
    act = Activation(f"{then.name}({first.name})", lambda x: g(f(x)), smooth=first.smooth and then.smooth)
    return made_by(act, compose, first, then)


@dataclasses.dataclass(frozen=True)
class Flow:
    """The cumulant state between steps (internal).

    Attributes:
        features: ``(N, d)`` deterministic features (before the first dense step), else ``None``.
        layer: the cumulants of the current pre-activations (after a dense or residual step).
        act: elementwise function still to be applied to ``layer`` (``IDENTITY`` if none).
        width: number of neurons (feature dimension) of the current representation.
        layers: the layers produced so far (the flow through depth).
        options: numerical options (``method``, ``terms``, ``nodes``, ``four_point_order``, ...).
        hyper: optional ``(C_W, C_b)`` per dense step (in forward order) replacing the steps' own
            values; they may be JAX tracers, so the cumulants are differentiable in them.
        dense_index: number of dense steps passed so far.
    """

    features: Any
    layer: LayerCumulants | None
    act: Activation
    width: int
    layers: tuple = ()
    options: dict = dataclasses.field(default_factory=dict, compare=False)
    hyper: tuple | None = None
    dense_index: int = 0

    @classmethod
    def start(cls, X, options=None, hyper=None) -> "Flow":
        X = np.asarray(X, dtype=float) if is_concrete(X) else X  # traced: the GP fit's argument
        return cls(X, None, IDENTITY, X.shape[1], (), dict(options or {}), hyper, 0)


class Step:
    """Base class of layer steps (immutable, hashable descriptions)."""

    def output_dim(self, in_dim: int) -> int:
        """Feature dimension after the step, given ``in_dim`` before it."""
        return in_dim

    def init(self, key, in_dim: int):
        """Parameters (a pytree of standard normals) for input dimension ``in_dim``."""
        return ()

    def apply(self, params, h):
        """Forward pass on features ``h`` of shape ``(..., in_dim)``."""
        raise NotImplementedError

    def draw_shapes(self, in_dim: int, N: int, conditional: bool) -> list:
        """Shapes of the standard normals one network needs (see :meth:`draw`)."""
        return []

    def draw(self, h, normals: list, conditional: bool):
        """Forward pass of one random network on ``h`` ``(N, in_dim)``, consuming ``normals`` (a list,
        popped from the front). ``conditional``: dense steps draw their outputs from the exact
        conditional Gaussian law given their input instead of drawing weights."""
        return self.apply((), h)

    def dense_steps(self) -> list:
        """The dense steps in forward order (nested ones included)."""
        return []

    def flow(self, f: Flow) -> Flow:
        """Map the cumulant state of the input to that of the output."""
        raise NotImplementedError


@dataclasses.dataclass(frozen=True, eq=False)
class Dense(Step):
    """A dense (fully connected) step ``z = b + W h`` with ``Var(W_ij) = C_W / fan_in``, ``Var(b_i) = C_b``.

    Args:
        width: number of output neurons.
        C_W: weight variance times fan-in, ``> 0``.
        C_b: bias variance, ``>= 0``.

    Cumulants: ``K' = C_b + C_W <f f>_K`` for the elementwise ``f`` applied since the previous
    dense step (``C_b + C_W h h^T / d`` on deterministic inputs), with ``V'`` and ``K1'`` by the
    finite-width recursions (``docs/theory.md``).
    """

    width: int
    C_W: float = 1.0
    C_b: float = 0.0

    def __post_init__(self):
        object.__setattr__(self, "width", count(self.width, "width", maximum=MAX_WIDTH))
        object.__setattr__(self, "C_W", multiplier(positive_float(self.C_W, "C_W"), "C_W"))
        object.__setattr__(self, "C_b", multiplier(nonneg_float(self.C_b, "C_b"), "C_b"))

    def __eq__(self, other):
        return type(other) is Dense and (self.width, self.C_W, self.C_b) == (other.width, other.C_W, other.C_b)

    def __hash__(self):
        return hash(("Dense", self.width, self.C_W, self.C_b))

    def output_dim(self, in_dim):
        return self.width

    def init(self, key, in_dim):
        kW, kb = jax.random.split(key)
        params = {"W": jax.random.normal(kW, (in_dim, self.width))}
        if self.C_b > 0:
            params["b"] = jax.random.normal(kb, (self.width,))
        return params

    def apply(self, params, h):
        z = h @ (params["W"] * math.sqrt(self.C_W / h.shape[-1]))
        if self.C_b > 0:
            z = z + params["b"] * math.sqrt(self.C_b)
        return z

    def metric(self, h):
        """Stochastic metric ``C_b + (C_W / d) h h^T`` of features ``h`` ``(N, d)``: the exact covariance
        of every output neuron given ``h``."""
        return self.C_b + self.C_W * (h @ jnp.swapaxes(h, -1, -2)) / h.shape[-1]

    def draw_shapes(self, in_dim, N, conditional):
        return [(N, self.width)] if conditional else [(in_dim, self.width), (self.width,)]

    def draw(self, h, normals, conditional):
        if conditional:
            return psd_sqrt(self.metric(h)) @ normals.pop(0)
        W, b = normals.pop(0), normals.pop(0)
        return self.apply({"W": W, "b": b}, h)

    def dense_steps(self):
        return [self]

    def flow(self, f: Flow) -> Flow:
        opts = f.options
        C_W, C_b = (self.C_W, self.C_b) if f.hyper is None else f.hyper[f.dense_index]
        if f.layer is None:
            K = first_layer_kernel(device(f.features), C_W, C_b)
            layer = GaussianLayer(K, width=self.width)
        else:
            kopts = {k: v for k, v in opts.items() if k in KERNEL_OPTIONS}
            E2 = two_point_matrix(f.act, f.layer.K, **kopts)
            K = dense_kernel(E2, C_W, C_b)
            prev = f.layer
            layer = readout_layer(self, f, K, C_W, C_b)  # a dense step reading out a residual chain
            if layer is None:
                ratio = None if prev.n is None else f.width / prev.n
                if opts.get("progress") is not None:  # the table of this layer's fresh term reports as "layer l"
                    opts = {**opts, "progress": labelled(opts["progress"], f"layer {len(f.layers) + 1}")}
                dmap = DenseMap(f.act, prev.K, E2, C_W, ratio, prev.pairs, opts)
                layer = DenseLayer(K, prev=prev, dense_map=dmap, width=self.width)
        if not isinstance(K, jax.core.Tracer) and not np.all(np.isfinite(np.asarray(K))):
            fed = "" if f.layer is None or isinstance(f.layer.K, jax.core.Tracer) else (
                f" (the largest it is applied to: {float(np.max(np.diagonal(np.asarray(f.layer.K)))):.3g})")
            raise FloatingPointError(
                f"{self!r}: the kernel recursion produced non-finite values: the Gaussian two-point integral of the "
                f"activation {f.act.name!r} overflows or cannot be computed at these variances{fed}; standardise the "
                "inputs or lower C_W/C_b"
            )
        return dataclasses.replace(f, features=None, layer=layer, act=IDENTITY, width=self.width,
                                   layers=f.layers + (layer,), dense_index=f.dense_index + 1)

    def __repr__(self):
        return f"Dense({self.width}, C_W={self.C_W:g}, C_b={self.C_b:g})"


@dataclasses.dataclass(frozen=True, eq=False)
class Elementwise(Step):
    """Apply an activation elementwise: ``h -> sigma(h)``.

    Args:
        activation: a name from ``ngp.ACTIVATIONS``, an :class:`ngp.Activation`, or a JAX-traceable
            elementwise callable (see :func:`ngp.activation`).

    Cumulants: the activation is applied inside the next dense step's Gaussian expectations
    (consecutive elementwise steps compose).
    """

    activation: Activation

    def __post_init__(self):
        object.__setattr__(self, "activation", make_activation(self.activation))

    def __eq__(self, other):
        return type(other) is Elementwise and self.activation is other.activation

    def __hash__(self):
        return hash(("Elementwise", id(self.activation)))

    def apply(self, params, h):
        return self.activation.fn(h)

    def flow(self, f: Flow) -> Flow:
        if f.layer is None:  # deterministic features: apply directly
            return dataclasses.replace(f, features=self.activation.fn(device(f.features)))
        return dataclasses.replace(f, act=compose(f.act, self.activation))

    def __repr__(self):
        return f"Elementwise({self.activation.name!r})"


@dataclasses.dataclass(frozen=True, eq=False)
class Scale(Step):
    """Multiply pre-activations by a constant: ``z -> alpha z`` (no parameters).

    Cumulants: ``K' = alpha^2 K``, ``K1' = alpha^2 K1``, ``V' = alpha^4 V`` (same width ``n``); ``alpha = 1`` leaves
    the layer as it is (also after a residual chain, whose rescaling is otherwise not supported).
    The worked example of ``docs/extending.md``.
    """

    alpha: float

    def __post_init__(self):
        object.__setattr__(self, "alpha", multiplier(real(self.alpha, "alpha"), "alpha"))

    def __eq__(self, other):
        return type(other) is Scale and self.alpha == other.alpha

    def __hash__(self):
        return hash(("Scale", self.alpha))

    def apply(self, params, h):
        return self.alpha * h

    def flow(self, f: Flow) -> Flow:
        if f.layer is None:  # deterministic features
            return dataclasses.replace(f, features=self.alpha * f.features)
        if f.act is not IDENTITY:
            raise ValueError(f"{self!r}: scales pre-activations; place it before the Elementwise step")
        if self.alpha == 1.0:  # the identity: no layer (a residual chain's readout then still applies)
            return f
        layer = ScaledLayer(f.layer, self.alpha)
        return dataclasses.replace(f, layer=layer, layers=f.layers[:-1] + (layer,))

    def __repr__(self):
        return f"Scale({self.alpha:g})"


@dataclasses.dataclass(frozen=True, eq=False)
class Residual(Step):
    """A residual step ``z -> gamma z + xi block(z)`` on pre-activations.

    Args:
        block: a step (typically ``ngp.serial(ngp.Elementwise(act), ngp.Dense(width))``) ending with a
            dense step of the same width as its input (its fresh weights make the skip and the
            branch uncorrelated).
        gamma: skip weight.
        xi: branch weight.

    Cumulants: ``K' = gamma^2 K + xi^2 K_block``. Finite-width cumulants: with ``gamma = 0`` the step
    is its block scaled by ``xi`` (exact); otherwise ``K1`` and ``V`` of the residual chain
    (``docs/theory.md``, "Residual networks"; ``ngp/_residual_layers.py``) for blocks of ``Elementwise``
    and ``Dense`` steps applying one activation to the stream along the chain and in the dense
    step that reads it out (other patterns raise ``NotImplementedError`` on ``K1``/``V``).
    """

    block: Step
    gamma: float = 1.0
    xi: float = 1.0

    def __post_init__(self):
        if not isinstance(self.block, Step):
            raise TypeError(f"block: expected a layer step (e.g. ngp.serial(...)), got {type(self.block).__name__}")
        object.__setattr__(self, "gamma", multiplier(real(self.gamma, "gamma"), "gamma"))
        object.__setattr__(self, "xi", multiplier(real(self.xi, "xi"), "xi"))
        dense = self.block.dense_steps()
        if not dense or not _ends_with_dense(self.block):
            raise ValueError(
                "block: a residual block must end with a Dense step (its fresh weights make the skip and the "
                "branch uncorrelated), e.g. ngp.serial(ngp.Elementwise('tanh'), ngp.Dense(width))"
            )

    def __eq__(self, other):
        return type(other) is Residual and (self.block, self.gamma, self.xi) == (other.block, other.gamma, other.xi)

    def __hash__(self):
        return hash(("Residual", self.block, self.gamma, self.xi))

    def output_dim(self, in_dim):
        out = self.block.output_dim(in_dim)
        if out != in_dim:
            raise ValueError(f"{self!r}: the block maps {in_dim} features to {out}; a residual block must keep the width")
        return in_dim

    def init(self, key, in_dim):
        self.output_dim(in_dim)
        return self.block.init(key, in_dim)

    def apply(self, params, h):
        return self.gamma * h + self.xi * self.block.apply(params, h)

    def draw_shapes(self, in_dim, N, conditional):
        return self.block.draw_shapes(in_dim, N, conditional)

    def draw(self, h, normals, conditional):
        return self.gamma * h + self.xi * self.block.draw(h, normals, conditional)

    def dense_steps(self):
        return self.block.dense_steps()

    def flow(self, f: Flow) -> Flow:
        if f.layer is None or f.act is not IDENTITY:
            raise ValueError(
                f"{self!r}: a residual step acts on pre-activations: place it after a Dense or Residual step "
                "and before any Elementwise step (put the activation inside the block)"
            )
        inner = self.block.flow(dataclasses.replace(f, layers=()))
        if inner.width != f.width:
            raise ValueError(f"{self!r}: the block maps {f.width} features to {inner.width}; it must keep the width")
        if self.gamma == 0.0:  # no skip: the step is its block, scaled by xi (exact)
            layer = inner.layer if self.xi == 1.0 else ScaledLayer(inner.layer, self.xi)
        else:
            K = self.gamma**2 * f.layer.K + self.xi**2 * inner.layer.K
            spec = _block_spec(self.block, f.hyper, f.dense_index)
            layer = residual_layer(self, f, K, spec)  # finite width: the residual-chain cumulants
        return dataclasses.replace(f, layer=layer, layers=f.layers + (layer,), dense_index=inner.dense_index)

    def __repr__(self):
        return f"Residual({self.block!r}, gamma={self.gamma:g}, xi={self.xi:g})"


def _block_spec(block, hyper, index):
    """``(act, C_W, C_b, branch)`` of a block ``[Elementwise*, Dense, (Elementwise*, Dense)*]``, or a
    string saying why the block is not of that form. ``hyper``/``index``: the flow's replacement
    ``(C_W, C_b)`` per dense step and the index of the block's first dense step."""

    def flat(step):
        if isinstance(step, Serial):
            return [t for s in step.steps for t in flat(s)]
        return [step]

    act, dense = IDENTITY, []
    for s in flat(block):
        if isinstance(s, Elementwise):
            act = compose(act, s.activation)
        elif isinstance(s, Dense):
            cw, cb = (s.C_W, s.C_b) if hyper is None else hyper[index + len(dense)]
            dense.append((s.width, cw, cb, act))
            act = IDENTITY
        else:
            return f"the block contains a {type(s).__name__} step (only Elementwise and Dense steps are supported)"
    _, cw, cb, act0 = dense[0]
    branch = tuple((dense[i - 1][0],) + dense[i][1:] for i in range(1, len(dense)))
    return act0, cw, cb, branch


def _ends_with_dense(step: Step) -> bool:
    if isinstance(step, Dense):
        return True
    if isinstance(step, Serial) and step.steps:
        return _ends_with_dense(step.steps[-1])
    if isinstance(step, Residual):
        return True
    return False


@dataclasses.dataclass(frozen=True, eq=False)
class Serial(Step):
    """Steps applied one after the other (``ngp.serial``)."""

    steps: tuple

    def __eq__(self, other):
        return isinstance(other, Serial) and tuple(self.steps) == tuple(other.steps)

    def __hash__(self):
        return hash(("Serial", tuple(self.steps)))

    def output_dim(self, in_dim):
        for s in self.steps:
            in_dim = s.output_dim(in_dim)
        return in_dim

    def init(self, key, in_dim):
        keys = jax.random.split(key, max(len(self.steps), 1))
        params = []
        for k, s in zip(keys, self.steps):
            params.append(s.init(k, in_dim))
            in_dim = s.output_dim(in_dim)
        return tuple(params)

    def apply(self, params, h):
        for p, s in zip(params, self.steps):
            h = s.apply(p, h)
        return h

    def draw_shapes(self, in_dim, N, conditional):
        out = []
        for s in self.steps:
            out += s.draw_shapes(in_dim, N, conditional)
            in_dim = s.output_dim(in_dim)
        return out

    def draw(self, h, normals, conditional):
        for s in self.steps:
            h = s.draw(h, normals, conditional)
        return h

    def dense_steps(self):
        return [d for s in self.steps for d in s.dense_steps()]

    def flow(self, f: Flow) -> Flow:
        for s in self.steps:
            f = s.flow(f)
        return f

    def __repr__(self):
        return "serial(" + ", ".join(repr(s) for s in self.steps) + ")"

