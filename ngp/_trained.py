"""The ensemble of networks trained by full-batch gradient descent on the squared error: ``ngp.trained_ensemble``.

A thin public front end of ``ngp._training_theory`` (the numerics: :func:`infinite_width`,
:func:`finite_width_mean`): it validates the arguments, computes the prior's NTK statistics once on
the training and test inputs together, and presents the result. Conventions (loss, learning rates,
gradient flow time): ``docs/theory.md``, NTK section ("Trained networks", page ``docs/theory-ntk.md``).
"""

from __future__ import annotations

import contextlib
import dataclasses

import numpy as np

from ._prior import MAX_MEMORY, check_options
from ._training_theory import finite_width_mean, infinite_width
from ._validate import RCOND_MIN, count, float64, nonneg_float, positive_float, train_test, warn
from ._warnings import ConvergenceWarning, ExpansionWarning
from ._results import result

__all__ = ["TrainedEnsemble", "trained_ensemble", "FINITE_WIDTH"]

#: Accepted values of ``finite_width``.
FINITE_WIDTH = (False, "linearised", "first_order_dntk")

_INFINITE = "infinite width only: the NTK is frozen at its deterministic limit Theta; no 1/n terms."
_LINEARISED = (
    "mean_nlo: the O(1/n) ensemble mean at t -> infinity from the mean NTK shift (theta1) and the NTK's "
    "fluctuations at initialisation (variance). Complete at O(1/n) for the linearised network (NTK frozen at "
    "its random initial value) and for last-layer training. Not included: the NTK's motion during full "
    "training (dNTK, ddNTK), which is also O(1/n); the covariance is the infinite-width one."
)
_MEASURED = (
    "for the tanh networks measured in docs/theory-ntk.md, actual trained minus linearised networks differ by "
    "n x (-2.9, 2.9) +- 0.3 at two test inputs while the first-order dNTK term gives n x (1.37, -0.67)"
)
_DNTK = (
    "mean_nlo: the O(1/n) ensemble mean at t -> infinity from the mean NTK shift (theta1), the NTK's "
    "fluctuations (variance) and the first-order effect of the NTK's motion (dntk). Not included: terms second "
    "order in the NTK's motion (dNTK products, ddNTK means), which are O(1/n) too and of comparable or larger "
    f"size ({_MEASURED}): NOT a complete prediction for fully trained networks. The covariance is the "
    "infinite-width one."
)
_NO_HIDDEN = (
    "mean_nlo: the network has no hidden layer, so its NTK is deterministic and the model linear in its "
    "parameters: the infinite-width result is exact and the 1/n parts are zero."
)


@result
class TrainedEnsemble:
    """The ensemble of randomly initialised networks trained by full-batch gradient descent on the squared error.

    At infinite width the trained outputs are Gaussian; ``mean`` and ``cov`` are per output neuron
    (output neurons are independent). ``mean_nlo = mean + theta1 + variance (+ dntk)`` is the
    ensemble mean to ``O(1/n)`` at ``t -> infinity``; what it contains is stated in ``included``
    (``docs/theory-ntk.md``, "Trained networks").

    Attributes:
        mean: ``(N_test, out_dim)`` infinite-width ensemble mean at the test inputs.
        cov: ``(N_test, N_test)`` infinite-width covariance of each output neuron at the test inputs
            (the spread over initialisations; the same for every output neuron).
        mean_train, cov_train: the same at the training inputs (``t -> infinity``: the targets, and 0).
        t, eta, steps: the training time (gradient flow), or learning rate and number of gradient-descent
            steps; ``t = steps = None`` means trained to convergence.
        finite_width: ``False``, ``"linearised"`` or ``"first_order_dntk"`` (the option given).
        n: the width ``n_{L-1}`` dividing the corrections (``None``: no hidden layer, or ``finite_width=False``).
        mean_nlo: ``(N_test, out_dim)`` ensemble mean to ``O(1/n)`` (``None`` when ``finite_width=False``).
        theta1: ``(N_test, out_dim)`` part of ``mean_nlo - mean`` from the mean NTK shift ``Theta1/n``.
        variance: ``(N_test, out_dim)`` part from the NTK's fluctuations at initialisation (``A``, ``B``).
        dntk: ``(N_test, out_dim)`` part from the first-order motion of the NTK (``P``, ``Q``; only with
            ``finite_width="first_order_dntk"``, else ``None``).
        included: plain-language statement of what ``mean_nlo`` contains and what it does not.
        prior: the :class:`ngp.Prior` on the training inputs followed by the test inputs.
    """

    mean: np.ndarray
    cov: np.ndarray
    mean_train: np.ndarray
    cov_train: np.ndarray
    t: float | None
    eta: float | None
    steps: int | None
    finite_width: object
    n: int | None
    mean_nlo: np.ndarray | None
    theta1: np.ndarray | None
    variance: np.ndarray | None
    dntk: np.ndarray | None
    included: str
    prior: object = dataclasses.field(repr=False)

    @property
    def std(self) -> np.ndarray:
        """``(N_test,)`` infinite-width standard deviation of each output neuron at the test inputs."""
        return np.sqrt(np.clip(np.diag(self.cov), 0.0, None))


