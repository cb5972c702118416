"""The NTK statistics of a layer-step network (``ngp.serial``, ``ngp.MLP``): ``prior.Theta`` and friends.

Walks the network's steps with the NTK state of ``ngp._ntk`` (one :class:`ngp._ntk.NTKState` per
dense step) the way ``net.prior(X)`` walks them with the cumulant state, and presents the result
on the prior (:class:`NTKMixin`, mixed into :class:`ngp.Prior`). Conventions and recursions:
``docs/theory.md``, "Neural tangent kernel" (page ``docs/theory-ntk.md``).

Steps with an NTK map: :class:`ngp.Dense`, :class:`ngp.Elementwise`, :class:`ngp.Scale` and
nested ``serial`` compositions; :class:`ngp.Residual` at infinite width only (``Theta``); any other
step, or a residual step's 1/n statistics, raises ``NotImplementedError`` naming itself.
"""

from __future__ import annotations

import functools

import numpy as np

from . import _ntk
from ._steps import IDENTITY, Dense, Elementwise, Residual, Scale, Serial, Step, compose
from ._validate import device, float64, learning_rate, per_layer
from ._validity import expansion_parameter

__all__ = ["ntk_states", "NTKLayer", "NTKMixin", "learning_rates", "output_property"]

_FOUR = ("V", "A", "B", "D", "F", "P", "Q")


class _Walk:
    """Mutable walk state: deterministic features or the NTK state, the pending activation, width."""

    def __init__(self, X):
        self.features = np.asarray(X, dtype=float)
        self.state = None
        self.act = IDENTITY
        self.width = self.features.shape[1]
        self.dense = 0
        self.states = []


def _scaled(state: _ntk.NTKState, alpha: float) -> _ntk.NTKState:
    """``z -> alpha z``: two-point statistics ``* alpha^2``, every four-index one ``* alpha^4``
    (the NTK is quadratic in ``z``; ``V, A, B, D, F, P, Q`` are all of degree four)."""
    a2, a4 = alpha**2, alpha**4
    out = {"K": a2 * state.K, "Theta": a2 * state.Theta, "n": state.n}
    for f in ("K1", "Theta1"):
        v = getattr(state, f)
        out[f] = None if v is None else a2 * v
    for f in _FOUR:
        v = getattr(state, f)
        out[f] = None if v is None else a4 * v
    return _ntk.NTKState(**out)


def _walk(step: Step, w: _Walk, lam, finite: bool, dntk: bool, options: dict) -> None:
    if isinstance(step, Serial):
        for s in step.steps:
            _walk(s, w, lam, finite, dntk, options)
        return
    if isinstance(step, Dense):
        lW, lb = lam[0][w.dense], lam[1][w.dense]
        if w.state is None:
            st = _ntk.first_layer(w.features, C_W=step.C_W, C_b=step.C_b, lam_W=lW, lam_b=lb,
                                  finite=finite, dntk=dntk)
        else:
            st = _ntk.step(w.act, w.state, width=w.width if finite else None, C_W=step.C_W, C_b=step.C_b,
                           lam_W=lW, lam_b=lb, dntk=dntk if finite else None, **options)
        w.state, w.features, w.act, w.width = st, None, IDENTITY, step.width
        w.dense += 1
        w.states.append(st)
        return
    if isinstance(step, Elementwise):
        if w.state is None:
            w.features = np.asarray(step.activation.fn(device(w.features)))
        else:
            w.act = compose(w.act, step.activation)
        return
    if isinstance(step, Scale):
        if w.state is None:
            w.features = step.alpha * w.features
            return
        if w.act is not IDENTITY:
            raise ValueError(f"{step!r}: scales pre-activations; place it before the Elementwise step")
        w.state = _scaled(w.state, step.alpha)
        w.states[-1] = w.state
        return
    if isinstance(step, Residual):
        _residual(step, w, lam, finite, dntk, options)
        return
    raise NotImplementedError(
        f"{step!r}: the NTK and its finite-width statistics are implemented for Dense, Elementwise, Scale and "
        f"serial compositions of them; {type(step).__name__} steps have no NTK map yet (docs/theory.md)"
    )


