"""A whole network: ``ngp.serial(...)`` and the :class:`Network` it returns."""

from __future__ import annotations

import math

import jax

from ._linalg import psd_sqrt
from ._prior import Prior
from ._steps import Dense, Serial, Step
from ._validate import count

__all__ = ["Network", "serial"]


class Network(Serial):
    """A network prior built from layer steps; what :func:`ngp.serial` returns.

    The network must end with a :class:`ngp.Dense` (or :class:`ngp.Residual`) step: its output
    neurons are the outputs ``z`` whose prior ``net.prior(X)`` describes.

    Attributes:
        steps: the layer steps.
        out_dim: number of output neurons (width of the last dense step).
        depth: number of dense steps (weight layers), nested ones included.
        widths: widths of every dense step but the last.
        n_last: width ``n_{L-1}`` feeding the last dense step (the ``n`` of ``1/n``; ``None`` when
            the network has a single dense step).
        in_dim: input dimension checked against inputs (``None``: any).

    Example:
        >>> net = ngp.serial(ngp.Dense(64), ngp.Elementwise("tanh"), ngp.Dense(64),
        ...                  ngp.Elementwise("relu"), ngp.Dense(1))
        >>> net.prior(X).K, net.prior(X).V, ngp.sample_networks(net, X, 100)
    """

    def __init__(self, *steps: Step, in_dim: int | None = None):
        if len(steps) == 1 and isinstance(steps[0], (list, tuple)):
            steps = tuple(steps[0])
        for i, s in enumerate(steps):
            if not isinstance(s, Step):
                raise TypeError(f"steps[{i}]: expected a layer step (ngp.Dense, ngp.Elementwise, ...), got {s!r}")
        if not steps:
            raise ValueError("steps: a network needs at least one step")
        object.__setattr__(self, "steps", tuple(steps))
        object.__setattr__(self, "in_dim", None if in_dim is None else count(in_dim, "in_dim"))
        dense = self.dense_steps()
        if not dense:
            raise ValueError("steps: a network needs at least one ngp.Dense step")
        object.__setattr__(self, "_dense", tuple(dense))

    # -------------------------------------------------------------- description
    @property
    def out_dim(self) -> int:
        return self._dense[-1].width

    @property
    def depth(self) -> int:
        return len(self._dense)

    @property
    def widths(self) -> tuple:
        return tuple(d.width for d in self._dense[:-1])

    @property
    def n_last(self) -> int | None:
        return self._dense[-2].width if len(self._dense) > 1 else None

    @property
    def readout(self) -> Dense:
        """The last dense step (its output neurons are the network outputs)."""
        return self._dense[-1]

    def _ends_with_readout(self) -> bool:
        last = self.steps[-1]
        return isinstance(last, Dense)

    # -------------------------------------------------------------- priors
    def prior(self, X, **options):
        """The prior over the network outputs on inputs ``X`` (shape ``(N, n0)``).

        Returns:
            :class:`ngp.Prior` with ``.K`` (the ``(N, N)`` output kernel), the per-layer kernels
            ``.kernels``, the finite-width cumulants ``.K1`` and ``.V``, and ``.layers``.
        """
        return Prior(self, X, **options)

    # -------------------------------------------------------------- random networks
    def hidden(self, params, X):
        """Features fed to the readout: every step but the last applied to ``X`` (``(N, n_{L-1})``)."""
        if not self._ends_with_readout():
            raise ValueError(f"{self!r}: the last step must be a Dense step to separate the readout")
        h = X
        for p, s in zip(params[:-1], self.steps[:-1]):
            h = s.apply(p, h)
        return h

    def sampler(self, n0: int, method: str):
        """One random network evaluated on inputs: ``one(key, X) -> (outputs (N, out_dim), metric (N, N))``.

        ``metric`` is the readout's stochastic metric ``C_b + (C_W / n_{L-1}) h h^T`` given the
        features ``h`` fed to it; the outputs are drawn from their exact Gaussian law given it.
        ``method="weights"`` draws every weight and bias of the other dense steps;
        ``method="conditional"`` draws each dense step's outputs from their exact conditional
        law given its input (rows i.i.d. ``N(0, metric)``): the same distribution, ``O(n N^2)``
        instead of ``O(n^2 N)`` per layer. All normals of one network come from one
        ``jax.random.normal`` call (one compiled random kernel).
        """
        if method not in ("weights", "conditional"):
            raise ValueError(f"method: expected 'weights' or 'conditional', got {method!r}")
        if not self._ends_with_readout():
            raise ValueError(f"{self!r}: sampling needs a network whose last step is Dense (the readout)")
        conditional = method == "conditional"
        body, readout = self.steps[:-1], self.steps[-1]

        def one(key, X):
            N = X.shape[0]
            shapes, d = [], n0
            for s in body:
                shapes += s.draw_shapes(d, N, conditional)
                d = s.output_dim(d)
            shapes.append((N, readout.width))
            sizes = [math.prod(s) for s in shapes]
            flat = jax.random.normal(key, (sum(sizes),), X.dtype)
            normals, start = [], 0
            for shp, size in zip(shapes, sizes):
                normals.append(flat[start:start + size].reshape(shp))
                start += size
            h = X
            for s in body:
                h = s.draw(h, normals, conditional)
            G = readout.metric(h)
            return psd_sqrt(G) @ normals.pop(0), G

        return one

    def memory_per_network(self, n0: int, N: int, method: str) -> int:
        """Bytes of normals one network needs (the sampler's working set is a few times this)."""
        shapes, d = [], n0
        for s in self.steps[:-1]:
            shapes += s.draw_shapes(d, N, method == "conditional")
            d = s.output_dim(d)
        widest = max([d] + [w for w in self.widths])
        return 8 * (sum(math.prod(s) for s in shapes) + N * (self.out_dim + 2 * widest + N))

    def __eq__(self, other):
        return type(other) is type(self) and self.steps == other.steps and self.in_dim == other.in_dim

    def __hash__(self):
        return hash((type(self).__name__, self.steps, self.in_dim))

    def __repr__(self):
        tail = "" if self.in_dim is None else f", in_dim={self.in_dim}"
        return "serial(" + ", ".join(repr(s) for s in self.steps) + tail + ")"


def serial(*steps: Step, in_dim: int | None = None) -> Network:
    """Compose layer steps into a network: ``ngp.serial(ngp.Dense(64), ngp.Elementwise("tanh"), ngp.Dense(1))``.

    Args:
        *steps: :class:`ngp.Dense`, :class:`ngp.Elementwise`, :class:`ngp.Residual` steps (or nested
            ``serial`` compositions).
        in_dim: optional input dimension (inputs are checked against it).

    Returns:
        :class:`ngp.Network`: ``.prior(X)`` (``K``, ``K1``, ``V``), ``init(key, in_dim)``,
        ``apply(params, X)``; usable in :func:`ngp.gp_posterior`, :func:`ngp.condition`,
        :func:`ngp.posterior`, :func:`ngp.sample_networks` and the reference samplers.
    """
    return Network(*steps, in_dim=in_dim)

