"""Independent host jobs on two threads (ngp._threads): order, precision scope, errors, nesting, and the
four-point table's values unchanged by the threads."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ngp
from ngp import _finite, _threads
from ngp._threads import thread_map


@pytest.fixture
def two_threads(monkeypatch):
    monkeypatch.setattr(_threads, "THREADS", 2)


def test_results_in_the_order_of_the_jobs(two_threads):
    assert thread_map(lambda i: i * i, range(20)) == [i * i for i in range(20)]
    assert thread_map(lambda i: i, []) == []


def test_workers_keep_the_callers_float64_scope(two_threads):
    """``jax.enable_x64`` is thread-local: a job run in a worker computes in the caller's precision."""
    dtypes = lambda: thread_map(lambda _: jnp.asarray(np.ones(2)).dtype, range(4))  # noqa: E731
    with jax.enable_x64(True):
        assert dtypes() == [jnp.float64] * 4
    with jax.enable_x64(False):
        assert dtypes() == [jnp.float32] * 4


def test_the_first_failing_job_raises(two_threads):
    def job(i):
        if i in (3, 5):
            raise ValueError(f"job {i}")
        return i

    with pytest.raises(ValueError, match="job 3"):
        thread_map(job, range(8))


def test_warnings_of_jobs_on_ngps_threads_point_at_the_callers_line(two_threads):
    """A warning that ngp raises in a job on one of its threads (a pool job, nested or not, or the background
    thread) points at the user's line that started the work, as on the caller's thread: the thread's own stack
    has no frame of the user's (before, Python attributed it to concurrent.futures, and its filter showed the
    same text again for that new location). Jobs that ngp runs on the caller's thread walk the stack as before."""
    import functools
    import inspect
    import warnings

    from ngp._validate import warn

    job = functools.partial(warn, category=ngp.CostWarning)  # a job without a frame of its own outside ngp
    nested = functools.partial(thread_map, job)
    m = "from a job"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        line = inspect.currentframe().f_lineno + 1
        thread_map(job, [m] * 3)
        thread_map(nested, [[m, m], [m]])
        _threads.in_background(job, m).result()
        with pytest.MonkeyPatch.context() as one:
            one.setattr(_threads, "THREADS", 1)
            thread_map(job, [m] * 2)
    assert [(w.filename, w.lineno - line) for w in caught] == [(__file__, 0)] * 3 + [(__file__, 1)] * 3 + [
        (__file__, 2), (__file__, 5), (__file__, 5)]
    assert all(w.category is ngp.CostWarning and str(w.message) == m for w in caught)
    with warnings.catch_warnings(record=True) as caught:  # Python's filter: once per location, as for one thread
        warnings.simplefilter("default")
        for _ in range(3):
            thread_map(job, [m] * 4)
    assert len(caught) == 1


def test_nested_calls_do_not_wait_on_the_pool(two_threads):
    """A job that maps jobs itself runs them in its own thread (the pool's threads are all busy)."""
    out = thread_map(lambda i: thread_map(lambda j: 10 * i + j, range(3)), range(4))
    assert out == [[10 * i + j for j in range(3)] for i in range(4)]


def test_a_forked_process_makes_its_own_pool(two_threads, monkeypatch):
    """A child forked after the pool started has none of its threads: a new process id gets a new pool."""
    assert thread_map(lambda i: i, range(3)) == [0, 1, 2]
    first = _threads._pool()
    monkeypatch.setattr(_threads.os, "getpid", lambda: -1)
    assert _threads._pool() is not first
    assert thread_map(lambda i: i + 1, range(3)) == [1, 2, 3]


def test_four_point_table_equal_with_one_and_two_threads(monkeypatch):
    """The chunks of a four-point table run on two threads; values and error estimates are bitwise those of
    one thread (four chunks of tanh multisets on the adaptive rule)."""
    monkeypatch.setattr(_finite, "TABLE_CHUNK", 40)
    rng = np.random.default_rng(3)
    X = rng.normal(size=(6, 2))
    K = np.asarray(ngp.MLP(2, 8, activation="tanh", C_W=1.5, C_b=0.1).prior(X).K)
    ms = np.array(list(itertools.combinations_with_replacement(range(6), 4)))  # 126 multisets
    adaptive = []
    original = _finite.multiset_expectations

    def counted(act, K, rows, **kw):
        adaptive.append(rows.shape[0])
        return original(act, K, rows, **kw)

    monkeypatch.setattr(_finite, "multiset_expectations", counted)
    out = {}
    for n in (1, 2):
        monkeypatch.setattr(_threads, "THREADS", n)
        out[n] = _finite.FourPointTable(ngp.activation("tanh"), K)._lookup(ms)
    assert len(adaptive) == 8 and sum(adaptive) > 100  # four chunks per run, most rows on the adaptive rule
    for a, b in zip(out[1], out[2]):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_in_background_returns_raises_and_keeps_the_precision(two_threads):
    """A background job's value, its exception (raised by ``result``), and the caller's float64 scope; with one
    thread it runs at once, in the caller's thread."""
    import threading

    assert _threads.in_background(lambda a, b: a + b, 2, 3).result() == 5
    with pytest.raises(ValueError, match="boom"):
        _threads.in_background(lambda: (_ for _ in ()).throw(ValueError("boom"))).result()
    with jax.enable_x64(True):
        assert _threads.in_background(lambda: jnp.asarray(np.ones(2)).dtype).result() == jnp.float64
    with jax.enable_x64(False):
        assert _threads.in_background(lambda: jnp.asarray(np.ones(2)).dtype).result() == jnp.float32
    here = threading.get_ident()
    assert _threads.in_background(threading.get_ident).result() != here
    _threads.THREADS = 1  # restored by the fixture's monkeypatch
    assert _threads.in_background(threading.get_ident).result() == here


