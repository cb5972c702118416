"""The network description ``ngp.MLP``."""

from __future__ import annotations

import numbers
from typing import Callable, Sequence

import numpy as np

from ._activations import Activation, activation as _make_activation
from ._validate import nonneg_float, positive_float

__all__ = ["MLP"]


def _per_layer(value, depth: int, name: str, check) -> tuple[float, ...]:
    if isinstance(value, (numbers.Real, np.floating, np.integer)) and not isinstance(value, bool):
        return (check(value, name),) * depth
    try:
        seq = list(value)
    except TypeError as exc:
        raise TypeError(f"{name}: expected a number or a sequence of {depth} numbers, got {value!r}") from exc
    if len(seq) != depth:
        raise ValueError(f"{name}: expected {depth} per-layer values (one per weight layer), got {len(seq)}")
    return tuple(check(v, f"{name}[{i}]") for i, v in enumerate(seq))


def _as_width(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (numbers.Integral, np.integer)):
        if isinstance(value, (float, np.floating)) and float(value).is_integer():
            value = int(value)
        else:
            raise TypeError(f"{name}: expected a positive integer, got {value!r}")
    if int(value) < 1:
        raise ValueError(f"{name}: must be >= 1, got {value}")
    return int(value)


def _as_depth(depth) -> int:
    if isinstance(depth, bool) or not isinstance(depth, (numbers.Integral, np.integer)):
        raise TypeError(f"depth: expected a positive integer (number of weight layers), got {depth!r}")
    if depth < 1:
        raise ValueError(f"depth: must be >= 1 (number of weight layers), got {depth}")
    return int(depth)


class MLP:
    """A fully connected network prior: ``depth`` weight layers, Gaussian weights and biases.

    ``z^(1) = b^(1) + W^(1) x``, ``z^(l+1) = b^(l+1) + W^(l+1) s(z^(l))``, with
    ``Var(W^(l)_ij) = C_W^(l) / n_{l-1}`` and ``Var(b^(l)_i) = C_b^(l)`` (THEORY.md section 0).

    Args:
        depth: number of weight layers ``L`` (``L - 1`` hidden layers), ``>= 1``.
        width: hidden width(s): an int, or a sequence of the ``L - 1`` hidden widths.
            Ignored (may be ``None``) when ``depth == 1``.
        activation: a name from ``ngp.ACTIVATIONS``, an :class:`ngp.Activation`, or a
            JAX-traceable elementwise callable.
        C_W: weight variance (times fan-in), a float or one value per layer; ``> 0``.
        C_b: bias variance, a float or one value per layer; ``>= 0``.
        out_dim: number of output neurons ``n_L``.
        in_dim: optional input dimension ``n0``; when given, inputs are checked against it.

    Example:
        >>> net = ngp.MLP(depth=3, width=64, activation="tanh", C_W=1.0, C_b=0.0)
        >>> prior = net.prior(X)      # prior.K is the (N, N) output kernel
    """

    def __init__(
        self,
        depth: int,
        width: int | Sequence[int] | None = None,
        *,
        activation: str | Callable | Activation = "tanh",
        C_W: float | Sequence[float] = 1.0,
        C_b: float | Sequence[float] = 0.0,
        out_dim: int = 1,
        in_dim: int | None = None,
    ):
        self.depth = _as_depth(depth)
        n_hidden = self.depth - 1
        if n_hidden == 0:
            widths: tuple[int, ...] = ()
        elif width is None:
            raise ValueError(f"width: required for depth={self.depth} ({n_hidden} hidden layers)")
        elif isinstance(width, (numbers.Integral, np.integer, float, np.floating)) and not isinstance(width, bool):
            widths = (_as_width(width, "width"),) * n_hidden
        else:
            try:
                seq = list(width)
            except TypeError as exc:
                raise TypeError(f"width: expected an int or a sequence of {n_hidden} ints, got {width!r}") from exc
            if len(seq) != n_hidden:
                raise ValueError(
                    f"width: expected {n_hidden} hidden widths for depth={self.depth}, got {len(seq)}"
                )
            widths = tuple(_as_width(w, f"width[{i}]") for i, w in enumerate(seq))
        self.widths = widths
        self.activation = _make_activation(activation)
        self.C_W = _per_layer(C_W, self.depth, "C_W", positive_float)
        self.C_b = _per_layer(C_b, self.depth, "C_b", nonneg_float)
        self.out_dim = _as_width(out_dim, "out_dim")
        self.in_dim = None if in_dim is None else _as_width(in_dim, "in_dim")

    @property
    def n_last(self) -> int | None:
        """Width ``n_{L-1}`` of the last hidden layer (the 1/n of the output cumulants)."""
        return self.widths[-1] if self.widths else None

    def prior(self, X, **options):
        """The prior over the network outputs on inputs ``X`` (shape ``(N, n0)``).

        Returns:
            :class:`ngp.Prior` with ``.K`` (the ``(N, N)`` output kernel), the per-layer
            kernels ``.kernels``, and the finite-width cumulants ``.K1`` and ``.V``.
        """
        from ._prior import Prior

        return Prior(self, X, **options)

    def __repr__(self) -> str:
        def short(t):
            return t[0] if len(set(t)) == 1 else list(t)

        w = short(self.widths) if self.widths else None
        return (
            f"MLP(depth={self.depth}, width={w}, activation={self.activation.name!r}, "
            f"C_W={short(self.C_W)}, C_b={short(self.C_b)}, out_dim={self.out_dim})"
        )
