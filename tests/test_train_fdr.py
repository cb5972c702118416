"""ngp.train FDR observables and scheduler on a quadratic loss with Gaussian gradient noise.

For f = theta^T H theta / 2 with gradient noise xi ~ N(0, S), SGD with momentum mu, dampening d and
weight decay lam (the reference scheduler's SGD, buffer from 0) is the linear recursion z' = M z + N xi of
z = (theta, v), whose stationary law is Gaussian with the covariance P solving P = M P M^T + N S N^T (a
discrete Lyapunov equation, solved by scipy: independent of the FDR identity).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg

from ngp.train import fdr_monitor, fdr_observables, fdr_sgd

optax = pytest.importorskip("optax")


def linear_sgd(H, eta, mu, d, lam):
    n = H.shape[0]
    A, I = H + lam * np.eye(n), np.eye(n)
    M = np.block([[I - eta * (1 - d) * A, -eta * mu * I], [(1 - d) * A, mu * I]])
    N = np.vstack([-eta * (1 - d) * I, (1 - d) * I])
    return M, N


def stationary_covariance(H, S, eta, mu, d, lam):
    M, N = linear_sgd(H, eta, mu, d, lam)
    return scipy.linalg.solve_discrete_lyapunov(M, N @ S @ N.T)


@pytest.mark.parametrize("mu,d", [(0.0, 0.0), (0.9, 0.0), (0.9, 0.5), (0.5, 0.3)])
def test_fdr_holds_exactly_in_the_closed_form_stationary_law(mu, d):
    """E[O_L] = E[O_R] under the Lyapunov stationary law, with O_L, O_R from fdr_observables.

    Both are quadratic forms q(z) of z = (theta, v) plus a term linear in the independent noise, so
    E[q] = sum_i q(L e_i) over the columns of a Cholesky factor L of P.
    """
    n, eta, lam = 6, 0.1, 0.05
    rng = np.random.default_rng(1)
    G = rng.normal(size=(n, n))
    H = G @ G.T / n + 0.1 * np.eye(n)
    R = rng.normal(size=(n, n))
    S = R @ R.T / n
    P = stationary_covariance(H, S, eta, mu, d, lam)
    L = np.linalg.cholesky(P)
    kw = dict(learning_rate=eta, momentum=mu, dampening=d, weight_decay=lam)
    obs = np.array([fdr_observables(c[:n], H @ c[:n], c[n:], **kw) for c in L.T])
    e_ol, e_or = obs.sum(axis=0)
    assert abs(e_ol / e_or - 1) < 1e-10, (e_ol, e_or)
    # the observables are not trivially equal: off by (1 + mu) or (1 - d) the relation fails
    assert abs(e_ol / (e_or / (1 + mu)) - 1) > 0.3 or mu == 0
    assert abs(e_ol / (e_or * (1 - d)) - 1) > 0.2 or d == 0


# A diagonal quadratic with S proportional to H (as for SGD noise near a minimum): the process
# decouples into 2 x 2 blocks, so exact moments are cheap; O_L and O_R are rotation invariant.
N_DIM, ETA, MU, DAMP, LAM = 100, 0.01, 0.9, 0.1, 1e-3


def quadratic():
    """Diagonal Hessian (N_DIM,) and gradient-noise variances (N_DIM,) of the test quadratic (fresh arrays)."""
    h = np.geomspace(0.01, 1.0, N_DIM)
    return h, h + 0.01


def simulate(theta0, v0, steps, *, window, tolerance, seed):
    opt = fdr_sgd(ETA, momentum=MU, dampening=DAMP, weight_decay=LAM, window=window, tolerance=tolerance)
    state = opt.init(jnp.asarray(theta0))
    state = state._replace(monitor=state.monitor._replace(velocity=jnp.asarray(v0)))
    H_DIAG, S_DIAG = quadratic()
    h, s = jnp.asarray(H_DIAG), jnp.sqrt(jnp.asarray(S_DIAG))
    noise = jax.random.normal(jax.random.PRNGKey(seed), (steps * N_DIM,)).reshape(steps, N_DIM)

    def step(carry, xi):
        theta, state = carry
        updates, state = opt.update(h * theta + s * xi, state, theta)
        return (theta + updates, state), (state.monitor.last_ol, state.monitor.last_or)

    (_, state), (o_l, o_r) = jax.jit(lambda c, x: jax.lax.scan(step, c, x))((jnp.asarray(theta0), state), noise)
    return state, np.asarray(o_l), np.asarray(o_r)


def stationary_draw(rng):
    H_DIAG, S_DIAG = quadratic()
    P = stationary_covariance(np.diag(H_DIAG), np.diag(S_DIAG), ETA, MU, DAMP, LAM)
    z = np.linalg.cholesky(P) @ rng.normal(size=2 * N_DIM)
    return z[:N_DIM], z[N_DIM:]


def test_on_the_fly_ratio_converges_to_one_and_the_scheduler_fires():
    theta0, v0 = stationary_draw(np.random.default_rng(2))
    steps = 20_000
    # a window longer than the run: no check, just the observables at a constant learning rate
    state, o_l, o_r = simulate(theta0, v0, steps, window=steps + 1, tolerance=0.02, seed=3)
    assert int(state.num_decays) == 0
    ratio = o_l.mean() / o_r.mean()
    batches = ((o_l - ratio * o_r) / o_r.mean()).reshape(20, -1).mean(axis=1)  # delta method, batch means
    se = batches.std(ddof=1) / np.sqrt(len(batches))
    assert se < 0.01
    assert abs(ratio - 1) < 4 * se, (ratio, se)
    # checked every 1000 steps, the half-running ratio is soon within 2% of 1: it fires
    state, _, _ = simulate(theta0, v0, 10_000, window=1000, tolerance=0.02, seed=4)
    k = int(state.num_decays)
    assert k >= 1
    first = int(state.decay_steps[0])
    assert first % 1000 == 0 and 0 < first <= 10_000
    assert abs(float(state.decay_ratios[0]) - 1) < 0.02
    np.testing.assert_allclose(float(state.learning_rate), ETA * 0.1**k, rtol=1e-12)


def expected_check_ratios(theta0, steps, window):
    """<E O_L>/<E O_R> at each check t = k window over steps floor(t/2)+1..t (the scheduler's
    half-running averages before its first cut), from the exact second-moment recursion.

    Per mode, E[z z^T] of z = (theta, v) evolves as C <- M C M^T + N S N^T with the 2 x 2 blocks
    M = [[1 - eta (1-d) a, -eta mu], [(1-d) a, mu]], N = (-eta (1-d), 1-d), from C = diag(theta0^2, 0).
    """
    H_DIAG, S_DIAG = quadratic()
    a = H_DIAG + LAM
    m00, m01, m10, m11 = 1 - ETA * (1 - DAMP) * a, -ETA * MU, (1 - DAMP) * a, MU
    n0, n1 = -ETA * (1 - DAMP), 1 - DAMP
    c00, c01, c11 = theta0**2, np.zeros(N_DIM), np.zeros(N_DIM)
    c_r = 0.5 * ETA * (1 + MU) / (1 - DAMP)
    e_ol, e_or = np.empty(steps), np.empty(steps)
    for t in range(steps):
        e_ol[t], e_or[t] = np.sum(a * c00), c_r * np.sum(c11)
        c00, c01, c11 = (
            m00 * m00 * c00 + 2 * m00 * m01 * c01 + m01 * m01 * c11 + n0 * n0 * S_DIAG,
            m00 * m10 * c00 + (m00 * m11 + m01 * m10) * c01 + m01 * m11 * c11 + n0 * n1 * S_DIAG,
            m10 * m10 * c00 + 2 * m10 * m11 * c01 + m11 * m11 * c11 + n1 * n1 * S_DIAG,
        )
    checks = range(window, steps + 1, window)
    return np.array([e_ol[t // 2:t].sum() / e_or[t // 2:t].sum() for t in checks])


def test_does_not_fire_early_from_a_non_stationary_start():
    rng = np.random.default_rng(5)
    H_DIAG, S_DIAG = quadratic()
    P = stationary_covariance(np.diag(H_DIAG), np.diag(S_DIAG), ETA, MU, DAMP, LAM)
    theta0 = 100 * np.sqrt(np.diag(P)[:N_DIM]) * rng.choice([-1.0, 1.0], N_DIM)  # far from the minimum
    window, tolerance, steps = 500, 0.02, 12_000
    expected = expected_check_ratios(theta0, steps // 2, window)
    far = np.flatnonzero(np.abs(expected - 1) > 5 * tolerance)
    assert far[0] == 0 and len(far) >= 4 and np.all(np.diff(far) == 1)  # a transient of several windows
    state, _, _ = simulate(theta0, np.zeros(N_DIM), steps, window=window, tolerance=tolerance, seed=6)
    assert int(state.num_decays) >= 1  # it does fire once the transient is over
    assert int(state.decay_steps[0]) > (far[-1] + 1) * window, (int(state.decay_steps[0]), expected[: len(far) + 2])


def test_update_rule_is_the_reference_sgd_and_monitor_matches():
    rng = np.random.default_rng(7)
    params = {"w": jnp.asarray(rng.normal(size=(3, 2))), "b": jnp.asarray(rng.normal(size=2))}
    grads_seq = [jax.tree_util.tree_map(lambda p: jnp.asarray(rng.normal(size=p.shape)), params) for _ in range(5)]
    eta, mu, d, lam = 0.1, 0.8, 0.3, 0.01
    opt = fdr_sgd(eta, momentum=mu, dampening=d, weight_decay=lam, window=2, tolerance=1e-9)
    state = opt.init(params)
    opt_update = jax.jit(opt.update)
    theta = {k: np.asarray(v) for k, v in params.items()}
    vel = {k: np.zeros_like(v) for k, v in theta.items()}
    p = params
    for g in grads_seq:
        o_l = sum(np.sum(theta[k] * (np.asarray(g[k]) + lam * theta[k])) for k in theta)
        o_r = 0.5 * eta * (1 + mu) / (1 - d) * sum(np.sum(vel[k] ** 2) for k in theta)
        vel = {k: mu * vel[k] + (1 - d) * (np.asarray(g[k]) + lam * theta[k]) for k in theta}
        theta = {k: theta[k] - eta * vel[k] for k in theta}
        updates, state = opt_update(g, state, p)
        p = optax.apply_updates(p, updates)
        for k in theta:
            np.testing.assert_allclose(p[k], theta[k], rtol=1e-13)
        np.testing.assert_allclose([state.monitor.last_ol, state.monitor.last_or], [o_l, o_r], rtol=1e-12)
    assert int(state.num_decays) == 0 and float(state.learning_rate) == eta

    # the monitor in front of optax's own SGD (dampening 0) sees the same observables, changes nothing
    plain = optax.chain(optax.add_decayed_weights(lam), optax.sgd(eta, momentum=mu))
    monitored = optax.chain(fdr_monitor(eta, momentum=mu, weight_decay=lam, window=2), plain)
    ref = fdr_sgd(eta, momentum=mu, weight_decay=lam, window=2, tolerance=1e-9)
    s_plain, s_mon, s_ref = plain.init(params), monitored.init(params), ref.init(params)
    plain_update, monitored_update, ref_update = jax.jit(plain.update), jax.jit(monitored.update), jax.jit(ref.update)
    p1 = p2 = p3 = params
    for g in grads_seq:
        u1, s_plain = plain_update(g, s_plain, p1)
        u2, s_mon = monitored_update(g, s_mon, p2)
        u3, s_ref = ref_update(g, s_ref, p3)
        for k in params:
            np.testing.assert_array_equal(u1[k], u2[k])
            np.testing.assert_allclose(u1[k], u3[k], rtol=1e-12)
        p1, p2, p3 = optax.apply_updates(p1, u1), optax.apply_updates(p2, u2), optax.apply_updates(p3, u3)
        mon = s_mon[0]
        np.testing.assert_allclose([mon.last_ol, mon.last_or], [s_ref.monitor.last_ol, s_ref.monitor.last_or],
                                   rtol=1e-12)
        np.testing.assert_allclose(mon.ratio, s_ref.ratio, rtol=1e-12)


def brute_force_check_ratios(o_l, o_r, window, *, cut_every_check, marks=None):
    """The reference scheduler's half-running ratios, from the full record of the observables."""
    out, start = [], 0
    for now in range(1, len(o_l) + 1):
        t = now - start
        if t % window == 0:
            k = t // window
            j = k if marks is None else max(k, 2 * k - marks + 1)
            h = (j * window) // 2
            out.append(o_l[start + h:now].sum() / o_r[start + h:now].sum())
            if cut_every_check:
                start = now
    return np.array(out)


