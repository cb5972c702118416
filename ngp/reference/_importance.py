"""Rao-Blackwellised importance sampling from the exact network prior: ``importance_posterior``.

Draws ``S`` random networks from the prior (the exact conditional-Gaussian sampler of
``ngp.sample_networks(..., method="conditional")``, ``docs/theory.md``, "Conventions") and integrates
the output layer analytically: given the last hidden layer, every output neuron is
``N(0, G_hat)`` on train and test inputs, with the stochastic metric
``G_hat = C_b^(L) + (C_W^(L) / n_{L-1}) s(z^(L-1)) s(z^(L-1))^T``, independently over
neurons. Each draw is weighted by its exact likelihood ``p(y | G_hat)`` (``docs/theory.md``,
"Conventions"), so exact conditioning (``noise = 0``) works too.
"""

from __future__ import annotations

import collections
import math

import jax
import jax.numpy as jnp
import numpy as np

from .._sampling import SAMPLING_MEMORY, cached_per_network, check_sampling_memory, network_keys, sampling_bytes
from .._linalg import SAMPLER_JITTER
from .._validate import RCOND_MIN as _RCOND_GP
from .._validate import as_targets, check_seed, count, device, float64, memory_bytes, nonneg_float, train_test, warn
from .._warnings import SamplingWarning
from .._results import result

__all__ = ["ImportancePosterior", "importance_posterior", "log_likelihood", "gaussian_conditional", "RCOND_MIN"]

# A draw whose ``K = G_AA + noise I`` is numerically singular -- the Cholesky factorisation
# fails, or its smallest pivot is ``<= RCOND_MIN * trace(K)`` -- is given zero likelihood
# (exactly singular draws have zero likelihood when ``noise = 0``; e.g. ReLU with ``C_b = 0``).
# The threshold is ``ngp.gp_posterior``'s reciprocal-condition-number limit, raised above the
# resolution of a drawn metric: the samplers' Cholesky jitter (``SAMPLER_JITTER`` relative, per layer)
# leaves an exactly singular metric with reciprocal condition numbers up to ~1e-12; such draws are
# singular, not draws whose likelihood the jitter decides.

#: Reciprocal condition number below which a drawn ``G_AA + noise I`` counts as singular.
RCOND_MIN = max(_RCOND_GP, 100 * SAMPLER_JITTER)

#: An effective sample size below this triggers a warning.
ESS_WARN = 100.0

# Approximate number of float64 hidden activations held per batch (~64 MB).
_BATCH_ELEMENTS = 8_000_000


@result
class ImportancePosterior:
    """Posterior of the latent outputs at the test inputs, by importance sampling the exact prior.

    Field names match :class:`ngp.GPPosterior` so the two can be compared field by field.

    Attributes:
        mean: ``(N_test, out_dim)`` posterior mean ``E[z_{i;b} | y]``.
        var: ``(N_test, out_dim)`` posterior variances of the latent outputs (noise excluded).
        cov: ``(N_test, out_dim, N_test, out_dim)`` posterior covariance
            ``cov[a, i, b, j] = Cov[z_{i;a}, z_{j;b} | y]``, including the covariance between
            different output neurons that finite width induces.
        log_evidence: log marginal likelihood of all ``N_train * out_dim`` targets,
            ``log E_prior[p(y | network)]``.
        mean_se: ``(N_test, out_dim)`` Monte-Carlo standard error of ``mean`` (delta method
            for the self-normalised estimator).
        var_se: ``(N_test, out_dim)`` Monte-Carlo standard error of ``var`` (delta method).
        log_evidence_se: standard error of ``log_evidence``, ``sqrt((S/ess - 1)/(S - 1))``.
        ess: Kish effective sample size ``(sum w)^2 / sum w^2`` of the importance weights.
        num_samples: number of prior draws ``S``.
        num_singular: draws given zero likelihood because ``G_AA + noise I`` was numerically
            singular (see ``RCOND_MIN``); e.g. ReLU with ``C_b = 0`` and ``noise = 0``.
        noise: the observation-noise variance used.
    """

    mean: np.ndarray
    var: np.ndarray
    cov: np.ndarray
    log_evidence: float
    mean_se: np.ndarray
    var_se: np.ndarray
    log_evidence_se: float
    ess: float
    num_samples: int
    num_singular: int
    noise: float

    @property
    def std(self) -> np.ndarray:
        """``(N_test, out_dim)`` posterior standard deviations of the latent outputs."""
        return np.sqrt(np.clip(self.var, 0.0, None))


