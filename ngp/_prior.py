"""The prior over network outputs on a set of inputs: ``net.prior(X)``.

Runs the network's layer steps over the cumulant state (``ngp._steps``, ``ngp._cumulants``) and
presents the result: the output kernel ``K``, the ``1/n`` cumulants ``K1`` and ``V`` and their
flow through depth (``layers``). Conventions: ``docs/theory.md``.
"""

from __future__ import annotations

import functools
import math

import numpy as np

from ._cumulants import prefill_four_point
from ._kernel import KERNEL_OPTIONS
from ._ntk_net import NTKMixin, learning_rates, output_property
from ._pairs import Pairs
from ._progress import check_progress
from ._steps import IDENTITY, Flow
from ._validate import MAX_MEMORY, as_inputs, count, flag, float64, learning_rate, memory_bytes, positive_float, warn
from ._warnings import AccuracyWarning, ExpansionWarning
from ._validity import EXPANSION_WARN
from ._vertex_error import k1_error, packed_vertex_error

__all__ = ["Prior", "Layer", "reuse_four_point", "reuse_jacobians", "EXPANSION_WARN", "FOUR_POINT_K_WARN", "MAX_MEMORY", "PRIOR_OPTIONS", "DERIVATIVE_METHODS", "check_options"]

#: Largest pre-activation variance for which the default four-point order is accurate to ~1e-9.
FOUR_POINT_K_WARN = 2.0

#: Keyword options accepted by ``net.prior(X, **options)``.
PRIOR_OPTIONS = KERNEL_OPTIONS + ("four_point_order", "four_point_rtol", "max_memory", "progress", "warn", "lambda_W",
                                  "lambda_b")
#: Values of the ``method`` option: how the kernel-map derivatives are computed.
DERIVATIVE_METHODS = ("auto", "closed", "mehler", "quadrature")


def check_options(options: dict, where: str = "net.prior") -> dict:
    """Validate prior options (unknown names, types) and return them."""
    unknown = set(options) - set(PRIOR_OPTIONS)
    if unknown:
        raise TypeError(f"{where}: unknown option(s) {sorted(unknown)}; expected some of {PRIOR_OPTIONS}")
    out = dict(options)
    if out.get("max_memory", 0) is None:  # None: the default bound (as leaving it out)
        del out["max_memory"]
    if "max_memory" in out:
        out["max_memory"] = memory_bytes(out["max_memory"], "max_memory")
    if "progress" in out:
        out["progress"] = check_progress(out["progress"])
    if "warn" in out:  # a string such as "no" is truthy: it was taken as True
        out["warn"] = flag(out["warn"], "warn")
    if out.get("four_point_order") is not None:
        m = out["four_point_order"] = count(out["four_point_order"], "four_point_order", minimum=2)
        # the rule's tensor of weights and its mask (peak: 9-11 bytes per node measured at m = 80-118 on 4 inputs)
        need = 12 * max(m**4, math.ceil(1.6 * m) ** 3)
        limit = out.get("max_memory", MAX_MEMORY)
        if need > limit:  # numpy's own MemoryError came after minutes, for a 30 GiB array at m = 1000
            raise MemoryError(
                f"four_point_order={m}: the fixed rule's tensor grid ({m}^4 nodes) needs about {need / 1024**3:.3g} "
                f"GiB (> max_memory={limit / 1024**3:.3g} GiB); its cost grows as the 4th power: use a smaller order, "
                "or leave it out (the default rule adapts its orders and estimates its error)")
    if out.get("four_point_rtol") is not None:
        out["four_point_rtol"] = positive_float(out["four_point_rtol"], "four_point_rtol")
        if not out["four_point_rtol"] < 1:
            raise ValueError(f"four_point_rtol: expected a number in (0, 1), got {out['four_point_rtol']!r}")
    for name in ("terms", "nodes", "quad_nodes"):
        if out.get(name) is not None:
            out[name] = count(out[name], name, minimum=1)
    for name in ("lambda_W", "lambda_b"):  # the count per dense step is checked where the network is known
        v = out.get(name)
        if isinstance(v, (list, tuple)) or (isinstance(v, np.ndarray) and v.ndim == 1):
            out[name] = tuple(learning_rate(x, f"{name}[{i}]") for i, x in enumerate(v))
        elif v is not None:
            out[name] = learning_rate(v, name)
    if "method" in out and out["method"] not in DERIVATIVE_METHODS:
        raise ValueError(f"method: expected one of {DERIVATIVE_METHODS}, got {out['method']!r}")
    if out.get("quad_nodes") is not None and out.get("method", "auto") != "quadrature":  # it was ignored silently
        raise ValueError(f"quad_nodes: read only by method='quadrature' (the 2-D Gauss-Hermite rule), got method="
                         f"{out.get('method', 'auto')!r}")
    return out


