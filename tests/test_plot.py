"""Plots render (Agg backend) and validate their arguments."""

import numpy as np
import pytest

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")

import ngp  # noqa: E402
from ngp import _resmlp, plot  # noqa: E402
from ngp import criticality as cr  # noqa: E402


def _saved(fig, path):
    fig.savefig(path, dpi=60)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path.exists() and path.stat().st_size > 5_000


def test_plot_flow_of_depth_flows_and_dicts(tmp_path):
    flows = [cr.depth_flow("tanh", C_W=cw, C_b=0.0, K0=1.0, depth=20) for cw in (0.9, 1.0, 1.1)]
    fig = plot.plot_flow(flows, width=64)
    assert len(fig.axes) == 3
    # the third panel shows V/(n K^2) for the critical tanh flow
    line = fig.axes[2].lines[1]
    np.testing.assert_allclose(line.get_ydata(), flows[1].V_over_K2 / 64)
    assert _saved(fig, tmp_path / "flow.png")
    # dicts with (L, N, N) / (L, N, N, N, N) arrays and per-layer widths; no width -> V/K^2
    L, N = 5, 2
    K = np.stack([np.eye(N) * (1 + l) for l in range(L)])
    V = np.zeros((L, N, N, N, N))
    V[:, 1, 1, 1, 1] = np.arange(L) * 3.0
    d = {"K": K, "K1": 0.1 * K, "V": V, "n": 8, "label": "dict"}
    fig = plot.plot_flow([d], input_index=1)
    l = np.arange(L)
    np.testing.assert_allclose(fig.axes[2].lines[0].get_ydata(), 3.0 * l / (1 + l) ** 2 / 8)
    np.testing.assert_allclose(fig.axes[1].lines[0].get_ydata(), 0.1)
    assert _saved(fig, tmp_path / "flow_dict.png")


def test_plot_flow_of_priors(tmp_path):
    x = np.array([[1.0, -0.5]])
    priors = [ngp.MLP(8, 512, activation="relu", C_W=cw, C_b=0.0).prior(x) for cw in (1.8, 2.0, 2.2)]
    fig = plot.plot_flow(priors)
    crit = priors[1].layers
    expected = [0.0] + [lay.V[0, 0, 0, 0] / (lay.n * lay.K[0, 0] ** 2) for lay in crit[1:]]
    np.testing.assert_allclose(fig.axes[2].lines[1].get_ydata(), expected, rtol=1e-12)
    np.testing.assert_allclose(expected, 5 * np.arange(8) / 512, rtol=1e-12)  # critical relu: 5(l-1)/n
    assert "C_W=2" in fig.axes[0].get_legend().get_texts()[1].get_text()
    assert _saved(fig, tmp_path / "flow_priors.png")


def test_plot_flow_into_given_axes(tmp_path):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    flow = cr.depth_flow("relu", C_W=2.0, C_b=0.0, K0=1.0, depth=10)
    out = plot.plot_flow(flow, quantities=["V/(nK^2)"], ax=ax)
    assert out is fig
    np.testing.assert_allclose(ax.lines[0].get_ydata(), 5.0 * np.arange(10))  # no width: V/K^2
    assert _saved(fig, tmp_path / "relu.png")
    with pytest.raises(ValueError, match="ax: expected 3 Axes"):
        plot.plot_flow(flow, ax=ax)


