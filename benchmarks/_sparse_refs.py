"""Dense references for benchmarks/sparse_four_point.py (cached in benchmarks/results/sparse_four_point_refs.json)."""
import json, os, sys, time
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE)); sys.path.insert(0, HERE)
import jax
jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp
import numpy as np
import ngp
from four_point_rule import dense, random_block, holder

ACTS = {"tanh": lambda: ngp.activation("tanh"), "swish": lambda: ngp.activation("swish"),
        "tanh_plus_square": lambda: ngp.activation(lambda x: jnp.tanh(x) + 0.1 * x**2, name="tanh_plus_square")}
REF_M = {0.3: 56, 1.0: 80, 2.0: 110}


def blocks():
    """Same draws as four_point_rule.py --quick (seed 7, 2 + 16 blocks per case), then the extra cases."""
    rng = np.random.default_rng(7)
    out = {}
    for name, K in [("tanh", 0.3), ("tanh", 1.0), ("tanh", 2.0), ("erf", 1.0), ("gelu", 1.0), ("swish", 1.0),
                    ("tanh_plus_square", 1.0), ("swish", 0.3), ("swish", 2.0), ("tanh_plus_square", 0.3),
                    ("tanh_plus_square", 2.0)]:
        out[(name, K)] = [random_block(rng, 4, K) for _ in range(2)]
        [random_block(rng, 4, K) for _ in range(16)]
    return out


if __name__ == "__main__":
    path = os.path.join(HERE, "results", "sparse_four_point_refs.json")
    res = json.load(open(path)) if os.path.exists(path) else {}
    for (name, K), bl in blocks().items():
        if name not in ACTS:
            continue
        key = f"{name}|{K}"
        if key in res:
            continue
        act = ACTS[name]()
        t0 = time.time()
        res[key] = dict(values=[dense(act.fn, C, (1, 1, 1, 1), REF_M[K])[0] for C in bl],
                        holder=[holder(act, C, (1, 1, 1, 1)) for C in bl], m=REF_M[K])
        print(key, res[key], f"{time.time()-t0:.0f}s", flush=True)
        json.dump(res, open(path, "w"), indent=1)
