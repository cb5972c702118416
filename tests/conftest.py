import ctypes
import gc
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

import pytest

#: XLA:CPU settings of the test process (and the CLI and notebook subprocesses it starts): the legacy
#: emitters and LLVM optimisation level 1. The suite is compile-bound, and both make its compilation
#: cheaper with bitwise identical values (measurements in docs/getting-started.md, "Compilation time").
SUITE_COMPILE_FLAGS = ("--xla_cpu_use_fusion_emitters=false", "--xla_backend_optimization_level=1")


def xla_accepts(flags: str) -> bool:
    """Whether this jaxlib starts its CPU backend with ``XLA_FLAGS=flags``. XLA aborts the process on a flag
    it does not know, so this is tried in a subprocess (~0.3 s)."""
    code = "from jaxlib import xla_client; xla_client.make_cpu_client()"
    try:
        r = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, XLA_FLAGS=flags),
                           capture_output=True, timeout=120, check=False)
    except (OSError, subprocess.SubprocessError):
        return False
    return r.returncode == 0


def with_flags(given: str, flags) -> str:
    """``given`` (an ``XLA_FLAGS`` value) with each of ``flags`` appended that it does not set already (a flag
    set there, to any value, is kept as given)."""
    return " ".join([given, *(f for f in flags if f.split("=")[0] not in given)]).strip()


# before the first computation: XLA reads XLA_FLAGS once, when the CPU backend starts
_flags = with_flags(os.environ.get("XLA_FLAGS", ""), SUITE_COMPILE_FLAGS)
if _flags != os.environ.get("XLA_FLAGS", "") and xla_accepts(_flags):
    os.environ["XLA_FLAGS"] = _flags

# the CLI keeps compiled programs on disk (~/.cache/ngp/jax); tests run without it (reproducible timings)
os.environ.setdefault("NGP_CACHE_DIR", "")

# pytest-xdist workers share an on-disk cache of compiled programs for this run only: a fresh folder that the
# controlling process makes and removes (benchmarks/README.md, "Test suite time and memory": in one process
# such a cache saved nothing; across two workers, one loads what the other compiled)
_WORKER = os.environ.get("PYTEST_XDIST_WORKER")  # this worker's name; None in the controlling (or only) process
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
_OWN_CACHE = None
_CACHE_PREFIX = "ngp-test-xla-"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, owned by another user
        return True
    return True


def remove_stale_caches(folder: str) -> list:
    """Remove the compilation-cache folders in ``folder`` left by runs that ended without cleaning up (killed
    or crashed: their names carry the controlling process's id, no longer alive on this machine). Returns the
    removed paths."""
    gone = []
    for name in os.listdir(folder):
        m = re.fullmatch(re.escape(_CACHE_PREFIX) + r"(\d+)-.*", name)
        if m and int(m.group(1)) != os.getpid() and not _alive(int(m.group(1))):
            shutil.rmtree(os.path.join(folder, name), ignore_errors=True)
            gone.append(os.path.join(folder, name))
    return gone


if _WORKER is None and not os.environ.get("NGP_TEST_COMPILATION_CACHE"):
    remove_stale_caches(tempfile.gettempdir())
    _OWN_CACHE = os.environ["NGP_TEST_COMPILATION_CACHE"] = tempfile.mkdtemp(prefix=f"{_CACHE_PREFIX}{os.getpid()}-")


def _start_jax():
    """Float64 numerics, the workers' shared compilation cache, and ``ngp`` imported and frozen."""
    import jax

    jax.config.update("jax_enable_x64", True)
    if _WORKER is not None and os.environ.get("NGP_TEST_COMPILATION_CACHE"):
        jax.config.update("jax_compilation_cache_dir", os.environ["NGP_TEST_COMPILATION_CACHE"])
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    import ngp  # noqa: F401  (imported here so that its module objects are frozen below)

    # Objects alive after the imports (modules, functions, JAX's and NumPy's tables) live to the end:
    # moved out of the collector's reach, every full collection skips them (measured on test_steps,
    # test_ntk, test_gaussian: 2.94 -> 1.75 s of generation-2 collections in 116 s)
    gc.collect()
    gc.freeze()


def is_xdist_controller(config) -> bool:
    """Whether this process is pytest-xdist's controller: it hands tests to workers and runs none."""
    return _WORKER is None and config.getoption("dist", "no") != "no"


def pytest_configure(config):
    # JAX only where tests run: the controller of a distributed run would hold ~0.2 GB of JAX and ngp
    # for nothing (the suite's 4 GB goal counts every process; benchmarks/README.md)
    if not is_xdist_controller(config):
        _start_jax()


