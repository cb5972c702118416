"""Compiled pieces shared across input sizes give the same numbers as the unpadded computation.

The Mehler pair matrix and the 1-D diagonal derivatives pad a concrete kernel to a bucketed size, and the
four-point batches gather their covariance blocks outside the compiled program, so that one compilation
serves many numbers of inputs (issue 16: `ngp regress` time). The traced path (under ``jax.jit``) does
none of that; both must agree to round-off, and with an independent 2-D Gauss-Hermite rule.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ngp

from ngp._activations import activation
from ngp._finite import _diag_derivatives, _product_block, four_point_values
from ngp._gaussian import _pair_matrix_jit, bucket, expect_1d, kernel_bucket, padded_rule, pair_gh, pair_matrix


#: multisets of two equality patterns, (1, 1, 1, 1) and (2, 2) (few compilations)
_MS = np.array([[0, 1, 2, 3], [1, 1, 3, 3], [0, 2, 3, 4], [0, 0, 4, 4]])


def _kernel(N, seed=0):
    X = np.random.default_rng(seed).normal(size=(N, 3))
    return 0.6 * X @ X.T / 3 + 0.1  # variances <~ 1.5: both quadratures accurate to ~1e-10


def test_bucket_sizes():
    assert [bucket(m, 32) for m in (1, 32, 33, 48, 49, 64, 65, 100)] == [32, 32, 48, 48, 64, 64, 96, 128]
    # the kernels' sizes: powers of 2 up to 256 (one program per doubling), then the 1.5x steps
    sizes = (1, 32, 33, 48, 64, 65, 100, 129, 256, 257, 384, 385)
    assert [kernel_bucket(m) for m in sizes] == [32, 32, 64, 64, 64, 128, 128, 256, 256, 384, 384, 512]


@pytest.mark.parametrize("order", [(0, 0), (2, 0)])
def test_pair_matrix_padded_equals_traced_and_2d_rule(order):
    act = activation("tanh")
    f, g = act.derivative(order[0]), act.derivative(order[1])
    K = _kernel(7)
    padded = np.asarray(pair_matrix(f, g, K, terms=300, nodes=600))
    traced = np.asarray(jax.jit(lambda K: pair_matrix(f, g, K, terms=300, nodes=600))(jnp.asarray(K)))
    np.testing.assert_allclose(padded, traced, rtol=0, atol=1e-14)
    d = np.diag(K)
    ref = np.asarray(pair_gh(f, g, d[:, None], d[None, :], K, nodes=80))
    off = ~np.eye(7, dtype=bool)
    # the 2-D rule is the coarser of the two here (tests/test_gaussian.py holds the accuracy checks): measured 1.1e-7
    np.testing.assert_allclose(padded[off], ref[off], rtol=0, atol=1e-6)


def test_pair_matrix_compiles_once_per_bucket():
    act = activation("tanh")
    f = act.derivative(1)
    pair_matrix(f, f, _kernel(5), terms=300, nodes=600)
    before = _pair_matrix_jit._cache_size()
    for N, t in ((9, 310), (20, 350), (31, 380)):  # other sizes and orders of the same buckets
        pair_matrix(f, f, _kernel(N), terms=t, nodes=600)
    assert _pair_matrix_jit._cache_size() == before
    for N in (33, 41, 58, 64):  # one program for 33 to 64 inputs
        pair_matrix(f, f, _kernel(N), terms=300, nodes=600)
    assert _pair_matrix_jit._cache_size() == before + 1


def test_diagonal_derivatives_padded_equal_the_unpadded_rule():
    act = activation("tanh")
    kd = np.diag(_kernel(6))
    x, w = padded_rule(600)
    J_d, H_d = (np.asarray(t) for t in _diag_derivatives(act, jnp.asarray(kd), x, w))
    s, s1, s2, s3, s4 = (act.derivative(k) for k in range(5))
    ref_J = expect_1d(lambda z: s1(z) ** 2 + s(z) * s2(z), kd, nodes=600)
    ref_H = 0.25 * expect_1d(lambda z: 2 * s(z) * s4(z) + 8 * s1(z) * s3(z) + 6 * s2(z) ** 2, kd, nodes=600)
    np.testing.assert_allclose(J_d, np.asarray(ref_J), rtol=0, atol=1e-14)
    np.testing.assert_allclose(H_d, np.asarray(ref_H), rtol=0, atol=1e-13)


def test_four_point_values_concrete_equals_traced():
    act = activation("tanh")
    K = _kernel(5)
    ms = _MS
    concrete = np.asarray(four_point_values(act, K, ms, four_point_order=8))
    traced = np.asarray(jax.jit(lambda K: four_point_values(act, K, ms, four_point_order=8))(jnp.asarray(K)))
    np.testing.assert_allclose(concrete, traced, rtol=0, atol=1e-14)
    # independent check of one entry: <tanh(z_a)^2 tanh(z_b)^2> by the 2-D rule
    a, b = 1, 3
    row = 1
    sq = lambda z: jnp.tanh(z) ** 2  # noqa: E731
    ref = float(pair_gh(sq, sq, K[a, a], K[b, b], K[a, b], nodes=80))
    assert abs(concrete[row] - ref) < 1e-6


def test_four_point_batches_do_not_depend_on_the_number_of_inputs():
    act = activation("tanh")
    ms = _MS
    four_point_values(act, _kernel(5), ms, four_point_order=8)
    before = _product_block._cache_size()
    assert before >= 1
    four_point_values(act, _kernel(11, seed=1), ms, four_point_order=8)  # same index sets, a larger kernel
    assert _product_block._cache_size() == before


def test_numpy_arrays_reach_the_device_without_compiling(caplog):
    """``ngp._validate.device`` (used for ``jnp.asarray`` throughout the library) compiles nothing for a NumPy
    array of a new shape (JAX 0.10's ``jnp.asarray`` compiles a program per shape), with the same dtype and values;
    the first-layer kernel is one compiled program per bucket of input counts (``ngp._kernel._bucketed``)."""
    import logging

    from ngp._kernel import _first_layer_kernel, first_layer_kernel
    from ngp._validate import device

    x = np.arange(7.0 * 13).reshape(7, 13)
    with jax.log_compiles(True), caplog.at_level(logging.WARNING, logger="jax"):
        y = device(x)
        z = device(x.astype(np.float32), dtype=np.float64)
    assert not [r for r in caplog.records if r.getMessage().startswith("Compiling")]
    assert y.dtype == jnp.asarray(x).dtype and np.array_equal(np.asarray(y), x)
    assert z.dtype == jnp.float64 and np.array_equal(np.asarray(z), x)
    before = _first_layer_kernel._cache_size()
    K = first_layer_kernel(x, 1.3, 0.2)
    first_layer_kernel(x + 1.0, 0.7, 0.1)  # other values and hyperparameters: the same program
    x20 = np.arange(20.0 * 13).reshape(20, 13) / 7
    K20 = first_layer_kernel(x20, 1.3, 0.2)  # 20 inputs: the same bucket (32 rows), the same program
    assert _first_layer_kernel._cache_size() == before + 1
    np.testing.assert_allclose(np.asarray(K), 0.2 + 1.3 * x @ x.T / 13, rtol=1e-15)
    np.testing.assert_allclose(np.asarray(K20), 0.2 + 1.3 * x20 @ x20.T / 13, rtol=1e-15)
    assert K.shape == (7, 7) and K20.shape == (20, 20)


@pytest.mark.parametrize("size", [100, 4096])
def test_a_device_array_does_not_change_when_its_numpy_source_is_written(size):
    """JAX's CPU backend takes a 64-byte-aligned NumPy buffer in place even with ``may_alias=False``
    (jax-ml/jax#37830): ``device`` copies writeable arrays, so writing the source later changes nothing; a
    read-only array (a cached table) is read in place."""
    from ngp._cache import aligned_zeros
    from ngp._validate import device

    x = aligned_zeros(size)
    y = device(x)
    x[0] = 1.0
    assert float(y[0]) == 0.0
    x.setflags(write=False)
    assert device(x).unsafe_buffer_pointer() == x.ctypes.data


def test_sampling_an_equal_network_again_does_not_compile():
    from ngp._sampling import _batched_sampler

    X = np.random.default_rng(0).normal(size=(3, 2))
    a = ngp.sample_networks(ngp.MLP(2, 5, activation="tanh", C_W=1.3), X, 4, seed=1)
    fn = _batched_sampler(ngp.MLP(2, 5, activation="tanh", C_W=1.3), 2, "weights")
    before = fn._cache_size()
    assert before == 1
    b = ngp.sample_networks(ngp.MLP(2, 5, activation="tanh", C_W=1.3), X, 4, seed=1)  # a new, equal network
    assert fn._cache_size() == before
    np.testing.assert_array_equal(a.outputs, b.outputs)
    c = ngp.sample_networks(ngp.MLP(2, 5, activation="tanh", C_W=1.4), X, 4, seed=1)  # different C_W: its own
    assert not np.allclose(a.metric, c.metric)


def test_network_keys_are_the_split_keys():
    """Samplers split their PRNG keys at a power-of-2 count and slice (one compiled split per octave):
    the keys, and so every draw, must be those of a split into exactly ``S``."""
    from ngp._sampling import network_keys

    for S in (1, 2, 3, 100, 1000, 1025):
        np.testing.assert_array_equal(network_keys(7, S), np.asarray(jax.random.split(jax.random.PRNGKey(7), S)))


# ----------------------------------------------------------------------------- the suite's XLA settings
def test_suite_compile_flags_appended_once_keeping_given_values():
    from .conftest import SUITE_COMPILE_FLAGS, with_flags, xla_accepts

    both = " ".join(SUITE_COMPILE_FLAGS)
    assert with_flags("", SUITE_COMPILE_FLAGS) == both
    assert with_flags("--xla_backend_optimization_level=2", SUITE_COMPILE_FLAGS) == (
        "--xla_backend_optimization_level=2 --xla_cpu_use_fusion_emitters=false")
    assert with_flags(both, SUITE_COMPILE_FLAGS) == both
    # a flag this jaxlib does not know would abort XLA: refused before it is set
    assert not xla_accepts("--xla_no_such_flag_in_any_jaxlib=1")


_VALUES_DIGEST = """
import hashlib, jax, numpy as np
jax.config.update("jax_enable_x64", True)
import ngp
rng = np.random.default_rng(0)
X = rng.normal(size=(5, 2))
net = ngp.MLP(depth=2, width=64, activation="gelu")
p = net.prior(X)
h = hashlib.sha256()
for a in (p.K, p.K1, ngp.sample_networks(net, X, 32, seed=1).outputs):
    h.update(np.ascontiguousarray(np.asarray(a, dtype=float)).tobytes())
digest = h.hexdigest()
V = np.asarray(p.V, dtype=float)
V_error = np.asarray(p.V_error, dtype=float)
"""


def test_suite_compile_flags_leave_values_unchanged():
    """The suite runs under its cheaper compile settings (tests/conftest.py); XLA's defaults, set explicitly in
    a subprocess, give the same bytes for K, K1 and network draws, and V (and its error estimate) within 16
    machine epsilons of max |V|: the four-point tile kernel's fused activation code rounds differently under
    the two code generators (measured: at most 1.2e-16 relative for gelu, tanh, erf and swish), a round-off
    far below the quadrature's own error."""
    import io
    import os
    import subprocess
    import sys

    from .conftest import SUITE_COMPILE_FLAGS

    if not all(f in os.environ.get("XLA_FLAGS", "") for f in SUITE_COMPILE_FLAGS):
        pytest.skip("this jaxlib does not accept the suite's compile settings")
    here = {}
    exec(_VALUES_DIGEST, here)
    defaults = "--xla_cpu_use_fusion_emitters=true --xla_backend_optimization_level=2"
    show = "import sys; print(digest); sys.stdout.flush(); np.save(sys.stdout.buffer, np.stack([V, V_error]))"
    r = subprocess.run([sys.executable, "-c", _VALUES_DIGEST + show], capture_output=True, env=dict(os.environ, XLA_FLAGS=defaults), timeout=300)
    assert r.returncode == 0, r.stderr[-2000:].decode()
    head, _, body = r.stdout.partition(b"\n")
    assert head.decode().split()[-1] == here["digest"]
    V, V_error = np.load(io.BytesIO(body))
    tol = 16 * np.finfo(float).eps * np.abs(here["V"]).max()
    assert np.abs(V - here["V"]).max() <= tol
    assert np.abs(V_error - here["V_error"]).max() <= tol


def test_stale_compilation_caches_of_dead_runs_are_removed(tmp_path):
    """A run that was killed leaves its compilation-cache folder behind; the next run removes the folders whose
    process is gone and keeps its own, live runs' and unrelated ones."""
    import os
    import subprocess
    import sys

    from .conftest import remove_stale_caches

    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    dead = int(done.stdout)  # exited: no such process (barring reuse of the id within this test)
    names = [f"ngp-test-xla-{dead}-abc", f"ngp-test-xla-{os.getpid()}-own", f"ngp-test-xla-{os.getppid()}-live",
             "ngp-test-xla-nopid", "other-folder"]
    for name in names:
        (tmp_path / name).mkdir()
        (tmp_path / name / "entry").write_bytes(b"x")
    assert remove_stale_caches(str(tmp_path)) == [str(tmp_path / names[0])]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names[1:])


def test_the_xdist_controller_does_not_load_jax():
    """In a distributed run the controlling process runs no test: the conftest starts JAX (and imports ngp) in
    the workers only, ~0.2 GB less in the suite's memory, which counts every process."""
    import os

    if os.environ.get("PYTEST_XDIST_WORKER") is None:
        pytest.skip("not a pytest-xdist worker")
    maps = f"/proc/{os.getppid()}/maps"  # the worker's parent: the controller
    if not os.path.exists(maps):
        pytest.skip("no /proc on this system")
    with open(maps) as f:
        mapped = f.read()
    assert "python" in mapped  # the controller's own mappings were read
    assert "jaxlib" not in mapped and "xla_extension" not in mapped
    assert jax.config.jax_enable_x64  # and the worker did start JAX, in float64