#: The cached ``(N, N, N, N)`` arrays of a :class:`Layer`, left out of its pickle.
_UNPACKED = ("V", "V_error")


class Layer:
    """Cumulants of the pre-activations of one layer ``l`` (1-based).

    ``E[z_i z_j] = delta_ij (K + K1 / n)`` and the connected four-point function is
    ``(1/n)`` times the three pairings of ``V``, with ``n = n_{l-1}`` the width feeding
    this layer (``None`` for a layer that is exactly Gaussian, e.g. the first).

    Attributes:
        index: layer number ``l``.
        K: ``(N, N)`` infinite-width kernel.
        K1: ``(N, N)`` 1/n correction of the two-point function.
        V_packed: ``(P, P)`` four-point vertex over unordered input pairs (see ``pairs``).
        V: ``(N, N, N, N)`` vertex, ``V[a, b, c, d] = V_(ab)(cd)``.
        V_error, K1_error: their estimated absolute numerical errors.
        n: width ``n_{l-1}`` dividing ``K1`` and ``V``.
        pairs: the pair bookkeeping (``pairs.a``, ``pairs.b``, ``pairs.index``).
    """

    def __init__(self, index: int, cumulants, prior: "Prior"):
        self.index = index
        self._c = cumulants
        self._prior = prior

    @property
    def n(self):
        return self._c.n

    @functools.cached_property
    def K(self) -> np.ndarray:
        return self._prior._expand(self._c.K)

    @functools.cached_property
    @float64
    def K1(self) -> np.ndarray:
        return self._prior._expand(self._c.K1)

    @property
    def pairs(self) -> Pairs:
        return Pairs.of(self._prior.N)

    @functools.cached_property
    @float64
    def V_packed(self) -> np.ndarray:
        self._prior._check_memory()
        Vp = self._c.vertex.packed()
        return self._prior._expand_packed(Vp)

    @functools.cached_property
    def V(self) -> np.ndarray:
        return np.asarray(self.pairs.unpack4(self.V_packed))

    @functools.cached_property
    @float64
    def _V_error_packed(self) -> np.ndarray:
        self._prior._check_memory()
        return self._prior._expand_packed(packed_vertex_error(self._c))

    @functools.cached_property
    def V_error(self) -> np.ndarray:
        """``(N, N, N, N)`` estimated absolute numerical error of :attr:`V` (the four-point quadrature,
        propagated through depth; ``docs/four-point.md``). NaN where no estimate exists
        (``four_point_order`` given; residual chains)."""
        return np.asarray(self.pairs.unpack4(self._V_error_packed))

    def __getstate__(self) -> dict:
        # a pickle keeps the packed vertex (and error) only: the (N, N, N, N) arrays are their entries
        # repeated, rebuilt bitwise on first use (docs/posterior.md, "Saving a conditioned model")
        return {k: v for k, v in self.__dict__.items() if k not in _UNPACKED}

    @functools.cached_property
    @float64
    def K1_error(self) -> np.ndarray:
        """``(N, N)`` estimated absolute numerical error of :attr:`K1` (the four-point quadrature of the
        two-input vertex components, propagated through depth like :attr:`V_error`; NaN where no estimate exists)."""
        return self._prior._expand(k1_error(self._c))

    @property
    @float64
    def expansion_parameter(self) -> float:
        """``max |V_(ab)(cd)| / (n sqrt(K_aa K_bb K_cc K_dd))`` (0 for an exactly Gaussian layer)."""
        return self._c.expansion_parameter

    @property
    def vertex(self):
        """The lazy vertex of this layer on the distinct inputs (``components``, ``local2``, ``packed``;
        each computed in float64 like every ngp result)."""
        return _Float64Vertex(self._c.vertex)

    def __repr__(self) -> str:
        return f"Layer(index={self.index}, n={self.n}, N={self._prior.N})"


