"""Argument checking shared by every public function: one place, errors name the argument.

Numbers: :func:`real`, :func:`positive_float`, :func:`nonneg_float`, :func:`count`
(positive integers: widths, depths, sample sizes), :func:`check_seed` (PRNG seeds), :func:`flag` (boolean
options), :func:`per_layer` (a number or one value per layer). Arrays: :func:`as_inputs`, :func:`as_targets`,
:func:`train_test`. Also the float64 scope of the numerics (:func:`float64`), warnings attributed to the caller's
line, and the conditioning limit of kernel solves.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import math
import numbers
import os
import sys
import warnings

import jax
import jax.numpy as jnp
import numpy as np

from ._cache import aligned_empty
from ._warnings import AccuracyWarning, NgpWarning

__all__ = [
    "RCOND_MIN",
    "MAX_WIDTH",
    "MAX_MEMORY",
    "real",
    "positive_float",
    "nonneg_float",
    "count",
    "check_seed",
    "flag",
    "check_stop",
    "stop_requested",
    "per_layer",
    "as_inputs",
    "as_targets",
    "train_test",
    "check_x64",
    "float64",
    "warn",
    "quiet",
    "memory_bytes",
    "device",
]

#: Smallest acceptable reciprocal condition number of a training kernel ``K_train + noise I``
#: (GP solves, the finite-width posterior, and the importance sampler's per-draw likelihoods).
RCOND_MIN = 1e-12
#: Default memory budget (bytes) for the dense finite-width cumulants (``max_memory`` option).
MAX_MEMORY = 4 * 1024**3

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


def warn(message: str, category=NgpWarning) -> None:
    """``warnings.warn`` attributed to the first caller outside the ``ngp`` package (``category``: one of
    :mod:`ngp._warnings`).

    The stack level is computed, so the warning points at the user's line however deep inside
    ngp it was raised.
    """
    if any(issubclass(category, c) for c in _QUIET.get()):
        return
    site = _SITE.get()
    if site is not None:  # on one of ngp's threads: the user's line that handed the job over
        filename, lineno, globs = site
        warnings.warn_explicit(message, category, filename, lineno, module=globs.get("__name__", "<string>"),
                               registry=globs.setdefault("__warningregistry__", {}), module_globals=globs)
        return
    _, up = _user_frame(sys._getframe(1))
    warnings.warn(message, category, stacklevel=2 + up)  # stacklevel 2 is warn()'s caller


def _user_frame(frame):
    """The first frame at or above ``frame`` outside the ``ngp`` package (``None`` if none), and how many frames up
    it is."""
    up = 0
    while frame is not None and (
        os.path.abspath(frame.f_code.co_filename).startswith(_PACKAGE_DIR)
        or frame.f_globals.get("__name__") == "functools"  # cached_property between ngp frames
    ):
        frame = frame.f_back
        up += 1
    return frame, up


def job_context() -> contextvars.Context:
    """A copy of the caller's context for a job that ngp hands to another thread (:mod:`ngp._threads`), in which
    :func:`warn` points at the user's line that handed it over: that thread's stack holds no frame of the user's, so
    Python would attribute the warning to the thread machinery (and its filter, once per location, show it again
    for each new location)."""
    ctx = contextvars.copy_context()
    if _SITE.get() is None:  # else the caller is itself such a job: its site holds
        frame, _ = _user_frame(sys._getframe(1))
        if frame is not None:
            ctx.run(_SITE.set, (frame.f_code.co_filename, frame.f_lineno, frame.f_globals))
    return ctx


_QUIET = contextvars.ContextVar("ngp_quiet", default=())
#: ``(filename, lineno, module globals)`` of the user's line, in the context of a job on one of ngp's threads
#: (:func:`job_context`); ``None`` elsewhere.
_SITE = contextvars.ContextVar("ngp_warning_site", default=None)


@contextlib.contextmanager
def quiet(*categories):
    """Within the block, drop the warnings of ``categories`` that ngp raises (:func:`warn`) on this thread and in
    the jobs it hands to ngp's threads (:mod:`ngp._threads` runs them in a copy of the caller's context). Unlike
    ``warnings.catch_warnings``, which swaps the process's filters, other threads' warnings are untouched."""
    token = _QUIET.set(_QUIET.get() + tuple(categories))
    try:
        yield
    finally:
        _QUIET.reset(token)


def real(value, name: str) -> float:
    """A finite real number (bool, strings, complex and arrays of size > 1 are rejected)."""
    if isinstance(value, (bool, np.bool_, str, bytes)) or isinstance(value, complex):
        raise TypeError(f"{name}: expected a real number, got {value!r}")
    if isinstance(value, jax.core.Tracer):  # np.asarray raised JAX's TracerArrayConversionError, naming nothing
        raise TypeError(f"{name}: expected a concrete number, got a traced value (inside jax.grad/jax.jit): this "
                        "function is not differentiable; ngp.log_evidence is, in noise, C_W and C_b")
    if isinstance(value, (numbers.Real, np.floating, np.integer)):
        out = float(value)
    else:
        arr = np.asarray(value) if not isinstance(value, (list, tuple, dict, set)) else None
        if arr is None or arr.shape != () or not np.issubdtype(arr.dtype, np.number) or np.iscomplexobj(arr):
            raise TypeError(f"{name}: expected a real number, got {value!r}")
        out = float(arr)
    if not math.isfinite(out):
        raise ValueError(f"{name}: must be finite, got {out}")
    return out


#: Largest magnitude of a multiplier (``C_W``, ``C_b``, a residual step's ``gamma``, ``xi``, ``Scale``'s ``alpha``): the
#: cumulants take fourth powers of them (``V' = alpha^4 V``, ...), which overflow float64 beyond ~1.2e77 (a bare
#: ``OverflowError`` naming nothing at ``C_W = 1e300``).
MAX_MULTIPLIER = 1e75


def multiplier(value: float, name: str) -> float:
    """``value`` (a float already checked) with ``|value| <= MAX_MULTIPLIER``, else a ``ValueError`` naming ``name``."""
    if abs(value) > MAX_MULTIPLIER:
        raise ValueError(f"{name}: {value:g} is too large: the finite-width cumulants use its fourth power, which "
                         f"overflows float64; at most {MAX_MULTIPLIER:g} in magnitude")
    return value


def positive_float(value, name: str) -> float:
    """A finite real number ``> 0``."""
    value = real(value, name)
    if value <= 0:
        raise ValueError(f"{name}: must be > 0, got {value}")
    return value


def nonneg_float(value, name: str) -> float:
    """A finite real number ``>= 0``."""
    value = real(value, name)
    if value < 0:
        raise ValueError(f"{name}: must be >= 0, got {value}")
    return value


def learning_rate(value, name: str) -> float:
    """A learning-rate factor (``lambda_W``, ``lambda_b``): a finite real number ``>= 0`` at most
    :data:`MAX_MULTIPLIER` (the NTK's statistics take its powers: a bare ``OverflowError`` at ``1e200``)."""
    value = nonneg_float(value, name)
    if value > MAX_MULTIPLIER:
        raise ValueError(f"{name}: {value:g} is too large: the NTK's 1/n statistics use its powers, which overflow "
                         f"float64; at most {MAX_MULTIPLIER:g}")
    return value


def _scalar_array(value, kinds: str) -> bool:
    """Whether ``value`` is a concrete (not traced) 0-d NumPy or JAX array of a dtype kind in ``kinds``."""
    return (not isinstance(value, jax.core.Tracer) and getattr(value, "ndim", None) == 0
            and getattr(getattr(value, "dtype", None), "kind", None) in tuple(kinds))


#: Largest layer width accepted (the largest integer float64 holds exactly; widths enter the 1/n terms as floats, and
#: 2**63 overflowed JAX's integer arguments after the work had run).
MAX_WIDTH = 2**53


def count(value, name: str, *, minimum: int = 1, maximum: int | None = None, what: str = "a positive integer") -> int:
    """An integer ``>= minimum`` (and ``<= maximum`` if given) (Python or NumPy integers, or a concrete 0-d integer
    array such as ``jnp.array(3)``; floats and bools are rejected)."""
    if _scalar_array(value, "iu"):
        value = value.item()
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (numbers.Integral, np.integer)):
        raise TypeError(f"{name}: expected {what}, got {value!r}")
    value = int(value)
    if value < minimum:
        raise ValueError(f"{name}: must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name}: must be <= {maximum}, got {value}")
    return value


