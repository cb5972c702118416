"""The samplers' normal draws: a program of their own, shared by networks of equal shapes, the same numbers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ngp
from ngp import _normals
from ngp._sampling import network_keys


@pytest.mark.parametrize("method", ["weights", "conditional"])
def test_sampled_networks_are_the_sampler_on_an_exact_draw(method):
    """``sample_networks`` draws its normals in a program of their own: every network must be the sampler
    applied to ``jax.random.normal(key, (normal_count,))`` of its own key."""
    net = ngp.MLP(3, 6, activation="tanh", C_W=1.4, C_b=0.1)
    X = np.random.default_rng(1).normal(size=(4, 2))
    got = ngp.sample_networks(net, X, 5, seed=2, method=method, batch_size=4)
    m = net.normal_count(2, 4, method)
    exact = jax.vmap(lambda k: jax.random.normal(k, (m,), jnp.float64))(network_keys(2, 5))
    z, G = jax.jit(jax.vmap(net.sampler(2, method, from_normals=True), in_axes=(0, None)))(exact, jnp.asarray(X))
    np.testing.assert_allclose(got.outputs, z, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(got.metric, G, rtol=1e-12, atol=1e-14)


def test_networks_of_equal_shapes_share_the_draw_program():
    X = np.random.default_rng(0).normal(size=(3, 2))
    a, b = ngp.MLP(2, 9, activation="tanh"), ngp.MLP(2, 9, activation="erf", C_W=1.3)
    assert a.normal_count(2, 3, "weights") == b.normal_count(2, 3, "weights")
    ngp.sample_networks(a, X, 4, seed=1, batch_size=4)
    before = _normals.draws._cache_size()
    ngp.sample_networks(b, X, 4, seed=1, batch_size=4)
    assert _normals.draws._cache_size() == before
