"""Small built-in data sets (shipped with the package; nothing is downloaded)."""

from __future__ import annotations

import importlib.resources

import numpy as np

from ._validate import check_seed, count, nonneg_float

__all__ = ["load_terrain", "synthetic_1d", "standardize"]


def load_terrain() -> tuple[np.ndarray, np.ndarray]:
    """Real terrain elevations: 572 points of the Jacksboro fault DEM (USGS, via matplotlib's samples).

    Returns:
        ``X`` of shape ``(572, 2)`` (longitude, latitude in degrees) and ``y`` of shape
        ``(572,)`` (elevation in metres).
    """
    text = importlib.resources.files("ngp").joinpath("data/jacksboro_elevation.csv").read_text()
    rows = [line for line in text.splitlines() if line and not line.startswith("#")]
    data = np.array([[float(v) for v in line.split(",")] for line in rows[1:]])
    return data[:, :2], data[:, 2]


def synthetic_1d(n: int = 8, *, noise: float = 0.01, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A 1-D toy regression problem: ``y = sin(2x) + 0.3 x`` plus Gaussian noise of variance ``noise``.

    ``n >= 1`` points, ``noise >= 0`` (finite), ``seed`` a non-negative integer (``None``: fresh randomness).
    Returns ``X`` of shape ``(n, 1)`` on ``[-2, 2]`` and ``y`` of shape ``(n,)``.
    """
    n = count(n, "n")
    noise = nonneg_float(noise, "noise")
    rng = np.random.default_rng(None if seed is None else check_seed(seed))
    X = np.sort(rng.uniform(-2, 2, size=n))[:, None]
    y = np.sin(2 * X[:, 0]) + 0.3 * X[:, 0] + np.sqrt(noise) * rng.normal(size=n)
    return X, y


def standardize(train: np.ndarray, *others: np.ndarray):
    """Centre and scale columns by the training mean and standard deviation.

    Overflow-safe: each column is first divided by its largest training magnitude, so values up
    to the float64 limit (``1e300``) are standardised, not turned into ``0`` or ``nan``. A constant
    column (one whose spread is one or two units in the last place of its values) is only centred (``std`` 1).

    Returns the transformed ``train`` followed by the transformed ``others``, and the
    ``(mean, std)`` used (``x_std = (x - mean) / std``).

    Raises:
        TypeError: ``train`` or one of ``others`` is not an array of real numbers.
        ValueError: ``train`` is not 1-D or 2-D with at least one row; one of ``others`` has another number of
            dimensions or of columns; non-finite values (nan or inf).
    """
    arrays = []
    columns = lambda b: b.shape[1] if b.ndim == 2 else 1  # noqa: E731  ((n,) and (n, 1) mix, as before)
    for name, a in [("train", train)] + [(f"others[{i}]", o) for i, o in enumerate(others)]:
        try:
            if a is None or np.iscomplexobj(a) or isinstance(a, (str, bytes)):
                raise TypeError
            a = np.asarray(a, dtype=float)
        except (TypeError, ValueError):
            raise TypeError(f"{name}: expected an array of real numbers, got {type(a).__name__}") from None
        if not arrays and (a.ndim not in (1, 2) or a.shape[0] == 0):
            raise ValueError(f"train: expected a 1-D or 2-D array with at least one row, got shape {a.shape}")
        if arrays and (a.ndim not in (1, 2) or columns(a) != columns(arrays[0])):
            want = f"(rows, {arrays[0].shape[1]})" if arrays[0].ndim == 2 else "(rows,)"
            raise ValueError(f"{name}: expected shape {want} "
                             f"like train's {arrays[0].shape}, got {a.shape}")
        if not np.all(np.isfinite(a)):
            raise ValueError(f"{name}: contains non-finite values (nan or inf)")
        arrays.append(a)
    train, others = arrays[0], arrays[1:]
    mag = np.max(np.abs(train), axis=0)
    mag = np.where((mag > 0) & np.isfinite(mag), mag, 1.0)
    t = train / mag
    mu = t.mean(axis=0)
    sd = t.std(axis=0)
    # constant: a spread at rounding level of the scaled column (|t| <= 1); only centred (std 1 in the original
    # units). Dividing by it blew a one-ulp difference up to unit size, and 1 / mag overflowed below 5.6e-309.
    const = sd <= 2 * np.finfo(float).eps  # one or two ulps (timestamps of 1.7e18 + 1000 k are ~8 eps: scaled)
    sd, unit = np.where(const, 1.0, sd), np.where(const, mag, 1.0)  # unit: no overflow in the unused branch

    def scaled(a):
        return np.where(const, (a - mu) * unit, (a - mu) / sd)

    out = [scaled(t)] + [scaled(np.asarray(o, dtype=float) / mag) for o in others]
    return (*out, (mu * mag, np.where(const, 1.0, sd * mag)))
