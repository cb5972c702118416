"""Residual MLPs ``ngp.ResMLP`` (THEORY.md §8): infinite-width kernel and exact network sampling.

Design (``depth = L`` weight layers, like :class:`ngp.MLP`):

* layer 1 is plain: ``z^(1) = b^(1) + W^(1) x``;
* layers ``2 .. L-1`` are residual blocks of equal width ``n``:
  ``z^(l) = gamma_l z^(l-1) + xi_l [b^(l) + W^(l) sigma(z^(l-1))]``;
* layer ``L`` is a plain readout: ``z^(L) = b^(L) + W^(L) sigma(z^(L-1))`` with ``out_dim`` neurons.

``Var(W^(l)_ij) = C_W^(l) / n_{l-1}``, ``Var(b^(l)_i) = C_b^(l)``. With ``gamma = 0``, ``xi = 1``
every block is a plain layer and the network is exactly ``ngp.MLP(depth, width, ...)``.
Infinite-width kernel: ``K^(l) = gamma_l^2 K^(l-1) + xi_l^2 Phi_l(K^(l-1))`` for the blocks, with
the MLP kernel map ``Phi_l(K) = C_b^(l) + C_W^(l) <sigma sigma>_K``.
Actual residual networks are drawn by ``ngp.sample_networks(net, X, ...)`` (both samplers exact).

Finite-width cumulants (``V``, ``K1``) are deliberately not provided: the leading-order MLP
recursions with an extra ``gamma^2`` are wrong beyond the first residual block for nonlinear
activations (a neuron's own past enters both directly and through the metric, producing
``O(1/n)`` cross-neuron cumulants of order 6, 8, ... that feed back into ``V``), and
activations that are not odd develop ``O(1/n)`` *odd* cumulants that shift ``K1`` (THEORY §8).
"""

from __future__ import annotations

import math
import numbers
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ._activations import Activation, activation as _make_activation
from ._kernel import first_layer_kernel, kernel_map
from ._mlp import _as_depth, _as_width, _per_layer
from ._sampling import _metric, _psd_sqrt
from ._validate import as_inputs, check_x64, nonneg_float, positive_float

__all__ = ["ResMLP", "ResPrior"]

_NO_FINITE_WIDTH = (
    "ResMLP: finite-width cumulants ({what}) of residual networks are not implemented. The naive "
    "leading-order recursion (the MLP one with the skip term added) is exact only up to the first "
    "residual block and for linear activations; beyond it, for nonlinear sigma, a neuron's own past "
    "enters both directly (skip) and through the metric, which produces O(1/n) cross-neuron "
    "cumulants of order 6, 8, ... that change V at O(1), and activations that are not odd (relu, "
    "gelu, swish, ...) develop O(1/n) odd cumulants that shift K1 (THEORY.md section 8). Use "
    "ngp.sample_networks(net, X, ...) for Monte-Carlo finite-width statistics, or .K for the exact "
    "infinite-width kernel."
)


def _real(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (numbers.Real, np.floating, np.integer)):
        raise TypeError(f"{name}: expected a real number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name}: must be finite, got {value}")
    return value


