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
# # 03 · Criticality and universality classes
#
# For a single input the infinite-width kernel obeys the one-dimensional map
# $K^{(\ell+1)} = C_b + C_W\, g(K^{(\ell)})$ with $g(K) = \langle \sigma(z)^2\rangle_{z\sim\mathcal N(0,K)}$.
# Its behaviour over many layers is governed by two **susceptibilities** (PDLT §5.1):
#
# * $\chi_\parallel(K) = C_W\, g'(K)$: how a change of the input's *norm* propagates;
# * $\chi_\perp(K) = C_W \langle\sigma'(z)^2\rangle_K$: how a change of the *angle* between two
#   nearby inputs propagates.
#
# An initialisation $(C_b, C_W)$ is **critical** when the map has a fixed point
# $K^\star = C_b + C_W g(K^\star)$ with $\chi_\parallel(K^\star) = \chi_\perp(K^\star) = 1$: signals
# neither explode nor vanish exponentially with depth, and the finite-width corrections grow
# only linearly, $V/(nK^2) \propto \ell/n$. Activations fall into a few **universality
# classes** with the same large-depth laws.
#
# **Normalisations**: $\operatorname{Var} W = C_W/\text{fan-in}$, $\operatorname{Var} b = C_b$;
# the finite-width vertex of layer $\ell$ is divided by $n_{\ell-1}$, the width feeding it (for
# the output: $1/n_{L-1}$). Equal hidden widths $n$ throughout this notebook.

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
from ngp import criticality as cr

QUICK = os.environ.get("NGP_QUICK", "0") == "1"  # CI switch: shallower flows, coarser diagrams
FIGDIR = os.environ.get("NGP_FIGDIR", "figures")
os.makedirs(FIGDIR, exist_ok=True)
T0 = time.perf_counter()

# %% [markdown]
# ## 1. Critical points
#
# `ngp.criticality.critical_point(activation)` finds the critical $(C_b, C_W)$, the fixed
# point $K^\star$ and the class:
#
# * **scale-invariant** (ReLU, leaky ReLU, linear): every $K$ is a fixed point at
#   $C_b = 0$, $C_W = 1/A_2$; $V/K^2$ grows by a constant per layer, exactly.
# * **$K^\star = 0$** (tanh, erf, sin): $\sigma(0) = 0$; the kernel decays like $1/\ell$ and
#   $V/K^2 \to \tfrac23 \ell$ (universal).
# * **half-stable** (GELU, SWISH): $\chi_\parallel = \chi_\perp = 1$ at a $K^\star > 0$, attractive
#   from one side only; at practical depths they behave like marginal, ReLU-like networks.

# %%
ACTIVATIONS = ("relu", "tanh", "erf", "gelu", "swish")
points = {a: cr.critical_point(a) for a in ACTIVATIONS}


def fmt(v, spec=".6g"):
    return "-" if v is None else format(v, spec)


print(f"{'activation':>10} {'class':>16} {'C_b':>10} {'C_W':>10} {'K*':>10} {'chi_par':>8} {'chi_perp':>8} "
      f"{'V/K^2 slope':>11}")
for a, p in points.items():
    print(f"{a:>10} {p.universality_class:>16} {fmt(p.C_b):>10} {fmt(p.C_W):>10} {fmt(p.K_star):>10} "
          f"{fmt(p.chi_parallel, '.4f'):>8} {fmt(p.chi_perp, '.4f'):>8} {fmt(p.vertex_slope, '.4f'):>11}")
print()
for a, p in points.items():
    print(f"{a}: {p.reason}")

# %% [markdown]
# The susceptibilities away from the critical point tell which phase a network is in:
# $\chi_\perp < 1$ is *ordered* (all inputs collapse onto each other with depth), $\chi_\perp > 1$
# *chaotic* (nearby inputs decorrelate). For tanh at its fixed point $K^\star = 0$ the
# susceptibilities approach 1 only as $K \to 0$:

# %%
for K in (1.0, 0.1, 0.01):
    cpar, cperp = cr.susceptibilities("tanh", K, C_W=1.0)
    print(f"tanh, C_W = 1, K = {K:5.2f}: chi_par = {cpar:.4f}, chi_perp = {cperp:.4f}")

# %% [markdown]
# ## 2. Phase diagrams
#
# `ngp.plot.plot_phase_diagram` iterates the kernel map for `depth` layers at every
# $(C_b, C_W)$ of a grid and colours the result by $\chi_\perp$ (blue: ordered, red: chaotic);
# the black line is $\chi_\perp = 1$ and the star the critical point.

# %%
RES, PHASE_DEPTH = (15, 16) if QUICK else (41, 64)
fig, axes = plt.subplots(2, 2, figsize=(11, 8.5))
for ax, a in zip(axes.ravel(), ("tanh", "relu", "gelu", "swish")):
    ngp.plot.plot_phase_diagram(a, C_b=(0.0, 1.0), C_W=(0.5, 3.0), resolution=RES, depth=PHASE_DEPTH, ax=ax)
fig.tight_layout()
ngp.plot.show(fig, os.path.join(FIGDIR, "03_phase_diagrams.png"), dpi=100)

# %% [markdown]
# ## 3. Depth flow at criticality: recursion vs asymptotic law
#
# `ngp.criticality.depth_flow` iterates the single-input leading-order recursions
#
# $$K^{(\ell+1)} = C_b + C_W g(K), \quad
#   V^{(\ell+1)} = C_W^2 \operatorname{Var}_K(\sigma^2) + \chi_\parallel(K)^2 V^{(\ell)}, \quad
#   K_1^{(\ell+1)} = \chi_\parallel K_1^{(\ell)} + \tfrac{C_W}{2} g''(K) V^{(\ell)},$$
#
# and `ngp.criticality.asymptotic_law` gives the large-depth law of the class. We start each
# network at $K^{(1)} = K_0$: $K_0 = 1$ for ReLU, tanh and erf; for the half-stable GELU and
# SWISH a kernel off the fixed point on its attracting side ($1.5K^\star$ for GELU, which
# attracts from above, $0.75K^\star$ for SWISH, which attracts from below). We show
# $V/(nK^2)$ for $n = 100$: when it reaches $\sim 0.3$ the first-order $1/n$ description stops
# being reliable, which happens at a depth proportional to the width.

# %%
FLOW_DEPTH = 64 if QUICK else 1000
WIDTH = 100
flows, laws = {}, {}
for a, p in points.items():
    if p.universality_class == "half-stable":
        K0 = (1.5 if p.stable_side == "above" else 0.75) * p.K_star
    else:
        K0 = 1.0
    flows[a] = cr.depth_flow(a, C_W=p.C_W, C_b=p.C_b, K0=K0, depth=FLOW_DEPTH)
    laws[a] = cr.asymptotic_law(p, FLOW_DEPTH, K0=K0)
    print(f"{a:>6}: {laws[a].description}")

show = [l for l in (2, 5, 10, 30, 100, 300, 1000) if l <= FLOW_DEPTH]
print(f"\n{'':>6} {'layer':>6} {'K (rec.)':>10} {'K (law)':>10} {'V/K^2 (rec.)':>13} {'V/K^2 (law)':>12}")
for a in ACTIVATIONS:
    f, law = flows[a], laws[a]
    for l in show:
        i = l - 1
        print(f"{a:>6} {l:>6} {f.K[i]:10.5g} {law.K[i]:10.5g} {f.V_over_K2[i]:13.5g} {law.V_over_K2[i]:12.5g}")

