"""Activation functions and what ngp knows about them in closed form.

An :class:`Activation` bundles a JAX-traceable elementwise function with the
closed-form Gaussian expectations that exist for it:

* ``two_point(kaa, kbb, kab)``: ``<s(z_a) s(z_b)>`` for ``(z_a, z_b)`` a zero-mean
  Gaussian with covariance ``[[kaa, kab], [kab, kbb]]``;
* ``smoothed(mu, s)``: ``E[s(mu + s w)]`` with ``w ~ N(0, 1)``, used to integrate
  one dimension of the four-point expectations in closed form;
* ``four_point(C)``: ``<s(z_1) s(z_2) s(z_3) s(z_4)>`` for covariance blocks ``C`` of shape
  ``(..., 4, 4)`` (linear: Isserlis; sin: a sum of exponentials);
* ``relu_slopes``: the slopes of the scale-invariant (piecewise-linear) family.

Nothing in ngp dispatches on the activation's *name*: a closed form is used only when the
:class:`Activation` carries it, and a user callable carries none unless it is built as an
``Activation(...)`` with the closed forms given explicitly. Activations without a closed form
(tanh, swish, softplus, sigmoid, user callables) are integrated numerically (see
``docs/theory.md``, "Gaussian expectations").
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import erf as _erf
from jax.scipy.special import erfc as _erfc

from ._validate import device, flag, real

__all__ = ["Activation", "activation", "ACTIVATIONS", "made_by"]

_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
_SQRT_HALF = math.sqrt(0.5)


def _ndtr(x):
    """The standard normal CDF as ``erfc(-x / sqrt 2) / 2``: as accurate as ``jax.scipy.special.ndtr`` (the same
    values to 2e-15 relative above -37, where both underflow alike) and 4.6x cheaper on XLA:CPU in float64, where
    ``ndtr`` evaluates both ``erf`` and ``erfc`` (11.5 against 2.5 ns an element, measured at stop 96)."""
    return 0.5 * _erfc(-x * _SQRT_HALF)


def _npdf(x):
    return _INV_SQRT_2PI * jnp.exp(-0.5 * x * x)


def _safe_div(a, b):
    ok = b != 0
    return jnp.where(ok, a / jnp.where(ok, b, 1.0), 0.0)


@dataclasses.dataclass(frozen=True, eq=False)
class Activation:
    """An elementwise activation ``sigma`` and its known Gaussian integrals.

    Attributes:
        name: Short name (``"tanh"``, ``"relu"``, ...).
        fn: JAX-traceable elementwise function.
        two_point: Closed form of ``<sigma(z_a) sigma(z_b)>`` as a function of
            ``(kaa, kbb, kab)`` (broadcasting), or ``None``.
        smoothed: Closed form of ``E[sigma(mu + s w)]``, ``w ~ N(0,1)``, or ``None``.
        four_point: Closed form of ``<sigma(z_1) sigma(z_2) sigma(z_3) sigma(z_4)>`` as a
            function of the ``(..., 4, 4)`` covariance of ``z`` (indices may repeat, so the
            block may be singular), or ``None``.
        relu_slopes: ``(a_plus, a_minus)`` for the scale-invariant (piecewise
            linear) family ``a_+ z Theta(z) + a_- z Theta(-z)``; ``None`` otherwise.
        smooth: Whether ``fn`` is smooth enough that its derivatives (taken by
            autodiff) are its distributional derivatives. False for kinks.
        exp_split: ``(kappa, h)`` with ``sigma(x) = h(exp(kappa x))`` for every real ``x``, ``h``
            elementwise and accurate to a few ulps of ``max|sigma|`` (tanh: ``kappa = 2``,
            ``h(y) = 1 - 2 / (1 + y)``), or ``None``. The four-point kernel then forms ``exp(kappa x)``
            at the nodes of a tile as products of one exponential per node of its leading directions
            and one per node of its last direction (``docs/four-point.md``, "Exponential split").
        exp_ratio: ``(n, d)`` with ``h(y) = n(y) / d(y)`` for the ``h`` of ``exp_split``, ``1 <= d(y) <=
            2 max(1, y)`` and ``|n(y)| <= d(y)`` for ``y > 0`` (tanh: ``n(y) = y - 1``, ``d(y) = y + 1``), or
            ``None``. The kernel then multiplies the numerators of a node's factors and their denominators and
            divides once, where the exponents of a block stay small enough for the products to be finite.
    """

    name: str
    fn: Callable
    two_point: Callable | None = None
    smoothed: Callable | None = None
    relu_slopes: tuple[float, float] | None = None
    smooth: bool = True
    four_point: Callable | None = None
    exp_split: tuple[float, Callable] | None = None
    exp_ratio: tuple[Callable, Callable] | None = None

    def __call__(self, x):
        return self.fn(x)

    def __reduce__(self):
        # pickling (and copy.deepcopy): an activation made by a cached constructor (a name, a composition) as that
        # call, so that it unpickles as the process's one object for it (compiled kernels are cached on it and
        # steps compare activations by identity); any other as its fields (``fn`` must then be picklable: a
        # module-level function, not a lambda)
        origin = self.__dict__.get("_made_by")
        if origin is not None:
            return origin
        return _rebuild, (tuple(getattr(self, f.name) for f in dataclasses.fields(self)),)

    def __repr__(self) -> str:
        return f"Activation({self.name!r})"

    @property
    def is_scale_invariant(self) -> bool:
        """Whether ``sigma(lambda z) = lambda sigma(z)`` for ``lambda > 0`` (the relu family, linear)."""
        return self.relu_slopes is not None

    def second_moment(self, k):
        """``<sigma(z)^2>`` for ``z ~ N(0, k)``, in closed form (``None`` when there is none).

        Separate from ``two_point`` because the scale-invariant family's ``two_point`` is not
        differentiable at correlation 1, while ``<sigma^2>_k = (a_+^2 + a_-^2) k / 2`` is.
        """
        if self.relu_slopes is not None:
            ap, am = self.relu_slopes
            return 0.5 * (ap * ap + am * am) * k
        if self.two_point is not None:
            return self.two_point(k, k, k)
        return None

    def derivative(self, order: int) -> Callable:
        """Elementwise ``order``-th derivative of ``fn`` (by autodiff; cached, so jit caches hit)."""
        return _derivative(self, int(order))


@functools.lru_cache(maxsize=256)
def _derivative(act: "Activation", order: int) -> Callable:
    if order == 0:
        return act.fn
    return _elementwise_grad(_derivative(act, order - 1))


def _elementwise_grad(f):
    """``f'`` elementwise, compiled (one program per input shape instead of one per operation)."""
    g = jax.grad(lambda x: jnp.sum(f(x)))
    return jax.jit(lambda x: g(device(x, dtype=jnp.result_type(float, x))))