class _Float64Vertex:
    """A lazy vertex whose methods run in float64 (:func:`ngp._validate.float64`)."""

    def __init__(self, vertex):
        self._vertex = vertex

    def __getattr__(self, name):
        attr = getattr(self._vertex, name)
        return float64(attr) if callable(attr) else attr


class Prior(NTKMixin):
    """Cumulants of the outputs of a random network (:class:`ngp.MLP`, :func:`ngp.serial`, ...) on inputs ``X``.

    Attributes:
        net: the network.
        X: ``(N, n0)`` inputs (float64 NumPy array).
        kernels: tuple of the per-layer infinite-width kernels ``K^(1..L)``, each ``(N, N)``.
        K: ``(N, N)`` output kernel ``K^(L)``.
        K1: ``(N, N)`` 1/n correction: ``E[z_i(x_a) z_j(x_b)] = delta_ij (K + K1/n)`` with
            ``n = net.n_last`` (computed on first access, ``O(N^2)`` per layer).
        V_error, K1_error: estimated absolute numerical errors of ``V`` and ``K1`` (the four-point
            quadrature propagated through depth; ``docs/four-point.md``).
        V: ``(N, N, N, N)`` four-point vertex: the connected ``E[z_i1 z_i2 z_i3 z_i4]`` is
            ``(1/n) [d_i1i2 d_i3i4 V_(12)(34) + d_i1i3 d_i2i4 V_(13)(24) + d_i1i4 d_i2i3 V_(14)(23)]``.
        V_packed: ``(P, P)`` output vertex over unordered pairs ``(a <= b)`` (see ``pairs``).
        layers: per-layer :class:`Layer` objects (the flow of ``K``, ``K1``, ``V`` with depth).
        expansion_parameter: ``max |V| / (n K^2)`` at the output (see :class:`Layer`).

    Keyword options (``net.prior(X, **options)``):
        method: ``"auto"`` (closed forms where known, else the Mehler series),
            ``"mehler"``, ``"quadrature"`` (dense 2-D Gauss-Hermite) or ``"closed"``.
        terms, nodes: Mehler series length and 1-D quadrature size (default: automatic). A rule other than the
            automatic one (these, ``quad_nodes``, ``method="quadrature"``) is compared with it on probe inputs, and
            an ``AccuracyWarning`` states a difference above 1e-10 (``docs/accuracy.md``).
        quad_nodes: nodes per dimension of the 2-D rule for ``method="quadrature"``.
        four_point_rtol: relative tolerance of the four-input expectations behind ``V`` (default 1e-9,
            relative to ``prod_j <s(z_j)^4>^(1/4)``); exact rules for the relu family and closed forms.
            The estimated error of ``V`` is :attr:`V_error` (``docs/four-point.md``).
        four_point_order: instead of ``four_point_rtol``, the fixed pruned tensor Gauss-Hermite rule with
            this many nodes per dimension (the previous default was 40; no error estimate).
        max_memory: bytes allowed for the dense ``V`` and its work arrays (default 4 GiB); above it a
            ``MemoryError`` states the estimate instead of exhausting memory.
        progress: report the four-point values (the long part of ``V``, ``K1`` and what uses them) as they
            are computed: ``True`` shows a bar per layer on stderr (tqdm where installed, else a line every few
            seconds), a callable is called as ``progress(done, total, desc)`` (``docs/four-point.md``,
            "Progress"); default off.
        warn: warn when the 1/n expansion is not trustworthy (default True).
        lambda_W, lambda_b: learning-rate factors of weights (divided by the fan-in) and biases, a float or
            one per dense step, for the NTK (``Theta``, ``Theta1``, ``A``, ``B``, ``D``, ``F``, ``P``, ``Q``,
            ``ntk_layers``; ``ngp._ntk_net``); default the network's own (``parameterization=``), else 1. Biases
            are trained also where ``C_b = 0`` (from zero); ``net.init`` has no bias there, so its networks' NTK is
            the one with ``lambda_b=0`` for those steps (``docs/theory-ntk.md``, "Using it").
    """

    @float64
    def __init__(self, net, X, **options):
        self.options = check_options(options)
        if self.options.get("lambda_W") is not None or self.options.get("lambda_b") is not None:
            learning_rates(net, self.options.get("lambda_W"), self.options.get("lambda_b"))  # checked before any work
        self.net = net
        self.X = as_inputs(X, "X", in_dim=getattr(net, "in_dim", None))
        # Work on distinct inputs only: duplicates give identical rows and would make the
        # four-point blocks singular; results are expanded back.
        Xu, inverse = np.unique(self.X, axis=0, return_inverse=True)
        if Xu.shape[0] == self.X.shape[0]:  # no duplicates: keep the user's order, no re-indexing
            Xu, inverse = self.X, np.arange(self.X.shape[0])
        self._Xu, self._inverse = Xu, np.asarray(inverse).reshape(-1)
        self._identity = Xu is self.X
        flow = net.flow(Flow.start(Xu, self.options))
        if flow.layer is None or flow.act is not IDENTITY:
            raise ValueError(
                f"net: {net!r} must end with a Dense (or Residual) step; its output neurons are the outputs whose "
                "prior is computed"
            )
        self._flow = flow
        self._cumulants = flow.layers

    # ------------------------------------------------------------------ expansion of duplicates
    def _expand(self, M):
        if self._identity:
            return np.asarray(M)
        i = self._inverse
        return np.asarray(M)[np.ix_(i, i)]

    def _expand_packed(self, Vp):
        if self._identity:
            return np.asarray(Vp)
        pairs = Pairs.of(self.N)
        i = self._inverse
        pu = Pairs.of(self._Xu.shape[0])
        sel = pu.index[i[pairs.a], i[pairs.b]]
        return np.asarray(Vp)[np.ix_(sel, sel)]

    # ------------------------------------------------------------------ infinite width
    @functools.cached_property
    def kernels(self) -> tuple:
        """Per-layer infinite-width kernels ``K^(1), ..., K^(L)``, each ``(N, N)``."""
        return tuple(self._expand(c.K) for c in self._cumulants)

    @functools.cached_property
    def K(self) -> np.ndarray:
        """``(N, N)`` infinite-width output kernel."""
        return self._expand(self._cumulants[-1].K)

    @property
    def N(self) -> int:
        return self.X.shape[0]

    @property
    def n(self) -> int | None:
        """Width ``n_{L-1}`` of the last hidden layer (divides ``K1`` and ``V``)."""
        return self._cumulants[-1].n

    # ------------------------------------------------------------------ finite width
    def memory_estimate(self) -> int:
        """Bytes needed for the dense per-layer ``V`` matrices, work arrays and the full ``V``."""
        Nu = self._Xu.shape[0]
        P = Nu * (Nu + 1) // 2
        L = len(self._cumulants)
        return int(8 * P * P * (L + 12) + 8 * self.N**4)

    def _check_memory(self):
        limit = self.options.get("max_memory", MAX_MEMORY)
        need = self.memory_estimate()
        if need > limit:
            raise MemoryError(
                f"net.prior: V for {self.N} inputs ({self._Xu.shape[0]} distinct) and {len(self._cumulants)} layers "
                f"needs about {need / 1024**3:.3g} GiB (> max_memory={limit / 1024**3:.3g} GiB). V has N^4 entries: "
                "use fewer inputs, or raise max_memory if the machine has the memory (ngp.condition computes "
                "only the components a posterior needs)."
            )

    @functools.cached_property
    @float64
    def layers(self) -> tuple:
        """Per-layer :class:`Layer` objects on the original inputs (duplicates expanded)."""
        out = tuple(Layer(i + 1, c, self) for i, c in enumerate(self._cumulants))
        if self.options.get("warn", True):
            self._check_quadrature()
            if self._cumulants[-1].refusal is None:  # else K1 and V refuse themselves, naming what was asked
                self._check_expansion(out[-1].expansion_parameter)
        return out

    def _check_quadrature(self) -> None:
        if self.options.get("four_point_order") is None:
            return  # the default rule adapts its orders to the variances and estimates its error (V_error)
        for i, c in enumerate(self._cumulants):
            m = getattr(c, "map", None)
            if m is None or m.act.four_point is not None or m.act.relu_slopes is not None:
                continue  # closed forms, or scale-invariant activations (K-independent relative accuracy)
            kmax = float(np.max(np.diag(m.K_in)))
            if kmax > FOUR_POINT_K_WARN:
                warn(
                    f"ngp: a pre-activation variance of layer {i} is {kmax:.3g} > {FOUR_POINT_K_WARN}: the four-point "
                    "quadrature behind V loses digits at large variances (~1e-5 relative instead of ~1e-9), and the "
                    "finite-width posterior amplifies such errors. Standardise the inputs, lower C_W/C_b, or raise "
                    "four_point_order (cost grows as its 4th power).",
                    AccuracyWarning,
                )

    def _check_expansion(self, eps: float) -> None:
        """Warn when the output's expansion parameter ``eps`` (:attr:`expansion_parameter`, or its maximum
        over the pairs a prediction reads) exceeds :data:`EXPANSION_WARN`."""
        if eps > EXPANSION_WARN:
            depth, n = len(self._cumulants), self.n
            warn(
                f"ngp: the 1/n expansion parameter max|V|/(n K^2) = {eps:.3g} exceeds {EXPANSION_WARN} "
                f"(depth {depth}, n_(L-1) = {n}, depth/width = {depth / n:.3g}); "
                "first-order perturbation theory in 1/n is not reliable here: widen the network or make it shallower.",
                ExpansionWarning,
            )

    @float64
    def _dense_vertex(self, name: str):
        """The output layer's ``name`` after its dense ``V``: computed first (within ``max_memory``), so layers
        that can also give ``K1`` and the expansion parameter apart (a residual chain on pair sets) read them
        from it instead (:attr:`layers` asks for the expansion parameter)."""
        self._check_memory()
        self._prefill_four_point()
        self._cumulants[-1].vertex.packed()
        return getattr(self.layers[-1], name)

    def _prefill_four_point(self, rows=None) -> bool:
        """Every dense layer's four-point values on the multiset rows ``rows`` (of distinct-input indices; ``None``:
        all) in shared quadrature calls when they fit one (:func:`ngp._cumulants.prefill_four_point`). Returns
        whether the values were computed here."""
        return prefill_four_point(self._cumulants, rows)

    K1 = output_property("layers", "K1", "``(N, N)`` 1/n correction of the output two-point function.")
    V = property(lambda self: self._dense_vertex("V"), doc="``(N, N, N, N)`` output four-point vertex.")
    V_error = output_property("layers", "V_error",
                              "``(N, N, N, N)`` estimated absolute numerical error of :attr:`V` (see :attr:`Layer.V_error`).")
    K1_error = output_property("layers", "K1_error",
                               "``(N, N)`` estimated absolute numerical error of :attr:`K1` (see :attr:`Layer.K1_error`).")
    V_packed = property(lambda self: self._dense_vertex("V_packed"),
                        doc="``(P, P)`` output vertex over unordered pairs ``(a <= b)``; see :attr:`pairs`.")

    @property
    def pairs(self) -> Pairs:
        return Pairs.of(self.N)

    expansion_parameter = output_property("layers", "expansion_parameter",
                                          "``max |V| / (n K^2)`` at the output: the size of the first-order 1/n "
                                          "corrections.")

    def covariance(self) -> np.ndarray:
        """``(N, N)`` finite-width two-point function ``K + K1 / n`` of each output neuron."""
        n = self.n
        return self.K if n is None else self.K + self.K1 / n

    def __repr__(self) -> str:
        return f"Prior({self.net!r}, N={self.N})"


