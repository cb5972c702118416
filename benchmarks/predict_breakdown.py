"""Where the exact prediction's four-point work goes: values computed by ``predict`` after ``condition``.

Usage: python benchmarks/predict_breakdown.py [--sizes 16x10,8x100] [--out predict_breakdown.json]

tanh MLP depth 3, width 64, 2-D inputs, noise 0.1 (the network of benchmarks/posterior_scaling.py). For
each size, in a fresh process per mode: ``ngp.condition(...)`` and its training components first, then
``predict(X_test)``, counting every row that ``ngp._finite.four_point_values`` computes and its time, by
the number of distinct test inputs in the row (0: training-only, 1, 2; a call's time is shared evenly
by its rows). Modes: ``reuse`` (the library:
the joint prior takes over the training prior's values, ``ngp._prior.reuse_four_point``) and
``no_reuse`` (that step disabled, as before). Writes benchmarks/results/<--out>.
"""

from __future__ import annotations

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

import _kernel_setup  # noqa: E402  (NumPy only: the driver and the commit record)

CHILD = r"""
from ngp import _finite, _posterior
NA, NB, reuse = {NA}, {NB}, {reuse}
if not reuse:
    _posterior.reuse_four_point = lambda *args: 0
rows, secs = [], []
inner = _finite.four_point_values
def counted(act, K, ms, **kw):
    t = time.perf_counter(); out = inner(act, K, ms, **kw); secs.append(time.perf_counter() - t)
    rows.append(np.asarray(ms)); return out
_finite.four_point_values = counted
rng = np.random.default_rng(0)
XA, XB = rng.normal(size=(NA, 2)), rng.normal(size=(NB, 2))
Y = np.sin(1.3 * XA[:, :1]) + 0.3 * XA[:, 1:]
c = ngp.condition(ngp.MLP(3, 64, activation="tanh"), XA, Y, noise=0.1, warn=False, method="exact")
c._train
rows.clear(); secs.clear()
t = time.perf_counter(); p = c.predict(XB); t = time.perf_counter() - t
out = {{"predict_s": t, "four_point_s": sum(secs), "mean_sum": float(p.mean.sum()), "var_sum": float(p.var.sum())}}
if rows:
    ms = np.concatenate(rows)
    srt = np.sort(ms, axis=1)
    first = np.concatenate([np.ones((len(srt), 1), bool), srt[:, 1:] != srt[:, :-1]], axis=1)
    ntest = ((srt >= NA) & first).sum(axis=1)  # distinct test inputs per row
    per_row = np.concatenate([np.full(len(r), s / len(r)) for r, s in zip(rows, secs)])
    out["rows_by_test_inputs"] = [int((ntest == k).sum()) for k in (0, 1, 2)]
    out["seconds_by_test_inputs"] = [float(per_row[ntest == k].sum()) for k in (0, 1, 2)]
print(json.dumps(out))
"""


def measure(NA: int, NB: int) -> list:
    return [{"N_train": NA, "N_test": NB, "mode": "reuse" if reuse else "no_reuse",
             **_kernel_setup.child_json(_kernel_setup.child_prelude(ROOT) + CHILD.format(NA=NA, NB=NB, reuse=reuse))}
            for reuse in (True, False)]


def main(argv=None):
    _kernel_setup.sizes_run(__doc__, "16x10,8x100", "predict_breakdown.json", measure, argv)


if __name__ == "__main__":
    main()