def _check_schedule(t, eta, steps, finite_width):
    if not (finite_width is False or (isinstance(finite_width, str) and finite_width in FINITE_WIDTH)):
        raise ValueError(f"finite_width: expected one of {FINITE_WIDTH}, got {finite_width!r}")
    if t is not None:
        t = nonneg_float(t, "t")
        if steps is not None or eta is not None:
            raise ValueError("t: give either the gradient-flow time t or (eta, steps) for gradient descent, not both")
    if steps is not None:
        steps = count(steps, "steps", minimum=0, what="a non-negative integer")
        if eta is None:
            raise ValueError("steps: gradient descent needs the learning rate eta as well")
    if eta is not None:
        eta = positive_float(eta, "eta")
        if steps is None:
            raise ValueError("eta: given without steps; pass steps=... (gradient descent) or t=... (gradient flow)")
    if finite_width is not False and (t is not None or steps is not None):
        raise ValueError(
            f"finite_width={finite_width!r}: the 1/n correction is implemented for t -> infinity only (t=None, "
            "steps=None); pass finite_width=False for the infinite-width ensemble at finite training time"
        )
    return t, eta, steps


def _check_memory(net, N, limit):
    """The finite-width NTK statistics keep seven ``(N, N, N, N)`` tensors per dense step (``V, A, B, D, F, P,
    Q``) plus work arrays: refuse before computing when the rough estimate exceeds ``limit`` bytes."""
    depth = len(net.dense_steps()) if hasattr(net, "dense_steps") else 1
    need = 8 * N**4 * (7 * depth + 8)
    if need > limit:
        raise MemoryError(
            f"trained_ensemble: the finite-width NTK statistics of {N} inputs (training + test) and {depth} dense "
            f"steps need about {need / 1024**3:.3g} GiB (> max_memory={limit / 1024**3:.3g} GiB; they have N^4 "
            "entries): use fewer inputs, finite_width=False, or raise max_memory if the machine has the memory"
        )


