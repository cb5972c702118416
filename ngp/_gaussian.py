"""Gaussian expectations of activation products.

Three numerical paths, all in float64 when x64 is enabled:

* :func:`expect_1d`: ``E[f(sqrt(k) x)]`` by Gauss-Hermite quadrature with ``m`` nodes.
* :func:`pair_matrix`: ``<f(z_a) g(z_b)>`` for *all* pairs of a kernel matrix at once,
  by the Mehler (Hermite) expansion
  ``<f(z_a) g(z_b)> = sum_k c_k^f(a) c_k^g(b) rho_ab^k``, where ``c_k^f(a)`` are the
  orthonormal Hermite coefficients of ``x -> f(sqrt(K_aa) x)`` and
  ``rho_ab = K_ab / sqrt(K_aa K_bb)``. Cost ``O(N m k + N^2 k)`` instead of
  ``O(N^2 m^2)`` for a 2-D rule. Diagonal entries use the 1-D rule.
* :func:`pair_gh`: elementwise 2-D Gauss-Hermite on the 2x2 block (Cholesky
  parametrisation), an independent cross-check of the Mehler path.

Accuracy (float64, measured in ``tests/test_gaussian.py`` against scipy adaptive
quadrature): for tanh, gelu, swish, softplus, sigmoid the automatic orders
(:func:`auto_orders`) give 1e-10 relative or better at any correlation
``|rho| <= 1`` for variances up to ``K ~ 36``; beyond that a warning says that digits
are lost (standardise the inputs).
Kinked functions (relu-like callables) converge only algebraically; named
piecewise-linear activations use closed forms instead.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools

import jax
import jax.numpy as jnp
import numpy as np
from scipy.special import roots_hermitenorm

from ._cache import aligned_zeros, byte_lru, frozen_lru
from ._validate import device, device_if, pad_to, quiet, warn
from ._warnings import AccuracyWarning

__all__ = ["gauss_hermite", "expect_1d", "hermite_coefficients", "hermite_tables", "pair_matrix", "pair_gh",
           "concrete_max", "auto_orders", "mehler_series", "padded_rule", "finite_rule", "pruned_tensor_rule", "bucket",
           "kernel_bucket", "pad_rows", "probe_inputs", "check_hand_orders"]

#: Smallest number of Hermite terms in the Mehler series.
MEHLER_TERMS = 200
#: Smallest number of 1-D Gauss-Hermite nodes (diagonals, Hermite coefficients).
NODES_1D = 500
#: Largest automatic orders; beyond the variance they cover a warning is issued.
MAX_TERMS, MAX_NODES = 3000, 6000
#: Largest variance for which the automatic orders reach ~1e-12 for tanh-like activations.
K_ACCURATE = (MAX_TERMS - 100) / 80.0


def concrete_max(x) -> float:
    """``max(x)`` as a Python float, also while ``x`` is being differentiated.

    The quadrature orders are static; they are chosen from the largest variance. Under
    ``jax.grad``/``jax.jvp`` (forward tracing) the primal value is known and used; under
    ``jax.jit`` it is not, and the largest orders are used (``inf`` selects them).
    """
    x = jnp.max(x)
    while isinstance(x, jax.core.Tracer):
        x = getattr(x, "primal", None)  # JVP tracers carry their primal value
        if x is None:
            return float("inf")
    return float(x)


def auto_orders(kmax: float) -> tuple[int, int]:
    """Mehler terms and 1-D nodes for variances up to ``kmax``.

    ``f(sqrt(K) x)`` sharpens as ``K`` grows (tanh approaches a step), so both the
    Hermite tail and the 1-D rule need more points: ``terms ~ 80 K + 100``,
    ``nodes ~ 100 K + terms`` (measured for tanh: relative error ~1e-12 at K <= 10).
    """
    if not np.isfinite(kmax):  # unknown (traced) or overflowing variance: the largest orders
        return MAX_TERMS, MAX_NODES
    kmax = float(kmax)
    terms = int(min(MAX_TERMS, max(MEHLER_TERMS, 80 * kmax + 100)))
    nodes = int(min(MAX_NODES, max(NODES_1D, 100 * kmax + terms)))
    if kmax > K_ACCURATE:
        warn(
            f"ngp: a pre-activation variance reaches {kmax:.3g}; the Mehler series and 1-D rule are capped "
            f"at {terms} terms / {nodes} nodes and lose digits beyond K ~ {K_ACCURATE:.0f}. "
            "Standardise the inputs or lower C_W/C_b.",
            AccuracyWarning,
        )
    return terms, nodes


@frozen_lru(64)
def _gh_numpy(m: int) -> tuple[np.ndarray, np.ndarray]:
    x, w = roots_hermitenorm(m)
    w = w / w.sum()  # probability weights of N(0, 1)
    return x, w


def gauss_hermite(m: int) -> tuple[np.ndarray, np.ndarray]:
    """Nodes and probability weights of the ``m``-point rule for ``N(0, 1)``.

    ``sum(w * f(x))`` approximates ``E[f(X)]``, ``X ~ N(0, 1)``; exact for
    polynomials of degree ``< 2m``.
    """
    if int(m) < 1:
        raise ValueError(f"gauss_hermite: number of nodes must be >= 1, got {m}")
    return _gh_numpy(int(m))


@frozen_lru(16)
def pruned_tensor_rule(u: int, m: int, cutoff: float = 1e-15):
    """The ``m``-point Gauss-Hermite tensor rule in ``u`` dimensions without the nodes whose weight is below
    ``cutoff`` times the largest: nodes ``(q, u)`` and weights ``(q,)`` in C order of the tensor grid. Only
    the ``m**u`` weights are formed on the full grid, not ``2 u`` full grids of nodes and weights."""
    x, w = gauss_hermite(m)
    W = functools.reduce(np.multiply.outer, [w] * u)  # (m,) * u tensor weights
    keep = np.nonzero(W > cutoff * W.max())
    return np.stack([x[i] for i in keep], axis=1), W[keep]


@frozen_lru(16)
def finite_rule(nodes: int):
    """:func:`gauss_hermite` ``(nodes)`` with the nodes whose weight underflows to 0 (from about 400 nodes on)
    moved to 0: they add exact zeros either way, but at them ``f(sqrt(k) x)`` may overflow for large ``k``, and
    ``0 * inf`` is NaN (e.g. ``<e^{2z}>`` at ``k = 13.4`` with 2512 nodes)."""
    x, w = gauss_hermite(nodes)
    return np.where(w > 0, x, 0.0), w


def expect_1d(f, k, *, nodes: int = NODES_1D):
    """``E[f(sqrt(k) X)]`` for ``X ~ N(0,1)``, elementwise over the array ``k`` (``k >= 0``)."""
    dt = jnp.result_type(float)
    x, w = (device(a, dtype=dt) for a in finite_rule(nodes))
    k = device(k)
    z = jnp.sqrt(jnp.maximum(k, 0.0))[..., None] * x
    return jnp.sum(w * f(z), axis=-1)


def hermite_tables(terms: int = MEHLER_TERMS, nodes: int = NODES_1D) -> tuple:
    """``(x, sqrt(w), psi)`` of :func:`hermite_coefficients` (``psi``: orders ``0..terms``, ``(terms + 1, nodes)``
    padded), as device arrays: passed to a compiled function as arguments (``tables=``), they are not captured
    in it as constants (151 MB for the capped orders, copied into every program that used them)."""
    dt = jnp.result_type(float)  # float32 unless x64 is enabled
    x, _, sw, psi = _padded_tables(int(terms), int(nodes))
    # the first terms + 1 rows: a contiguous view of the cached table, read in place
    return tuple(device(a, dtype=dt) for a in (x, sw, psi[: int(terms) + 1]))


def hermite_coefficients(f, k, *, terms: int = MEHLER_TERMS, nodes: int = NODES_1D, tables=None):
    """Orthonormal Hermite coefficients of ``x -> f(sqrt(k) x)``.

    Args:
        f: elementwise function.
        k: array of variances, shape ``(...)``.
        tables: :func:`hermite_tables` ``(terms, nodes)`` (default: built here; inside a compiled
            function, pass them in as arguments instead).

    Returns:
        Array ``(..., terms + 1)`` with ``c_j = E[f(sqrt(k) X) He_j(X)] / sqrt(j!)``.
    """
    x, sw, psi = hermite_tables(terms, nodes) if tables is None else tables
    k = device(k)
    z = jnp.sqrt(jnp.maximum(k, 0.0))[..., None] * x  # padded nodes: x = 0 with weight 0
    return (f(z) * sw) @ psi.T


def integer_power(f, p):
    """``f ** p`` elementwise for integer powers ``p`` in 0..4 given as an array (broadcast against ``f``),
    by products (``0 ** 0 = 1``): one compiled program serves every power pattern."""
    f2 = f * f
    return jnp.where(p == 0, 1.0, jnp.where(p == 1, f, jnp.where(p == 2, f2, jnp.where(p == 3, f2 * f, f2 * f2))))


def _correlation(K):
    d = jnp.sqrt(jnp.maximum(jnp.diagonal(K), 0.0))
    denom = d[:, None] * d[None, :]
    ok = denom > 0
    rho = jnp.where(ok, K / jnp.where(ok, denom, 1.0), 0.0)
    return jnp.clip(rho, -1.0, 1.0)


def pair_matrix(f, g, K, *, terms: int | None = None, nodes: int | None = None, diag=None):
    """``M[a, b] = <f(z_a) g(z_b)>`` over ``z ~ N(0, K)`` for all pairs (Mehler series).

    Args:
        f, g: elementwise functions.
        K: ``(N, N)`` symmetric positive semi-definite kernel.
        terms, nodes: Mehler series length and 1-D rule size; ``None`` chooses them
            from the largest variance (:func:`auto_orders`).
        diag: optional elementwise function ``h`` with ``h(z) = f(z) g(z)`` used for
            the diagonal (defaults to ``f(z) g(z)``), integrated by the 1-D rule.

    Returns:
        ``(N, N)`` array. Not symmetric unless ``f is g``.
    """
    return _pair_call(lambda Kx, *tables: (_pair_matrix_jit(f, g, diag, Kx, *tables),), K, terms, nodes)[0]


def pair_matrices(fgs, K, *, terms: int | None = None, nodes: int | None = None):
    """:func:`pair_matrix` for every pair ``(f, g)`` of the tuple ``fgs``, as one compiled program
    (one compilation for the whole set instead of one per pair). Returns a tuple of ``(N, N)`` arrays."""
    fgs = tuple((f, g) for f, g in fgs)
    return _pair_call(lambda Kx, *tables: _pair_matrices_jit(fgs, Kx, *tables), K, terms, nodes)


def _pair_call(run, K, terms, nodes):
    """``run(K, *tables)`` with the Mehler tables of ``terms``/``nodes`` (``None``: from the largest variance)."""
    traced = isinstance(K, jax.core.Tracer)
    K = device(K) if traced else np.asarray(K)
    given = _TRACED_TABLES.get() if traced else None
    if terms is None or nodes is None:
        kmax = concrete_max(jnp.diagonal(K)) if traced else float(np.max(np.diagonal(K), initial=-np.inf))
        if given is not None and terms is None and nodes is None and not np.isfinite(kmax):
            # variances unknown at trace time: the orders of the largest one, chosen in the program
            idx = jnp.searchsorted(jnp.asarray(SWITCH_VARIANCES), jnp.max(jnp.diagonal(K)))
            return jax.lax.switch(idx, [functools.partial(_run_with, run, t) for t in given], K)
        t_auto, n_auto = auto_orders(kmax)
        terms = t_auto if terms is None else terms
        nodes = n_auto if nodes is None else nodes
    dt = jnp.result_type(float)
    put = device_if(traced)  # a concrete kernel: one call
    tables = tuple(put(t, dtype=dt) for t in _padded_tables(int(terms), int(nodes)))
    if traced:
        return run(K, *tables)
    # concrete kernel: pad it with zero rows to a bucketed size (entries are computed independently,
    # so the N x N block is unchanged) so that one compilation serves every N of the bucket
    N = K.shape[0]
    Kp = np.zeros((kernel_bucket(N), kernel_bucket(N)), dtype=jnp.result_type(float))
    Kp[:N, :N] = K
    return tuple(device(np.asarray(M)[:N, :N]) for M in run(Kp, *tables))


#: Largest difference between a hand-set rule and the automatic one, relative to the largest entry of the matrix,
#: before :func:`check_hand_orders` warns (the automatic orders reach ~1e-12-1e-10 relative, ``docs/accuracy.md``).
HAND_ORDERS_RTOL = 1e-10


def probe_inputs(K, count: int = 8) -> np.ndarray:
    """At most ``count`` input indices of the concrete kernel ``K`` ``(N, N)`` on which a hand-set rule is compared
    with the automatic one (:func:`check_hand_orders`): the largest variances (the slowest-converging series and
    1-D rules) and the most correlated pairs (the Mehler series' slowest terms, ``|rho| -> 1``)."""
    K = np.asarray(K, dtype=float)
    N = K.shape[0]
    if N <= count:
        return np.arange(N)
    kd = np.diagonal(K)
    pick = list(np.argsort(-kd, kind="stable")[: count // 2])
    d = np.sqrt(np.maximum(kd, 0.0))
    with np.errstate(divide="ignore", invalid="ignore"):
        rho = np.where(np.outer(d, d) > 0, np.abs(K) / np.outer(d, d), 0.0)
    np.fill_diagonal(rho, -1.0)
    top = np.argpartition(-rho, 2 * count, axis=None)[: 2 * count + 1]  # the most correlated pairs, O(N^2)
    for flat in top[np.argsort(-rho.flat[top], kind="stable")]:
        for i in divmod(int(flat), N):
            if i not in pick:
                pick.append(i)
        if len(pick) >= count:
            break
    return np.sort(np.asarray(pick[:count], dtype=np.int64))


def check_hand_orders(values, reference, idx, K, *, given: str, what: str) -> None:
    """Warn (:class:`AccuracyWarning`) when matrices computed with a hand-set rule (``values``: a tuple of ``(N, N)``
    arrays, read at the inputs ``idx`` of :func:`probe_inputs`) differ from ``reference`` (the same matrices on
    ``K[idx][:, idx]`` by the automatic rule) by more than :data:`HAND_ORDERS_RTOL` of the largest reference entry:
    their numerical error is not in ``K1_error``/``V_error`` (which estimate the four-point quadrature's)."""
    kd = np.diagonal(np.asarray(K, dtype=float))
    worst, where = 0.0, None
    for M, R in zip(values, reference):
        M, R = np.asarray(M, dtype=float)[np.ix_(idx, idx)], np.asarray(R, dtype=float)
        scale = np.max(np.abs(R), initial=0.0)
        if not scale > 0:
            continue
        err = np.abs(M - R) / scale
        err = np.where(np.isnan(err), np.inf, err)
        if err.max() > worst:
            worst = float(err.max())
            where = tuple(int(idx[i]) for i in np.unravel_index(int(np.argmax(err)), err.shape))
    if worst > HAND_ORDERS_RTOL:
        a, b = where
        warn(f"ngp: {given} differs from the automatic rule's {what} by {worst:.1e} of the largest entry (inputs "
             f"{a} and {b}, variances {kd[a]:.3g} and {kd[b]:.3g}); K, K1 and V are off by about as much or more, "
             "and K1_error/V_error (the four-point quadrature's estimates) do not include it. Leave the option out "
             "for the automatic rule (about 1e-10 relative, docs/accuracy.md)", AccuracyWarning)


def _run_with(run, tables, K):
    return run(K, *tables)


_TRACED_TABLES = contextvars.ContextVar("traced_mehler_tables", default=None)

#: Variance buckets of :func:`switch_tables`: a traced kernel whose largest variance is at most the ``i``-th runs the
#: orders of :func:`auto_orders` at that bound, beyond the last the capped orders.
SWITCH_VARIANCES = (1.25, 4.0, 12.0)


def switch_tables() -> tuple:
    """The Mehler tables (NumPy) of the orders of :data:`SWITCH_VARIANCES` and of the capped orders, in that
    order."""
    with quiet(AccuracyWarning):  # the bounds are not variances of a kernel: no warning about them
        orders = [auto_orders(k) for k in SWITCH_VARIANCES] + [(MAX_TERMS, MAX_NODES)]
    return tuple(_padded_tables(t, n) for t, n in orders)


@contextlib.contextmanager
def traced_mehler_tables(tables):
    """Inside a ``jax.jit`` trace, where the variances are unknown: the Mehler series with automatic orders picks
    in the program the orders of the kernel's largest variance (``jax.lax.switch`` over :data:`SWITCH_VARIANCES`),
    reading ``tables`` (:func:`switch_tables`, passed in as arguments of the compiled function) instead of running
    the capped orders with their table a constant of the program."""
    token = _TRACED_TABLES.set(tuple(tuple(t) for t in tables))
    try:
        yield
    finally:
        _TRACED_TABLES.reset(token)


def bucket(m: int, smallest: int) -> int:
    """The least of ``smallest * 2^k`` and ``1.5 smallest * 2^k`` that is ``>= m`` (array sizes shared by
    many calls, so that each is compiled once)."""
    b = smallest
    while b < m:
        if 3 * b // 2 >= m:
            return 3 * b // 2
        b *= 2
    return b


#: Up to this many inputs the kernels' compiled shapes are powers of 2 (:func:`kernel_bucket`).
KERNEL_POW2_MAX = 256


def kernel_bucket(N: int) -> int:
    """The padded size of a concrete kernel of ``N`` inputs (the pair matrices, the one-dimensional derivatives,
    the dense layers' kernels): a power of 2, at least 32, up to :data:`KERNEL_POW2_MAX`, then :func:`bucket`
    ``(N, 32)``. Below that bound a call costs milliseconds and a compilation about 0.15 s, so one program per
    doubling (not two, as the 1.5x steps of :func:`bucket`) is cheaper for a prediction at a new number of
    test points (``docs/getting-started.md``, "Within a process")."""
    if N <= KERNEL_POW2_MAX:
        return max(32, 1 << max(0, int(N) - 1).bit_length())
    return bucket(N, 32)


def pad_rows(x, smallest: int) -> np.ndarray:
    """``x`` (NumPy, rows on axis 0) padded to :func:`bucket` ``(len(x), smallest)`` rows with copies of
    its first row (valid inputs for any function of a row; the caller drops the padded results)."""
    return pad_to(x, bucket(len(x), smallest))


@frozen_lru(64)
def padded_rule(nodes: int):
    """``(x, w)`` of the ``nodes``-point rule (:func:`finite_rule`) zero-padded to :func:`bucket` ``(nodes, 256)``
    entries (padded nodes at 0 with weight 0): one compiled program serves every order of the bucket."""
    nb = bucket(nodes, 256)
    x, w = finite_rule(nodes)
    xp, wp = aligned_zeros(nb), aligned_zeros(nb)
    xp[:nodes], wp[:nodes] = x, w
    return xp, wp  # NumPy (cached arrays must not be created inside a trace)


#: Bytes of Mehler tables kept (:func:`_padded_tables`): the capped orders' table (151 MB) and a few smaller ones.
TABLE_BYTES = 256 * 2**20


@byte_lru(TABLE_BYTES)
def _padded_tables(terms: int, nodes: int):
    """The ``nodes``-point rule ``(x, w)``, ``sqrt(w)`` and the orthonormal Hermite functions
    ``psi[k, i] = sqrt(w_i) h_k(x_i)`` of orders ``0..terms`` (stable recurrence), zero-padded to bucketed
    sizes: padded nodes have weight 0 and padded orders coefficient 0, so sums over them add exact zeros
    (the Horner recursion starts at the highest order and stays 0 through the padded ones). Cached up to
    :data:`TABLE_BYTES` (one copy: the recurrence writes into the padded table)."""
    xp, wp = padded_rule(nodes)
    x, w = xp[:nodes], wp[:nodes]  # the rule itself, before its padding
    tb, nb = bucket(terms + 1, 256), xp.shape[0]
    swp, psip = aligned_zeros(nb), aligned_zeros((tb, nb))  # read in place by JAX
    sw = swp[:nodes]
    sw[:] = np.sqrt(w)
    psi = psip[:, :nodes]
    psi[0] = sw
    if terms >= 1:
        psi[1] = x * sw
    for k in range(1, terms):
        psi[k + 1] = (x * psi[k] - np.sqrt(k) * psi[k - 1]) / np.sqrt(k + 1)
    return xp, wp, swp, psip


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _pair_matrix_jit(f, g, diag, K, x, w, sw, psi):
    return _pair_matrix_body(f, g, diag, K, x, w, sw, psi)


@functools.partial(jax.jit, static_argnums=(0,))
def _pair_matrices_jit(fgs, K, x, w, sw, psi):
    """:func:`_pair_matrix_jit` for every ``(f, g)`` of ``fgs`` in one compiled program."""
    return tuple(_pair_matrix_body(f, g, None, K, x, w, sw, psi) for f, g in fgs)


def _pair_matrix_body(f, g, diag, K, x, w, sw, psi):
    kd = jnp.diagonal(K)
    z = jnp.sqrt(jnp.maximum(kd, 0.0))[:, None] * x  # (N, nodes)
    cf = (f(z) * sw) @ psi.T  # orthonormal Hermite coefficients (hermite_coefficients), (N, terms + 1)
    cg = cf if g is f else (g(z) * sw) @ psi.T
    acc = mehler_series(cf[None], cg[None], _correlation(K))[0]
    h = diag if diag is not None else _Product(f, g)
    n = K.shape[0]
    return acc.at[jnp.arange(n), jnp.arange(n)].set(jnp.sum(w * h(z), axis=-1))  # expect_1d


#: Rows per tile of :func:`mehler_series`: a tile's accumulator stays in cache through all the terms, where a
#: step over the whole matrix is memory-bound (``docs/accuracy.md``, "The Mehler series": ``benchmarks/kernel.py``,
#: tanh depth 10 at 1000 inputs 0.61 s against 0.89 s).
MEHLER_TILE = 8


def mehler_series(A, B, rho, *, tile: int = MEHLER_TILE):
    """``M[i, x, y] = sum_k A[i, x, k] B[i, y, k] rho[x, y]^k``: ``A`` (m, Nx, T), ``B`` (m, Ny, T), ``rho`` (Nx, Ny)
    -> (m, Nx, Ny). Horner in ``rho`` from the highest order, over tiles of ``tile`` rows (``Nx`` padded to a
    multiple): every entry runs the same operations in the same order as one loop over the whole matrix."""
    m, Nx, T1 = A.shape
    pad = (-Nx) % tile
    A = jnp.pad(A, ((0, 0), (0, pad), (0, 0)))
    rho = jnp.pad(rho, ((0, pad), (0, 0)))
    nt = (Nx + pad) // tile
    At = jnp.moveaxis(A.reshape(m, nt, tile, T1), 1, 0)  # (nt, m, tile, T1)
    Bk = jnp.moveaxis(B, 2, 0)[::-1]  # (T1, m, Ny), highest order first

    def one(args):
        a, r = args

        def step(acc, c):
            ak, bk = c
            return acc * r + ak[:, :, None] * bk[:, None, :], None

        acc0 = jnp.zeros((m, tile, rho.shape[1]), rho.dtype)
        acc, _ = jax.lax.scan(step, acc0, (jnp.moveaxis(a, 2, 0)[::-1], Bk))
        return acc

    out = jax.lax.map(one, (At, rho.reshape(nt, tile, -1)))  # (nt, m, tile, Ny)
    return jnp.moveaxis(out, 0, 1).reshape(m, nt * tile, -1)[:, :Nx]


@functools.lru_cache(maxsize=256)
def _Product(f, g):
    return lambda z: f(z) * g(z)


@functools.partial(jax.jit, static_argnames=("f", "g", "nodes"))
def pair_gh(f, g, kaa, kbb, kab, *, nodes: int = 80):
    """``<f(z_a) g(z_b)>`` by a 2-D ``nodes x nodes`` Gauss-Hermite rule (elementwise).

    Cholesky parametrisation ``z_a = sqrt(kaa) x``, ``z_b = (kab/sqrt(kaa)) x +
    sqrt(kbb - kab^2/kaa) y``. Independent of the Mehler path; used to cross-check it.
    """
    x, w = gauss_hermite(nodes)
    kaa, kbb, kab = jnp.broadcast_arrays(*map(jnp.asarray, (kaa, kbb, kab)))
    l11 = jnp.sqrt(jnp.maximum(kaa, 0.0))
    safe = jnp.where(l11 > 0, l11, 1.0)
    l21 = jnp.where(l11 > 0, kab / safe, 0.0)
    l22 = jnp.sqrt(jnp.maximum(kbb - l21 * l21, 0.0))
    xa = x[:, None]
    xb = x[None, :]
    za = l11[..., None, None] * xa
    zb = l21[..., None, None] * xa + l22[..., None, None] * xb
    ww = w[:, None] * w[None, :]
    return jnp.sum(ww * f(za) * g(zb), axis=(-2, -1))
