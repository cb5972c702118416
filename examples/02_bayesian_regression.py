# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 02 · Bayesian regression: GP vs finite width vs sampling
#
# We fit a tiny 1-D data set with a Bayesian tanh network and compare four answers for the
# posterior of the network output $z(x)$ at a few test inputs:
#
# | method | what it is | cost |
# | --- | --- | --- |
# | `ngp.gp_posterior` | infinite width: exact GP regression with the NNGP kernel $K$ | one linear solve |
# | `ngp.posterior` | finite width to first order in $1/n$ (uses $K$, $K_1$, $V$; docs/theory.md, "Posterior") | deterministic, $O(N^4)$ in inputs |
# | `ngp.reference.importance_posterior` | exact prior of actual random networks, importance-weighted by the likelihood | Monte Carlo, $4\times10^5$ networks here ($2\times10^4$ in a quick run) |
# | `ngp.reference.nuts_posterior` | the same Bayesian network, NUTS on its weights (NumPyro) | MCMC |
#
# The last two are exact up to a Monte-Carlo error that they report, so they serve as the truth.
#
# **Model and normalisations**: observations $y = z(x) + \epsilon$, $\epsilon \sim \mathcal N(0,
# \sigma_\epsilon^2)$; weights $W^{(\ell)}_{ij} \sim \mathcal N(0, C_W/n_{\ell-1})$ (variance over
# fan-in), biases $\mathcal N(0, C_b)$; `depth` $L = 3$ weight layers with two hidden layers of
# width $n$. The finite-width corrections are powers of $1/n_{L-1}$, the last hidden width.

# %%
import os
import sys
import time

import numpy as np
import jax

jax.config.update("jax_enable_x64", True)  # ngp needs float64
import matplotlib.pyplot as plt  # figures: written to NGP_FIGDIR and shown inline in Jupyter (ngp.plot.show)

try:
    import ngp
except ImportError:  # running from a source checkout without `pip install .`
    sys.path.insert(0, os.path.abspath(".." if os.path.basename(os.getcwd()) == "examples" else "."))
    import ngp
from ngp.datasets import synthetic_1d
from ngp.reference import importance_posterior, nuts_posterior

QUICK = os.environ.get("NGP_QUICK", "0") == "1"  # CI switch: fewer widths, samples and NUTS steps
FIGDIR = os.environ.get("NGP_FIGDIR", "figures")
os.makedirs(FIGDIR, exist_ok=True)
T0 = time.perf_counter()

IS_SAMPLES = 20_000 if QUICK else 400_000
# one chain compiles fastest ("sequential"); several chains run vectorised on one CPU device
NUTS_STEPS, NUTS_CHAINS, NUTS_METHOD = (60, 1, "sequential") if QUICK else (1000, 4, "vectorized")
WIDTHS = (8,) if QUICK else (8, 16, 32, 64)

# %% [markdown]
# ## Data and network
#
# Four noisy points of $\sin(2x) + 0.3x$ from `ngp.datasets.synthetic_1d`. We halve the inputs
# (to $[-1, 1]$) and the targets: the first-layer kernel $K^{(1)} = C_b + C_W x^2$ then stays
# $\lesssim 1$ and the targets are on the scale of the prior's output standard deviation
# ($\sqrt{K} \approx 0.5$). A prior that is badly mismatched to the data makes every $1/n$
# coefficient large. (The quadrature behind $V$ is not the limit: it meets its default tolerance
# far beyond these variances, docs/accuracy.md.)

# %%
X_raw, y_raw = synthetic_1d(4, noise=0.01, seed=3)
X_train, Y_train = X_raw / 2, (y_raw / 2)[:, None]
X_test = np.array([[-1.2], [-0.6], [0.15], [0.6], [1.2]])
NOISE = 0.05  # observation-noise variance
ARCH = dict(activation="tanh", C_W=1.0, C_b=0.1)
DEPTH = 3
print("x_train:", X_train.ravel().round(3), " y_train:", Y_train.ravel().round(3))
print("x_test: ", X_test.ravel())
print("prior output variance K(x_train):", np.diag(ngp.MLP(DEPTH, 8, **ARCH).prior(X_train).K).round(3))


# %% [markdown]
# The finite-width posterior needs the vertex $V$ on all train and test inputs together,
# $N^4$ numbers. The marginal posterior of one test point only involves that point and the
# training set, so we query the test points one at a time ($N = 5$ each); after the first call
# (compilation) each takes a fraction of a second.

# %%
def finite_width(net, X_test):
    """ngp.posterior one test point at a time: marginal means and variances, the log evidence
    (it depends on the training data only) and the largest expansion parameter."""
    means, variances, eps = [], [], 0.0
    for x in X_test:
        p = ngp.posterior(net, X_train, Y_train, x[None, :], noise=NOISE)
        means.append(p.mean[0, 0])
        variances.append(p.var[0, 0])
        eps = max(eps, p.expansion_parameter)
    return np.array(means), np.array(variances), p.log_evidence, eps


