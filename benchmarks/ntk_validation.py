"""Validation of the NTK theory (ngp._ntk, ngp._training_theory) against actual random networks.

Sections (``--only`` picks some; ``--quick`` shrinks every sweep):

* ``stats``: each 1/n statistic (Theta1, A, B, D, F; and K1, V) against Rao-Blackwellised Monte
  Carlo of actual networks at widths 16..128; residual ``max|MC - theory|`` and its 1/n slope.
* ``theta``: the infinite-width NTK against the mean empirical NTK (reverse-mode Jacobians of
  actual networks): residual ~ 1/n, and ~ 1/n^2 after adding Theta1/n.
* ``dntk``: the dNTK-preactivation correlators P, Q against Hessian-vector products of actual
  networks with two outputs.
* ``trained``: ensembles trained by full-batch gradient descent (float64) to convergence:
  last-layer training (the first-order theory is complete), the linearised network (complete),
  and full training (the dNTK-squared and ddNTK terms are not in the theory: measured gap).
* ``remainder``: last-layer training (where the first-order theory is complete) with 0.4-3.2 million
  networks per width: what the correction leaves against width (fitted slope; O(1/n^2) expected).

Writes benchmarks/results/ntk_validation[_quick].json. Needs only the checkout (puts it on sys.path).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time

import jax

jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import ngp  # noqa: E402
from ngp import _ntk, _training_theory as tt  # noqa: E402
from tests import _ntk_mc as mc  # noqa: E402

X3 = np.array([[1.0, 0.3, -0.5], [0.2, -1.0, 0.4], [-0.7, 0.5, 0.9]])


def per(depth, **kw):
    return {k: tuple(v) if np.ndim(v) else (v,) * depth for k, v in kw.items()}


def slope(ns, r, se=None, resolved=3.0):
    """Least-squares slope of log r vs log n over the points with r > resolved * se."""
    ns, r = np.asarray(ns, float), np.asarray(r, float)
    ok = r > 0 if se is None else r > resolved * np.asarray(se, float)
    if ok.sum() < 2:
        return None, int(ok.sum())
    return float(np.polyfit(np.log(ns[ok]), np.log(r[ok]), 1)[0]), int(ok.sum())


def log(*a):
    print(*a, flush=True)


# ----------------------------------------------------------------------------- stats
def section_stats(quick):
    out = {}
    configs = {
        "tanh_L3_N3": dict(act="tanh", X=X3, hp=dict(C_W=1.5, C_b=0.1, lam_W=1.0, lam_b=0.5)),
        "relu_L3_N2": dict(act="relu", X=X3[:2], hp=dict(C_W=2.0, C_b=0.1, lam_W=1.0, lam_b=0.5)),
    }
    widths = [16, 32, 64] if quick else [16, 32, 64, 128]
    # tanh's residuals are small (1e-2 of the theory at n = 16): 4x the networks at n = 64 and 128 resolve them
    base = {"tanh_L3_N3": {16: 40000, 32: 40000, 64: 80000, 128: 48000},
            "relu_L3_N2": {16: 40000, 32: 40000, 64: 20000, 128: 12000}}
    for cname, cfg in configs.items():
        samples = {k: v // 10 if quick else v for k, v in base[cname].items()}
        act = ngp.activation(cfg["act"])
        X = cfg["X"]
        N = X.shape[0]
        rows, full = [], []  # full: per width, {statistic: (MC - theory, se)} over every entry
        for n in widths:
            t0 = time.perf_counter()
            st = _ntk.flow(X, act, depth=3, widths=[n, n], **cfg["hp"])[-1]
            smp = mc.sample_stats(act, X, widths=[n, n], samples=samples[n], seed=10 + n, batch=500,
                                  **per(3, **cfg["hp"]))
            e = mc.estimates(smp, n, N)
            row = {"n": n, "samples": samples[n], "seconds": time.perf_counter() - t0}
            pairs = {
                "Theta1": (n * (e["T_mean"] - st.Theta), n * e["T_mean_se"], st.Theta1),
                "K1": (n * (e["G_mean"] - st.K), n * e["G_mean_se"], st.K1),
            }
            for k in ("V", "A", "B", "D", "F"):
                pairs[k] = (e[k], e[k + "_se"], getattr(st, k))
            full.append({k: (np.asarray(m - th), np.asarray(se)) for k, (m, se, th) in pairs.items()})
            for k, (m, se, th) in pairs.items():
                d = np.abs(m - th)
                i = np.unravel_index(np.argmax(d), d.shape)
                row[k] = {"resid": float(d[i]), "se": float(se[i]), "max_theory": float(np.abs(th).max()),
                          "max_z": float(np.max(d / np.maximum(se, 1e-300)))}
            rows.append(row)
            log(cname, n, {k: round(v["resid"] / max(v["max_theory"], 1e-12), 4) for k, v in row.items()
                           if isinstance(v, dict)})
        fits = {}
        for k in ("Theta1", "K1", "V", "A", "B", "D", "F"):
            r = [row[k]["resid"] for row in rows]
            se = [row[k]["se"] for row in rows]
            s, used = slope(widths, r, se)
            # the largest residual over the entries picks different entries at different widths and is
            # biased up by noise where it is small; follow one entry instead: the most significant at the
            # smallest width
            d0, se0 = full[0][k]
            i = np.unravel_index(np.argmax(np.abs(d0) / np.maximum(se0, 1e-300)), d0.shape)
            er = [abs(float(f[k][0][i])) for f in full]
            es = [float(f[k][1][i]) for f in full]
            se_, used_ = slope(widths, er, es)
            fits[k] = {"slope": s, "points_used": used, "n_times_resid_over_max": [
                row["n"] * row[k]["resid"] / max(row[k]["max_theory"], 1e-12) for row in rows],
                "entry": [int(j) for j in i], "entry_resid": er, "entry_se": es, "entry_slope": se_,
                "entry_points_used": used_}
            log(f"  {cname} {k}: slope {s} ({used} resolved points); entry {i}: slope {se_} ({used_} resolved)")
        out[cname] = {"rows": rows, "fits": fits}
    return out


# ----------------------------------------------------------------------------- theta
def section_theta(quick):
    """Critical tanh, depth 4 (the largest Theta1 / Theta among the configurations tried)."""
    act = ngp.activation("tanh")
    X = X3
    hp = dict(C_W=1.0, C_b=0.0, lam_W=1.0, lam_b=0.0)
    depth = 4
    p4 = per(depth, **hp)
    widths = [16, 64] if quick else [16, 32, 64, 128]
    rows = []
    for n in widths:
        S = (400 if quick else 8000) if n <= 32 else (200 if quick else 4000)
        t0 = time.perf_counter()
        dims = (3,) + (n,) * (depth - 1) + (1,)
        f = jax.jit(jax.vmap(lambda k: mc.empirical_ntk(act.fn, mc.init_params(k, dims, p4["C_W"], p4["C_b"]),
                                                        jnp.asarray(X), p4["lam_W"], p4["lam_b"])[0, 0]))
        keys = jax.random.split(jax.random.PRNGKey(n), S)
        Hs = np.concatenate([np.asarray(f(keys[s:s + 200])) for s in range(0, S, 200)])
        st = _ntk.flow(X, act, depth=depth, widths=[n] * (depth - 1), **hp)[-1]
        m, se = mc.mean_se(Hs)
        d0, d1 = np.abs(m - st.Theta), np.abs(m - st.Theta - st.Theta1 / n)
        rows.append({"n": n, "samples": S, "max_resid_vs_Theta": float(d0.max()),
                     "max_resid_vs_Theta_plus_Theta1_over_n": float(d1.max()), "max_se": float(se.max()),
                     "max_z_vs_Theta": float(np.max(d0 / se)),
                     "max_z_vs_Theta_plus_Theta1_over_n": float(np.max(d1 / se)),
                     "max_Theta1_over_n": float(np.abs(st.Theta1).max() / n), "seconds": time.perf_counter() - t0})
        log("theta (Jacobians)", rows[-1])
    # Rao-Blackwellised E[H] (output layer integrated out) at larger samples: 1/n slope of E[H] - Theta
    rb = []
    for n in ([16, 32] if quick else [16, 32, 64, 128]):
        S = {16: 200000, 32: 100000, 64: 50000, 128: 20000}[n] // (20 if quick else 1)
        smp = mc.sample_stats(act, X, widths=[n] * (depth - 1), samples=S, seed=77 + n, batch=1000, **p4)
        st = _ntk.flow(X, act, depth=depth, widths=[n] * (depth - 1), **hp)[-1]
        m, se = mc.mean_se(smp["T"])
        d0, d1 = np.abs(m - st.Theta), np.abs(m - st.Theta - st.Theta1 / n)
        i0 = np.unravel_index(np.argmax(d0), d0.shape)
        rb.append({"n": n, "samples": S, "resid_vs_Theta": float(d0[i0]), "se": float(se[i0]),
                   "resid_vs_corrected": float(d1.max()), "max_z_vs_corrected": float(np.max(d1 / se)),
                   "n_times_resid_vs_Theta": float(n * d0[i0]), "max_Theta1": float(np.abs(st.Theta1).max())})
        log("theta RB", rb[-1])
    s0 = slope([r["n"] for r in rb], [r["resid_vs_Theta"] for r in rb], [r["se"] for r in rb])
    return {"config": {"activation": "tanh", "depth": depth, **hp}, "jacobian_rows": rows, "rao_blackwell_rows": rb,
            "slope_vs_Theta": s0}


# ----------------------------------------------------------------------------- dntk
def section_dntk(quick):
    act = ngp.activation("tanh")
    X = X3[:2]
    hp = dict(C_W=1.5, C_b=0.1, lam_W=1.0, lam_b=0.5)
    out = {}
    for depth in (2, 3):
        rows = []
        for n in ([8, 16] if quick else [8, 16, 32, 64]):
            S = {8: 40000, 16: 40000, 32: 20000, 64: 10000}[n] // (10 if quick else 1)
            p = per(depth, **hp)
            dims = (3,) + (n,) * (depth - 1) + (2,)

            def one(k):
                prm = mc.init_params(k, dims, p["C_W"], p["C_b"])
                dH, z = mc.dntk_times_z(act.fn, prm, jnp.asarray(X), p["lam_W"], p["lam_b"])
                P = 0.5 * (jnp.einsum("abc,d->abcd", dH[0, 1, 1], z[0]) + jnp.einsum("abc,d->abcd", dH[1, 0, 0], z[1]))
                Q = 0.5 * (jnp.einsum("abc,d->abcd", dH[0, 0, 1], z[1]) + jnp.einsum("abc,d->abcd", dH[1, 1, 0], z[0]))
                return P, Q

            f = jax.jit(jax.vmap(one))
            keys = jax.random.split(jax.random.PRNGKey(100 + n), S)
            t0 = time.perf_counter()
            Ps, Qs = zip(*[f(keys[s:s + 500]) for s in range(0, S, 500)])
            st = _ntk.flow(X, act, depth=depth, widths=[n] * (depth - 1), dntk=True, **hp)[-1]
            row = {"n": n, "samples": S}
            for name, arr in (("P", n * np.concatenate(Ps)), ("Q", n * np.concatenate(Qs))):
                m, se = mc.mean_se(arr)
                th = getattr(st, name)
                d = np.abs(m - th)
                i = np.unravel_index(np.argmax(d), d.shape)
                row[name] = {"resid": float(d[i]), "se": float(se[i]), "max_theory": float(np.abs(th).max()),
                             "max_z": float(np.max(d / se))}
            row["seconds"] = time.perf_counter() - t0
            rows.append(row)
            log("dntk depth", depth, row)
        fits = {k: slope([r["n"] for r in rows], [r[k]["resid"] for r in rows], [r[k]["se"] for r in rows])
                for k in ("P", "Q")}
        out[f"depth{depth}"] = {"rows": rows, "fits": fits}
    return out


# ----------------------------------------------------------------------------- trained
def _training_setup():
    X = np.array([[1.0, 0.3, -0.5], [0.2, -1.0, 0.4], [-0.7, 0.5, 0.9], [0.5, 0.5, 0.5], [-0.3, -0.8, 0.1]])
    X = X * math.sqrt(3) / np.linalg.norm(X, axis=1, keepdims=True)
    return X, np.array([0, 1, 2]), np.array([3, 4]), 1.2 * np.array([1.0, -0.7, 0.5])


def _last_layer_rows(widths, samples):
    """Last-layer training of a one-hidden-layer tanh network (features frozen): ensemble mean of the
    trained outputs at t -> infinity from ``samples[n]`` networks per width against the infinite-width
    mean and the first-order theory. E[H] = Theta exactly, so H - Theta is a zero-mean control variate."""
    act = ngp.activation("tanh")
    X, train, test, y = _training_setup()
    Xj, yj = jnp.asarray(X), jnp.asarray(y)
    hp = dict(C_W=(1.0, 1.0), C_b=(0.0, 0.0), lam_W=(0.0, 1.0), lam_b=(0.0, 0.3))
    rows = []
    for n in widths:
        S = samples[n]
        t0 = time.perf_counter()
        st = _ntk.flow(X, act, depth=2, widths=[n], **hp)[-1]
        m_inf, _ = tt.infinite_width(st.Theta, st.K, train, y)
        _, parts = tt.finite_width_mean(st.Theta, train, y, n=n, Theta1=st.Theta1, A=st.A, B=st.B)
        Th = st.Theta
        ThAA_inv = np.linalg.inv(Th[np.ix_(train, train)])
        Pm = Th[:, train] @ ThAA_inv
        u = ThAA_inv @ y

        def pred(k):
            W = jax.random.normal(k, (n, 3)) * math.sqrt(1.0 / 3)
            s = act.fn(W @ Xj.T)  # (n, N)
            H = 0.3 + (s.T @ s) / n
            zb = H[:, train] @ jnp.linalg.solve(H[np.ix_(train, train)], yj)
            lin = (H - Th)[:, train] @ u - Pm @ ((H - Th)[np.ix_(train, train)] @ u)  # zero-mean control variate
            return zb - lin

        f = jax.jit(jax.vmap(pred))
        keys = jax.random.split(jax.random.PRNGKey(3 + n), S)
        vals = np.concatenate([np.asarray(f(keys[s:s + 20000])) for s in range(0, S, 20000)])
        m, se = mc.mean_se(vals)
        corr = m_inf + (parts["theta1"] + parts["variance"]) / n
        rows.append({"n": n, "samples": S, "err_infinite": float(np.abs(m - m_inf)[test].max()),
                     "err_corrected": float(np.abs(m - corr)[test].max()), "se": float(se[test].max()),
                     "n_err_infinite": (n * (m - m_inf)[test]).tolist(),
                     "theory_n_correction": (parts["theta1"] + parts["variance"])[test].tolist(),
                     "seconds": time.perf_counter() - t0})
        log("last-layer", rows[-1])
    return rows


def section_remainder(quick):
    """What the first-order correction leaves where it is complete (last-layer training): the remainder
    after the correction against width, with enough networks to resolve it at n = 16-64 (it is
    O(1/n^2): about 3e-4 at n = 32); fitted slope over the resolved widths."""
    widths = [16, 32, 64, 128]
    samples = {16: 400000, 32: 800000, 64: 1600000, 128: 3200000}
    if quick:
        samples = {k: v // 10 for k, v in samples.items()}
    rows = _last_layer_rows(widths, samples)
    out = {"rows": rows,
           "slope_err_infinite": slope(widths, [r["err_infinite"] for r in rows], [r["se"] for r in rows]),
           "slope_err_corrected": slope(widths, [r["err_corrected"] for r in rows], [r["se"] for r in rows]),
           "fraction_removed": [1 - r["err_corrected"] / r["err_infinite"] for r in rows]}
    log("remainder fits", out["slope_err_infinite"], out["slope_err_corrected"], out["fraction_removed"])
    return out


def section_trained(quick):
    act = ngp.activation("tanh")
    X, train, test, y = _training_setup()
    Xj, yj = jnp.asarray(X), jnp.asarray(y)
    out = {}

    # (1) last layer trained, one hidden layer: the first-order theory (variance term) is complete.
    widths = [32, 64, 128] if quick else [32, 64, 128, 256]
    rows = _last_layer_rows(widths, {n: (400000 if not quick else 40000) // max(1, n // 32) for n in widths})
    # a few networks trained by actual gradient descent converge to the closed form used above
    n = 64
    p = mc.init_params(jax.random.PRNGKey(0), (3, n, 1), (1.0, 1.0), (0.0, 0.3))
    ztr, loss = mc.train_gd(act.fn, p, Xj, train, yj[None], (0.0, 1.0), (0.0, 0.3), eta=0.3, steps=3000)
    W1 = p[0][0]
    s = act.fn(W1 @ Xj.T)
    H = 0.3 + (s.T @ s) / n
    z0 = mc.forward(act.fn, p, Xj)[0]
    closed = z0 + H[:, train] @ jnp.linalg.solve(H[np.ix_(train, train)], yj - z0[train])
    out["last_layer"] = {
        "rows": rows,
        "slope_err_infinite": slope(widths, [r["err_infinite"] for r in rows], [r["se"] for r in rows]),
        "slope_err_corrected": slope(widths, [r["err_corrected"] for r in rows], [r["se"] for r in rows]),
        "gd_vs_closed_form_max_diff": float(jnp.max(jnp.abs(ztr[0] - closed))), "gd_final_loss": float(loss),
    }
    log("last-layer fits", out["last_layer"]["slope_err_infinite"], out["last_layer"]["slope_err_corrected"],
        "GD vs closed form", out["last_layer"]["gd_vs_closed_form_max_diff"])

    # (2) all layers trained: linearised network (complete) and actual network (not complete)
    hp3 = dict(C_W=1.0, C_b=0.0, lam_W=1.0, lam_b=0.0)
    p3 = per(3, **hp3)
    rows = []
    for n in ([32, 64] if quick else [32, 64, 128]):
        st = _ntk.flow(X, act, depth=3, widths=[n, n], dntk=True, **hp3)[-1]
        m_inf, _ = tt.infinite_width(st.Theta, st.K, train, y)
        _, parts = tt.finite_width_mean(st.Theta, train, y, n=n, Theta1=st.Theta1, A=st.A, B=st.B, P=st.P, Q=st.Q)
        dims = (3, n, n, 1)

        def lin_of(prm):
            H = mc.empirical_ntk(act.fn, prm, Xj, p3["lam_W"], p3["lam_b"])[0, 0]
            return H[:, train] @ jnp.linalg.solve(H[np.ix_(train, train)], yj)

        fl = jax.jit(jax.vmap(lambda k: lin_of(mc.init_params(k, dims, p3["C_W"], p3["C_b"]))))
        S_lin = 4000 if quick else 16000
        keys = jax.random.split(jax.random.PRNGKey(50 + n), S_lin)
        lin_vals = np.concatenate([np.asarray(fl(keys[s:s + 1000])) for s in range(0, S_lin, 1000)])
        m_lin, se_lin = mc.mean_se(lin_vals)
        HAA = st.Theta[np.ix_(train, train)]
        hmax, hmin = np.linalg.eigvalsh(HAA)[[-1, 0]]
        eta = 0.5 / hmax
        steps = int(math.log(1e-10) / math.log(1 - eta * hmin))

        def trained_minus_lin(k):
            prm = mc.init_params(k, dims, p3["C_W"], p3["C_b"])
            zp, lp = mc.train_gd(act.fn, prm, Xj, train, yj[None], p3["lam_W"], p3["lam_b"], eta=eta, steps=steps)
            zm, lm = mc.train_gd(act.fn, mc.flip_output(prm), Xj, train, yj[None], p3["lam_W"], p3["lam_b"],
                                 eta=eta, steps=steps)
            return 0.5 * (zp + zm)[0] - lin_of(prm), jnp.maximum(lp, lm)

        ft = jax.jit(jax.vmap(trained_minus_lin))
        S_tr = 128 if quick else 512
        keys = jax.random.split(jax.random.PRNGKey(90 + n), S_tr)
        res = [ft(keys[s:s + 64]) for s in range(0, S_tr, 64)]
        dvals = np.concatenate([np.asarray(r[0]) for r in res])
        max_loss = float(max(float(jnp.max(r[1])) for r in res))
        m_d, se_d = mc.mean_se(dvals)
        row = {
            "n": n, "samples_linearised": S_lin, "samples_trained_pairs": S_tr, "gd_steps": steps, "eta": eta,
            "max_final_loss": max_loss,
            "n_err_infinite_linearised": (n * (m_lin - m_inf)[test]).tolist(),
            "n_se_linearised": (n * se_lin[test]).tolist(),
            "theory_n_linearised": (parts["theta1"] + parts["variance"])[test].tolist(),
            "n_trained_minus_linearised": (n * m_d[test]).tolist(), "n_se_trained_minus_linearised": (n * se_d[test]).tolist(),
            "theory_n_dntk_first_order": parts["dntk"][test].tolist(),
        }
        m_tr = m_lin + m_d
        row["n_err_infinite_trained"] = (n * (m_tr - m_inf)[test]).tolist()
        row["n_err_trained_vs_included_terms"] = (n * (m_tr - m_inf)[test] - sum(parts[k][test] for k in parts)).tolist()
        rows.append(row)
        log("full training", row)
    out["all_layers"] = {"rows": rows}
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--only", nargs="*", default=["stats", "theta", "dntk", "trained", "remainder"])
    args = ap.parse_args()
    results = {"machine": platform.platform(), "python": sys.version.split()[0], "jax": jax.__version__,
               "load_average": os.getloadavg(), "quick": args.quick}
    path = os.path.join(ROOT, "benchmarks", "results", f"ntk_validation{'_quick' if args.quick else ''}.json")
    if os.path.exists(path):
        with open(path) as fh:
            old = json.load(fh)
        results = {**old, **results}
    for name in args.only:
        t0 = time.perf_counter()
        results[name] = {"result": globals()[f"section_{name}"](args.quick)}
        results[name]["seconds"] = time.perf_counter() - t0
        with open(path, "w") as fh:
            json.dump(results, fh, indent=1, default=float)
    log("wrote", path)


if __name__ == "__main__":
    main()