def test_plot_phase_diagram(tmp_path):
    fig = plot.plot_phase_diagram("tanh", resolution=15, depth=20)
    ax = fig.axes[0]
    star = [ln for ln in ax.lines if ln.get_marker() == "*"]
    assert len(star) == 1 and tuple(star[0].get_xydata()[0]) == (0.0, 1.0)
    assert _saved(fig, tmp_path / "phase_tanh.png")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    out = plot.plot_phase_diagram("relu", C_b=(0.0, 0.5), C_W=(1.0, 3.0), resolution=12, depth=10,
                                  quantity="K", ax=ax)
    assert out is fig and _saved(fig, tmp_path / "phase_relu.png")
    # swish's critical point (C_b = 0.555) outside the C_b range: no star off the axes, no legend naming it
    fig = plot.plot_phase_diagram("swish", C_b=(0.0, 0.3), resolution=6, depth=5)
    ax = fig.axes[0]
    assert not [ln for ln in ax.lines if ln.get_marker() == "*"] and ax.get_legend() is None
    assert ax.get_title().endswith(", outside")
    plt.close("all")


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: plot.plot_flow([]), "flows"),
        (lambda: plot.plot_flow([{"V": [0.0]}]), "'K'"),
        (lambda: plot.plot_flow([object()]), "flows"),
        (lambda: plot.plot_flow([{"K": [1.0, 1.0]}], quantities=["chi"]), "quantities"),
        (lambda: plot.plot_flow([{"K": [1.0]}], labels=["a", "b"]), "labels"),
        (lambda: plot.plot_phase_diagram("tanh", C_W=(0.0, 2.0)), "C_W"),
        (lambda: plot.plot_phase_diagram("tanh", C_b=(1.0, 0.5)), "C_b"),
        (lambda: plot.plot_phase_diagram("tanh", resolution=1), "resolution"),
        (lambda: plot.plot_phase_diagram("tanh", quantity="V"), "quantity"),
        (lambda: plot.plot_phase_diagram("tanhh"), "activation"),
        # raw IndexError / int() / broadcast errors before, not naming the argument
        (lambda: plot.plot_flow({"K": np.ones((3, 2, 2))}, input_index=2), "input_index: 2 is not an input"),
        (lambda: plot.plot_flow([{"K": [1.0]}], width="a"), "width: expected a positive integer"),
        (lambda: plot.plot_phase_diagram("tanh", resolution="a"), "resolution: expected an integer >= 2"),
        (lambda: plot.plot_flow({"K": [1, 2, 3], "V": [0, 1]}), r"flows\['V'\]: expected one value per layer"),
        (lambda: plot.plot_posterior(np.zeros((2, 1)), [], truth=(np.zeros(2),)), "truth: expected a pair"),
    ],
)
def test_bad_plot_arguments(call, match):
    with pytest.raises((ValueError, TypeError), match=match):
        call()


def test_residual_prior_flow_is_plotted_from_its_layers():
    """Residual networks have finite-width layers (issue 12): their flow is plotted like an MLP's."""
    prior = _resmlp.ResMLP(3, 8, gamma=0.8, xi=0.6).prior(np.ones((1, 2)))
    fig = plot.plot_flow(prior)
    assert len(prior.layers) == 3 and len(fig.axes) >= 1


def test_module_imports_without_matplotlib(import_facts):
    assert import_facts["plot_without_matplotlib"] == "ok", import_facts


class _Post:
    def __init__(self, n, out_dim=1):
        self.mean, self.var = np.zeros((n, out_dim)), np.ones((n, out_dim))


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: plot.plot_posterior(np.zeros((3, 1)), _Post(7)), r"posteriors\[0\].*N_test = 3"),
        (lambda: plot.plot_posterior(np.zeros((7, 1)), _Post(3)), r"posteriors\[0\].*N_test = 7"),
        (lambda: plot.plot_posterior(np.zeros((3, 1)), [_Post(3), _Post(4)]), r"posteriors\[1\]"),
        (lambda: plot.plot_posterior(np.zeros((3, 1)), _Post(3), output=1), "output: 1 is out of range"),
        (lambda: plot.plot_posterior(np.zeros((3, 1)), _Post(3), output=-1), "output"),
        (lambda: plot.plot_posterior(np.zeros((3, 2)), _Post(3)), r"X_test: expected 1-D inputs"),
        (lambda: plot.plot_posterior(np.full(3, np.nan), _Post(3)), "X_test"),
        (lambda: plot.plot_posterior(np.zeros(3), object()), r"posteriors\[0\]: expected a posterior"),
        (lambda: plot.plot_posterior(np.zeros(3), _Post(3), X_train=np.zeros(2), Y_train=np.zeros(3)), "Y_train"),
        (lambda: plot.plot_posterior(np.zeros(3), _Post(3), X_train=np.zeros(2)), "X_train, Y_train"),
    ],
)
def test_plot_posterior_checks_shapes(call, match):
    """Mismatched rows, an output neuron out of range and 2-D inputs raise, naming the argument (they drew a
    wrong figure silently or raised a bare IndexError)."""
    with pytest.raises((ValueError, TypeError), match=match):
        call()


def test_plot_posterior_draws_bands_and_data(tmp_path):
    post = _Post(4, out_dim=2)
    post.mean[:, 1] = [3.0, 0.0, 1.0, 2.0]
    x = np.array([0.3, 0.0, 0.1, 0.2])
    fig = plot.plot_posterior(x, post, output=1, X_train=x[:2, None], Y_train=np.ones((2, 2)), labels=["p"])
    ax = fig.axes[0]
    np.testing.assert_allclose(ax.lines[0].get_xydata(), [[0.0, 0.0], [0.1, 1.0], [0.2, 2.0], [0.3, 3.0]])
    assert _saved(fig, tmp_path / "posterior.png")


