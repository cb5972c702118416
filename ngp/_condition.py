"""The entry points of Bayesian regression: ``ngp.condition`` (exact or matrix-free) and ``ngp.posterior``.

``condition`` chooses between the exact path (:class:`ngp.Conditioned`, dense vertex components,
``_posterior``) and the matrix-free path (:class:`ngp.MatrixFreeConditioned`, Monte-Carlo vertex
contractions, ``_conditioned_mf``); ``posterior`` is ``condition(...).predict(..., full_cov=True)``
on the exact path (``docs/theory.md``, "Posterior").
"""

from __future__ import annotations

from ._conditioned_mf import AUTO_EXACT_MAX, SOLVERS, MatrixFreeConditioned, mlp_spec
from ._posterior import Conditioned, FiniteWidthPosterior
from ._prior import DERIVATIVE_METHODS
from ._validate import as_inputs, check_seed, count, train_test

__all__ = ["condition", "posterior"]


#: ``net.prior``'s own ``method`` values that are not path names (passed through to the prior).
PRIOR_METHODS = tuple(m for m in DERIVATIVE_METHODS if m not in SOLVERS)


def condition(net, X_train, Y_train, *, noise: float, jitter: float = 0.0, method: str = "auto",
              solver: str | None = None, samples: int | None = None, seed: int = 0, **options) -> Conditioned:
    """Condition ``net``'s finite-width prior on training data (first order in ``1/n``).

    Observations ``y_i(x) = z_i(x) + eps``, ``eps ~ N(0, noise)``. The training-set work (GP solve,
    ``K1`` and ``V`` on the training inputs, the evidence) is done once; ``.predict(X_test)`` returns
    the posterior at any test inputs.

    Args:
        net: a network (:class:`ngp.MLP`, :func:`ngp.serial`, ...).
        X_train: ``(N_train, n0)`` training inputs.
        Y_train: ``(N_train, out_dim)`` targets of all ``out_dim`` output neurons.
        noise: observation-noise variance ``>= 0`` (``0``: exact conditioning).
        jitter: optional extra diagonal on the training kernel.
        method: ``"exact"`` (dense vertex components), ``"matrix_free"`` (Monte-Carlo estimate of the
            vertex contractions, ``O(samples N_train^2)``, fully connected networks only; outputs carry
            ``mean_se``, ``var_se``, ``log_evidence_se``; see ``docs/matrix-free.md``) or ``"auto"``:
            exact up to ``AUTO_EXACT_MAX = 64`` training points (or when the network is not
            supported by the matrix-free path), matrix-free above. ``.method`` says which was used.
            ``"closed"``, ``"mehler"``, ``"quadrature"`` are ``net.prior``'s derivative methods and are
            passed on to it (with ``"auto"`` path selection), as before.
        solver: the same choice as ``method`` (its earlier name; kept working). Giving both with
            different paths is an error.
        samples: Monte-Carlo samples per source layer for the matrix-free path (default 32768);
            standard errors fall like ``samples^-1/2``.
        seed: integer seed of the matrix-free path (results are reproducible for a fixed seed).
        **options: passed to ``net.prior`` (``four_point_order``, ``max_memory``, ...); the matrix-free path reads
            only ``max_memory`` (bytes for its arrays, :meth:`MatrixFreeConditioned.memory_estimate`; no default).

    Returns:
        :class:`Conditioned` with ``.log_evidence``, ``.gp``, ``.predict(X_test, full_cov=False)``.

    Raises:
        numpy.linalg.LinAlgError: singular training kernel (e.g. duplicate inputs with ``noise = 0``).
        NotImplementedError: architectures without finite-width cumulants.
    """
    if not isinstance(method, str):  # an array met 'in' with NumPy's "truth value ... is ambiguous"
        raise TypeError(f"method: expected one of {SOLVERS} (or net.prior's {PRIOR_METHODS}), got {method!r}")
    if method in PRIOR_METHODS:  # net.prior's own option, passed through as before
        options["method"], method = method, "auto"
    elif method not in SOLVERS:
        raise ValueError(f"method: expected one of {SOLVERS} (or net.prior's {PRIOR_METHODS}), got {method!r}")
    if samples is not None:  # checked on either path (the exact path does not read them)
        samples = count(samples, "samples", minimum=2)
    seed = check_seed(seed)
    if solver is None:
        solver = method
    elif not isinstance(solver, str):
        raise TypeError(f"solver: expected one of {SOLVERS}, got {solver!r}")
    elif solver not in SOLVERS:
        raise ValueError(f"solver: expected one of {SOLVERS}, got {solver!r}")
    elif method != "auto" and solver != method:
        raise ValueError(f"method={method!r} and solver={solver!r} ask for different paths; give one of them")
    if solver == "auto":
        XA = as_inputs(X_train, "X_train", in_dim=getattr(net, "in_dim", None))  # ragged or bad: named here
        big = XA.shape[0] > AUTO_EXACT_MAX
        solver = "matrix_free" if big and mlp_spec(net) is not None else "exact"
    if solver == "matrix_free":
        return MatrixFreeConditioned(net, X_train, Y_train, noise=noise, jitter=jitter, samples=samples, seed=seed,
                                     **options)
    return Conditioned(net, X_train, Y_train, noise=noise, jitter=jitter, **options)


