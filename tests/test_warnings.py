"""The categories of ngp's warnings (ngp/_warnings.py): every warning the library raises names one of the five
kinds, each an ngp.NgpWarning and a RuntimeWarning; a few kinds are raised here through the public API (the others
are asserted by category where their own tests trigger them: test_finite, test_posterior, test_trained, ...)."""

import ast
import pathlib
import warnings

import numpy as np
import pytest

import ngp

KINDS = ("ExpansionWarning", "AccuracyWarning", "SamplingWarning", "ConvergenceWarning", "CostWarning")
PACKAGE = pathlib.Path(ngp.__file__).parent


@pytest.mark.parametrize("name", KINDS)
def test_each_kind_is_an_ngp_warning_and_a_runtime_warning(name):
    cls = getattr(ngp, name)
    assert issubclass(cls, ngp.NgpWarning) and issubclass(cls, RuntimeWarning) and name in ngp.__all__
    assert cls.__doc__
    others = [getattr(ngp, k) for k in KINDS if k != name]
    assert not any(issubclass(cls, o) for o in others)


def _warning_calls():
    """``(file, line, category expression)`` of every ``warn(...)`` / ``warnings.warn(...)`` call in the package
    (the category: the second positional argument or ``category=``; ``None`` if absent)."""
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            f = node.func
            name = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else None
            if name != "warn":
                continue
            cat = node.args[1] if len(node.args) > 1 else next(
                (k.value for k in node.keywords if k.arg == "category"), None)
            yield path.relative_to(PACKAGE).as_posix(), node.lineno, cat


def test_every_warning_the_package_raises_names_its_kind():
    calls = list(_warning_calls())
    assert len(calls) >= 20  # the scan finds the library's warnings
    bad = []
    for path, line, cat in calls:
        if path == "_validate.py" and isinstance(cat, ast.Name) and cat.id == "category":
            continue  # ngp._validate.warn itself, passing its caller's category on
        if not (isinstance(cat, ast.Name) and cat.id in KINDS):
            bad.append(f"{path}:{line}")
    assert not bad, f"warnings without one of {KINDS}: {bad}"


def test_too_few_effective_importance_samples_is_a_sampling_warning():
    from ngp.reference import importance_posterior

    rng = np.random.default_rng(0)
    X = rng.normal(size=(6, 2))
    Y = 3.0 * np.sin(X[:, :1] * 2)  # targets far from the prior's typical draws, little noise: few effective samples
    with pytest.warns(ngp.SamplingWarning, match="effective sample size"):
        importance_posterior(ngp.MLP(2, 4, activation="tanh"), X, Y, X[:1], noise=1e-4, num_samples=200, seed=0)


def test_kernel_beyond_the_accurate_range_is_an_accuracy_warning():
    # variance 1e4: the large-variance pair rule's estimate (~1e-4 of the scale) is past its tolerance
    with pytest.warns(ngp.AccuracyWarning, match="pre-activation variances beyond .* carry estimated errors"):
        ngp.MLP(2, 8, activation="tanh", C_W=1.0, C_b=0.0).prior(100.0 * np.ones((1, 3))).K
    with pytest.warns(ngp.AccuracyWarning, match="depth_flow"):
        ngp.criticality.depth_flow("tanh", C_W=1.0, C_b=200.0, K0=1.0, depth=3)


def test_an_unfinished_fit_is_a_convergence_warning():
    X = np.linspace(-1.0, 1.0, 6)[:, None]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ngp.fit_hyperparameters(ngp.MLP(2, 8, activation="tanh"), X, np.sin(3 * X), noise=0.1, finite_width=False,
                                num_starts=1, max_iter=1)
    hits = [w for w in caught if "did not report convergence" in str(w.message)]
    assert hits and all(w.category is ngp.ConvergenceWarning for w in hits)


