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
# # 05 · Training-time tools: Jacobian regularisation and the FDR scheduler
#
# Two tools from the same theory, for training rather than for priors (`ngp.train`, built on
# optax; install the `train` extra):
#
# * **Jacobian regularisation** (Hoffman, Roberts & Yaida 2019). Add
#   $\frac{\lambda_{JR}}{2}\,\frac1B\sum_b \lVert J_b\rVert_F^2$, $J_b = \partial f(x_b)/\partial x_b$
#   the input-output Jacobian of the logits, to the loss. A small Jacobian means a small change
#   of the output under a small change of the input: robustness to input noise and to adversarial
#   perturbations. `ngp.train.jacobian_penalty` estimates $\lVert J_b\rVert_F^2$ with one random
#   projection per example, $C\,\lVert v_b^\top J_b\rVert^2$ for $v_b$ uniform on the unit sphere
#   of the $C$ outputs (one vector-Jacobian product, unbiased).
# * **The fluctuation-dissipation relation of SGD** (Yaida 2018). In a stationary state of SGD with
#   learning rate $\eta$, momentum $\mu$, dampening $d$ and weight decay $\lambda$,
#   $\langle\theta\cdot(\nabla f + \lambda\theta)\rangle = \frac\eta2\frac{1+\mu}{1-d}\langle\lvert v\rvert^2\rangle$.
#   `ngp.train.fdr_sgd` measures both sides on the fly and cuts the learning rate by 10 when they
#   agree to 1%: it decides by itself when SGD has stopped making progress at the current rate.
#
# Data: scikit-learn's bundled 8x8 digits (1797 images). Model: a 64-200-200-10 ReLU MLP. The
# full comparison over 5 seeds is `benchmarks/train_digits.py`; this notebook shows the curves.

# %%
import os
import sys
import time

import numpy as np
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt  # figures: written to NGP_FIGDIR and shown inline in Jupyter (ngp.plot.show)
import optax
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

try:
    import ngp
except ImportError:  # running from a source checkout without `pip install .`
    sys.path.insert(0, os.path.abspath(".." if os.path.basename(os.getcwd()) == "examples" else "."))
    import ngp
from ngp.train import fdr_sgd, jacobian_penalty, jacobian_regularized

QUICK = os.environ.get("NGP_QUICK", "0") == "1"  # CI switch: fewer steps and values of lambda
FIGDIR = os.environ.get("NGP_FIGDIR", "figures")
os.makedirs(FIGDIR, exist_ok=True)
T0 = time.perf_counter()

STEPS = 300 if QUICK else 6000  # SGD steps for the Jacobian-regularisation runs
FDR_STEPS = 400 if QUICK else 12_000
WINDOW = 100 if QUICK else 1000  # FDR check interval (the default is 1000)
LAMBDAS = (0.0, 0.1) if QUICK else (0.0, 0.01, 0.05, 0.1)

# %% [markdown]
# ## The estimator
#
# On a small random network, the projection estimate against the exact value (`num_projections=None`
# sums over the $C$ output directions, $C$ vector-Jacobian products). Its variance per example is
# $2\,(C\operatorname{tr}A^2 - (\operatorname{tr}A)^2)/(C+2)$ with $A = J J^\top$: noisy for one
# example, but averaged over a batch and over training steps it is plenty.

# %%
def init_mlp(key, sizes=(64, 200, 200, 10)):
    keys = jax.random.split(key, len(sizes) - 1)
    return [(jax.random.normal(k, (m, n)) * jnp.sqrt(2.0 / m), jnp.zeros(n)) for k, m, n in zip(keys, sizes[:-1], sizes[1:])]


def mlp(params, x):
    for W, b in params[:-1]:
        x = jax.nn.relu(x @ W + b)
    return x @ params[-1][0] + params[-1][1]


params = init_mlp(jax.random.PRNGKey(0))
x = jax.random.uniform(jax.random.PRNGKey(1), (32, 64))
exact = jacobian_penalty(mlp, params, x, num_projections=None)
draws = jax.vmap(lambda k: jacobian_penalty(mlp, params, x, k))(jax.random.split(jax.random.PRNGKey(2), 200))
print(f"1/2 mean ||J||_F^2: exact {exact:.4f}; one projection per example: {draws.mean():.4f} "
      f"+- {draws.std() / np.sqrt(len(draws)):.4f} (mean of 200 draws), spread {draws.std():.4f} per draw")

# %% [markdown]
# ## Digits, with and without the penalty
#
# Pixels scaled to $[0, 1]$; a stratified split of 1347 training and 450 test images. SGD with
# momentum 0.9, batch 32, weight decay $3\cdot10^{-3}$, learning rate 0.05 cut by 10 at half and
# three quarters of the run. `jacobian_regularized` wraps the cross-entropy as
# `loss + lambda_jr * jacobian_penalty(...)` with one forward pass for both.

