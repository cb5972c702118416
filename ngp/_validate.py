"""Input checking shared by the public functions (errors name the argument)."""

from __future__ import annotations

import math
import numbers
import warnings

import jax
import numpy as np

__all__ = ["as_inputs", "as_targets", "positive_float", "nonneg_float", "check_x64"]


def as_inputs(X, name: str = "X", *, in_dim: int | None = None) -> np.ndarray:
    """Validate an ``(N, n0)`` input array; returns a float64 NumPy copy."""
    try:
        arr = np.asarray(X, dtype=float)
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
    try:
        arr = np.asarray(Y, dtype=float)
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


def _as_real(value, name):
    if isinstance(value, bool) or not isinstance(value, (numbers.Real, np.floating, np.integer)):
        try:
            value = float(np.asarray(value))
        except (TypeError, ValueError) as exc:
            raise TypeError(f"{name}: expected a real number, got {value!r}") from exc
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name}: must be finite, got {value}")
    return value


def positive_float(value, name: str) -> float:
    value = _as_real(value, name)
    if value <= 0:
        raise ValueError(f"{name}: must be > 0, got {value}")
    return value


def nonneg_float(value, name: str) -> float:
    value = _as_real(value, name)
    if value < 0:
        raise ValueError(f"{name}: must be >= 0, got {value}")
    return value


def check_x64(what: str) -> None:
    """Warn once per call site when JAX runs in float32."""
    if not jax.config.jax_enable_x64:
        warnings.warn(
            f"ngp: JAX is running in float32 ({what}). The 1/n corrections and kernel solves lose "
            "most of their digits in float32; call jax.config.update('jax_enable_x64', True) "
            "before using ngp.",
            RuntimeWarning,
            stacklevel=3,
        )
