import gc
import os

import jax
import pytest

jax.config.update("jax_enable_x64", True)
# the CLI keeps compiled programs on disk (~/.cache/ngp/jax); tests run without it (reproducible timings)
os.environ.setdefault("NGP_CACHE_DIR", "")


@pytest.fixture(scope="module", autouse=True)
def _release_compiled_programs():
    """Drop JAX's compiled programs after each test module: the suite's memory otherwise grows with every
    module's array shapes (measured on test_finite..test_mlp: peak 2.89 -> 2.37 GB, RSS after test_finite
    1.46 -> 0.57 GB; wall time not worse)."""
    yield
    jax.clear_caches()
    gc.collect()
