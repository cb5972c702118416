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
# # 01 · The finite-width prior: $K$, $K_1$ and $V$
#
# A random MLP with Gaussian weights is, at infinite width, a Gaussian process with kernel
# $K$. At finite width $n$ its output distribution is only *nearly* Gaussian. To first order
# in $1/n$ two more objects describe it:
#
# * the **NLO metric** $K_1$ ($G^{\{1\}}$ in PDLT): the two-point function is
#   $\mathbb E[z_{i;\alpha} z_{j;\beta}] = \delta_{ij}\,(K_{\alpha\beta} + K_{1;\alpha\beta}/n)$;
# * the **four-point vertex** $V$: the connected four-point function of outputs
#   $i \ne j$ is $\mathbb E[z_{i;\alpha_1} z_{i;\alpha_2} z_{j;\alpha_3} z_{j;\alpha_4}]_{\rm conn}
#   = V_{(\alpha_1\alpha_2)(\alpha_3\alpha_4)}/n$.
#
# **Normalisations** (PDLT, *The Principles of Deep Learning Theory*): `depth` $L$ counts
# weight layers, $\operatorname{Var} W^{(\ell)}_{ij} = C_W/n_{\ell-1}$ (fan-in),
# $\operatorname{Var} b^{(\ell)}_i = C_b$, and the expansion parameter of the *output* cumulants
# is $1/n_{L-1}$, the width of the **last hidden layer** (not the output width). So
# $K$, $K_1$ and $V$ are width-independent numbers; the width only enters through the explicit
# $1/n$.
#
# This notebook computes $K$, $K_1$, $V$ for a tanh and a ReLU network, follows them through
# depth, and checks them against actual random networks.

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

QUICK = os.environ.get("NGP_QUICK", "0") == "1"  # CI switch: fewer samples, same code path
FIGDIR = os.environ.get("NGP_FIGDIR", "figures")
os.makedirs(FIGDIR, exist_ok=True)
np.set_printoptions(precision=4, suppress=True, linewidth=110)
T0 = time.perf_counter()

# %% [markdown]
# ## 1. Cumulants on a few inputs
#
# Three inputs in $n_0 = 2$ dimensions, and two networks at their critical initialisation
# (notebook 03): tanh with $(C_b, C_W) = (0, 1)$ and ReLU with $(0, 2)$, both with
# $L = 3$ weight layers (two hidden layers of width $n$).

# %%
X = np.array([[1.5, 0.0], [0.9, 1.2], [-0.8, 1.6]])
NETS = {
    "tanh": dict(activation="tanh", C_W=1.0, C_b=0.0),
    "relu": dict(activation="relu", C_W=2.0, C_b=0.0),
}
DEPTH = 3

priors = {}
for name, kw in NETS.items():
    net = ngp.MLP(depth=DEPTH, width=64, **kw)
    prior = net.prior(X)
    priors[name] = prior
    V = prior.V
    print(f"--- {net}")
    print("K  =\n", prior.K)
    print("K1 =\n", prior.K1)
    print("V_(aa)(bb) =\n", np.einsum("aabb->ab", V))
    print("V_(ab)(ab) =\n", np.einsum("abab->ab", V))
    print(f"expansion parameter max|V|/(n K^2) at n = {prior.n}: {prior.expansion_parameter:.3f}\n")

# %% [markdown]
# For one input, $V_{(aa)(aa)}/(nK_{aa}^2)$ is a third of the excess kurtosis of an output
# (its connected four-point function is $3V/n$): the ReLU network is much further from
# Gaussian than the tanh network at the same width. With
# $C_b = 0$ ReLU is scale invariant, $\mathbb E[\sigma(z)^2] = K/2$ exactly, so the diagonal of
# $K_1$ vanishes; the off-diagonal entries (the angles between inputs) do get a $1/n$ shift.

# %% [markdown]
# ## 2. Flow through depth
#
# `prior.layers` holds $K$, $K_1$, $V$ of every layer $\ell$ (the pre-activations $z^{(\ell)}$),
# each with the width $n_{\ell-1}$ that divides its finite-width part. The first layer is exactly
# Gaussian. Deeper networks become less Gaussian: at criticality $V/(nK^2)$ grows linearly in
# $\ell$, so the true expansion parameter is the depth-to-width ratio $L/n$.