def pytest_unconfigure(config):
    if _OWN_CACHE is not None:
        shutil.rmtree(_OWN_CACHE, ignore_errors=True)


#: Memory (GB available) that one test process needs: its own compiled programs up to the threshold below,
#: plus the largest single test's arrays.
GB_PER_WORKER = 3.0


def _available_gb() -> float:
    try:
        with open("/proc/meminfo") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("MemAvailable")) / 1024**2
    except (OSError, StopIteration, ValueError):
        return float("inf")


def pytest_xdist_auto_num_workers(config):
    """``-n auto`` (the default, pyproject.toml): one pytest-xdist worker per usable core, no more than the
    available memory holds at ``GB_PER_WORKER`` each (2 on the 2-core CI machine)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(cores, int(_available_gb() // GB_PER_WORKER)))


#: Resident memory (MB) above which JAX's compiled programs are dropped after a test module: 2500 in a single
#: process, 1500 in each pytest-xdist worker (the suite's 4 GB goal with two workers). The environment
#: variable NGP_TEST_RELEASE_MB overrides it, for measurements: benchmarks/suite_compilations.py.
RELEASE_ABOVE_MB = float(os.environ.get("NGP_TEST_RELEASE_MB", 2500 if _WORKERS <= 1 else 1500))


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


#: Resident memory (MB) above which the programs are dropped after a single test too, without waiting for the
#: module's end: a long module (tests/test_reliability.py) otherwise piles up its programs until one test's
#: compilation (~0.8 GB for a traced finite-width evidence) lands on top of them (a worker at 3.1 GB).
RELEASE_AFTER_TEST_MB = RELEASE_ABOVE_MB + 400


def _release(threshold_mb: float) -> None:
    gc.collect()
    _return_freed_memory()
    if _rss_mb() > threshold_mb:
        import jax

        jax.clear_caches()
        gc.collect()
        _return_freed_memory()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    """After each test's whole protocol (its fixture values released) when the process is above
    ``RELEASE_AFTER_TEST_MB``; the last test of a module leaves it to the module's fixture below. Reading the resident
    memory costs microseconds."""
    yield
    module = getattr(item, "module", None)
    same_module = nextitem is not None and getattr(nextitem, "module", None) is module
    if same_module and module not in _HELD_ANYWAY and _rss_mb() > RELEASE_AFTER_TEST_MB:
        _release(RELEASE_ABOVE_MB)
        if _rss_mb() > RELEASE_AFTER_TEST_MB:  # held by the module's own objects: not again in this module
            _HELD_ANYWAY.add(module)


#: Modules whose memory stayed above ``RELEASE_AFTER_TEST_MB`` after a release (not released after each test).
_HELD_ANYWAY = set()


@pytest.fixture(scope="module", autouse=True)
def _release_compiled_programs():
    """After each test module, return freed heap pages to the system; drop JAX's compiled programs
    only when the process still holds more than ``RELEASE_ABOVE_MB``. Without either, the suite's
    memory grows with every module's array shapes (peak 5.3 GB); dropping the programs costs their
    recompilation in later modules, and without returning the freed pages the resident memory never
    falls below the threshold again, so the programs were dropped after nearly every module."""
    yield
    _release(RELEASE_ABOVE_MB)


_IMPORT_FACTS = r"""
import json, sys
facts = {}
sys.modules["matplotlib"] = None  # as if matplotlib were not installed
try:
    import ngp.plot, ngp.criticality
    facts["plot_without_matplotlib"] = "ok"
except Exception as exc:
    facts["plot_without_matplotlib"] = repr(exc)
del sys.modules["matplotlib"]
import ngp, ngp.reference
facts["numpyro_after_reference"] = "numpyro" in sys.modules
ngp.train.jacobian_penalty, ngp.train.fdr_sgd
facts["optax_after_train"] = "optax" in sys.modules
print(json.dumps(facts))
"""


@pytest.fixture(scope="session")
def import_facts():
    """What a fresh interpreter imports (one subprocess for every lazy-import check, ~2 s each): ``ngp.plot`` and
    ``ngp.criticality`` without matplotlib, whether ``ngp.reference`` imports numpyro, whether ``ngp.train``'s
    names import optax."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    r = subprocess.run([sys.executable, "-c", _IMPORT_FACTS], capture_output=True, text=True, timeout=300, cwd=root,
                       env=env, check=False)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])
