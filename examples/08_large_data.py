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
# # 08 · Finite width at a thousand training points: Mauna Loa CO2
#
# The dense finite-width posterior needs the four-point vertex $V$, which has $N^4$ entries:
# a few dozen training points at most. The **matrix-free** path (`ngp._matrix_free`,
# docs/matrix-free.md) never forms $V$: every contraction of $V$ that the posterior mean,
# the variances and the evidence need is a Gaussian expectation over the pre-activations of one
# layer, pushed through the layers above by the sparse Jacobians of the kernel map. It is
# estimated by (randomised quasi-) Monte Carlo at $O(\text{samples} \times N^2)$ cost and every
# output carries its standard error.
#
# Data: the weekly Mauna Loa CO2 record that ships with statsmodels (public domain; Keeling &
# Whorf, Scripps), 2225 weeks after dropping missing values, a classic Gaussian-process
# benchmark. Inputs: the date and the phase within the year ($t$, $\sin 2\pi t$, $\cos 2\pi t$,
# standardised); targets: the CO2 concentration (standardised). We train on 1000 random weeks
# and test on 1000 others.
#
# **Model and normalisations**: $y = z(x) + \epsilon$, $\epsilon \sim \mathcal N(0, \sigma^2)$;
# $W^{(\ell)}_{ij} \sim \mathcal N(0, C_W/n_{\ell-1})$, $b \sim \mathcal N(0, C_b)$; tanh, depth
# $L = 3$, both hidden layers of width $n$. The corrections are first order in $1/n$.

# %%
import os
import sys
import time
import warnings

import numpy as np
import jax

jax.config.update("jax_enable_x64", True)  # ngp needs float64
import matplotlib.pyplot as plt  # figures: written to NGP_FIGDIR and shown inline in Jupyter (ngp.plot.show)

try:
    import ngp
except ImportError:  # running from a source checkout without `pip install .`
    sys.path.insert(0, os.path.abspath(".." if os.path.basename(os.getcwd()) == "examples" else "."))
    import ngp
from ngp.datasets import standardize

QUICK = os.environ.get("NGP_QUICK", "0") == "1"  # CI switch: fewer points and samples
FIGDIR = os.environ.get("NGP_FIGDIR", "figures")
os.makedirs(FIGDIR, exist_ok=True)
T0 = time.perf_counter()

N_TRAIN, N_TEST = (128, 64) if QUICK else (1000, 1000)
SAMPLES = 2048 if QUICK else 32768
WIDTHS = (256, 1024, 4096, 16384, 65536) if QUICK else (1024, 4096, 16384, 65536, 262144)

# %% [markdown]
# ## Data

# %%
import statsmodels.datasets.co2 as co2

frame = co2.load_pandas().data.dropna()
years = np.asarray(frame.index.year + (frame.index.day_of_year - 1) / 365.25, dtype=float)
ppm = frame["co2"].to_numpy(dtype=float)
features = np.stack([years, np.sin(2 * np.pi * years), np.cos(2 * np.pi * years)], axis=1)
order = np.random.default_rng(0).permutation(years.size)
train, test = order[:N_TRAIN], order[N_TRAIN : N_TRAIN + N_TEST]
X_train, X_test, _ = standardize(features[train], features[test])
y_train, y_test, (y_mu, y_sd) = standardize(ppm[train][:, None], ppm[test][:, None])
print(f"{years.size} weeks, {years.min():.0f}-{years.max():.0f}; train {N_TRAIN}, test {N_TEST}")

# %% [markdown]
# ## Kernels and the GP
#
# We pick the noise variance by the GP evidence on a small grid (the finite-width answers below
# use the same noise); the evidence at the neighbouring grid values is printed, to show that the
# maximum lies inside the grid, not at its edge.

# %%
ARCH = dict(activation="tanh", C_W=1.5, C_b=0.1, depth=3)
net = ngp.MLP(ARCH["depth"], WIDTHS[0], activation=ARCH["activation"], C_W=ARCH["C_W"], C_b=ARCH["C_b"])
t = time.perf_counter()
K_train = np.asarray(net.prior(X_train).K)
print(f"training kernel: {time.perf_counter() - t:.1f} s")


def gp_log_evidence(noise):
    K = K_train + noise * np.eye(N_TRAIN)
    c = np.linalg.cholesky(K)
    a = np.linalg.solve(c, y_train[:, 0])
    return -0.5 * a @ a - np.sum(np.log(np.diag(c))) - 0.5 * N_TRAIN * np.log(2 * np.pi)


