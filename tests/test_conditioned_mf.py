"""The matrix-free conditioned posterior's own options (``ngp._conditioned_mf``); its estimates are checked in
test_matrix_free.py (validation)."""

import numpy as np
import pytest

import ngp


@pytest.mark.filterwarnings("ignore::ngp.ExpansionWarning")  # a narrow network: outside the validated regime
def test_max_memory_refuses_before_any_work_with_the_estimate(monkeypatch):
    """``max_memory`` bounds the matrix-free path when given: the estimate grows like N_train x (N_train + N_test),
    a run above the limit raises MemoryError with the estimate before the estimator starts, a batch that fits runs,
    and without the option (no default bound on this path) nothing is refused."""
    from ngp import _conditioned_mf as cmf

    rng = np.random.default_rng(0)
    X = rng.normal(size=(7, 2))  # 3 training and 4 test points (two batches of 2: one compiled shape)
    net = ngp.MLP(3, 16, activation="tanh")
    B, T = cmf.BYTES_PER_ENTRY[0] + 2 * cmf.BYTES_PER_ENTRY[1], cmf.BYTES_PER_TEST_ENTRY  # depth 3: 2 hidden layers
    limit = B * 3 * 3 + T * 3 * 2  # a batch of two test points fits, three do not
    cond = ngp.condition(net, X[:3], X[:3, :1], noise=0.1, method="matrix_free", samples=64, max_memory=limit)
    assert cond.memory_estimate() == B * 3 * 3 and cond.memory_estimate(3) == B * 3 * 3 + T * 3 * 3
    run = cmf.mf.matrix_free_posterior
    monkeypatch.setattr(cmf.mf, "matrix_free_posterior", lambda *a, **k: pytest.fail("the estimator ran"))
    with pytest.raises(MemoryError, match=r"3 training and 4 test points need about 2\.13e-05 GiB "
                                          r"\(> max_memory=1\.46e-05 GiB"):  # 940 x 9 + 1200 x 12, 940 x 9 + 1200 x 6
        cond.predict(X[3:])
    monkeypatch.setattr(cmf.mf, "matrix_free_posterior", run)
    post = cond.predict(X[3:], batch_size=2)  # batches of 2 fit (the evidence is the first batch's)
    assert post.mean.shape == (4, 1) and np.isfinite(cond.log_evidence)
    free = ngp.condition(net, X[:3], X[:3, :1], noise=0.1, method="matrix_free", samples=64)
    free._check_memory(10**9)  # no max_memory: no bound
    with pytest.raises(TypeError, match="max_memory"):
        ngp.condition(net, X[:3], X[:3, :1], noise=0.1, method="matrix_free", max_memory="lots")


def test_memory_estimate_counts_the_outputs():
    """The estimator's per-sample arrays carry a block per output: 16 outputs at 1000 training rows grew the peak by
    1.25 GB where the estimate (one output's) said 0.89 (benchmarks/results/matrix_free_memory_outputs.json); each
    output beyond the first now adds BYTES_PER_OUTPUT_ROW per training and per test row."""
    from ngp import _conditioned_mf as cmf

    rng = np.random.default_rng(0)
    X = rng.normal(size=(5, 2))
    one, many = (ngp.condition(ngp.MLP(3, 16, out_dim=k), X, rng.normal(size=(5, k)), noise=0.1,
                               method="matrix_free") for k in (1, 16))
    per_row, per_test_row = cmf.BYTES_PER_OUTPUT_ROW
    assert many.memory_estimate(7) - one.memory_estimate(7) == 15 * (per_row * 5 + per_test_row * 7)


