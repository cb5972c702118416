"""How hyperparameters scale with width: from the neural-tangent to the maximal-update scaling.

A :class:`Parameterization` gives, for each layer role (``input``, ``hidden``, ``output``),
the width exponents of the four per-layer hyperparameters of ngp's conventions
(docs/theory.md, NTK section): ``Var W = C_W / fan_in``, ``Var b = C_b``, learning rates
``eta * lambda_W / fan_in`` (weights) and ``eta * lambda_b`` (biases). A hyperparameter ``h``
with exponent ``p`` is ``h(n) = h_base * (n / base_width)^p`` for hidden width ``n``.

Presets:

* ``"ntk"``: all exponents 0 (the neural-tangent scaling; PDLT's conventions).
* ``"mup"``: maximal update (muP, SGD): output ``C_W, C_b ~ 1/n``; input and hidden
  ``lambda_W, lambda_b ~ n``; output ``lambda ~ 1``.
* ``"standard"``: ``Var W = C_W/fan_in`` everywhere with one global SGD learning rate, i.e.
  ``lambda_W ~ fan_in`` (``~ n`` for hidden and output weights); unstable at large width.
* :func:`family` ``(s)``: the one-parameter family interpolating ``"ntk"`` (``s = 0``) and
  ``"mup"`` (``s = 1``): output ``C_W, C_b ~ n^-s``, input/hidden ``lambda ~ n^s``.

:func:`predicted_exponents` gives the width exponents (power counting of one SGD step from
initialisation) of the NTK, its fluctuation, the NTK change (the dNTK), the feature updates and
the output change; :func:`coordinate_check` measures them on actual networks (JAX).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Callable, Sequence

import numpy as np

from ._validate import (MAX_WIDTH, as_inputs, as_targets, check_seed, count, device, nonneg_float, per_layer,
                        positive_float, real, warn)
from ._warnings import ConvergenceWarning
from ._results import result

__all__ = [
    "Parameterization",
    "PRESETS",
    "parameterization",
    "family",
    "multipliers",
    "predicted_exponents",
    "Exponents",
    "coordinate_check",
    "CoordinateCheck",
]

_ROLES = ("input", "hidden", "output")


@dataclasses.dataclass(frozen=True)
class Parameterization:
    """Width exponents of ``(C_W, C_b, lambda_W, lambda_b)`` per layer role.

    Each field is a tuple ``(input, hidden, output)`` of exponents ``p``: the hyperparameter is
    multiplied by ``(n / base_width)^p``. ``C_W`` and ``C_b`` of the input and hidden layers must
    have exponent 0 (otherwise pre-activations blow up or vanish with width).
    """

    name: str
    C_W: tuple[float, float, float] = (0.0, 0.0, 0.0)
    C_b: tuple[float, float, float] = (0.0, 0.0, 0.0)
    lam_W: tuple[float, float, float] = (0.0, 0.0, 0.0)
    lam_b: tuple[float, float, float] = (0.0, 0.0, 0.0)

    def __post_init__(self):
        for f in ("C_W", "C_b", "lam_W", "lam_b"):
            v = tuple(float(x) for x in getattr(self, f))
            if len(v) != 3 or not all(math.isfinite(x) for x in v):
                raise ValueError(f"Parameterization.{f}: expected three finite exponents (input, hidden, output)")
            object.__setattr__(self, f, v)
        if self.C_W[0] != 0 or self.C_W[1] != 0 or self.C_b[0] > 0 or self.C_b[1] > 0:
            raise ValueError(
                "Parameterization: input and hidden C_W must not scale with width (exponent 0) and their C_b "
                "must not grow; otherwise the pre-activations blow up or vanish at large width"
            )
        if self.C_W[2] > 0 or self.C_b[2] > 0:
            raise ValueError("Parameterization: output C_W, C_b exponents must be <= 0 (else the output blows up at init)")


def family(s: float) -> Parameterization:
    """Interpolation between neural-tangent (``s = 0``) and maximal-update (``s = 1``) scaling (``s`` a real
    number in ``[0, 1]``)."""
    s = real(s, "s")
    if not 0.0 <= s <= 1.0:
        raise ValueError(f"family: s must be in [0, 1] (0 = ntk, 1 = mup), got {s}")
    return Parameterization(f"family({s:g})", C_W=(0, 0, -s), C_b=(0, 0, -s), lam_W=(s, s, 0), lam_b=(s, s, 0))


PRESETS: dict[str, Parameterization] = {
    "ntk": Parameterization("ntk"),
    "mup": Parameterization("mup", C_W=(0, 0, -1), C_b=(0, 0, -1), lam_W=(1, 1, 0), lam_b=(1, 1, 0)),
    "standard": Parameterization("standard", lam_W=(0, 1, 1)),
}


def parameterization(spec) -> Parameterization:
    """A :class:`Parameterization` from a preset name, a family value ``s`` or itself."""
    if isinstance(spec, Parameterization):
        return spec
    if isinstance(spec, str):
        key = spec.strip().lower()
        if key in PRESETS:
            return PRESETS[key]
        raise ValueError(f"parameterization: unknown name {spec!r}; expected one of {sorted(PRESETS)} or a number s in [0, 1]")
    if isinstance(spec, numbers.Real) and not isinstance(spec, bool):
        s = float(spec)
        if not 0.0 <= s <= 1.0:  # NaN too; family() would name its own argument, s
            raise ValueError(f"parameterization: a number s must be in [0, 1] (0 = ntk, 1 = mup), got {spec!r}")
        return family(s)
    raise TypeError(f"parameterization: expected a name, a number or a Parameterization, got {type(spec).__name__}")


def _depth(depth) -> int:
    """The number of weight layers, an integer ``>= 2`` (an input and an output layer)."""
    return count(depth, "depth", minimum=2, what="an integer >= 2 (an input and an output layer)")


def _roles(depth: int):
    return [0] + [1] * (depth - 2) + [2]


def multipliers(spec, *, width, depth: int, base_width: float = 1.0, C_W=1.0, C_b=0.0,
                lam_W=1.0, lam_b=1.0) -> dict:
    """Per-layer ``C_W, C_b, lam_W, lam_b`` (tuples of length ``depth``) under the parameterization ``spec``.

    Args:
        width: the hidden width ``n > 0`` (all hidden layers), or the ``depth - 1`` hidden widths.
        depth: number of weight layers, an integer ``>= 2``.
        base_width: the width ``> 0`` at which the hyperparameters equal the base values (muTransfer:
            tune at ``base_width``, scale to ``width``).
        C_W: base weight variance ``> 0`` (float or per-layer sequence).
        C_b: base bias variance ``>= 0``.
        lam_W: base weight learning-rate factor ``>= 0``.
        lam_b: base bias learning-rate factor ``>= 0``.

    Each base value is multiplied by ``(n_l / base_width)^p`` with the exponent ``p`` of its layer
    role (layer 1 = input, ``2..depth-1`` = hidden, ``depth`` = output) and ``n_l`` the hidden width
    the layer touches: the fan-out of the input layer, the fan-in of the others. Feed the result to
    ``ngp.MLP`` / the NTK recursions (docs/theory.md, NTK section).
    """
    par = parameterization(spec)
    depth = _depth(depth)
    roles = _roles(depth)
    widths = per_layer(width, depth - 1, "width", positive_float, what="hidden layer")
    base_width = positive_float(base_width, "base_width")
    touch = [widths[0]] + [widths[l - 1] for l in range(1, depth)]  # fan-out of layer 1, fan-in of the rest
    out = {}
    for name, base, check in (("C_W", C_W, positive_float), ("C_b", C_b, nonneg_float),
                              ("lam_W", lam_W, nonneg_float), ("lam_b", lam_b, nonneg_float)):
        b = per_layer(base, depth, name, check)
        e = getattr(par, name)
        out[name] = tuple(b[l] * (touch[l] / base_width) ** e[roles[l]] for l in range(depth))
    return out


@dataclasses.dataclass(frozen=True)
class Exponents:
    """Predicted width exponents ``q`` (quantity ``~ n^q``) after one SGD step from initialisation.

    Attributes:
        ntk: the NTK at initialisation (function space, learning rates included).
        ntk_fluctuation: its standard deviation over initialisations.
        ntk_change: one network's NTK change after the step (``~`` dNTK times the errors): the
            larger of its ensemble mean (``n^(ntk + 2u)``, stable members) and its zero-mean
            fluctuation over initialisations (``n^(ntk + u - 1/2)``); see :func:`predicted_exponents`.
        ntk_relative_change: ``ntk_change - ntk``.
        features: per hidden layer ``1..depth-1``, RMS change of one pre-activation.
        output_change: change of the output.
        output_init: size of the output at initialisation.
        regime: ``"feature learning"``, ``"kernel (NTK frozen)"``, ``"unstable"`` or ``"trivial"``.
    """

    ntk: float
    ntk_fluctuation: float
    ntk_change: float
    ntk_relative_change: float
    features: tuple[float, ...]
    output_change: float
    output_init: float
    regime: str


def predicted_exponents(spec, *, depth: int) -> Exponents:
    """Power counting of one SGD step (docs/theory.md, scaling section).

    With output ``C_W ~ n^c``: backward signals ``dz^(L)/dz^(l)_i ~ n^((c-1)/2)`` per coordinate;
    NTK contributions ``n^lambda_out`` (output layer) and ``n^(lambda_l + c)`` (other layers);
    own-layer feature update ``n^(lambda_l + (c-1)/2)``, propagated upwards unchanged. With ``u`` the
    largest relative update of one coordinate (features, or an output weight:
    ``n^(lambda_out - (c+1)/2)``), the relative NTK change is ``n^max(2u, u - 1/2)``: the NTK is an
    average over coordinates, terms linear in the update have random signs across coordinates,
    squares do not. Stable members (``ntk <= 0``, ``u <= 0``): exponents of the first few steps at a
    fixed learning rate. Unstable members: exponents of the first step at first order in the
    learning rate (``ntk_change = ntk + u - 1/2``), i.e. while the step is still a small perturbation.
    """
    par = parameterization(spec)
    depth = _depth(depth)
    roles = _roles(depth)
    c = par.C_W[2]
    contrib = []
    feats = []
    own_max = -np.inf
    for l in range(depth):
        r = roles[l]
        if r == 2:
            contrib += [par.lam_W[2], par.lam_b[2]]
        else:
            contrib += [par.lam_W[r] + c, par.lam_b[r] + c]
            own_max = max(own_max, max(par.lam_W[r], par.lam_b[r]) + (c - 1) / 2)
            feats.append(own_max)
    theta = max(contrib)
    rel_out = par.lam_W[2] - (c + 1) / 2  # relative change of one output weight
    u = max(max(feats), rel_out)  # largest relative per-coordinate update
    stable = theta <= 1e-12 and u <= 1e-12
    # NTK change: averages over n coordinates of updates of size n^u; terms linear in one step's
    # update have random signs across coordinates (n^(u - 1/2)), squares are coherent (n^(2u)).
    rho = max(2 * u, u - 0.5) if stable else u - 0.5
    if theta > 1e-12 or u > 1e-12:
        regime = "unstable"
    elif theta < -1e-12:
        regime = "trivial"
    elif u > -1e-12:
        regime = "feature learning"
    else:
        regime = "kernel (NTK frozen)"
    return Exponents(ntk=theta, ntk_fluctuation=theta - 0.5, ntk_change=theta + rho, ntk_relative_change=rho,
                     features=tuple(feats), output_change=theta, output_init=max(c, par.C_b[2]) / 2, regime=regime)


# ----------------------------------------------------------------------------- coordinate check
@result
class CoordinateCheck:
    """Measured scalings of actual networks (means over seeds) and fitted width exponents.

    Attributes:
        widths: the widths.
        ntk: ``(W,)`` Frobenius norm of the NTK at initialisation over the inputs.
        ntk_change: ``(W,)`` Frobenius norm of one network's NTK change after ``steps`` steps
            (mean over seeds of the per-network norm).
        features: ``(W, depth - 1)`` RMS change of the hidden pre-activations.
        output_change: ``(W,)`` RMS change of the outputs.
        fitted: dict name -> fitted exponent (least squares of log(mean over seeds) against log
            width); ``features`` is a tuple per hidden layer.
        predicted: :class:`Exponents`.
        stderr: dict name -> standard error of the fitted exponent (same layout as ``fitted``),
            from the seed-to-seed spread at each width (independent seeds per width; delta method:
            ``se(log mean) = sd / (sqrt(seeds) mean)``, propagated through the least-squares slope).
        seeds: initialisations per width.
    """

    parameterization: Parameterization
    widths: tuple[int, ...]
    ntk: np.ndarray
    ntk_change: np.ndarray
    features: np.ndarray
    output_change: np.ndarray
    fitted: dict
    predicted: Exponents
    stderr: dict = dataclasses.field(default_factory=dict)
    seeds: int = 0

    def deviations(self) -> dict:
        """``fitted - predicted`` for the NTK, its change, the features and the output change."""
        p = self.predicted
        return {
            "ntk": self.fitted["ntk"] - p.ntk,
            "ntk_change": self.fitted["ntk_change"] - p.ntk_change,
            "output_change": self.fitted["output_change"] - p.output_change,
            "features": tuple(f - q for f, q in zip(self.fitted["features"], p.features)),
        }


def _slope(widths, samples):
    """Least-squares slope of ``log(mean over seeds)`` against ``log(width)`` and its standard error.

    ``samples``: ``(W, S)`` per-seed values (``S >= 1``); with ``S == 1`` the error is ``nan``. Both are ``nan``
    when a seed-mean is not finite and positive (no logarithm).
    """
    x = np.log(np.asarray(widths, float))
    v = np.asarray(samples, float)
    m = v.mean(axis=1)
    if not np.all(np.isfinite(m) & (m > 0)):
        return math.nan, math.nan
    a = (x - x.mean()) / np.sum((x - x.mean()) ** 2)  # slope = a @ log(m)
    se_log = v.std(axis=1, ddof=1) / (np.sqrt(v.shape[1]) * m) if v.shape[1] > 1 else np.full(len(m), np.nan)
    return float(a @ np.log(m)), float(np.sqrt(np.sum((a * se_log) ** 2)))


def _coordinate_runs(spec, *, width: int, depth: int = 3, activation: str | Callable = "tanh", X=None, y=None,
                    steps: int = 3, lr: float = 0.003, seeds: int = 16, base_width: float = 1.0, C_W=1.0,
                    C_b=0.0, lam_W=1.0, lam_b=1.0, seed: int = 0) -> dict:
    """Per-seed measurements of :func:`coordinate_check` at one width (arguments as there).

    Returns a dict of arrays over the ``seeds`` initialisations: ``ntk`` ``(S,)`` Frobenius norm
    of the NTK at initialisation, ``ntk_change`` ``(S, N, N)`` the NTK change ``H(t) - H(0)``
    itself (learning-rate factors ``lam_W / fan_in``, ``lam_b`` included, ``eta`` not),
    ``features`` ``(S, depth - 1)`` RMS pre-activation changes, ``output_change`` ``(S,)``.
    Initialisation ``s`` uses ``PRNGKey(seed * 100003 + width * 7 + s)``.
    """
    import jax
    import jax.numpy as jnp

    from ._activations import activation as _activation

    par = parameterization(spec)
    width = count(width, "width", maximum=MAX_WIDTH)
    depth = _depth(depth)
    steps = count(steps, "steps")
    lr = positive_float(lr, "lr")
    seeds = count(seeds, "seeds")
    seed = check_seed(seed)
    act = _activation(activation)
    if X is None:
        rng = np.random.default_rng(1234)
        X = rng.normal(size=(8, 4))
        X = X / np.linalg.norm(X, axis=1, keepdims=True) * 2.0
    X = as_inputs(X, "X")
    y = 30.0 * np.sin(np.arange(X.shape[0]) + 0.5) if y is None else y  # targets >> initial outputs: error ~ -y
    y = device(as_targets(y, X.shape[0], 1, "y")[:, 0])
    X = device(X)
    n0 = X.shape[1]
    hp = multipliers(par, width=width, depth=depth, base_width=base_width, C_W=C_W, C_b=C_b,
                     lam_W=lam_W, lam_b=lam_b)
    dims = (n0,) + (width,) * (depth - 1) + (1,)
    lrs = [(lr * hp["lam_W"][l] / dims[l], lr * hp["lam_b"][l]) for l in range(depth)]

    def forward(params):
        h, pre = X.T, []
        for W, b in params:
            z = W @ h + b[:, None]
            pre.append(z)
            h = act.fn(z)
        return z[0], pre[:-1]

    def loss(params):
        return 0.5 * jnp.sum((forward(params)[0] - y) ** 2)

    def ntk(params):
        J = jax.jacrev(lambda p: forward(p)[0])(params)
        tot = 0.0
        for (JW, Jb), (a, c) in zip(J, lrs):
            JWf = JW.reshape(JW.shape[0], -1)
            tot = tot + (a / lr) * JWf @ JWf.T + (c / lr) * Jb @ Jb.T
        return tot

    @jax.jit
    def run(key):
        keys = jax.random.split(key, 2 * depth)
        params = [(jax.random.normal(keys[2 * l], (dims[l + 1], dims[l])) * jnp.sqrt(hp["C_W"][l] / dims[l]),
                   jax.random.normal(keys[2 * l + 1], (dims[l + 1],)) * jnp.sqrt(hp["C_b"][l]))
                  for l in range(depth)]
        f0, pre0 = forward(params)
        H0 = ntk(params)

        def body(_, p):  # full-batch SGD with per-parameter learning rates
            g = jax.grad(loss)(p)
            return [(W - a * gW, b - c * gb) for (W, b), (gW, gb), (a, c) in zip(p, g, lrs)]

        params_t = jax.lax.fori_loop(0, steps, body, params)
        f1, pre1 = forward(params_t)
        feats = jnp.stack([jnp.sqrt(jnp.mean((a - b) ** 2)) for a, b in zip(pre1, pre0)])
        return jnp.linalg.norm(H0), ntk(params_t) - H0, feats, jnp.sqrt(jnp.mean((f1 - f0) ** 2))

    res = [run(jax.random.PRNGKey(seed * 100003 + width * 7 + s)) for s in range(seeds)]
    names = ("ntk", "ntk_change", "features", "output_change")
    return {k: np.stack([np.asarray(r[i]) for r in res]) for i, k in enumerate(names)}


def coordinate_check(spec, *, widths: Sequence[int], depth: int = 3, activation: str | Callable = "tanh",
                     X=None, y=None, steps: int = 3, lr: float = 0.003, seeds: int = 16, base_width: float = 1.0,
                     C_W=1.0, C_b=0.0, lam_W=1.0, lam_b=1.0, seed: int = 0) -> CoordinateCheck:
    """Train actual MLPs of several widths for a few SGD steps and fit the width exponents.

    Networks ``z' = W s(z) + b`` with ``W ~ N(0, C_W/fan_in)``, ``b ~ N(0, C_b)`` and the
    per-layer values of :func:`multipliers`; full-batch SGD on ``1/2 sum (f(x) - y)^2`` with
    per-parameter learning rates ``lr * lam_W / fan_in`` (weights) and ``lr * lam_b`` (biases).
    Measures per initialisation: the Frobenius norm of the empirical NTK at initialisation and of its
    change after ``steps`` steps (one network's change: the coherent ensemble-mean part plus the
    zero-mean fluctuating part, docs/theory-ntk.md, scaling section), the RMS change of every hidden
    layer's pre-activations and of the outputs; fits the exponent of each seed-mean against width,
    with a standard error from the seed-to-seed spread (the per-network NTK change varies by ~30-40%
    between seeds, so a few seeds give exponents uncertain by ~0.2). Float64 if JAX's x64 mode is on.

    Args:
        spec: a :class:`Parameterization`, a preset name or a family value ``s``.
        widths: hidden widths, positive integers (at least two different ones).
        depth: number of weight layers (``>= 2``).
        activation: activation name or callable.
        X: ``(N, n0)`` finite inputs (default: 8 fixed points of norm 2 in 4 dimensions).
        y: ``(N,)`` finite targets, one per row of ``X`` (default ``30 sin(i + 1/2)``).
        steps: number of full-batch steps (``>= 1``).
        lr: the global learning rate ``eta``, finite and ``> 0``.
        seeds: initialisations per width (at least 2 for standard errors).
        base_width: see :func:`multipliers`.
        C_W: see :func:`multipliers`.
        C_b: see :func:`multipliers`.
        lam_W: see :func:`multipliers`.
        lam_b: see :func:`multipliers`.
        seed: base random seed (``>= 0``).

    A quantity that is not finite and positive at some width (training diverged, e.g. at too large an ``lr``,
    or nothing changed, e.g. ``lam_W = lam_b = 0``) has a ``nan`` fitted exponent and standard error, with a
    :class:`ngp.ConvergenceWarning`.
    """
    par = parameterization(spec)
    if isinstance(widths, (str, bytes)) or not hasattr(widths, "__iter__"):
        raise TypeError(f"widths: expected a sequence of positive integers, got {widths!r}")
    widths = tuple(count(w, f"widths[{i}]", maximum=MAX_WIDTH) for i, w in enumerate(widths))
    if len(set(widths)) < 2:
        raise ValueError(f"widths: need at least two different widths to fit an exponent, got {widths}")
    if len(set(widths)) < len(widths):  # the same seeds at a repeated width: the same networks, not new data
        raise ValueError(f"widths: each width once (a repeated width draws the same networks), got {widths}")
    seeds = count(seeds, "seeds", minimum=2, what="an integer >= 2 (the standard errors need two)")  # 1: NaN errors
    runs = [_coordinate_runs(par, width=w, depth=depth, activation=activation, X=X, y=y, steps=steps, lr=lr,
                            seeds=seeds, base_width=base_width, C_W=C_W, C_b=C_b, lam_W=lam_W, lam_b=lam_b,
                            seed=seed) for w in widths]
    samples = {
        "ntk": np.stack([r["ntk"] for r in runs]),
        "ntk_change": np.stack([np.linalg.norm(r["ntk_change"], axis=(1, 2)) for r in runs]),
        "output_change": np.stack([r["output_change"] for r in runs]),
    }
    feat = np.stack([r["features"] for r in runs])  # (W, S, depth - 1)
    fits = {k: _slope(widths, v) for k, v in samples.items()}
    ffits = [_slope(widths, feat[:, :, l]) for l in range(feat.shape[2])]
    fitted = {k: f[0] for k, f in fits.items()}
    stderr = {k: f[1] for k, f in fits.items()}
    fitted["features"] = tuple(f[0] for f in ffits)
    stderr["features"] = tuple(f[1] for f in ffits)
    bad = [k for k in samples if math.isnan(fitted[k])]
    bad += [f"features[{l}]" for l, f in enumerate(fitted["features"]) if math.isnan(f)]
    if bad:
        warn(f"coordinate_check: the measured {', '.join(bad)} are not finite and positive at every width "
             "(training diverged, e.g. lr too large, or nothing changed); their fitted exponents are nan",
             ConvergenceWarning)
    return CoordinateCheck(par, widths, samples["ntk"].mean(1), samples["ntk_change"].mean(1), feat.mean(1),
                           samples["output_change"].mean(1), fitted, predicted_exponents(par, depth=depth),
                           stderr=stderr, seeds=int(seeds))