class ResMLP:
    """A residual MLP prior: plain first layer, residual hidden blocks, plain readout.

    ``z^(1) = b + W x``; ``z^(l) = gamma_l z^(l-1) + xi_l [b + W sigma(z^(l-1))]`` for
    ``l = 2 .. depth-1``; ``z^(depth) = b + W sigma(z^(depth-1))`` (THEORY.md §8).

    Args:
        depth: number of weight layers ``L >= 1`` (``L - 2`` residual blocks when ``L >= 3``).
        width: the common hidden width ``n`` (an int; residual blocks need equal widths).
            Ignored (may be ``None``) when ``depth == 1``.
        activation: name from ``ngp.ACTIVATIONS``, :class:`ngp.Activation` or callable.
        C_W: weight variance (times fan-in), a float or one value per weight layer; ``> 0``.
        C_b: bias variance, a float or one value per weight layer; ``>= 0``.
        gamma: skip weight, a float or one value per residual block (``depth - 2`` values,
            blocks ``2 .. depth-1``). Default 1 (the standard ``z + f(z)``).
        xi: residual-branch weight, a float or one value per residual block. Default 1.
        out_dim: number of output neurons.
        in_dim: optional input dimension (checked when given).

    ``gamma = 0, xi = 1`` reproduces :class:`ngp.MLP` exactly (kernels; samples in distribution).

    Example:
        >>> net = ngp.ResMLP(depth=6, width=256, activation="tanh", gamma=0.8, xi=0.6)
        >>> net.prior(X).K                      # (N, N) infinite-width output kernel
        >>> ngp.sample_networks(net, X, 100)    # actual random residual networks
    """

    def __init__(
        self,
        depth: int,
        width: int | None = None,
        *,
        activation: str | Callable | Activation = "tanh",
        C_W: float | Sequence[float] = 1.0,
        C_b: float | Sequence[float] = 0.0,
        gamma: float | Sequence[float] = 1.0,
        xi: float | Sequence[float] = 1.0,
        out_dim: int = 1,
        in_dim: int | None = None,
    ):
        self.depth = _as_depth(depth)
        if self.depth == 1:
            self.width = None
            self.widths: tuple[int, ...] = ()
        else:
            if width is None:
                raise ValueError(f"width: required for depth={self.depth}")
            if not isinstance(width, (numbers.Integral, np.integer, float, np.floating)) or isinstance(width, bool):
                raise TypeError(
                    f"width: expected one positive integer (residual blocks need equal widths), got {width!r}"
                )
            self.width = _as_width(width, "width")
            self.widths = (self.width,) * (self.depth - 1)
        self.activation = _make_activation(activation)
        self.C_W = _per_layer(C_W, self.depth, "C_W", positive_float)
        self.C_b = _per_layer(C_b, self.depth, "C_b", nonneg_float)
        n_blocks = max(self.depth - 2, 0)
        self.gamma = self._per_block(gamma, n_blocks, "gamma")
        self.xi = self._per_block(xi, n_blocks, "xi")
        self.out_dim = _as_width(out_dim, "out_dim")
        self.in_dim = None if in_dim is None else _as_width(in_dim, "in_dim")

    @staticmethod
    def _per_block(value, n_blocks: int, name: str) -> tuple[float, ...]:
        if isinstance(value, (numbers.Real, np.floating, np.integer)) and not isinstance(value, bool):
            return (_real(value, name),) * n_blocks
        if isinstance(value, (str, bytes)):
            raise TypeError(f"{name}: expected a number or a sequence of {n_blocks} numbers, got {value!r}")
        try:
            seq = list(value)
        except TypeError as exc:
            raise TypeError(f"{name}: expected a number or a sequence of {n_blocks} numbers, got {value!r}") from exc
        if len(seq) != n_blocks:
            raise ValueError(
                f"{name}: expected {n_blocks} values, one per residual block (layers 2..depth-1), got {len(seq)}"
            )
        return tuple(_real(v, f"{name}[{i}]") for i, v in enumerate(seq))

    @property
    def n_blocks(self) -> int:
        """Number of residual blocks, ``max(depth - 2, 0)``."""
        return len(self.gamma)

    @property
    def n_last(self) -> int | None:
        """Width ``n_{L-1}`` feeding the readout."""
        return self.width

    def prior(self, X, **options) -> "ResPrior":
        """The infinite-width prior over the outputs on inputs ``X`` (shape ``(N, n0)``).

        Keyword options are those of :meth:`ngp.MLP.prior` (``method``, ``terms``, ``nodes``,
        ``quad_nodes``).
        """
        return ResPrior(self, X, **options)

    def _make_sampler(self, n0: int, method: str):
        """One network: ``one(key, X) -> (outputs (N, out_dim), metric (N, N))``.

        ``metric`` is the readout's stochastic metric
        ``G_hat = C_b^(L) + (C_W^(L) / n) sigma(z^(L-1)) sigma(z^(L-1))^T`` given the last hidden
        layer; the outputs are drawn from their exact Gaussian law given it (as for ``ngp.MLP``).

        ``method="weights"`` draws every weight matrix and bias. ``method="conditional"`` is also
        exact: given layer ``l`` the residual branch ``b_i + sum_j W_ij sigma(z_j)`` has i.i.d.
        rows ``N(0, G_hat_u)`` (fresh weights), so a block is ``gamma z + xi sqrt(G_hat_u) eps``,
        ``O(n N^2)`` instead of ``O(n^2 N)``; unlike the MLP, the whole ``(N, n)`` layer is kept
        (the skip term carries each neuron's own pre-activations, not only the metric).

        All normal variates of one network come from a single ``jax.random.normal`` call
        (sliced afterwards): XLA compiles one threefry kernel instead of one per layer, which
        makes compilation several times faster.
        """
        if method not in ("weights", "conditional"):
            raise ValueError(
                f"method: expected 'weights' or 'conditional' (both exact for ResMLP), got {method!r}"
            )
        act = self.activation.fn
        L, n = self.depth, self.width
        C_W, C_b, gam, xi = self.C_W, self.C_b, self.gamma, self.xi
        out = self.out_dim

        def one(key, X):
            N = X.shape[0]
            if L == 1:
                shapes = []
            elif method == "weights":
                shapes = [(n0, n), (n,)] + [(n, n), (n,)] * (L - 2)
            else:
                shapes = [(N, n)] * (L - 1)
            shapes.append((N, out))
            sizes = [math.prod(s) for s in shapes]
            flat = jax.random.normal(key, (sum(sizes),), X.dtype)
            offsets = np.cumsum([0] + sizes)
            draws = [flat[offsets[i]:offsets[i + 1]].reshape(s) for i, s in enumerate(shapes)]
            if L == 1:
                G = first_layer_kernel(X, C_W[0], C_b[0])
            else:
                if method == "weights":
                    z = X @ (draws[0] * math.sqrt(C_W[0] / n0)) + draws[1] * math.sqrt(C_b[0])
                else:
                    z = _psd_sqrt(first_layer_kernel(X, C_W[0], C_b[0])) @ draws[0]
                for layer in range(1, L - 1):  # residual blocks: weight layers 2 .. L-1
                    h = act(z)
                    if method == "weights":
                        W, b = draws[2 * layer], draws[2 * layer + 1]
                        u = h @ (W * math.sqrt(C_W[layer] / n)) + b * math.sqrt(C_b[layer])
                    else:
                        u = _psd_sqrt(_metric(h, C_W[layer], C_b[layer])) @ draws[layer]
                    z = gam[layer - 1] * z + xi[layer - 1] * u
                G = _metric(act(z), C_W[L - 1], C_b[L - 1])
            return _psd_sqrt(G) @ draws[-1], G

        return one

    def __repr__(self) -> str:
        def short(t):
            return (t[0] if len(set(t)) == 1 else list(t)) if t else None

        return (
            f"ResMLP(depth={self.depth}, width={self.width}, activation={self.activation.name!r}, "
            f"C_W={short(self.C_W)}, C_b={short(self.C_b)}, gamma={short(self.gamma)}, xi={short(self.xi)}, "
            f"out_dim={self.out_dim})"
        )