def flag(value, name: str) -> bool:
    """A boolean option: ``True`` or ``False`` (NumPy booleans and concrete 0-d boolean arrays too); anything else
    (strings such as ``"no"``, which are truthy, numbers) raises a ``TypeError`` naming ``name``."""
    if _scalar_array(value, "b"):
        value = value.item()
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name}: expected True or False, got {value!r}")
    return bool(value)


def check_seed(value, name: str = "seed") -> int:
    """A PRNG seed: a Python or NumPy integer in ``[0, 2**63)`` (bools, floats, strings and ``None`` are
    rejected with a ``TypeError``, out-of-range values with a ``ValueError``)."""
    value = count(value, name, minimum=0, what="a non-negative integer seed")
    if value >= 2**63:
        raise ValueError(f"{name}: must be < 2**63, got {value}")
    return value


def check_stop(stop, full_cov: bool) -> None:
    """``predict``'s ``stop``: ``None`` or a callable ``stop(done) -> bool``, on the marginal path only."""
    if stop is None:
        return
    if not callable(stop):
        raise TypeError(f"stop: expected a callable stop(done) -> bool, got {stop!r}")
    if full_cov:
        raise ValueError("stop: only for marginal predictions (full_cov=False): the joint covariance needs every "
                         "test point")


def stop_requested(stop, done: int) -> bool:
    """Whether ``predict``'s ``stop`` asks to end after ``done`` test points: ``stop(done)`` must return
    ``True`` or ``False`` (``None``, a function's implicit return, counts as ``False``); any other answer, such
    as a truthy ``"no"`` or an array, is refused (it stopped the prediction)."""
    if stop is None:
        return False
    answer = stop(done)
    if answer is None:
        return False
    try:
        return flag(answer, "stop")
    except TypeError:
        raise TypeError(f"stop: expected stop(done) to return True or False, got {answer!r}") from None


