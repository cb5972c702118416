"""Draws from the prior of actual random networks (the brute-force reference).

Two exact samplers of the same distribution, both defined by the network's layer steps
(:meth:`ngp.Network.sampler`):

* ``method="weights"``: draw every weight and bias and run the forward pass
  (``O(n^2 N)`` per layer and network).
* ``method="conditional"``: draw each dense step's outputs from their exact conditional law
  given its input, rows i.i.d. ``N(0, G_hat)`` with the stochastic metric
  ``G_hat = C_b + (C_W / n_l) sum_j s(z_j) s(z_j)^T`` (``docs/theory.md``, "Conventions");
  ``O(n N^2)`` per layer, much cheaper for wide layers and few inputs.
"""

from __future__ import annotations

import collections
import threading

import jax
import numpy as np

from ._validate import as_inputs, check_seed, count, device, memory_bytes, pad_to
from ._results import result

__all__ = ["NetworkSamples", "sample_networks", "SAMPLING_MEMORY", "check_sampling_memory", "sampling_bytes",
           "network_keys"]

#: Default memory budget (bytes) of one sampling batch plus the returned arrays.
SAMPLING_MEMORY = 4 * 1024**3


@result
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


def network_keys(seed: int, S: int) -> np.ndarray:
    """The ``S`` per-network PRNG keys ``jax.random.split(jax.random.PRNGKey(seed), S)`` as a NumPy
    array ``(S, 2)``. With JAX's partitionable threefry (its default) the first ``S`` keys of a split
    into more are the same keys, so the split is compiled for powers of 2 only (one program per
    octave instead of one per ``S``) and sliced on the host."""
    key = jax.random.PRNGKey(int(seed))
    if not jax.config.jax_threefry_partitionable:
        return np.asarray(jax.random.split(key, S))
    return np.asarray(jax.random.split(key, 1 << max(0, (S - 1).bit_length())))[:S]


#: Peak working memory of a sampling batch in units of its networks' normals (``memory_per_network``), measured at
#: stop 93 (fresh processes, peak RSS over the batch size): 0.98x twice the normals with ``method="conditional"``,
#: 1.7x twice them with ``"weights"`` (its weight matrices' random bits and products live beside the normals).
WORKING_FACTOR = {"conditional": 2.0, "weights": 3.5}


def sampling_bytes(net, n0: int, N: int, method: str, batch: int, total: int) -> int:
    """Estimated bytes of a sampling batch of ``batch`` networks on ``N`` inputs (:data:`WORKING_FACTOR` times
    their normals) plus ``total`` networks' results (outputs and metrics, float64)."""
    return int(WORKING_FACTOR[method] * net.memory_per_network(n0, N, method) * batch
               + 8 * total * N * (N + net.out_dim))


def check_sampling_memory(net, n0: int, N: int, method: str, batch: int, total: int, limit: int, what: str):
    """``MemoryError`` with the estimate (:func:`sampling_bytes`) when a sampling batch plus the results would
    exceed ``limit``."""
    per = net.memory_per_network(n0, N, method)
    need = sampling_bytes(net, n0, N, method, batch, total)
    if need > limit:
        raise MemoryError(
            f"{what}: {total} networks of widths {list(net.widths) or '-'} on {N} inputs need about "
            f"{need / 1024**3:.3g} GiB (> max_memory={limit / 1024**3:.3g} GiB; one network's normals: "
            f"{per / 1024**2:.3g} MiB). Use smaller widths, fewer inputs or samples, a smaller batch_size, "
            + ("method='conditional', " if method == "weights" else "")
            + "or raise max_memory if the machine has the memory."
        )


