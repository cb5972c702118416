"""The byte-bounded cache of NumPy tables (``ngp._cache.byte_lru``)."""

import threading

import numpy as np
import pytest

from ngp._cache import byte_lru


@pytest.fixture
def table():
    calls = []

    @byte_lru(3000)
    def table(n):
        calls.append(n)
        return np.zeros(n // 8), (np.ones(1),)  # n bytes and one more element of 8 bytes

    table.calls = calls
    return table


def test_results_are_kept_read_only_and_counted(table):
    a = table(800)
    assert table(800) is a and table.calls == [800]
    assert table.cache_bytes() == 808
    with pytest.raises(ValueError):
        a[0][0] = 1.0


def test_least_recently_used_results_go_beyond_the_limit(table):
    table(800), table(1600)
    table(800)  # now the most recent
    table(1200)  # 808 + 1608 + 1208 > 3000: drops 1600, the least recently used
    assert table.cache_bytes() == 808 + 1208
    table(800), table(1600)
    assert table.calls == [800, 1600, 1200, 1600]


def test_a_result_larger_than_the_limit_is_kept_alone(table):
    table(800)
    big = table(8000)
    assert table(8000) is big and table.cache_bytes() == 8008
    table.cache_clear()
    assert table.cache_bytes() == 0


def test_threads_share_one_stored_result(table):
    out = []
    threads = [threading.Thread(target=lambda: out.append(table(400))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stored = table(400)
    assert len(out) == 8 and all(np.array_equal(o[0], stored[0]) for o in out)
    assert table.cache_bytes() == 408  # counted once, however many threads computed it


@pytest.mark.parametrize("shape, dtype", [((3, 5), np.float64), ((7,), np.float32), ((2, 3, 4), np.int64)])
def test_aligned_arrays_start_at_64_bytes(shape, dtype):
    from ngp._cache import aligned_empty, aligned_zeros

    a = aligned_empty(shape, dtype)
    assert a.shape == shape and a.dtype == dtype and a.flags.c_contiguous and a.ctypes.data % 64 == 0
    z = aligned_zeros(shape)
    assert z.ctypes.data % 64 == 0 and z.dtype == np.float64 and not np.any(z)
    assert aligned_empty((0,), dtype).shape == (0,)


def test_frozen_lru_results_are_read_only_and_shared():
    from ngp._cache import frozen_lru

    calls = []

    @frozen_lru(4)
    def rule(m, scale=1.0):
        calls.append(m)
        return np.arange(m) * scale, [np.ones(m)]

    x, (w,) = rule(3, scale=2.0)
    assert rule(3, scale=2.0)[0] is x and calls == [3]
    for a in (x, w):
        with pytest.raises(ValueError):
            a[0] = 5.0


def test_cached_quadrature_rules_are_read_only():
    """Every cached rule of the library is shared and may be read in place by a pending JAX call: none is
    writeable."""
    from ngp import _fourpoint, _gaussian, _residual_cumulants, criticality

    tables = [_gaussian.gauss_hermite(20), _gaussian.padded_rule(300), _gaussian.pruned_tensor_rule(2, 10),
              _fourpoint._rule1d(12), _fourpoint._rule1d_by_weight(12), criticality._rule(16), _gaussian.pruned_tensor_rule(3, 8),
              _residual_cumulants._rule(2, 8)]
    from ngp._cache import arrays

    found = [a for t in tables for a in arrays(t)]
    assert found and not any(a.flags.writeable for a in found)
