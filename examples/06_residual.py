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
# # 06 · Residual networks at finite width
#
# Almost every network people train is residual. A residual block adds a branch to a skip
# connection,
#
# $$z^{(\ell+1)}_i = \gamma\, z^{(\ell)}_i + \xi\Big[b_i + \sum_j W_{ij}\,\sigma\big(z^{(\ell)}_j\big)\Big],
# \qquad \operatorname{Var}W_{ij} = C_W/n,\ \operatorname{Var}b_i = C_b,$$
#
# so at infinite width the kernel obeys $K' = \gamma^2 K + \xi^2\,(C_b + C_W\langle\sigma\sigma\rangle_K)$.
# At finite width the MLP recursions for $V$ and $K_1$ *with a skip term added* are wrong beyond the
# first block: a neuron's own past enters its next value twice, directly through the skip and
# through the metric $\widehat G = C_b + \frac{C_W}{n}\sum_j \sigma(z_j)\sigma(z_j)^T$ that it helped to
# build. The theory used here (docs/theory.md, *residual networks*) follows the whole
# single-neuron trajectory: the metric fluctuation of a layer is the fluctuation of independent
# trajectories plus the *response* to all earlier metric fluctuations, and $K_1$ picks up a
# *self-interaction* term, the correlation of a neuron's past with the metric.
#
# This notebook
#
# 1. finds critical residual initialisations (`ngp.criticality.residual_critical_point`),
# 2. checks the finite-width vertex and $K_1$ against actual random residual networks,
# 3. answers the practical question: **at the same depth-to-width ratio, how much do skip
#    connections shrink the $1/n$ corrections?** (`ngp.criticality.residual_depth_flow` against
#    `ngp.criticality.depth_flow`).
#
# Conventions as in notebook 01: `depth` $L$ counts weight layers (plain first layer, $L-2$
# residual blocks, plain readout), $V$ and $K_1$ of the output carry $1/n$, $n$ the hidden width.

# %%
import math
import os
import sys
import textwrap
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
from ngp import criticality as cr

QUICK = os.environ.get("NGP_QUICK", "0") == "1"  # CI switch: shallower flows, fewer networks
FIGDIR = os.environ.get("NGP_FIGDIR", "figures")
os.makedirs(FIGDIR, exist_ok=True)
T0 = time.perf_counter()

# %% [markdown]
# ## 1. Critical residual blocks
#
# With one input the block multiplies both susceptibilities as
# $\chi_{\rm res} = \gamma^2 + \xi^2\chi$. Criticality ($\chi_{\rm res,\parallel} = \chi_{\rm res,\perp} = 1$
# at a fixed point) therefore needs $\chi_\parallel = \chi_\perp$ of the branch, i.e. the MLP's
# $K^\star$, and
#
# $$\xi^2\,(C_b, C_W) = (1-\gamma^2)\,(C_b^\star, C_W^\star):$$
#
# for every $\gamma^2 < 1$ one point on a surface through the MLP's critical point
# ($\gamma^2 + \xi^2 = 1$ keeps the MLP values). For $\gamma^2 \ge 1$ there is none: each block adds
# $\xi^2 G > 0$ to the kernel.

# %%
for act in ("relu", "tanh", "gelu"):
    for gamma, xi in ((math.sqrt(0.5), math.sqrt(0.5)), (0.9, 0.3), (1.0, 0.3)):
        p = cr.residual_critical_point(act, gamma=gamma, xi=xi)
        # K_star is None for the scale-invariant class (ReLU): there every K is a fixed point
        k_star = "any (scale-invariant)" if p.K_star is None else f"{p.K_star:.4f}"
        cells = f"C_b = {p.C_b:.4f}, C_W = {p.C_W:.4f}, K* = {k_star}" if p.exists else "none: " + p.reason
        head = f"{act:>5} gamma = {gamma:.3f}, xi = {xi:.3f}: "
        print(textwrap.fill(cells, width=115, initial_indent=head, subsequent_indent=" " * len(head)))

