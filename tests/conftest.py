import ctypes
import gc
import os

import jax
import pytest

jax.config.update("jax_enable_x64", True)
# the CLI keeps compiled programs on disk (~/.cache/ngp/jax); tests run without it (reproducible timings)
os.environ.setdefault("NGP_CACHE_DIR", "")

#: Resident memory (MB) above which JAX's compiled programs are dropped after a test module.
RELEASE_ABOVE_MB = 2500


def _rss_mb() -> float:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _return_freed_memory():
    """Hand the heap's free pages back to the system (glibc ``malloc_trim``; a no-op elsewhere)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


@pytest.fixture(scope="module", autouse=True)
def _release_compiled_programs():
    """After each test module, return freed heap pages to the system; drop JAX's compiled programs
    only when the process still holds more than ``RELEASE_ABOVE_MB``. Without either, the suite's
    memory grows with every module's array shapes (peak 5.3 GB); dropping the programs costs their
    recompilation in later modules, and without returning the freed pages the resident memory never
    falls below the threshold again, so the programs were dropped after nearly every module."""
    yield
    gc.collect()
    _return_freed_memory()
    if _rss_mb() > RELEASE_ABOVE_MB:
        jax.clear_caches()
        gc.collect()
        _return_freed_memory()
