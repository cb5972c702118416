"""Random Gaussian blocks and Hoelder scales for the four-point rule checks (tests/test_fourpoint.py,
benchmarks/four_point_rule.py)."""

import jax.numpy as jnp
import numpy as np

from ngp._gaussian import gauss_hermite


def random_block(rng, u, K):
    """A random ``(u, u)`` covariance with diagonal in ``K * [0.6, 1]`` (generic correlations)."""
    A = rng.normal(size=(u, u + 1))
    C = A @ A.T
    d = np.sqrt(np.diag(C))
    s = np.sqrt(K * rng.uniform(0.6, 1.0, size=u))
    return C / np.outer(d, d) * np.outer(s, s)


def holder(act, C, pattern):
    """Hoelder bound ``prod_j E[s(z_j)^4]^(p_j / 4)`` of ``E[prod_j s(z_j)^p_j]``: the scale of an error."""
    x, w = gauss_hermite(200)
    m4 = [np.sum(np.asarray(act.fn(jnp.asarray(np.sqrt(C[j, j]) * x))) ** 4 * w) for j in range(len(pattern))]
    return float(np.prod(np.asarray(m4) ** (np.asarray(pattern) / 4)))
