"""The evidence as a JAX function of the hyperparameters, and ML-II fitting: ``ngp.log_evidence``,
``ngp.fit_hyperparameters`` (``docs/theory.md``, "Evidence").

The cumulant engine is written in ``jax.numpy``: with the per-dense-step ``(C_W, C_b)`` given as
JAX values (``Flow.hyper``), ``K``, ``K1`` and ``V`` on the training inputs, and so the GP and the
finite-width log evidence, are differentiable in ``(C_W, C_b, noise)`` (``jax.grad``, ``jax.jacfwd``).
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import math
import time

import jax
import jax.numpy as jnp
import numpy as np
import scipy.optimize

from ._cumulants import prefill_four_point
from ._mlp import MLP
from ._network import Network
from ._resmlp import ResMLP
from ._sampling import cached_per_network
from ._posterior import finite_width_log_evidence
from ._gaussian import switch_tables, traced_mehler_tables
from ._linalg import check_conditioning, gaussian_log_evidence, refuse_duplicates, solve_train, well_conditioned
from ._prior import check_options
from ._steps import IDENTITY, Dense, Flow
from ._validate import (as_inputs, as_targets, check_seed, count, device, flag, float64, nonneg_float,
                        per_layer, positive_float, real, warn)
from ._validity import (ETA_WARN, EVIDENCE_MAX, EXPANSION_WARN, evidence_validity, expansion_parameter,
                        first_order_eta, untrusted_message)
from ._warnings import ConvergenceWarning, CostWarning, ExpansionWarning

__all__ = ["log_evidence", "fit_hyperparameters", "HyperFit", "with_hyperparameters"]

FIT_NAMES = ("C_W", "C_b", "noise")


def _per_dense(value, default, name, depth, check):
    """A value per dense step: ``None`` -> the network's, a scalar -> repeated, a sequence of ``depth``. Concrete
    values pass ``check`` (e.g. :func:`positive_float`: ``C_W > 0``, as :class:`ngp.Dense` asks); traced ones
    (inside ``jax.grad`` or ``jax.jit``) cannot be checked."""
    if value is None:
        return list(default)
    if not any(isinstance(v, jax.core.Tracer) for v in jax.tree_util.tree_leaves(value)):
        per_layer(value, depth, name, check, what="dense step")
    arr = device(value)
    if arr.ndim == 0:
        return [arr] * depth
    if arr.shape != (depth,):
        raise ValueError(f"{name}: expected a number or {depth} values (one per dense step), got shape {arr.shape}")
    return [arr[i] for i in range(depth)]


@float64
def log_evidence(net, X_train, Y_train, *, noise, C_W=None, C_b=None, finite_width: bool = True,
                 jitter: float = 0.0, **options):
    """Log marginal likelihood of the targets as a JAX function of ``(C_W, C_b, noise)``.

    ``jax.grad``, ``jax.jacfwd`` and ``jax.value_and_grad`` work with respect to ``noise``, ``C_W``
    and ``C_b`` (each a number, applied to every dense step, or one value per dense step in forward
    order; ``None`` keeps the network's). Finite width: the ``O(1/n)`` evidence with ``K + K1/n``
    unexpanded, as :attr:`ngp.Conditioned.log_evidence`; ``finite_width=False``: the GP's.

    Args:
        net: a network (:class:`ngp.MLP`, :func:`ngp.serial`, ...).
        X_train: ``(N, n0)`` inputs.
        Y_train: ``(N, out_dim)`` targets.
        noise: observation-noise variance (a number or a JAX value).
        C_W: weight variances replacing the network's (a number, one per dense step, or JAX values).
        C_b: bias variances replacing the network's (likewise).
        finite_width: include the ``1/n`` terms (default) or not.
        jitter: extra diagonal (a number).
        **options: prior options (``terms``, ``nodes``, ``four_point_order``, ...).

    Returns:
        A 0-d JAX array.

    Raises:
        ValueError, TypeError: concrete ``C_W`` not finite and ``> 0``, ``C_b`` not finite and ``>= 0`` (as
            :class:`ngp.Dense`; traced values are not checked).
        numpy.linalg.LinAlgError: duplicate training inputs with ``noise = 0`` and ``jitter = 0``; (concrete values)
            a training kernel ``K + (noise + jitter) I`` of reciprocal condition number ``<= 1e-12`` (as
            :func:`ngp.condition`), or a finite-width evidence that is not finite (``K + K1/n + noise I`` not positive
            definite). Under ``jax.jit``/``jax.grad`` (traced ``noise``, ``C_W``, ``C_b`` or targets) the same
            conditioning test gives ``NaN`` instead of raising, value and gradient (its eigenvalues estimated; in
            float32 at a reciprocal condition number of ``1.2e-6``).

    Warns:
        ExpansionWarning: (concrete values, finite width) the first-order correction is not trusted (including
            ``eta = Var[log p(y | network)]`` above 1), or the expansion parameter ``max|V|/(n K^2)`` exceeds 0.3, as
            :attr:`ngp.Conditioned.log_evidence`
            (``docs/validity.md``); the option ``warn=False`` silences it.

    Note:
        Under ``jax.jit`` or a derivative the four-point term runs the fixed rule (``four_point_order``),
        and its gradient is Price's theorem on that rule's nodes: not the derivative of the traced value,
        and less accurate than it (tanh, default order: about 3e-4 relative against 2e-6 for the value;
        ``docs/four-point.md``, "The traced gradient's error"; with one input feature the jitted value can be off
        by most of the 1/n correction, and its gradient by more than 100%, without a warning). Second derivatives
        (``jax.hessian``) are right on generic inputs but NaN where a block of three or four distinct inputs is
        singular (inputs with one or two features): Price's rule is not applied again inside the batches'
        ``lax.map``, and the eigen square root has no derivative there (``docs/four-point.md``). Its batches run
        one after another, so a jitted gradient holds one batch's values at a time. The traced kernel is the capped
        Mehler series throughout, where the concrete call computes inputs of first-layer variance beyond ``K ~ 36``
        by adaptive quadrature: there the traced value loses digits without a warning (tanh, ``C_W = 1.5``, ten
        inputs of first-layer variances 33-690: ``K`` 1.1e-4 relative, the evidence 2.6e-4 nats off); evaluate the
        concrete call at the result to check it.
    """
    warn_untrusted = flag(options.get("warn", True), "warn")
    options = _evidence_options(options)
    finite_width = flag(finite_width, "finite_width")
    XA = as_inputs(X_train, "X_train", in_dim=getattr(net, "in_dim", None))
    if isinstance(Y_train, jax.core.Tracer):  # traced targets (inside jit/grad): shape checks only
        Y = Y_train[:, None] if Y_train.ndim == 1 and net.out_dim == 1 else Y_train
        if Y.shape != (XA.shape[0], net.out_dim):
            raise ValueError(f"Y_train: expected shape ({XA.shape[0]}, {net.out_dim}), got {Y_train.shape}")
    else:
        Y = as_targets(Y_train, XA.shape[0], net.out_dim)
    jitter = nonneg_float(jitter, "jitter")
    if not isinstance(noise, jax.core.Tracer):
        noise = nonneg_float(noise, "noise")
        if not isinstance(XA, jax.core.Tracer):
            refuse_duplicates(XA, noise, jitter, "the log evidence is -inf or undefined")
    if finite_width and net.n_last is not None and not jax.config.jax_enable_x64:  # traced in a float32 session
        # (concrete calls run in float64; a Gaussian network has no 1/n terms)
        raise ValueError("finite_width: under jax.grad/jax.jit in a float32 session the finite-width evidence is NaN "
                         "(its four-point term needs float64; the float64 scope cannot reach the caller's "
                         "transformation): call jax.config.update('jax_enable_x64', True) first, or use "
                         "finite_width=False (the GP's evidence, in float32)")
    cumulants = _cumulants(net, XA, C_W, C_b, finite_width, options)
    K1, V = cumulants[1], cumulants[2]
    if K1 is not None and not any(isinstance(v, jax.core.Tracer) for v in (K1, V)) and not (
            np.all(np.isfinite(K1)) and np.all(np.isfinite(V))):
        raise ValueError("log_evidence: the network's finite-width cumulants (K1, V) overflow: its pre-activation "
                         "variances are too large (lower C_W, C_b or the input scale)")
    value = _evidence(cumulants, Y, noise, jitter)
    if any(isinstance(v, jax.core.Tracer) for v in (value, cumulants[0], noise)):
        return value
    # concrete: the checks of ngp.condition (a nearly singular kernel gave +8e14 here where condition refuses)
    check_conditioning(np.asarray(cumulants[0], dtype=float), noise, jitter)
    if not np.isfinite(float(value)):
        # a well-conditioned kernel, finite cumulants and K + K1/n positive definite (finite_width_log_evidence
        # refuses it otherwise, naming log_evidence): the targets overflowed (Y^4 in the 1/n terms)
        raise ValueError(f"Y_train: the log evidence overflows (largest |Y_train| = {np.max(np.abs(Y)):.3g}); "
                         "rescale the targets (e.g. ngp.datasets.standardize)")
    if warn_untrusted and finite_width and cumulants[1] is not None:
        validity = evidence_validity(float(value), float(_evidence(cumulants[:1] + (None, None, None), Y, noise,
                                                                   jitter)),
                                     eta=_eta(cumulants[0], cumulants[2], cumulants[3], Y, noise, jitter))
        if not validity.trusted:
            warn(untrusted_message("log_evidence", validity, cumulants[3]) + " (warn=False silences this)",
                 ExpansionWarning)
        eps = expansion_parameter(cumulants[0], cumulants[2], cumulants[3])
        if eps > EXPANSION_WARN:  # as the prior (and ngp.condition) warns
            warn(f"log_evidence: the 1/n expansion parameter max|V|/(n K^2) = {eps:.3g} exceeds {EXPANSION_WARN} "
                 f"(n_(L-1) = {cumulants[3]}); first-order perturbation theory in 1/n is not reliable here "
                 "(warn=False silences this)", ExpansionWarning)
    return value


def _eta(K, V, n, Y, noise: float, jitter: float) -> float:
    """``eta = Var[log p(y | network)]`` at first order (:func:`ngp._validity.first_order_eta`) from the concrete
    training ``K`` ``(N, N)`` and ``V`` ``(N,) * 4`` at width ``n``."""
    K, V = (np.asarray(c, dtype=float) for c in (K, V))
    W = solve_train(K, np.asarray(Y, dtype=float), noise, jitter, what="X_train").weights
    return first_order_eta(W, np.einsum("klxy,xy->kl", V, W), n)


def _evidence_options(options: dict) -> dict:
    """Checked prior options of :func:`log_evidence` (``warn`` and ``max_memory`` do not apply)."""
    options = check_options(options, "log_evidence")
    options.pop("warn", None)
    options.pop("max_memory", None)
    return options


def _cumulants(net, XA, C_W, C_b, finite_width: bool, options: dict):
    """``(K, K1, V, n)`` of the network's output on the rows of ``XA`` (``(N, N)``, ``(N, N)``, ``(N,) * 4``; ``K1``
    and ``V`` are ``None`` for the GP or a Gaussian network), with ``C_W``, ``C_b`` as in :func:`log_evidence`: the
    part of the evidence that depends on them (and not on the noise or the targets)."""
    dense = net.dense_steps()
    depth = len(dense)
    cw = _per_dense(C_W, [d.C_W for d in dense], "C_W", depth, positive_float)
    cb = _per_dense(C_b, [d.C_b for d in dense], "C_b", depth, nonneg_float)
    if isinstance(XA, jax.core.Tracer):  # the GP objective's argument: duplicate rows are harmless to the GP
        if finite_width:
            raise TypeError("_cumulants: the finite-width cumulants need concrete inputs")
        Xu, inverse = XA, None
    else:
        Xu, inverse = np.unique(XA, axis=0, return_inverse=True)
        inverse = np.asarray(inverse).reshape(-1)
    flow = net.flow(Flow.start(Xu, options, hyper=tuple(zip(cw, cb))))
    if flow.layer is None or flow.act is not IDENTITY:
        raise ValueError(f"net: {net!r} must end with a Dense (or Residual) step")
    c = flow.layer
    if inverse is None:
        return c.K, None, None, c.n
    ix = np.ix_(inverse, inverse)
    if not finite_width or c.gaussian:
        return c.K[ix], None, None, c.n
    prefill_four_point(flow.layers)  # a small problem: every layer's four-point values in one call
    V = c.pairs.unpack4(c.vertex.packed())[np.ix_(inverse, inverse, inverse, inverse)]
    return c.K[ix], c.K1[ix], V, c.n


def _evidence(cumulants, Y, noise, jitter):
    """The log evidence of ``Y`` (``(N, out_dim)``) from :func:`_cumulants`' output: the GP's when ``K1`` is
    ``None``, else the finite-width one."""
    K, K1, V, n = cumulants
    traced = any(isinstance(v, jax.core.Tracer) for v in (K, K1, V, Y, noise, jitter))
    if K1 is None or traced:  # the concrete finite-width evidence factorises its own kernels
        Kt = K + (noise + jitter) * jnp.eye(Y.shape[0])
        L = jnp.linalg.cholesky(Kt)
    value = (gaussian_log_evidence(L, Y) if K1 is None
             else finite_width_log_evidence(K, K1, V, Y, noise, n, jitter, what="log_evidence"))
    if traced:  # no refusal under a trace: NaN where the concrete call refuses, up to the estimates of the extreme
        # eigenvalues (a jitted call on duplicates with noise 0 gave a finite value set by rounding); a factor, not a
        # jnp.where, so that the gradient is NaN there too (the where's was exactly 0)
        value = value * jnp.where(well_conditioned(Kt, L), 1.0, jnp.nan)
    return value


def with_hyperparameters(net, C_W, C_b):
    """A copy of ``net`` whose dense steps have the given ``C_W``/``C_b`` (sequences in forward order)."""
    C_W, C_b = [float(v) for v in C_W], [float(v) for v in C_b]
    it_w, it_b = iter(C_W), iter(C_b)

    def rebuild(step):
        if isinstance(step, Dense):
            return Dense(step.width, C_W=next(it_w), C_b=next(it_b))
        if isinstance(step, Network):  # a nested ngp.serial (or ready-made network): the same steps, rebuilt
            return Network(*(rebuild(s) for s in step.steps), in_dim=step.in_dim)
        fields = {}
        for f in dataclasses.fields(step):
            v = getattr(step, f.name)
            if f.name == "steps":
                v = tuple(rebuild(s) for s in v)
            elif f.name == "block":
                v = rebuild(v)
            fields[f.name] = v
        return type(step)(**fields)

    if isinstance(net, MLP):
        # the learning-rate factors as the network has them (a parameterization's already scaled into them; the
        # fitted C_W, C_b are explicit values, so the copy carries no parameterization)
        return MLP(net.depth, list(net.widths) or None, activation=net.activation, C_W=list(C_W), C_b=list(C_b),
                   out_dim=net.out_dim, in_dim=net.in_dim, lambda_W=list(net.lambda_W), lambda_b=list(net.lambda_b))
    if isinstance(net, ResMLP):
        return ResMLP(net.depth, net.width, activation=net.activation, C_W=list(C_W), C_b=list(C_b),
                      gamma=list(net.gamma), xi=list(net.xi), out_dim=net.out_dim, in_dim=net.in_dim)
    steps = tuple(rebuild(s) for s in net.steps)
    return Network(*steps, in_dim=net.in_dim)


@dataclasses.dataclass(frozen=True)
class HyperFit:
    """Result of :func:`ngp.fit_hyperparameters`.

    Attributes:
        net: the network with the fitted ``C_W``/``C_b``.
        noise: fitted (or given) observation-noise variance.
        C_W, C_b: per-dense-step fitted values (forward order).
        log_evidence: the maximised log evidence (finite width or GP, as fitted): :func:`ngp.log_evidence` at the
            fitted values (for a finite-width fit the optimiser's own value, on the error-controlled four-point
            rule: ``docs/four-point.md``, "The fit's gradient").
        log_evidence_gp: the GP log evidence at the fitted values.
        finite_width: whether the finite-width evidence was maximised.
        starts: one dict per start: ``stage`` (``"gp"``, ``"gp, first N rows"`` with ``warm_rows``,
            ``"finite width"``), initial values, final values, log evidence, converged.
        success: whether the best start converged.
        at_bounds: ``(name, "lower" | "upper", bound)`` for each fitted value that ended on a bound of the
            search box, where the evidence may still rise beyond it (``name`` is ``"C_W"``, ``"C_b"``,
            ``"noise"``, or ``"C_W[l]"`` with ``per_layer``); each is warned about. ``C_b`` at its default lower
            bound (1e-6, or one below it) is not one: that bound stands for no bias (a higher lower bound given in
            ``bounds`` is reported like any other).
    """

    net: object
    noise: float
    C_W: tuple
    C_b: tuple
    log_evidence: float
    log_evidence_gp: float
    finite_width: bool
    starts: tuple
    success: bool
    at_bounds: tuple = ()


@float64
def fit_hyperparameters(net, X_train, Y_train, *, noise: float | None = None, fit=FIT_NAMES,
                        finite_width: bool = True, per_layer: bool = False, bounds: dict | None = None,
                        num_starts: int = 4, seed: int = 0, max_iter: int = 100, warm_rows: int | None = None,
                        **options) -> HyperFit:
    """Type-II maximum likelihood: the ``(C_W, C_b, noise)`` that maximise the evidence of the targets.

    L-BFGS-B (scipy) on log-parameters of :func:`ngp.log_evidence`, from ``num_starts`` starts (the network's
    values and random draws within the bounds); the best converged start wins. With ``finite_width=True`` the GP
    optimum is found first and the finite-width evidence (the ``O(1/n)`` one) is then maximised from it.
    Gradients: forward mode for the compiled GP evidence; for the finite-width one, central differences of
    :func:`ngp.log_evidence` on concrete arrays (the error-controlled four-point rule; a JAX derivative would run
    the fixed rule, whose Price's-theorem derivative is not the derivative of its value: ``docs/four-point.md``,
    "The fit's gradient").

    Args:
        net: a network; its widths, activation and structure are kept.
        X_train: ``(N, n0)`` inputs.
        Y_train: ``(N, out_dim)`` targets.
        noise: starting (or, when ``"noise"`` is not in ``fit``, fixed) noise variance; default:
            ``0.1 * Var(Y)``.
        fit: which of ``"C_W"``, ``"C_b"``, ``"noise"`` to fit (a name or a sequence of names; the others stay fixed).
        finite_width: maximise the finite-width evidence (default) or the GP's. A step of the finite-width stage
            evaluates the four-point vertex on every multiset of four training rows five times (the value and the
            differences in ``C_W`` and ``C_b``): 0.8, 2.7 and 8.0 s at 8, 12 and 16 rows (tanh, depth 3, on this
            project's 2-core machine; ``docs/four-point.md``), growing about like ``N^4``; the stage took 1-8 steps,
            median 5, in fits of 4-14 rows (``docs/cli.md``). When the stage's first evaluation of the evidence
            extrapolates to more than ten minutes for five steps, an :class:`ngp.CostWarning` says so.
        per_layer: one ``(C_W, C_b)`` per dense step, or (default) one shared by all dense steps.
        bounds: ``{"C_W": (lo, hi), "C_b": (lo, hi), "noise": (lo, hi)}`` (defaults
            ``(0.05, 10)``, ``(1e-6, 5)``, ``(1e-6 min(Var(Y), 1), 10 Var(Y))``), for fitted names only
            (a bound for one that ``fit`` leaves fixed is refused).
        num_starts: number of starts (``>= 1``).
        seed: non-negative integer seed of the random starts.
        max_iter: L-BFGS-B iterations per start.
        warm_rows: with more training rows than this, the GP evidence is first maximised on the first
            ``warm_rows`` rows (from the ``num_starts`` starts), and on all rows from that fit's optimum alone: each
            step on all rows costs ``O(N^2)`` kernel work and an ``O(N^3)`` solve, and few are then needed (1000
            rows: 101 s against 127 s, ``docs/cli.md``). Default ``None``: every start on all rows.
        **options: prior options passed to :func:`ngp.log_evidence`.

    Returns:
        :class:`HyperFit` (``.net`` is the fitted network).
    """
    if isinstance(fit, str):  # one name (it was read a character at a time: "unknown hyperparameter 'n'")
        fit = (fit,)
    try:
        fit = tuple(fit)
    except TypeError:
        raise TypeError(f"fit: expected names among {FIT_NAMES}, got {fit!r}") from None
    for f in fit:
        if f not in FIT_NAMES:
            raise ValueError(f"fit: unknown hyperparameter {f!r}; expected some of {FIT_NAMES}")
    num_starts = count(num_starts, "num_starts")
    finite_width, per_layer = flag(finite_width, "finite_width"), flag(per_layer, "per_layer")
    seed = check_seed(seed)
    max_iter = count(max_iter, "max_iter")
    warm_rows = None if warm_rows is None else count(warm_rows, "warm_rows")
    XA = as_inputs(X_train, "X_train", in_dim=getattr(net, "in_dim", None))
    Y = as_targets(Y_train, XA.shape[0], net.out_dim)
    with np.errstate(over="ignore"):
        yvar = float(np.var(Y))
    yvar = yvar if yvar > 0 else 1.0
    if not math.isfinite(yvar):  # it became the default noise: "noise: must be finite, got inf", never passed
        raise ValueError(f"Y_train: the targets' variance overflows (largest |Y_train| = {np.max(np.abs(Y)):.3g}); "
                         "rescale the targets (e.g. ngp.datasets.standardize)")
    noise0 = 0.1 * yvar if noise is None else nonneg_float(noise, "noise")
    if "noise" in fit and noise0 <= 0:
        noise0 = 1e-3 * yvar
    dense = net.dense_steps()
    depth = len(dense)
    nw = depth if per_layer else 1
    # the noise's lower bound follows the targets' scale below Var(Y) = 1 (an absolute 1e-6 was above 10 Var(Y) for
    # targets of variance below 1e-7: numpy's 'high - low < 0' from the random starts)
    b = {"C_W": (0.05, 10.0), "C_b": (C_B_NO_BIAS, 5.0), "noise": (1e-6 * min(yvar, 1.0), 10.0 * yvar)}
    if bounds is not None and not isinstance(bounds, dict):
        raise TypeError(f"bounds: expected a dict such as {{'C_W': (lo, hi)}}, got {type(bounds).__name__}")
    for k, v in (bounds or {}).items():
        if k not in b:
            raise ValueError(f"bounds: unknown hyperparameter {k!r}")
        if k not in fit:  # it was ignored without a word
            raise ValueError(f"bounds: {k!r} is not fitted (fit={tuple(fit)}): its bound would have no effect; add "
                             f"{k!r} to fit, or leave its bound out")
        if isinstance(v, (str, bytes)) or not hasattr(v, "__len__") or len(v) != 2:
            raise TypeError(f"bounds[{k!r}]: expected a pair (lo, hi), got {v!r}")
        lo, hi = real(v[0], f"bounds[{k!r}][0]"), real(v[1], f"bounds[{k!r}][1]")
        if not 0 < lo < hi:
            raise ValueError(f"bounds: expected 0 < lo < hi for {k!r}, got ({lo}, {hi})")
        b[k] = (lo, hi)

    cw_all = np.array([d.C_W for d in dense])  # the network's values (kept where not fitted)
    cb_all = np.array([d.C_b for d in dense])
    cw0, cb0 = (cw_all, cb_all) if per_layer else (cw_all[-1:], cb_all[-1:])
    # the free parameters: log values of the fitted groups
    sizes = {"C_W": nw if "C_W" in fit else 0, "C_b": nw if "C_b" in fit else 0, "noise": 1 if "noise" in fit else 0}
    sizes_t = tuple(sizes[k] for k in FIT_NAMES)

    def unpack(theta):
        return _unpack(theta, sizes_t, per_layer, depth, cw_all, cb_all, noise0)

    def lo_hi():
        lo, hi = [], []
        for k in FIT_NAMES:
            lo += [math.log(b[k][0])] * sizes[k]
            hi += [math.log(b[k][1])] * sizes[k]
        return np.array(lo), np.array(hi)

    lo, hi = lo_hi()

    def start0():
        t = []
        if sizes["C_W"]:
            t += list(np.log(np.clip(cw0, *b["C_W"])))
        if sizes["C_b"]:
            t += list(np.log(np.clip(np.maximum(cb0, b["C_b"][0]), *b["C_b"])))
        if sizes["noise"]:
            t += [math.log(min(max(noise0, b["noise"][0]), b["noise"][1]))]
        return np.array(t)

    if lo.size == 0:
        raise ValueError("fit: nothing to fit")

    def slow(seconds, per_step):  # after the finite-width stage's first evaluation of the evidence
        stage = seconds * per_step * FW_TYPICAL_STEPS
        if stage > SLOW_STAGE_S:
            took = f"{stage / 60:.0f} min" if stage >= 60 else f"{stage:.0f} s"
            warn(f"fit_hyperparameters: the finite-width stage on {XA.shape[0]} training rows will take about "
                 f"{took} (an evaluation of the evidence took {seconds:.3g} s, a step takes {per_step} of them, a "
                 f"typical fit {FW_TYPICAL_STEPS} steps; the cost grows about like N^4); finite_width=False stops at "
                 "the GP optimum (docs/posterior.md)", CostWarning)

    def objective(fw, XA=XA, Y=Y):
        both = evidence_objective(net, XA, fw, sizes_t, per_layer, depth, options, on_first=slow if fw else None)
        args = (device(Y), device(cw_all, dtype=float), device(cb_all, dtype=float),
                device(noise0, dtype=float))

        def value_and_grad(theta):
            g, v = both(device(theta), *args)
            v = float(v)
            g = np.asarray(g, dtype=float)
            if not (math.isfinite(v) and np.all(np.isfinite(g))):
                return 1e300, np.zeros_like(g)
            return v, g

        return value_and_grad

    def run(fun, theta0):
        res = scipy.optimize.minimize(fun, theta0, jac=True, method="L-BFGS-B", bounds=list(zip(lo, hi)),
                                      options={"maxiter": max_iter})
        return res

    rng = np.random.default_rng(seed)
    thetas = [np.clip(start0(), lo, hi)] + [rng.uniform(lo, hi) for _ in range(num_starts - 1)]
    starts = []
    if warm_rows is not None and XA.shape[0] > warm_rows:  # the starts on the first rows; their best on all rows
        first = objective(False, XA[:warm_rows], Y[:warm_rows])
        for th in thetas:
            r = run(first, th)
            starts.append(dict(start=th, theta=r.x, value=-float(r.fun), converged=bool(r.success),
                               stage=f"gp, first {warm_rows} rows"))
        thetas = [max(starts, key=lambda s: (s["converged"], s["value"]))["theta"]]
    gp_fun = objective(False)
    for th in thetas:
        r = run(gp_fun, th)
        starts.append(dict(start=th, theta=r.x, value=-float(r.fun), converged=bool(r.success), stage="gp"))
    best = max((s for s in starts if s["stage"] == "gp"), key=lambda s: (s["converged"], s["value"]))
    theta = best["theta"]
    value, success = best["value"], best["converged"]
    finite_stage = finite_width and net.n_last is not None  # a Gaussian network has no finite-width stage
    if finite_stage:
        r = run(objective(True), theta)
        starts.append(dict(start=theta, theta=r.x, value=-float(r.fun), converged=bool(r.success),
                           stage="finite width"))
        if math.isfinite(r.fun) and r.fun < 1e299:
            theta, value, success = r.x, -float(r.fun), bool(r.success)
        else:
            warn("fit_hyperparameters: the finite-width evidence is not finite near the GP optimum; "
                 "returning the GP fit (the 1/n expansion is not valid here)", ExpansionWarning)
    if not success:
        warn("fit_hyperparameters: the optimiser did not report convergence; check the result or raise max_iter",
             ConvergenceWarning)
    at_bounds = _at_bounds(np.asarray(theta, dtype=float), lo, hi, sizes)
    for name, side, bound in at_bounds:
        warn(f"fit_hyperparameters: {name} ended at its {side} bound {bound:.4g}, where the evidence may still "
             f"rise; widen bounds={{{name.split('[')[0]!r}: (lo, hi)}} to search further", ConvergenceWarning)
    cw, cb, nz = (np.asarray(v, dtype=float) for v in unpack(device(theta)))
    fitted = with_hyperparameters(net, cw, cb)
    gp_value = float(log_evidence(fitted, XA, Y, noise=float(nz), finite_width=False, **options))
    if finite_stage:  # the prior's own check at the fitted values (ngp.condition there warned; the fit did not)
        K, _, V, n = _cumulants(fitted, XA, cw, cb, True, options)
        eps = expansion_parameter(K, V, n)
        if eps > EXPANSION_WARN:
            warn(f"fit_hyperparameters: at the fitted values the 1/n expansion parameter max|V|/(n K^2) = {eps:.3g} "
                 f"exceeds {EXPANSION_WARN}: first-order perturbation theory in 1/n is not reliable there "
                 "(docs/validity.md); compare with the GP fit (finite_width=False) or widen the network",
                 ExpansionWarning)
        eta = _eta(K, V, n, Y, float(nz), 0.0)
        if eta > ETA_WARN:
            warn(f"fit_hyperparameters: at the fitted values eta = Var[log p(y | network)] = {eta:.3g} exceeds "
                 f"{ETA_WARN:g} (it grows with the training rows over the width): the 1/n expansion is not trusted "
                 "there (docs/validity.md); compare with the GP fit (finite_width=False), widen the network or "
                 "raise the noise", ExpansionWarning)
    if finite_stage and not abs(value - gp_value) <= EVIDENCE_MAX:
        warn(f"fit_hyperparameters: at the fitted values the finite-width log evidence differs from the GP's by "
             f"{abs(value - gp_value):.3g} nats (> {EVIDENCE_MAX:g}): the 1/n expansion is not trusted there "
             "(docs/validity.md), and the fit may have run to where it breaks down; compare with the GP fit "
             "(finite_width=False) or widen the network", ExpansionWarning)
    # after a finite-width stage ``value`` is the optimiser's, ngp.log_evidence at the fitted values (the objective
    # evaluates it concretely, on the error-controlled four-point rule: _finite_width_objective)
    table = tuple(
        dict(stage=s["stage"], start=_describe(unpack(device(s["start"]))),
             final=_describe(unpack(device(s["theta"]))), log_evidence=s["value"], converged=s["converged"])
        for s in starts
    )
    return HyperFit(fitted, float(nz), tuple(float(v) for v in cw), tuple(float(v) for v in cb), value, gp_value,
                    finite_stage, table, success, at_bounds)


#: ``C_b``'s default lower bound in fits: no bias (a fit ending there, or on a lower bound below it, is not reported).
C_B_NO_BIAS = 1e-6


def _at_bounds(theta, lo, hi, sizes, tol: float = 1e-6) -> tuple:
    """``(name, side, bound)`` of the free log-parameters ``theta`` within ``tol`` of ``lo`` or ``hi`` (L-BFGS-B
    ends exactly on an active bound), but for ``C_b`` at a lower bound of at most :data:`C_B_NO_BIAS` (no bias);
    ``sizes``: free values per name of ``FIT_NAMES``."""
    names = [(k, k if sizes[k] == 1 else f"{k}[{i}]") for k in FIT_NAMES for i in range(sizes[k])]
    out = []
    for (key, name), t, a, b in zip(names, theta, lo, hi):
        if t <= a + tol:
            if key != "C_b" or a > math.log(C_B_NO_BIAS) + tol:  # a C_b bound the user set above "no bias" counts
                out.append((name, "lower", math.exp(a)))
        elif t >= b - tol:
            out.append((name, "upper", math.exp(b)))
    return tuple(out)


def _unpack(theta, sizes, per_layer, depth, cw_all, cb_all, noise0):
    """Free log-parameters ``theta`` (``sizes`` per name of ``FIT_NAMES``) -> ``(C_W, C_b, noise)`` per dense step."""
    out, i = {}, 0
    for k, size in zip(FIT_NAMES, sizes):
        out[k] = jnp.exp(theta[i:i + size]) if size else None
        i += size
    cw, cb = out["C_W"], out["C_b"]
    cw = device(cw_all) if cw is None else (cw if per_layer else jnp.repeat(cw, depth))
    cb = device(cb_all) if cb is None else (cb if per_layer else jnp.repeat(cb, depth))
    nz = out["noise"][0] if out["noise"] is not None else noise0
    return cw, cb, nz


_OBJECTIVES: "collections.OrderedDict" = collections.OrderedDict()

#: Step in the log-parameters of the finite-width objective's central differences.
FD_STEP = 1e-4
#: Steps of a typical finite-width stage (1-8, median 5, in fits of 4-14 rows: ``docs/cli.md``).
FW_TYPICAL_STEPS = 5
#: ``fit_hyperparameters`` warns (:class:`ngp.CostWarning`) when its finite-width stage, extrapolated from the
#: first evaluation of the evidence to :data:`FW_TYPICAL_STEPS` steps, would take longer than this (seconds).
SLOW_STAGE_S = 600.0


def evidence_objective(net, XA, fw, sizes, per_layer, depth, options, on_first=None):
    """``(theta, Y, cw_all, cb_all, noise0) -> (gradient, value)`` of minus the log evidence.

    GP: forward mode (memory independent of the quadrature size; few parameters; one pass gives the value, as
    aux, and the gradient), compiled. Its variances are not concrete at trace time, so each kernel picks in the
    program the Mehler orders of its largest variance's bucket (:func:`ngp._gaussian.traced_mehler_tables`), their
    Hermite tables the compiled function's ``tables`` argument (``docs/theory.md``, "Numerical paths and their
    accuracy"). The inputs are an argument of the compiled objective, which is remembered for the last 8 (network,
    input shape, options): each L-BFGS-B step then costs no compilation, nor do fits to new targets or to other
    inputs of the same shape (other starts, other draws, the folds of a cross-validation). Finite width:
    :func:`_finite_width_objective` (``on_first(seconds, evaluations per step)`` is called once, after its first
    evaluation of the evidence).
    """
    options = _evidence_options(options)
    if fw:
        return _finite_width_objective(net, XA, sizes, per_layer, depth, options, on_first)

    def f(theta, Y, cw_all, cb_all, noise0, X):
        cw, cb, nz = _unpack(theta, sizes, per_layer, depth, cw_all, cb_all, noise0)
        return -_evidence(_cumulants(net, X, cw, cb, False, options), Y, nz, 0.0)

    both = jax.jacfwd(lambda t, *a: _twice(f(t, *a)), has_aux=True)

    def with_tables(theta, Y, cw_all, cb_all, noise0, X, tables):
        with traced_mehler_tables(tables):
            return both(theta, Y, cw_all, cb_all, noise0, X)

    key = (net, repr(net), XA.shape, sizes, per_layer, tuple(sorted(options.items())))
    compiled = cached_per_network(_OBJECTIVES, 8, key, lambda: jax.jit(with_tables))
    tables = tuple(tuple(device(a, dtype=jnp.result_type(float)) for a in t) for t in switch_tables())
    return functools.partial(compiled, X=device(np.asarray(XA, dtype=float)), tables=tables)


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3))
def _noise_value_and_grad(sizes, per_layer, depth, n, theta, K, K1, V, Y, cw_all, cb_all, noise0):
    """Minus the log evidence from the cumulants ``(K, K1, V)`` (constants) and its gradient in ``theta``: exact
    in the noise's component, zero in the others (the cumulants do not depend on the noise)."""
    def value(t):
        return -_evidence((K, K1, V, n), Y, _unpack(t, sizes, per_layer, depth, cw_all, cb_all, noise0)[2], 0.0)

    return jax.value_and_grad(value)(theta)