# ----------------------------------------------------------------------------- relu family
#: Smallest angle ``theta`` at which the singular part of the relu-family Hessian is evaluated;
#: below it ``1 / sqrt(det)`` is replaced by ``1 / (sqrt(kaa kbb) ARC_ANGLE_FLOOR)``. The singular part
#: is ``w w^T / sqrt(det)`` (``w = sqrt(kaa kbb) grad(cos theta)``) and it always meets ``w^T V w``, the
#: variance of the stochastic correlation, which vanishes like ``theta^4`` at coincident inputs: the
#: floored term differs from the exact one by ``O(ARC_ANGLE_FLOOR^3)`` relative to ``V``, and rounding
#: errors in ``V`` are amplified by at most ``1 / ARC_ANGLE_FLOOR`` (see ``docs/theory.md``,
#: "Gaussian expectations").
ARC_ANGLE_FLOOR = 1e-3


def _safe_sqrt(x):
    """``sqrt(max(x, 0))`` whose derivative is 0 (not ``inf``) where ``x <= 0``: the Hessian rows of
    :func:`_arc` are differentiated once more (gradients of ``V``, ``K1`` in ``C_W``, ``C_b``), and
    at coincident inputs (``det = 0`` exactly, as on the kernel diagonal) ``sqrt'(0) = inf`` would
    meet a zero cotangent and give NaN."""
    pos = x > 0
    return jnp.where(pos, jnp.sqrt(jnp.where(pos, x, 1.0)), 0.0)