@pytest.mark.filterwarnings("ignore::ngp.ExpansionWarning")  # a narrow network: outside the validated regime
def test_a_short_last_batch_runs_padded_to_the_batch_size(monkeypatch):
    """``predict(..., batch_size=b)`` pads a last batch shorter than ``b`` with copies of its first point, so every
    estimator run has ``b`` test points (one compiled shape: the second shape cost seconds of compilation, 18.0-19.6 s
    against 12.9-13.9 s for 16 training and 100 test points in batches of 32 in a fresh process,
    benchmarks/results/mf_last_batch.json); the padded points are dropped, and the last point gets the numbers it
    gets next to another test point."""
    from ngp import _conditioned_mf as cmf

    rng = np.random.default_rng(0)
    X = rng.normal(size=(8, 2))  # 3 training and 5 test points: batches of 2, 2 and 1 (padded to 2)
    net = ngp.MLP(3, 16, activation="tanh")  # as above: the same compiled programs
    cond = ngp.condition(net, X[:3], X[:3, :1], noise=0.1, method="matrix_free", samples=64)
    sizes, run = [], cmf.mf.matrix_free_posterior
    monkeypatch.setattr(cmf.mf, "matrix_free_posterior",
                        lambda act, blocks, *a, **k: sizes.append(blocks[0][1].shape[0]) or run(act, blocks, *a, **k))
    post = cond.predict(X[3:], batch_size=2)
    assert sizes == [2, 2, 2] and post.mean.shape == post.var.shape == post.mean_se.shape == (5, 1)
    other = cond.predict(X[6:], batch_size=2)  # the last point again, next to a real test point
    assert sizes[3:] == [2]
    for name in ("mean", "var", "mean_se", "var_se"):
        np.testing.assert_allclose(getattr(post, name)[3:], getattr(other, name), rtol=1e-12, err_msg=name)
    for name in ("mean", "var"):
        np.testing.assert_allclose(getattr(post.gp, name)[3:], getattr(other.gp, name), rtol=1e-12, err_msg=name)


@pytest.mark.filterwarnings("ignore::ngp.ExpansionWarning")  # a narrow network: outside the validated regime
def test_a_pickled_condition_keeps_its_estimator_runs(monkeypatch):
    """A pickled matrix-free conditioning loads with its estimator runs: the evidence and a prediction it has made
    come back without running the estimator, equal; a new prediction runs it and agrees with the original's
    (docs/posterior.md, "Saving a conditioned model")."""
    import pickle

    from ngp import _conditioned_mf as cmf

    rng = np.random.default_rng(0)
    X = rng.normal(size=(8, 2))
    net = ngp.MLP(3, 16, activation="tanh")  # as above: the same compiled programs
    cond = ngp.condition(net, X[:3], X[:3, :1], noise=0.1, method="matrix_free", samples=64)
    post = cond.predict(X[3:6], batch_size=2)
    loaded = pickle.loads(pickle.dumps(cond))
    run = cmf.mf.matrix_free_posterior
    monkeypatch.setattr(cmf.mf, "matrix_free_posterior", lambda *a, **k: pytest.fail("the estimator ran"))
    again = loaded.predict(X[3:6], batch_size=2)
    assert loaded.log_evidence == cond.log_evidence and loaded.log_evidence_se == cond.log_evidence_se
    for name in ("mean", "var", "mean_se", "var_se"):
        np.testing.assert_array_equal(getattr(again, name), getattr(post, name), err_msg=name)
    monkeypatch.setattr(cmf.mf, "matrix_free_posterior", run)
    new, ref = loaded.predict(X[6:]), cond.predict(X[6:])
    for name in ("mean", "var", "mean_se", "var_se"):
        np.testing.assert_allclose(getattr(new, name), getattr(ref, name), rtol=1e-14, atol=0, err_msg=name)