# %% [markdown]
# ## 1. Four posteriors at width $n = 8$
#
# At $n = 8$ the network is far from its infinite-width limit. NUTS samples all hidden weights
# and integrates the read-out layer analytically; importance sampling draws networks from the
# prior and weights each by its exact likelihood. Both report standard errors (`se`).

# %%
N_SMALL = WIDTHS[0]
# the figure's grid: |x| < 1.38 keeps the first-layer variance C_b + C_W x^2 below 2, near the training inputs'
# range (the four-point quadrature behind V would be accurate far beyond: docs/accuracy.md)
X_grid = np.linspace(-1.35, 1.35, 7 if QUICK else 29)[:, None]
X_all = np.concatenate([X_test, X_grid])
net = ngp.MLP(DEPTH, N_SMALL, **ARCH)

t = time.perf_counter()
gp = ngp.gp_posterior(net, X_train, Y_train, X_all, noise=NOISE)
t_gp = time.perf_counter() - t
t = time.perf_counter()
fw_mean, fw_var, fw_logz, eps = finite_width(net, X_all)
t_fw = time.perf_counter() - t
t = time.perf_counter()
imp = importance_posterior(net, X_train, Y_train, X_all, noise=NOISE, num_samples=IS_SAMPLES, seed=1)
t_is = time.perf_counter() - t
t = time.perf_counter()
nuts = nuts_posterior(net, X_train, Y_train, X_all, noise=NOISE, num_warmup=NUTS_STEPS, num_samples=NUTS_STEPS,
                      num_chains=NUTS_CHAINS, chain_method=NUTS_METHOD, seed=0)
t_nuts = time.perf_counter() - t

nt = len(X_test)
print(f"width n = {N_SMALL}, expansion parameter max|V|/(nK^2) = {eps:.3f}")
print(f"importance sampling: {IS_SAMPLES} networks, ESS {imp.ess:.0f};  NUTS: {NUTS_CHAINS} chains x {NUTS_STEPS} "
      f"draws, max R-hat {nuts.rhat[:nt].max():.3f}, min ESS {nuts.ess[:nt].min():.0f}, "
      f"{nuts.num_divergences} divergences")
print(f"time: GP {t_gp:.2f}s, finite width {t_fw:.1f}s, importance sampling {t_is:.1f}s, NUTS {t_nuts:.1f}s\n")
print("posterior mean")
print(f"{'x':>6} {'GP':>8} {'finite n':>9} {'importance (se)':>18} {'NUTS (se)':>18}")
for i in range(nt):
    print(f"{X_test[i, 0]:6.2f} {gp.mean[i, 0]:8.4f} {fw_mean[i]:9.4f} "
          f"{imp.mean[i, 0]:9.4f} ({imp.mean_se[i, 0]:.4f}) {nuts.mean[i, 0]:9.4f} ({nuts.mean_se[i, 0]:.4f})")
print("\nposterior standard deviation of z(x)")
print(f"{'x':>6} {'GP':>8} {'finite n':>9} {'importance':>11} {'NUTS':>8}")
for i in range(nt):
    print(f"{X_test[i, 0]:6.2f} {gp.std[i, 0]:8.4f} {np.sqrt(max(fw_var[i], 0)):9.4f} {imp.std[i, 0]:11.4f} "
          f"{nuts.std[i, 0]:8.4f}")
print(f"\nlog evidence: GP {gp.log_evidence:.4f}, finite width {fw_logz:.4f}, "
      f"importance sampling {imp.log_evidence:.4f} ± {imp.log_evidence_se:.4f}")

# %% [markdown]
# NUTS and importance sampling agree within their errors. The finite-width posterior moves the
# GP answer towards them: the GP is off in the mean, the width and the evidence by $O(1/n)$;
# the first-order finite-width result is off by $O(1/n^2)$.

# %% [markdown]
# ## 2. The gap closes as the width grows
#
# For each width, the largest error over the test points of the GP and of the finite-width
# posterior mean, against importance sampling (whose standard error is shown). The GP error
# should fall like $1/n$ and the finite-width error like $1/n^2$ (until it drops below the
# Monte-Carlo error).

# %%
rows = []
for n in WIDTHS:
    net_n = ngp.MLP(DEPTH, n, **ARCH)
    if n == N_SMALL:
        m_fw, logz_fw = fw_mean[:nt], fw_logz
        ref, g = imp, gp
        m_ref, se_ref, m_gp = ref.mean[:nt, 0], ref.mean_se[:nt, 0], g.mean[:nt, 0]
    else:
        m_fw, _, logz_fw, _ = finite_width(net_n, X_test)
        ref = importance_posterior(net_n, X_train, Y_train, X_test, noise=NOISE, num_samples=IS_SAMPLES, seed=n)
        g = ngp.gp_posterior(net_n, X_train, Y_train, X_test, noise=NOISE)
        m_ref, se_ref, m_gp = ref.mean[:, 0], ref.mean_se[:, 0], g.mean[:, 0]
    rows.append(dict(n=n, gp=np.abs(m_gp - m_ref).max(), fw=np.abs(m_fw - m_ref).max(), se=se_ref.max(),
                     logz_gp=g.log_evidence, logz_fw=logz_fw, logz_is=ref.log_evidence, logz_se=ref.log_evidence_se))