# %% [markdown]
# ## 2. The theory against actual residual networks
#
# Critical ReLU blocks with $\gamma^2 = \xi^2 = \tfrac12$ ($C_W = 2$, $C_b = 0$), one input. The
# kernel is exactly constant through depth. We draw random residual networks
# (`ngp.sample_networks`, exact conditional sampler) and estimate $n\operatorname{Var}\widehat G$
# and $n(\mathbb E\widehat G - K)$ of the readout metric, which equal $V$ and $K_1$ up to $O(1/n)$.
# The naive closure (the MLP recursion with a skip term) and the plain MLP of the same depth are
# shown for comparison.

# %%
GAMMA = XI = math.sqrt(0.5)
DEPTH = 5 if QUICK else 8
WIDTHS = (32, 128) if QUICK else (32, 64, 128, 256)
SAMPLES = 8_000 if QUICK else 100_000
X = np.array([[1.0]])

flow = cr.residual_depth_flow("relu", C_W=2.0, C_b=0.0, gamma=GAMMA, xi=XI, K0=1.0, depth=DEPTH)
mlp = cr.depth_flow("relu", C_W=2.0, C_b=0.0, K0=1.0, depth=DEPTH)
xi2 = XI**2
naive_growth = 5 * xi2**2 + 4 * (1 - xi2) * xi2  # per block, the naive closure (scale-invariant)
naive = 5 + (DEPTH - 2) * naive_growth
theory = flow.V_over_K2[-1]
print(f"depth {DEPTH}: V/K^2 theory {theory:.3f}, naive closure {naive:.3f}, plain MLP {mlp.V_over_K2[-1]:.3f}; "
      f"K1/K theory {flow.K1_over_K[-1]:.3f} (naive and MLP: 0)")
mc_rows = []
for n in WIDTHS:
    net = ngp.ResMLP(DEPTH, n, activation="relu", C_W=2.0, C_b=0.0, gamma=GAMMA, xi=XI)
    G = ngp.sample_networks(net, X, SAMPLES, seed=n, method="conditional", batch_size=min(SAMPLES, 50_000)).metric[:, 0, 0]
    K = float(np.asarray(net.prior(X).K)[0, 0])
    d = (G - G.mean()) ** 2
    v, v_se = n * d.mean() / K**2, n * d.std(ddof=1) / math.sqrt(SAMPLES) / K**2
    k1, k1_se = n * (G.mean() - K) / K, n * G.std(ddof=1) / math.sqrt(SAMPLES) / K
    mc_rows.append((n, v, v_se, k1, k1_se))
    print(f"n = {n:4d}: MC n Var(G)/K^2 = {v:7.3f} +- {v_se:.3f}   MC n(EG - K)/K = {k1:6.3f} +- {k1_se:.3f}")

# %% [markdown]
# The Monte-Carlo values approach the theory like $1/n$ (the ReLU $1/n^2$ terms are large, as for
# the MLP), not the naive closure, which misses by a constant, width-independent amount. The
# residual network also has a $1/n$ shift of its kernel, $K_1 > 0$, although its MLP counterpart
# has $K_1 = 0$ for one input: the neurons that are switched off ($z < 0$) tend to stay off along
# the skip path, so the same neurons keep dominating the metric.

# %% [markdown]
# ## 3. How much do skip connections shrink the $1/n$ corrections?
#
# At criticality the plain ReLU MLP accumulates $V/K^2 = 5$ per layer, so its expansion parameter
# is $V/(nK^2) \approx 5L/n$. For residual blocks on the critical surface with
# $\gamma^2 = 1 - \xi^2$ we follow $V/K^2$ through depth with the full theory and read off the
# growth per block at large depth; the naive closure would predict $5\xi^4 + 4\gamma^2\xi^2$.
# The same for tanh (the $K^\star = 0$ class, $C_W = 1$) starting at $K_0 = 1$.