def per_layer(value, n: int, name: str, check, *, what: str = "weight layer") -> tuple:
    """A number (repeated ``n`` times) or a sequence of exactly ``n`` numbers, each passed to ``check``.

    A 0-d array (NumPy or JAX) counts as a number. ``check(value, name) -> value`` validates one
    entry (e.g. :func:`real`, :func:`positive_float`, :func:`count`).
    """
    if isinstance(value, (str, bytes)):
        raise TypeError(f"{name}: expected a number or a sequence of {n} numbers, got {value!r}")
    if isinstance(value, (numbers.Number, np.number)) or getattr(value, "ndim", None) == 0:
        return (check(value, name),) * n
    try:
        seq = list(value)
    except TypeError as exc:
        raise TypeError(f"{name}: expected a number or a sequence of {n} numbers, got {value!r}") from exc
    if len(seq) != n:
        raise ValueError(f"{name}: expected {n} values (one per {what}), got {len(seq)}")
    return tuple(check(v, f"{name}[{i}]") for i, v in enumerate(seq))


def _refuse_masked(X, name: str) -> None:
    """A masked array with masked entries: ``np.asarray`` drops the mask and keeps the values under it."""
    if isinstance(X, np.ma.MaskedArray) and np.ma.is_masked(X):
        raise ValueError(f"{name}: a masked array with {int(np.ma.count_masked(X))} masked entries; the mask would be "
                         "ignored (its values used): drop the masked rows first")