def gaussian_conditional(G, Y, n_train: int, noise: float):
    """Gaussian conditioning of one output layer given its metric (batched over draws).

    Args:
        G: ``(S, N, N)`` metrics over ``[train; test]`` inputs (first ``n_train`` rows are train).
        Y: ``(n_train, out_dim)`` targets.
        n_train: number of training inputs.
        noise: observation-noise variance (added to the train block).

    Returns:
        ``(loglik, m, C)``: ``(S,)`` log-likelihoods ``sum_i log N(y_i | 0, G_AA + noise I)``
        (``-inf`` for numerically singular ``G_AA + noise I``), ``(S, N_test, out_dim)``
        conditional means ``G_BA (G_AA + noise I)^{-1} y`` and ``(S, N_test, N_test)``
        conditional covariances ``G_BB - G_BA (G_AA + noise I)^{-1} G_AB`` (zero where singular).
    """
    G = 0.5 * (G + jnp.swapaxes(G, -1, -2))
    out = Y.shape[1]
    K = G[:, :n_train, :n_train] + noise * jnp.eye(n_train, dtype=G.dtype)
    G_BA = G[:, n_train:, :n_train]
    G_BB = G[:, n_train:, n_train:]
    chol = jnp.linalg.cholesky(K)
    pivots = jnp.diagonal(chol, axis1=1, axis2=2) ** 2  # each pivot >= the smallest eigenvalue
    trace = jnp.trace(K, axis1=1, axis2=2)  # >= the largest eigenvalue
    valid = jnp.all(jnp.isfinite(chol), axis=(1, 2)) & (jnp.min(pivots, axis=1) > RCOND_MIN * trace)
    valid = valid & jnp.all(jnp.isfinite(G_BB), axis=(1, 2)) & jnp.all(jnp.isfinite(G_BA), axis=(1, 2))
    eye = jnp.eye(n_train, dtype=G.dtype)
    chol = jnp.where(valid[:, None, None], chol, eye)
    solve = jax.vmap(lambda Lc, b: jax.scipy.linalg.solve_triangular(Lc, b, lower=True))
    Ly = solve(chol, jnp.broadcast_to(Y, (G.shape[0],) + Y.shape))  # L^{-1} y, (S, n_train, out)
    LG = solve(chol, jnp.swapaxes(G_BA, 1, 2))  # L^{-1} G_AB, (S, n_train, N_test)
    quad = jnp.sum(Ly**2, axis=(1, 2))
    logdet = jnp.sum(jnp.log(jnp.where(valid[:, None], pivots, 1.0)), axis=1)
    loglik = -0.5 * quad - 0.5 * out * (logdet + n_train * math.log(2.0 * math.pi))
    loglik = jnp.where(valid, loglik, -jnp.inf)
    m = jnp.einsum("skb,ski->sbi", LG, Ly)
    C = G_BB - jnp.einsum("ska,skb->sab", LG, LG)
    m = jnp.where(valid[:, None, None], m, 0.0)
    C = jnp.where(valid[:, None, None], C, 0.0)
    return loglik, m, C


_conditional_jit = jax.jit(gaussian_conditional, static_argnums=(2,))