def _layer_chain(layer):
    out = [layer]
    while getattr(out[-1], "prev", None) is not None:
        out.append(out[-1].prev)
    return out


def test_vertex_components_equal_with_one_and_two_threads(monkeypatch):
    """A depth-4 network's vertex components with test indices (each layer's four-point values in the background
    while the layers below prepare theirs) and their error estimates are bitwise those of one thread."""
    from ngp._vertex_error import component_errors

    rng = np.random.default_rng(5)
    X = rng.normal(size=(7, 2))
    quads = np.array([[a, b, c, d] for a in range(4) for b in range(4) for c in range(4, 7) for d in range(7)])
    out, started = {}, []
    original = ngp._cumulants.in_background
    monkeypatch.setattr(ngp._cumulants, "in_background", lambda *a: started.append(1) or original(*a))
    for n in (1, 2):
        monkeypatch.setattr(_threads, "THREADS", n)
        layer = ngp.MLP(4, 16, activation="tanh", C_W=1.4, C_b=0.1).prior(X, warn=False)._cumulants[-1]
        p, q = ngp._cumulants.canonical_quads(quads, layer.pairs)
        out[n] = (layer._components_pq(p, q), component_errors(layer, p, q))
        # the error recursion took the distinct rows the values' recursion left on each layer
        assert not any("_distinct_rows" in c.__dict__ for c in _layer_chain(layer))
    assert len(started) == 4  # layers 3 and 4 (layer 2 sits on the Gaussian first layer), per run
    for a, b in zip(out[1], out[2]):
        assert np.all(np.isfinite(a)) and np.any(a != 0)
        np.testing.assert_array_equal(a, b)


def test_a_failing_lower_layer_waits_for_the_background_job(monkeypatch):
    """When the layers below raise, the layer's four-point values started in the background have finished by the
    time the exception reaches the caller: no work of a failed call goes on after it."""
    import time

    monkeypatch.setattr(_threads, "THREADS", 2)
    rng = np.random.default_rng(6)
    X = rng.normal(size=(5, 2))
    layer = ngp.MLP(3, 16, activation="tanh").prior(X, warn=False)._cumulants[-1]
    done = []
    fresh = layer.map.fresh

    def slow_fresh(quads):
        time.sleep(0.5)
        out = fresh(quads)
        done.append(1)
        return out

    def failing(p, q):
        raise ValueError("below")

    monkeypatch.setattr(layer.map, "fresh", slow_fresh)
    monkeypatch.setattr(layer.prev, "_components_pq", failing)
    p, q = ngp._cumulants.canonical_quads(np.array([[0, 1, 2, 3], [0, 0, 4, 4]]), layer.pairs)
    with pytest.raises(ValueError, match="below"):
        layer._components_pq(p, q)
    assert done == [1]


def test_per_network_caches_are_thread_safe():
    """The per-network caches (samplers, the fit's objectives, importance-sampling statistics) were unlocked: with 8
    threads over 9 keys, another thread's insertion evicted a key between one thread's test and its move_to_end (a
    KeyError; 26-55 of 160000 calls here before the lock)."""
    import collections
    import concurrent.futures
    import sys

    from ngp._sampling import cached_per_network

    cache, errors = collections.OrderedDict(), []

    def worker(t):
        for i in range(20000):
            try:
                cached_per_network(cache, 8, ((t * 5 + i * 7) % 9,), object)
            except Exception as exc:  # noqa: BLE001 - any failure is the finding
                errors.append(exc)

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            list(pool.map(worker, range(8)))
    finally:
        sys.setswitchinterval(interval)
    assert not errors, errors[:3]
    assert len(cache) == 8