def _finite_width_objective(net, XA, sizes, per_layer, depth, options, on_first=None):
    """:func:`evidence_objective` of the finite-width evidence: its value is :func:`log_evidence`'s on concrete
    arrays, the four-point term on the error-controlled rule (``docs/four-point.md``, "The fit's gradient") rather
    than the fixed rule a trace would run, which costs more (tanh depth 3, a step of five values on 16 diabetes rows:
    8.0 s against 27.1 s) and is off by its own error (``1.8e-6`` to ``6e-5`` relative in the cases measured there).
    The ``C_W`` and ``C_b`` components are central differences (step :data:`FD_STEP` in the log-parameters) of that
    value, two evaluations each; the noise's is the exact derivative given the cumulants at ``theta``, computed with
    the value (``1 + 2 (p - 1)`` evaluations of the cumulants when the noise is fitted, ``2 p + 1`` otherwise). A
    derivative of the evidence in ``C_W`` by Price's theorem on the fixed rule is not the derivative of its value
    (about 1% off in ``log C_W`` on the command line's 7 diabetes rows, where L-BFGS-B's line search then failed)."""
    moving = sizes[0] + sizes[1]  # the C_W and C_b components: they move the cumulants

    def at(theta, Y, cw_all, cb_all, noise0):
        nonlocal on_first
        t0 = time.perf_counter()
        cw, cb, _ = _unpack(theta, sizes, per_layer, depth, cw_all, cb_all, noise0)
        K, K1, V, n = _cumulants(net, XA, np.asarray(cw), np.asarray(cb), True, options)
        out = _noise_value_and_grad(sizes, per_layer, depth, n, theta, K, K1, V, Y, cw_all, cb_all, noise0)
        if on_first is not None:
            out[0].block_until_ready()  # JAX is asynchronous: the time of the value computed
            report, on_first = on_first, None
            report(time.perf_counter() - t0, 1 + 2 * moving)  # evaluations per step: the value, the differences
        return out

    def differenced(theta, *args):
        theta = jnp.asarray(theta, dtype=jnp.result_type(float))
        value, grad = at(theta, *args)
        if not moving:
            return grad, value
        steps = FD_STEP * jnp.eye(theta.shape[0], dtype=theta.dtype)[:moving]
        fd = jnp.stack([at(theta + e, *args)[0] - at(theta - e, *args)[0] for e in steps]) / (2 * FD_STEP)
        return grad.at[:moving].set(fd), value

    return differenced


def _twice(v):
    return v, v


def _describe(values):
    cw, cb, nz = values
    return {"C_W": np.asarray(cw, dtype=float).tolist(), "C_b": np.asarray(cb, dtype=float).tolist(),
            "noise": float(nz)}
