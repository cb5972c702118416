"""Residual MLPs ``ngp.ResMLP``: a thin constructor of a layer-step composition.

Design (``depth = L`` weight layers, like :class:`ngp.MLP`):

* layer 1 is plain: ``z^(1) = b^(1) + W^(1) x``;
* layers ``2 .. L-1`` are residual blocks of equal width ``n``:
  ``z^(l) = gamma_l z^(l-1) + xi_l [b^(l) + W^(l) sigma(z^(l-1))]``;
* layer ``L`` is a plain readout: ``z^(L) = b^(L) + W^(L) sigma(z^(L-1))`` with ``out_dim`` neurons.

That is ``ngp.serial(ngp.Dense(n), ngp.Residual(ngp.serial(ngp.Elementwise(s), ngp.Dense(n)),
gamma=, xi=), ..., ngp.Elementwise(s), ngp.Dense(out_dim))``. Infinite-width kernel:
``K^(l) = gamma_l^2 K^(l-1) + xi_l^2 Phi_l(K^(l-1))``. Finite-width cumulants: see
``docs/theory.md``, "Residual networks".
"""

from __future__ import annotations

import numbers
from typing import Callable, Sequence

import numpy as np

from ._activations import Activation, activation as make_activation
from ._network import Network
from ._steps import Dense, Elementwise, Residual, Serial
from ._validate import MAX_WIDTH, count, nonneg_float, per_layer, positive_float, real

__all__ = ["ResMLP"]


class ResMLP(Network):
    """A residual MLP prior: plain first layer, residual hidden blocks, plain readout.

    ``z^(1) = b + W x``; ``z^(l) = gamma_l z^(l-1) + xi_l [b + W sigma(z^(l-1))]`` for
    ``l = 2 .. depth-1``; ``z^(depth) = b + W sigma(z^(depth-1))`` (``docs/theory.md``).

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

    ``gamma = 0, xi = 1`` reproduces :class:`ngp.MLP` exactly. Finite width: ``K1``, ``V`` per layer and
    at the output, ``ngp.condition``/``ngp.posterior`` (``docs/theory.md``, "Residual networks").

    Example:
        >>> net = ngp.ResMLP(depth=6, width=256, activation="tanh", gamma=0.8, xi=0.6)
        >>> net.prior(X).K                      # (N, N) infinite-width output kernel
        >>> net.prior(X).V, net.prior(X).K1     # finite-width cumulants (residual-chain recursion)
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
        depth = count(depth, "depth", what="a positive integer (number of weight layers)")
        if depth == 1:
            width = None
        elif width is None:
            raise ValueError(f"width: required for depth={depth}")
        elif not isinstance(width, (numbers.Number, np.number)):
            raise TypeError(f"width: expected one positive integer (residual blocks need equal widths), got {width!r}")
        else:
            width = count(width, "width", maximum=MAX_WIDTH)
        act = make_activation(activation)
        cw = per_layer(C_W, depth, "C_W", positive_float)
        cb = per_layer(C_b, depth, "C_b", nonneg_float)
        n_blocks = max(depth - 2, 0)
        gam = per_layer(gamma, n_blocks, "gamma", real, what="residual block (layers 2..depth-1)")
        xis = per_layer(xi, n_blocks, "xi", real, what="residual block (layers 2..depth-1)")
        out_dim = count(out_dim, "out_dim")
        if depth == 1:
            steps = [Dense(out_dim, C_W=cw[0], C_b=cb[0])]
        else:
            steps = [Dense(width, C_W=cw[0], C_b=cb[0])]
            for k in range(n_blocks):
                block = Serial((Elementwise(act), Dense(width, C_W=cw[k + 1], C_b=cb[k + 1])))
                steps.append(Residual(block, gamma=gam[k], xi=xis[k]))
            steps += [Elementwise(act), Dense(out_dim, C_W=cw[-1], C_b=cb[-1])]
        super().__init__(*steps, in_dim=in_dim)
        for name, value in (("activation", act), ("C_W", cw), ("C_b", cb), ("gamma", gam), ("xi", xis),
                            ("width", width)):
            object.__setattr__(self, name, value)

    @property
    def n_blocks(self) -> int:
        """Number of residual blocks, ``max(depth - 2, 0)``."""
        return len(self.gamma)

    def __repr__(self) -> str:
        def short(t):
            return (t[0] if len(set(t)) == 1 else list(t)) if t else None

        blocks = f", gamma={short(self.gamma)}, xi={short(self.xi)}" if self.gamma else ""  # none without blocks
        in_dim = f", in_dim={self.in_dim}" if self.in_dim is not None else ""
        return (
            f"ResMLP(depth={self.depth}, width={self.width}, activation={self.activation.name!r}, "
            f"C_W={short(self.C_W)}, C_b={short(self.C_b)}{blocks}, out_dim={self.out_dim}{in_dim})"
        )

