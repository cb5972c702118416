"""Residual steps in the cumulant engine (ngp/_residual_layers.py; docs/theory.md, "Residual networks").

The engine's ``K``, ``K1``, ``V`` of residual networks (``ngp.ResMLP``, residual blocks anywhere in
``ngp.serial``) equal the residual-chain module's (tests/test_residual_cumulants.py checks that module
against exact limits and Monte Carlo); here: the wiring, Monte Carlo of actual residual networks built
from the same steps, the posterior against importance sampling, and the refusals that remain.
"""

import math
import warnings

import jax
import numpy as np
import pytest

import ngp
from ngp import _residual_cumulants as rc
from ngp._activations import activation
from ngp._pairs import Pairs
from ngp._warnings import duration

from ._residual_posterior_reference import residual_importance_posterior
from ._residual_reference import branch_network

X3 = np.array([[0.9, -0.3, 0.4, 1.1], [-0.5, 0.8, 0.2, -0.7], [0.3, 0.6, -1.0, 0.1]])
#: Posterior checks: training inputs (3, 2), a test input (1, 2), targets (3, 1).
POSTERIOR_DATA = (np.array([[1.0, 0.2], [-0.6, 0.9], [0.3, -1.1]]), np.array([[0.5, 0.5]]),
                  np.array([[0.6], [-0.4], [0.5]]))


def _same(a, b, tol=1e-12):
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape
    assert np.max(np.abs(a - b)) <= tol * max(1.0, float(np.max(np.abs(b))))


def test_resmlp_prior_equals_the_chain_module():
    act = "tanh"  # the wiring does not depend on the activation (relu: test_residual_cumulants.py)
    C_W, C_b = [1.0, 1.2, 0.9, 1.3], [0.1, 0.05, 0.2, 0.1]
    net = ngp.ResMLP(4, 16, activation=act, C_W=C_W, C_b=C_b, gamma=[0.8, 1.0], xi=[0.6, 0.5])
    prior = net.prior(X3)
    K_first = C_b[0] + C_W[0] * X3 @ X3.T / X3.shape[1]
    ref = rc.resmlp_cumulants(activation(act), K_first, n=16, C_W=C_W, C_b=C_b, gamma=[0.8, 1.0], xi=[0.6, 0.5])
    assert len(prior.layers) == len(ref) == 4
    for layer, r in zip(prior.layers, ref):
        _same(layer.K, r.K)
        _same(layer.K1, r.K1)
        _same(layer.V_packed, r.V)
        assert layer.n == r.n
    _same(prior.K1, ref[-1].K1)
    _same(prior.V, ref[-1].V4)
    # the vertex interface: components and local blocks agree with the packed matrix
    v = prior.layers[2].vertex
    pairs = Pairs.of(3)
    quads = np.array([[0, 1, 2, 2], [1, 0, 0, 0], [2, 2, 1, 0]])
    p, q = pairs.index[quads[:, 0], quads[:, 1]], pairs.index[quads[:, 2], quads[:, 3]]
    _same(v.components(quads), ref[2].V[p, q])
    cols = pairs.cols
    _same(v.local2(), ref[2].V[cols[:, :, None], cols[:, None, :]])
    eps = prior.expansion_parameter
    d = np.diag(ref[-1].K)
    assert eps == pytest.approx(np.max(np.diag(ref[-1].V) / (d[pairs.a] * d[pairs.b])) / 16, rel=1e-12)


def test_residual_blocks_inside_serial_equal_the_chain_module():
    # a dense layer of another width feeds the chain; a two-layer branch with its own hidden activation;
    # a plain block; the readout is followed by one more dense layer (engine recursion continues)
    tanh, relu = activation("tanh"), activation("relu")
    net = ngp.serial(
        ngp.Dense(12, C_W=1.1, C_b=0.1), ngp.Elementwise("tanh"), ngp.Dense(8, C_W=1.3, C_b=0.05),
        ngp.Residual(ngp.serial(ngp.Elementwise("tanh"), ngp.Dense(6, C_W=1.2, C_b=0.1),
                                ngp.Elementwise("relu"), ngp.Dense(8, C_W=1.4, C_b=0.05)), gamma=0.9, xi=0.5),
        ngp.Residual(ngp.serial(ngp.Elementwise("tanh"), ngp.Dense(8, C_W=1.5, C_b=0.1)), gamma=0.7, xi=0.6),
        ngp.Elementwise("tanh"), ngp.Dense(10, C_W=1.2, C_b=0.1), ngp.Elementwise("tanh"), ngp.Dense(2, C_W=1.0),
    )
    prior = net.prior(X3)
    L2 = ngp.serial(*net.steps[:3]).prior(X3).layers[-1]
    s = rc.chain_start(tanh, L2.K, n=8, V=L2.V_packed, K1=L2.K1, n_prev=12)
    s = rc.residual_step(s, C_W=1.2, C_b=0.1, gamma=0.9, xi=0.5, branch=((6, 1.4, 0.05, relu),))
    mid = rc.layer_cumulants(s)
    s = rc.residual_step(s, C_W=1.5, C_b=0.1, gamma=0.7, xi=0.6)
    last_chain = rc.layer_cumulants(s)
    ro = rc.readout(s, C_W=1.2, C_b=0.1)
    out = rc.mlp_step(tanh, ro.K, ro.K1, ro.V, n_prev=8, n=10, C_W=1.0, C_b=0.0)
    layers = prior.layers
    assert [lay.n for lay in layers] == [None, 12, 8, 8, 8, 10]
    for layer, r in zip(layers[2:], (mid, last_chain, ro, out)):
        _same(layer.K, r.K, 1e-13)
        _same(layer.K1, r.K1)
        _same(layer.V_packed, r.V)