@float64
def trained_ensemble(net, X_train, Y_train, X_test, *, t: float | None = None, eta: float | None = None,
                     steps: int | None = None, finite_width="linearised", lambda_W=None, lambda_b=None,
                     **prior_options) -> TrainedEnsemble:
    """Predictions of the ensemble of ``net``'s networks trained by gradient descent on the squared error.

    Loss ``L = 1/2 sum_{i, alpha} (z_i(x_alpha) - y_{i;alpha})^2`` over the training inputs; every
    parameter moves by ``-eta lambda dL/dtheta`` (``lambda_b`` for biases, ``lambda_W / fan_in`` for
    weights: the NTK's learning rates). At infinite width the NTK ``Theta`` is frozen and the trained
    outputs are Gaussian (``docs/theory.md``, NTK section, "Trained networks"):
    mean ``Theta_{.A} Theta_AA^-1 (1 - E) y``, ``E = exp(-t Theta_AA)`` (gradient flow for time ``t``),
    ``(1 - eta Theta_AA)^steps`` (gradient descent), ``0`` (``t = steps = None``: trained to convergence).

    At convergence, ``finite_width`` adds the ``O(1/n)`` ensemble mean ``mean_nlo``:

    * ``"linearised"`` (default): the mean NTK shift and the NTK's fluctuations. Complete at ``O(1/n)``
      for the linearised network (NTK frozen at its random initial value) and for last-layer training. For
      networks with every layer trained it is *not* their ``1/n`` mean: actual trained networks differ from the
      linearised ones at the same order (``docs/theory-ntk.md``, "fully trained network"), and in that page's
      example ``mean_nlo`` was farther from them (``n x (2.9, 2.6)``) than the infinite-width ``mean``
      (``n x (1.85, 1.96)``).
    * ``"first_order_dntk"``: adds the first-order term of the NTK's motion during training (smooth
      activations). **Warning**: for fully trained networks the second-order terms of the NTK's motion,
      not computed, are of the same order and measured larger (trained minus linearised ``n x (-2.9, 2.9)``
      vs the first-order term ``n x (1.37, -0.67)``, ``docs/theory-ntk.md``); an :class:`ngp.ExpansionWarning` says so.
    * ``False``: infinite width only (required with a finite ``t`` or ``steps``).

    Args:
        net: a network (:class:`ngp.MLP`, :func:`ngp.serial`, ...).
        X_train: ``(N_train, n0)`` training inputs (distinct rows).
        Y_train: ``(N_train, out_dim)`` targets of all output neurons (``(N_train,)`` when ``out_dim = 1``).
        X_test: ``(N_test, n0)`` test inputs.
        t: gradient-flow time ``>= 0``; ``None`` (with ``steps=None``): ``t -> infinity``.
        eta: learning rate ``> 0`` of gradient descent (with ``steps``; not with ``t``).
        steps: number ``>= 0`` of gradient-descent steps (with ``eta``; not with ``t``).
        finite_width: ``"linearised"``, ``"first_order_dntk"`` or ``False`` (see above).
        lambda_W: learning-rate factor of the weights (divided by the fan-in), a float or one per dense
            step; ``None``: the network's own (``ngp.MLP(lambda_W=...)``, ``parameterization=``), else 1.
        lambda_b: learning-rate factor of the biases, likewise; biases are trained also in steps with
            ``C_b = 0`` (from zero), where ``net.init``'s networks have none: pass ``0`` for those steps to
            predict such networks (``docs/theory-ntk.md``, "Using it").
        **prior_options: passed to ``net.prior`` (``method``, ``terms``, ``warn``, ...).

    Returns:
        :class:`TrainedEnsemble` (``mean``, ``cov``, ``mean_nlo`` with its parts ``theta1``, ``variance``,
        ``dntk``, and ``included``, the statement of what the correction contains).

    Raises:
        ValueError: bad arguments (named), a finite-width correction with finite ``t``/``steps``,
            duplicated or nearly degenerate training inputs (singular training NTK), learning-rate factors
            ``lambda_W``, ``lambda_b`` all zero (zero NTK), or a diverging ``eta`` (``eta`` times the largest
            training-NTK eigenvalue ``>= 2``) whose mean and covariance overflow after ``steps`` steps (a
            divergence that stays finite gives an :class:`ngp.ConvergenceWarning` instead).
        MemoryError: the finite-width statistics (``N^4`` entries, ``N`` training plus test inputs) would
            exceed the prior option ``max_memory`` (default 4 GiB).
        NotImplementedError: architectures without the (finite-width) NTK statistics (e.g. residual
            networks with ``finite_width`` not ``False``).
    """
    t, eta, steps = _check_schedule(t, eta, steps, finite_width)
    if X_test is None:
        raise TypeError("X_test: expected a numeric array of shape (N_test, n0), got None")
    XA, XB, Y, _, _ = train_test(net, X_train, Y_train, X_test, 0.0)
    options = check_options(prior_options, "trained_ensemble")
    if np.unique(XA, axis=0).shape[0] < XA.shape[0]:
        raise ValueError("X_train: duplicated rows make the training NTK block singular; remove the duplicates")
    if finite_width == "first_order_dntk":
        warn(
            "ngp.trained_ensemble(finite_width='first_order_dntk'): the first-order dNTK term is not a complete "
            "O(1/n) correction for fully trained networks; the second-order terms of the NTK's motion are missing "
            f"and of comparable size ({_MEASURED}). Use finite_width='linearised' for the linearised network or "
            "last-layer training.",
            ExpansionWarning,
        )
    NA = XA.shape[0]
    if finite_width is not False:
        _check_memory(net, NA + XB.shape[0], options.get("max_memory", MAX_MEMORY))
    prior = net.prior(np.concatenate([XA, XB]), lambda_W=lambda_W, lambda_b=lambda_b, **options)
    if finite_width is False:
        Theta, K = prior.Theta, prior.K
    else:  # raises the prior's NotImplementedError for architectures without the statistics
        stats = (prior.ntk_layers_dntk if finite_width == "first_order_dntk" else prior.ntk_layers)[-1]
        Theta, K = stats.Theta, stats.K
    train = np.arange(NA)
    h = np.linalg.eigvalsh(Theta[:NA, :NA])
    if not h[-1] > 0:
        raise ValueError("lambda_W, lambda_b: the training NTK is zero (all learning-rate factors are 0, so no "
                         "parameter moves); give a positive lambda_W or lambda_b")
    if not h[0] > RCOND_MIN * h[-1]:
        raise ValueError(
            f"X_train: the training NTK block is singular or nearly so (reciprocal condition "
            f"{max(h[0], 0.0) / h[-1]:.2e} <= {RCOND_MIN:g}); remove nearly duplicated training inputs, or use fewer "
            "training inputs than the NTK's rank (a depth-1, linear network's is at most n0 + 1; a network that maps "
            "the inputs to nearly the same features, e.g. through a Scale(0) step, has rank 1 or 2)"
            + ("" if lambda_W is None and lambda_b is None else
               ", or give more parameters a positive learning-rate factor (lambda_W, lambda_b: with zero factors "
               "too few parameters move to fit every training point)")
        )
    diverges = steps is not None and eta * h[-1] >= 2.0
    try:
        with np.errstate(over="ignore", invalid="ignore") if diverges else contextlib.nullcontext():
            mean, cov = infinite_width(Theta, K, train, Y, t=t, eta=eta, steps=steps)
        finite = bool(np.all(np.isfinite(mean)) and np.all(np.isfinite(cov)))
    except ValueError:  # scipy's solve refuses an overflowed (1 - eta Theta)^steps
        if not diverges:
            raise
        finite = False
    if diverges:
        what = (f"eta * largest eigenvalue of the training NTK = {eta * h[-1]:.3g} >= 2: gradient descent diverges "
                f"(eta must be < 2 / {h[-1]:.3g} = {2 / h[-1]:.3g})")
        if not finite:
            raise ValueError(f"eta: {what}, and after steps={steps} the mean and covariance overflow float64; "
                             "lower eta (or steps)")
        warn(f"ngp.trained_ensemble: {what}; the mean and covariance grow with steps", ConvergenceWarning)
    result = dict(mean=mean[NA:], cov=cov[NA:, NA:], mean_train=mean[:NA], cov_train=cov[:NA, :NA], t=t, eta=eta,
                  steps=steps, finite_width=finite_width, n=None, mean_nlo=None, theta1=None, variance=None,
                  dntk=None, included=_INFINITE, prior=prior)
    if finite_width is False:
        return TrainedEnsemble(**result)
    n = prior.n
    dntk = finite_width == "first_order_dntk"
    if n is None:  # a single dense layer: deterministic NTK, linear model
        zero = np.zeros_like(mean[NA:])
        result.update(mean_nlo=mean[NA:], theta1=zero, variance=zero, dntk=zero if dntk else None,
                      included=_NO_HIDDEN)
        return TrainedEnsemble(**result)
    m_nlo, parts = finite_width_mean(Theta, train, Y, n=n, Theta1=stats.Theta1, A=stats.A, B=stats.B,
                                     P=stats.P if dntk else None, Q=stats.Q if dntk else None, n_out=Y.shape[1])
    result.update(n=n, mean_nlo=m_nlo[NA:], theta1=parts["theta1"][NA:] / n, variance=parts["variance"][NA:] / n,
                  dntk=parts["dntk"][NA:] / n if dntk else None, included=_DNTK if dntk else _LINEARISED)
    return TrainedEnsemble(**result)
