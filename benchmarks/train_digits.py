"""Jacobian regularisation and the FDR scheduler on real data (issue: training-time tools).

Data: scikit-learn's bundled 8x8 digits (1797 images, pixels scaled to [0, 1]), a fixed stratified
split of 1347 training and 450 test images. Model: a 64-200-200-10 ReLU MLP (He initialisation),
cross-entropy, minibatch SGD with learning rate 0.05, momentum 0.9, batch 32, weight decay 3e-3
(large enough for SGD to equilibrate within the run: see docs/training.md), float32.

1. Jacobian regularisation: the same hand-tuned step schedule with ``lambda_JR`` in
   {0, 0.01, 0.05, 0.1} (``ngp.train.jacobian_regularized``, one random projection per example),
   5 seeds (initialisation and batch order). Measured on the test set: clean accuracy, accuracy
   under Gaussian input noise (sigma 0.3, 5 draws), under a one-step gradient-sign (FGSM)
   perturbation (epsilon 0.05 and 0.1, in pixel units of the [0, 1] scale), and the RMS Frobenius
   norm of the input-output Jacobian of the logits (exact, ``num_projections=None``).
2. FDR scheduler: ``ngp.train.fdr_sgd`` with the same initial learning rate, momentum and weight
   decay and its default window, tolerance and decay (1000 steps, 0.01, 0.9), against SGD with a
   hand-tuned step schedule (two 10x cuts; the milestones picked among a grid by validation
   accuracy on a held-out quarter of the training set, 2 seeds), the same number of steps; and,
   as a control for how much the schedule matters here, SGD at the constant initial rate.

Usage: python benchmarks/train_digits.py [--quick] [--seeds N]
Writes benchmarks/results/train_digits.json (``--quick``: train_digits_quick.json).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # the checkout's ngp, installed or not

from ngp.train import fdr_sgd, jacobian_penalty, jacobian_regularized  # noqa: E402

SIZES = (64, 200, 200, 10)
LR, MOMENTUM, WEIGHT_DECAY, BATCH = 0.05, 0.9, 3e-3, 32
NOISE_SIGMA, FGSM_EPS = 0.3, (0.05, 0.1)
MILESTONE_GRID = ((0.5, 0.75), (0.33, 0.67), (0.25, 0.5), (0.67, 0.9), (0.8, 0.95))


def load_split(seed=0, validation=False):
    """(X_train, y_train, X_test, y_test); with ``validation`` the test part is a quarter of the training set."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    X, y = load_digits(return_X_y=True)
    X = (X / 16.0).astype(np.float32)
    Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=450, stratify=y, random_state=seed)
    if validation:
        Xtr, Xte, ytr, yte = train_test_split(Xtr, ytr, test_size=0.25, stratify=ytr, random_state=seed + 1)
    return Xtr, ytr.astype(np.int32), Xte, yte.astype(np.int32)


def init_mlp(seed, sizes=SIZES):
    rng = np.random.default_rng(seed)
    return [
        (jnp.asarray(rng.normal(size=(m, n)) * np.sqrt(2.0 / m), jnp.float32), jnp.zeros(n, jnp.float32))
        for m, n in zip(sizes[:-1], sizes[1:])
    ]


def logits(params, x):
    for W, b in params[:-1]:
        x = jax.nn.relu(x @ W + b)
    W, b = params[-1]
    return x @ W + b


def xent(out, y):
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(out), y[:, None], axis=1))