@float64
def log_likelihood(metric, Y_train, *, noise: float) -> np.ndarray:
    """Exact log-likelihood of the targets given output metrics ``G_hat`` on the training inputs.

    Given the last hidden layer, each output neuron is ``N(0, G_hat)``; with observation
    noise the targets are ``y_i ~ N(0, G_hat + noise I)`` independently over neurons.

    Args:
        metric: ``(S, N_train, N_train)`` (or one ``(N_train, N_train)``) metrics, e.g.
            ``ngp.sample_networks(net, X_train, S).metric``.
        Y_train: ``(N_train, out_dim)`` targets (``(N_train,)`` for one output).
        noise: observation-noise variance ``>= 0``.

    Returns:
        ``(S,)`` (or scalar) ``sum_i log N(y_i | 0, G_hat + noise I)``; ``-inf`` where
        ``G_hat + noise I`` is numerically singular (see ``RCOND_MIN``).
    """
    noise = nonneg_float(noise, "noise")
    G = np.asarray(metric, dtype=float)
    single = G.ndim == 2
    if single:
        G = G[None]
    if G.ndim != 3 or G.shape[1] != G.shape[2]:
        raise ValueError(f"metric: expected shape (S, N_train, N_train), got {np.shape(metric)}")
    Y = np.asarray(Y_train, dtype=float)
    Y = as_targets(Y, G.shape[1], Y.shape[1] if Y.ndim == 2 else 1)
    ll, _, _ = _conditional_jit(device(G), device(Y), G.shape[1], noise)
    ll = np.asarray(ll)
    return ll[0] if single else ll


_STATS_CACHE: "collections.OrderedDict" = collections.OrderedDict()


def _cached_stats(net, n0: int, n_train: int):
    """The compiled batch map for ``net`` (compiling the sampler takes seconds; reuse it)."""
    return cached_per_network(_STATS_CACHE, 8, (net, repr(net), n0, n_train),
                              lambda: _batch_stats(net.sampler(n0, "conditional"), n_train))


def _batch_stats(one, n_train: int):
    """A jitted map from one batch of PRNG keys to weighted sums over those prior draws.

    Weights are ``w = exp(loglik - shift)`` with the batch's largest log-likelihood as
    ``shift``. Sums of ``w^2``-weighted quantities are centred on the batch's own weighted
    means (``m_bar``, ``g_bar``) so the standard errors do not lose digits to cancellation.
    """

    def stats(keys, X, Y, noise, nvalid):
        _, G = jax.vmap(one, in_axes=(0, None))(keys, X)
        ll, m, C = gaussian_conditional(G, Y, n_train, noise)
        mask = jnp.arange(keys.shape[0]) < nvalid
        ll = jnp.where(mask, ll, -jnp.inf)
        finite = jnp.isfinite(ll)
        top = jnp.max(ll)
        shift = jnp.where(jnp.isfinite(top), top, 0.0)
        w = jnp.where(finite, jnp.exp(jnp.where(finite, ll - shift, 0.0)), 0.0)
        W = jnp.sum(w)
        Wsafe = jnp.where(W > 0, W, 1.0)
        w2 = w * w
        g = jnp.diagonal(C, axis1=1, axis2=2)[:, :, None] + m * m  # E[z_{i;b}^2 | G] per draw
        m_bar = jnp.einsum("s,sbi->bi", w, m) / Wsafe
        g_bar = jnp.einsum("s,sbi->bi", w, g) / Wsafe
        dm, dg = m - m_bar, g - g_bar
        sums = dict(
            W=W,
            W2=jnp.sum(w2),
            m_bar=m_bar,
            g_bar=g_bar,
            C=jnp.einsum("s,sab->ab", w, C),
            mm=jnp.einsum("s,sai,sbj->aibj", w, m, m),
            q_m=jnp.einsum("s,sbi->bi", w2, dm),
            q_mm=jnp.einsum("s,sbi->bi", w2, dm * dm),
            q_g=jnp.einsum("s,sbi->bi", w2, dg),
            q_gg=jnp.einsum("s,sbi->bi", w2, dg * dg),
            q_gm=jnp.einsum("s,sbi->bi", w2, dg * dm),
        )
        singular = jnp.sum(mask & ~finite)
        return shift, sums, singular

    return jax.jit(stats)