noises = np.logspace(-3.25, -1, 10)  # 5.6e-4 ... 0.1, four points per decade
evidences = [gp_log_evidence(s) for s in noises]
i_best = int(np.argmax(evidences))
NOISE = float(noises[i_best])
print(f"noise variance (standardised units) chosen by the GP evidence: {NOISE:.4g}")
near = range(max(i_best - 1, 0), min(i_best + 2, len(noises)))
print("GP log evidence around it:", ", ".join(f"{noises[i]:.2g}: {evidences[i]:.1f}" for i in near))

# %% [markdown]
# ## The finite-width posterior
#
# `ngp.condition(..., method="matrix_free")` (what `method="auto"` picks above 64 training points):
# one matrix-free run. Its $1/n$ terms (the $K_1$ terms, exact, and the vertex terms, sampled)
# scale exactly like $1/n$ when all hidden widths are scaled together, so `with_width` gives every
# other width without resampling.

# %%
t = time.perf_counter()
with warnings.catch_warnings():
    warnings.simplefilter("ignore", ngp.ExpansionWarning)  # the validity verdicts are printed below
    cond = ngp.condition(net, X_train, y_train, noise=NOISE, method="matrix_free", samples=SAMPLES, seed=0)
    post = cond.predict(X_test)
print(f"matrix-free posterior ({cond.method}): {time.perf_counter() - t:.1f} s")


def predictive_loglik(mean, var):
    """Mean log N(y_test | mean, var + noise) per test point (standardised units)."""
    v = var[:, 0] + NOISE
    if np.any(v <= 0):
        return np.nan
    return float(np.mean(-0.5 * (y_test[:, 0] - mean[:, 0]) ** 2 / v - 0.5 * np.log(2 * np.pi * v)))


rows = []
for n in WIDTHS:
    c = cond.with_width(n)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ngp.ExpansionWarning)
        p = c.predict(X_test)
    ll = predictive_loglik(p.mean, p.var)
    # standard error of the predictive log-likelihood by propagating mean_se and var_se (delta method)
    v = p.var[:, 0] + NOISE
    r = y_test[:, 0] - p.mean[:, 0]
    d_mean = r / v / N_TEST
    d_var = 0.5 * (r**2 / v**2 - 1 / v) / N_TEST
    ll_se = float(np.sqrt(np.sum((d_mean * p.mean_se[:, 0]) ** 2 + (d_var * p.var_se[:, 0]) ** 2)))
    rows.append((n, ll, ll_se, p.log_evidence / N_TRAIN, p.log_evidence_se / N_TRAIN, c.validity))
gp_ll = predictive_loglik(post.gp.mean, post.gp.var)
gp_ev = cond.gp.log_evidence / N_TRAIN
print(f"{'width':>8} {'test loglik':>20} {'log evidence / N':>23} {'eps':>7} {'eta':>8} trusted")
for n, ll, se, ev, ev_se, v in rows:
    print(f"{n:>8} {ll:9.4f} +- {se:<7.2g} {ev:12.5f} +- {ev_se:<7.2g} {v.eps:7.2g} {v.eta:8.3f} {v.trusted}")
print(f"{'GP':>8} {gp_ll:9.4f} {gp_ev:23.5f}")

# %% [markdown]
# ## GP vs finite width over widths
#
# Filled markers are widths inside the validated regime (`validity`: $\epsilon = \max|V|/(nK^2)
# \le 0.3$ and $\eta \le 1$, where $\eta$ is the prior variance of $\log p(y \mid \text{network})$
# at first order). $\eta$ grows like $N_\text{train}/n$: with a thousand training points the first-order
# expansion is trustworthy only for very wide networks, and the correction it predicts there is small.

# %%
fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
inv = np.array([1 / r[0] for r in rows])
for ax, (col, se_col, gp_val, label) in zip(
    axes, ((1, 2, gp_ll, "test log-likelihood per point"), (3, 4, gp_ev, "log evidence per training point"))
):
    vals = np.array([r[col] for r in rows])
    ses = np.array([r[se_col] for r in rows])
    ok = np.array([r[5].trusted for r in rows])
    ax.errorbar(inv[ok], vals[ok], yerr=2 * ses[ok], fmt="o", color="C0", label="finite width (trusted)")
    ax.errorbar(inv[~ok], vals[~ok], yerr=2 * ses[~ok], fmt="o", mfc="none", color="C0", label="finite width (outside rule)")
    ax.plot([0], [gp_val], "s", color="C3", label="GP (n = infinity)")
    ax.set_xscale("symlog", linthresh=inv.min() / 2)
    ax.set_xlabel("1 / n")
    ax.set_title(label)
axes[0].legend(fontsize=8)
fig.suptitle(f"Mauna Loa CO2, tanh depth 3, {N_TRAIN} training weeks (error bars: 2 s.e.)")
fig.tight_layout()
ngp.plot.show(fig, os.path.join(FIGDIR, "08_large_data.png"), dpi=120)
print(f"total {time.perf_counter() - T0:.1f} s")