def posterior(net, X_train, Y_train, X_test, *, noise: float, jitter: float = 0.0, **options) -> FiniteWidthPosterior:
    """Bayesian regression with ``net``'s finite-width prior, to first order in ``1/n``.

    ``condition(net, X_train, Y_train, noise=noise, ...).predict(X_test, full_cov=True)``: the
    posterior mean, covariance (including the ``O(1/n)`` covariance between output neurons) and
    evidence expanded to ``O(1/n_{L-1})`` (``docs/theory.md``, "Posterior"). With several outputs
    the prediction for output ``i`` depends on the targets of the other outputs through
    ``Y = sum_j yt_j yt_j^T``.

    Args:
        net: a network (:class:`ngp.MLP`, :func:`ngp.serial`, ...).
        X_train: ``(N_train, n0)`` training inputs.
        Y_train: ``(N_train, out_dim)`` targets of all ``out_dim`` output neurons.
        X_test: ``(N_test, n0)`` test inputs.
        noise: observation-noise variance ``>= 0`` (``0``: exact conditioning).
        jitter: optional extra diagonal on the training kernel.
        **options: passed to ``net.prior`` (``four_point_order``, ``max_memory``, ...). The
            posterior amplifies quadrature errors in ``V`` by the conditioning of the training
            kernel: keep the default ``four_point_rtol`` (``docs/validity.md``).

    Returns:
        :class:`FiniteWidthPosterior` (``.gp`` holds the infinite-width answer).

    Raises:
        numpy.linalg.LinAlgError: singular training kernel (e.g. duplicate inputs with ``noise = 0``).
        NotImplementedError: architectures without finite-width cumulants (e.g. unsupported residual patterns).
    """
    train_test(net, X_train, Y_train, X_test, noise, jitter, test_required=True)  # all argument errors before any work
    # the full covariance needs the exact path (the matrix-free path never forms test x test blocks)
    solver = options.pop("solver", None)  # method's earlier name; condition checks its value
    for name, value in (("method", options.get("method")), ("solver", solver)):
        if value == "matrix_free":
            raise ValueError(f"{name}: ngp.posterior needs the exact path (the full covariance); use "
                             "ngp.condition(..., method='matrix_free').predict(X_test) for the matrix-free one")
    return condition(net, X_train, Y_train, noise=noise, jitter=jitter,
                     solver="exact" if solver in (None, "auto") else solver, **options).predict(X_test, full_cov=True)
