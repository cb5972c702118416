"""The prior over network outputs on a set of inputs: ``net.prior(X)``."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from ._kernel import first_layer_kernel, kernel_map
from ._validate import as_inputs, check_x64

__all__ = ["Prior"]


class Prior:
    """Cumulants of the outputs of a random :class:`ngp.MLP` on inputs ``X``.

    Attributes:
        net: the network.
        X: ``(N, n0)`` inputs (float64 NumPy array).
        kernels: tuple of the ``L`` per-layer infinite-width kernels ``K^(1..L)``, each ``(N, N)``.
        K: ``(N, N)`` output kernel ``K^(L)``: ``E[z_i(x_a) z_j(x_b)] = delta_ij K_ab``
            at infinite width.

    Keyword options (passed through ``net.prior(X, **options)``):
        method: ``"auto"`` (closed forms where known, else the Mehler series),
            ``"mehler"``, ``"quadrature"`` (dense 2-D Gauss-Hermite) or ``"closed"``.
        terms, nodes: Mehler series length and 1-D quadrature size.
        quad_nodes: nodes per dimension of the 2-D rule for ``method="quadrature"``.
    """

    def __init__(self, net, X, **options):
        check_x64("computing a prior")
        self.net = net
        self.X = as_inputs(X, "X", in_dim=net.in_dim)
        self.options = dict(options)
        kernels = [first_layer_kernel(jnp.asarray(self.X), net.C_W[0], net.C_b[0])]
        for layer in range(1, net.depth):
            kernels.append(
                kernel_map(net.activation, kernels[-1], net.C_W[layer], net.C_b[layer], **self.options)
            )
        self.kernels = tuple(kernels)
        if not bool(jnp.all(jnp.isfinite(self.K))):
            raise FloatingPointError(
                "net.prior: the kernel recursion produced non-finite values; the activation "
                f"{net.activation.name!r} overflows for these inputs/variances (C_W={net.C_W}, C_b={net.C_b})"
            )

    @property
    def K(self):
        """``(N, N)`` infinite-width output kernel."""
        return self.kernels[-1]

    @property
    def N(self) -> int:
        return self.X.shape[0]

    def __repr__(self) -> str:
        return f"Prior({self.net!r}, N={self.N})"


def _as_numpy(a) -> np.ndarray:
    return np.asarray(a, dtype=float)