def test_gamma_zero_block_after_a_chain_is_its_readout():
    block = ngp.serial(ngp.Elementwise("tanh"), ngp.Dense(8, C_W=1.4, C_b=0.1))
    chain = [ngp.Dense(8, C_W=1.2, C_b=0.1), ngp.Residual(ngp.serial(ngp.Elementwise("tanh"), ngp.Dense(8)),
                                                           gamma=0.8, xi=0.6)]
    a = ngp.serial(*chain, ngp.Residual(block, gamma=0.0, xi=1.0), ngp.Elementwise("tanh"), ngp.Dense(1))
    b = ngp.serial(*chain, *block.steps, ngp.Elementwise("tanh"), ngp.Dense(1))
    pa, pb = a.prior(X3), b.prior(X3)
    _same(pa.K1, pb.K1)
    _same(pa.V_packed, pb.V_packed)
    # and a skip after it starts a new chain from that (conditionally Gaussian) layer
    c = ngp.serial(*chain, ngp.Residual(block, gamma=0.0, xi=1.0), ngp.Residual(block, gamma=0.5, xi=0.9),
                   ngp.Elementwise("tanh"), ngp.Dense(1))
    assert np.all(np.isfinite(c.prior(X3).V_packed))


# ----------------------------------------------------------------------------- Monte Carlo
def test_branch_network_against_actual_networks():
    # two blocks with hidden branch layers (widths 2n and n/2); two inputs, n = 32 and 64: the engine's
    # V and K1 agree with Monte Carlo of the actual networks within 4.5 s.e. plus the O(1/n) remainder,
    # whose intercept fit (2 V(64) - V(32)) agrees within 4.5 s.e.
    X = np.array([[1.0, 0.3], [-0.4, 0.9]])
    blocks = lambda n: [(1.5, 0.1), (1.5, 0.1, 0.9, 0.6, ((2 * n, 1.2, 0.1),)),  # noqa: E731
                        (1.5, 0.1, 0.8, 0.7, ((n // 2, 1.4, 0.05),))]
    act = activation("tanh")
    th = branch_network(act, 8, blocks(8), (1.1, 0.1)).prior(X)
    V_th, K1_th = th.V_packed, th.pairs.pack(th.K1)
    K = th.pairs.pack(th.K)
    est = {}
    for n in (32, 64):
        net = branch_network(act, n, blocks(n), (1.1, 0.1))
        V, V_se, nEG, nEG_se = _mc(net, X, 40_000, n)
        est[n] = V, V_se, nEG - n * K, nEG_se
    V_fit = 2 * est[64][0] - est[32][0]
    se_fit = np.sqrt(4 * est[64][1] ** 2 + est[32][1] ** 2)
    assert np.max(np.abs(V_fit - V_th) / se_fit) < 4.5
    K1, K1_se = est[64][2], est[64][3]
    assert np.max(np.abs(K1 - K1_th) / K1_se) < 4.5
    assert np.max(np.abs(V_th)) > 10 * np.max(se_fit)  # the check has power


def _mc(net, X, samples, n):
    """``n Cov(G_hat)``, its s.e., ``n E G_hat`` and its s.e. over pairs, from actual networks."""
    s = ngp.sample_networks(net, X, samples, seed=n, method="conditional", batch_size=5_000)
    pairs = Pairs.of(X.shape[0])
    G = s.metric[:, pairs.a, pairs.b]
    d = G - G.mean(0)
    prod = d[:, :, None] * d[:, None, :]
    return (n * prod.mean(0) * samples / (samples - 1), n * prod.std(0, ddof=1) / math.sqrt(samples),
            n * G.mean(0), n * G.std(0, ddof=1) / math.sqrt(samples))


def test_posterior_against_importance_sampling():
    # ResMLP depth 4, n = 32: the finite-width posterior mean is within the Monte-Carlo error plus its
    # O(1/n^2) remainder of the importance-sampling truth; the GP's O(1/n) error is rejected
    XA, XB, YA = POSTERIOR_DATA
    net = ngp.ResMLP(4, 32, activation="tanh", C_W=1.5, C_b=0.1, gamma=0.9, xi=0.6)
    ref = ngp.reference.importance_posterior(net, XA, YA, XB, noise=0.05, num_samples=100_000, seed=1)
    cond = ngp.condition(net, XA, YA, noise=0.05)
    fw, gp = cond.predict(XB).mean[0, 0], cond.gp.predict(XB).mean[0, 0]
    se = ref.mean_se[0, 0]
    assert abs(fw - ref.mean[0, 0]) < 4.5 * se + 5e-4
    assert abs(gp - ref.mean[0, 0]) > 5 * se + 5e-4
    assert np.isfinite(cond.log_evidence)


@pytest.mark.validation
def test_posterior_error_falls_like_second_order():
    # The posterior criterion on widths 16-64 (benchmarks/residual_posterior.py runs 16-128): tanh
    # ResMLP depth 4; truth by importance sampling with zero-mean martingale control variates
    # (tests/_residual_posterior_reference.py: its own sampler, unbiased, 17-43x less variance). The
    # finite-width error falls with slope <= -1.5 and stays below the GP's, whose error falls like 1/n.
    XA, XB, YA = POSTERIOR_DATA
    widths, err_fw, err_gp, se = (16, 32, 64), [], [], []
    for n in widths:
        ref = residual_importance_posterior("tanh", XA, YA, XB, width=n, C_W=[1.5] * 4, C_b=[0.1] * 4,
                                            gamma=[0.9] * 2, xi=[0.6] * 2, noise=0.05,
                                            num_samples=100_000 * (n // 16) ** 2, seed=n)
        assert ref["control_max_z"] < 5.0  # the controls' zero mean, over ~260 of them
        cond = ngp.condition(ngp.ResMLP(4, n, activation="tanh", C_W=1.5, C_b=0.1, gamma=0.9, xi=0.6),
                             XA, YA, noise=0.05, warn=False)
        err_fw.append(abs(cond.predict(XB).mean[0, 0] - ref["mean"][0]))
        err_gp.append(abs(cond.gp.predict(XB).mean[0, 0] - ref["mean"][0]))
        se.append(ref["mean_se"][0])
    err_fw, err_gp, se = map(np.array, (err_fw, err_gp, se))
    assert np.all(se < err_fw / 3)  # the truth resolves the finite-width error at every width
    assert np.all(err_fw < err_gp)
    x = np.log(widths)
    assert np.polyfit(x, np.log(err_fw), 1, w=err_fw / se)[0] <= -1.5
    assert -1.2 < np.polyfit(x, np.log(err_gp), 1)[0] < -0.8


@pytest.mark.validation
def test_posterior_references_agree():
    # Three independent truths for one residual posterior: the control-variate reference (own sampler),
    # ngp.reference.importance_posterior (the library's conditional sampler) and NUTS on the weights of
    # actual residual networks (ngp.reference.nuts_posterior); tanh ResMLP depth 4, n = 8.
    XA, XB, YA = POSTERIOR_DATA
    net = ngp.ResMLP(4, 8, activation="tanh", C_W=1.5, C_b=0.1, gamma=0.9, xi=0.6)
    cv = residual_importance_posterior("tanh", XA, YA, XB, width=8, C_W=[1.5] * 4, C_b=[0.1] * 4,
                                       gamma=[0.9] * 2, xi=[0.6] * 2, noise=0.05, num_samples=100_000, seed=3)
    imp = ngp.reference.importance_posterior(net, XA, YA, XB, noise=0.05, num_samples=100_000, seed=4)
    nuts = ngp.reference.nuts_posterior(net, XA, YA, XB, noise=0.05, num_warmup=300, num_samples=500, seed=5)
    assert np.max(nuts.rhat) < 1.02
    m, s = cv["mean"][0], cv["mean_se"][0]
    assert abs(imp.mean[0, 0] - m) < 4.5 * math.hypot(imp.mean_se[0, 0], s)
    assert abs(imp.log_evidence - cv["log_evidence"]) < 4.5 * math.hypot(imp.log_evidence_se, cv["log_evidence_se"])
    assert abs(nuts.mean[0, 0] - m) < 4.5 * math.hypot(nuts.mean_se[0, 0], s)


# ----------------------------------------------------------------------------- what stays refused
def _chain(act_in_block, act_readout):
    block = ngp.serial(ngp.Elementwise(act_in_block), ngp.Dense(6))
    return [ngp.Dense(6), ngp.Residual(ngp.serial(ngp.Elementwise("tanh"), ngp.Dense(6)), gamma=0.8, xi=0.5),
            ngp.Residual(block, gamma=0.8, xi=0.5), ngp.Elementwise(act_readout), ngp.Dense(1)]


@pytest.mark.parametrize("net,match", [
    (ngp.serial(*_chain("relu", "tanh")), "different activations to the stream"),
    (ngp.serial(*_chain("tanh", "relu")), "not the chain's activation"),
    (ngp.serial(ngp.Dense(6), ngp.Residual(ngp.serial(ngp.Elementwise("tanh"), ngp.Dense(6)), gamma=0.8, xi=0.5),
                ngp.Scale(2.0), ngp.Elementwise("tanh"), ngp.Dense(1)), "rescaled"),
    (ngp.serial(ngp.Dense(6), ngp.Residual(ngp.serial(ngp.Elementwise("tanh"), ngp.Dense(6), ngp.Scale(0.5),
                                                      ngp.Elementwise("tanh"), ngp.Dense(6)),
                                           gamma=0.8, xi=0.5), ngp.Elementwise("tanh"), ngp.Dense(1)), "Scale step"),
])
def test_unsupported_patterns_are_refused_by_name(net, match):
    prior = net.prior(X3[:2])
    assert prior.K.shape == (2, 2)
    for attr in ("K1", "V"):
        with pytest.raises(NotImplementedError, match=match) as info:
            getattr(prior, attr)
        assert "docs/theory.md" in str(info.value) and "residual" in str(info.value)


def test_memory_budget_is_checked_before_work():
    # the dense V holds the chain on every pair of inputs: refused before any work (K1 and the entries a
    # prediction reads run on pair sets in runs within the budget: test_pair_sets_within_a_small_budget_...)
    net = ngp.ResMLP(5, 8, activation="tanh", gamma=0.8, xi=0.6)
    prior = net.prior(np.random.default_rng(0).normal(size=(12, 2)), max_memory=1e6, warn=False)
    assert prior.K.shape == (12, 12)
    with pytest.raises(MemoryError, match="max_memory"):
        prior.V


def test_error_companion_runs_within_what_the_chain_leaves_of_max_memory(monkeypatch):
    """``V_error`` runs a companion chain (``test_residual_error_estimates_cover_the_quadrature_error``); its dense
    state gets what the chain's own dense state leaves of ``max_memory``, so the two together stay within it, also
    when the companion is made first (``K1_error`` before ``V``)."""
    from ngp._residual_layers import _chain_bytes

    _few_cross_nodes(monkeypatch)
    net = ngp.ResMLP(3, 8, activation="tanh", gamma=0.8, xi=0.6)
    X = np.random.default_rng(0).normal(size=(4, 2))
    need = _chain_bytes(2, 10)  # two chain layers on the 10 pairs of 4 inputs
    prior = net.prior(X, max_memory=1.5 * need, warn=False)
    assert np.all(np.isfinite(prior.V))
    with pytest.raises(MemoryError, match="max_memory"):
        prior.V_error
    assert np.all(np.isfinite(net.prior(X, max_memory=2 * need, warn=False).V_error))
    # the companion made first (K1 errors, on pair sets), the chain's dense state after it: the same budget
    prior = net.prior(X, max_memory=1.5 * need, warn=False)
    assert np.all(np.isfinite(prior.K1_error)) and np.all(np.isfinite(prior.V))
    with pytest.raises(MemoryError, match="max_memory"):
        prior.V_error
    prior = net.prior(X, max_memory=2 * need, warn=False)
    assert np.all(np.isfinite(prior.K1_error)) and np.all(np.isfinite(prior.V)) and np.all(np.isfinite(prior.V_error))


def _serial_chain():
    """A finite-width dense layer feeding a chain (the input metric fluctuates), a two-layer branch with a relu
    hidden layer, a plain block, the readout and one more dense layer."""
    return ngp.serial(
        ngp.Dense(12, C_W=1.1, C_b=0.1), ngp.Elementwise("tanh"), ngp.Dense(8, C_W=1.3, C_b=0.05),
        ngp.Residual(ngp.serial(ngp.Elementwise("tanh"), ngp.Dense(6, C_W=1.2, C_b=0.1),
                                ngp.Elementwise("relu"), ngp.Dense(8, C_W=1.4, C_b=0.05)), gamma=0.9, xi=0.5),
        ngp.Residual(ngp.serial(ngp.Elementwise("tanh"), ngp.Dense(8, C_W=1.5, C_b=0.1)), gamma=0.7, xi=0.6),
        ngp.Elementwise("tanh"), ngp.Dense(10, C_W=1.2, C_b=0.1), ngp.Elementwise("tanh"), ngp.Dense(2, C_W=1.0))


def _chain_runs(monkeypatch) -> list:
    """The number of pairs of every residual step the engine runs from now on (one entry per step)."""
    from ngp import _residual_layers as rl

    runs = []
    inner = rl.residual_step
    monkeypatch.setattr(rl, "residual_step", lambda state, **kw: runs.append(state.pairs.P) or inner(state, **kw))
    return runs


def test_pair_sets_within_a_small_budget_equal_the_dense_chain(monkeypatch):
    """``K1``, the blocks ``(aa, bb, ab)`` of ``V`` and single entries of ``V``, asked of the chain layers (and of
    the dense layer after the readout) without the dense ``V``, come from chains on the pair sets those entries
    need, in several runs under a small ``max_memory``; they equal the dense chain's to rounding. Cross-layer
    expectations on few nodes (the same rule in both)."""
    _few_cross_nodes(monkeypatch)
    X = np.random.default_rng(3).normal(size=(6, 2))
    net = _serial_chain()
    dense = net.prior(X, warn=False).layers
    small = net.prior(X, warn=False, max_memory=5e4).layers
    runs = _chain_runs(monkeypatch)
    rng = np.random.default_rng(4)
    pairs = Pairs.of(6)
    p, q = np.sort(rng.integers(0, pairs.P, size=(2, 40)), axis=0)
    sel = np.unique(np.concatenate([pairs.index[5, :], pairs.index[np.arange(6), np.arange(6)]]))
    for i in (2, 3, 4, 5):  # the chain's two layers, the readout, the dense layer after it
        d, s = dense[i]._c, small[i]._c
        Vd = d.vertex.packed()
        runs.clear()
        _same(s._components_pq(p, q), Vd[p, q])
        assert len(runs) > 2 and max(runs) <= 16  # several runs of at most the cap (16 pairs here)
        _same(s._K1_at(sel), pairs.pack(d.K1)[sel])
        _same(s._local2_at(sel), d.vertex.local2()[sel])
        _same(small[i].K1, dense[i].K1)
        assert "_cumulants" not in getattr(s, "__dict__", {})  # no chain on all pairs was built
    with pytest.raises(MemoryError, match="max_memory"):
        small[5].V


def test_residual_prediction_reads_the_chain_on_its_entries_only(monkeypatch):
    """A residual network's prediction (mean, variances, full covariance) computes the chain on the entries its
    formulas read and equals the prediction from the dense chain on all training and test pairs to rounding."""
    _few_cross_nodes(monkeypatch)
    rng = np.random.default_rng(5)
    XA, XB = rng.normal(size=(5, 2)), rng.normal(size=(3, 2))
    YA = np.sin(XA[:, :1])
    net = ngp.ResMLP(4, 16, activation="tanh", gamma=0.9, xi=0.6)
    lean = ngp.condition(net, XA, YA, noise=0.05).predict(XB, full_cov=True)
    cond = ngp.condition(net, XA, YA, noise=0.05)
    joint = cond._joint_prior(XB)
    joint.V_packed  # every chain layer of the joint prior on all pairs first
    dense = cond.predict(XB, full_cov=True)
    assert cond._joint_prior(XB) is joint
    for a, b in ((lean.mean, dense.mean), (lean.var, dense.var), (lean.cov, dense.cov)):
        _same(a, b)
    assert np.max(np.abs(lean.mean - lean.gp.mean)) > 1e-4  # the finite-width correction is there
    fresh = ngp.condition(net, XA, YA, noise=0.05)
    at16 = fresh.predict(XB)  # the marginal path
    assert not any("_cumulants" in c.__dict__ for c in fresh._joint_prior(XB)._cumulants)
    runs = _chain_runs(monkeypatch)
    at32 = fresh.with_width(32).predict(XB)  # another width: the chain's values are remembered, not run again
    assert runs == []
    _same(2.0 * (at32.mean - at16.gp.mean), at16.mean - at16.gp.mean, 1e-10)  # the 1/n correction halves


def _few_cross_nodes(monkeypatch):
    """The cross-layer expectations of smooth activations on isotropic 12-, 8- and 6-node rules (2, 3, 4
    variables) instead of their calibrated rules: for tests that check other parts of the chain, at a fraction of
    the time."""
    monkeypatch.setattr(rc, "_smooth_calibrated", lambda act, dL, dR, C, rtol, **_: (
        rc._run_batches(act, dL, dR, C, {2: 12, 3: 8, 4: 6}[dL + dR]), 0.0))


def test_residual_four_point_tables_chunk_within_max_memory(monkeypatch):
    """A residual prior's same-layer four-point tables compute at most ``table_chunk(max_memory)`` new
    multisets per call, as an MLP's do (without ``max_memory`` in the chain's options: 495 at once);
    chunked and whole tables agree to 1e-12. The cross-layer expectations, which these tables do not enter, run
    on few nodes (2025 problems at the default 40-128 nodes per dimension were 60% of the test's time)."""
    from ngp import _finite

    _few_cross_nodes(monkeypatch)
    calls = []
    inner = _finite.four_point_values

    def counted(*args, **kwargs):
        calls.append((np.asarray(args[1]).copy(), len(args[2])))
        return inner(*args, **kwargs)

    monkeypatch.setattr(_finite, "four_point_values", counted)
    X = np.random.default_rng(5).normal(size=(9, 2))  # 495 multisets per table
    net = ngp.ResMLP(3, 8, activation="tanh", gamma=0.8, xi=0.6)
    limit = 300 * 8 * _finite.TABLE_ROW_BYTES
    assert np.all(np.isfinite(np.asarray(net.prior(X, max_memory=limit).V)))
    sizes = [n for _, n in calls]
    assert sizes and max(sizes) == 300 and sum(sizes) % 495 == 0
    K, pairs, act = calls[-1][0], Pairs.of(9), activation("tanh")
    calls.clear()
    whole = _finite.fresh_covariance(act, K, pairs, 1.0)
    assert [n for _, n in calls] == [495]
    _same(_finite.fresh_covariance(act, K, pairs, 1.0, max_memory=limit), whole)


def test_residual_four_point_tables_use_the_given_tolerance(monkeypatch):
    """``four_point_rtol`` reaches a residual prior's four-point tables, as an MLP's (it was dropped by the chain's
    option list: ``V`` at 1e-4 equalled ``V`` at the default 1e-9 exactly); the looser ``V`` differs from the
    default one by less than 1e-3 of ``max |V|``. The cross-layer expectations run on the same few nodes in both (their
    own rules read the tolerance too: ``test_residual_cumulants.py``)."""
    from ngp import _finite

    _few_cross_nodes(monkeypatch)
    seen = []
    inner = _finite.four_point_values

    def recorded(*args, **kwargs):
        seen.append(kwargs.get("four_point_rtol"))
        return inner(*args, **kwargs)

    X = np.random.default_rng(0).normal(size=(5, 2))
    net = ngp.ResMLP(3, 16, activation="tanh")
    default = np.asarray(net.prior(X, warn=False).V)
    monkeypatch.setattr(_finite, "four_point_values", recorded)
    loose = np.asarray(net.prior(X, warn=False, four_point_rtol=1e-4).V)
    assert seen and set(seen) == {1e-4}
    diff = np.max(np.abs(loose - default))
    assert 0 < diff < 1e-3 * np.max(np.abs(default)), diff


def test_hyperparameter_tracing_is_refused_for_residual_cumulants():
    net = ngp.ResMLP(3, 8, activation="tanh", gamma=0.8, xi=0.6)
    Y = np.array([[0.3], [-0.2]])
    gp = ngp.log_evidence(net, X3[:2], Y, noise=0.1, finite_width=False)
    assert np.isfinite(float(gp))
    with pytest.raises(NotImplementedError, match="not differentiable"):
        jax.grad(lambda c: ngp.log_evidence(net, X3[:2], Y, noise=0.1, C_W=c))(1.0)


# ----------------------------------------------------------------------------- error estimates
def _posterior_within_its_errors(net, Xtr, Xte, Y, rtol, ref_rtol):
    """The prediction at ``four_point_rtol = rtol`` (returned), after checking that its ``mean_error``,
    ``var_error`` and ``log_evidence_error`` cover its differences from the prediction at ``ref_rtol``."""
    post = ngp.condition(net, Xtr, Y, noise=0.01, four_point_rtol=rtol).predict(Xte)
    exact = ngp.condition(net, Xtr, Y, noise=0.01, four_point_rtol=ref_rtol).predict(Xte)
    for name in ("mean", "var"):
        diff = np.abs(getattr(post, name) - getattr(exact, name))
        assert np.all(diff <= getattr(post, f"{name}_error")), name
    assert abs(post.log_evidence - exact.log_evidence) <= post.log_evidence_error
    return post


def test_residual_error_estimates_cover_the_quadrature_error():
    """A residual chain's ``V_error`` and ``K1_error`` (the difference from its companion quadrature,
    ``ngp._residual_cumulants.companion_options``, plus a tenth of the tolerance times the largest value) bound the
    actual error of ``V`` and ``K1``, measured against the same network at ``four_point_rtol = 1e-11`` up to that
    reference's tolerance, at every chain layer and the readout; at ``four_point_rtol = 1e-7`` the error exceeds the
    floor alone somewhere (so the companion is what covers it), and the estimates stay below 1e-3 of the largest
    value (the companion runs at 100 times the tolerance). Carried into the posterior: ``mean_error``,
    ``var_error`` and ``log_evidence_error`` bound the differences from the posterior at 1e-11 (two training points,
    one test point). First-layer variances up to 1.4."""
    Xtr, Xte, Y = (1.2 * POSTERIOR_DATA[0][:2], 1.2 * POSTERIOR_DATA[1], POSTERIOR_DATA[2][:2])  # 3 inputs
    rtol, ref_rtol = 1e-7, 1e-11
    net = ngp.ResMLP(3, 16, activation="tanh", C_W=1.5, C_b=0.1, gamma=0.8, xi=0.6)
    X = np.concatenate([Xtr, Xte])
    prior, ref = net.prior(X, four_point_rtol=rtol), net.prior(X, four_point_rtol=ref_rtol)
    above_floor = False
    for layer, r in list(zip(prior.layers, ref.layers))[1:]:
        for name in ("V", "K1"):
            value, truth = np.asarray(getattr(layer, name)), np.asarray(getattr(r, name))
            est = np.asarray(getattr(layer, f"{name}_error"))
            err, scale = np.abs(value - truth), np.max(np.abs(truth))
            assert np.all(np.isfinite(est)) and np.max(est) <= 1e-3 * scale, (name, np.max(est) / scale)
            assert np.all(err <= est + ref_rtol * scale), (name, np.max(err - est))
            above_floor |= bool(np.any(err > 0.1 * rtol * np.max(np.abs(value))))
    assert above_floor
    post = _posterior_within_its_errors(net, Xtr, Xte, Y, rtol, ref_rtol)
    assert 0 < np.max(post.mean_error) <= 1e-2 * np.max(np.abs(post.mean_correction))


def test_residual_error_companions():
    """The companion quadrature: calibrated rules at 100 times ``four_point_rtol`` (at most 0.1) and never the
    isotropic rule, fixed rules (relu family, ``cross_orders``) at half the nodes; none with ``four_point_order``.
    A chain started after a layer that is not exactly Gaussian has two, started from that layer's ``V`` and ``K1``
    plus and minus their error estimates (finite estimates, covering the error:
    ``test_chain_after_a_finite_width_layer_carries_its_input_metric_errors``)."""
    tanh, relu = activation("tanh"), activation("relu")
    assert rc.companion_options(tanh, {}) == {"four_point_rtol": pytest.approx(1e-7), "cross_iso": False,
                                              "progress": False}
    assert rc.companion_options(tanh, {"four_point_rtol": 0.01})["four_point_rtol"] == 0.1
    assert rc.companion_options(tanh, {"cross_orders": {4: 30}})["cross_orders"] == {4: 15}
    assert rc.companion_options(relu, {})["cross_orders"] == {d: m // 2 for d, m in rc.RELU_ORDERS.items()}
    assert rc.companion_options(tanh, {"four_point_order": 20}) is None
    prior = _serial_chain().prior(X3)
    assert [len(layer._c.error_companions) for layer in prior.layers[2:4]] == [2, 2]  # the chain's two layers
    assert np.all(np.isfinite(prior.V_error)) and np.all(np.isfinite(prior.K1_error))
    assert np.all(np.isfinite(prior.layers[1].V_error))  # the dense layer before the chain keeps its recursion
    assert np.all(np.isnan(ngp.ResMLP(3, 8).prior(X3, four_point_order=20).K1_error))


def test_chain_after_a_finite_width_layer_carries_its_input_metric_errors(monkeypatch):
    """A chain started after two finite-width tanh layers: its input metric's ``V`` and ``K1`` carry quadrature errors
    (``four_point_rtol = 1e-7``), which the chain carries on. Its estimates (the larger difference from two
    companions started from that metric plus and minus its error estimates) bound the errors of ``V`` and ``K1`` at
    the chain layer and the readout against the network at ``1e-11``, and the posterior's ``mean_error``,
    ``var_error`` and ``log_evidence_error`` the posterior's. Without the input metric's errors (companions started
    from the metric itself) the chain layer's ``K1`` estimate falls below its error: they are what covers it there."""
    from ngp import _residual_layers as rl

    net = ngp.serial(ngp.Dense(12, C_W=1.5, C_b=0.1), ngp.Elementwise("tanh"), ngp.Dense(8, C_W=1.5, C_b=0.1),
                     ngp.Elementwise("tanh"), ngp.Dense(8, C_W=1.5, C_b=0.1),
                     ngp.Residual(ngp.serial(ngp.Elementwise("erf"), ngp.Dense(8, C_W=1.2, C_b=0.1)), gamma=0.9,
                                  xi=0.5),
                     ngp.Elementwise("erf"), ngp.Dense(1, C_W=1.0))
    rtol, ref_rtol = 1e-7, 1e-11

    def worst(prior, ref):  # per layer after the dense ones: the largest error / (estimate + reference tolerance)
        out = []
        for layer, r in list(zip(prior.layers, ref.layers))[3:]:
            for name in ("V", "K1"):
                value, truth = np.asarray(getattr(layer, name)), np.asarray(getattr(r, name))
                est = np.asarray(getattr(layer, f"{name}_error"))
                assert np.all(np.isfinite(est)), name
                out.append(np.max(np.abs(value - truth) / (est + ref_rtol * np.max(np.abs(truth)))))
        return out

    ref = net.prior(X3, four_point_rtol=ref_rtol)
    assert max(worst(net.prior(X3, four_point_rtol=rtol), ref)) <= 1.0
    _posterior_within_its_errors(net, *POSTERIOR_DATA, rtol, ref_rtol)
    monkeypatch.setattr(rl.ResidualChainLayer, "start_shift", property(lambda self: 0.0, lambda self, v: None))
    assert worst(net.prior(X3, four_point_rtol=rtol), ref)[1] > 2.0  # the chain layer's K1


def test_relu_residual_error_estimates_come_from_half_the_nodes(monkeypatch):
    """The relu family's fixed cross-layer rules converge algebraically, so their estimate (the companion at half
    the nodes per direction) is an estimate, not a bound per entry (``docs/theory-residual.md``, "Error
    estimates"): here finite, and its largest entry above the largest error against rules of twice the nodes."""
    X = X3[:, :2]
    net = ngp.ResMLP(3, 64, activation="relu", C_W=1.5, C_b=0.1, gamma=0.8, xi=0.6)
    prior = net.prior(X)
    V, EV, EK1 = np.asarray(prior.V), np.asarray(prior.V_error), np.asarray(prior.K1_error)
    monkeypatch.setattr(rc, "RELU_ORDERS", {d: 2 * m for d, m in rc.RELU_ORDERS.items()})
    ref = net.prior(X)
    assert np.all(np.isfinite(EV)) and np.all(np.isfinite(EK1))
    assert np.max(np.abs(V - np.asarray(ref.V))) <= np.max(EV) <= 1e-3 * np.max(np.abs(V))
    assert np.max(np.abs(np.asarray(prior.K1) - np.asarray(ref.K1))) <= np.max(EK1)


def test_a_long_dense_chain_says_so_before_it_starts(monkeypatch):
    """``ResMLP`` with 70 training rows started a dense chain of about 10 hours (``3 P^2`` = 1.9e7 cross-layer
    expectations, P = 2485 pairs) without a word. The estimate (``(k - 1) P^2`` expectations per chain layer of depth
    ``k`` at ``_DENSE_SECONDS`` each) gives one ``CostWarning`` per dense chain; here its per-expectation time is set
    so that 5 inputs cross the limit (the 70-row case itself is not run), and at the real one 5 inputs stay quiet."""
    from ngp import _residual_layers as rl

    X = np.random.default_rng(0).normal(size=(5, 2))
    net = ngp.ResMLP(4, 8, activation="tanh")
    with warnings.catch_warnings():
        warnings.simplefilter("error", ngp.CostWarning)
        net.prior(X, warn=False).V
    monkeypatch.setattr(rl, "_DENSE_SECONDS", 0.5)  # 3 x 15^2 expectations: 338 s
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        net.prior(X, warn=False).V
    said = [str(w.message) for w in caught if issubclass(w.category, ngp.CostWarning)]
    assert len(said) == 1 and "on 5 distinct inputs (15 pairs)" in said[0] and "6 minutes" in said[0], said
    assert duration(36000.0) == "10 hours" and duration(90.0) == "90 s"