print("max over test points of |posterior mean - truth| (truth: importance sampling)")
print(f"{'n':>4} {'GP':>9} {'finite n':>9} {'IS se':>8} {'GP/finite':>10} | {'logZ GP':>8} {'logZ fin.':>9} "
      f"{'logZ IS':>8} {'(se)':>7}")
for r in rows:
    print(f"{r['n']:>4} {r['gp']:9.2e} {r['fw']:9.2e} {r['se']:8.1e} {r['gp'] / r['fw']:10.1f} | {r['logz_gp']:8.4f} "
          f"{r['logz_fw']:9.4f} {r['logz_is']:8.4f} ({r['logz_se']:.4f})")
for key in ("gp", "fw") if len(rows) > 1 else ():
    ns = np.array([r["n"] for r in rows], dtype=float)
    errs = np.array([r[key] for r in rows])
    slope = np.polyfit(np.log(ns), np.log(errs), 1)[0]
    print(f"log-log slope of the {'GP' if key == 'gp' else 'finite-width'} error: {slope:.2f}")

# %% [markdown]
# ## 3. Posterior bands
#
# Left: mean $\pm 2$ sd of $z(x)$ at $n = 8$ (GP, finite width, NUTS) with the importance-sampling
# mean; on this scale the four are indistinguishable. Middle: the finite-width *shift* of the
# mean away from the GP, a couple of per cent of the band's width (the largest ratio on the grid is
# printed below), where the methods can be told apart (dotted lines: training inputs). Right: the
# table above.

# %%
xg = X_grid[:, 0]
sl = slice(nt, None)
shift = np.abs(fw_mean[sl] - gp.mean[sl, 0])
print(f"largest |finite-width mean - GP mean| on the grid: {shift.max():.4f}; largest ratio to the width of the "
      f"GP's ±2 sd band at the same x: {(shift / (4 * gp.std[sl, 0])).max():.1%}")
fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
ax = axes[0]
for name, m, s in (("GP (n = ∞)", gp.mean[sl, 0], gp.std[sl, 0]),
                   (f"finite width (n = {N_SMALL})", fw_mean[sl], np.sqrt(np.clip(fw_var[sl], 0, None))),
                   (f"NUTS (n = {N_SMALL})", nuts.mean[sl, 0], nuts.std[sl, 0])):
    (line,) = ax.plot(xg, m, label=name)
    ax.fill_between(xg, m - 2 * s, m + 2 * s, color=line.get_color(), alpha=0.15)
ax.plot(xg, imp.mean[sl, 0], "k--", lw=1, label="importance sampling")
ax.plot(X_train[:, 0], Y_train[:, 0], "ko", label="data")
ax.set_xlabel("x")
ax.set_ylabel("z(x)")
ax.set_title(f"tanh, depth {DEPTH}: posterior mean ± 2 sd")
ax.legend(fontsize="small")

ax = axes[1]
ax.axhline(0, color="grey", lw=0.8)
ax.plot(xg, fw_mean[sl] - gp.mean[sl, 0], "C1-", label="finite width (1/n)")
ax.errorbar(xg, imp.mean[sl, 0] - gp.mean[sl, 0], yerr=2 * imp.mean_se[sl, 0], fmt="ko", ms=3,
            label="importance sampling ± 2 se")
ax.errorbar(xg + 0.02, nuts.mean[sl, 0] - gp.mean[sl, 0], yerr=2 * nuts.mean_se[sl, 0], fmt="C2s", ms=3,
            label="NUTS ± 2 se")
for xt in X_train[:, 0]:
    ax.axvline(xt, color="k", lw=0.5, ls=":")
ax.set_xlabel("x")
ax.set_title(f"posterior mean minus GP mean, n = {N_SMALL}")
ax.legend(fontsize="small")

ax = axes[2]
ns = np.array([r["n"] for r in rows], dtype=float)
for key, label in (("gp", "GP"), ("fw", "finite width")):
    errs = np.array([r[key] for r in rows])
    ax.plot(ns, errs, "o-", label=label)
ax.plot(ns, [r["se"] for r in rows], "k:", label="importance-sampling se")
ax.plot(ns, rows[0]["gp"] * ns[0] / ns, "C0--", lw=0.8, label="$\\propto 1/n$")
ax.plot(ns, rows[0]["fw"] * (ns[0] / ns) ** 2, "C1--", lw=0.8, label="$\\propto 1/n^2$")
ax.set_xscale("log", base=2)
ax.set_yscale("log")
ax.set_xlabel("width n")
ax.set_title("max |posterior mean − truth|")
ax.legend(fontsize="small")
fig.tight_layout()
ngp.plot.show(fig, os.path.join(FIGDIR, "02_posterior_bands.png"), dpi=110)
print(f"figures written to {FIGDIR}/ ({time.perf_counter() - T0:.0f} s in total)")