def _arc_geometry(kaa, kbb, kab):
    """``(s, r, theta, inv_r)`` of a 2x2 covariance: ``s = sqrt(kaa kbb)``, ``r = sqrt(det)``,
    ``theta`` the angle (``atan2(r, kab)``, in ``[0, pi]``), and ``1 / max(r, s ARC_ANGLE_FLOOR)``
    (0 where ``s = 0``)."""
    s = _safe_sqrt(kaa * kbb)
    r = _safe_sqrt(kaa * kbb - kab * kab)
    theta = jnp.arctan2(r, kab)
    pos = s > 0
    rf = jnp.where(pos, jnp.maximum(r, ARC_ANGLE_FLOOR * s), 1.0)
    return s, r, theta, jnp.where(pos, 1.0 / rf, 0.0)


def _half_ratio(num, den):
    """``num / (2 den)``, 0 where ``den = 0``."""
    ok = den > 0
    return jnp.where(ok, num / (2.0 * jnp.where(ok, den, 1.0)), 0.0)


@jax.custom_jvp
def _arc(kaa, kbb, kab):
    """``sqrt(kaa kbb - kab^2) - kab theta``: ``2 pi <relu(z_a) relu(z_b)> - pi kab`` (arc-cosine kernel).

    Derivatives are the analytic ones (:func:`_arc_da`, :func:`_arc_dc`): finite at coincident
    (``theta = 0``), opposite (``theta = pi``) and zero-variance (``kaa kbb = 0``) inputs, where
    autodiff of ``arccos`` gives ``inf - inf``.
    """
    _, r, theta, _ = _arc_geometry(kaa, kbb, kab)
    return r - kab * theta


@jax.custom_jvp
def _arc_da(kaa, kbb, kab):
    """``d _arc / d kaa = sqrt(det) / (2 kaa)`` (0 at ``kaa = 0``)."""
    _, r, _, _ = _arc_geometry(kaa, kbb, kab)
    return _half_ratio(r, kaa)


@jax.custom_jvp
def _arc_dc(kaa, kbb, kab):
    """``d _arc / d kab = -theta``."""
    return -_arc_geometry(kaa, kbb, kab)[2]


@_arc.defjvp
def _arc_jvp(primals, tangents):
    kaa, kbb, kab = primals
    ta, tb, tc = tangents
    out = _arc(kaa, kbb, kab)
    return out, _arc_da(kaa, kbb, kab) * ta + _arc_da(kbb, kaa, kab) * tb + _arc_dc(kaa, kbb, kab) * tc


def _arc_hessian_row(kaa, kbb, kab):
    """Second derivatives ``(H_aa_aa, H_aa_bb, H_aa_ab)``, ``(H_ab_aa, H_ab_bb, H_ab_ab)`` of :func:`_arc`.

    ``H = w w^T / r + r D`` with ``w = (-kab / 2kaa, -kab / 2kbb, 1)``, ``D = [[-1/4kaa^2, 1/4kaa kbb, 0],
    [., -1/4kbb^2, 0], [0, 0, 0]]``; the singular ``1/r`` is floored (:data:`ARC_ANGLE_FLOOR`).
    """
    _, r, _, inv_r = _arc_geometry(kaa, kbb, kab)
    wa = -_half_ratio(kab, kaa)
    wb = -_half_ratio(kab, kbb)
    raa = _half_ratio(_half_ratio(r, kaa), kaa)  # r / (4 kaa^2)
    rab = _half_ratio(_half_ratio(r, kaa), kbb)  # r / (4 kaa kbb)
    return (wa * wa * inv_r - raa, wa * wb * inv_r + rab, wa * inv_r), (wa * inv_r, wb * inv_r, inv_r)


@_arc_da.defjvp
def _arc_da_jvp(primals, tangents):
    kaa, kbb, kab = primals
    ta, tb, tc = tangents
    (h_aa, h_ab, h_ac), _ = _arc_hessian_row(kaa, kbb, kab)
    return _arc_da(kaa, kbb, kab), h_aa * ta + h_ab * tb + h_ac * tc


@_arc_dc.defjvp
def _arc_dc_jvp(primals, tangents):
    kaa, kbb, kab = primals
    ta, tb, tc = tangents
    _, (h_ca, h_cb, h_cc) = _arc_hessian_row(kaa, kbb, kab)
    return _arc_dc(kaa, kbb, kab), h_ca * ta + h_cb * tb + h_cc * tc


