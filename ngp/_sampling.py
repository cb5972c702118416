"""Draws from the prior of actual random networks (brute-force reference).

Two exact samplers of the same distribution:

* ``method="weights"``: draw every weight and bias and run the forward pass
  (``O(n^2 N)`` per layer and network).
* ``method="conditional"``: draw layer ``l+1`` given layer ``l`` from its exact
  conditional law, rows i.i.d. ``N(0, G_hat)`` with the stochastic metric
  ``G_hat = C_b + (C_W / n_l) sum_j s(z_j) s(z_j)^T`` (THEORY.md section 0);
  ``O(n N^2)`` per layer, much cheaper for wide layers and few inputs.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from ._validate import as_inputs, check_x64

__all__ = ["NetworkSamples", "sample_networks"]


@dataclasses.dataclass(frozen=True)
class NetworkSamples:
    """Samples of random networks evaluated on the same inputs.

    Attributes:
        outputs: ``(S, N, out_dim)`` network outputs ``z^(L)`` of ``S`` independent networks.
        metric: ``(S, N, N)`` output metric ``G_hat^(L) = C_b + (C_W/n_{L-1}) s(z^(L-1)) s(z^(L-1))^T``,
            the exact covariance of each output neuron given the last hidden layer
            (``E[G_hat] = E[z_i z_i]``; ``n_{L-1} Cov(G_hat_ab, G_hat_cd)`` estimates ``V`` with
            far less noise than products of outputs). For ``depth == 1`` it is the constant
            first-layer kernel.
    """

    outputs: np.ndarray
    metric: np.ndarray


def _metric(h, C_W, C_b):
    # h: (N, n) post-activations of one network
    return C_b + C_W * (h @ h.T) / h.shape[1]


def _make_sampler(net, n0: int, method: str):
    act = net.activation.fn
    widths = (n0,) + tuple(net.widths)
    L = net.depth
    C_W, C_b = net.C_W, net.C_b
    out = net.out_dim

    def one(key, X):
        keys = jax.random.split(key, 2 * L)
        if method == "weights":
            h = X
            for layer in range(L - 1):
                n_in, n_out = widths[layer], widths[layer + 1]
                W = jax.random.normal(keys[2 * layer], (n_in, n_out), X.dtype) * math.sqrt(C_W[layer] / n_in)
                b = jax.random.normal(keys[2 * layer + 1], (n_out,), X.dtype) * math.sqrt(C_b[layer])
                h = act(h @ W + b)
        else:
            G = C_b[0] + C_W[0] * (X @ X.T) / n0
            h = X
            for layer in range(L - 1):
                chol = _psd_sqrt(G)
                xi = jax.random.normal(keys[2 * layer], (X.shape[0], widths[layer + 1]), X.dtype)
                h = act(chol @ xi)
                G = _metric(h, C_W[layer + 1], C_b[layer + 1])
        if L == 1:
            G = C_b[0] + C_W[0] * (X @ X.T) / n0
        else:
            G = _metric(h, C_W[L - 1], C_b[L - 1])
        xi = jax.random.normal(keys[-1], (X.shape[0], out), X.dtype)
        z = _psd_sqrt(G) @ xi  # the output layer integrated exactly given G
        return z, G

    return one


def _psd_sqrt(G):
    """A square root ``R`` with ``R R^T = G`` that tolerates singular PSD matrices.

    Cholesky of ``G + eps I`` with ``eps = 1e-13 * mean(diag G)`` (a relative perturbation far
    below any Monte Carlo precision; much faster than an eigendecomposition for small ``N``).
    """
    G = 0.5 * (G + G.T)
    n = G.shape[-1]
    eps = 1e-13 * jnp.trace(G) / n + 1e-300
    return jnp.linalg.cholesky(G + eps * jnp.eye(n, dtype=G.dtype))


def sample_networks(net, X, num_samples: int, *, seed: int = 0, method: str = "weights",
                    batch_size: int = 256) -> NetworkSamples:
    """Draw ``num_samples`` independent random networks with ``net``'s prior and evaluate them on ``X``.

    Args:
        net: an :class:`ngp.MLP`.
        X: ``(N, n0)`` inputs.
        num_samples: number of networks ``S``.
        seed: integer seed (results are reproducible).
        method: ``"weights"`` (literal weight matrices) or ``"conditional"`` (exact
            conditional-Gaussian layer sampler; same distribution, cheaper when
            ``N`` is small compared with the widths).
        batch_size: networks drawn per vectorised batch (memory control).

    Returns:
        :class:`NetworkSamples` with ``outputs`` ``(S, N, out_dim)`` and ``metric`` ``(S, N, N)``.
        Given the last hidden layer the output layer is Gaussian with covariance ``metric``;
        it is drawn from that exact law in both methods.
    """
    if method not in ("weights", "conditional"):
        raise ValueError(f"method: expected 'weights' or 'conditional', got {method!r}")
    if isinstance(num_samples, bool) or int(num_samples) != num_samples or num_samples < 1:
        raise ValueError(f"num_samples: expected a positive integer, got {num_samples!r}")
    if int(batch_size) < 1:
        raise ValueError(f"batch_size: expected a positive integer, got {batch_size!r}")
    check_x64("sampling networks")
    Xa = jnp.asarray(as_inputs(X, "X", in_dim=net.in_dim))
    # Other architectures (e.g. ngp.ResMLP) provide their own single-network sampler
    # ``one(key, X) -> (outputs (N, out_dim), metric (N, N))``.
    maker = getattr(net, "_make_sampler", None)
    one = maker(Xa.shape[1], method) if maker is not None else _make_sampler(net, Xa.shape[1], method)
    batched = jax.jit(jax.vmap(one, in_axes=(0, None)))
    keys = jax.random.split(jax.random.PRNGKey(int(seed)), int(num_samples))
    outs, mets = [], []
    for start in range(0, int(num_samples), int(batch_size)):
        z, G = batched(keys[start:start + int(batch_size)], Xa)
        outs.append(np.asarray(z))
        mets.append(np.asarray(G))
    return NetworkSamples(np.concatenate(outs), np.concatenate(mets))