def _default_batch_size(net, n_inputs: int) -> int:
    widest = max((n_inputs,) + tuple(getattr(net, "widths", ())))
    return int(min(16384, max(64, _BATCH_ELEMENTS // (n_inputs * widest))))


@float64
def importance_posterior(net, X_train, Y_train, X_test, *, noise: float, num_samples: int = 100_000,
                         seed: int = 0, batch_size: int | None = None,
                         max_memory: float = SAMPLING_MEMORY) -> ImportancePosterior:
    """Finite-width posterior and evidence by Rao-Blackwellised importance sampling of the prior.

    Reference solver (exact up to Monte-Carlo error, which it reports). For ``s = 1..S``
    networks drawn from the prior, with output metric ``G_s`` over ``[train; test]``:

    * weight ``w_s = prod_i N(y_i | 0, G_s,AA + noise I)`` (the exact likelihood given the
      last hidden layer, output layer integrated out);
    * conditional moments ``m_s,i = G_s,BA (G_s,AA + noise I)^{-1} y_i`` and
      ``C_s = G_s,BB - G_s,BA (G_s,AA + noise I)^{-1} G_s,AB``;
    * ``mean = sum_s w_s m_s / sum_s w_s``, ``cov = sum_s w_s (delta_ij C_s + m_s,i m_s,j^T) /
      sum_s w_s - mean mean^T`` and ``log_evidence = log((1/S) sum_s w_s)``.

    The draws are exactly those of ``ngp.sample_networks(net, X, num_samples, seed=seed,
    method="conditional")`` with ``X = [X_train; X_test]``, processed in batches so memory
    stays bounded for ``S ~ 1e6``. Importance sampling from the prior is exact and fast for
    a few training points; its efficiency falls as the likelihood sharpens (many training
    points or outputs, small noise, narrow networks): check ``.ess``.

    Args:
        net: an :class:`ngp.MLP` (or any architecture with ``sample_networks``' sampler hook).
        X_train: ``(N_train, n0)`` training inputs.
        Y_train: ``(N_train, out_dim)`` targets (``(N_train,)`` accepted when ``out_dim == 1``).
        X_test: ``(N_test, n0)`` test inputs.
        noise: observation-noise variance ``>= 0``; ``0`` conditions exactly. Draws with a
            numerically singular ``G_AA + noise I`` (see ``RCOND_MIN``) get zero weight.
        num_samples: number of prior draws ``S >= 2`` (the standard errors need two).
        seed: non-negative integer seed (results are reproducible).
        batch_size: draws per vectorised batch; default keeps about 64 MB of hidden
            activations per batch, fewer draws where ``max_memory`` holds fewer.
        max_memory: bytes allowed for one batch (default 4 GiB); above it a ``MemoryError`` gives
            the estimate before any work starts.

    Returns:
        :class:`ImportancePosterior`.

    Raises:
        ValueError: bad arguments, or every draw had zero likelihood.

    Example:
        >>> post = ngp.reference.importance_posterior(net, XA, Y, XB, noise=0.1, num_samples=10**5)
        >>> post.mean, post.mean_se, post.ess
    """
    XA, XB, Y, noise, _ = train_test(net, X_train, Y_train, X_test, noise, test_required=True)
    S = count(num_samples, "num_samples", minimum=2, what="an integer >= 2 (standard errors need two draws)")
    seed = check_seed(seed)
    X = np.concatenate([XA, XB])
    limit = memory_bytes(max_memory)
    if batch_size is None:  # the default batch, cut to what max_memory holds (it was refused, naming batch_size)
        per = sampling_bytes(net, X.shape[1], X.shape[0], "conditional", 1, 1)  # per draw of a batch
        B = max(1, min(_default_batch_size(net, X.shape[0]), int(limit // per)))
    else:
        B = count(batch_size, "batch_size")
    B = min(B, S)
    check_sampling_memory(net, X.shape[1], X.shape[0], "conditional", B, B, limit, "importance_posterior")
    Xj = device(X)
    stats = _cached_stats(net, X.shape[1], XA.shape[0])
    keys = network_keys(seed, S)
    Yj = device(Y)

    batches = []
    singular = 0
    for start in range(0, S, B):
        k = keys[start:start + B]
        nvalid = k.shape[0]
        if nvalid < B:  # pad the last batch (one compiled shape); padded draws are masked out
            k = np.concatenate([k, keys[:B - nvalid]])
        c, sums, nsing = stats(k, Xj, Yj, noise, nvalid)
        singular += int(nsing)
        sums = {name: np.asarray(v, dtype=float) for name, v in sums.items()}
        if sums["W"] == 0.0:
            continue
        c = float(c)
        # the (N_test, out_dim)-sized sums are kept per batch; the larger ones are accumulated
        big = {name: sums.pop(name) for name in ("C", "mm")}
        if not batches:
            shift, acc = c, big
        elif c > shift:
            r = math.exp(shift - c)
            acc = {name: big[name] + r * acc[name] for name in acc}
            shift = c
        else:
            r = math.exp(c - shift)
            acc = {name: acc[name] + r * big[name] for name in acc}
        batches.append((c, sums))
    if not batches:
        advice = ("With noise = 0 the training metric must be nonsingular: use noise > 0, remove duplicate "
                  "training inputs, or use a network with C_b > 0 or more width." if noise == 0 else
                  f"noise = {noise:g} is below the resolution of the metric (reciprocal condition number "
                  f"{RCOND_MIN:g}): raise the noise, or standardise the inputs and targets.")
        raise ValueError(
            f"importance_posterior: all {S} prior draws have zero likelihood ({singular} had a numerically "
            f"singular G_AA + noise I). {advice}"
        )
    return _finish(batches, acc, shift, S, singular, noise)


def _finish(batches, acc, shift: float, S: int, singular: int, noise: float) -> ImportancePosterior:
    """Combine per-batch sums (each with its own log-weight shift and centring).

    ``acc`` holds the running weighted sums of ``C`` and ``m m^T``, with weights relative to
    ``shift``, the largest log-likelihood of all draws.
    """
    r = np.array([math.exp(c - shift) for c, _ in batches])  # rescales w; w^2 scales by r^2
    stack = lambda name: np.stack([b[name] for _, b in batches])  # noqa: E731
    Wb, W2b = stack("W") * r, stack("W2") * r * r
    W, W2 = float(Wb.sum()), float(W2b.sum())
    mb, gb = stack("m_bar"), stack("g_bar")
    wb = (Wb / W)[:, None, None]
    mu = np.sum(wb * mb, axis=0)
    Eg = np.sum(wb * gb, axis=0)
    var = Eg - mu * mu
    out = mu.shape[1]
    cov = (np.einsum("ab,ij->aibj", acc["C"], np.eye(out)) + acc["mm"]) / W - np.einsum("ai,bj->aibj", mu, mu)
    cov = 0.5 * (cov + cov.transpose(2, 3, 0, 1))
    # Delta-method variances of the self-normalised estimators, sum_s w_s^2 phi_s^2 / (sum_s w_s)^2,
    # with influence functions phi = m - mu (mean) and phi = (g - Eg) - 2 mu (m - mu) (variance),
    # expanded around each batch's centring: m = m_bar + dm, g = g_bar + dg.
    rr = (r * r)[:, None, None]
    q = {name: stack(name) * rr for name in ("q_m", "q_mm", "q_g", "q_gg", "q_gm")}
    W2w = W2b[:, None, None]
    dmu = mb - mu
    mean_ss = np.sum(q["q_mm"] + 2 * dmu * q["q_m"] + dmu * dmu * W2w, axis=0)
    delta = (gb - Eg) - 2 * mu * dmu
    h_lin = q["q_g"] - 2 * mu * q["q_m"]
    h_sq = q["q_gg"] - 4 * mu * q["q_gm"] + 4 * mu * mu * q["q_mm"]
    var_ss = np.sum(h_sq + 2 * delta * h_lin + delta * delta * W2w, axis=0)
    ess = float(W * W / W2)
    log_ev = shift + math.log(W) - math.log(S)
    log_ev_se = math.sqrt(max(S / ess - 1.0, 0.0) / (S - 1))
    if ess < ESS_WARN:
        warn(
            f"importance_posterior: effective sample size {ess:.1f} of {S} draws; the estimates and "
            "their standard errors are unreliable. Increase num_samples (or use nuts_posterior).",
            SamplingWarning,
        )
    return ImportancePosterior(
        mean=mu,
        var=var,
        cov=cov,
        log_evidence=float(log_ev),
        mean_se=np.sqrt(np.clip(mean_ss, 0.0, None)) / W,
        var_se=np.sqrt(np.clip(var_ss, 0.0, None)) / W,
        log_evidence_se=float(log_ev_se),
        ess=ess,
        num_samples=S,
        num_singular=int(singular),
        noise=noise,
    )