def _relu_family(a_plus: float, a_minus: float, name: str) -> Activation:
    """Scale-invariant activation a_+ z Theta(z) + a_- z Theta(-z) (arc-cosine kernels).

    ``<s_a s_b> = (a_+^2 + a_-^2) kab / 2 + (a_+ - a_-)^2 / (2 pi) [sqrt(kaa kbb - kab^2) - kab theta]``
    (``docs/theory.md``, "Gaussian expectations"), with analytic first and second derivatives
    (:func:`_arc`).
    """
    a_plus, a_minus = float(a_plus), float(a_minus)
    lin = 0.5 * (a_plus**2 + a_minus**2)
    kink = (a_plus - a_minus) ** 2 / (2 * math.pi)

    def fn(x):
        return jnp.where(x > 0, a_plus * x, a_minus * x)

    def two_point(kaa, kbb, kab):
        kaa, kbb, kab = jnp.broadcast_arrays(*map(jnp.asarray, (kaa, kbb, kab)))
        if kink == 0.0:  # linear
            return lin * kab
        return lin * kab + kink * _arc(kaa, kbb, kab)

    def smoothed(mu, s):
        r = _safe_div(mu, s)
        relu_p = mu * _ndtr(r) + s * _npdf(r)  # E[relu(mu + s w)]
        relu_m = -mu * _ndtr(-r) + s * _npdf(r)  # E[relu(-(mu + s w))]
        return a_plus * relu_p - a_minus * relu_m

    return Activation(name, fn, two_point, smoothed, (a_plus, a_minus), smooth=False)


def _isserlis(C):
    """``E[z_1 z_2 z_3 z_4]`` for ``z ~ N(0, C)``, ``C`` of shape ``(..., 4, 4)``."""
    return C[..., 0, 1] * C[..., 2, 3] + C[..., 0, 2] * C[..., 1, 3] + C[..., 0, 3] * C[..., 1, 2]


def _linear() -> Activation:
    return Activation(
        "linear",
        lambda x: x,
        two_point=lambda kaa, kbb, kab: jnp.broadcast_arrays(
            device(kaa), device(kbb), device(kab)
        )[2],
        smoothed=lambda mu, s: jnp.broadcast_arrays(device(mu), device(s))[0],
        relu_slopes=(1.0, 1.0),
        smooth=True,
        four_point=_isserlis,
    )


def _erf_act() -> Activation:
    def two_point(kaa, kbb, kab):
        return (2 / jnp.pi) * jnp.arcsin(
            jnp.clip(2 * kab / jnp.sqrt((1 + 2 * kaa) * (1 + 2 * kbb)), -1.0, 1.0)
        )

    return Activation(
        "erf",
        _erf,
        two_point,
        smoothed=lambda mu, s: _erf(mu / jnp.sqrt(1 + 2 * s * s)),
    )


_SIGNS4 = np.array(list(itertools.product((1.0, -1.0), repeat=4)))


def _sin_four_point(C):
    """``E[prod_j sin z_j]``: ``prod sin z_j = (2i)^-4 sum_s (prod s) e^{i s.z}``, ``E e^{i s.z} = e^{-s^T C s/2}``.

    ``s^T C s`` is summed term by term (``C_ii + 2 sum_{i<j} s_i s_j C_ij``) and the sign sum is taken one
    sign at a time, so an input with zero variance (a row of zeros in ``C``) gives exactly 0: the two
    halves of its sign sum are bitwise equal.
    """
    s = device(_SIGNS4, dtype=C.dtype)  # (16, 4)
    iu, ju = np.triu_indices(4, 1)
    quad = jnp.trace(C, axis1=-2, axis2=-1)[..., None] + 2.0 * jnp.sum(
        (s[:, iu] * s[:, ju]) * C[..., None, iu, ju], axis=-1)  # (..., 16)
    terms = (jnp.prod(s, axis=1) * jnp.exp(-0.5 * quad)).reshape(C.shape[:-2] + (2, 2, 2, 2))
    for _ in range(4):
        terms = terms[..., 0] + terms[..., 1]
    return terms / 16.0


#: Mean variance ``(k_aa + k_bb) / 2`` beyond which :func:`_sin_two_point` takes its overflow-free form.
_SIN_LARGE = 350.0