def test_plot_posterior_takes_one_column_targets_of_a_multi_output_posterior(tmp_path):
    """Y_train of shape (N, 1) with a two-output posterior: the targets of the output drawn (plotted before the
    shape checks; the check then asked for (N, 2))."""
    import types

    post = types.SimpleNamespace(mean=np.zeros((5, 2)), var=np.ones((5, 2)))
    x = np.linspace(-1, 1, 5)
    fig = ngp.plot.plot_posterior(x, post, output=1, X_train=x[:3], Y_train=np.ones((3, 1)))
    (data,) = [ln for ln in fig.axes[0].lines if ln.get_label() == "data"]
    np.testing.assert_array_equal(data.get_ydata(), np.ones(3))


def _axes_of_a_new_figure():
    import matplotlib.pyplot as plt

    return plt.subplots(1, 3)[1]


_FLOW = {"K": [1.0, 2.0, 3.0], "K1": [0.0, 0.1, 0.2], "V": [0.0, 1.0, 2.0]}


@pytest.mark.parametrize(
    "call,match",
    [
        # a string was split into characters: "ab" gave two labels, "GP" asked for two
        (lambda: plot.plot_posterior(np.zeros(3), [_Post(3), _Post(3)], labels="ab"),
         r"labels: expected 2 labels \(one per posterior\), got the single string 'ab'"),
        (lambda: plot.plot_flow([_FLOW, _FLOW], labels="ab"),
         r"labels: expected 2 labels \(one per flow\), got the single string 'ab'"),
        # matplotlib's "x and y must have same first dimension"
        (lambda: plot.plot_posterior(np.zeros(3), _Post(3), truth=([1, 2, 3], [1, 2])),
         r"truth: expected x and y of one length, got shapes \(3,\) and \(2,\)"),
        (lambda: plot.plot_posterior(np.zeros(3), _Post(3), truth=([1, 2], ["a", "b"])), r"truth\[1\]: expected real"),
        (lambda: plot.plot_posterior(np.zeros(3), _Post(3), truth=([1, 2], np.ones((2, 2)))),
         r"truth\[1\]: expected shape \(M,\) or \(M, 1\), got \(2, 2\)"),
        # AttributeError: 'str' object has no attribute 'figure' (or 'plot')
        (lambda: plot.plot_posterior(np.zeros(3), _Post(3), ax="junk"), "ax: expected a matplotlib Axes, got str"),
        (lambda: plot.plot_flow(_FLOW, quantities=["K"], ax="junk"), "ax: expected a matplotlib Axes, got str"),
        (lambda: plot.plot_flow(_FLOW, ax=[*_axes_of_a_new_figure()[:2], "junk"]),
         r"ax\[2\]: expected a matplotlib Axes, got str"),
        (lambda: plot.plot_phase_diagram("tanh", resolution=2, depth=1, ax="junk"),
         "ax: expected a matplotlib Axes, got str"),
        # "object of type 'int' has no len()", matplotlib's "figure size must be positive finite"
        (lambda: plot.plot_posterior(np.zeros(3), _Post(3), figsize=-1), r"figsize: expected \(width, height\)"),
        (lambda: plot.plot_posterior(np.zeros(3), _Post(3), figsize=(0, 3)), r"figsize\[0\]: must be > 0"),
        # AttributeError: 'str' object has no attribute 'savefig' (without a path: nothing raised)
        (lambda: plot.show("abc"), "fig: expected a matplotlib Figure, got str"),
        # widths 0 and -5 drew inf and negative values silently; the wrong length raised a bare broadcast error
        (lambda: plot.plot_flow({**_FLOW, "n": 0}), r"flows\['n'\]: must be > 0"),
        (lambda: plot.plot_flow({**_FLOW, "n": -5}), r"flows\['n'\]: must be > 0"),
        (lambda: plot.plot_flow({**_FLOW, "n": [8, 0, 8]}), r"flows\['n'\]\[1\]: must be > 0"),
        (lambda: plot.plot_flow({**_FLOW, "n": [1, 2]}), r"flows\['n'\]: expected 3 values \(one per layer"),
        (lambda: plot.plot_flow({**_FLOW, "n": "8"}), r"flows\['n'\]: expected a number"),
    ],
)
def test_plot_arguments_are_named_when_wrong(call, match):
    """Bad labels, truth, ax, figsize, fig and widths raise naming the argument (they raised matplotlib's or
    Python's errors naming nothing, or drew a wrong figure)."""
    import matplotlib.pyplot as plt

    try:
        with pytest.raises((ValueError, TypeError), match=match):
            call()
    finally:
        plt.close("all")