def _residual(step: Residual, w: _Walk, lam, finite: bool, dntk: bool, options: dict) -> None:
    """``z' = gamma z + xi B(z)`` at infinite width: ``K' = gamma^2 K + xi^2 K_B``,
    ``Theta' = gamma^2 Theta + xi^2 Theta_B`` (the block's fresh last weights make the skip-branch
    cross terms of the NTK average to zero); the 1/n statistics are not implemented."""
    if finite:
        raise NotImplementedError(
            f"{step!r}: the finite-width NTK statistics (Theta1, A, B, D, F, P, Q) of Residual steps are not "
            "implemented (their K1 and V are: docs/theory.md, 'Residual networks'); prior.Theta (infinite "
            "width) is available"
        )
    if w.state is None or w.act is not IDENTITY:
        raise ValueError(f"{step!r}: a residual step acts on pre-activations (place it after a Dense step)")
    inner = _Walk.__new__(_Walk)
    inner.features, inner.state, inner.act, inner.width = None, w.state, IDENTITY, w.width
    inner.dense, inner.states = w.dense, []
    _walk(step.block, inner, lam, finite, dntk, options)
    g2, x2 = step.gamma**2, step.xi**2
    st = _ntk.NTKState(K=g2 * w.state.K + x2 * inner.state.K, Theta=g2 * w.state.Theta + x2 * inner.state.Theta)
    w.state, w.dense = st, inner.dense
    w.states.append(st)


def learning_rates(net, lambda_W=None, lambda_b=None) -> tuple:
    """Per-dense-step learning-rate factors ``(lambda_W, lambda_b)``, tuples of length ``net.depth``.

    ``None`` takes the network's own (``net.lambda_W`` / ``net.lambda_b`` when it has them, e.g.
    an MLP built with ``parameterization=``), else 1.
    """
    depth = len(net.dense_steps())
    out = []
    for name, v in (("lambda_W", lambda_W), ("lambda_b", lambda_b)):
        if v is None:
            v = getattr(net, name, 1.0)
        out.append(per_layer(v, depth, name, learning_rate))
    return tuple(out)


def ntk_states(net, X, *, lambda_W=None, lambda_b=None, finite: bool = True, dntk: bool = False,
               orders=None, subset_order=None) -> tuple:
    """Per-dense-step :class:`ngp._ntk.NTKState` of ``net`` on inputs ``X`` ``(N, n0)`` (distinct rows).

    ``finite``: also the 1/n statistics (``K1, Theta1, V, A, B, D, F``); ``dntk``: also ``P, Q``
    (smooth activations; implies ``finite``).
    """
    lam = learning_rates(net, lambda_W, lambda_b)
    finite = bool(finite or dntk)
    options = {k: v for k, v in (("orders", orders), ("subset_order", subset_order)) if v is not None}
    w = _Walk(X)
    _walk(net, w, lam, finite, bool(dntk), options)
    if w.state is None or w.act is not IDENTITY:
        raise ValueError(f"net: {net!r} must end with a Dense step for its NTK")
    return tuple(w.states)


class NTKLayer:
    """NTK statistics of one layer's pre-activations (one per dense step; ``docs/theory.md``).

    ``E[H_ij;ab] = d_ij (Theta + Theta1 / n)``; ``Cov(H, H)`` carries ``A`` (same-pair) and ``B``
    (crossed) ``/ n``; the NTK-preactivation cross-cumulant ``D``, ``F`` ``/ n``; the dNTK-preactivation
    correlators ``P``, ``Q`` ``/ n``; ``n = n_{l-1}`` (``None``: the first layer, deterministic NTK).
    Two-point fields are ``(N, N)``, four-index ones ``(N, N, N, N)``.
    """

    def __init__(self, index: int, state: _ntk.NTKState, expand):
        self.index = index
        self.n = state.n
        self._s = state
        self._expand = expand

    def __getattr__(self, name):
        if name in ("K", "Theta", "K1", "Theta1") + _FOUR:
            v = getattr(self._s, name)
            if v is None:
                raise AttributeError(f"NTKLayer.{name}: not computed (dNTK correlators need prior.ntk_layers_dntk)")
            return self._expand(v)
        raise AttributeError(name)

    def ntk_variance(self) -> np.ndarray:
        """``n Cov(H_ii;ab, H_ii;cd) = A_abcd + B_acbd + B_adbc`` (one neuron), ``(N, N, N, N)``."""
        return self._expand(self._s.ntk_variance())

    def __repr__(self):
        return f"NTKLayer(index={self.index}, n={self.n})"


def output_property(layers: str, name: str, doc: str) -> property:
    """A read-only property ``self.<layers>[-1].<name>``: the value at the output layer, documented by ``doc``."""

    def get(self):
        return getattr(getattr(self, layers)[-1], name)

    get.__name__ = name
    return property(get, doc=doc)