def as_inputs(X, name: str = "X", *, in_dim: int | None = None) -> np.ndarray:
    """Validate an ``(N, n0)`` input array; returns a float64 NumPy copy."""
    if isinstance(X, (str, bytes)):
        raise TypeError(f"{name}: expected a numeric array of shape (N, n0), got a string")
    _refuse_masked(X, name)
    try:
        raw = np.asarray(X)
    except Exception as exc:  # noqa: BLE001 - ragged lists and exotic objects
        raise TypeError(f"{name}: expected a numeric array of shape (N, n0), got {type(X).__name__}") from exc
    if np.iscomplexobj(raw):
        raise TypeError(f"{name}: complex values are not supported (inputs must be real)")
    try:
        arr = np.array(raw, dtype=float)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{name}: expected a numeric array of shape (N, n0), got {type(X).__name__}") from exc
    if arr.ndim != 2:
        raise ValueError(f"{name}: expected shape (N, n0), got shape {arr.shape}")
    if arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ValueError(f"{name}: expected at least one input of at least one feature, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name}: contains non-finite values (nan or inf)")
    if in_dim is not None and arr.shape[1] != in_dim:
        raise ValueError(f"{name}: expected {in_dim} features (the network's in_dim), got {arr.shape[1]}")
    return arr


def as_targets(Y, n: int, out_dim: int, name: str = "Y_train") -> np.ndarray:
    """Validate targets of shape ``(n, out_dim)`` (``(n,)`` accepted when ``out_dim == 1``)."""
    _refuse_masked(Y, name)
    raw = np.asarray(Y) if not isinstance(Y, (str, bytes)) else None
    if raw is None or np.iscomplexobj(raw):
        raise TypeError(f"{name}: expected a real numeric array of shape ({n}, {out_dim})")
    try:
        arr = np.array(raw, dtype=float)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{name}: expected a numeric array of shape ({n}, {out_dim})") from exc
    if arr.ndim == 1 and out_dim == 1:
        arr = arr[:, None]
    if arr.shape != (n, out_dim):
        raise ValueError(
            f"{name}: expected shape ({n}, {out_dim}) = (number of training inputs, network out_dim), "
            f"got {arr.shape}"
        )
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name}: contains non-finite values (nan or inf)")
    return arr


def train_test(net, X_train, Y_train, X_test, noise, jitter=0.0, *, test_required: bool = False):
    """The shared checks of a regression problem.

    Returns ``(XA, XB, Y, noise, jitter)``: float64 arrays ``(N_train, n0)``, ``(N_test, n0)``
    (``XB`` is ``None`` when ``X_test`` is ``None``; a ``TypeError`` naming it when ``test_required``),
    ``(N_train, out_dim)`` and floats.
    """
    if not isinstance(getattr(net, "out_dim", None), (int, np.integer)) or not hasattr(net, "prior"):
        raise TypeError(f"net: expected a network (e.g. ngp.MLP(3, 64), ngp.serial(...)), got {net!r}")
    noise = nonneg_float(noise, "noise")
    jitter = nonneg_float(jitter, "jitter")
    in_dim = getattr(net, "in_dim", None)
    XA = as_inputs(X_train, "X_train", in_dim=in_dim)
    XB = None
    if X_test is None and test_required:
        raise TypeError("X_test: expected a numeric array of shape (N_test, n0), got None")
    if X_test is not None:
        XB = as_inputs(X_test, "X_test", in_dim=in_dim)
        if XA.shape[1] != XB.shape[1]:
            raise ValueError(f"X_test: expected {XA.shape[1]} features like X_train, got {XB.shape[1]}")
    Y = as_targets(Y_train, XA.shape[0], net.out_dim)
    return XA, XB, Y, noise, jitter