def sample_networks(net, X, num_samples: int, *, seed: int = 0, method: str = "weights",
                    batch_size: int = 256, max_memory: float = SAMPLING_MEMORY) -> NetworkSamples:
    """Draw ``num_samples`` independent random networks with ``net``'s prior and evaluate them on ``X``.

    Args:
        net: a network (:class:`ngp.MLP`, :class:`ngp.ResMLP`, :func:`ngp.serial`) ending with a
            dense step.
        X: ``(N, n0)`` inputs.
        num_samples: number of networks ``S``.
        seed: non-negative integer seed (results are reproducible).
        method: ``"weights"`` (literal weight matrices) or ``"conditional"`` (exact
            conditional-Gaussian layer sampler; same distribution, cheaper when
            ``N`` is small compared with the widths).
        batch_size: networks drawn per vectorised batch (memory control).
        max_memory: bytes allowed for one batch and the returned arrays (default 4 GiB); above it a
            ``MemoryError`` gives the estimate before any work starts.

    Returns:
        :class:`NetworkSamples` with ``outputs`` ``(S, N, out_dim)`` and ``metric`` ``(S, N, N)``.
        Given the last hidden layer the output layer is Gaussian with covariance ``metric``;
        it is drawn from that exact law in both methods.

    Raises:
        ValueError: bad arguments (named), or draws whose outputs or metrics overflow (not finite): inputs or
            variances too large for the activation, e.g. relu on ``1e200``-scale ``X``; rescale ``X``.

    Precision: the draws run in JAX's precision, float32 unless ``jax_enable_x64`` is set (each draw
    is exact to that rounding; singular metrics, e.g. duplicate inputs or relu with ``C_b = 0``, are
    factorised with a relative jitter of ``1e-13``, or ``1e-5`` in float32). Everything else in ngp
    computes in float64 whatever the flag.
    """
    if method not in ("weights", "conditional"):
        raise ValueError(f"method: expected 'weights' or 'conditional', got {method!r}")
    S = count(num_samples, "num_samples")
    seed = check_seed(seed)
    bs = min(count(batch_size, "batch_size"), S)
    limit = memory_bytes(max_memory)
    Xn = as_inputs(X, "X", in_dim=net.in_dim)
    check_sampling_memory(net, Xn.shape[1], Xn.shape[0], method, bs, S, limit, "sample_networks")
    Xa = device(Xn)
    batched = _batched_sampler(net, Xa.shape[1], method)
    keys = network_keys(seed, S)
    outputs = metric = None  # filled batch by batch (collecting batches and joining them held the results twice)
    bad = 0
    for start in range(0, S, bs):
        k = keys[start:start + bs]
        got = k.shape[0]
        if got < bs:  # pad the last batch: one compiled shape
            k = pad_to(k, bs)
        z, G = (np.asarray(a)[:got] for a in batched(k, Xa))
        if outputs is None:
            outputs = np.empty((S,) + z.shape[1:], dtype=z.dtype)
            metric = np.empty((S,) + G.shape[1:], dtype=G.dtype)
        outputs[start:start + got], metric[start:start + got] = z, G
        bad += int(np.sum(~(np.all(np.isfinite(z), axis=(1, 2)) & np.all(np.isfinite(G), axis=(1, 2)))))
    if bad:
        raise ValueError(
            f"X: {bad} of {S} sampled networks have non-finite outputs or metrics (the pre-activations "
            f"overflow; largest |X| = {np.max(np.abs(Xn)):.3g}): rescale X (e.g. ngp.datasets.standardize) or use "
            "smaller C_W, C_b"
        )
    return NetworkSamples(outputs, metric)


_CACHE_LOCK = threading.Lock()


def cached_per_network(cache: "collections.OrderedDict", size: int, key: tuple, make):
    """``make()`` remembered in ``cache`` under ``key`` (led by a network), keeping the ``size`` most recently
    used entries; an unhashable key (a network holding unhashable objects) is not cached. Thread-safe: the cache is
    read and changed under a lock (another thread's insertion evicted a key between its test and ``move_to_end``:
    a ``KeyError`` with 8 threads over 9 networks), ``make()`` runs outside it."""
    try:
        hash(key)
    except TypeError:
        return make()
    with _CACHE_LOCK:
        if key in cache:
            cache.move_to_end(key)
            return cache[key]
    value = make()
    with _CACHE_LOCK:
        value = cache.setdefault(key, value)  # another thread's, if it made one meanwhile
        cache.move_to_end(key)
        while len(cache) > size:
            cache.popitem(last=False)
    return value


_SAMPLER_CACHE: "collections.OrderedDict" = collections.OrderedDict()


def _batched_sampler(net, n0: int, method: str):
    """``jit(vmap(net.sampler(n0, method)))``, remembered for the last 8 networks (equal networks give the
    same sampler), so repeated calls do not compile it again."""
    return cached_per_network(_SAMPLER_CACHE, 8, (net, repr(net), n0, method),
                              lambda: jax.jit(jax.vmap(net.sampler(n0, method), in_axes=(0, None))))