class NTKMixin:
    """NTK properties of :class:`ngp.Prior` (one output neuron; learning-rate factors from the prior
    options ``lambda_W``, ``lambda_b`` or the network's own, default 1)."""

    def _ntk_expand(self, M):
        if self._identity:
            return np.asarray(M)
        i = self._inverse
        return np.asarray(M)[np.ix_(*([i] * np.ndim(M)))]

    @float64  # read lazily, after net.prior's own float64 scope has closed (float32 statistics, 3.7e-6 off)
    def _ntk_run(self, finite, dntk):
        o = self.options
        return ntk_states(self.net, self._Xu, lambda_W=o.get("lambda_W"), lambda_b=o.get("lambda_b"),
                          finite=finite, dntk=dntk)

    @functools.cached_property
    def _ntk_inf(self):
        return self._ntk_run(False, False)

    @functools.cached_property
    def _ntk_fin(self):
        return self._ntk_run(True, False)

    @functools.cached_property
    def _ntk_dntk(self):
        return self._ntk_run(True, True)

    @functools.cached_property
    def thetas(self) -> tuple:
        """Per-layer infinite-width NTKs ``Theta^(1..L)``, each ``(N, N)``."""
        return tuple(self._ntk_expand(s.Theta) for s in self._ntk_inf)

    @property
    def Theta(self) -> np.ndarray:
        """``(N, N)`` infinite-width NTK of one output neuron (``docs/theory.md``)."""
        return self.thetas[-1]

    @functools.cached_property
    def ntk_layers(self) -> tuple:
        """Per-layer :class:`NTKLayer` with the 1/n statistics ``Theta1, A, B, D, F`` (and ``K1, V``). Warns, as
        ``K1`` does, when the expansion parameter ``max|V|/(n K^2)`` exceeds 0.3 (prior option ``warn``)."""
        out = tuple(NTKLayer(i + 1, s, self._ntk_expand) for i, s in enumerate(self._ntk_fin))
        self._ntk_check_expansion(self._ntk_fin[-1])
        return out

    @functools.cached_property
    def ntk_layers_dntk(self) -> tuple:
        """As :attr:`ntk_layers`, with the dNTK correlators ``P, Q`` (smooth activations)."""
        out = tuple(NTKLayer(i + 1, s, self._ntk_expand) for i, s in enumerate(self._ntk_dntk))
        self._ntk_check_expansion(self._ntk_dntk[-1])
        return out

    def _ntk_check_expansion(self, last) -> None:
        """The prior's check of its 1/n expansion (:meth:`_check_expansion`), on the NTK run's own output ``K`` and
        ``V`` (not the prior's four-point engine), for the NTK's 1/n statistics, which are of the same order (they
        said nothing at width 1, where ``K1`` warned)."""
        if self.options.get("warn", True) and last.n is not None and last.V is not None:
            self._check_expansion(expansion_parameter(last.K, last.V, last.n))

    Theta1 = output_property("ntk_layers", "Theta1",
                             "``(N, N)``: ``E[Theta_hat] = Theta + Theta1 / n`` with ``n = net.n_last``.")
    A = output_property("ntk_layers", "A",
                        "``(N, N, N, N)`` same-pair NTK covariance tensor of the output (``/ n``).")
    B = output_property("ntk_layers", "B",
                        "``(N, N, N, N)`` crossed NTK covariance tensor of the output (``/ n``).")
    D = output_property("ntk_layers", "D",
                        "``(N, N, N, N)`` NTK-preactivation cross-cumulant, same-pair part (``/ n``).")
    F = output_property("ntk_layers", "F",
                        "``(N, N, N, N)`` NTK-preactivation cross-cumulant, crossed part (``/ n``).")
    P = output_property("ntk_layers_dntk", "P",
                        "``(N, N, N, N)`` dNTK-preactivation correlator ``P`` of the output (``/ n``).")
    Q = output_property("ntk_layers_dntk", "Q",
                        "``(N, N, N, N)`` dNTK-preactivation correlator ``Q`` of the output (``/ n``).")

    def ntk_variance(self) -> np.ndarray:
        """``n Cov(H_ii;ab, H_ii;cd)`` of one output neuron's NTK, ``(N, N, N, N)``."""
        return self.ntk_layers[-1].ntk_variance()
