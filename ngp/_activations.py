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
from jax.scipy.special import ndtr as _ndtr

from ._validate import real

__all__ = ["Activation", "activation", "ACTIVATIONS"]

_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


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
    """

    name: str
    fn: Callable
    two_point: Callable | None = None
    smoothed: Callable | None = None
    relu_slopes: tuple[float, float] | None = None
    smooth: bool = True
    four_point: Callable | None = None

    def __call__(self, x):
        return self.fn(x)

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
    g = jax.grad(lambda x: jnp.sum(f(x)))
    return lambda x: g(jnp.asarray(x, dtype=jnp.result_type(float, x)))


# ----------------------------------------------------------------------------- relu family
def _relu_family(a_plus: float, a_minus: float, name: str) -> Activation:
    """Scale-invariant activation a_+ z Theta(z) + a_- z Theta(-z) (arc-cosine kernels)."""
    a_plus, a_minus = float(a_plus), float(a_minus)

    def fn(x):
        return jnp.where(x > 0, a_plus * x, a_minus * x)

    def two_point(kaa, kbb, kab):
        kaa, kbb, kab = jnp.broadcast_arrays(*map(jnp.asarray, (kaa, kbb, kab)))
        norm = jnp.sqrt(kaa * kbb)
        cos = jnp.clip(_safe_div(kab, norm), -1.0, 1.0)
        theta = jnp.arccos(cos)
        # sqrt(kaa kbb - kab^2) = norm * sin(theta); written through theta so that
        # autodiff stays finite away from theta = 0.
        sin_term = norm * jnp.sin(theta)
        j_pp = (sin_term + kab * (jnp.pi - theta)) / (2 * jnp.pi)
        j_pm = (sin_term - kab * theta) / (2 * jnp.pi)
        return (a_plus**2 + a_minus**2) * j_pp - 2 * a_plus * a_minus * j_pm

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
            jnp.asarray(kaa), jnp.asarray(kbb), jnp.asarray(kab)
        )[2],
        smoothed=lambda mu, s: jnp.broadcast_arrays(jnp.asarray(mu), jnp.asarray(s))[0],
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
    """``E[prod_j sin z_j]``: ``prod sin z_j = (2i)^-4 sum_s (prod s) e^{i s.z}``, ``E e^{i s.z} = e^{-s^T C s/2}``."""
    s = jnp.asarray(_SIGNS4, dtype=C.dtype)
    quad = jnp.einsum("ki,...ij,kj->...k", s, C, s)
    return jnp.sum(jnp.prod(s, axis=1) * jnp.exp(-0.5 * quad), axis=-1) / 16.0


def _sin_act() -> Activation:
    return Activation(
        "sin",
        jnp.sin,
        two_point=lambda kaa, kbb, kab: jnp.exp(-0.5 * (kaa + kbb)) * jnp.sinh(kab),
        smoothed=lambda mu, s: jnp.sin(mu) * jnp.exp(-0.5 * s * s),
        four_point=_sin_four_point,
    )


def _gelu_act() -> Activation:
    def smoothed(mu, s):
        t = jnp.sqrt(1 + s * s)
        return mu * _ndtr(mu / t) + (s * s / t) * _npdf(mu / t)

    return Activation("gelu", lambda x: x * _ndtr(x), smoothed=smoothed)


_FACTORIES: dict[str, Callable[..., Activation]] = {
    "linear": _linear,
    "identity": _linear,
    "relu": lambda: _relu_family(1.0, 0.0, "relu"),
    "leaky_relu": lambda slope=0.01: _relu_family(1.0, slope, f"leaky_relu({slope:g})"),
    "tanh": lambda: Activation("tanh", jnp.tanh),
    "erf": _erf_act,
    "sin": _sin_act,
    "gelu": _gelu_act,
    "swish": lambda: Activation("swish", lambda x: x * jax.nn.sigmoid(x)),
    "silu": lambda: Activation("swish", lambda x: x * jax.nn.sigmoid(x)),
    "softplus": lambda: Activation("softplus", jax.nn.softplus),
    "sigmoid": lambda: Activation("sigmoid", jax.nn.sigmoid),
}

#: Names accepted by :func:`activation` (and ``ngp.MLP(activation=...)``).
ACTIVATIONS: tuple[str, ...] = tuple(sorted(_FACTORIES))


def activation(spec: str | Callable | Activation, /, **params) -> Activation:
    """Turn a name, a callable or an :class:`Activation` into an :class:`Activation`.

    Args:
        spec: One of :data:`ACTIVATIONS` (e.g. ``"tanh"``, ``"relu"``,
            ``"leaky_relu"``), an :class:`Activation`, or any JAX-traceable
            elementwise callable. A callable is assumed smooth (its autodiff
            derivatives are used); pass ``smooth=False`` for kinked callables.
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
        smooth = bool(params.pop("smooth", True))
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
    return _FACTORIES[key](**dict(params))


def _check_callable(act: Activation) -> None:
    """Reject callables that are not elementwise or not finite, and kinked ones claimed smooth."""
    x = jnp.linspace(-3.0, 3.0, 13)
    try:
        y = np.asarray(act.fn(x))
    except Exception as exc:  # noqa: BLE001 - report any failure to trace the callable
        raise ValueError(f"activation: calling {act.name!r} on an array failed: {exc}") from exc
    try:
        jax.jit(act.fn)(x)
    except Exception as exc:  # noqa: BLE001 - numpy functions fail on tracers
        raise TypeError(
            f"activation: {act.name!r} must be JAX-traceable (written with jax.numpy, not numpy); "
            f"tracing it failed with {type(exc).__name__}"
        ) from exc
    if y.shape != x.shape:
        raise ValueError(
            f"activation: {act.name!r} must be elementwise (input shape {x.shape}, output {y.shape})"
        )
    if not np.all(np.isfinite(y)):
        raise ValueError(f"activation: {act.name!r} returned non-finite values on [-3, 3]")
    if act.smooth:
        # A piecewise-linear callable has a zero second derivative almost everywhere
        # while not being affine: its delta-function curvature would be silently lost.
        xs = jnp.asarray([-2.3, -1.1, -0.37, 0.41, 1.3, 2.7])
        d2 = np.asarray(act.derivative(2)(xs))
        ys = np.asarray(act.fn(jnp.asarray([-2.0, 0.5, 2.0])))
        affine_gap = ys[1] - (ys[0] * 0.375 + ys[2] * 0.625)
        if np.all(np.abs(d2) < 1e-12) and abs(affine_gap) > 1e-9:
            raise ValueError(
                f"activation: {act.name!r} looks piecewise linear (kinked); its curvature is a "
                "delta function that autodiff cannot see. Use the named 'relu'/'leaky_relu' "
                "activations (closed forms), or pass smooth=False to accept quadrature-only "
                "infinite-width kernels."
            )