def test_one_string_is_one_label_or_one_quantity():
    """A single string is one label of a single posterior or flow and one quantity (it was split into
    characters: "GP" asked for two labels, "K1/K" for the quantities 'K', '1', '/', 'K')."""
    import matplotlib.pyplot as plt

    fig = plot.plot_posterior(np.zeros(3), _Post(3), labels="GP")
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == ["GP mean", "GP ±2σ"]
    fig = plot.plot_flow(_FLOW, labels="tanh", quantities="K1/K")
    assert len(fig.axes) == 1 and fig.axes[0].get_legend().get_texts()[0].get_text() == "tanh"
    np.testing.assert_allclose(fig.axes[0].lines[0].get_ydata(), [0.0, 0.05, 0.2 / 3])
    plt.close("all")


def test_plot_flow_of_a_prior_labels_per_layer_variances():
    """A prior with per-layer C_W is labelled with every layer's value (it was labelled with the last one)."""
    import matplotlib.pyplot as plt

    prior = ngp.MLP(3, 4, C_W=[2.0, 1.7, 0.5]).prior(np.ones((1, 2)))
    fig = plot.plot_flow(prior)
    assert fig.axes[0].get_legend().get_texts()[0].get_text() == "tanh, C_W=(2, 1.7, 0.5), C_b=0"
    plt.close("all")


def test_plot_flow_takes_per_layer_widths():
    fig = plot.plot_flow({**_FLOW, "n": np.array([5, 8, 16])}, quantities="V/(nK^2)")
    np.testing.assert_allclose(fig.axes[0].lines[0].get_ydata(), [0.0, 1.0 / 4 / 8, 2.0 / 9 / 16])
    import matplotlib.pyplot as plt

    plt.close("all")


def test_plot_posterior_warns_of_negative_variances():
    """A negative variance is drawn as a band of zero width with an ExpansionWarning (it was clipped silently)."""
    import warnings

    import matplotlib.pyplot as plt

    post = _Post(3)
    post.var[1, 0] = -0.5
    with pytest.warns(ngp.ExpansionWarning, match=r"posteriors\[1\] has a negative variance at 1 of 3 test inputs"):
        fig = plot.plot_posterior(np.arange(3.0), [_Post(3), post], labels=["a", "b"])
    band = fig.axes[0].collections[1].get_paths()[0].vertices
    np.testing.assert_array_equal(band[band[:, 0] == 1.0, 1], 0.0)  # zero width at x = 1
    assert band[:, 1].max() == 2.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plot.plot_posterior(np.arange(3.0), _Post(3), labels="a")  # no negative variance: no warning
    plt.close("all")


def test_plot_posterior_warns_of_non_finite_means():
    """A NaN mean or variance was drawn as a gap without a word."""
    import matplotlib.pyplot as plt

    post = _Post(4)
    post.mean[2, 0] = np.nan
    with pytest.warns(ngp.AccuracyWarning, match=r"posteriors\[0\] has a non-finite mean or variance at 1 of 4 test inputs"):
        plot.plot_posterior(np.arange(4.0), post, labels="a")
    plt.close("all")


def test_plot_posterior_draws_truth_in_the_order_of_x():
    """The reference curve is sorted by x like the means (it was drawn in the order given: a zigzag)."""
    import matplotlib.pyplot as plt

    fig = plot.plot_posterior(np.arange(3.0), _Post(3), truth=(np.array([[1.0], [0.0], [2.0]]), [10.0, 0.0, 20.0]))
    (ref,) = [ln for ln in fig.axes[0].lines if ln.get_label() == "reference"]
    np.testing.assert_array_equal(ref.get_xydata(), [[0.0, 0.0], [1.0, 10.0], [2.0, 20.0]])
    # a missing value is a gap, as matplotlib draws it (refused for a while: the reviewer)
    fig = plot.plot_posterior(np.arange(3.0), _Post(3), truth=([2.0, 0.0, 1.0], [20.0, np.nan, 10.0]))
    (ref,) = [ln for ln in fig.axes[0].lines if ln.get_label() == "reference"]
    np.testing.assert_array_equal(ref.get_xydata(), [[0.0, np.nan], [1.0, 10.0], [2.0, 20.0]])
    plt.close("all")