# %%
X, y = load_digits(return_X_y=True)
X = (X / 16.0).astype(np.float32)
X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=450, stratify=y, random_state=0)
X_train, X_test, y_train, y_test = map(jnp.asarray, (X_train, X_test, y_train, y_test))


def cross_entropy(logits, labels):
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], axis=1))


def fit(optimizer, steps, *, lambda_jr=0.0, seed=0, record=None):
    """Minibatch training; ``record(step, state, params)`` is called every 100 steps."""
    loss = jacobian_regularized(cross_entropy, mlp, lambda_jr=lambda_jr)
    params = init_mlp(jax.random.PRNGKey(seed))
    state = optimizer.init(params)

    @jax.jit
    def update(params, state, idx, key):
        grads = jax.grad(loss)(params, X_train[idx], y_train[idx], key)
        updates, state = optimizer.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    rng = np.random.default_rng(seed)
    batches = []  # a fresh permutation of the training set every epoch, batches of 32
    while len(batches) < steps:
        perm = rng.permutation(len(y_train))
        batches += [perm[i:i + 32] for i in range(0, len(perm) - 31, 32)]
    key = jax.random.PRNGKey(seed + 1)
    for t in range(steps):
        params, state = update(params, state, batches[t], jax.random.fold_in(key, t))
        if record is not None and (t + 1) % 100 == 0:
            record(t + 1, state, params)
    return params, state


def weight_decayed_sgd(schedule):
    return optax.chain(optax.add_decayed_weights(3e-3), optax.sgd(schedule, momentum=0.9))


def step_schedule(steps):
    return optax.piecewise_constant_schedule(0.05, {steps // 2: 0.1, 3 * steps // 4: 0.1})


@jax.jit
def accuracy(params, x, labels):
    return jnp.mean(jnp.argmax(mlp(params, x), axis=1) == labels)


@jax.jit
def fgsm(params, x, labels, eps):
    """One gradient-sign step of size eps on the inputs (the fast gradient sign method)."""
    g = jax.grad(lambda xx: cross_entropy(mlp(params, xx), labels))(x)
    return x + eps * jnp.sign(g)


def robustness(params):
    noisy = X_test + 0.3 * jax.random.normal(jax.random.PRNGKey(9), X_test.shape)
    return {
        "clean": float(accuracy(params, X_test, y_test)),
        "noise 0.3": float(accuracy(params, noisy, y_test)),
        "fgsm 0.05": float(accuracy(params, fgsm(params, X_test, y_test, 0.05), y_test)),
        "fgsm 0.1": float(accuracy(params, fgsm(params, X_test, y_test, 0.1), y_test)),
        "|J|": float(jnp.sqrt(2 * jacobian_penalty(mlp, params, X_test, num_projections=None))),
    }


rows = {}
for lam in LAMBDAS:
    t = time.perf_counter()
    trained, _ = fit(weight_decayed_sgd(step_schedule(STEPS)), STEPS, lambda_jr=lam)
    rows[lam] = robustness(trained)
    print(f"lambda_JR = {lam:<5}: " + ", ".join(f"{k} {v:.3f}" for k, v in rows[lam].items())
          + f"  ({time.perf_counter() - t:.0f} s)")

# %% [markdown]
# The penalty shrinks the Jacobian norm (the RMS over test images of $\lVert J\rVert_F$) several
# times over for a small change of clean accuracy, and the accuracy under the one-step
# gradient-sign attack goes up at every $\lambda_{JR}$ (most at the larger step): this is the
# effect the method exists for. Under Gaussian input noise the gain is smaller and does not grow
# with $\lambda_{JR}$; at the largest value, where the penalty starts to cost clean accuracy, one
# seed and one noise draw of 450 images (a standard error of about 1.5 points) cannot resolve it:
# five seeds with five draws each measure +2.2 $\pm$ 0.2 points there (docs/training.md).

# %%
lams = np.array(LAMBDAS)
xpos = np.arange(len(lams))
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.8))
for name, marker in (("clean", "o"), ("noise 0.3", "s"), ("fgsm 0.05", "^"), ("fgsm 0.1", "v")):
    ax1.plot(xpos, [100 * rows[lam][name] for lam in LAMBDAS], marker=marker, label=name)
ax1.set_ylabel("test accuracy [%]")
ax2.plot(xpos, [rows[lam]["|J|"] for lam in LAMBDAS], "ko-")
ax2.set_ylabel(r"RMS $\|\partial\,\mathrm{logits}/\partial x\|_F$ (test)")
ax2.set_yscale("log")
for ax in (ax1, ax2):
    ax.set_xticks(xpos, [f"{lam:g}" for lam in LAMBDAS])
    ax.set_xlabel(r"$\lambda_{JR}$")
