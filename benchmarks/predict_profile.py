"""Where the time of an exact ``predict`` goes (issue 10): compilation, the four-point rules' kernel, their
tabulation and the host work around them.

Usage: python benchmarks/predict_profile.py [--sizes 16x100,32x100] [--out predict_profile.json]

The network and data of benchmarks/posterior_scaling.py (tanh MLP depth 3, width 64, 2-D inputs, noise 0.1).
For each size, in a fresh process: ``ngp.condition(..., method="exact")``, then ``predict(X_test)`` (means and
marginal variances) measured: wall and process CPU seconds; XLA compilations (count, seconds, by function);
the rule passes (``ngp._fourpoint._evaluate_rules``: calls, seconds, jobs (one rule for one entry), tiles,
nodes, kernel calls by tile count); the tabulations (``_smoothed_table``: calls, seconds, points, activation
evaluations). Then, in the same process, the single-call cost of the tile kernel (2048 tiles of a tabulated
3-factor rule) and of the tabulation kernel (65536 points x 25 nodes), each blocking, to turn the counts into
estimates of the time the kernels compute (``kernel_s_est``, ``table_s_est``); the rest of ``predict`` is
host work and waiting. Writes benchmarks/results/<--out>.
"""

from __future__ import annotations

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

import _kernel_setup  # noqa: E402  (NumPy only: the driver and the commit record)

CHILD = r"""
import collections, logging, re
import jax.numpy as jnp
from ngp import _fourpoint as F
NA, NB = {NA}, {NB}
comp = collections.Counter(); comp_s = collections.Counter()
class Compiles(logging.Handler):
    def emit(self, r):
        m = re.search(r"Finished XLA compilation of (.*?) in ([0-9.e-]+) s", r.getMessage())
        if m:
            comp[m.group(1)] += 1; comp_s[m.group(1)] += float(m.group(2))
logging.getLogger("jax").addHandler(Compiles())
jax.config.update("jax_log_compiles", True)
logging.getLogger("jax").setLevel(logging.WARNING)
for h in logging.getLogger().handlers:  # keep the log off the terminal
    h.setLevel(logging.CRITICAL)
ev = dict(calls=0, seconds=0.0, jobs=0, tiles=0, nodes=0.0); kcalls = collections.Counter()
tab = dict(calls=0, seconds=0.0, points=0, evaluations=0.0)
inner_ev, inner_tab, inner_k = F._evaluate_rules, F._smoothed_table, F._tile_kernel
def kernel(*a):
    kcalls[int(a[-1].shape[0])] += 1
    return inner_k(*a)
def evaluate(act_fn, smoothed, Rk, active, beta, sigma, jobs, *a, **k):
    t = time.perf_counter(); out = inner_ev(act_fn, smoothed, Rk, active, beta, sigma, jobs, *a, **k)
    ev["calls"] += 1; ev["seconds"] += time.perf_counter() - t
    ev["jobs"] += int(sum(r.size for r in jobs.values()))
    ev["nodes"] += float(out[0][2].sum()) if k.get("flat") else float(sum(out[o][2] * jobs[o].size for o in jobs))
    return out
def table(fn, mu, s, tol):
    t = time.perf_counter(); out = inner_tab(fn, mu, s, tol)
    tab["calls"] += 1; tab["seconds"] += time.perf_counter() - t
    tab["points"] += int(mu.size); tab["evaluations"] += float(out[2].sum())
    return out
F._evaluate_rules, F._smoothed_table, F._tile_kernel = evaluate, table, kernel
rng = np.random.default_rng(0)
XA, XB = rng.normal(size=(NA, 2)), rng.normal(size=(NB, 2))
Y = np.sin(1.3 * XA[:, :1]) + 0.3 * XA[:, 1:]
t0 = time.perf_counter()
c = ngp.condition(ngp.MLP(3, 64, activation="tanh"), XA, Y, noise=0.1, warn=False, method="exact")
c._train
cond_s = time.perf_counter() - t0
comp.clear(); comp_s.clear(); kcalls.clear()
for d in (ev, tab):
    for k in d: d[k] = 0
t1, c1 = time.perf_counter(), time.process_time()
p = c.predict(XB)
wall, cpu = time.perf_counter() - t1, time.process_time() - c1
ev["tiles"] = int(sum(T * n for T, n in kcalls.items()))
# single-call costs of the two kernels (blocking), on arrays of the sizes predict uses
F._tile_kernel = inner_k
r = np.random.default_rng(1)
T, J = 2048, 4096
args = [r.normal(size=(1024, 2, 16)), r.random((1024, 16)), r.normal(size=(256, 16)), r.random((256, 16)),
        0.5 * r.normal(size=(J, 3, 3)), r.normal(size=(J, 3)), r.random(J), r.random((4 * 4096, 16))]
args = [jax.device_put(a) for a in args]
idx = np.stack([r.integers(0, n, T) for n in (1024, 256, 4 * 4096, J)], axis=1).astype(np.int32)  # (pb, mb, sb, g)
act = np.ones(3, np.int32)
def best(f, n=15):
    f(); ts = []
    for _ in range(n):
        t = time.perf_counter(); f(); ts.append(time.perf_counter() - t)
    return min(ts)
split = ngp.activation("tanh").exp_split
tile_s = best(lambda: inner_k(jnp.tanh, F.TABLE, split, act, *args, idx).block_until_ready()) / T
mu, s = r.normal(size=65536), r.random(65536)
w, pw, n = F._node_pad(np.linspace(-9, 9, 25), np.exp(-0.5 * np.linspace(-9, 9, 25) ** 2))
eval_s = best(lambda: F._node_sums(jnp.tanh, mu, s, w, pw, n).block_until_ready()) / (65536 * 25)
print(json.dumps(dict(condition_s=cond_s, predict_s=wall, predict_cpu_s=cpu,
                      compilations=int(sum(comp.values())), compile_s=float(sum(comp_s.values())),
                      compile_by_function={{k: [comp[k], round(comp_s[k], 3)] for k, _ in comp.most_common()}},
                      rule_passes=ev, kernel_calls_by_tiles={{str(k): v for k, v in sorted(kcalls.items())}},
                      tabulations=tab, tile_us=tile_s * 1e6, table_eval_ns=eval_s * 1e9,
                      kernel_s_est=ev["tiles"] * tile_s, table_s_est=tab["evaluations"] * eval_s,
                      mean_sum=float(p.mean.sum()), var_sum=float(p.var.sum()))))
"""


def measure(NA: int, NB: int) -> list:
    code = _kernel_setup.child_prelude(ROOT) + CHILD.format(NA=NA, NB=NB)
    return [{"N_train": NA, "N_test": NB, **_kernel_setup.child_json(code)}]


def main(argv=None):
    _kernel_setup.sizes_run(__doc__, "16x100,32x100", "predict_profile.json", measure, argv)


if __name__ == "__main__":
    main()
