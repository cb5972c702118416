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
    X = rng.normal(size=(6, 2))
    net = ngp.MLP(3, 16, activation="tanh")
    B, T = cmf.BYTES_PER_ENTRY[0] + 2 * cmf.BYTES_PER_ENTRY[1], cmf.BYTES_PER_TEST_ENTRY  # depth 3: 2 hidden layers
    limit = B * 3 * 3 + T * 3 * 2  # a batch of two test points fits, three do not
    cond = ngp.condition(net, X[:3], X[:3, :1], noise=0.1, method="matrix_free", samples=64, max_memory=limit)
    assert cond.memory_estimate() == B * 3 * 3 and cond.memory_estimate(3) == B * 3 * 3 + T * 3 * 3
    run = cmf.mf.matrix_free_posterior
    monkeypatch.setattr(cmf.mf, "matrix_free_posterior", lambda *a, **k: pytest.fail("the estimator ran"))
    with pytest.raises(MemoryError, match=r"3 training and 3 test points need about 1\.79e-05 GiB "
                                          r"\(> max_memory=1\.46e-05 GiB"):  # 940 x 9 + 1200 x 9, 940 x 9 + 1200 x 6
        cond.predict(X[3:])
    monkeypatch.setattr(cmf.mf, "matrix_free_posterior", run)
    post = cond.predict(X[3:], batch_size=2)  # batches of 2 and 1: fit (and so does the evidence's run, at 1)
    assert post.mean.shape == (3, 1) and np.isfinite(cond.log_evidence)
    free = ngp.condition(net, X[:3], X[:3, :1], noise=0.1, method="matrix_free", samples=64)
    free._check_memory(10**9)  # no max_memory: no bound
    with pytest.raises(TypeError, match="max_memory"):
        ngp.condition(net, X[:3], X[:3, :1], noise=0.1, method="matrix_free", max_memory="lots")