ax1.legend(fontsize="small")
fig.suptitle("Jacobian regularisation on digits (one seed; 5 seeds in benchmarks/train_digits.py)", fontsize="medium")
fig.tight_layout()
ngp.plot.show(fig, os.path.join(FIGDIR, "05_jacobian_regularisation.png"), dpi=110)

# %% [markdown]
# ## The FDR scheduler
#
# `fdr_sgd` is an optax `GradientTransformation` implementing the reference scheduler's SGD
# ($v \leftarrow \mu v + (1-d)(g + \lambda\theta)$ from $v = 0$, $\theta \leftarrow \theta - \eta v$;
# PyTorch's `torch.optim.SGD` when $d = 0$, as here). Every
# `window` steps it compares the averages of $O_L = \theta\cdot(g + \lambda\theta)$ and
# $O_R = \frac\eta2\frac{1+\mu}{1-d}\lvert v\rvert^2$ over the second half of all steps since
# the last cut. While the loss is still falling, $|\theta|^2$ changes and $O_L \ne O_R$; when the
# ratio is within `tolerance` of 1, the learning rate is multiplied by `1 - decay`. Its state
# carries the current `learning_rate`, the latest `ratio` and the cut history.

# %%
trace = {"step": [], "lr": [], "ratio": [], "acc": []}


def record_fdr(step, state, params):
    trace["step"].append(step)
    trace["lr"].append(float(state.learning_rate))
    trace["ratio"].append(float(state.ratio))
    trace["acc"].append(float(accuracy(params, X_test, y_test)))


t = time.perf_counter()
fdr_params, fdr_state = fit(fdr_sgd(0.05, momentum=0.9, weight_decay=3e-3, window=WINDOW), FDR_STEPS,
                            record=record_fdr)
cuts = np.asarray(fdr_state.decay_steps[: int(fdr_state.num_decays)])
print(f"FDR: learning-rate cuts at steps {cuts.tolist()}; test accuracy {accuracy(fdr_params, X_test, y_test):.3f} "
      f"({time.perf_counter() - t:.0f} s)")

step_trace = {"step": [], "acc": []}


def record_step(step, state, params):
    step_trace["step"].append(step)
    step_trace["acc"].append(float(accuracy(params, X_test, y_test)))


step_params, _ = fit(weight_decayed_sgd(step_schedule(FDR_STEPS)), FDR_STEPS, record=record_step)
print(f"hand-set step schedule (x0.1 at 1/2 and 3/4 of the run): test accuracy "
      f"{accuracy(step_params, X_test, y_test):.3f}")

# %%
steps = np.array(trace["step"])
fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(13, 3.6))
checks = steps % WINDOW == 0
ax1.plot(steps[checks], np.array(trace["ratio"])[checks], "o-")
ax1.axhspan(0.99, 1.01, color="C2", alpha=0.3, label="tolerance 1%")
ax1.set_yscale("log")
ax1.set_ylabel(r"$\langle O_L\rangle / \langle O_R\rangle$ at the checks")
ax1.legend(fontsize="small")
ax2.step(steps, trace["lr"], where="post", label="FDR scheduler")
ax2.step(steps, [float(step_schedule(FDR_STEPS)(s)) for s in steps], where="post", ls="--", label="step schedule")
ax2.set_yscale("log")
ax2.set_ylabel("learning rate")
ax2.legend(fontsize="small")
ax3.plot(steps, 100 * np.array(trace["acc"]), label="FDR scheduler")
ax3.plot(step_trace["step"], 100 * np.array(step_trace["acc"]), ls="--", label="step schedule")
ax3.set_ylim(90, 100)
ax3.set_ylabel("test accuracy [%]")
ax3.legend(fontsize="small")
for ax in (ax1, ax2, ax3):
    ax.set_xlabel("SGD step")
fig.tight_layout()
ngp.plot.show(fig, os.path.join(FIGDIR, "05_fdr_scheduler.png"), dpi=110)

# %% [markdown]
# The ratio starts far above 1 (the parameters are still moving downhill, and weight decay is
# still shrinking $|\theta|^2$), falls towards 1 as SGD equilibrates, and the learning rate is cut
# the first time it is within 1%; after a cut the averages restart. The weight decay sets how long
# equilibration takes (about $(1-\mu)/(\eta(1-d)\lambda)$ steps along the flat directions it alone confines),
# so with a very small $\lambda$ the scheduler waits a long time: see the training-tools page,
# docs/training.md, for the derivation and the benchmark numbers.

# %%
print(f"figures written to {FIGDIR}/ ({time.perf_counter() - T0:.0f} s in total)")