def reuse_four_point(target: Prior, source: Prior, rows) -> int:
    """Seed ``target``'s four-point values with those ``source`` has already computed.

    ``rows[r]`` is the row of ``target.X`` holding ``source.X[r]``, or ``-1`` where ``target`` has none
    (``(source.N,)``; e.g. the training rows of the joint prior a prediction builds, or, the other way, the
    joint prior's rows in the training prior: then only multisets of training inputs are taken). Layer by
    layer, a value is taken only where the activation and the quadrature options are the same and the kernels
    agree bit for bit on those inputs (:meth:`ngp._finite.FourPointTable.seed`): each value depends only on its
    multiset's block of the kernel, so it is the one ``target`` would compute (to the rounding of the rule's
    batching). Returns the number of values taken.
    """
    index = _input_index(target, source, rows)
    taken = 0
    for t, s in zip(target._cumulants, source._cumulants):
        tm, sm = getattr(t, "map", None), getattr(s, "map", None)
        if tm is not None and sm is not None and "table" in sm.__dict__:
            taken += tm.table.seed(sm.table, index)
    return taken


def reuse_jacobians(target: Prior, source: Prior, rows) -> int:
    """Seed ``target``'s dense layers' ``J`` and ``H`` with those ``source`` needs, where ``source``'s inputs include
    all of ``target``'s (``rows`` as in :func:`reuse_four_point`; e.g. the joint prior of a first prediction and the
    training prior): ``source`` computes them first (its predictions need them), then each layer of ``target`` that
    needs them takes them over where :meth:`ngp._cumulants.DenseMap.seed_jh` allows (the same entries, to the
    rounding of the padded call). Returns the number of layers seeded."""
    index = _input_index(target, source, rows)
    taken = 0
    for t, s in zip(target._cumulants, source._cumulants):
        tm, sm = getattr(t, "map", None), getattr(s, "map", None)
        if tm is None or sm is None or getattr(t.prev, "gaussian", True) or "JH" in tm.__dict__:
            continue
        sm.JH  # noqa: B018 (computed here, needed by source's own cumulants anyway)
        taken += tm.seed_jh(sm, index)
    return taken


def _input_index(target: Prior, source: Prior, rows) -> np.ndarray:
    """``target``'s distinct input of each of ``source``'s distinct inputs, or ``-1``, from ``rows`` (``target``'s
    row of each of ``source``'s rows, or ``-1``; ``(source.N,)``, checked by name)."""
    rows = np.asarray(rows, dtype=np.int64).reshape(-1)
    if rows.shape != (source.N,):
        raise ValueError(f"rows: expected shape ({source.N},), got {rows.shape}")
    index = np.full(source._Xu.shape[0], -1, dtype=np.int64)
    held = rows >= 0
    index[source._inverse[held]] = target._inverse[rows[held]]
    return index
