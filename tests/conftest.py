import ctypes
import gc
import os

import jax
import pytest

from ngp.cli._common import FAST_COMPILE_FLAGS, LEGACY_EMITTERS, use_fast_compile_flags  # computes nothing

# Before the first computation (XLA reads XLA_FLAGS once, when the CPU backend starts), the test process
# (and the CLI and notebook subprocesses it starts) compiles with XLA:CPU's legacy emitters and LLVM
# optimisation level 1 (a flag the environment sets already is kept as given): the suite is compile-bound.
# Measured over the whole suite: the legacy emitters, 2231 compilations 263 -> 191 s (pytest 524 -> 474 s);
# level 1 on top, 2586 compilations 194 -> 155 s and 184 -> 149 s in two alternating pairs (pytest
# 452 -> 412 s and 420 -> 397 s); values bitwise identical (docs/getting-started.md, "Compilation time").
use_fast_compile_flags((LEGACY_EMITTERS, *FAST_COMPILE_FLAGS))

# the CLI keeps compiled programs on disk (~/.cache/ngp/jax); tests run without it (reproducible timings)
os.environ.setdefault("NGP_CACHE_DIR", "")
jax.config.update("jax_enable_x64", True)

import ngp  # noqa: E402,F401  (imported here so that its module objects are frozen below)

# Objects alive after the imports (modules, functions, JAX's and NumPy's tables) live to the end:
# moved out of the collector's reach, every full collection skips them (measured on test_steps,
# test_ntk, test_gaussian: 2.94 -> 1.75 s of generation-2 collections in 116 s)
gc.collect()
gc.freeze()

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