# %% [markdown]
# ReLU follows its law exactly ($V/K^2 = 5(\ell-1)$). tanh and erf approach
# $K \simeq 1/(2\ell)$ and $V/K^2 \simeq \tfrac23\ell$ only slowly ($\log\ell/\ell$ corrections).
# GELU and SWISH are *marginal at practical depths*: the kernel barely moves towards $K^\star$
# ($f''(K^\star)$ is tiny), and $V/K^2$ follows the ReLU-like law $A_\star(\ell - 1)$,
# $A_\star \approx 4.9$, to within about 10% up to $\ell \sim 100$; by $\ell \sim 1000$ the
# recursion has fallen well below it (the true $1/\ell$ asymptotics need $\ell \gtrsim 10^4$).

# %%
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
for a in ACTIVATIONS:
    f, law = flows[a], laws[a]
    (line,) = ax1.plot(f.layers, f.K, label=f"{a} ({points[a].universality_class})")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        ax1.plot(law.layers, law.K, "--", color=line.get_color(), lw=1)
    ax2.plot(f.layers[1:], f.V_over_K2[1:] / WIDTH, color=line.get_color(), label=a)  # layer 1: V = 0
    ax2.plot(law.layers[1:], law.V_over_K2[1:] / WIDTH, "--", color=line.get_color(), lw=1)
ax1.set_xscale("log")
ax1.set_yscale("log")
ax1.set_title("kernel $K^{(\\ell)}$ (solid: recursion, dashed: law)")
ax2.set_xscale("log")
ax2.set_yscale("log")
ax2.axhline(0.3, color="grey", lw=0.8)
ax2.set_title(f"$V/(nK^2)$ at $n = {WIDTH}$ (grey: 0.3)")
for ax in (ax1, ax2):
    ax.set_xlabel("layer $\\ell$")
    ax.grid(alpha=0.3)
ax1.legend(fontsize="small")
fig.tight_layout()
ngp.plot.show(fig, os.path.join(FIGDIR, "03_depth_flow.png"), dpi=110)

# %% [markdown]
# ## 4. Same numbers from the full multi-input machinery
#
# The single-input recursion is a special case of `net.prior(X).layers`, which propagates the
# whole $N\times N$ kernel and the $N^4$ vertex. With per-layer hyperparameters we can start the
# MLP at the same $K^{(1)} = K_0$: one input $x = 1$ ($n_0 = 1$), first layer $C_W^{(1)} = K_0$,
# $C_b^{(1)} = 0$, then the critical $(C_b, C_W)$ in every later layer.

# %%
CHECK_DEPTH = 8
CHECK = ("relu", "tanh") if QUICK else ACTIVATIONS  # each activation compiles its own quadratures
print(f"{'':>6} {'max |K - K_flow|':>17} {'max |V - V_flow|/V':>19} {'max |K1 - K1_flow|':>19}")
for a in CHECK:
    p = points[a]
    K0 = float(flows[a].K[0])
    net = ngp.MLP(CHECK_DEPTH, WIDTH, activation=a, C_W=[K0] + [p.C_W] * (CHECK_DEPTH - 1),
                  C_b=[0.0] + [p.C_b] * (CHECK_DEPTH - 1))
    layers = net.prior(np.ones((1, 1)), warn=False).layers
    K = np.array([lay.K[0, 0] for lay in layers])
    V = np.array([lay.V[0, 0, 0, 0] for lay in layers])
    K1 = np.array([lay.K1[0, 0] for lay in layers])
    f = flows[a]
    dK = np.max(np.abs(K - f.K[:CHECK_DEPTH]))
    dV = np.max(np.abs(V[1:] - f.V[1:CHECK_DEPTH]) / f.V[1:CHECK_DEPTH])
    dK1 = np.max(np.abs(K1 - f.K1[:CHECK_DEPTH]))
    print(f"{a:>6} {dK:17.2e} {dV:19.2e} {dK1:19.2e}")
print(f"figures written to {FIGDIR}/ ({time.perf_counter() - T0:.0f} s in total)")
