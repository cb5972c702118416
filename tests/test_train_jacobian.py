"""ngp.train.jacobian_penalty against the exact Frobenius norm from jax.jacfwd on random MLPs."""

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ngp.train import jacobian_penalty, jacobian_regularized

from ._digits import load_digits_benchmark

D_IN, HIDDEN, BATCH = 5, 16, 4


def random_mlp(rng, sizes):
    return [
        (jnp.asarray(rng.normal(size=(m, n)) * 1.5 / np.sqrt(m)), jnp.asarray(0.3 * rng.normal(size=n)))
        for m, n in zip(sizes[:-1], sizes[1:])
    ]


def apply_mlp(params, x):
    h = x.reshape(x.shape[0], -1)
    for W, b in params[:-1]:
        h = jnp.tanh(h @ W + b)
    W, b = params[-1]
    return h @ W + b


def per_example_jacobians(params, x):
    """(B, C, D) from jax.jacfwd of the single-example network: the independent reference."""
    return jax.vmap(jax.jacfwd(lambda xi: apply_mlp(params, xi[None])[0]))(x)


@jax.jit
def exact_penalty(params, x):
    J = per_example_jacobians(params, x)
    return 0.5 * jnp.mean(jnp.sum(J.reshape(J.shape[0], J.shape[1], -1) ** 2, axis=(1, 2)))


penalty = jax.jit(partial(jacobian_penalty, apply_mlp), static_argnames="num_projections")


def setup(C, seed=0):
    rng = np.random.default_rng(seed)
    return random_mlp(rng, [D_IN, HIDDEN, HIDDEN, C]), jnp.asarray(rng.normal(size=(BATCH, D_IN)))


@pytest.mark.parametrize("C", [1, 10, 100])
def test_exact_mode_matches_jacfwd(C):
    params, x = setup(C)
    got = penalty(params, x, num_projections=None)
    want = exact_penalty(params, x)
    assert abs(float(got) - float(want)) <= 1e-10 * float(want)


def test_exact_mode_gradient_in_params_matches_jacfwd():
    params, x = setup(10, seed=3)
    got = jax.jit(jax.grad(lambda p: penalty(p, x, num_projections=None)))(params)
    want = jax.jit(jax.grad(exact_penalty))(params, x)
    for g, w in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want)):
        np.testing.assert_allclose(g, w, rtol=1e-10, atol=1e-12)


def test_inputs_with_trailing_shape():
    params, _ = setup(3, seed=4)
    x = jnp.asarray(np.random.default_rng(5).normal(size=(BATCH, 1, D_IN)))  # e.g. images: apply_fn flattens
    got = penalty(params, x, num_projections=None)
    assert abs(float(got) - float(exact_penalty(params, x))) <= 1e-10 * float(got)


def projection_variance(params, x, num_projections):
    """Variance of the estimate from the formula 2 (C tr A^2 - (tr A)^2)/(C + 2) per draw, A = J J^T."""
    J = per_example_jacobians(params, x)
    A = jnp.einsum("bcd,bed->bce", J, J)
    C = A.shape[1]
    trA = jnp.trace(A, axis1=1, axis2=2)
    trA2 = jnp.sum(A * A, axis=(1, 2))
    per_example = 2 * (C * trA2 - trA**2) / (C + 2)
    return float(0.25 * jnp.sum(per_example) / (x.shape[0] ** 2 * num_projections))


@pytest.mark.parametrize("C,num_projections", [(1, 1), (10, 1), (100, 3)])
def test_projection_estimator_unbiased_with_predicted_variance(C, num_projections):
    params, x = setup(C, seed=1)
    n = 4000
    keys = jnp.asarray(np.random.default_rng(7).integers(0, 2**32, size=(n, 2), dtype=np.uint32))  # raw threefry keys
    est = np.asarray(jax.jit(jax.vmap(lambda k: penalty(params, x, k, num_projections=num_projections)))(keys))
    exact = float(exact_penalty(params, x))
    var_formula = projection_variance(params, x, num_projections)
    mean, var = est.mean(), est.var(ddof=1)
    if C == 1:  # the projection is +-1: exact for every key
        assert var_formula == 0.0
        np.testing.assert_allclose(est, exact, rtol=1e-12)
        return
    se_mean = np.sqrt(var / n)
    z = (mean - exact) / se_mean
    assert abs(z) < 4, (mean, exact, se_mean)
    # sample variance vs formula; s.e. of the sample variance from the fourth central moment
    m4 = np.mean((est - mean) ** 4)
    se_var = np.sqrt((m4 - var**2) / n)
    assert abs(var - var_formula) < 4 * se_var, (var, var_formula, se_var)
    assert se_var < 0.2 * var_formula  # the check has power: a wrong variance by 2x would fail