def test_expansion_parameter_leaves_out_a_zero_variance_input_as_the_exact_path():
    """An input at the origin with ``C_b = 0`` has zero variance (and ``V = 0``) at every layer: the matrix-free
    path's ``eps = max|V|/(n K^2)`` leaves it out, as the exact path's expansion parameter does (a separate
    computation over the pairs' vertex diagonal), instead of dividing 0 by 0 (it was NaN, with a RuntimeWarning, and
    marked every such result untrusted)."""
    import warnings

    X = np.array([[-1.2, 0.3], [0.0, 0.0], [1.2, -0.5]])
    net = ngp.MLP(3, 16, activation="tanh", C_b=0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # ExpansionWarning is one: none either (eps about 0.1)
        cond = ngp.condition(net, X, np.sin(X[:, :1]), noise=0.1, method="matrix_free", samples=64)
        eps = cond.validity.eps
        exact = net.prior(X).expansion_parameter
    assert np.isfinite(eps) and eps == pytest.approx(exact, rel=1e-12) and exact > 0


@pytest.mark.filterwarnings("ignore::ngp.ExpansionWarning", "ignore::ngp.AccuracyWarning")
def test_large_variances_compile_no_table_as_a_constant():
    """Inputs whose variance needs the capped Mehler orders (here ``K ~ 100``): the compiled kernel and moment
    programs take the 151 MB table as an argument, not as a captured constant (until stop 67 each program held a
    copy: 3.5 GB of constants and a 4.2 GB peak for 188 rows of one feature). A callable activation compiles
    afresh (no program cached by another test); JAX warns about captured constants above the bound set here."""
    import warnings

    import jax
    import jax.numpy as jnp

    net = ngp.MLP(3, 16, activation=ngp.activation(lambda z: jnp.tanh(z), name="tanh_callable"))
    X = np.array([[10.0], [-7.0], [3.0], [0.5]])  # C_W = 1: first-layer variances up to 100
    bound = jax.config.jax_captured_constants_warn_bytes
    jax.config.update("jax_captured_constants_warn_bytes", 20 * 2**20)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            cond = ngp.condition(net, X[:3], X[:3] / 10, noise=0.1, method="matrix_free", samples=64)
            post = cond.predict(X[3:])
    finally:
        jax.config.update("jax_captured_constants_warn_bytes", bound)
    assert np.all(np.isfinite(post.mean)) and np.isfinite(cond.log_evidence)
    assert not [w for w in caught if "constants were captured" in str(w.message)]


def test_with_targets_is_a_new_conditioning_on_the_same_inputs():
    """On the matrix-free path ``with_targets`` conditions again (the estimator's samples carry the targets): the
    same numbers as ``ngp.condition`` with the same samples and seed, and a ``with_width`` copy keeps its width."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(8, 2))
    net = ngp.MLP(3, 16, activation="tanh")  # as above: the same compiled programs
    cond = ngp.condition(net, X[:3], X[:3, :1], noise=0.1, method="matrix_free", samples=64)
    other = cond.with_targets(np.sin(X[:3, 1:]))
    ref = ngp.condition(net, X[:3], np.sin(X[:3, 1:]), noise=0.1, method="matrix_free", samples=64)
    got, want = other.predict(X[3:6]), ref.predict(X[3:6])
    for name in ("mean", "var", "mean_se", "var_se"):
        np.testing.assert_allclose(getattr(got, name), getattr(want, name), rtol=1e-14, atol=0, err_msg=name)
    assert other.log_evidence == pytest.approx(ref.log_evidence, rel=1e-14)
    assert cond.with_width(64).with_targets(np.sin(X[:3, 1:])).n == 64


@pytest.mark.filterwarnings("ignore::ngp.ExpansionWarning")  # a narrow network: outside the validated regime
def test_kept_estimator_runs_are_bounded_in_bytes(monkeypatch):
    """Every estimator run (one per test set or batch) was kept, each with its own training x training blocks: 5
    batches kept 5 runs, and at 1000 training points each holds ~16 MB. The least recently used now go beyond
    RUNS_BYTES; the numbers do not change, and a kept test set is not run again."""
    from ngp import _conditioned_mf as cmf

    rng = np.random.default_rng(0)
    X = rng.normal(size=(13, 2))
    net = ngp.MLP(3, 16, activation="tanh")  # as above: the same compiled programs
    cond = ngp.condition(net, X[:3], X[:3, :1], noise=0.1, method="matrix_free", samples=64)
    whole = cond.predict(X[3:], batch_size=2)
    assert len(cond._runs) == 5  # 256 MiB hold these few
    one = cmf._run_bytes(next(iter(cond._runs.values())))
    monkeypatch.setattr(cmf, "RUNS_BYTES", 2 * one)
    small = ngp.condition(net, X[:3], X[:3, :1], noise=0.1, method="matrix_free", samples=64)
    post = small.predict(X[3:], batch_size=2)
    assert len(small._runs) == 2
    for name in ("mean", "var", "mean_se", "var_se"):
        np.testing.assert_array_equal(getattr(post, name), getattr(whole, name), err_msg=name)
    assert small.log_evidence == cond.log_evidence
    run = cmf.mf.matrix_free_posterior
    monkeypatch.setattr(cmf.mf, "matrix_free_posterior", lambda *a, **k: pytest.fail("the estimator ran"))
    np.testing.assert_array_equal(small.predict(X[11:]).mean, post.mean[8:])  # the last batch: kept
    monkeypatch.setattr(cmf.mf, "matrix_free_posterior", run)


def test_matrix_free_evidence_warns_and_arguments_are_checked_like_the_exact_path():
    """Found by probing the matrix-free path: its log_evidence outside the trusted regime (targets x 1e3: 6.6e9
    against the GP's -6.9e5) came without the exact path's ExpansionWarning; memory_estimate(-5) returned a negative
    number of bytes; duplicate training inputs with noise = 0 passed condition and failed at the first prediction;
    post.gp.cov raised a raw einsum error (no test x test block on this path: None, like post.cov)."""
    import warnings

    rng = np.random.default_rng(1)
    X, Z = rng.normal(size=(6, 2)), rng.normal(size=(2, 2))
    net = ngp.MLP(2, 16, activation="tanh")
    Y = 1e3 * np.sin(X[:, :1])
    cond = ngp.condition(net, X, Y, noise=0.1, method="matrix_free", samples=256)
    with pytest.warns(ngp.ExpansionWarning, match="outside its validated regime"):
        assert cond.log_evidence > 1e9
    with pytest.raises(ValueError, match="n_test: must be >= 0"):
        cond.memory_estimate(-5)
    with pytest.raises(TypeError, match="n_test"):
        cond.memory_estimate(2.5)
    with pytest.raises(np.linalg.LinAlgError, match="X_train: duplicate training inputs"):
        ngp.condition(net, X[[0, 0, 1]], Y[[0, 0, 1]], noise=0.0, method="matrix_free")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ngp.ExpansionWarning)
        post = ngp.condition(net, X, np.sin(X[:, :1]), noise=0.1, method="matrix_free", samples=256).predict(Z)
    assert post.cov is None and post.gp.cov is None and post.gp.cov_test is None


def test_matrix_free_refuses_exactly_what_the_exact_path_refuses():
    """The matrix-free path decided singularity by its own test (the smallest Cholesky pivot against their sum, a
    1-norm reciprocal condition number against 1e-12 / N): it accepted a near-duplicate at jitter 1e-12 (reciprocal
    condition number 2.2e-13, which the exact path refuses) and returned a mean of -204 +- 85 where the GP's is -0.50,
    and it refused 60 inputs in 300 dimensions with a near-duplicate (1.2e-11, which the exact path accepts). Both
    now take the exact path's test and message."""
    import warnings

    rng = np.random.default_rng(10)
    net = ngp.MLP(depth=2, width=32, activation="tanh", C_W=1.5, C_b=0.1)
    Xb = rng.normal(size=(12, 3))
    XA = np.vstack([Xb, Xb[:1] + [[1e-6, 0.0, 0.0]]])
    Y = np.sin(XA.sum(1))[:, None] + np.r_[np.zeros(12), 0.01][:, None]
    for method in ("exact", "matrix_free"):
        with pytest.raises(np.linalg.LinAlgError, match=r"X_train: the training kernel .* singular .* 2\.\d+e-13"):
            ngp.condition(net, XA, Y, noise=0.0, jitter=1e-12, method=method, samples=64).predict(Xb[:2])
    rng = np.random.default_rng(1)
    net = ngp.MLP(depth=2, width=32, activation="tanh", C_W=2.0, C_b=0.0)
    Xb = rng.normal(size=(60, 300))
    Xb /= np.linalg.norm(Xb, axis=1, keepdims=True) / np.sqrt(300)
    XB = rng.normal(size=(2, 300))
    e = rng.normal(size=300)
    XA = np.vstack([Xb, Xb[:1] + 1e-4 * e / np.linalg.norm(e)])
    Y = np.vstack([0.5 * rng.normal(size=(60, 1)), np.zeros((1, 1))])
    Y[-1] = Y[0]
    w = np.linalg.eigvalsh(np.asarray(net.prior(XA).K))
    assert 1e-12 < w[0] / w[-1] < 1e-10
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ngp.ExpansionWarning)
        exact = ngp.condition(net, XA, Y, noise=0.0).gp.predict(XB)
        mf = ngp.condition(net, XA, Y, noise=0.0, method="matrix_free", samples=64).predict(XB)
    # the two solves agree to their rounding at this conditioning, ~eps / rcond (1.4e-6 relative measured)
    np.testing.assert_allclose(mf.gp.mean, exact.mean, rtol=10 * np.finfo(float).eps * w[-1] / w[0])
    assert np.all(np.isfinite(mf.mean))