@pytest.mark.parametrize("window,tolerance,marks", [(3, 1e-12, None), (4, 1e6, None), (2, 1e-12, 4)])
def test_half_running_averages_match_brute_force(window, tolerance, marks, monkeypatch):
    """Checks every ``window`` steps over the second half of all steps since the last cut
    (tolerance 1e6: a cut at every check; ``marks``: a small ring buffer, past its exact range)."""
    from ngp.train import _fdr

    if marks is not None:
        monkeypatch.setattr(_fdr, "_MARKS", marks)
    rng = np.random.default_rng(8)
    steps, decay = 40, 0.5
    opt = fdr_sgd(0.1, momentum=0.5, weight_decay=0.1, window=window, tolerance=tolerance, decay=decay)
    theta = jnp.asarray(rng.normal(size=4))
    state = opt.init(theta)
    o_l, o_r, ratios, lrs = [], [], [], []
    for g in rng.normal(size=(steps, 4)):
        updates, state = opt.update(jnp.asarray(g) + theta, state, theta)
        theta = theta + updates
        o_l.append(float(state.monitor.last_ol))
        o_r.append(float(state.monitor.last_or))
        if int(state.monitor.count) % window == 0:
            ratios.append(float(state.ratio))
        lrs.append(float(state.learning_rate))
    cut = tolerance > 1
    want = brute_force_check_ratios(np.array(o_l), np.array(o_r), window, cut_every_check=cut, marks=marks)
    np.testing.assert_allclose(ratios, want, rtol=1e-12)
    if marks is not None:  # exact for the first marks - 1 windows (the docs said marks), not at the next
        exact = brute_force_check_ratios(np.array(o_l), np.array(o_r), window, cut_every_check=cut)
        np.testing.assert_allclose(ratios[:marks - 1], exact[:marks - 1], rtol=1e-12)
        assert abs(ratios[marks - 1] - exact[marks - 1]) > 1e-6 * abs(exact[marks - 1])
    k = int(state.num_decays)
    assert k == (steps // window if cut else 0)
    np.testing.assert_allclose(lrs[-1], 0.1 * decay**k, rtol=1e-12)
    if cut:
        np.testing.assert_array_equal(state.decay_steps[:k], window * np.arange(1, k + 1))
        np.testing.assert_allclose(state.decay_ratios[:k], want, rtol=1e-12)


def test_monitor_restarts_when_the_learning_rate_changes():
    """fdr_monitor under a step schedule gives the same ratios as the brute force restarted at the step."""
    rng = np.random.default_rng(9)
    window, steps, boundary = 4, 24, 10
    schedule = optax.piecewise_constant_schedule(0.1, {boundary: 0.5})
    mon = fdr_monitor(schedule, momentum=0.5, weight_decay=0.1, window=window)
    theta = jnp.asarray(rng.normal(size=3))
    state = mon.init(theta)
    o_l, o_r, got, v2 = [], [], {}, []
    for g in rng.normal(size=(steps, 3)):
        v2.append(float(jnp.sum(state.velocity**2)))
        _, state = mon.update(jnp.asarray(g), state, theta)
        theta = theta - 0.05 * jnp.asarray(g)
        o_l.append(float(state.last_ol))
        o_r.append(float(state.last_or))
        got[int(state.count)] = float(state.ratio)
    o_l, o_r = np.array(o_l), np.array(o_r)
    # eta = 0.1 for the first `boundary` steps, 0.05 afterwards (schedule(count), count = steps before)
    eta = np.where(np.arange(steps) < boundary, 0.1, 0.05)
    np.testing.assert_allclose(o_r, 0.5 * eta * 1.5 * np.array(v2), rtol=1e-12)
    before = brute_force_check_ratios(o_l[:boundary], o_r[:boundary], window, cut_every_check=False)
    after = brute_force_check_ratios(o_l[boundary:], o_r[boundary:], window, cut_every_check=False)
    np.testing.assert_allclose([got[4], got[8]], before, rtol=1e-12)
    np.testing.assert_allclose([got[boundary + 4 * i] for i in range(1, len(after) + 1)], after, rtol=1e-12)


def test_bad_arguments_name_the_argument():
    for kwargs, name in [
        (dict(weight_decay=0.0), "weight_decay"),
        (dict(weight_decay=-1e-3), "weight_decay"),
        (dict(window=1), "window"),
        (dict(tolerance=0.0), "tolerance"),
        (dict(decay=1.0), "decay"),
        (dict(decay=0.0), "decay"),
        (dict(dampening=1.0), "dampening"),
        (dict(momentum=1.0), "momentum"),
    ]:
        with pytest.raises(ValueError, match=name):
            fdr_sgd(0.1, **kwargs)
    with pytest.raises(ValueError, match="learning_rate"):
        fdr_sgd(0.0)
    with pytest.raises(TypeError, match="window"):
        fdr_monitor(0.1, window=10.5)
    opt = fdr_sgd(0.1)
    params = jnp.zeros(3)
    with pytest.raises(ValueError, match="params"):
        opt.update(params, opt.init(params))
    # grads/velocity of another structure were paired with params leaf by leaf (a value came back)
    p = {"W": jnp.ones((3, 2))}
    with pytest.raises(ValueError, match=r"grads: expected the structure and leaf shapes of params"):
        fdr_observables(p, {"V": jnp.ones(6)}, p, learning_rate=0.1)
    with pytest.raises(ValueError, match=r"velocity: expected the structure and leaf shapes of params"):
        fdr_observables(p, p, {"W": jnp.ones((2, 3))}, learning_rate=0.1)


def test_import_ngp_does_not_import_optax(import_facts):
    assert import_facts["optax_after_train"] is False, "optax imported by ngp.train's names"


def test_fdr_observables_checks_its_hyperparameters_like_fdr_sgd():
    """dampening = 1 divides by zero in O_R: the same ValueError as fdr_sgd, not a ZeroDivisionError; a traced
    learning rate (inside jit) still works."""
    p = g = v = {"w": jnp.ones(3)}
    for kwargs, name in [
        (dict(learning_rate=0.1, dampening=1.0), "dampening"),
        (dict(learning_rate=0.1, momentum=1.0), "momentum"),
        (dict(learning_rate=0.1, weight_decay=-1.0), "weight_decay"),
        (dict(learning_rate=float("nan")), "learning_rate"),
        (dict(learning_rate=0.0), "learning_rate"),
    ]:
        with pytest.raises(ValueError, match=name):
            fdr_observables(p, g, v, **kwargs)
    o_l, o_r = jax.jit(lambda eta: fdr_observables(p, g, v, learning_rate=eta, momentum=0.5, dampening=0.5))(0.1)
    # every hyperparameter may be traced (jit traces keyword arguments; grad in weight_decay): checked when concrete
    o_l2, o_r2 = jax.jit(fdr_observables)(p, g, v, learning_rate=0.1, momentum=0.5, dampening=0.5)
    assert np.isclose(o_l2, o_l) and np.isclose(o_r2, o_r)
    assert np.isfinite(jax.grad(lambda d: fdr_observables(p, g, v, learning_rate=0.1, weight_decay=d)[0])(0.01))
    assert float(o_l) == pytest.approx(3.0) and float(o_r) == pytest.approx(0.5 * 0.1 * 1.5 / 0.5 * 3.0)
