"""The Bayesian neural network as a NumPyro model, sampled with NUTS: ``nuts_posterior``.

The weight-space prior is exactly the network's (its layer steps' ``init``/``apply``,
``docs/theory.md``, "Conventions"), written non-centred: ``W^(l) = sqrt(C_W^(l) / n_{l-1}) * omega``,
``b^(l) = sqrt(C_b^(l)) * beta`` with ``omega, beta`` standard normal (no bias site when ``C_b^(l) = 0``). The likelihood is
``y_{i;a} = z_{i;a} + eps``, ``eps ~ N(0, noise)`` i.i.d.

NumPyro is imported only when :func:`nuts_posterior` is called.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from .._linalg import psd_sqrt
from .._sampling import SAMPLING_MEMORY
from .._validate import check_seed, count, flag, float64, memory_bytes, nonneg_float, positive_float, train_test, warn
from .._warnings import SamplingWarning
from .._results import result
from ._importance import ESS_WARN, gaussian_conditional

#: Largest split R-hat (of the test outputs' per-draw values) without a :class:`ngp.SamplingWarning`.
RHAT_WARN = 1.05

__all__ = ["NUTSPosterior", "nuts_posterior"]


@result
class NUTSPosterior:
    """Posterior of the latent outputs at the test inputs, from NUTS on the network weights.

    Field names match :class:`ngp.GPPosterior` where they overlap (``mean``, ``var``, ``cov``).
    Convergence diagnostics are computed on **function values** (the test outputs), never
    on weights: the posterior is invariant under permutations (and, for odd activations,
    sign flips) of hidden units, so weight-space R-hat/ESS are meaningless.

    Attributes:
        mean: ``(N_test, out_dim)`` posterior mean of the latent outputs.
        var: ``(N_test, out_dim)`` posterior variances (noise excluded).
        cov: ``(N_test, out_dim, N_test, out_dim)`` posterior covariance,
            ``cov[a, i, b, j] = Cov[z_{i;a}, z_{j;b} | y]``.
        mean_se: ``(N_test, out_dim)`` Monte-Carlo standard error of ``mean``,
            ``sd(f_s) / sqrt(ess)`` where ``f_s`` is the per-draw quantity averaged
            (the conditional mean given the hidden layers with ``integrate_readout=True``,
            the sampled test output otherwise).
        var_se: ``(N_test, out_dim)`` Monte-Carlo standard error of ``var`` (delta method,
            with the ESS of its own influence function).
        samples: ``(num_chains * num_samples, N_test, out_dim)`` posterior draws of the
            latent test outputs (chain-major order).
        rhat: ``(N_test, out_dim)`` split Gelman-Rubin R-hat of the per-draw ``f_s``.
        ess: ``(N_test, out_dim)`` effective sample size of the per-draw ``f_s`` (all chains); NaN where the
            estimate is not positive (chains too short), and there ``mean_se`` (likewise ``var_se`` where its own
            ESS is not positive) is NaN, with an :class:`ngp.SamplingWarning`; another warns when an effective
            sample size is below ``ESS_WARN`` (100, as :func:`importance_posterior`) or a split R-hat above
            :data:`RHAT_WARN` (1.05).
        num_samples: total number of posterior draws (``num_chains * num_samples``).
        num_divergences: number of divergent NUTS transitions after warm-up.
        integrate_readout: whether the last layer was integrated analytically.
        noise: the observation-noise variance used.
    """

    mean: np.ndarray
    var: np.ndarray
    cov: np.ndarray
    mean_se: np.ndarray
    var_se: np.ndarray
    samples: np.ndarray
    rhat: np.ndarray
    ess: np.ndarray
    num_samples: int
    num_divergences: int
    integrate_readout: bool
    noise: float

    @property
    def std(self) -> np.ndarray:
        """``(N_test, out_dim)`` posterior standard deviations of the latent outputs."""
        return np.sqrt(np.clip(self.var, 0.0, None))


def _sites(net, n0: int):
    """``(treedef, [(name, shape), ...])`` of the standard-normal parameters of every step but the readout,
    and of the readout (``net.init`` structure; parameters are non-centred, see ``ngp.Dense``)."""
    params = jax.eval_shape(lambda k: net.init(k, n0), jax.random.PRNGKey(0))
    leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
    sites = [("/".join(str(getattr(k, "idx", getattr(k, "key", k))) for k in path), leaf.shape)
             for path, leaf in leaves]
    return treedef, sites


def _make_model(net, n0: int, noise: float, integrate_readout: bool):
    import numpyro
    import numpyro.distributions as dist

    treedef, sites = _sites(net, n0)
    last = str(len(net.steps) - 1)

    def model(X, Y):
        leaves = []
        for name, shape in sites:
            if integrate_readout and name.split("/")[0] == last:
                leaves.append(jnp.zeros(shape, X.dtype))  # the readout is integrated analytically
            else:
                leaves.append(numpyro.sample(name, dist.Normal(0.0, 1.0).expand(shape).to_event(len(shape))))
        params = jax.tree_util.tree_unflatten(treedef, leaves)
        h = net.hidden(params, X)
        if integrate_readout:
            K = net.readout.metric(h) + noise * jnp.eye(X.shape[0], dtype=X.dtype)
            chol = jnp.linalg.cholesky(K)
            numpyro.sample("Y", dist.MultivariateNormal(0.0, scale_tril=chol).expand((Y.shape[1],)), obs=Y.T)
        else:
            f = net.readout.apply(params[-1], h)
            numpyro.sample("Y", dist.Normal(f, math.sqrt(noise)).to_event(2), obs=Y)

    return model, treedef, sites


def _ess(effective_sample_size, draws) -> np.ndarray:
    """NumPyro's effective sample size of ``draws`` ``(chains, samples, ...)``, NaN where the estimate is not
    positive and finite (too short chains give negative autocorrelation sums)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        e = np.asarray(effective_sample_size(draws), dtype=float)
    return np.where(np.isfinite(e) & (e > 0), e, np.nan)


