import os

import jax

jax.config.update("jax_enable_x64", True)
# the CLI keeps compiled programs on disk (~/.cache/ngp/jax); tests run without it (reproducible timings)
os.environ.setdefault("NGP_CACHE_DIR", "")