def _sin_two_point(kaa, kbb, kab):
    """``<sin z_a sin z_b> = e^{-(k_aa + k_bb)/2} sinh(k_ab)``; beyond a mean variance of :data:`_SIN_LARGE`
    (where ``sinh`` would overflow, ``|k_ab| <= (k_aa + k_bb)/2``) as ``(e^{k_ab - m} - e^{-k_ab - m}) / 2``, whose
    exponents are at most 0 (absolute error a few ulps; both branches finite, so gradients are too)."""
    m = 0.5 * (kaa + kbb)
    small = jnp.exp(-m) * jnp.sinh(jnp.clip(kab, -_SIN_LARGE, _SIN_LARGE))
    large = 0.5 * (jnp.exp(kab - m) - jnp.exp(-kab - m))
    return jnp.where(m <= _SIN_LARGE, small, large)


def _sin_act() -> Activation:
    return Activation(
        "sin",
        jnp.sin,
        two_point=_sin_two_point,
        smoothed=lambda mu, s: jnp.sin(mu) * jnp.exp(-0.5 * s * s),
        four_point=_sin_four_point,
    )


def _gelu_act() -> Activation:
    def smoothed(mu, s):
        t = jnp.sqrt(1 + s * s)
        return mu * _ndtr(mu / t) + (s * s / t) * _npdf(mu / t)

    return Activation("gelu", lambda x: x * _ndtr(x), smoothed=smoothed)


def _tanh_of_exp(y):  # tanh(x) from y = exp(2 x): absolute error a few ulps
    return 1.0 - 2.0 / (1.0 + y)


def _sigmoid_of_exp(y):  # sigmoid(x) from y = exp(-x): relative error a few ulps
    return 1.0 / (1.0 + y)


#: ``_tanh_of_exp`` and ``_sigmoid_of_exp`` as numerator and denominator (``Activation.exp_ratio``).
_TANH_RATIO = (lambda y: y - 1.0, lambda y: y + 1.0)
_SIGMOID_RATIO = (lambda y: 1.0, lambda y: 1.0 + y)


_FACTORIES: dict[str, Callable[..., Activation]] = {
    "linear": _linear,
    "identity": _linear,
    "relu": lambda: _relu_family(1.0, 0.0, "relu"),
    "leaky_relu": lambda slope=0.01: _relu_family(1.0, slope, f"leaky_relu({slope:g})"),
    "tanh": lambda: Activation("tanh", jnp.tanh, exp_split=(2.0, _tanh_of_exp), exp_ratio=_TANH_RATIO),
    "erf": _erf_act,
    "sin": _sin_act,
    "gelu": _gelu_act,
    "swish": lambda: Activation("swish", lambda x: x * jax.nn.sigmoid(x)),
    "silu": lambda: Activation("swish", lambda x: x * jax.nn.sigmoid(x)),
    "softplus": lambda: Activation("softplus", jax.nn.softplus),
    "sigmoid": lambda: Activation("sigmoid", jax.nn.sigmoid, exp_split=(-1.0, _sigmoid_of_exp),
                                  exp_ratio=_SIGMOID_RATIO),
}

#: Names accepted by :func:`activation` (and ``ngp.MLP(activation=...)``).
ACTIVATIONS: tuple[str, ...] = tuple(sorted(_FACTORIES))


def activation(spec: str | Callable | Activation, /, **params) -> Activation:
    """Turn a name, a callable or an :class:`Activation` into an :class:`Activation`.

    Args:
        spec: One of :data:`ACTIVATIONS` (e.g. ``"tanh"``, ``"relu"``,
            ``"leaky_relu"``), an :class:`Activation`, or any JAX-traceable
            elementwise callable. A callable is assumed smooth (its autodiff
            derivatives are used); pass ``smooth=False`` for kinked callables. Each call makes a new object
            (compiled kernels are cached on it, and a callable may read globals that change between calls), so
            two networks given the same callable compare unequal and compile their kernels separately: build
            ``act = ngp.activation(f)`` once and pass ``act`` to share them.
        **params: Parameters of named activations (``slope`` for ``leaky_relu``)
            or ``name=``/``smooth=`` for callables.

    Raises:
        ValueError: unknown name or bad parameters.
        TypeError: ``spec`` is neither a string nor callable.
    """
    if isinstance(spec, Activation):
        if params:
            raise ValueError("activation: parameters cannot be given with an Activation object")
        return spec
    if isinstance(spec, str):
        key = spec.strip().lower()
        if key not in _FACTORIES:
            raise ValueError(
                f"activation: unknown activation {spec!r}; expected one of {', '.join(ACTIVATIONS)} "
                "or a JAX-traceable callable"
            )
        if key == "leaky_relu" and "slope" in params:
            params = dict(params, slope=real(params["slope"], "slope"))
        try:
            return _named(key, tuple(sorted(params.items())))
        except TypeError as exc:
            raise ValueError(f"activation: bad parameters {params} for {spec!r}") from exc
    if callable(spec):
        name = params.pop("name", getattr(spec, "__name__", "callable"))
        smooth = flag(params.pop("smooth", True), "smooth")
        if params:
            raise ValueError(f"activation: unexpected parameters {sorted(params)} for a callable")
        act = Activation(str(name), spec, smooth=smooth)
        _check_callable(act)
        return act
    raise TypeError(
        f"activation: expected a name, a callable or an Activation, got {type(spec).__name__}"
    )