# %%
XI2S = (0.5, 0.25) if QUICK else (0.5, 0.25, 0.1)
FLOW_DEPTH = 14 if QUICK else 50
ACTS = ("relu", "tanh")
flows = {}
for act in ACTS:
    p = cr.critical_point(act)
    flows[act, 1.0] = cr.depth_flow(act, C_W=p.C_W, C_b=p.C_b, K0=1.0, depth=FLOW_DEPTH)
    for x2 in XI2S:
        t = time.perf_counter()
        flows[act, x2] = cr.residual_depth_flow(act, C_W=p.C_W, C_b=p.C_b, gamma=math.sqrt(1 - x2),
                                                xi=math.sqrt(x2), K0=1.0, depth=FLOW_DEPTH)
        print(f"{act} xi^2 = {x2}: {time.perf_counter() - t:.1f}s")

print(f"\nV/K^2 at depth {FLOW_DEPTH}, and its growth over the last layer (MLP: xi^2 = 1)")
print(f"{'act':>5} {'xi^2':>5} {'V/K^2':>9} {'growth':>8} {'ratio to MLP':>13} {'naive growth':>13} {'K1/K':>7}")
for act in ACTS:
    base = flows[act, 1.0]
    base_growth = base.V_over_K2[-1] - base.V_over_K2[-2]
    for x2 in (1.0,) + XI2S:
        f = flows[act, x2]
        growth = f.V_over_K2[-1] - f.V_over_K2[-2]
        nv = 5 * x2**2 + 4 * (1 - x2) * x2 if act == "relu" else float("nan")
        print(f"{act:>5} {x2:5.2f} {f.V_over_K2[-1]:9.3f} {growth:8.4f} {f.V_over_K2[-1] / base.V_over_K2[-1]:13.3f} "
              f"{nv:13.4f} {f.K1_over_K[-1]:7.3f}")

# %% [markdown]
# Two things stand out. For ReLU, skip connections shrink the vertex far less than the naive
# closure suggests: with $\xi^2 = \tfrac12$ a residual block adds *more* to $V/K^2$ than a plain
# layer, and even at $\xi^2 = 0.1$ a block still costs about a quarter of a plain layer (the naive
# closure says a tenth). The sparsity pattern of ReLU (which neurons are switched off) persists for
# about $1/\xi^2$ blocks along the skip path, and the metric averages over fewer effectively
# independent neurons. For tanh, an odd activation, the persistence does not bias the metric in
# the same way and the shrinkage is larger. Either way the practical expansion parameter of a
# residual network is $V/(nK^2) \approx A_{\rm res}(\xi)\,L/n$ with the per-block growth
# $A_{\rm res}$ printed above in place of the MLP's.

# %% [markdown]
# ## 4. The same theory in the engine: prior and posterior of a `ResMLP`
#
# `ngp.ResMLP(...).prior(X)` (and any `ngp.Residual` step inside `ngp.serial`) carries these finite-width
# cumulants: `.V`, `.K1` per layer and at the output. For the one-input network of section 2 they are the
# numbers above. And so `ngp.condition` gives the first-order finite-width posterior of a residual
# network; we compare it with the exact posterior of actual random residual networks (importance
# sampling) and with the GP.

# %%
prior = ngp.ResMLP(DEPTH, 128, activation="relu", C_W=2.0, C_b=0.0, gamma=GAMMA, xi=XI).prior(X)
K = float(prior.K[0, 0])
print(f"engine: V/K^2 = {prior.V[0, 0, 0, 0] / K**2:.3f} (depth flow: {theory:.3f}), "
      f"K1/K = {prior.K1[0, 0] / K:.3f} (depth flow: {flow.K1_over_K[-1]:.3f})")

