"""The prior over network outputs on a set of inputs: ``net.prior(X)``."""

from __future__ import annotations

import dataclasses
import functools
import warnings

import jax.numpy as jnp
import numpy as np

from ._finite import Pairs, fresh_covariance, jacobian_hessian, propagate
from ._kernel import first_layer_kernel, kernel_map
from ._validate import as_inputs, check_x64

__all__ = ["Prior", "Layer", "EXPANSION_WARN"]

#: Expansion parameter above which first-order perturbation theory is not trusted.
EXPANSION_WARN = 0.3
#: Largest pre-activation variance for which the default four-point order is accurate to ~1e-9.
FOUR_POINT_K_WARN = 2.0
#: Default memory budget (bytes) for the finite-width cumulants.
MAX_MEMORY = 4 * 1024**3

_KERNEL_OPTIONS = ("method", "terms", "nodes", "quad_nodes")
_OPTIONS = _KERNEL_OPTIONS + ("four_point_order", "max_memory", "warn")


@dataclasses.dataclass(frozen=True)
class Layer:
    """Cumulants of the pre-activations of one layer ``l`` (1-based).

    ``E[z_i z_j] = delta_ij (K + K1 / n)`` and the connected four-point function is
    ``(1/n)`` times the three pairings of ``V``, with ``n = n_{l-1}`` the width feeding
    this layer (``None`` for the first layer, which is exactly Gaussian).

    Attributes:
        index: layer number ``l``.
        K: ``(N, N)`` infinite-width kernel.
        K1: ``(N, N)`` 1/n correction of the two-point function.
        V_packed: ``(P, P)`` four-point vertex over unordered input pairs (see ``pairs``).
        n: width ``n_{l-1}`` dividing ``K1`` and ``V``.
        pairs: the pair bookkeeping (``pairs.a``, ``pairs.b``, ``pairs.index``).
    """

    index: int
    K: np.ndarray
    K1: np.ndarray
    V_packed: np.ndarray
    n: int | None
    pairs: Pairs = dataclasses.field(repr=False)

    @functools.cached_property
    def V(self) -> np.ndarray:
        """``(N, N, N, N)`` vertex, ``V[a, b, c, d] = V_(ab)(cd)``."""
        return np.asarray(self.pairs.unpack4(self.V_packed))

    @property
    def expansion_parameter(self) -> float:
        """``max |V_(ab)(cd)| / (n sqrt(K_aa K_bb K_cc K_dd))`` (0 for the first layer)."""
        return _expansion(self.V_packed, self.K, self.pairs, self.n)


def _expansion(Vp, K, pairs: Pairs, n) -> float:
    if n is None:
        return 0.0
    d = np.sqrt(np.clip(np.diag(np.asarray(K)), 0.0, None))
    s = d[pairs.a] * d[pairs.b]
    denom = s[:, None] * s[None, :]
    ok = denom > 0  # inputs with zero variance (e.g. x = 0 with C_b = 0) have V = 0 there
    if not np.any(ok):
        return 0.0
    return float(np.max(np.abs(np.asarray(Vp))[ok] / denom[ok])) / n


