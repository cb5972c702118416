"""The network description ``ngp.MLP``: a thin constructor of a layer-step composition."""

from __future__ import annotations

from typing import Callable, Sequence

from ._activations import Activation, activation as make_activation
from ._network import Network
from ._steps import Dense, Elementwise
from ._validate import MAX_MULTIPLIER, count, learning_rate, nonneg_float, per_layer, positive_float

__all__ = ["MLP", "hidden_widths"]


def hidden_widths(width, n_hidden: int, depth: int) -> tuple:
    """An int (repeated) or a sequence of ``n_hidden`` ints; ``None`` allowed when ``n_hidden == 0``."""
    if n_hidden == 0:
        return ()
    if width is None:
        raise ValueError(f"width: required for depth={depth} ({n_hidden} hidden layers)")
    return per_layer(width, n_hidden, "width", count, what=f"hidden layer at depth={depth}")


def _spec(par) -> str:
    """What to pass as ``parameterization=`` for ``par``: a preset's name, a family's number, else ``par``."""
    from . import scaling

    if scaling.PRESETS.get(par.name) == par:
        return repr(par.name)
    if 0 <= par.lam_W[0] <= 1 and par == scaling.family(par.lam_W[0]):  # family() refuses other numbers
        return repr(par.lam_W[0])
    return repr(par)


class MLP(Network):
    """A fully connected network prior: ``depth`` weight layers, Gaussian weights and biases.

    ``z^(1) = b^(1) + W^(1) x``, ``z^(l+1) = b^(l+1) + W^(l+1) s(z^(l))``, with
    ``Var(W^(l)_ij) = C_W^(l) / n_{l-1}`` and ``Var(b^(l)_i) = C_b^(l)`` (``docs/theory.md``).
    The same network as ``ngp.serial(ngp.Dense(n_1, C_W=.., C_b=..), ngp.Elementwise(s), ...,
    ngp.Dense(out_dim, ...))``.

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
        lambda_W: learning-rate factor of the weights (divided by the fan-in), a float or one per layer
            (default 1): the NTK's ``prior.Theta`` and its statistics use it.
        lambda_b: learning-rate factor of the biases, a float or one per layer (default 1).
        parameterization: ``None``, ``"ntk"``, ``"mup"``, ``"standard"``, a number ``s`` in [0, 1] (the
            family from ntk to muP) or an :class:`ngp.scaling.Parameterization`: ``C_W``, ``C_b``,
            ``lambda_W``, ``lambda_b`` are base values multiplied by ``(n / base_width)^p`` per layer role
            (:func:`ngp.scaling.multipliers`; ``docs/theory.md``). Needs ``depth >= 2``.
        base_width: the width at which the parameterised values equal the base values.

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
        lambda_W: float | Sequence[float] = 1.0,
        lambda_b: float | Sequence[float] = 1.0,
        parameterization=None,
        base_width: float = 1.0,
    ):
        depth = count(depth, "depth", what="a positive integer (number of weight layers)")
        widths = hidden_widths(width, depth - 1, depth)
        act = make_activation(activation)
        cw = per_layer(C_W, depth, "C_W", positive_float)
        cb = per_layer(C_b, depth, "C_b", nonneg_float)
        lw = per_layer(lambda_W, depth, "lambda_W", learning_rate)
        lb = per_layer(lambda_b, depth, "lambda_b", learning_rate)
        par = None
        base_width = positive_float(base_width, "base_width")  # checked either way (a bad value was ignored silently)
        given = (cw, cb, lw, lb, base_width)  # the base values: the repr shows them (the multiplied ones, pasted
        # back with the parameterization, multiplied them twice)
        if parameterization is not None:
            from . import scaling

            par = scaling.parameterization(parameterization)
            hp = scaling.multipliers(par, width=widths, depth=depth, base_width=base_width,
                                     C_W=cw, C_b=cb, lam_W=lw, lam_b=lb)
            cw, cb, lw, lb = hp["C_W"], hp["C_b"], hp["lam_W"], hp["lam_b"]
            for name, values in (("lambda_W", lw), ("lambda_b", lb)):  # said here, not at prior.Theta
                for i, v in enumerate(values):
                    if v > MAX_MULTIPLIER:
                        raise ValueError(
                            f"{name}: layer {i + 1}'s value times the {par.name!r} parameterization's multiplier at "
                            f"width {widths} (base_width {base_width:g}) is {v:g}, above {MAX_MULTIPLIER:g} (the NTK's "
                            "1/n statistics use its powers); use a smaller base value or width")
        out_dim = count(out_dim, "out_dim")
        sizes = widths + (out_dim,)
        steps = []
        for layer in range(depth):
            if layer:
                steps.append(Elementwise(act))
            steps.append(Dense(sizes[layer], C_W=cw[layer], C_b=cb[layer]))
        super().__init__(*steps, in_dim=in_dim)
        object.__setattr__(self, "activation", act)
        object.__setattr__(self, "C_W", cw)
        object.__setattr__(self, "C_b", cb)
        object.__setattr__(self, "lambda_W", lw)
        object.__setattr__(self, "lambda_b", lb)
        object.__setattr__(self, "parameterization", par)
        object.__setattr__(self, "_given", given)

    def __eq__(self, other):
        return super().__eq__(other) and (self.lambda_W, self.lambda_b) == (other.lambda_W, other.lambda_b)

    def __hash__(self):
        return hash((super().__hash__(), self.lambda_W, self.lambda_b))

    def __repr__(self) -> str:
        def short(t):
            return t[0] if len(set(t)) == 1 else list(t)

        w = short(self.widths) if self.widths else None
        # with a parameterization, the arguments given (base values): the constructor multiplies them again
        cw, cb, lw, lb, base = self._given if self.parameterization is not None else (
            self.C_W, self.C_b, self.lambda_W, self.lambda_b, 1.0)
        extra = "".join(f", {name}={short(v)}" for name, v in (("lambda_W", lw), ("lambda_b", lb))
                        if set(v) != {1.0})  # they change the NTK and training: shown when not the default
        if self.parameterization is not None:
            extra += f", parameterization={_spec(self.parameterization)}"
            if base != 1.0:
                extra += f", base_width={base:g}"
        if self.in_dim is not None:
            extra += f", in_dim={self.in_dim}"
        return (
            f"MLP(depth={self.depth}, width={w}, activation={self.activation.name!r}, "
            f"C_W={short(cw)}, C_b={short(cb)}, out_dim={self.out_dim}{extra})"
        )