def batch_indices(n, steps, batch, seed):
    """Minibatches of ``batch`` indices, a fresh permutation of the ``n`` examples every epoch."""
    rng = np.random.default_rng(seed)
    per_epoch = n // batch
    epochs = -(-steps // per_epoch)
    idx = np.concatenate([rng.permutation(n)[: per_epoch * batch].reshape(per_epoch, batch) for _ in range(epochs)])
    return jnp.asarray(idx[:steps], jnp.int32)


def step_schedule(steps, milestones):
    return optax.piecewise_constant_schedule(LR, {int(f * steps): 0.1 for f in milestones})


def sgd(schedule):
    """PyTorch-style SGD with weight decay (optax's sgd is PyTorch's with dampening 0)."""
    return optax.chain(optax.add_decayed_weights(WEIGHT_DECAY), optax.sgd(schedule, momentum=MOMENTUM))


def train(seed, data, steps, optimizer, *, lambda_jr=0.0):
    """Train from ``init_mlp(seed)``; returns the parameters and, for ``fdr_sgd``, per-step traces."""
    Xtr, ytr = jnp.asarray(data[0]), jnp.asarray(data[1])
    loss = jacobian_regularized(xent, logits, lambda_jr=lambda_jr) if lambda_jr else (lambda p, x, y, k: xent(logits(p, x), y))
    params = init_mlp(seed)
    idx = batch_indices(len(ytr), steps, BATCH, seed + 1000)
    key = jax.random.PRNGKey(seed)

    def step(carry, inp):
        params, state = carry
        t, i = inp
        grads = jax.grad(loss)(params, Xtr[i], ytr[i], jax.random.fold_in(key, t))
        updates, state = optimizer.update(grads, state, params)
        trace = (state.learning_rate, state.ratio) if hasattr(state, "ratio") else ()
        return (optax.apply_updates(params, updates), state), trace

    @jax.jit
    def run(params):
        return jax.lax.scan(step, (params, optimizer.init(params)), (jnp.arange(steps), idx))

    (params, state), trace = run(params)
    return params, state, jax.tree_util.tree_map(np.asarray, trace)


@jax.jit
def _accuracy(params, x, y):
    return jnp.mean(jnp.argmax(logits(params, x), axis=1) == y)


@jax.jit
def _fgsm(params, x, y, eps):
    g = jax.grad(lambda xx: xent(logits(params, xx), y) * len(y))(x)
    return x + eps * jnp.sign(g)


@jax.jit
def _jacobian_norm(params, x):
    """RMS over the inputs of ||d logits / dx||_F (exact: one VJP per output)."""
    return jnp.sqrt(2 * jacobian_penalty(logits, params, x, num_projections=None))


def evaluate(params, X, y, seed=0):
    X, y = jnp.asarray(X), jnp.asarray(y)
    rng = np.random.default_rng(seed)
    noise = [float(_accuracy(params, X + NOISE_SIGMA * jnp.asarray(rng.normal(size=X.shape), X.dtype), y))
             for _ in range(5)]
    out = {"clean": float(_accuracy(params, X, y)), "noise": float(np.mean(noise))}
    for eps in FGSM_EPS:
        out[f"fgsm_{eps:g}"] = float(_accuracy(params, _fgsm(params, X, y, eps), y))
    out["jacobian_norm"] = float(_jacobian_norm(params, X))
    return out


def mean_se(values):
    v = np.asarray(values, dtype=float)
    return float(v.mean()), float(v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else float("nan")


def tune_milestones(steps, seeds):
    val = load_split(validation=True)
    scores = {}
    for ms in MILESTONE_GRID:
        accs = [evaluate(train(s, val, steps, sgd(step_schedule(steps, ms)))[0], val[2], val[3])["clean"] for s in seeds]
        scores[ms] = float(np.mean(accs))
    best = max(scores, key=scores.get)
    return best, {f"{a:g},{b:g}": s for (a, b), s in scores.items()}


def git_commit():
    """The checkout's commit and whether ngp/ or this script had uncommitted changes."""
    try:
        def git(*args):
            return subprocess.run(["git", *args], cwd=HERE, capture_output=True, text=True, check=True).stdout.strip()

        dirty = bool(git("status", "--porcelain", "--", "../ngp", os.path.basename(__file__)))
        return {"commit": git("rev-parse", "--short", "HEAD"), "uncommitted_changes": dirty}
    except (OSError, subprocess.CalledProcessError):
        return {"commit": None, "uncommitted_changes": None}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="1 seed, 600 steps (CI-sized)")
    ap.add_argument("--seeds", type=int, default=None)
    args = ap.parse_args(argv)
    steps = 600 if args.quick else 12_000
    seeds = list(range(args.seeds if args.seeds else (1 if args.quick else 5)))
    lambdas = (0.1,) if args.quick else (0.01, 0.05, 0.1)
    window = 100 if args.quick else 1000
    t0 = time.perf_counter()
    data = load_split()
    print(f"digits: {len(data[1])} train / {len(data[3])} test; MLP {SIZES}; {steps} SGD steps of batch {BATCH}; "
          f"seeds {seeds}")

    milestones, tuning = ((0.5, 0.75), {}) if args.quick else tune_milestones(steps, seeds[:2])
    print(f"hand-tuned step schedule: x0.1 at {milestones} of the run (validation accuracy {tuning})")

    runs = {"step": [], "fdr": [], "constant": [], **{f"jr_{lam:g}": [] for lam in lambdas}}
    fdr_decays = []
    for s in seeds:
        runs["step"].append(evaluate(train(s, data, steps, sgd(step_schedule(steps, milestones)))[0], *data[2:]))
        for lam in lambdas:
            p = train(s, data, steps, sgd(step_schedule(steps, milestones)), lambda_jr=lam)[0]
            runs[f"jr_{lam:g}"].append(evaluate(p, *data[2:]))
        p, state, (lr_trace, ratio_trace) = train(
            s, data, steps, fdr_sgd(LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY, window=window))
        runs["fdr"].append(evaluate(p, *data[2:]))
        # control: no decay at all (how much does the schedule matter on this problem?)
        runs["constant"].append(evaluate(train(s, data, steps, sgd(LR))[0], *data[2:]))
        k = int(state.num_decays)
        fdr_decays.append({"steps": state.decay_steps[:k].tolist(), "ratios": state.decay_ratios[:k].tolist(),
                           "ratio_at_checks": ratio_trace[window - 1::window].tolist()})
        print(f"  seed {s}: done ({time.perf_counter() - t0:.0f} s); FDR cuts at steps {fdr_decays[-1]['steps']}")

    metrics = ["clean", "noise", *[f"fgsm_{e:g}" for e in FGSM_EPS], "jacobian_norm"]
    summary = {name: {m: mean_se([r[m] for r in rs]) for m in metrics} for name, rs in runs.items()}
    base = runs["step"]
    paired = {
        name: {m: mean_se([r[m] - b[m] for r, b in zip(rs, base)]) for m in metrics}
        for name, rs in runs.items() if name != "step"
    }
    header = f"{'run':<12}" + "".join(f"{m:>18}" for m in metrics)
    print(f"\ntest set, mean +- s.e. over {len(seeds)} seeds (accuracies in %)\n{header}")
    for name, row in summary.items():
        cells = [f"{100 * v:8.2f} +- {100 * e:5.2f}" if m != "jacobian_norm" else f"{v:9.3f} +- {e:5.3f}"
                 for m, (v, e) in row.items()]
        print(f"{name:<12}" + "".join(f"{c:>18}" for c in cells))
    print("\npaired differences against the step schedule without regulariser (points; Jacobian norm ratio)")
    goals = {}
    for name, row in paired.items():
        d_clean = 100 * row["clean"][0]
        jac_ratio = summary[name]["jacobian_norm"][0] / summary["step"]["jacobian_norm"][0]
        print(f"{name:<12} clean {d_clean:+.2f}  noise {100 * row['noise'][0]:+.2f}  "
              + "  ".join(f"fgsm{e:g} {100 * row[f'fgsm_{e:g}'][0]:+.2f}" for e in FGSM_EPS)
              + f"  |J| x{jac_ratio:.2f}")
        if name.startswith("jr_"):
            goals[name] = {
                "clean_within_1_point": abs(d_clean) <= 1.0,
                "jacobian_norm_lower": jac_ratio < 1.0,
                "noise_accuracy_higher": row["noise"][0] > 0,
                **{f"fgsm_{e:g}_accuracy_higher": row[f"fgsm_{e:g}"][0] > 0 for e in FGSM_EPS},
            }
    goals["fdr"] = {"clean_within_1_point_of_step_schedule": abs(100 * paired["fdr"]["clean"][0]) <= 1.0,
                    "fired_in_every_seed": all(len(d["steps"]) > 0 for d in fdr_decays)}
    print("\ngoals:", json.dumps(goals, indent=1))
    out = {
        "machine": platform.platform(), "cpus": os.cpu_count(), "backend": jax.default_backend(),
        "jax": jax.__version__, "optax": optax.__version__, **git_commit(),
        "load_average": os.getloadavg(), "seconds": time.perf_counter() - t0,
        "config": {"sizes": SIZES, "steps": steps, "batch": BATCH, "lr": LR, "momentum": MOMENTUM,
                   "weight_decay": WEIGHT_DECAY, "noise_sigma": NOISE_SIGMA, "fgsm_eps": FGSM_EPS,
                   "seeds": seeds, "lambdas": lambdas, "fdr_window": window, "fdr_tolerance": 0.01,
                   "fdr_decay": 0.9, "milestones": milestones, "milestone_validation_accuracy": tuning},
        "summary": summary, "paired_vs_step": paired, "fdr_decays": fdr_decays, "goals": goals,
        "runs": runs,
    }
    os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
    name = "train_digits_quick.json" if args.quick else "train_digits.json"
    with open(os.path.join(HERE, "results", name), "w") as fh:
        json.dump(out, fh, indent=1)
    print(f"written benchmarks/results/{name} ({time.perf_counter() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