# %%
FLOW_DEPTH = 8
FLOW_WIDTH = 64
flows = {}
for name, kw in NETS.items():
    flows[name] = ngp.MLP(depth=FLOW_DEPTH, width=FLOW_WIDTH, **kw).prior(X, warn=False)

print(f"input 0, width n = {FLOW_WIDTH}")
print(f"{'layer':>5} | {'tanh K':>8} {'K1/K':>8} {'V/(nK^2)':>9} | {'relu K':>8} {'K1/K':>8} {'V/(nK^2)':>9}")
for ell in range(FLOW_DEPTH):
    cells = []
    for name in NETS:
        lay = flows[name].layers[ell]
        K, K1, V = lay.K[0, 0], lay.K1[0, 0], lay.V[0, 0, 0, 0]
        v = 0.0 if lay.n is None else V / (lay.n * K**2)
        cells.append(f"{K:8.4f} {K1 / K:8.4f} {v:9.4f}")
    print(f"{ell + 1:>5} | " + " | ".join(cells))

fig = ngp.plot.plot_flow([flows["tanh"], flows["relu"]], labels=["tanh (0, 1)", "relu (0, 2)"])
ngp.plot.show(fig, os.path.join(FIGDIR, "01_depth_flow.png"), dpi=110)

# %% [markdown]
# The ReLU vertex grows by exactly 5 per layer in units of $K^2$ (docs/theory.md, "Criticality":
# $V/K^2 = 5(\ell - 1)$), while for tanh the kernel decays towards $K^\star = 0$ and $V/K^2$
# grows more slowly, approaching $\tfrac23 \ell$ only at very large depth.

# %% [markdown]
# ## 3. Check against actual random networks
#
# `ngp.sample_networks(net, X, S, method="conditional")` draws $S$ independent networks exactly
# (layer by layer from the conditional Gaussian law, cheaper than multiplying weight matrices)
# and returns the **output metric**
# $\widehat G = C_b + \frac{C_W}{n_{L-1}} \sigma(z^{(L-1)})\,\sigma(z^{(L-1)})^T$, the exact
# covariance of each output neuron given the last hidden layer. Exactly,
# $\mathbb E[\widehat G] = \mathbb E[z z^T]$ and $\operatorname{Cov}(\widehat G_{\alpha\beta},
# \widehat G_{\gamma\delta})$ is the connected four-point function of two different output
# neurons, so
#
# $$n\,\big(\mathbb E\widehat G - K\big) = K_1 + O(1/n), \qquad
#   n\,\operatorname{Cov}\big(\widehat G_{\alpha\beta}, \widehat G_{\gamma\delta}\big)
#   = V_{(\alpha\beta)(\gamma\delta)} + O(1/n).$$
#
# The residuals are $O(1/n)$: quadrupling the width should shrink them about four-fold, until
# the Monte-Carlo error (printed as `se`) takes over.

# %%
WIDTHS = (8, 32)
SAMPLES = 20_000 if QUICK else 400_000


def metric_moments(net, X, samples, seed):
    """n (E G - K), n Cov(G) and their Monte-Carlo standard errors, from sampled networks."""
    s = ngp.sample_networks(net, X, samples, seed=seed, method="conditional", batch_size=50_000)
    G = s.metric  # (S, N, N)
    n = net.n_last
    N = G.shape[1]
    d = (G - G.mean(0)).reshape(samples, N * N)
    prod = d[:, :, None] * d[:, None, :]
    cov = (prod.mean(0) * samples / (samples - 1)).reshape((N,) * 4)
    cov_se = (prod.std(0, ddof=1) / np.sqrt(samples)).reshape((N,) * 4)
    return {
        "K1": n * (G.mean(0) - net.prior(X).K),
        "K1_se": n * G.std(0, ddof=1) / np.sqrt(samples),
        "V": n * cov,
        "V_se": n * cov_se,
    }


