"""Network description and bad-input handling."""

import numpy as np
import pytest

import ngp


def test_widths_and_per_layer_hyperparameters():
    net = ngp.MLP(depth=3, width=[8, 4], activation="relu", C_W=[1.0, 2.0, 1.5], C_b=0.1, out_dim=2)
    assert net.widths == (8, 4) and net.n_last == 4
    assert net.C_W == (1.0, 2.0, 1.5) and net.C_b == (0.1, 0.1, 0.1)
    assert "MLP(depth=3" in repr(net)
    assert ngp.MLP(1).widths == () and ngp.MLP(1).n_last is None


@pytest.mark.parametrize(
    "kwargs,exc,match",
    [
        (dict(depth=0, width=4), ValueError, "depth"),
        (dict(depth=2.5, width=4), TypeError, "depth"),
        (dict(depth=3, width=0), ValueError, "width"),
        (dict(depth=3, width=[4]), ValueError, "width"),
        (dict(depth=3, width=[4, -1]), ValueError, r"width\[1\]"),
        (dict(depth=3, width=4.5), TypeError, "width"),
        (dict(depth=3), ValueError, "width"),
        (dict(depth=2, width=4, C_W=0.0), ValueError, "C_W"),
        (dict(depth=2, width=4, C_W=-1.0), ValueError, "C_W"),
        (dict(depth=2, width=4, C_b=-0.1), ValueError, "C_b"),
        (dict(depth=2, width=4, C_b=float("nan")), ValueError, "C_b"),
        (dict(depth=2, width=4, C_W=[1.0]), ValueError, "C_W"),
        (dict(depth=2, width=4, C_W=[1.0, -2.0]), ValueError, r"C_W\[1\]"),
        (dict(depth=2, width=4, out_dim=0), ValueError, "out_dim"),
        (dict(depth=2, width=4, activation="swishh"), ValueError, "activation"),
    ],
)
def test_bad_network_arguments(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        ngp.MLP(**kwargs)


@pytest.mark.parametrize(
    "X,match",
    [
        (np.zeros(3), r"X: expected shape \(N, n0\)"),
        (np.zeros((0, 3)), "X: expected at least one"),
        (np.array([[1.0, np.inf]]), "X: contains non-finite"),
        ([["a", "b"]], "X"),
    ],
)
def test_bad_inputs(X, match):
    with pytest.raises((ValueError, TypeError), match=match):
        ngp.MLP(2, 4).prior(X)


def test_in_dim_is_checked():
    with pytest.raises(ValueError, match="in_dim"):
        ngp.MLP(2, 4, in_dim=3).prior(np.zeros((2, 2)))


def test_float32_warns():
    import jax

    jax.config.update("jax_enable_x64", False)
    try:
        with pytest.warns(ngp.AccuracyWarning, match="float32"):
            ngp.MLP(2, 4).prior(np.ones((2, 2)))
    finally:
        jax.config.update("jax_enable_x64", True)


def test_sampler_arguments():
    net = ngp.MLP(2, 4)
    with pytest.raises(ValueError, match="method"):
        ngp.sample_networks(net, np.ones((2, 2)), 4, method="magic")
    with pytest.raises(ValueError, match="num_samples"):
        ngp.sample_networks(net, np.ones((2, 2)), 0)
    s = ngp.sample_networks(ngp.MLP(3, [5, 6], out_dim=2), np.ones((3, 2)), 7, batch_size=3)
    assert s.outputs.shape == (7, 3, 2) and s.metric.shape == (7, 3, 3)


@pytest.mark.parametrize("seed, exc", [("a", TypeError), (None, TypeError), (1.5, TypeError), (True, TypeError),
                                       (-1, ValueError), (2**63, ValueError)])
def test_seeds_are_checked_by_name(seed, exc):
    from ngp._validate import check_seed

    with pytest.raises(exc, match="^seed: "):
        ngp.sample_networks(ngp.MLP(2, 4), np.ones((2, 2)), 2, seed=seed)
    with pytest.raises(exc, match="^seed: "):
        ngp.fit_hyperparameters(ngp.MLP(2, 4), np.ones((2, 2)), np.ones(2), seed=seed)
    assert check_seed(np.int64(3)) == 3 and type(check_seed(np.uint8(3))) is int


def test_sampler_refuses_overflowing_networks():
    net = ngp.MLP(3, 4, activation="relu")
    with pytest.raises(ValueError, match="^X: 2 of 2 sampled networks have non-finite outputs"):
        ngp.sample_networks(net, 1e200 * np.ones((1, 2)), 2)


def test_networks_that_compare_unequal_have_different_reprs():
    """MLP(2, 16), MLP(2, 16, lambda_W=0.5) and MLP(2, 16, in_dim=2) printed the same repr (lambda_W changes the NTK
    and training) and serial(..., in_dim=2) left in_dim out."""
    nets = [ngp.MLP(2, 16), ngp.MLP(2, 16, lambda_W=0.5), ngp.MLP(2, 16, lambda_b=[2.0, 1.0]), ngp.MLP(2, 16, in_dim=2),
            ngp.MLP(2, 16, parameterization="mup")]
    assert len({repr(n) for n in nets}) == len(nets)
    steps = (ngp.Dense(4), ngp.Elementwise("tanh"), ngp.Dense(1))
    with_dim = repr(ngp.serial(*steps, in_dim=2))
    assert with_dim != repr(ngp.serial(*steps)) and "in_dim=2" in with_dim


def test_a_networks_repr_rebuilds_it():
    """With a parameterization the repr showed the multiplied ``C_W``/``lambda_W`` beside ``parameterization='mup'``
    and no ``base_width``: pasted back, the multipliers applied twice (another network); a family's name
    ``'family(0.5)'`` was not a valid argument; ``ResMLP`` left ``in_dim`` out and printed ``gamma=None, xi=None``
    (refused by its constructor) without blocks."""
    nets = [ngp.MLP(3, 16, parameterization="mup", base_width=4), ngp.MLP(3, 16, parameterization=1 / 3,
                                                                          C_W=[1.5, 1.2, 1.0]),
            ngp.MLP(3, 16, C_W=1.5, lambda_W=2.0, in_dim=2), ngp.ResMLP(3, 8, in_dim=2), ngp.ResMLP(2, 8),
            ngp.ResMLP(4, 8, gamma=[0.9, 0.8]),
            # a custom parameterization whose first exponent is outside the family's [0, 1]: repr raised family()'s
            # ValueError
            ngp.MLP(3, 16, parameterization=ngp.scaling.Parameterization("x", lam_W=(2, 2, 0)), base_width=4)]
    for net in nets:
        back = eval("ngp." + repr(net), {"ngp": ngp, "Parameterization": ngp.scaling.Parameterization})
        assert back == net and repr(back) == repr(net), repr(net)
        if isinstance(net, ngp.MLP):
            assert back.C_W == net.C_W and back.lambda_W == net.lambda_W