def nuts_memory(net, n0: int, n_inputs: int, num_chains: int, num_samples: int) -> int:
    """Bytes a NUTS run needs, estimated before any work: the stored draws of every parameter (three
    copies: samples, batched parameters, draws of the test outputs' conditional), the chains' working
    state (about 20 parameter vectors each) and the hidden activations of every draw."""
    _, sites = _sites(net, n0)
    n_params = sum(math.prod(shape) for _, shape in sites)
    widest = max((n0,) + tuple(net.widths))
    total = num_chains * num_samples
    return 8 * (3 * total * n_params + 20 * num_chains * n_params + 4 * total * n_inputs * (widest + n_inputs))


@float64
def nuts_posterior(net, X_train, Y_train, X_test, *, noise: float, num_warmup: int = 500,
                   num_samples: int = 500, num_chains: int = 4, seed: int = 0,
                   integrate_readout: bool = True, progress_bar: bool = False,
                   chain_method: str = "vectorized", target_accept_prob: float = 0.8,
                   max_memory: float = SAMPLING_MEMORY) -> NUTSPosterior:
    """Posterior predictive at test inputs by NUTS on the weights of the actual Bayesian network.

    Reference solver: a NumPyro model whose weight-space prior is exactly ``net``'s
    (``W^(l)_ij ~ N(0, C_W^(l) / n_{l-1})``, ``b^(l)_i ~ N(0, C_b^(l))``, non-centred) with
    the Gaussian likelihood ``y_{i;a} ~ N(z_{i;a}, noise)``.

    With ``integrate_readout=True`` (default) the last layer is integrated analytically:
    given the last hidden layer ``h``, ``y_i ~ N(0, G_AA + noise I)`` with
    ``G = C_b^(L) + (C_W^(L) / n_{L-1}) h h^T``, which mixes much better. Test outputs are
    then drawn from their exact conditional Gaussian given each posterior draw, and
    ``mean``/``cov`` average the conditional moments (Rao-Blackwellised). With ``False``
    every layer is sampled and the test outputs are the network's outputs.

    Diagnostics (``rhat``, ``ess``) are computed per test output on function values (the
    per-draw conditional means, or the sampled outputs), using
    ``numpyro.diagnostics.split_gelman_rubin`` and ``effective_sample_size``; weight-space
    diagnostics are meaningless under the hidden-unit permutation symmetry.

    Chains run with ``chain_method="vectorized"`` by default: several chains work on a single
    CPU device (this function never calls ``numpyro.set_host_device_count``), and the sampler
    is compiled once, whereas NumPyro recompiles its sampling loop for every chain with
    ``"sequential"`` (compilation, several seconds, dominates small problems).

    Args:
        net: an :class:`ngp.MLP`.
        X_train: ``(N_train, n0)`` training inputs.
        Y_train: ``(N_train, out_dim)`` targets (``(N_train,)`` accepted when ``out_dim == 1``).
        X_test: ``(N_test, n0)`` test inputs.
        noise: observation-noise variance, ``> 0`` (NUTS cannot condition exactly; use
            :func:`importance_posterior` for ``noise = 0``).
        num_warmup: warm-up (adaptation) steps per chain.
        num_samples: posterior draws kept per chain.
        num_chains: number of chains.
        seed: non-negative integer seed (results are reproducible).
        integrate_readout: integrate the last layer analytically (default) or sample it.
        progress_bar: show NumPyro's progress bar.
        chain_method: ``"vectorized"`` (default), ``"sequential"`` or ``"parallel"`` (the
            latter needs several JAX devices, e.g. ``numpyro.set_host_device_count`` called
            before JAX starts).
        target_accept_prob: NUTS target acceptance probability.
        max_memory: bytes allowed (default 4 GiB); above it a ``MemoryError`` gives the estimate
            (:func:`nuts_memory`) before any work starts.

    Returns:
        :class:`NUTSPosterior`.

    Raises:
        ValueError: bad arguments, ``noise = 0``, or ``depth == 1`` with
            ``integrate_readout=True`` (nothing left to sample; the posterior is the GP).
        MemoryError: the run would need more than ``max_memory``.
        ImportError: NumPyro is not installed (``pip install ngp[sampling]``).
    """
    if nonneg_float(noise, "noise") == 0:
        raise ValueError(
            "noise: must be > 0 for nuts_posterior (NUTS cannot condition exactly on the targets); "
            "use ngp.reference.importance_posterior for noise = 0"
        )
    XA, XB, Y, noise, _ = train_test(net, X_train, Y_train, X_test, noise, test_required=True)
    integrate_readout, progress_bar = flag(integrate_readout, "integrate_readout"), flag(progress_bar, "progress_bar")
    if not hasattr(net, "hidden") or not hasattr(net, "readout"):
        raise TypeError(f"net: expected an ngp network (ngp.MLP, ngp.serial, ...), got {type(net).__name__}")
    if net.depth == 1 and integrate_readout:
        raise ValueError(
            "integrate_readout: a depth-1 network has no hidden layer, so integrating the readout "
            "leaves nothing to sample (the posterior is ngp.gp_posterior); pass integrate_readout=False"
        )
    num_warmup = count(num_warmup, "num_warmup")
    num_samples = count(num_samples, "num_samples")
    num_chains = count(num_chains, "num_chains")
    seed = check_seed(seed)
    if num_samples < 4:
        raise ValueError(f"num_samples: need at least 4 draws per chain for split R-hat, got {num_samples}")
    if chain_method not in ("sequential", "vectorized", "parallel"):
        raise ValueError(f"chain_method: expected 'sequential', 'vectorized' or 'parallel', got {chain_method!r}")
    target_accept_prob = positive_float(target_accept_prob, "target_accept_prob")
    if target_accept_prob >= 1:
        raise ValueError(f"target_accept_prob: must be in (0, 1), got {target_accept_prob}")
    limit = memory_bytes(max_memory)
    need = nuts_memory(net, XA.shape[1], XA.shape[0] + XB.shape[0], num_chains, num_samples)
    if need > limit:
        raise MemoryError(
            f"nuts_posterior: {num_chains} chains x {num_samples} draws of a network of widths {list(net.widths)} "
            f"need about {need / 1024**3:.3g} GiB (> max_memory={limit / 1024**3:.3g} GiB). Use smaller widths, "
            "fewer draws or chains, importance_posterior, or raise max_memory if the machine has the memory."
        )
    try:
        from numpyro.diagnostics import effective_sample_size, split_gelman_rubin
        from numpyro.infer import MCMC, NUTS, init_to_sample
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("nuts_posterior needs numpyro: pip install 'ngp[sampling]'") from exc

    model, treedef, sites = _make_model(net, XA.shape[1], noise, bool(integrate_readout))
    key_mcmc, key_draw = jax.random.split(jax.random.PRNGKey(seed))
    kernel = NUTS(model, target_accept_prob=target_accept_prob, init_strategy=init_to_sample)
    mcmc = MCMC(kernel, num_warmup=num_warmup, num_samples=num_samples, num_chains=num_chains,
                chain_method=chain_method, progress_bar=bool(progress_bar))
    mcmc.run(key_mcmc, jnp.asarray(XA), jnp.asarray(Y), extra_fields=("diverging",))
    params = mcmc.get_samples(group_by_chain=False)
    divergences = int(np.sum(np.asarray(mcmc.get_extra_fields()["diverging"])))

    X = jnp.asarray(np.concatenate([XA, XB]))
    nA, out, total = XA.shape[0], net.out_dim, num_chains * num_samples
    batched = jax.tree_util.tree_unflatten(treedef, [
        jnp.asarray(params[name]) if name in params else jnp.zeros((total,) + tuple(shape), X.dtype)
        for name, shape in sites
    ])  # every leaf with a leading draw axis

    if integrate_readout:

        @jax.jit
        def conditional_draws(params, Yj, key):
            G = jax.vmap(lambda p: net.readout.metric(net.hidden(p, X)))(params)
            _, m, C = gaussian_conditional(G, Yj, nA, noise)
            xi = jax.random.normal(key, (total, XB.shape[0], out), dtype=X.dtype)
            return m, C, m + psd_sqrt(C, method="eigh") @ xi

        m, C, samples = (np.asarray(a) for a in conditional_draws(batched, jnp.asarray(Y), key_draw))
    else:

        @jax.jit
        def outputs(params):
            return jax.vmap(lambda p: net.readout.apply(p[-1], net.hidden(p, X[nA:])))(params)

        samples = np.asarray(outputs(batched))
        m, C = samples, np.zeros((total, XB.shape[0], XB.shape[0]))

    mean = m.mean(axis=0)
    Eg = (np.diagonal(C, axis1=1, axis2=2)[:, :, None] + m * m).mean(axis=0)
    var = Eg - mean * mean
    second = np.einsum("ab,ij->aibj", C.mean(axis=0), np.eye(out)) + np.einsum("sai,sbj->aibj", m, m) / total
    cov = second - np.einsum("ai,bj->aibj", mean, mean)
    cov = 0.5 * (cov + cov.transpose(2, 3, 0, 1))

    by_chain = lambda a: a.reshape((num_chains, num_samples) + a.shape[1:])  # noqa: E731
    f = by_chain(m)
    rhat = np.asarray(split_gelman_rubin(f))
    ess = _ess(effective_sample_size, f)
    mean_se = m.std(axis=0, ddof=1) / np.sqrt(ess)
    phi = np.diagonal(C, axis1=1, axis2=2)[:, :, None] + m * m - 2 * mean * m  # influence of var
    ess_phi = _ess(effective_sample_size, by_chain(phi))
    var_se = phi.std(axis=0, ddof=1) / np.sqrt(ess_phi)
    undefined = int(np.sum(np.isnan(mean_se) | np.isnan(var_se)))
    low_m = float(np.min(ess, initial=np.inf))  # (not NaN here: NaN warns as undefined above)
    low_v = float(np.min(ess_phi, initial=np.inf))  # that of the variances' influence function (var_se's)
    worst = float(np.max(np.where(np.isfinite(rhat), rhat, -np.inf), initial=-np.inf))
    if undefined:
        warn(f"nuts_posterior: the effective sample size is not positive for {undefined} of {mean.size} test "
             f"outputs (chains too short for its autocorrelation estimate: {num_chains} chains x {num_samples} "
             "draws); their standard errors are NaN. Increase num_samples (and num_warmup).", SamplingWarning)
    elif min(low_m, low_v) < ESS_WARN or worst > RHAT_WARN:  # as importance_posterior below ESS_WARN draws
        warn(f"nuts_posterior: effective sample size {low_m:.0f} (min of .ess; {low_v:.0f} for the variances' "
             f"estimator) of {num_chains} chains x {num_samples} draws (warns below {ESS_WARN:g}), largest split "
             f"R-hat {worst:.3f} (warns above {RHAT_WARN:g}): the chains may not have mixed, and the estimates and "
             "their standard errors are unreliable. Increase num_samples and num_warmup.", SamplingWarning)
    return NUTSPosterior(
        mean=mean,
        var=var,
        cov=cov,
        mean_se=mean_se,
        var_se=var_se,
        samples=samples,
        rhat=rhat,
        ess=ess,
        num_samples=total,
        num_divergences=divergences,
        integrate_readout=bool(integrate_readout),
        noise=noise,
    )
