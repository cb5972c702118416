"""Neural tangent kernel of an MLP at infinite width and to first order in 1/n.

Pure array functions: one layer step ``Dense(C_W, C_b, lambda_W, lambda_b)`` after
``Elementwise(sigma)`` maps the statistics of layer ``l`` to those of layer ``l + 1``.
Normalisations (docs/theory.md, NTK section): ``Var W = C_W / fan_in``, ``Var b = C_b``;
learning rates ``lambda_b`` (biases) and ``lambda_W / fan_in`` (weights); the stochastic NTK
``H_{i1 i2; a1 a2} = sum_mu lambda_mu dz_{i1;a1}/dtheta_mu dz_{i2;a2}/dtheta_mu``.

Statistics of layer ``l`` (``m = n_{l-1}`` the width feeding it; ``None`` for ``l = 1``)::

    E[z_{i;a} z_{j;b}]              = d_ij (K_ab + K1_ab / m)
    E[H_{ij;ab}]                    = d_ij (Theta_ab + Theta1_ab / m)
    conn. E[z_i1 z_i2 z_i3 z_i4]    = (1/m) [d12 d34 V_1234 + d13 d24 V_1324 + d14 d23 V_1423]
    Cov(H_{i1i2;a1a2}, H_{i3i4;a3a4}) = (1/m) [d12 d34 A_{a1a2a3a4} + d13 d24 B_{a1a3a2a4} + d14 d23 B_{a1a4a2a3}]
    kappa(H_{i1i2;a1a2}, z_{i3;a3}, z_{i4;a4}) = (1/m) [d12 d34 D_{a1a2a3a4} + d13 d24 F_{a1a3a2a4} + d14 d23 F_{a1a4a2a3}]
    E[dH_{i0i1i2;a0a1a2} z_{i3;a3}]   = (1/m) [d03 d12 P_{a0a1a2a3} + d01 d23 Q_{a0a1a2a3} + d02 d13 Q_{a0a2a1a3}]

with the dNTK ``dH_{i0i1i2;a0a1a2} = sum_{mu nu} lambda_mu lambda_nu d2z_{i0;a0}/dmu dnu
dz_{i1;a1}/dmu dz_{i2;a2}/dnu``. In ``B_{pqrs}`` and ``F_{pqrs}`` the first index pair belongs to
one neuron, the second to the other. All four-index tensors are dense ``(N, N, N, N)`` arrays.

Two-point expectations come from closed forms differentiated by autodiff (relu family) or from
the Mehler series of derivatives (smooth activations, :func:`ngp._gaussian.pair_matrix`); the
four-input expectations of the fresh terms from Gauss-Hermite quadrature in the span of the
inputs (exact polar quadrature for the relu family on at most two distinct inputs).
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
import warnings

import jax
import jax.numpy as jnp
import numpy as np

from ._cache import frozen_lru
from ._activations import Activation
from ._gaussian import (auto_orders, finite_rule, hermite_coefficients, hermite_tables, mehler_series, pair_matrix,
                        pruned_tensor_rule)
from ._kernel import kernel_map, two_point_matrix
from ._validate import device, per_layer, real
from ._warnings import AccuracyWarning

__all__ = [
    "NTKState",
    "first_layer",
    "theta_step",
    "step",
    "flow",
    "two_point_stats",
    "four_point",
]

_FIELDS_FINITE = ("K1", "Theta1", "V", "A", "B", "D", "F")
_FIELDS_DNTK = ("P", "Q")


@dataclasses.dataclass(frozen=True)
class NTKState:
    """Statistics of the pre-activations and the NTK of one layer (see the module docstring).

    ``K``, ``Theta``, ``K1``, ``Theta1`` are ``(N, N)``; ``V``, ``A``, ``B``, ``D``, ``F``,
    ``P``, ``Q`` are ``(N, N, N, N)``. Finite-width fields are ``None`` when not tracked.
    ``n`` is the width ``n_{l-1}`` dividing the 1/n statistics (``None`` for the first layer,
    which is exactly Gaussian with a deterministic NTK).
    """

    K: np.ndarray
    Theta: np.ndarray
    n: int | None = None
    K1: np.ndarray | None = None
    Theta1: np.ndarray | None = None
    V: np.ndarray | None = None
    A: np.ndarray | None = None
    B: np.ndarray | None = None
    D: np.ndarray | None = None
    F: np.ndarray | None = None
    P: np.ndarray | None = None
    Q: np.ndarray | None = None

    @property
    def finite(self) -> bool:
        return self.A is not None

    @property
    def dntk(self) -> bool:
        return self.P is not None

    def ntk_variance(self, n_out_same: bool = True) -> np.ndarray:
        """``n Var``-type tensor of one neuron's NTK: ``A_{abcd} + B_{acbd} + B_{adbc}``.

        ``Cov(H_{ii;ab}, H_{ii;cd}) = (A + B + B) / n``.
        """
        return self.A + self.B.transpose(0, 2, 1, 3) + self.B.transpose(0, 2, 3, 1)

    def same_neuron_cross(self) -> np.ndarray:
        """``kappa(H_{ii;ab}, z_{i;c}, z_{i;d}) * n = D_abcd + F_acbd + F_adbc``."""
        return self.D + self.F.transpose(0, 2, 1, 3) + self.F.transpose(0, 2, 3, 1)

    def same_neuron_dntk(self) -> np.ndarray:
        """``E[dH_{iii;a0a1a2} z_{i;a3}] * n = P + Q_{a0a1a2a3} + Q_{a0a2a1a3}``."""
        return self.P + self.Q + self.Q.transpose(0, 2, 1, 3)


# ----------------------------------------------------------------------------- first layer
def first_layer(X, *, C_W: float, C_b: float, lam_W: float = 1.0, lam_b: float = 1.0,
                finite: bool = False, dntk: bool = False) -> NTKState:
    """Layer 1 (exactly Gaussian, deterministic NTK): ``K = C_b + C_W X X^T / n0``,
    ``Theta = lambda_b + lambda_W X X^T / n0``; all 1/n statistics vanish.

    Args:
        X: ``(N, n0)`` inputs.
    """
    X = np.asarray(X, dtype=float)
    G = X @ X.T / X.shape[1]
    N = X.shape[0]
    zero2, zero4 = np.zeros((N, N)), np.zeros((N,) * 4)
    extra = {}
    if finite or dntk:
        extra.update({k: (zero2 if k in ("K1", "Theta1") else zero4) for k in _FIELDS_FINITE})
    if dntk:
        extra.update({k: zero4 for k in _FIELDS_DNTK})
    return NTKState(K=C_b + C_W * G, Theta=lam_b + lam_W * G, n=None, **extra)


# ----------------------------------------------------------------------------- two-point functions
def _is_closed(act: Activation) -> bool:
    return act.relu_slopes is not None


#: Largest derivative order of the activation used by the smooth-activation path.
_MAX_DERIV = 5
#: ``(p, q)`` derivative pairs whose two-point functions the smooth path tabulates.
_PAIRS = tuple(sorted({(i + a, i + b) for i in (0, 1) for a, b in
                       ((0, 0), (2, 0), (0, 2), (1, 1), (4, 0), (0, 4), (2, 2), (3, 1), (1, 3))}
                      | {(2, 0), (3, 1), (2, 2)}))


def _derivative_tables(act: Activation, K):
    """``T[(p, q)][a, b] = <s^(p)(z_a) s^(q)(z_b)>_K`` for all pairs in :data:`_PAIRS`.

    Off the diagonal by the Mehler series, with the Hermite coefficients of the derivatives
    obtained from those of ``s`` (Stein: ``c^(p)_j = c_{j+p} sqrt((j+p)!/j!) / K^(p/2)``); on
    the diagonal by the 1-D Gauss-Hermite rule. One compiled function per activation.
    """
    K = device(K)
    terms, nodes = auto_orders(float(jnp.max(jnp.diagonal(K))))
    tables = hermite_tables(int(terms) + _MAX_DERIV, int(nodes))  # an argument: not a constant of the program
    out = np.asarray(_tables_jit(act, int(terms), int(nodes), K, tables))
    return {pq: out[i] for i, pq in enumerate(_PAIRS)}


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _tables_jit(act, terms, nodes, K, tables):
    kd = jnp.diagonal(K)
    kpos = jnp.where(kd > 0, kd, 1.0)
    c0 = hermite_coefficients(act.fn, kd, tables=tables)  # (N, T + 6)
    j = jnp.arange(terms + 1, dtype=c0.dtype)
    coeffs = []
    zero = (kd <= 0)[:, None]  # z_a = 0 exactly: s^(p)(z_a) is the constant s^(p)(0) (Stein's 0/0 above)
    first = (j == 0).astype(c0.dtype)
    for p in range(_MAX_DERIV + 1):
        amp = jnp.exp(0.5 * (jax.scipy.special.gammaln(j + p + 1) - jax.scipy.special.gammaln(j + 1)))
        at0 = act.derivative(p)(jnp.zeros(1, dtype=c0.dtype))[0] * first
        coeffs.append(jnp.where(zero, at0, c0[:, p:p + terms + 1] * amp / kpos[:, None] ** (0.5 * p)))
    outer = jnp.outer(kpos, kpos)
    rho = jnp.clip(jnp.where(jnp.outer(kd, kd) > 0, K / jnp.sqrt(outer), 0.0), -1.0, 1.0)
    cf = jnp.stack([coeffs[p] for p, _ in _PAIRS])  # (npairs, N, T+1)
    cg = jnp.stack([coeffs[q] for _, q in _PAIRS])
    acc = mehler_series(cf, cg, rho)
    x, w = (device(t, dtype=K.dtype) for t in finite_rule(nodes))
    z = jnp.sqrt(jnp.maximum(kd, 0.0))[:, None] * x  # (N, nodes)
    der = [act.derivative(p)(z) for p in range(_MAX_DERIV + 1)]
    diag = jnp.stack([jnp.sum(w * der[p] * der[q], axis=-1) for p, q in _PAIRS])  # (npairs, N)
    n = K.shape[0]
    return acc.at[:, jnp.arange(n), jnp.arange(n)].set(diag)


def _mehler_stats(T, i: int):
    """Value, gradient (N, N, 3) and Hessian (N, N, 3, 3) of ``<s^(i)(z_a) s^(i)(z_b)>_K``
    with respect to ``(K_aa, K_bb, K_ab)`` (total derivatives; on the diagonal the function of
    ``K_aa`` alone, slot 0), by the heat-equation identities, from the tables ``T``."""

    def pm(p, q):
        return T[(i + p, i + q)]

    N = pm(0, 0).shape[0]
    val = pm(0, 0).copy()
    J = np.stack([0.5 * pm(2, 0), 0.5 * pm(0, 2), pm(1, 1)], axis=-1)
    h00, h11, h01 = 0.25 * pm(4, 0), 0.25 * pm(0, 4), 0.25 * pm(2, 2)
    h02, h12, h22 = 0.5 * pm(3, 1), 0.5 * pm(1, 3), pm(2, 2)
    H = np.stack([np.stack([h00, h01, h02], -1), np.stack([h01, h11, h12], -1),
                  np.stack([h02, h12, h22], -1)], axis=-2)
    idx = np.arange(N)
    # diagonal, f = s^(i): d/dk <f f> = <(f f)''> / 2 and d2/dk2 <f f> = <(f f)''''> / 4
    e = {pq: np.diagonal(pm(*pq)) for pq in ((2, 0), (1, 1), (4, 0), (3, 1), (2, 2))}
    dd1 = 0.5 * (2 * e[(2, 0)] + 2 * e[(1, 1)])
    dd2 = 0.25 * (2 * e[(4, 0)] + 8 * e[(3, 1)] + 6 * e[(2, 2)])
    J[idx, idx] = 0.0
    H[idx, idx] = 0.0
    J[idx, idx, 0] = dd1
    H[idx, idx, 0, 0] = dd2
    return val, J, H


@functools.lru_cache(maxsize=64)
def _relu_closed(act: Activation):
    """Closed forms of the relu family: <s s>, <s' s'> off the diagonal and on it."""
    ap, am = act.relu_slopes
    s2 = ap * ap + am * am

    def theta(kaa, kbb, kab):
        return jnp.arccos(jnp.clip(kab / jnp.sqrt(kaa * kbb), -1.0, 1.0))

    def phi_off(v):
        return act.two_point(v[0], v[1], v[2])

    def chi_off(v):
        t = theta(v[0], v[1], v[2])
        return s2 * (jnp.pi - t) / (2 * jnp.pi) + 2 * ap * am * t / (2 * jnp.pi)

    funcs = {}
    for name, off in (("phi", phi_off), ("chi", chi_off)):
        funcs[name] = jax.jit(jax.vmap(lambda v, off=off: (off(v), jax.grad(off)(v), jax.hessian(off)(v))))
    diag = {"phi": (lambda k: 0.5 * s2 * k, 0.5 * s2, 0.0), "chi": (lambda k: 0.5 * s2 + 0.0 * k, 0.0, 0.0)}
    return funcs, diag


def _closed_stats(act: Activation, K, name: str):
    funcs, diag = _relu_closed(act)
    K = np.asarray(K, dtype=float)
    N = K.shape[0]
    kd = np.diag(K)
    a, b = np.meshgrid(np.arange(N), np.arange(N), indexing="ij")
    off = a != b
    if np.any(kd <= 0):  # (an input x = 0 with C_b = 0): relu'(0) is the delta function's edge, undefined
        raise ValueError(
            f"ntk: {int(np.sum(kd <= 0))} input(s) have zero pre-activation variance (an input x = 0 with "
            "C_b = 0); the relu family's finite-width NTK statistics need non-zero variances (their derivatives are "
            "steps and delta functions at 0): drop those inputs or give the biases a variance (C_b > 0)")
    if np.any(off):
        rho = K[off] / np.sqrt(kd[a[off]] * kd[b[off]])
        if np.any(np.abs(rho) > 1 - 1e-10):
            raise ValueError(
                "ntk: the relu-family finite-width statistics need distinct, non-collinear inputs with non-zero "
                "variance (their derivatives are delta functions that diverge for collinear inputs); merge duplicated inputs"
            )
    args = np.stack([kd[a], kd[b], K], axis=-1).reshape(-1, 3)
    args = np.where(off.reshape(-1, 1), args, np.array([1.0, 1.0, 0.0]))  # placeholders on the diagonal
    v, g, h = (np.array(t) for t in funcs[name](device(args)))
    val = v.reshape(N, N)
    J = g.reshape(N, N, 3).copy()
    H = h.reshape(N, N, 3, 3).copy()
    fval, d1, d2 = diag[name]
    idx = np.arange(N)
    val[idx, idx] = np.asarray(fval(kd))
    J[idx, idx] = 0.0
    H[idx, idx] = 0.0
    J[idx, idx, 0] = d1
    H[idx, idx, 0, 0] = d2
    return val, J, H


@dataclasses.dataclass(frozen=True)
class TwoPoint:
    """Two-point expectations over ``z ~ N(0, K)`` needed by one layer step (all ``(N, N)``).

    ``phi = <s_a s_b>``, ``chi = <s'_a s'_b>`` with gradients ``J_*`` ``(N, N, 3)`` and
    Hessians ``H_*`` ``(N, N, 3, 3)`` with respect to ``(K_aa, K_bb, K_ab)`` (total
    derivatives; diagonal entries depend on ``K_aa`` only); ``psi = <s''_a s_b>``;
    ``omega = <s'''_a s'_b>`` and ``nu = <s''_a s''_b>`` (smooth activations, for the dNTK).
    """

    phi: np.ndarray
    J_phi: np.ndarray
    H_phi: np.ndarray
    chi: np.ndarray
    J_chi: np.ndarray
    H_chi: np.ndarray
    psi: np.ndarray
    omega: np.ndarray | None = None
    nu: np.ndarray | None = None


def two_point_stats(act: Activation, K, *, dntk: bool = False) -> TwoPoint:
    """All two-point expectations (and their ``K``-derivatives) of one layer step."""
    K = np.asarray(K, dtype=float)
    if _is_closed(act):
        if dntk and act.relu_slopes != (1.0, 1.0):
            raise ValueError(
                f"ntk: the dNTK statistics of the kinked activation {act.name!r} involve products of delta "
                "functions; they are implemented for smooth activations only"
            )
        phi, J_phi, H_phi = _closed_stats(act, K, "phi")
        chi, J_chi, H_chi = _closed_stats(act, K, "chi")
        # <s''_a s_b> = 2 d<s_a s_b>/dK_aa off the diagonal; on it <delta(z) z theta(z)> = 0
        psi = 2.0 * J_phi[..., 0]
        np.fill_diagonal(psi, 0.0)
        zero = np.zeros_like(K)
        return TwoPoint(phi, J_phi, H_phi, chi, J_chi, H_chi, psi,
                        zero if dntk else None, zero if dntk else None)
    if not act.smooth:
        raise ValueError(
            f"ntk: activation {act.name!r} is declared non-smooth and has no closed form; its derivatives "
            "(delta functions) cannot be integrated numerically"
        )
    T = _derivative_tables(act, K)
    phi, J_phi, H_phi = _mehler_stats(T, 0)
    chi, J_chi, H_chi = _mehler_stats(T, 1)
    return TwoPoint(phi, J_phi, H_phi, chi, J_chi, H_chi, T[(2, 0)],
                    T[(3, 1)] if dntk else None, T[(2, 2)] if dntk else None)


# ----------------------------------------------------------------------------- contractions
@frozen_lru(32)
def _slots(N: int):
    a, b = np.meshgrid(np.arange(N), np.arange(N), indexing="ij")
    return (a, b, a), (a, b, b)  # slot s of pair (a, b): (I0[s], I1[s]) = (a,a), (b,b), (a,b)


def _jvec(J, X):
    """``sum_s J[a,b,s] X[slot_s(a,b)]`` for a symmetric ``(N, N)`` matrix ``X``."""
    I0, I1 = _slots(J.shape[0])
    return sum(J[..., s] * X[I0[s], I1[s]] for s in range(3))


def _jpair(J, T):
    """``sum_s J[a,b,s] T[a, b, slot_s(a,b)]`` (a derivative of entry ``(a,b)`` against a
    tensor depending on ``(a,b)``; ``T`` symmetric in its last pair)."""
    N = J.shape[0]
    I0, I1 = _slots(N)
    a, b = I0[0], I1[1]
    return sum(J[..., s] * T[a, b, I0[s], I1[s]] for s in range(3))


def _left(J, T):
    """``out[a,b,c,d] = sum_s J[a,b,s] T[slot_s(a,b), c, d]``."""
    I0, I1 = _slots(J.shape[0])
    return sum(J[..., s, None, None] * T[I0[s], I1[s]] for s in range(3))


def _right(T, J):
    """``out[a,b,c,d] = sum_t J[c,d,t] T[a, b, slot_t(c,d)]``."""
    I0, I1 = _slots(J.shape[0])
    return sum(J[None, None, :, :, t] * T[:, :, I0[t], I1[t]] for t in range(3))


def _hess(H, T):
    """``out[a,b] = sum_{st} H[a,b,s,t] T[slot_s(a,b), slot_t(a,b)]``."""
    I0, I1 = _slots(H.shape[0])
    return sum(H[..., s, t] * T[I0[s], I1[s], I0[t], I1[t]] for s in range(3) for t in range(3))


def _yy(u1, v1, u2, v2, F):
    """``sum_{c1 c2} Y1_{pq;c1} Y2_{rs;c2} F_{p c1 r c2}`` with ``Y_{pq;c} = d_cp u_pq + d_cq v_pq``."""
    Fpprr = np.einsum("pprr->pr", F)
    Fpprs = np.einsum("pprs->prs", F)
    Fpqrr = np.einsum("pqrr->pqr", F)
    return (u1[:, :, None, None] * u2[None, None] * Fpprr[:, None, :, None]
            + u1[:, :, None, None] * v2[None, None] * Fpprs[:, None, :, :]
            + v1[:, :, None, None] * u2[None, None] * Fpqrr[:, :, :, None]
            + v1[:, :, None, None] * v2[None, None] * F)


# ----------------------------------------------------------------------------- four-point functions
#: Gauss-Hermite nodes per dimension of the joint rule, by its dimension (N <= 4 inputs use one
#: joint rule; more inputs use the 4-D rule on every subset of four).
FOUR_POINT_ORDERS = {1: 200, 2: 128, 3: 64, 4: 40}
#: Nodes per dimension of the 4-D rule when N > 4 (one rule per subset of four inputs).
SUBSET_ORDER = 24


def _sqrt_factor(K, tol=1e-12):
    lam, U = np.linalg.eigh(0.5 * (K + K.T))
    keep = lam > tol * max(lam.max(), 1e-300)
    return U[:, keep] * np.sqrt(lam[keep])  # (N, r): z = R x


def _contract4(w, F1, F2, F3, F4):
    """``T[a,b,c,d] = sum_q w_q F1[q,a] F2[q,b] F3[q,c] F4[q,d]``."""
    Q, N = F1.shape
    X = (w[:, None, None] * F1[:, :, None] * F2[:, None, :]).reshape(Q, N * N)
    Y = (F3[:, :, None] * F4[:, None, :]).reshape(Q, N * N)
    return (X.T @ Y).reshape(N, N, N, N)


def _gh_block(funcs, patterns, K, orders, subset_order):
    N = K.shape[0]
    out = {p: np.zeros((N,) * 4) for p in patterns}
    subsets = [tuple(range(N))] if N <= 4 else list(itertools.combinations(range(N), 4))
    for S in subsets:
        S = np.asarray(S)
        R = _sqrt_factor(K[np.ix_(S, S)])
        r = R.shape[1]
        if r == 0:
            x, w = np.zeros((1, 1)), np.ones(1)
            R = np.zeros((len(S), 1))
        else:
            m = orders[r] if N <= 4 else subset_order
            x, w = pruned_tensor_rule(r, m)
        z = device(x @ R.T)
        vals = {p: np.asarray(funcs[p](z)) for p in {q for pat in patterns for q in pat}}
        for pat in patterns:
            T = _contract4(w, *(vals[q] for q in pat))
            out[pat][np.ix_(S, S, S, S)] = T
    return out


def _relu_polar(act: Activation, patterns, K):
    """Exact four-point expectations for the relu family on at most two distinct inputs:
    radial part in closed form, angular part by Gauss-Legendre between the kinks."""
    ap, am = act.relu_slopes
    R = _sqrt_factor(K)
    N = K.shape[0]
    if R.shape[1] < 2:
        R = np.concatenate([R, np.zeros((N, 2 - R.shape[1]))], axis=1)
    breaks = [0.0, 2 * np.pi]
    for a in range(N):
        if np.hypot(*R[a]) > 0:
            t = math.atan2(-R[a, 0], R[a, 1]) % np.pi
            breaks += [t, t + np.pi]
    breaks = np.unique(np.asarray(breaks))
    xg, wg = np.polynomial.legendre.leggauss(12)
    phis, ws = [], []
    for lo, hi in zip(breaks[:-1], breaks[1:]):
        if hi - lo < 1e-15:
            continue
        phis.append(0.5 * (hi - lo) * xg + 0.5 * (hi + lo))
        ws.append(0.5 * (hi - lo) * wg)
    phi, w = np.concatenate(phis), np.concatenate(ws) / (2 * np.pi)
    y = np.stack([np.cos(phi), np.sin(phi)], axis=1) @ R.T  # (Q, N) unit-radius values
    pos = y > 0
    f0 = np.where(pos, ap * y, am * y)  # sigma, degree 1
    f1 = np.where(pos, ap, am)  # sigma', degree 0
    vals = {0: f0, 1: f1}
    out = {}
    for pat in patterns:
        if any(p > 1 for p in pat):
            raise ValueError("relu family: four-point functions with s'' are not available")
        deg = sum(1 - p for p in pat)
        radial = 2.0 ** (deg / 2) * math.gamma(1 + deg / 2)  # E[r^deg], r ~ chi_2
        out[pat] = radial * _contract4(w, *(vals[p] for p in pat))
    return out


def four_point(act: Activation, K, patterns, *, orders=None, subset_order: int | None = None):
    """Dense four-point expectations ``T[a,b,c,d] = <s^(p1)_a s^(p2)_b s^(p3)_c s^(p4)_d>_K``.

    Args:
        act: the activation.
        K: ``(N, N)`` kernel.
        patterns: derivative orders ``(p1, p2, p3, p4)`` (tuples), one tensor each.
        orders: Gauss-Hermite nodes per dimension by rule dimension (default
            :data:`FOUR_POINT_ORDERS`); ``subset_order`` for ``N > 4`` (default :data:`SUBSET_ORDER`).

    Returns:
        dict pattern -> ``(N, N, N, N)`` array.

    The relu family is integrated exactly (polar) on every set of at most two distinct inputs;
    entries with three or four distinct inputs then come from Gauss-Hermite quadrature of kinked
    functions, which converges slowly (a warning says so).
    """
    K = np.asarray(K, dtype=float)
    N = K.shape[0]
    patterns = [tuple(p) for p in patterns]
    orders = dict(FOUR_POINT_ORDERS if orders is None else orders)
    subset_order = SUBSET_ORDER if subset_order is None else int(subset_order)
    if _is_closed(act) and act.relu_slopes[0] != act.relu_slopes[1]:  # kinked (linear: polynomial, exact by GH)
        if N <= 2:
            return _relu_polar(act, patterns, K)
        warnings.warn(
            f"ntk: four-point expectations of {act.name!r} with three or more distinct inputs use Gauss-Hermite "
            "quadrature of kinked functions (relative error ~1e-3); entries with at most two distinct inputs are exact",
            AccuracyWarning,
            stacklevel=3,
        )
        ap, am = act.relu_slopes
        funcs = {0: act.fn, 1: lambda x: jnp.where(x > 0, ap, am) + 0.0 * x}
        out = _gh_block(funcs, patterns, K, orders, subset_order)
        for a, b in itertools.combinations(range(N), 2):
            S = np.asarray([a, b])
            exact = _relu_polar(act, patterns, K[np.ix_(S, S)])
            for pat in patterns:
                out[pat][np.ix_(S, S, S, S)] = exact[pat]
        return out
    funcs = {p: act.derivative(p) for p in {q for pat in patterns for q in pat}}
    return _gh_block(funcs, patterns, K, orders, subset_order)


# ----------------------------------------------------------------------------- layer step
def theta_step(act: Activation, K, Theta, *, lam_W: float, lam_b: float, C_W: float, tp: TwoPoint | None = None):
    """Infinite-width NTK map ``Theta' = lambda_b + lambda_W <s s>_K + C_W <s' s'>_K * Theta``
    (elementwise product), for the layer being produced with ``(C_W, lambda_W, lambda_b)``."""
    if tp is None:
        phi, chi = _phi_chi(act, K)
    else:
        phi, chi = tp.phi, tp.chi
    return lam_b + lam_W * phi + C_W * chi * np.asarray(Theta)


def _phi_chi(act: Activation, K):
    """``<s s>_K`` and ``<s' s'>_K`` only (infinite-width path: any activation)."""
    K = device(K)
    phi = np.asarray(two_point_matrix(act, K))
    if _is_closed(act):
        ap, am = act.relu_slopes
        kd = np.diag(np.asarray(K))
        norm = np.sqrt(np.outer(kd, kd))
        with np.errstate(invalid="ignore", divide="ignore"):
            cos = np.where(norm > 0, np.asarray(K) / np.where(norm > 0, norm, 1.0), 1.0)
        t = np.arccos(np.clip(cos, -1.0, 1.0))
        chi = (ap * ap + am * am) * (np.pi - t) / (2 * np.pi) + 2 * ap * am * t / (2 * np.pi)
    else:
        d1 = act.derivative(1)
        chi = np.asarray(pair_matrix(d1, d1, K))
        chi = 0.5 * (chi + chi.T)
    return phi, chi


def step(act: Activation, state: NTKState, *, width: int | None, C_W: float, C_b: float,
         lam_W: float = 1.0, lam_b: float = 1.0, dntk: bool | None = None, orders=None,
         subset_order: int | None = None) -> NTKState:
    """One layer: statistics of layer ``l`` (``state``) -> layer ``l + 1``.

    Args:
        act: activation applied to layer ``l``.
        state: :class:`NTKState` of layer ``l`` (``state.n = n_{l-1}``).
        width: ``n_l``, the width of layer ``l`` (summed over by the dense layer); it becomes
            the ``n`` of the result. Only needed for the finite-width statistics.
        C_W, C_b, lam_W, lam_b: hyperparameters of layer ``l + 1``.
        dntk: also propagate ``P``, ``Q`` (default: when ``state`` carries them).

    What each map needs: ``Theta'`` needs ``(K, Theta)``; ``K1', V'`` need ``(K, K1, V)``;
    ``Theta1', A', D'`` need ``(K, Theta, K1, Theta1, V, A, D, F)``; ``B'`` needs
    ``(K, Theta, B)``; ``F'`` needs ``(K, Theta, F)``; ``P', Q'`` need ``(K, Theta, B, F, P, Q)``.
    Propagated (non-fresh) terms carry the ratio ``n_l / n_{l-1}``.
    """
    K, Theta = np.asarray(state.K, dtype=float), np.asarray(state.Theta, dtype=float)
    K_next = np.asarray(kernel_map(act, device(K), C_W, C_b))
    if not state.finite:
        return NTKState(K=K_next, Theta=theta_step(act, K, Theta, lam_W=lam_W, lam_b=lam_b, C_W=C_W))
    dntk = state.dntk if dntk is None else bool(dntk)
    if width is None:
        raise ValueError("ntk.step: `width` (n_l) is required for the finite-width statistics")
    tp = two_point_stats(act, K, dntk=dntk)
    Theta_next = theta_step(act, K, Theta, lam_W=lam_W, lam_b=lam_b, C_W=C_W, tp=tp)
    pats = [(0, 0, 0, 0), (1, 1, 0, 0), (1, 1, 1, 1)] + ([(2, 1, 1, 0)] if dntk else [])
    E4 = four_point(act, K, pats, orders=orders, subset_order=subset_order)
    phi, chi, psi = tp.phi, tp.chi, tp.psi
    cov_ss = E4[(0, 0, 0, 0)] - phi[:, :, None, None] * phi[None, None]
    cov_ds = E4[(1, 1, 0, 0)] - chi[:, :, None, None] * phi[None, None]  # Cov(s'_a s'_b, s_c s_d)
    cov_dd = E4[(1, 1, 1, 1)] - chi[:, :, None, None] * chi[None, None]
    Th_ab = Theta[:, :, None, None]
    Th_cd = Theta[None, None]
    # fresh terms (the only terms at layer 2; exact there at any width)
    V = C_W**2 * cov_ss
    A = (lam_W**2 * cov_ss
         + lam_W * C_W * (Th_cd * cov_ds.transpose(2, 3, 0, 1) + Th_ab * cov_ds)
         + C_W**2 * Th_ab * Th_cd * cov_dd)
    D = C_W * (lam_W * cov_ss + C_W * Th_ab * cov_ds)
    T1111 = E4[(1, 1, 1, 1)]
    B = C_W**2 * T1111 * Theta[:, None, :, None] * Theta[None, :, None, :]  # Theta_pr Theta_qs
    F = C_W**2 * E4[(1, 1, 0, 0)].transpose(0, 2, 1, 3) * Theta[:, None, :, None]  # <s'_p s_q s'_r s_s> Theta_pr
    K1 = np.zeros_like(K)
    Theta1 = np.zeros_like(K)
    if dntk:
        P = C_W**2 * E4[(2, 1, 1, 0)] * Theta[:, :, None, None] * Theta[:, None, :, None]
        Q = P + lam_W * C_W * E4[(1, 1, 0, 0)].transpose(0, 2, 1, 3) * Theta[:, None, :, None]
    if state.n is not None:
        r = width / state.n
        JG = C_W * tp.J_phi  # kernel map K' = C_b + C_W phi
        HG = C_W * tp.H_phi
        JT = lam_W * tp.J_phi + C_W * Theta[:, :, None] * tp.J_chi  # Theta' map, d/dK at fixed Theta
        HT = lam_W * tp.H_phi + C_W * Theta[:, :, None, None] * tp.H_chi
        cJ = C_W * chi  # dTheta'_ab / dTheta_ab
        V0, A0, D0, B0, F0 = state.V, state.A, state.D, state.B, state.F
        K1 = r * (_jvec(JG, state.K1) + 0.5 * _hess(HG, V0))
        kappa = state.same_neuron_cross()  # kappa(H_jj;ab, z_j;c, z_j;d) * m
        Theta1 = r * (_jvec(JT, state.K1) + 0.5 * _hess(HT, V0) + cJ * state.Theta1
                      + C_W * _jpair(tp.J_chi, kappa))
        V = V + r * _left(JG, _right(V0, JG))
        A = A + r * (_left(JT, _right(V0, JT))
                     + cJ[:, :, None, None] * _right(D0, JT)
                     + cJ[None, None] * _right(D0, JT).transpose(2, 3, 0, 1)
                     + cJ[:, :, None, None] * cJ[None, None] * A0)
        D = D + r * (_left(JT, _right(V0, JG)) + cJ[:, :, None, None] * _right(D0, JG))
        B = B + r * C_W**2 * chi[:, :, None, None] * chi[None, None] * B0
        F = F + r * C_W**2 * _yy(psi, chi, psi, chi, F0)
        if dntk:
            P0, Q0 = state.P, state.Q
            Bdiag = np.einsum("aacd->acd", B0)  # B_{a0 a0 a1 a2}
            P_diag = np.einsum("abca->abc", P0)  # P_{a0 a1 a2 a0}
            P = P + r * C_W**2 * chi[None, :, :, None] * (
                psi[:, None, None, :] * (Bdiag[:, :, :, None] + P_diag[:, :, :, None])
                + chi[:, None, None, :] * P0)
            Q_diag = np.einsum("abcc->abc", Q0)  # Q_{a0 a1 a2 a2}
            yF = _yy(tp.omega, tp.nu, psi, chi, F0)  # [a0 a1 a2 a3]
            yF0 = _yy(psi, chi, psi, chi, F0)
            Q = Q + r * (C_W**2 * Theta[:, :, None, None] * yF
                         + C_W**2 * chi[:, :, None, None] * (psi[None, None] * Q_diag[..., None]
                                                             + chi[None, None] * Q0)
                         + lam_W * C_W * yF0)
    V = _sym_pairs(V)
    A = _sym_pairs(A)
    extra = {"P": P, "Q": Q} if dntk else {}
    return NTKState(K=K_next, Theta=Theta_next, n=width, K1=0.5 * (K1 + K1.T), Theta1=0.5 * (Theta1 + Theta1.T),
                    V=V, A=A, B=B, D=D, F=F, **extra)


def _sym_pairs(T):
    """Symmetrise a pair-pair tensor over ``a<->b``, ``c<->d`` and ``(ab)<->(cd)``."""
    T = 0.5 * (T + T.transpose(1, 0, 2, 3))
    T = 0.5 * (T + T.transpose(0, 1, 3, 2))
    return 0.5 * (T + T.transpose(2, 3, 0, 1))


# ----------------------------------------------------------------------------- driver
def flow(X, act: Activation, *, depth: int, widths=None, C_W=1.0, C_b=0.0, lam_W=1.0, lam_b=1.0,
         finite: bool = True, dntk: bool = False, **options) -> tuple:
    """Per-layer :class:`NTKState` of an MLP, layers ``1..depth``.

    Args:
        X: ``(N, n0)`` inputs.
        act: activation (an :class:`ngp.Activation`).
        depth: number of weight layers ``L``.
        widths: the ``L - 1`` hidden widths (an int for equal widths); needed when ``finite``.
        C_W, C_b, lam_W, lam_b: floats or per-layer sequences of length ``L``.
        finite: propagate the 1/n statistics (``K1, Theta1, V, A, B, D, F``).
        dntk: also the dNTK-preactivation correlators ``P, Q`` (smooth activations).
        options: ``orders``, ``subset_order`` of the four-point quadrature.
    """
    C_W, C_b, lam_W, lam_b = (per_layer(v, depth, n, real) for v, n in
                              ((C_W, "C_W"), (C_b, "C_b"), (lam_W, "lam_W"), (lam_b, "lam_b")))
    if depth > 1 and (finite or dntk):
        if widths is None:
            raise ValueError("flow: widths are required for the finite-width statistics")
        widths = per_layer(widths, depth - 1, "widths", real, what="hidden layer")
    states = [first_layer(X, C_W=C_W[0], C_b=C_b[0], lam_W=lam_W[0], lam_b=lam_b[0], finite=finite, dntk=dntk)]
    for l in range(1, depth):
        w = None if widths is None else int(widths[l - 1])
        states.append(step(act, states[-1], width=w, C_W=C_W[l], C_b=C_b[l], lam_W=lam_W[l], lam_b=lam_b[l],
                           dntk=dntk, **options))
    return tuple(states)
