import ctypes
import gc
import os
import subprocess
import sys

import jax
import pytest

#: XLA:CPU flags for the test process (and the CLI and notebook subprocesses it starts): the legacy
#: elemental emitters compile ~30% faster than the fusion emitters (whole suite, 2231 compilations:
#: XLA compilation 263 -> 191 s, pytest 524 -> 474 s), and LLVM's optimisation level 1 instead of 2
#: another ~20% (2586 compilations: 194 -> 155 s and 184 -> 149 s in two alternating pairs, pytest
#: 452 -> 412 s and 420 -> 397 s). Prior and posterior values and network draws are bitwise identical
#: and warm four-point quadrature is as fast (docs/getting-started.md, "Compilation time").
FAST_COMPILE_FLAGS = "--xla_cpu_use_fusion_emitters=false --xla_backend_optimization_level=1"


def _xla_accepts(flags: str) -> bool:
    """Whether this jaxlib accepts ``XLA_FLAGS=flags`` (XLA aborts the process on an unknown entry, so
    they are tried in a subprocess, ~2 s)."""
    env = dict(os.environ, XLA_FLAGS=flags)
    try:
        r = subprocess.run([sys.executable, "-c", "import jax.numpy as jnp; jnp.zeros(1).block_until_ready()"],
                           env=env, capture_output=True, timeout=300)
    except (OSError, subprocess.SubprocessError):
        return False
    return r.returncode == 0


# before the first computation: XLA reads XLA_FLAGS once, when the CPU backend starts
# (a flag the environment already sets, to any value, is left as it is)
_given = os.environ.get("XLA_FLAGS", "")
_missing = [f for f in FAST_COMPILE_FLAGS.split() if f.split("=")[0] not in _given]
_flags = " ".join([_given] + _missing).strip()
if _missing and _xla_accepts(_flags):
    os.environ["XLA_FLAGS"] = _flags

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