mc = {}
print(f"{SAMPLES} networks per row; residuals are max over entries, relative to max |V| (or max |K1|)")
print(f"{'net':>5} {'n':>4} {'|nCov-V|/|V|':>13} {'se':>7} {'|n(EG-K)-K1|/|K1|':>18} {'se':>7} {'time':>6}")
for name, kw in NETS.items():
    for n in WIDTHS:
        t = time.perf_counter()
        net = ngp.MLP(depth=DEPTH, width=n, **kw)
        prior = net.prior(X, warn=False)
        m = metric_moments(net, X, SAMPLES, seed=n)
        Vmax, K1max = np.abs(prior.V).max(), np.abs(prior.K1).max()
        rV = np.abs(m["V"] - prior.V).max() / Vmax
        rK1 = np.abs(m["K1"] - prior.K1).max() / K1max
        mc[name, n] = dict(m, rV=rV, rV_se=m["V_se"].max() / Vmax, rK1=rK1, rK1_se=m["K1_se"].max() / K1max,
                           V_theory=prior.V, K1_theory=prior.K1)
        print(f"{name:>5} {n:>4} {rV:13.4f} {m['V_se'].max() / Vmax:7.4f} {rK1:18.4f} "
              f"{m['K1_se'].max() / K1max:7.4f} {time.perf_counter() - t:5.1f}s")

for name in NETS:
    a, b = mc[name, WIDTHS[0]]["rV"], mc[name, WIDTHS[1]]["rV"]
    print(f"{name}: V residual shrinks by {a / b:.2f} from n = {WIDTHS[0]} to {WIDTHS[1]} "
          f"(1/n predicts {WIDTHS[1] / WIDTHS[0]:.0f})")

# %% [markdown]
# The vertex matches the sampled networks to a few per cent already at $n = 8$ for tanh
# (ReLU, whose expansion parameter is $\approx 1.25$ at $n = 8$, is off by tens of per cent), and
# the residual falls by the predicted factor of about 4 when the width quadruples. $K_1$ is a
# small correction; it agrees to about 10% of its size, at the level of the Monte-Carlo error.
# In the infinite-width (GP) approximation both would be zero.

# %%
fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
for ax, name in zip(axes[:2], NETS):
    lo = min(mc[name, n]["V_theory"].min() for n in WIDTHS)
    hi = max(mc[name, n]["V_theory"].max() for n in WIDTHS)
    for n, marker in zip(WIDTHS, ("o", "s")):
        r = mc[name, n]
        ax.errorbar(r["V_theory"].ravel(), r["V"].ravel(), yerr=2 * r["V_se"].ravel(), fmt=marker, ms=4,
                    alpha=0.7, label=f"n = {n}")
    ax.plot([lo, hi], [lo, hi], "k-", lw=0.8)
    ax.set_xlabel("$V$ (recursion)")
    ax.set_ylabel(r"$n\,\mathrm{Cov}(\hat G, \hat G)$ (sampled networks)")
    ax.set_title(f"{name}, depth {DEPTH}: all $V_{{(ab)(cd)}}$")
    ax.legend(fontsize="small")
ax = axes[2]
ns = np.array(WIDTHS, dtype=float)
for name in NETS:
    r = np.array([mc[name, n]["rV"] for n in WIDTHS])
    se = np.array([mc[name, n]["rV_se"] for n in WIDTHS])
    (line,) = ax.plot(ns, r, "o-", label=f"{name}: $|n\\mathrm{{Cov}} - V| / |V|$")
    ax.plot(ns, se, ":", color=line.get_color(), label=f"{name}: MC standard error")
    ax.plot(ns, r[0] * ns[0] / ns, "--", color=line.get_color(), lw=0.8)
ax.set_xscale("log", base=2)
ax.set_yscale("log")
ax.set_xlabel("width $n$")
ax.set_title("relative residual (dashed: $1/n$)")
ax.legend(fontsize="x-small")
fig.tight_layout()
ngp.plot.show(fig, os.path.join(FIGDIR, "01_monte_carlo_check.png"), dpi=110)
print(f"figures written to {FIGDIR}/ ({time.perf_counter() - T0:.0f} s in total)")
