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
        # One random-number call per network (each call site compiles its own kernel);
        # the flat vector is cut into the per-layer draws.
        N = X.shape[0]
        if method == "weights":
            shapes = [(widths[l], widths[l + 1]) for l in range(L - 1)] + [(widths[l + 1],) for l in range(L - 1)]
        else:
            shapes = [(N, widths[l + 1]) for l in range(L - 1)]
        shapes.append((N, out))
        sizes = [math.prod(s) for s in shapes]
        flat = jax.random.normal(key, (sum(sizes),), X.dtype)
        offsets = np.cumsum([0] + sizes)
        draws = [flat[offsets[i]:offsets[i + 1]].reshape(shp) for i, shp in enumerate(shapes)]
        if method == "weights":
            h = X
            for layer in range(L - 1):
                n_in = widths[layer]
                W = draws[layer] * math.sqrt(C_W[layer] / n_in)
                b = draws[L - 1 + layer] * math.sqrt(C_b[layer])
                h = act(h @ W + b)
        else:
            G = C_b[0] + C_W[0] * (X @ X.T) / n0
            h = X
            for layer in range(L - 1):
                h = act(_psd_sqrt(G) @ draws[layer])
                G = _metric(h, C_W[layer + 1], C_b[layer + 1])
        if L == 1:
            G = C_b[0] + C_W[0] * (X @ X.T) / n0
        else:
            G = _metric(h, C_W[L - 1], C_b[L - 1])
        z = _psd_sqrt(G) @ draws[-1]  # the output layer integrated exactly given G
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
    bs = min(int(batch_size), int(num_samples))
    for start in range(0, int(num_samples), bs):
        k = keys[start:start + bs]
        got = k.shape[0]
        if got < bs:  # pad the last batch: one compiled shape
            k = jnp.concatenate([k, jnp.repeat(k[:1], bs - got, axis=0)])
        z, G = batched(k, Xa)
        outs.append(np.asarray(z)[:got])
        mets.append(np.asarray(G)[:got])
    return NetworkSamples(np.concatenate(outs), np.concatenate(mets))