def test_the_prior_warns_just_above_the_published_expansion_threshold():
    """``ngp.Validity.EXPANSION_WARN`` is where the warning starts: with equal widths the expansion parameter is
    ``c / n``, so the widths on either side of ``c / EXPANSION_WARN`` give one warning and none."""
    X = np.array([[0.3, -1.0], [1.2, 0.4]])
    c = 8 * ngp.MLP(4, 8, activation="tanh").prior(X, warn=False).expansion_parameter
    n = int(c / ngp.Validity.EXPANSION_WARN)  # eps(n) > threshold >= eps(n + 1)
    assert n >= 2
    for width, warned in ((n, True), (n + 1, False)):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ngp.MLP(4, width, activation="tanh").prior(X).V
        hits = [w for w in caught if issubclass(w.category, ngp.ExpansionWarning)]
        assert bool(hits) == warned, (width, c / width)


def test_a_long_finite_width_fit_is_a_cost_warning(monkeypatch):
    """fit_hyperparameters times the finite-width stage's first evaluation of the evidence and warns when five steps
    of it (five evaluations each: the value and differences in C_W and C_b) would pass SLOW_STAGE_S: not for the tiny
    fit below at the default bound, and with the extrapolated time when the bound is 0."""
    from ngp import _hyper

    rng = np.random.default_rng(2)
    X, Y = rng.normal(size=(4, 2)), rng.normal(size=(4, 1))
    net = ngp.MLP(2, 16, activation="tanh")
    seen = []
    monkeypatch.setattr(_hyper, "_finite_width_objective", lambda *a, inner=_hyper._finite_width_objective:
                        inner(*a[:-1], lambda s, k, report=a[-1]: seen.append(s) or report(s, k)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ngp.ConvergenceWarning)
        warnings.simplefilter("error", ngp.CostWarning)
        ngp.fit_hyperparameters(net, X, Y, num_starts=1, max_iter=2)
        assert len(seen) == 1 and 25 * seen[0] < _hyper.SLOW_STAGE_S
        monkeypatch.setattr(_hyper, "SLOW_STAGE_S", 0.0)
        with pytest.warns(ngp.CostWarning) as rec:
            ngp.fit_hyperparameters(net, X, Y, num_starts=1, max_iter=2)
    stage = 25 * seen[1]
    took = f"{stage / 60:.0f} min" if stage >= 60 else f"{stage:.0f} s"
    (msg,) = [str(w.message) for w in rec if w.category is ngp.CostWarning]
    assert msg.startswith(
        f"fit_hyperparameters: the finite-width stage on 4 training rows will take about {took} (an evaluation of the "
        f"evidence took {seen[1]:.3g} s, a step takes 5 of them, a typical fit 5 steps;")
    assert "finite_width=False" in msg


def test_quiet_drops_the_blocks_own_ngp_warnings_and_no_other_threads():
    """ngp._validate.quiet(category): ngp's warnings of that category raised in the block, on its thread or in jobs
    it hands to ngp's threads, are dropped; other categories, other threads' warnings and the process's filters
    are untouched (what warnings.catch_warnings would swap process-wide); after the block they are raised again."""
    import threading

    from ngp._threads import in_background, thread_map
    from ngp._validate import quiet, warn

    go, done = threading.Event(), threading.Event()

    def other_thread():  # a user's thread, warning while the block runs
        go.wait(10)
        warn("other thread", ngp.AccuracyWarning)
        done.set()

    worker = threading.Thread(target=other_thread)
    worker.start()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        filters = list(warnings.filters)
        with quiet(ngp.AccuracyWarning):
            assert warnings.filters == filters
            warn("dropped", ngp.AccuracyWarning)
            warn("kept", ngp.ExpansionWarning)
            thread_map(lambda k: warn(f"job {k}", ngp.AccuracyWarning), range(3))
            in_background(warn, "background", ngp.AccuracyWarning).result()
            go.set()
            assert done.wait(10)
        warn("after", ngp.AccuracyWarning)
    worker.join()
    assert sorted(str(w.message) for w in caught) == ["after", "kept", "other thread"]