XA = np.array([[1.0, 0.2], [-0.6, 0.9], [0.3, -1.1]])
YA = np.array([[0.6], [-0.4], [0.5]])
XB = np.array([[0.5, 0.5]])
POST_WIDTHS = (16, 64) if QUICK else (16, 32, 64)
POST_SAMPLES = 100_000 if QUICK else 1_000_000
post_rows = []
for n in POST_WIDTHS:
    net = ngp.ResMLP(4, n, activation="tanh", C_W=1.5, C_b=0.1, gamma=0.9, xi=0.6)
    cond = ngp.condition(net, XA, YA, noise=0.05)
    truth = ngp.reference.importance_posterior(net, XA, YA, XB, noise=0.05, num_samples=POST_SAMPLES, seed=n)
    fw, gp = cond.predict(XB).mean[0, 0], cond.gp.predict(XB).mean[0, 0]
    post_rows.append((n, abs(fw - truth.mean[0, 0]), abs(gp - truth.mean[0, 0]), truth.mean_se[0, 0]))
    print(f"n = {n:3d}: posterior mean, truth {truth.mean[0, 0]:.5f} +- {truth.mean_se[0, 0]:.5f} | "
          f"finite width {fw:.5f} | GP {gp:.5f} | error: finite width {post_rows[-1][1]:.1e}, "
          f"GP {post_rows[-1][2]:.1e} (truth se {truth.mean_se[0, 0]:.1e})")

# %% [markdown]
# At every width the finite-width mean is much closer to the truth than the GP's (about an order of
# magnitude or more), and the GP's error halves with each doubling of $n$, like $1/n$. The slope of the
# finite-width error is *not* resolved here: its errors are within a few to several standard errors of the
# importance-sampling truth (printed beside them), and at the largest width below one. Theory says $1/n^2$;
# `benchmarks/residual_posterior.py` measures it for this network with control-variate truths up to
# $n = 128$ (standard errors down to $2\times10^{-6}$): log-log slope $-2.06 \pm 0.11$ for the finite-width
# error and $-0.98$ for the GP's (benchmarks/results/residual_posterior.json).

# %%
fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
WIDTH = 100
for ax, act in zip(axes[:2], ACTS):
    for x2 in (1.0,) + XI2S:
        f = flows[act, x2]
        label = "MLP" if x2 == 1.0 else f"residual, $\\xi^2 = {x2}$"
        (line,) = ax.plot(f.layers[1:] / WIDTH, f.V_over_K2[1:] / WIDTH, label=label)
        if act == "relu" and x2 < 1.0:  # naive closure: 5 + (l - 2) * growth
            naive_line = (5 + (f.layers[1:] - 2) * (5 * x2**2 + 4 * (1 - x2) * x2)) / WIDTH
            ax.plot(f.layers[1:] / WIDTH, naive_line, ":", color=line.get_color(), lw=1)
    ax.set_title(f"{act} at criticality: $V/(nK^2)$ at $n = {WIDTH}$" + (" (dotted: naive)" if act == "relu" else ""))
    ax.set_xlabel("depth-to-width ratio $L/n$")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
ax = axes[2]
ns = np.array([r[0] for r in mc_rows], dtype=float)
vs, ses = np.array([r[1] for r in mc_rows]), np.array([r[2] for r in mc_rows])
ax.errorbar(1 / ns, vs, yerr=ses, fmt="o", label="MC $n\\,$Var$(\\widehat G)/K^2$")
order = 2 if len(ns) >= 4 else 1  # weighted fit a + c/n (+ d/n^2): the intercept is the n -> infinity limit
A = np.stack([ns ** -k for k in range(order + 1)], axis=1)
coef = np.linalg.lstsq(A / ses[:, None], vs / ses, rcond=None)[0]
x = np.linspace(0, 1.1 / ns.min(), 50)
ax.plot(x, sum(c * x**k for k, c in enumerate(coef)), ":", color="C0", lw=1, label=f"fit, $n\\to\\infty$: {coef[0]:.1f}")
ax.axhline(theory, color="C1", label="theory $V/K^2$")
ax.axhline(naive, color="C2", ls=":", label="naive closure")
ax.axhline(mlp.V_over_K2[-1], color="grey", ls="--", label="plain MLP, same depth")
ax.set_xlim(0, 1.1 / ns.min())
ax.set_xlabel("$1/n$")
ax.set_title(f"relu, $\\gamma^2 = \\xi^2 = 1/2$, depth {DEPTH}: actual networks")
ax.legend(fontsize="small")
ax.grid(alpha=0.3)
fig.tight_layout()
ngp.plot.show(fig, os.path.join(FIGDIR, "06_residual_vertex.png"), dpi=110)
print(f"total {time.perf_counter() - T0:.0f}s")