class Prior:
    """Cumulants of the outputs of a random :class:`ngp.MLP` on inputs ``X``.

    Attributes:
        net: the network.
        X: ``(N, n0)`` inputs (float64 NumPy array).
        kernels: tuple of the ``L`` per-layer infinite-width kernels ``K^(1..L)``, each ``(N, N)``.
        K: ``(N, N)`` output kernel ``K^(L)``.
        K1: ``(N, N)`` 1/n correction: ``E[z_i(x_a) z_j(x_b)] = delta_ij (K + K1/n)`` with
            ``n = net.n_last`` (computed on first access).
        V: ``(N, N, N, N)`` four-point vertex: the connected ``E[z_i1 z_i2 z_i3 z_i4]`` is
            ``(1/n) [d_i1i2 d_i3i4 V_(12)(34) + d_i1i3 d_i2i4 V_(13)(24) + d_i1i4 d_i2i3 V_(14)(23)]``.
        layers: per-layer :class:`Layer` objects (the flow of ``K``, ``K1``, ``V`` with depth).
        expansion_parameter: ``max |V| / (n K^2)`` at the output (see :class:`Layer`).

    Keyword options (``net.prior(X, **options)``):
        method: ``"auto"`` (closed forms where known, else the Mehler series),
            ``"mehler"``, ``"quadrature"`` (dense 2-D Gauss-Hermite) or ``"closed"``.
        terms, nodes: Mehler series length and 1-D quadrature size (default: automatic).
        quad_nodes: nodes per dimension of the 2-D rule for ``method="quadrature"``.
        four_point_order: Gauss-Hermite nodes per dimension for the four-input
            expectations behind ``V`` (default 40: ~1e-9 relative for tanh at K <~ 1; cost grows as its 4th power).
        max_memory: bytes allowed for ``V`` and its work arrays (default 4 GiB); above it a
            ``MemoryError`` states the estimate instead of exhausting memory.
        warn: warn when the 1/n expansion is not trustworthy (default True).
    """

    def __init__(self, net, X, **options):
        unknown = set(options) - set(_OPTIONS)
        if unknown:
            raise TypeError(f"net.prior: unknown option(s) {sorted(unknown)}; expected some of {_OPTIONS}")
        check_x64("computing a prior")
        self.net = net
        self.X = as_inputs(X, "X", in_dim=net.in_dim)
        self.options = dict(options)
        # Work on distinct inputs only: duplicates give identical rows and would make the
        # four-point blocks singular; results are expanded back.
        Xu, inverse = np.unique(self.X, axis=0, return_inverse=True)
        if Xu.shape[0] == self.X.shape[0]:  # no duplicates: keep the user's order, no re-indexing
            Xu, inverse = self.X, np.arange(self.X.shape[0])
        self._Xu, self._inverse = Xu, np.asarray(inverse).reshape(-1)
        self._identity = Xu is self.X
        kopts = {k: v for k, v in options.items() if k in _KERNEL_OPTIONS}
        kernels = [first_layer_kernel(jnp.asarray(self._Xu), net.C_W[0], net.C_b[0])]
        for layer in range(1, net.depth):
            kernels.append(kernel_map(net.activation, kernels[-1], net.C_W[layer], net.C_b[layer], **kopts))
        if not bool(jnp.all(jnp.isfinite(kernels[-1]))):
            raise FloatingPointError(
                "net.prior: the kernel recursion produced non-finite values; the activation "
                f"{net.activation.name!r} overflows for these inputs/variances (C_W={net.C_W}, C_b={net.C_b})"
            )
        self._kernels_u = tuple(kernels)

    # ------------------------------------------------------------------ infinite width
    def _expand(self, M):
        if self._identity:
            return np.asarray(M)
        i = self._inverse
        return np.asarray(M)[np.ix_(i, i)]

    @functools.cached_property
    def kernels(self) -> tuple:
        """Per-layer infinite-width kernels ``K^(1), ..., K^(L)``, each ``(N, N)``."""
        return tuple(self._expand(k) for k in self._kernels_u)

    @functools.cached_property
    def K(self) -> np.ndarray:
        """``(N, N)`` infinite-width output kernel."""
        return self._expand(self._kernels_u[-1])

    @property
    def N(self) -> int:
        return self.X.shape[0]

    @property
    def n(self) -> int | None:
        """Width ``n_{L-1}`` of the last hidden layer (divides ``K1`` and ``V``)."""
        return self.net.n_last

    # ------------------------------------------------------------------ finite width
    def memory_estimate(self) -> int:
        """Bytes needed for the per-layer ``V`` matrices, work arrays and the full ``V``."""
        Nu = self._Xu.shape[0]
        P = Nu * (Nu + 1) // 2
        L = self.net.depth
        return int(8 * P * P * (L + 12) + 8 * self.N**4)

    @functools.cached_property
    def _layers_u(self) -> tuple:
        net = self.net
        limit = self.options.get("max_memory", MAX_MEMORY)
        need = self.memory_estimate()
        if need > limit:
            raise MemoryError(
                f"net.prior: V for {self.N} inputs ({self._Xu.shape[0]} distinct) and depth {net.depth} needs "
                f"about {need / 1024**3:.2f} GiB (> max_memory={limit / 1024**3:.2f} GiB). V has N^4 entries: "
                "use fewer inputs, or raise max_memory if the machine has the memory."
            )
        act = net.activation
        opts = {k: v for k, v in self.options.items() if k in _KERNEL_OPTIONS + ("four_point_order",)}
        kopts = {k: v for k, v in opts.items() if k != "four_point_order"}
        pairs = Pairs.of(self._Xu.shape[0])
        P = pairs.P
        V = np.zeros((P, P))
        G1 = np.zeros(P)
        widths = (None,) + tuple(net.widths)  # widths[l] = n_l for l >= 1
        layers = [Layer(1, np.asarray(self._kernels_u[0]), np.zeros((pairs.N,) * 2), np.asarray(V), None, pairs)]
        for l in range(1, net.depth):  # produce layer l+1 from layer l
            K = self._kernels_u[l - 1]
            C_W = net.C_W[l]
            kmax = float(jnp.max(jnp.diagonal(K)))
            # scale-invariant activations (relu family) have K-independent relative accuracy;
            # linear and sin use closed forms
            scale_free = act.relu_slopes is not None or act.name == "sin"
            if kmax > FOUR_POINT_K_WARN and not scale_free and self.options.get("warn", True):
                warnings.warn(
                    f"ngp: a pre-activation variance of layer {l} is {kmax:.3g} > {FOUR_POINT_K_WARN}: the four-point "
                    "quadrature behind V loses digits at large variances (~1e-5 relative instead of ~1e-9), and the "
                    "finite-width posterior amplifies such errors. Standardise the inputs, lower C_W/C_b, or raise "
                    "four_point_order (cost grows as its 4th power).",
                    RuntimeWarning,
                    stacklevel=5,
                )
            fresh = fresh_covariance(act, K, pairs, C_W, **opts)
            if l == 1:
                V, G1 = fresh, np.zeros(P)
            else:
                J, H = jacobian_hessian(act, K, pairs, C_W, **kopts)
                JVJ, G1 = propagate(J, H, V, G1, pairs, widths[l] / widths[l - 1])
                V = fresh + JVJ
            layers.append(
                Layer(l + 1, np.asarray(self._kernels_u[l]), np.asarray(pairs.unpack(G1)), np.asarray(V),
                      widths[l], pairs)
            )
        return tuple(layers)

    @functools.cached_property
    def layers(self) -> tuple:
        """Per-layer :class:`Layer` objects on the original inputs (duplicates expanded)."""
        if self._identity:
            out = self._layers_u
        else:
            pairs = Pairs.of(self.N)
            out = []
            i = self._inverse
            pu = self._layers_u[0].pairs
            # map each pair of original inputs to the pair of distinct inputs
            sel = pu.index[i[pairs.a], i[pairs.b]]
            for lay in self._layers_u:
                out.append(Layer(lay.index, self._expand(lay.K), self._expand(lay.K1),
                                 np.asarray(lay.V_packed)[np.ix_(sel, sel)], lay.n, pairs))
            out = tuple(out)
        if self.options.get("warn", True):
            self._check_expansion(out[-1])
        return out

    def _check_expansion(self, last: Layer) -> None:
        eps = last.expansion_parameter
        if eps > EXPANSION_WARN:
            warnings.warn(
                f"ngp: the 1/n expansion parameter max|V|/(n K^2) = {eps:.3g} exceeds {EXPANSION_WARN} "
                f"(depth {self.net.depth}, n_(L-1) = {last.n}, depth/width = {self.net.depth / last.n:.3g}); "
                "first-order perturbation theory in 1/n is not reliable here: widen the network or make it shallower.",
                RuntimeWarning,
                stacklevel=5,
            )

    @property
    def K1(self) -> np.ndarray:
        """``(N, N)`` 1/n correction of the output two-point function."""
        return self.layers[-1].K1

    @property
    def V(self) -> np.ndarray:
        """``(N, N, N, N)`` output four-point vertex."""
        return self.layers[-1].V

    @property
    def V_packed(self) -> np.ndarray:
        """``(P, P)`` output vertex over unordered pairs ``(a <= b)``; see :attr:`pairs`."""
        return self.layers[-1].V_packed

    @property
    def pairs(self) -> Pairs:
        return self.layers[-1].pairs

    @property
    def expansion_parameter(self) -> float:
        """``max |V| / (n K^2)`` at the output: the size of the first-order 1/n corrections."""
        return self.layers[-1].expansion_parameter

    def covariance(self) -> np.ndarray:
        """``(N, N)`` finite-width two-point function ``K + K1 / n`` of each output neuron."""
        n = self.n
        return self.K if n is None else self.K + self.K1 / n

    def __repr__(self) -> str:
        return f"Prior({self.net!r}, N={self.N})"