class ResPrior:
    """Infinite-width prior of a :class:`ResMLP` on inputs ``X``.

    Attributes:
        net: the network.
        X: ``(N, n0)`` inputs (float64 NumPy array).
        kernels: tuple of the ``depth`` per-layer kernels ``K^(1..L)``, each ``(N, N)``:
            ``K^(1) = C_b + C_W X X^T / n0``, ``K^(l) = gamma^2 K^(l-1) + xi^2 Phi(K^(l-1))``
            for the residual blocks, ``K^(L) = Phi(K^(L-1))`` for the readout.
        K: ``(N, N)`` output kernel ``K^(L)``.

    ``V``, ``K1`` and ``layers`` raise :class:`NotImplementedError` (see the module docstring).
    """

    def __init__(self, net: ResMLP, X, **options):
        check_x64("computing a residual-network prior")
        self.net = net
        self.X = as_inputs(X, "X", in_dim=net.in_dim)
        self.options = dict(options)
        act = net.activation
        K = first_layer_kernel(jnp.asarray(self.X), net.C_W[0], net.C_b[0])
        kernels = [K]
        for layer in range(1, net.depth):
            phi = kernel_map(act, K, net.C_W[layer], net.C_b[layer], **self.options)
            if layer < net.depth - 1:
                g, x = net.gamma[layer - 1], net.xi[layer - 1]
                K = g * g * K + x * x * phi
            else:
                K = phi
            kernels.append(K)
        self.kernels = tuple(kernels)
        if not bool(jnp.all(jnp.isfinite(self.K))):
            raise FloatingPointError(
                "ResMLP.prior: the kernel recursion produced non-finite values; the activation "
                f"{act.name!r} overflows for these inputs/variances (C_W={net.C_W}, C_b={net.C_b}, "
                f"gamma={net.gamma}, xi={net.xi})"
            )

    @property
    def K(self):
        """``(N, N)`` infinite-width output kernel."""
        return self.kernels[-1]

    @property
    def N(self) -> int:
        return self.X.shape[0]

    @property
    def V(self):
        raise NotImplementedError(_NO_FINITE_WIDTH.format(what="V"))

    @property
    def K1(self):
        raise NotImplementedError(_NO_FINITE_WIDTH.format(what="K1"))

    @property
    def layers(self):
        raise NotImplementedError(_NO_FINITE_WIDTH.format(what="per-layer K1 and V"))

    def __repr__(self) -> str:
        return f"ResPrior({self.net!r}, N={self.N})"