def check_x64(what: str) -> None:
    """Warn when JAX runs in float32 (the 1/n corrections need float64)."""
    if not jax.config.jax_enable_x64:
        warn(
            f"ngp: JAX is running in float32 ({what}). The 1/n corrections and kernel solves lose "
            "most of their digits in float32; call jax.config.update('jax_enable_x64', True) "
            "before using ngp.",
            AccuracyWarning,
        )


def float64(fn):
    """Run ``fn`` with JAX in float64 whatever the global ``jax_enable_x64`` flag.

    The 1/n corrections, kernel solves, quadratures and the reference solvers need float64 (in
    float32 the kernel alone carries 1e-7 relative errors that the posterior amplifies by the
    conditioning of the training kernel, and the importance sampler's exact conditioning fails). Every
    public numerical entry point is wrapped, so results are right, and float64, in a float32 session.
    The scope is ``jax.enable_x64`` (thread-local, restored on exit): the global flag is never changed. Called with
    traced arguments (inside the caller's ``jax.grad``/``jax.jit`` of a float32 session) it warns and runs as it is:
    the caller's transformation finishes outside the scope, where float64 values do not fit its float32 ones.
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if jax.config.jax_enable_x64:
            return fn(*args, **kwargs)
        # a float32 session: say so (arrays the user builds are float32), then compute in float64
        check_x64(getattr(fn, "__qualname__", "ngp"))
        if any(isinstance(v, jax.core.Tracer) for v in jax.tree_util.tree_leaves((args, kwargs))):
            return fn(*args, **kwargs)
        with jax.enable_x64(True):
            return fn(*args, **kwargs)

    return wrapper


def memory_bytes(value, name: str = "max_memory") -> int:
    """A memory budget in bytes (a number ``>= 1``; a fraction is rounded down: 0.5 became 0 bytes silently)."""
    value = positive_float(value, name)
    if value < 1:
        raise ValueError(f"{name}: a number of bytes, at least 1, got {value!r}")
    return int(value)


def pad_to(x, rows: int) -> np.ndarray:
    """``x`` (NumPy, rows on axis 0) with copies of its first row appended up to ``rows`` rows: fixed call shapes,
    each padded row a valid input for any function of a row (the caller drops their results)."""
    x = np.asarray(x)
    return np.concatenate([x, np.repeat(x[:1], rows - x.shape[0], axis=0)])


def device(x, dtype=None):
    """``jnp.asarray(x, dtype)`` without compiling: JAX (0.10) converts a NumPy array with a small compiled
    program per shape and dtype, ``jax.device_put`` takes it (the same dtype canonicalisation). A writeable array
    is copied first: JAX's CPU backend uses a 64-byte-aligned NumPy buffer in place even with ``may_alias=False``
    (jax-ml/jax#37830), and a later write to it would change the JAX array; a read-only one (a cached table) is
    read in place. Other inputs (JAX arrays, tracers, scalars, lists) go to ``jnp.asarray``."""
    if isinstance(x, np.ndarray):
        x = x if dtype is None else np.asarray(x, dtype)
        if x.flags.writeable:
            x = _aligned_copy(x)
        return jax.device_put(x, may_alias=False)
    return jnp.asarray(x, dtype)


def _aligned_copy(x: np.ndarray) -> np.ndarray:
    """A copy of ``x`` that JAX reads in place (:func:`ngp._cache.aligned_empty`): one copy in all."""
    if x.nbytes < 1024:
        return np.array(x)
    out = aligned_empty(x.shape, x.dtype)
    out[...] = x
    return out


def device_if(shared: bool):
    """:func:`device` when several compiled calls read an array (one transfer serves them all), else
    ``np.asarray``: a jitted call takes a small NumPy argument for about 0.03 ms more than a device array,
    where a ``device_put`` costs 0.1-0.2 ms (``docs/posterior.md``, "Against NUTS")."""
    return device if shared else np.asarray