@functools.lru_cache(maxsize=None)
def _named(key: str, params: tuple) -> Activation:
    # One object per (name, parameters): compiled expectation kernels are cached on it.
    return made_by(_FACTORIES[key](**dict(params)), _named, key, params)


def made_by(act: Activation, constructor: Callable, *args) -> Activation:
    """Record that ``constructor(*args)``, a cached module-level function, returns ``act``: it then pickles (and
    deep-copies) as that call and unpickles as the process's one object for it (``docs/posterior.md``, "Saving a
    conditioned model"). Returns ``act``."""
    object.__setattr__(act, "_made_by", (constructor, args))
    return act


def _rebuild(fields: tuple) -> Activation:
    return Activation(*fields)


def _check_callable(act: Activation) -> None:
    """Reject callables that are not elementwise or not finite, and kinked ones claimed smooth."""
    if isinstance(act.fn, np.ufunc) or str(getattr(act.fn, "__module__", "")).split(".")[0] == "numpy":
        # not traceable; and jax.jit of a NumPy function (np.tanh, np.sinc), retried, crashes the process
        raise TypeError(f"activation: {act.name!r} is a NumPy function; it must be JAX-traceable (use jax.numpy's, "
                        f"e.g. jnp.{getattr(act.fn, '__name__', 'tanh')})")
    x = device(np.linspace(-3.0, 3.0, 13))  # steps of 0.5
    fn = jax.jit(act.fn)  # one compilation serves every check below
    try:
        y = np.asarray(fn(x))
    except Exception as exc:  # noqa: BLE001 - numpy functions fail on tracers
        try:
            act.fn(x)
        except Exception as exc2:  # noqa: BLE001 - report any failure to call the callable
            raise ValueError(f"activation: calling {act.name!r} on an array failed: {exc2}") from exc2
        raise TypeError(
            f"activation: {act.name!r} must be JAX-traceable (written with jax.numpy, not numpy); "
            f"tracing it failed with {type(exc).__name__}"
        ) from exc
    if y.shape != x.shape:
        raise ValueError(
            f"activation: {act.name!r} must be elementwise (input shape {x.shape}, output {y.shape})"
        )
    if not jnp.issubdtype(y.dtype, jnp.floating):  # ints, bools, complex: JAX's 'grad requires real-valued outputs'
        raise TypeError(f"activation: {act.name!r} must return real floating-point values (like its input), got "
                        f"dtype {y.dtype}")
    if not np.all(np.isfinite(y)):
        raise ValueError(f"activation: {act.name!r} returned non-finite values on [-3, 3]")
    if act.smooth:
        # A piecewise-linear callable has a zero second derivative almost everywhere
        # while not being affine: its delta-function curvature would be silently lost.
        xs = device(np.array([-2.3, -1.1, -0.37, 0.41, 1.3, 2.7]))
        d2 = np.asarray(act.derivative(2)(xs))
        ys = y[[2, 7, 10]]  # at -2, 0.5, 2
        affine_gap = ys[1] - (ys[0] * 0.375 + ys[2] * 0.625)
        if np.all(np.abs(d2) < 1e-12) and abs(affine_gap) > 1e-9:
            raise ValueError(
                f"activation: {act.name!r} looks piecewise linear (kinked); its curvature is a "
                "delta function that autodiff cannot see. Use the named 'relu'/'leaky_relu' "
                "activations (closed forms), or pass smooth=False to accept quadrature-only "
                "infinite-width kernels."
            )