def test_regularized_loss_is_loss_plus_lambda_penalty():
    params, x = setup(10, seed=2)
    y = jax.nn.one_hot(jnp.arange(BATCH) % 10, 10)
    key = jax.random.PRNGKey(3)

    def xent(out, y):
        return -jnp.mean(jnp.sum(y * jax.nn.log_softmax(out), axis=-1))

    f = jacobian_regularized(xent, apply_mlp, lambda_jr=0.05, num_projections=2)
    want = xent(apply_mlp(params, x), y) + 0.05 * penalty(params, x, key, num_projections=2)
    value, grads = jax.jit(jax.value_and_grad(f))(params, x, y, key)
    np.testing.assert_allclose(value, want, rtol=1e-12)
    assert all(np.all(np.isfinite(g)) for g in jax.tree_util.tree_leaves(grads))


def test_bad_arguments_name_the_argument():
    params, x = setup(3)
    with pytest.raises(ValueError, match="num_projections"):
        jacobian_penalty(apply_mlp, params, x, jax.random.PRNGKey(0), num_projections=0)
    with pytest.raises(TypeError, match="num_projections"):
        jacobian_penalty(apply_mlp, params, x, jax.random.PRNGKey(0), num_projections=1.5)
    with pytest.raises(ValueError, match="key"):
        jacobian_penalty(apply_mlp, params, x)
    with pytest.raises(ValueError, match="lambda_jr"):
        jacobian_regularized(lambda o, y: 0.0, apply_mlp, lambda_jr=-1.0)
    with pytest.raises(ValueError, match="apply_fn"):
        jacobian_penalty(lambda p, x: jnp.sum(x), params, x, num_projections=None)
    # a bare seed met JAX's key checks deep inside ("invalid PRNG key data"); None as apply_fn "not callable"
    with pytest.raises(TypeError, match=r"key: expected a jax.random key"):
        jacobian_penalty(apply_mlp, params, x, 3)
    with pytest.raises(TypeError, match=r"apply_fn: expected a callable"):
        jacobian_penalty(None, params, x, jax.random.PRNGKey(0))
    assert np.isfinite(float(jacobian_penalty(apply_mlp, params, x, jax.random.key(0))))  # a typed key is a key


def test_integer_inputs_are_taken_as_floats():
    """Integer inputs (pixel values) ended in a raw JAX float0 error; their penalty is now the float inputs'."""
    params, x = setup(3)
    xi = jnp.round(3 * x).astype(jnp.int32)
    assert jacobian_penalty(apply_mlp, params, xi, num_projections=None) == jacobian_penalty(
        apply_mlp, params, xi.astype(float), num_projections=None)


def test_digits_short_run_lowers_the_jacobian_norm():
    """CI-sized version of benchmarks/train_digits.py (200 steps, one seed): only robust effects."""
    pytest.importorskip("sklearn")
    pytest.importorskip("optax")
    td = load_digits_benchmark()
    X_train, y_train, X_test, y_test = td.load_split()
    X_test, y_test = jnp.asarray(X_test), jnp.asarray(y_test)
    steps = 200
    acc, fgsm_acc, norm = {}, {}, {}
    for lam in (0.0, 0.1):
        params = td.train(0, (X_train, y_train), steps, td.sgd(td.step_schedule(steps, (0.5, 0.75))), lambda_jr=lam)[0]
        acc[lam] = float(td._accuracy(params, X_test, y_test))
        fgsm_acc[lam] = float(td._accuracy(params, td._fgsm(params, X_test, y_test, 0.1), y_test))
        norm[lam] = float(td._jacobian_norm(params, X_test))
    assert acc[0.0] > 0.9 and acc[0.1] > 0.85, acc
    assert norm[0.1] < 0.5 * norm[0.0], norm
    assert fgsm_acc[0.1] > fgsm_acc[0.0], fgsm_acc
