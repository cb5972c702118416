"""Matrix-free finite-width posterior for many training points (docs/matrix-free.md).

The first-order (1/n) posterior mean, marginal variances and log evidence of docs/theory.md
(finite-width posterior section) contract the output vertex ``V`` only with training-space
objects. ``V`` is never formed. Instead the *linearised stochastic metric* is simulated:

    delta^(l+1) = xi^(l) + sqrt(n_l / n_{l-1}) J^(l) delta^(l),
    xi^(l)      = C_W^(l+1) (s s^T - E[s s^T]),   s = sigma(z),  z ~ N(0, K^(l)),

a random symmetric matrix with ``E[delta^(L) (x) delta^(L)] = V^(L)`` exactly (the layer
recursion of ``V``; ``J`` is the sparse Jacobian of the kernel map). Every contraction of
``V`` in the posterior is ``E[f(delta, delta)]`` for a bilinear ``f`` and is estimated by
Monte Carlo over Gaussian pre-activations (no weights are drawn). Each source layer ``l`` is
sampled independently (no cross-layer terms). For one source ``l`` the output-layer
fluctuation is, entry by entry,

    delta_xy = T_xy s_x s_y + U_xy s_x^2 + U_yx s_y^2 + c_xy     (U_xx = 0, T_xx = d_x)

with deterministic coefficient matrices ``T, U, c`` obtained by pushing ``(C_W, 0, -C_W E[ss])``
through the Jacobians of the layers above (``O(N^2)`` per layer, all elementwise). Per sample
every contraction is then a few matrix-vector products: ``O(N^2)`` per sample, batched into
matrix-matrix products. Test points enter through their conditional law given the training
pre-activations: ``delta`` is at most quadratic in a test row, so only ``E[sigma(z_b)^k | z_A]``,
``k <= 4`` (one-dimensional integrals) are needed. Contractions with ``Kt^-1`` on both sides
of two ``delta`` factors use a random probe ``omega`` with ``E[omega omega^T] = Kt^-1``.

``K1`` (the 1/n kernel correction) needs ``V`` only on pairs of inputs; it is computed exactly
in ``O(N^2)`` per layer from the 2x2-block restriction of the recursions.

Shapes: ``N_A`` training inputs, ``N_B`` test inputs, ``n_L`` outputs (columns of ``Y``).
Per-layer kernels are given as blocks ``(K_AA (N_A, N_A), K_BA (N_B, N_A), k_B (N_B,))``.
Everything is float64 (enable ``jax_enable_x64``).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np

from ._activations import Activation
from ._linalg import check_conditioning, gaussian_log_evidence
from ._gaussian import auto_orders, expect_1d, gauss_hermite, hermite_coefficients, hermite_tables, mehler_series
from ._validate import MAX_WIDTH, RCOND_MIN, check_x64, count, device
from ._warnings import ExpansionWarning
from ._validity import ETA_WARN, Validity, expansion_validity

__all__ = [
    "MatrixFreePosterior",
    "matrix_free_posterior",
    "kernel_blocks",
    "finite_width_blocks",
    "validity", "regime_warning", "EPS_MAX", "ETA_MAX",
    "DEFAULT_SAMPLES",
]

#: Default number of Monte-Carlo samples (per source layer).
DEFAULT_SAMPLES = 32768
#: Default number of leading eigen-directions of each layer's training kernel driven by
#: scrambled Sobol points (randomised QMC; the remaining directions are plain Monte Carlo).
QMC_DIMS = 32
#: Default number of independent batches (the standard errors come from their spread).
DEFAULT_BATCHES = 32
#: Relative eigenvalue cutoff for the square root of a layer's training kernel.
EIG_CUTOFF = 1e-12
#: Gauss-Hermite nodes for the conditional test moments of smooth activations.
COND_NODES = 48
#: Gauss-Legendre nodes per smooth piece of the angular integrals (relu family).
ANGULAR_NODES = 24


# ============================================================================ pair expectations
# Every quantity below is an expectation over the 2x2 block (k_x, k_y, k_xy) of a layer kernel;
# arrays kx (Nx,), ky (Ny,), kxy (Nx, Ny). "Rectangular" so that train x train and test x train
# blocks are handled alike (no test x test block is ever formed).


def _rho(kx, ky, kxy):
    d = jnp.sqrt(jnp.maximum(kx, 0.0))[:, None] * jnp.sqrt(jnp.maximum(ky, 0.0))[None, :]
    ok = d > 0
    return jnp.clip(jnp.where(ok, kxy / jnp.where(ok, d, 1.0), 0.0), -1.0, 1.0)


@functools.lru_cache(maxsize=64)
def _power(act: Activation, k: int):
    return lambda z: act.fn(z) ** k


def _func(act: Activation, spec):
    kind, k = spec
    return act.derivative(k) if kind == "d" else _power(act, k)


#: Rows per tile of the Mehler series (:func:`ngp._gaussian.mehler_series`; several functions share a tile here).
MEHLER_TILE = 16


def _mehler(act: Activation, tables, pairs_spec, kx, ky, kxy):
    """``E[f(z_x) g(z_y)]`` for each ``(f, g)`` in ``pairs_spec``, ``(m, Nx, Ny)``, by the Mehler series
    ``sum_k c_k^f(x) c_k^g(y) rho_xy^k`` (``("d", k)``: k-th derivative, ``("p", k)``: k-th power), on the
    :func:`ngp._gaussian.hermite_tables` ``tables`` (:func:`_tables`: arguments of the compiled callers)."""
    specs = sorted({a for a, _ in pairs_spec} | {b for _, b in pairs_spec})
    cx = {sp: hermite_coefficients(_func(act, sp), kx, tables=tables) for sp in specs}
    same = kx is ky
    cy = cx if same else {sp: hermite_coefficients(_func(act, sp), ky, tables=tables) for sp in specs}
    rho = _rho(kx, ky, kxy)
    A = jnp.stack([cx[a] for a, _ in pairs_spec])  # (m, Nx, T+1)
    B = jnp.stack([cy[b] for _, b in pairs_spec])  # (m, Ny, T+1)
    return mehler_series(A, B, rho, tile=MEHLER_TILE)


def _angular_moments(act: Activation, kx, ky, kxy, powers):
    """``E[sigma(z_x)^p sigma(z_y)^q]`` for the relu family (homogeneous of degree 1), exactly:
    radial part ``E r^(p+q) = 2^((p+q)/2) Gamma(1 + (p+q)/2)``, angular part by Gauss-Legendre
    on the four smooth pieces between the kinks."""
    xg, wg = np.polynomial.legendre.leggauss(ANGULAR_NODES)
    xg, wg = device(xg), device(wg)
    theta = jnp.arccos(_rho(kx, ky, kxy))[..., None]
    h = 0.5 * jnp.pi
    zero = jnp.zeros_like(theta)
    edges = [(zero - h, theta - h), (theta - h, zero + h), (zero + h, theta + h), (theta + h, zero + 3 * h)]
    out = []
    for p, q in powers:
        tot = 0.0
        for lo, hi in edges:
            phi = 0.5 * (hi - lo) * xg + 0.5 * (hi + lo)
            f = act.fn(jnp.cos(phi)) ** p * act.fn(jnp.cos(phi - theta)) ** q
            tot = tot + 0.5 * (hi[..., 0] - lo[..., 0]) * jnp.sum(wg * f, axis=-1)
        m = p + q
        radial = 2.0 ** (m / 2) * math.gamma(1 + m / 2)
        scale = jnp.maximum(kx, 0.0)[:, None] ** (p / 2) * jnp.maximum(ky, 0.0)[None, :] ** (q / 2)
        out.append(scale * radial * tot / (2 * jnp.pi))
    return jnp.stack(out)


def _closed_derivatives(act: Activation, kx, ky, kxy):
    """Gradient and Hessian of the closed-form two-point function w.r.t. ``(k_x, k_y, k_xy)``."""
    f3 = lambda v: act.two_point(v[0], v[1], v[2])  # noqa: E731
    args = jnp.stack(jnp.broadcast_arrays(kx[:, None], ky[None, :], kxy), axis=-1).reshape(-1, 3)
    g = jax.vmap(jax.grad(f3))(args).reshape(kxy.shape + (3,))
    H = jax.vmap(jax.hessian(f3))(args).reshape(kxy.shape + (3, 3))
    return g, H


def _diag_derivatives(act: Activation, orders, k):
    """``d<s^2>_k/dk`` and ``d^2<s^2>_k/dk^2`` (single input), shape of ``k``."""
    if act.relu_slopes is not None:
        ap, am = act.relu_slopes
        return 0.5 * (ap * ap + am * am) * jnp.ones_like(k), jnp.zeros_like(k)
    if act.two_point is not None:
        d = lambda t: act.two_point(t, t, t)  # noqa: E731
        return jax.vmap(jax.grad(d))(k), jax.vmap(jax.grad(jax.grad(d)))(k)
    s, s1, s2, s3, s4 = (act.derivative(i) for i in range(5))
    nodes = orders[1]
    j = expect_1d(lambda z: s1(z) ** 2 + s(z) * s2(z), k, nodes=nodes)
    h = 0.25 * expect_1d(lambda z: 2 * s(z) * s4(z) + 8 * s1(z) * s3(z) + 6 * s2(z) ** 2, k, nodes=nodes)
    return j, h


def _check_activation(act: Activation):
    if act.two_point is None and not act.smooth:
        raise ValueError(
            f"activation {act.name!r} is declared non-smooth and has no closed-form kernel: the finite-width "
            "terms need its curvature (delta functions), which cannot be integrated numerically"
        )


_D = lambda k: ("d", k)  # noqa: E731
_P = lambda k: ("p", k)  # noqa: E731
#: Mehler pairs behind J, H and the fresh moments; on a symmetric (AA) block the second member
#: of each swapped pair is the transpose of the first.
_PAIRS = {
    "J": ((_D(2), _D(0)), (_D(0), _D(2)), (_D(1), _D(1))),
    "H": ((_D(4), _D(0)), (_D(0), _D(4)), (_D(2), _D(2)), (_D(3), _D(1)), (_D(1), _D(3))),
    "F": ((_P(2), _P(2)), (_P(3), _P(1)), (_P(1), _P(3))),
}


def _block_stats(act, tables, kx, ky, kxy, C_W, derivs, symmetric):
    """J, H (if ``derivs``) and the fresh moments on one block (see :func:`_layer_stats`).

    ``J = (Jx, Jy, Jo)``: derivatives of ``K'_xy`` w.r.t. ``K_xx``, ``K_yy``, ``K_xy``; ``H`` the six
    second derivatives ``(H_xx,xx, H_yy,yy, H_xx,yy, H_xx,xy, H_yy,xy, H_xy,xy)`` (``C_W`` included);
    ``F = C_W^2 (E s_x^2 s_y^2, E s_x^3 s_y, E s_x s_y^3)``.
    """
    names = (["J", "H"] if derivs else []) + ["F"]
    closed = act.two_point is not None
    mehler_names = [nm for nm in names if not closed or (nm == "F" and act.relu_slopes is None)]
    spec, where = [], {}
    for nm in mehler_names:
        for pr in _PAIRS[nm]:
            swapped = (pr[1], pr[0])
            if symmetric and pr[0] != pr[1] and swapped in where:
                continue
            where[pr] = len(spec)
            spec.append(pr)
    M = _mehler(act, tables, spec, kx, ky, kxy) if spec else None

    def get(pr):
        if pr in where:
            return M[where[pr]]
        return M[where[(pr[1], pr[0])]].T

    out = {}
    if derivs:
        if closed:
            g, H = _closed_derivatives(act, kx, ky, kxy)
            out["J"] = tuple(C_W * g[..., i] for i in range(3))
            out["H"] = tuple(C_W * H[..., i, j] for i, j in ((0, 0), (1, 1), (0, 1), (0, 2), (1, 2), (2, 2)))
        else:
            # heat equation: d/dK_xx <F> = <d_x^2 F>/2, d/dK_xy <F> = <d_x d_y F>
            m20, m02, m11 = (get(pr) for pr in _PAIRS["J"])
            m40, m04, m22, m31, m13 = (get(pr) for pr in _PAIRS["H"])
            out["J"] = (0.5 * C_W * m20, 0.5 * C_W * m02, C_W * m11)
            out["H"] = tuple(C_W * h for h in (0.25 * m40, 0.25 * m04, 0.25 * m22, 0.5 * m31, 0.5 * m13, m22))
    if act.relu_slopes is not None:
        F = _angular_moments(act, kx, ky, kxy, ((2, 2), (3, 1), (1, 3)))
    else:
        F = jnp.stack([get(pr) for pr in _PAIRS["F"]])
    out["F"] = C_W**2 * F
    return out


def _fourth_moment(act, orders, k):
    """``E[s^4]`` at variance ``k`` (single input)."""
    if act.relu_slopes is not None:
        ap, am = act.relu_slopes
        return 1.5 * (ap**4 + am**4) * k * k
    return expect_1d(_power(act, 4), k, nodes=orders[1])


def _two_point_rect(act, tables, kx, ky, kxy):
    """``<s_x s_y>`` on a rectangular block (closed form or Mehler)."""
    if act.two_point is not None:
        return act.two_point(kx[:, None], ky[None, :], kxy)
    return _mehler(act, tables, [(("d", 0), ("d", 0))], kx, ky, kxy)[0]


def _second_moment(act, orders, k):
    if act.two_point is not None:
        return act.two_point(k, k, k)
    return expect_1d(_power(act, 2), k, nodes=orders[1])


# ============================================================================ per-layer pieces
def _set_diag(M, d):
    i = jnp.arange(M.shape[0])
    return M.at[i, i].set(d)


def _orders(kmax: float) -> tuple[int, int]:
    """Mehler terms and 1-D nodes for variances up to ``kmax`` (bucketed so that few variants compile)."""
    return auto_orders(float(np.ceil(max(kmax, 1e-300) * 4) / 4))


def _tables(act: Activation, orders):
    """The Mehler tables of ``orders`` for the compiled functions below, passed as arguments (captured as constants,
    the capped orders' 151 MB table was copied into each program: 3.5 GB of constants for 188 rows of one feature
    at variance 597, scratch); ``None`` for the relu family (closed forms only)."""
    return None if act.relu_slopes is not None else hermite_tables(*orders)


@functools.partial(jax.jit, static_argnums=(0, 1))
def _kernel_step(act, orders, tables, KAA, KBA, kB, cw, cb):
    """One layer of the infinite-width recursion on the blocks ``(K_AA, K_BA, k_B)``."""
    kA = jnp.diagonal(KAA)
    EAA = _two_point_rect(act, tables, kA, kA, KAA)
    EAA = _set_diag(0.5 * (EAA + EAA.T), _second_moment(act, orders, kA))
    EBA = _two_point_rect(act, tables, kB, kA, KBA)
    eB = _second_moment(act, orders, kB)
    return cb + cw * EAA, cb + cw * EBA, cb + cw * eB


def kernel_blocks(act: Activation, X_train, X_test, C_W, C_b):
    """Per-layer infinite-width kernels on the blocks the matrix-free path needs.

    ``O((N_A + N_B) N_A)`` per layer (no test x test block).

    Args:
        act: activation.
        X_train: ``(N_A, n0)``; X_test: ``(N_B, n0)``.
        C_W, C_b: per-layer sequences of length ``L`` (``C_W[0]`` is the first layer's).

    Returns:
        list of ``L`` tuples ``(K_AA (N_A, N_A), K_BA (N_B, N_A), k_B (N_B,))``, layer 1 first.
    """
    XA = device(X_train, dtype=float)
    XB = device(X_test, dtype=float)
    n0 = XA.shape[1]
    KAA = C_b[0] + C_W[0] * XA @ XA.T / n0
    KBA = C_b[0] + C_W[0] * XB @ XA.T / n0
    kB = C_b[0] + C_W[0] * jnp.sum(XB * XB, axis=1) / n0
    out = [(KAA, KBA, kB)]
    for l in range(1, len(C_W)):
        orders = _orders(float(max(jnp.max(kB), jnp.max(jnp.diagonal(KAA)))))
        tables = None if act.two_point is not None else _tables(act, orders)  # closed forms read no table
        out.append(_kernel_step(act, orders, tables, *out[-1], float(C_W[l]), float(C_b[l])))
    return out


@functools.partial(jax.jit, static_argnums=(0, 1, 7))
def _layer_stats(act, orders, tables, KAA, KBA, kB, cw, derivs):
    """Everything one layer contributes, on the AA and BA blocks and the diagonals.

    ``J*``: derivatives of the next kernel w.r.t. this one (``C_W`` included), ``H*``: second
    derivatives (both only with ``derivs``), ``j*``/``h*``: single-input derivatives, ``F*``:
    ``C_W^2`` times the fresh moments ``E s_x^2 s_y^2, E s_x^3 s_y, E s_x s_y^3``, ``f4*``: ``C_W^2 E s^4``.
    """
    kA = jnp.diagonal(KAA)
    A = _block_stats(act, tables, kA, kA, KAA, cw, derivs, True)
    B = _block_stats(act, tables, kB, kA, KBA, cw, derivs, False)
    out = dict(FA=A["F"], FB=B["F"], f4A=cw**2 * _fourth_moment(act, orders, kA), f4B=cw**2 * _fourth_moment(act, orders, kB))
    if derivs:
        jA, hA = (cw * t for t in _diag_derivatives(act, orders, kA))
        jB, hB = (cw * t for t in _diag_derivatives(act, orders, kB))
        out.update(JA=A["J"], HA=A["H"], JB=B["J"], HB=B["H"], jA=jA, hA=hA, jB=jB, hB=hB)
    return out


@functools.partial(jax.jit, static_argnums=(5,))
def _pair_vertex_step(V2, K1, C, F, D, first, ratio):
    """One layer of the 2-input-restricted recursions for one rectangular block.

    ``V2 = (p_x, p_y, q, r_x, r_y, t)``: ``V_(xx)(xx)``, ``V_(yy)(yy)``, ``V_(xx)(yy)``, ``V_(xx)(xy)``,
    ``V_(yy)(xy)``, ``V_(xy)(xy)``; ``K1 = (K1_xx, K1_yy, K1_xy)``. ``C = (C_xx, C_yy, C_xy)`` second
    moments of ``s`` times ``C_W``, ``F = (E s_x^4, E s_y^4, E s_x^2 s_y^2, E s_x^3 s_y, E s_x s_y^3)``
    times ``C_W^2``, ``D`` the layer's derivatives ``(jx, jy, Jx, Jy, Jo, hx, hy, Hs)``.
    """
    cx, cy, cxy = C
    f4x, f4y, f22, f31, f13 = F
    fp_x, fp_y = f4x - cx**2, f4y - cy**2
    fq = f22 - cx[:, None] * cy[None, :]
    fr_x = f31 - cx[:, None] * cxy
    fr_y = f13 - cy[None, :] * cxy
    ft = f22 - cxy**2
    if first:
        zero = jnp.zeros_like(cxy)
        return (fp_x, fp_y, fq, fr_x, fr_y, ft), (jnp.zeros_like(cx), jnp.zeros_like(cy), zero)
    px, py, q, rx, ry, t = V2
    k1x, k1y, k1xy = K1
    jx, jy, Jx, Jy, Jo, hx, hy, Hs = D
    Hxx, Hyy, Hxy_, Hxr, Hyr, Hrr = Hs  # (xx,xx), (yy,yy), (xx,yy), (xx,xy), (yy,xy), (xy,xy)
    PX, PY = px[:, None], py[None, :]
    npx = fp_x + ratio * jx**2 * px
    npy = fp_y + ratio * jy**2 * py
    nq = fq + ratio * jx[:, None] * jy[None, :] * q
    nrx = fr_x + ratio * jx[:, None] * (Jx * PX + Jy * q + Jo * rx)
    nry = fr_y + ratio * jy[None, :] * (Jx * q + Jy * PY + Jo * ry)
    nt = ft + ratio * (Jx**2 * PX + Jy**2 * PY + Jo**2 * t + 2 * Jx * Jy * q + 2 * Jx * Jo * rx + 2 * Jy * Jo * ry)
    HV = Hxx * PX + Hyy * PY + Hrr * t + 2 * Hxy_ * q + 2 * Hxr * rx + 2 * Hyr * ry
    nk1xy = ratio * (Jx * k1x[:, None] + Jy * k1y[None, :] + Jo * k1xy + 0.5 * HV)
    nk1x = ratio * (jx * k1x + 0.5 * hx * px)
    nk1y = ratio * (jy * k1y + 0.5 * hy * py)
    return (npx, npy, nq, nrx, nry, nt), (nk1x, nk1y, nk1xy)


def _k1_blocks(kernels, C_b, widths, stats):
    """``K1`` (and ``V`` on pairs of inputs) of the output layer on the AA, BA blocks and B diagonal.

    ``stats[l]`` are the :func:`_layer_stats` of layer ``l`` (1-based) with ``C_W^(l+1)``.
    Returns ``(K1_AA, K1_BA, k1_B, V2_AA)`` where ``V2_AA = (p, q, r, t)`` holds ``V_(xx)(xx)`` (N_A,),
    ``V_(xx)(yy)``, ``V_(xx)(xy)``, ``V_(xy)(xy)`` on the AA block (for the validity diagnostic).
    """
    L = len(kernels)
    A = B = (None, None)
    for l in range(1, L):  # produce layer l+1 from layer l
        cb = C_b[l]
        NAA, NBA, nB = kernels[l]
        # C_W <s s>: the fresh covariances are C_W^2 <ssss> - (C_W <ss>)(C_W <ss>)
        CA, CB, CAA, CBA = jnp.diagonal(NAA) - cb, nB - cb, NAA - cb, NBA - cb
        d = stats[l]
        first = l == 1
        ratio = 1.0 if first else widths[l - 1] / widths[l - 2]
        DA = DB = None
        if not first:
            DA = (d["jA"], d["jA"], *d["JA"], d["hA"], d["hA"], d["HA"])
            DB = (d["jB"], d["jA"], *d["JB"], d["hB"], d["hA"], d["HB"])
        A = _pair_vertex_step(*A, (CA, CA, CAA), (d["f4A"], d["f4A"], *d["FA"]), DA, first, ratio)
        B = _pair_vertex_step(*B, (CB, CA, CBA), (d["f4B"], d["f4A"], *d["FB"]), DB, first, ratio)
    (pA, _, qA, rA, _, tA), (k1A, _, k1AA) = A
    _, (k1B, _, k1BA) = B
    K1_AA = _set_diag(0.5 * (k1AA + k1AA.T), k1A)
    return K1_AA, k1BA, k1B, (pA, qA, rA, tA)


def finite_width_blocks(act: Activation, kernels, C_W, C_b, widths):
    """Output ``K1`` on the blocks, ``V`` on pairs of training inputs, and the Jacobians, in ``O(N^2)``.

    Args: as :func:`matrix_free_posterior`.

    Returns:
        ``(K1_AA (N_A, N_A), K1_BA (N_B, N_A), k1_B (N_B,), V2, jac)``: ``K1`` of the output layer
        (``E[z z] = K + K1 / n_{L-1}``), ``V2 = (p, q, r, t)`` the output vertex on pairs of training
        inputs (``V_(xx)(xx)``, ``V_(xx)(yy)``, ``V_(xx)(xy)``, ``V_(xy)(xy)``), and ``jac[l]`` the
        Jacobian blocks of layer ``l`` (``2 <= l < L``) used to push fluctuations up.
    """
    L = len(kernels)
    kmax = max(float(max(jnp.max(jnp.diagonal(a)), jnp.max(c))) for a, _, c in kernels[:-1])
    orders = _orders(kmax)
    tables = _tables(act, orders)
    stats = {l: _layer_stats(act, orders, tables, *kernels[l - 1], float(C_W[l]), l > 1) for l in range(1, L)}
    K1AA, K1BA, k1B, V2 = _k1_blocks(kernels, C_b, widths, stats)
    jac = {l: (stats[l]["JA"], stats[l]["JB"], stats[l]["jA"], stats[l]["jB"]) for l in range(2, L)}
    return K1AA, K1BA, k1B, V2, jac


# ============================================================================ pullback coefficients
@jax.jit
def _source_init(NAA, NBA, nB, cw, cb):
    """Coefficients of ``xi = C_W (s s^T - <s s>)`` in the form used by :func:`_push`."""
    NA, NB = NAA.shape[0], NBA.shape[0]
    return dict(
        T=jnp.full((NA, NA), cw), U=jnp.zeros((NA, NA)), c=-(NAA - cb),
        TB=jnp.full((NB, NA), cw), UB=jnp.zeros((NB, NA)), UtB=jnp.zeros((NB, NA)), cB=-(NBA - cb),
        dB=jnp.full((NB,), cw), cBB=-(nB - cb),
    )


@jax.jit
def _push(co, JA, JB, jA, jB, g):
    """Push the fluctuation coefficients through one layer's Jacobian (factor ``g = sqrt(n_m/n_{m-1})``).

    ``delta_xy = T s_x s_y + U_xy s_x^2 + U_yx s_y^2 + c`` on AA (``U_xx = 0``, ``T_xx = d_x``),
    ``delta_ba = TB s_b s_a + UB s_b^2 + UtB s_a^2 + cB`` on BA, ``delta_bb = dB s_b^2 + cBB``.
    """
    Jx, _, Jo = JA
    Jo = _set_diag(Jo, jA)
    Jx = _set_diag(Jx, 0.0)
    T, U, c = co["T"], co["U"], co["c"]
    dA, cA = jnp.diagonal(T), jnp.diagonal(c)
    Bx, By, Bo = JB  # derivatives of K'_ba w.r.t. K_bb, K_aa, K_ba
    dB, cBB = co["dB"], co["cBB"]
    return dict(
        T=g * Jo * T,
        U=g * (Jo * U + Jx * dA[:, None]),
        c=g * (Jo * c + Jx * cA[:, None] + Jx.T * cA[None, :]),
        TB=g * Bo * co["TB"],
        UB=g * (Bo * co["UB"] + Bx * dB[:, None]),
        UtB=g * (Bo * co["UtB"] + By * dA[None, :]),
        cB=g * (Bo * co["cB"] + Bx * cBB[:, None] + By * cA[None, :]),
        dB=g * jB * dB,
        cBB=g * jB * cBB,
    )


@jax.jit
def _conditional_root(KAA, KBA, kB):
    """``z_A = R eps``, ``E[z_B | z_A] = G eps``, ``sd_B`` the conditional standard deviations.

    Columns are ordered by decreasing eigenvalue of ``K_AA``; directions below
    ``EIG_CUTOFF * max eigenvalue`` are dropped (their variance moves to ``sd_B``).
    """
    lam, Q = jnp.linalg.eigh(0.5 * (KAA + KAA.T))
    lam, Q = lam[::-1], Q[:, ::-1]
    keep = lam > EIG_CUTOFF * lam[0]
    lam_k = jnp.where(keep, lam, 1.0)
    R = Q * jnp.where(keep, jnp.sqrt(lam_k), 0.0)[None, :]
    G = (KBA @ Q) * jnp.where(keep, 1.0 / jnp.sqrt(lam_k), 0.0)[None, :]
    sd = jnp.sqrt(jnp.maximum(kB - jnp.sum(G * G, axis=1), 0.0))
    return R, G, sd


# ============================================================================ conditional moments
def _conditional_moments(act: Activation, mu, sd):
    """``E[sigma(mu + sd w)^k]``, ``k = 1..4``, elementwise (``w ~ N(0, 1)``); shape ``(4,) + mu.shape``."""
    if act.relu_slopes is not None:
        ap, am = act.relu_slopes
        pos = _relu_moments(mu, sd)
        neg = _relu_moments(-mu, sd)
        return jnp.stack([ap**k * pos[k - 1] + (-am) ** k * neg[k - 1] for k in range(1, 5)])
    x, w = gauss_hermite(COND_NODES)
    z = mu[..., None] + sd[..., None] * device(x)
    f = act.fn(z)
    wj = device(w)
    return jnp.stack([jnp.sum(wj * f**k, axis=-1) for k in range(1, 5)])


def _relu_moments(mu, sd):
    """``E[relu(mu + sd w)^k]``, ``k = 1..4`` (truncated-normal moments)."""
    pos = sd > 0
    s = jnp.where(pos, sd, 1.0)
    r = mu / s
    phi = jnp.exp(-0.5 * r * r) / math.sqrt(2 * math.pi)
    c = -r
    M0 = jax.scipy.special.ndtr(r)
    M1 = phi
    M2 = c * phi + M0
    M3 = c * c * phi + 2 * M1
    M4 = c**3 * phi + 3 * M2
    M = (M0, M1, M2, M3, M4)
    out = []
    for k in range(1, 5):
        val = sum(math.comb(k, j) * mu ** (k - j) * s**j * M[j] for j in range(k + 1))
        out.append(jnp.where(pos, val, jnp.maximum(mu, 0.0) ** k))
    return out


# ============================================================================ the sampler
_TERMS = ("mean_pair", "mean_cross", "var_pair", "var_y", "var_om", "ev_xx", "ev_y", "ev_om")


def _draw(act, S, key, co, u):
    """``S`` draws of ``s = sigma(z_A)`` (columns) and the conditional test moments ``E[s_b^k | z_A]``.

    ``u``: optional ``(S, d)`` scrambled-Sobol points driving the ``d`` leading eigen-directions.
    """
    eps = jax.random.normal(key, (co["R"].shape[1], S))
    if u is not None:
        eps = eps.at[: u.shape[1]].set(jax.scipy.special.ndtri(u).T)
    s = act.fn(co["R"] @ eps)
    mu = co["G"] @ eps
    m = _conditional_moments(act, mu, jnp.broadcast_to(co["sd"][:, None], mu.shape))
    return s, s * s, m


def _chunk_top(act, S, key, glob, co, u):
    """Per-sample estimators for the last source layer, ``delta = C_W s s^T - Kc`` (``Kc = K^(L) - C_b``).

    Everything reduces to ``s^T Kt^-1 s``, ``s^T Kt^-1 Kc Kt^-1 s``, ``P s``, ``M s`` with
    ``M = (Kc_BA - P Kc_AA) Kt^-1``: no probe, ``O(N^2)`` per sample. Notation as in :func:`_chunk_deep`.
    """
    cw, yt, P = co["cw"], glob["yt"], glob["P"]
    nL = yt.shape[1]
    s, _, m = _draw(act, S, key, co, u)
    ks = glob["Kinv"] @ s
    q = jnp.sum(s * ks, axis=0)  # s^T Kt^-1 s
    sy = s.T @ yt  # (S, nL)
    ps = P @ s
    e1 = m[0] - ps  # E[e_b.s | z_A]
    e2 = m[1] - 2 * m[0] * ps + ps * ps  # E[(e_b.s)^2 | z_A]
    Ms = co["M"] @ s
    X = cw * (jnp.sum(sy * sy, axis=1) - nL * q) - co["trWK"]
    sv = s.T @ co["v"]  # s . Kt^-1 Kc yt_i, (S, nL)
    out = dict(ev_xx=jnp.sum(X * X))
    Kryt, MKyt = co["Kryt"], co["MKyt"]  # (NB, nL)
    mp, mc, vy = [], [], []
    evy = 0.0
    for i in range(nL):
        y, w = sy[:, i], sv[:, i]
        lin_y = cw * e1 * y - Kryt[:, i : i + 1]  # E[e_b.delta yt_i]
        mp.append(lin_y @ X)
        vy.append(jnp.sum(cw**2 * e2 * y * y - 2 * cw * e1 * y * Kryt[:, i : i + 1] + Kryt[:, i : i + 1] ** 2, axis=1))
        # e_b.delta h_i with h_i = Kt^-1 delta yt_i = cw ks y - v_i
        mc.append(jnp.sum(cw * e1 * (cw * q * y - w) - cw * Ms * y + MKyt[:, i : i + 1], axis=1))
        evy = evy + jnp.sum(cw**2 * q * y * y - 2 * cw * y * w) + S * co["yKKy"][i]
    out.update(mean_pair=jnp.stack(mp, 1), mean_cross=jnp.stack(mc, 1), var_y=jnp.stack(vy, 1), ev_y=evy)
    sKs = jnp.sum(s * (co["KCK"] @ s), axis=0)
    out["ev_om"] = jnp.sum(cw**2 * q * q - 2 * cw * sKs) + S * co["trKK"]
    out["var_om"] = jnp.sum(cw**2 * e2 * q - 2 * cw * e1 * Ms, axis=1) + S * co["eKKe"]
    out["var_pair"] = (cw * e2 - co["eKe"][:, None]) @ X
    return out, {}


def _DA(co, s, s2, u, Uu=None, cu=None):
    """Training rows of ``delta u``, ``u`` of shape ``(N_A, S)`` (``Uu = U u``, ``cu = c u`` if known)."""
    Uu = co["U"] @ u if Uu is None else Uu
    cu = co["c"] @ u if cu is None else cu
    return s * (co["T"] @ (s * u)) + s2 * Uu + co["U"].T @ (s2 * u) + cu


def _rows(co, s, s2, u, DAu, P, UBu=None, cBu=None):
    """Residualised test rows ``e_b^T delta u = alpha s_b + beta s_b^2 + gamma`` (``e_b = 1_b - P_b``)."""
    beta = co["UB"] @ u if UBu is None else UBu
    cBu = co["cB"] @ u if cBu is None else cBu
    alpha = co["TB"] @ (s * u)
    gamma = co["UtB"] @ (s2 * u) + cBu - P @ DAu
    return alpha, beta, gamma


def _lin(m, abc):
    """``E[alpha s_b + beta s_b^2 + gamma | z_A]`` from the conditional moments ``m = (E s_b^k)_k``."""
    a, b, g = abc
    return a * m[0] + b * m[1] + g


def _sq(m, abc):
    """``E[(alpha s_b + beta s_b^2 + gamma)^2 | z_A]``."""
    a, b, g = abc
    return a * a * m[1] + 2 * a * b * m[2] + b * b * m[3] + 2 * a * g * m[0] + 2 * b * g * m[1] + g * g


def _chunk_deep(act, S, key, glob, co, u):
    """Sums over ``S`` samples of the per-sample estimators of a source layer below the last.

    Per sample (``delta`` the output-layer fluctuation, ``X = <W, delta_AA>``, ``e_b = 1_b - P_b``,
    ``g_i = delta yt_i``, ``h_i = Kt^-1 g_i``, ``omega = L^-T xi`` with ``Kt = L L^T`` and ``xi`` Rademacher,
    so ``E[omega omega^T] = Kt^-1``):
    ``mean_pair = X e_b.delta yt_i``, ``mean_cross = e_b.delta h_i``, ``var_pair = X e_b.delta e_b``,
    ``var_y = (e_b.delta yt_i)^2``, ``var_om = (e_b.delta omega)^2``, ``ev_xx = X^2``,
    ``ev_y = sum_i g_i.h_i``, ``ev_om = (delta omega).Kt^-1 (delta omega)``; test rows averaged over
    ``z_B | z_A``. The parts linear in ``delta`` given another per-sample vector (``mean_cross``
    and the ``P delta_AA P^T`` part of ``var_pair``) are accumulated as moment matrices instead.
    The probe runs on every sample: applied to one sample in four it dominated the variance error
    (tanh depth 3, N_train 8: 2.4x larger s.e., heavy-tailed batch means, z-score spread 1.44) for no
    measurable saving in time (N_train = 250: 13.0-14.0 s warm either way).
    """
    yt, Kinv, P = glob["yt"], glob["Kinv"], glob["P"]
    NA, nL = yt.shape
    k1, k2 = jax.random.split(key)
    s, s2, m = _draw(act, S, k1, co, u)
    # omega = L^-T xi, xi Rademacher: E[omega omega^T] = Kt^-1; a Rademacher probe drops the diagonal
    # (in this basis) from the probe's variance and has no tails (evidence s.e. 20-30% below a Gaussian probe)
    om = glob["LinvT"] @ jax.random.rademacher(k2, (NA, S), dtype=float)
    X = jnp.sum(s * (co["WT"] @ s), axis=0) + 2 * co["wu"] @ s2 + co["wc"]
    # delta applied to [yt_1 .. yt_nL (S columns each), omega (S columns)] in one pass
    sR = jnp.concatenate([s] * (nL + 1), axis=1)
    s2R = jnp.concatenate([s2] * (nL + 1), axis=1)
    V = jnp.concatenate([jnp.broadcast_to(yt[:, i : i + 1], (NA, S)) for i in range(nL)] + [om], axis=1)
    Uv = jnp.concatenate([jnp.broadcast_to(co["Uyt"][:, i : i + 1], (NA, S)) for i in range(nL)] + [co["U"] @ om], axis=1)
    cv = jnp.concatenate([jnp.broadcast_to(co["cyt"][:, i : i + 1], (NA, S)) for i in range(nL)] + [co["c"] @ om], axis=1)
    D = sR * (co["T"] @ (sR * V)) + s2R * Uv + co["U"].T @ (s2R * V) + cv  # training rows of delta v
    H = Kinv @ D
    UBv = jnp.concatenate([jnp.broadcast_to(co["UByt"][:, i : i + 1], (P.shape[0], S)) for i in range(nL)] + [co["UB"] @ om], axis=1)
    cBv = jnp.concatenate([jnp.broadcast_to(co["cByt"][:, i : i + 1], (P.shape[0], S)) for i in range(nL)] + [co["cB"] @ om], axis=1)
    alpha = co["TB"] @ (sR * V)
    gamma = co["UtB"] @ (s2R * V) + cBv - P @ D
    out = dict(ev_xx=jnp.sum(X * X))
    acc = dict(XA=(s * X[None, :]) @ s.T, Xa=s2 @ X, Xx=jnp.sum(X))
    mp, vy, A1, A2, B1, B2, v3, v4 = [], [], [], [], [], [], [], []
    evy = 0.0
    for i in range(nL):
        cols = slice(i * S, (i + 1) * S)
        g, h = D[:, cols], H[:, cols]
        evy = evy + jnp.sum(g * h)
        r = (alpha[:, cols], UBv[:, cols], gamma[:, cols])
        mp.append(_lin(m, r) @ X)
        vy.append(jnp.sum(_sq(m, r), axis=1))
        sh = s * h
        A1.append(s @ sh.T)
        A2.append(s2 @ h.T)
        B1.append(m[0] @ sh.T)
        B2.append(m[1] @ h.T)
        v3.append(jnp.sum(s2 * h, axis=1))
        v4.append(jnp.sum(h, axis=1))
    out.update(mean_pair=jnp.stack(mp, 1), var_y=jnp.stack(vy, 1), ev_y=evy)
    acc.update(A1=jnp.stack(A1), A2=jnp.stack(A2), B1=jnp.stack(B1), B2=jnp.stack(B2), v3=jnp.stack(v3), v4=jnp.stack(v4))
    cols = slice(nL * S, (nL + 1) * S)
    out["ev_om"] = jnp.sum(D[:, cols] * H[:, cols])
    out["var_om"] = jnp.sum(_sq(m, (alpha[:, cols], UBv[:, cols], gamma[:, cols])), axis=1)
    # e_b.delta e_b = delta_bb - 2 P_b delta_Ab + P_b delta_AA P_b^T; the last part via accumulators
    pb = (co["dB"][:, None] * m[1] + co["cBB"][:, None]) - 2 * (
        m[0] * (co["PT"] @ s) + m[1] * co["pu"][:, None] + co["PUt"] @ s2 + co["pc"][:, None]
    )
    out["var_pair"] = pb @ X
    out["mean_cross"] = jnp.zeros((P.shape[0], nL))
    return out, acc


def _deep_finish(co, P, acc):
    """Turn the accumulated moment matrices of :func:`_chunk_deep` into term sums."""
    R = co["T"] * acc["XA"] + co["U"] * acc["Xa"][:, None] + co["U"].T * acc["Xa"][None, :] + co["c"] * acc["Xx"]
    var_pair = jnp.sum((P @ R) * P, axis=1)
    # E[delta h] on training and test rows, residualised
    dA = (jnp.sum(co["T"][None] * acc["A1"], axis=2) + jnp.sum(co["U"][None] * acc["A2"], axis=2)
          + acc["v3"] @ co["U"] + acc["v4"] @ co["c"])  # (nL, NA)
    dB = (jnp.sum(co["TB"][None] * acc["B1"], axis=2) + jnp.sum(co["UB"][None] * acc["B2"], axis=2)
          + acc["v3"] @ co["UtB"].T + acc["v4"] @ co["cB"].T)  # (nL, NB)
    mean_cross = (dB - dA @ P.T).T
    return var_pair, mean_cross


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3))
def _batch_layer(act, top, S, n_chunks, key, glob, co, U=None):
    """One independent batch (``S * n_chunks`` samples) of one source layer: its term estimates.

    ``U``: optional ``(n_chunks, S, d)`` scrambled-Sobol points for the leading ``d`` coordinates.
    """
    chunk = _chunk_top if top else _chunk_deep

    def one(j):
        return chunk(act, S, jax.random.fold_in(key, j), glob, co, None if U is None else U[j])

    def body(j, carry):
        return jax.tree.map(jnp.add, carry, one(j))

    zeros = jax.tree.map(lambda t: jnp.zeros(t.shape, t.dtype), jax.eval_shape(lambda: one(0)))
    sums, acc = jax.lax.fori_loop(0, n_chunks, body, zeros)
    if not top:
        vp, mc = _deep_finish(co, glob["P"], acc)
        sums["var_pair"] = sums["var_pair"] + vp
        sums["mean_cross"] = sums["mean_cross"] + mc
    tot = S * n_chunks
    return {k: v / tot for k, v in sums.items()}


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3))
def _map_batches(act, top, S, n_chunks, keys, U, glob, co):
    """:func:`_batch_layer` over a stack of batch keys (and QMC points ``U``, or ``(B, 0)`` for none)."""
    has_u = U.ndim > 2
    return jax.lax.map(lambda a: _batch_layer(act, top, S, n_chunks, a[0], glob, co, a[1] if has_u else None), (keys, U))


@functools.lru_cache(maxsize=32)
def _sharded_map(act, top, S, n_chunks, devices):
    from jax.sharding import Mesh, PartitionSpec as Ps

    mesh = Mesh(np.asarray(devices), ("batch",))
    f = functools.partial(_map_batches, act, top, S, n_chunks)
    return jax.jit(jax.shard_map(f, mesh=mesh, in_specs=(Ps("batch"), Ps("batch"), Ps(), Ps()), out_specs=Ps("batch"),
                                 check_vma=False))


def _run_batches(act, top, S, n_chunks, keys, glob, co, devices, U=None):
    """Term estimates of every batch (stacked on axis 0); the batch axis is split over ``devices``."""
    if U is None:
        U = jnp.zeros((keys.shape[0], 0))
    if devices is None or len(devices) == 1:
        out = _map_batches(act, top, S, n_chunks, keys, U, glob, co)
    else:
        out = _sharded_map(act, top, S, n_chunks, tuple(devices))(keys, U, glob, co)
    return {t: np.asarray(v) for t, v in out.items()}


# ============================================================================ public entry point
@dataclasses.dataclass(frozen=True)
class MatrixFreePosterior:
    """Finite-width posterior (first order in ``1/n``) by the matrix-free estimator.

    Attributes:
        mean: ``(N_B, n_L)`` posterior mean; ``mean_se`` its Monte-Carlo standard error.
        var: ``(N_B, n_L)`` marginal posterior variances (noise excluded); ``var_se``.
        log_evidence: log marginal likelihood of all targets; ``log_evidence_se``.
        gp_mean, gp_var, gp_log_evidence: the infinite-width (GP) answer on the same data.
        n: the width ``n_{L-1}`` of the expansion.
        samples: Monte-Carlo samples per source layer actually used; ``batches``: number of
            independent batches behind the standard errors.
        timings: seconds spent in ``derivatives`` (J, H, fresh moments, K1), ``pullbacks``
            (coefficient matrices), ``solves`` (training-kernel factorisations), ``sampling``.
        validity: the expansion diagnostics (:func:`validity`, an :class:`ngp.Validity`).
        terms: per-batch estimates of every vertex term (only with ``return_terms=True``).
        method: ``"matrix_free"``.

    Every ``1/n`` term scales exactly like ``1/n`` when all hidden widths are scaled together:
    :meth:`at_width` gives the posterior of a wider or narrower network without resampling.
    """

    mean: np.ndarray
    var: np.ndarray
    log_evidence: float
    mean_se: np.ndarray
    var_se: np.ndarray
    log_evidence_se: float
    gp_mean: np.ndarray
    gp_var: np.ndarray
    gp_log_evidence: float
    n: int
    samples: int
    batches: int
    timings: dict
    validity: Validity
    terms: dict | None = None
    method: str = "matrix_free"
    parts: dict | None = dataclasses.field(default=None, repr=False)

    def at_width(self, n: int) -> "MatrixFreePosterior":
        """The same posterior for the network with every hidden width scaled by ``n / self.n``.

        ``K1`` and ``V`` depend only on the width ratios, so the mean and variance corrections
        (and their standard errors) scale like ``self.n / n``; the Gaussian part of the evidence
        is recomputed with ``K + K1 / n`` (``O(N_train^3)``). Returns a new result (``n`` must be a
        positive width; the validity diagnostics are rescaled too).
        """
        if self.parts is None:
            raise ValueError("at_width: this result does not carry its width-free parts")
        n = count(n, "n", maximum=MAX_WIDTH)
        return _assemble(self.parts, n, warn=False, base=self)


def _sync(x):
    return jax.block_until_ready(x)


@jax.jit
def _solve(KAA, KBA, kB, K1AA, K1BA, k1B, Y, noise, n):
    """GP posterior, the exact ``K1`` terms and the training-space objects of the estimators."""
    NA, nL = Y.shape
    eye = jnp.eye(NA)
    Kt = KAA + noise * eye
    Lc = jnp.linalg.cholesky(Kt)
    Linv = jax.scipy.linalg.solve_triangular(Lc, eye, lower=True)
    Kinv = Linv.T @ Linv
    yt = Kinv @ Y
    P = KBA @ Kinv
    W = yt @ yt.T - nL * Kinv
    gp_mean = KBA @ yt
    gp_var = kB - jnp.sum(P * KBA, axis=1)
    gp_logz = gaussian_log_evidence(Lc, Y)
    mean_k1 = (K1BA - P @ K1AA) @ yt / n
    var_k1 = (k1B - 2 * jnp.sum(P * K1BA, axis=1) + jnp.sum((P @ K1AA) * P, axis=1)) / n
    # Gaussian part of the evidence with K + K1/n unexpanded (as in the dense path)
    Gc = jnp.linalg.cholesky(KAA + K1AA / n + noise * eye)
    logz_g = gaussian_log_evidence(Gc, Y)
    glob = dict(yt=yt, Kinv=Kinv, LinvT=Linv.T, P=P, W=W)
    gp = dict(mean=gp_mean, var=gp_var, logz=gp_logz)
    k1 = dict(mean=mean_k1, var=var_k1, logz=logz_g)
    # whether Kt is numerically singular is decided before the call, by the exact path's test (check_conditioning:
    # a pivot and 1-norm test here accepted kernels of reciprocal condition number 2e-13 and refused some of 1e-11)
    ok = (jnp.all(jnp.isfinite(Lc)), jnp.all(jnp.isfinite(Gc)))
    return glob, gp, k1, ok


@jax.jit
def _finish_deep(co, glob):
    """Products of a deep source's coefficients with the training-space objects."""
    W, P, yt = glob["W"], glob["P"], glob["yt"]
    return dict(
        co,
        WT=W * co["T"], wu=jnp.sum(W * co["U"], axis=1), wc=jnp.sum(W * co["c"]),
        PT=P * co["TB"], pu=jnp.sum(P * co["UB"], axis=1), PUt=P * co["UtB"], pc=jnp.sum(P * co["cB"], axis=1),
        Uyt=co["U"] @ yt, cyt=co["c"] @ yt, UByt=co["UB"] @ yt, cByt=co["cB"] @ yt,
    )


@jax.jit
def _finish_top(glob, KAA, KBA, kB, cw, cb):
    """Deterministic pieces of the last source layer (``delta = C_W s s^T - Kc``, ``Kc = K^(L) - C_b``)."""
    Kinv, P, yt, W = glob["Kinv"], glob["P"], glob["yt"], glob["W"]
    Kc, KcB, kcB = KAA - cb, KBA - cb, kB - cb
    PK = P @ Kc
    Kr = KcB - PK  # e_b^T Kc
    M = Kr @ Kinv
    Kyt = Kc @ yt
    v = Kinv @ Kyt
    KCK = Kinv @ Kc @ Kinv
    return dict(
        cw=cw, M=M, v=v, Kryt=Kr @ yt, MKyt=M @ Kyt, yKKy=jnp.sum(Kyt * v, axis=0),
        trWK=jnp.sum(W * Kc), KCK=KCK, trKK=jnp.sum(KCK * Kc),
        eKe=kcB - 2 * jnp.sum(P * KcB, axis=1) + jnp.sum(PK * P, axis=1), eKKe=jnp.sum(M * Kr, axis=1),
    )


def _root(KAA, KBA, kB):
    """:func:`_conditional_root` with the dropped directions removed (fewer columns to sample)."""
    R, G, sd = _conditional_root(KAA, KBA, kB)
    r = int(np.sum(np.asarray(jnp.any(R != 0, axis=0))))
    return dict(R=R[:, :r], G=G[:, :r], sd=sd)


def matrix_free_posterior(act: Activation, kernels, C_W, C_b, widths, Y, *, noise: float,
                          samples: int = DEFAULT_SAMPLES, seed: int = 0, batches: int = DEFAULT_BATCHES,
                          chunk: int | None = None, devices=None, warn: bool = True,
                          return_terms: bool = False, qmc: int = QMC_DIMS,
                          conditioning_checked: bool = False) -> MatrixFreePosterior:
    """First-order finite-width posterior without forming the four-point vertex.

    Args:
        act: the activation (:class:`ngp.Activation`).
        kernels: ``L`` per-layer kernel blocks ``(K_AA (N_A, N_A), K_BA (N_B, N_A), k_B (N_B,))``,
            layer 1 first (``K^(L)`` is the output kernel); see :func:`kernel_blocks`.
        C_W, C_b: per-layer weight/bias variances, length ``L`` (index ``l`` produces layer ``l+1``).
        widths: hidden widths ``(n_1, ..., n_{L-1})``; the expansion is in ``1/n_{L-1}``.
        Y: ``(N_A, n_L)`` targets.
        noise: observation-noise variance (``>= 0``).
        samples: Monte-Carlo samples per source layer (rounded up to fill the batches); the
            standard errors fall like ``samples^-1/2``.
        seed: integer seed; results are reproducible and independent of the device count.
        batches: independent batches; standard errors come from their spread.
        chunk: samples per vectorised step (default: memory-bounded).
        devices: JAX devices to split the batches over (default: one device).
        warn: warn when the request is outside the validated regime (:func:`validity`).
        return_terms: also return the per-batch estimates of every term (diagnostics).
        conditioning_checked: the caller has checked ``K_AA + noise I`` with
            :func:`ngp._linalg.check_conditioning` (the exact path's test); otherwise it is checked here.

    Returns:
        :class:`MatrixFreePosterior`.

    Raises:
        numpy.linalg.LinAlgError: ``K_AA + noise I`` of reciprocal condition number ``<= 1e-12`` (the exact
            path's test and message), or ``K_AA + K1_AA/n + noise I`` not positive definite.
    """
    check_x64("the matrix-free posterior")
    _check_activation(act)
    L = len(kernels)
    if L < 2:
        raise ValueError("matrix_free_posterior: depth >= 2 is needed for finite-width corrections")
    if len(C_W) != L or len(C_b) != L or len(widths) != L - 1:
        raise ValueError("matrix_free_posterior: need len(C_W) == len(C_b) == L and len(widths) == L - 1")
    kernels = [tuple(device(k, dtype=float) for k in blk) for blk in kernels]
    Y = device(Y, dtype=float)
    if Y.ndim == 1:
        Y = Y[:, None]
    NA, nL = Y.shape
    n = int(widths[-1])
    timings = {}

    # --- kernel-map derivatives, fresh two-input moments, K1 ------------------------------------
    t0 = time.perf_counter()
    K1AA, K1BA, k1B, V2, jac = _sync(finite_width_blocks(act, kernels, C_W, C_b, widths))
    timings["derivatives"] = time.perf_counter() - t0

    # --- GP solve and training-space objects ---------------------------------------------------
    t0 = time.perf_counter()
    if not conditioning_checked:  # the exact path's test (eigenvalues, O(N^3) on the host: below 1% of a run)
        check_conditioning(np.asarray(kernels[-1][0]), float(noise))
    glob, gp, k1, ok = _sync(_solve(*kernels[-1], K1AA, K1BA, k1B, Y, float(noise), float(n)))
    if not bool(ok[0]):
        raise np.linalg.LinAlgError(
            f"matrix_free_posterior: the Cholesky factor of K_train + noise I is not finite (reciprocal condition "
            f"number above {RCOND_MIN:g}, but not positive definite in rounding); use noise > 0 or remove "
            "near-duplicate inputs")
    if not bool(ok[1]):
        raise np.linalg.LinAlgError(
            "matrix_free_posterior: K_train + K1_train/n + noise I is not positive definite; the 1/n "
            "expansion is not valid here (increase the width or the noise)"
        )
    timings["solves"] = time.perf_counter() - t0

    # --- pullback coefficients per source layer --------------------------------------------------
    t0 = time.perf_counter()
    sources = []
    for l in range(1, L):
        if l == L - 1:
            co = _finish_top(glob, *kernels[l], float(C_W[l]), float(C_b[l]))
        else:
            co = _source_init(*kernels[l], float(C_W[l]), float(C_b[l]))
            for m in range(l + 1, L):
                co = _push(co, *jac[m], math.sqrt(widths[m - 1] / widths[m - 2]))
            co = _finish_deep(co, glob)
        co.update(_root(*kernels[l - 1]))
        sources.append(co)
    _sync(sources)
    timings["pullbacks"] = time.perf_counter() - t0

    # --- Monte Carlo -----------------------------------------------------------------------------
    t0 = time.perf_counter()
    ndev = 1 if devices is None else len(devices)
    batches = -(-int(batches) // ndev) * ndev
    per_batch = -(-int(samples) // batches)
    if chunk is None:
        chunk = 256
    chunk = int(min(chunk, per_batch))
    n_chunks = -(-per_batch // chunk)
    if qmc:
        per_batch = 1 << int(np.ceil(np.log2(per_batch)))
        chunk = min(chunk, per_batch)
        chunk = 1 << int(np.floor(np.log2(chunk)))
        n_chunks = per_batch // chunk
    root = jax.random.PRNGKey(int(seed))
    terms = {t: 0.0 for t in _TERMS}
    per_source = []
    for l, co in enumerate(sources):
        keys = jax.random.split(jax.random.fold_in(root, l), batches)
        U = None
        if qmc:
            from scipy.stats import qmc as _q
            d = int(min(qmc, co["R"].shape[1]))
            U = np.stack([
                _q.Sobol(d, scramble=True, seed=np.random.default_rng([int(seed), l, b])).random_base2(int(np.log2(per_batch)))
                for b in range(batches)
            ]).reshape(batches, n_chunks, chunk, d)
            U = device(np.clip(U, 1e-16, 1 - 1e-16))
        out = _run_batches(act, l == L - 2, chunk, n_chunks, keys, glob, co, devices, U)
        terms = {t: terms[t] + out[t] for t in _TERMS}
        per_source.append(out)
    timings["sampling"] = time.perf_counter() - t0

    # coefficients of 1/n (width-free: the vertex terms are V contractions, K1 terms K1 contractions)
    mean_b = (terms["mean_pair"] - 2 * terms["mean_cross"]) / 2
    var_b = terms["var_pair"][:, :, None] / 2 + (terms["var_y"] - terms["var_om"][:, :, None])
    ev_b = (terms["ev_xx"] - 4 * terms["ev_y"] + 2 * nL * terms["ev_om"]) / 8
    mV, mse = _estimate(mean_b)
    vV, vse = _estimate(var_b)
    eV, ese = _estimate(ev_b)
    eta, eta_se = _estimate(terms["ev_xx"] / 4)
    parts = dict(
        gp_mean=np.asarray(gp["mean"]), gp_var=np.asarray(gp["var"]), gp_logz=float(gp["logz"]),
        mean=n * np.asarray(k1["mean"]) + mV, mean_se=mse, var=n * np.asarray(k1["var"])[:, None] + vV, var_se=vse,
        ev=float(eV), ev_se=float(ese), eta=float(eta), eta_se=float(eta_se), eps=_eps(kernels[-1][0], V2),
        KAA=kernels[-1][0], K1AA=K1AA, Y=Y, noise=float(noise), n_ref=n, logz_g=float(k1["logz"]),
        samples=batches * n_chunks * chunk, batches=batches, timings=timings,
        terms=dict(total=terms, sources=per_source) if return_terms else None,
    )
    return _assemble(parts, n, warn=warn)


def _estimate(x):
    """Mean over batches (axis 0) and its standard error."""
    return x.mean(axis=0), x.std(axis=0, ddof=1) / math.sqrt(x.shape[0])


@jax.jit
def _gauss_logz(KAA, K1AA, Y, noise, n):
    Gc = jnp.linalg.cholesky(KAA + K1AA / n + noise * jnp.eye(KAA.shape[0]))
    Gy = jax.scipy.linalg.solve_triangular(Gc, Y, lower=True)
    NA, nL = Y.shape
    return -0.5 * jnp.sum(Gy * Gy) - 0.5 * nL * (2 * jnp.sum(jnp.log(jnp.diagonal(Gc))) + NA * math.log(2 * math.pi))


def _assemble(parts, n, *, warn, base=None):
    n = int(n)
    if n < 1:
        raise ValueError(f"width: must be >= 1, got {n}")
    pp = parts
    logz_g = pp["logz_g"] if n == pp["n_ref"] else float(_gauss_logz(pp["KAA"], pp["K1AA"], pp["Y"], pp["noise"], float(n)))
    if not np.isfinite(logz_g):
        raise np.linalg.LinAlgError(
            "matrix_free_posterior: K_train + K1_train/n + noise I is not positive definite; the 1/n "
            "expansion is not valid here (increase the width or the noise)"
        )
    nL = pp["Y"].shape[1]
    diag = validity(pp["eps"] / n, pp["eta"] / n, pp["eta_se"] / n)
    if warn and not diag.trusted:
        warnings.warn(regime_warning(diag), ExpansionWarning, stacklevel=3)
    return MatrixFreePosterior(
        mean=pp["gp_mean"] + pp["mean"] / n, var=pp["gp_var"][:, None] + pp["var"] / n,
        log_evidence=logz_g + pp["ev"] / n, mean_se=pp["mean_se"] / n, var_se=pp["var_se"] / n,
        log_evidence_se=pp["ev_se"] / n, gp_mean=pp["gp_mean"], gp_var=np.repeat(pp["gp_var"][:, None], nL, axis=1),
        gp_log_evidence=pp["gp_logz"], n=n, samples=pp["samples"], batches=pp["batches"],
        timings=pp["timings"] if base is None else {}, validity=diag, terms=pp["terms"], parts=pp,
    )


#: Largest ``eps = max |V| / (n K^2)`` (pairs of training inputs) of the validated regime.
EPS_MAX = 0.3
#: Largest ``eta`` (variance of the log-likelihood over the prior's networks) of the validated regime.
ETA_MAX = ETA_WARN


def _eps(KAA, V2):
    """``max |V| / K^2`` over pairs of training inputs (times ``n``: width-free)."""
    p, q, r, t = (np.asarray(a) for a in V2)
    d = np.clip(np.diagonal(np.asarray(KAA)), 0.0, None)
    ok = d > 0  # an input of zero variance (x = 0 with C_b = 0) has V = 0 there: left out, as on the exact path
    if not ok.any():
        return 0.0
    sx = np.sqrt(d)
    off = ~np.eye(d.size, dtype=bool) & np.outer(ok, ok)
    cands = [np.abs(p[ok]) / d[ok] ** 2]
    if off.any():
        dd = np.outer(d, d)[off]
        cands += [np.abs(q[off]) / dd, np.abs(t[off]) / dd, np.abs(r[off]) / (np.outer(d * sx, sx)[off])]
    return float(max(np.max(c) for c in cands))


def validity(eps: float, eta: float, eta_se: float = 0.0, *, negative_variance: bool = False) -> Validity:
    """Verdict on a first-order finite-width posterior (docs/matrix-free.md).

    Args:
        eps: ``max |V| / (n K^2)`` over pairs of training inputs (depth over width).
        eta: ``(1/4n) sum V W W`` with ``W = Y - n_L Kt^-1``: the prior variance of the
            log-likelihood ``log p(y | network)`` at first order; it grows like ``N_train / n``
            for targets the prior finds typical, faster for atypical ones.
        eta_se: Monte-Carlo standard error of ``eta``.
        negative_variance: whether a first-order posterior variance is negative.

    Returns:
        :class:`ngp.Validity` with ``eps``, ``eta``, ``eta_se`` and ``trusted`` (``eps <= EPS_MAX``,
        ``eta <= ETA_MAX`` and no negative variance); :func:`regime_warning` words the verdict.
    """
    return expansion_validity(eps, eta, eta_se, eps_max=EPS_MAX, eta_max=ETA_MAX, negative_variance=negative_variance)


def regime_warning(v: Validity) -> str:
    """The warning for a result whose ``eps`` or ``eta`` is outside the validated regime."""
    return (
        f"ngp: the first-order finite-width posterior is outside its validated regime: eps = max|V|/(nK^2) = "
        f"{v.eps:.3g} (limit {EPS_MAX}), eta = Var[log p(y | network)] = {v.eta:.3g} +- {v.eta_se:.2g} (limit {ETA_MAX}). "
        "eta grows with the number of training points over the width; widen the network, raise the noise, "
        "or use fewer training points (docs/matrix-free.md)."
    )
