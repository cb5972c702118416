import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

import ngp


def test_named_activations_evaluate():
    x = jnp.linspace(-2, 2, 5)
    expected = {
        "linear": np.asarray(x),
        "relu": np.maximum(np.asarray(x), 0),
        "tanh": np.tanh(np.asarray(x)),
        "sin": np.sin(np.asarray(x)),
    }
    for name, ref in expected.items():
        np.testing.assert_allclose(ngp.activation(name)(x), ref, rtol=1e-14)
    leaky = ngp.activation("leaky_relu", slope=0.2)
    np.testing.assert_allclose(leaky(x), np.where(x > 0, x, 0.2 * x))
    assert leaky.relu_slopes == (1.0, 0.2)
    for name in ngp.ACTIVATIONS:
        assert np.all(np.isfinite(np.asarray(ngp.activation(name)(x))))


def test_gelu_is_exact():
    from scipy.special import ndtr

    x = np.linspace(-3, 3, 7)
    np.testing.assert_allclose(ngp.activation("gelu")(jnp.asarray(x)), x * ndtr(x), rtol=1e-14)


def test_the_normal_cdf_is_scipys_in_the_tails_and_differentiates_to_the_density():
    """gelu and the relu family's smoothing use ``erfc(-x / sqrt 2) / 2`` for the normal CDF (cheaper on XLA:CPU than
    ``jax.scipy.special.ndtr``): relative to SciPy's ``ndtr`` within a few ulps down to -37 (a 1e-300 tail), in both
    tails, and its derivative is the density."""
    import jax
    from scipy.special import ndtr
    from scipy.stats import norm

    from ngp._activations import _ndtr

    x = np.concatenate([np.linspace(-37, 37, 20001), np.random.default_rng(0).normal(size=2000) * 3])
    np.testing.assert_allclose(np.asarray(_ndtr(jnp.asarray(x))), ndtr(x), rtol=4e-15, atol=0)
    # the density exp(-x^2 / 2) inherits the rounding of x^2 / 2: ~ (1 + x^2 / 2) ulps
    g, ref = np.asarray(jax.vmap(jax.grad(_ndtr))(jnp.asarray(x[::50]))), norm.pdf(x[::50])
    assert np.all(np.abs(g - ref) <= 4 * np.finfo(float).eps * (1 + x[::50] ** 2 / 2) * ref)


def test_unknown_name_lists_choices():
    with pytest.raises(ValueError, match="unknown activation 'tanhh'.*relu"):
        ngp.activation("tanhh")
    with pytest.raises(ValueError, match="activation"):
        ngp.MLP(2, 8, activation="nope")


def test_bad_activation_types():
    with pytest.raises(TypeError, match="activation"):
        ngp.activation(3.0)
    with pytest.raises(ValueError, match="slope"):
        ngp.activation("leaky_relu", slope=float("nan"))
    with pytest.raises(ValueError, match="elementwise"):
        ngp.activation(lambda x: jnp.sum(x))


def test_numpy_ufuncs_are_refused_before_jax_sees_them():
    """ngp.activation(np.tanh) raised a clear TypeError once; called again, jax.jit of the ufunc crashed the process
    (segfault, JAX 0.10): a NumPy ufunc is refused before jax.jit, every time (in a child process, in case)."""
    code = ("import ngp, numpy as np\n"
            "for f in (np.tanh, np.tanh, np.sinc, np.sinc):  # a ufunc, and a NumPy function that is not one\n"
            "    try:\n        ngp.activation(f)\n"
            "    except TypeError as e:\n        assert 'jnp.' + f.__name__ in str(e), e\n"
            "    else:\n        raise SystemExit('accepted')\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, (r.returncode, r.stderr[-500:])


def test_kinked_callable_is_rejected_unless_declared():
    with pytest.raises(ValueError, match="piecewise linear"):
        ngp.activation(lambda x: jnp.maximum(x, 0))
    act = ngp.activation(lambda x: jnp.maximum(x, 0), smooth=False, name="myrelu")
    assert act.name == "myrelu" and not act.smooth


def test_callable_derivatives():
    act = ngp.activation(lambda x: jnp.sin(2 * x))
    x = jnp.linspace(-1, 1, 4)
    np.testing.assert_allclose(act.derivative(2)(x), -4 * np.sin(2 * np.asarray(x)), rtol=1e-12)


@pytest.mark.parametrize("name", [n for n in ngp.ACTIVATIONS if ngp.activation(n).exp_split is not None])
def test_exp_split_equals_the_activation(name):
    """sigma(x) = h(exp(kappa x)) to a few ulps of max|sigma| on |x| <= 30 (the four-point kernel's
    exponential split; docs/four-point.md)."""
    act = ngp.activation(name)
    kappa, h = act.exp_split
    x = np.linspace(-30.0, 30.0, 200001)
    direct = np.asarray(act.fn(jnp.asarray(x)))
    split = np.asarray(h(jnp.exp(kappa * jnp.asarray(x))))
    assert np.max(np.abs(split - direct)) <= 8 * np.finfo(float).eps * np.max(np.abs(direct))


@pytest.mark.parametrize("name", [n for n in ngp.ACTIVATIONS if ngp.activation(n).exp_ratio is not None])
def test_exp_ratio_is_the_split_with_bounded_parts(name):
    """h = n / d to a few ulps on y = exp(kappa x), |x| <= 30, with 1 <= d(y) <= 2 max(1, y) and |n| <= d: the
    bounds that keep a node's products of numerators and denominators finite (docs/four-point.md)."""
    act = ngp.activation(name)
    kappa, h = act.exp_split
    n, d = act.exp_ratio
    y = jnp.exp(kappa * jnp.linspace(-30.0, 30.0, 200001))
    num, den = np.broadcast_to(np.asarray(n(y)), y.shape), np.asarray(d(y))
    assert np.max(np.abs(num / den - np.asarray(h(y)))) <= 4 * np.finfo(float).eps
    assert np.all(den >= 1.0) and np.all(den <= 2.0 * np.maximum(1.0, np.asarray(y)) * (1 + 1e-15))
    assert np.all(np.abs(num) <= den)


def _bumpy(x):  # a module-level callable: picklable by reference
    return jnp.sin(x) + 0.1 * x


def test_activations_pickle_as_what_made_them():
    """A named activation (with its parameters) and a composition of two pickle as the call that made them and
    unpickle as the process's one object for it (kernels are compiled per object and steps compare activations by
    identity); a callable's activation pickles as its fields, a lambda's not at all (pickle's own error)."""
    import copy
    import pickle

    from ngp._steps import compose

    named = [ngp.activation(name) for name in ngp.ACTIVATIONS] + [ngp.activation("leaky_relu", slope=0.2)]
    for act in named + [compose(ngp.activation("tanh"), ngp.activation("sin"))]:
        assert pickle.loads(pickle.dumps(act)) is act and copy.deepcopy(act) is act, act
    assert pickle.loads(pickle.dumps(named[-1])).relu_slopes == (1.0, 0.2)
    own = ngp.activation(_bumpy, name="bumpy")
    back = pickle.loads(pickle.dumps(own))
    assert back is not own and (back.name, back.fn, back.smooth) == ("bumpy", _bumpy, True)
    with pytest.raises((pickle.PicklingError, AttributeError), match="lambda"):
        pickle.dumps(ngp.activation(lambda x: jnp.sin(x)))
    net = ngp.serial(ngp.Dense(8), ngp.Elementwise("tanh"), ngp.Elementwise(own), ngp.Dense(1))
    assert pickle.loads(pickle.dumps(ngp.MLP(3, 16, activation="gelu"))) == ngp.MLP(3, 16, activation="gelu")
    assert repr(pickle.loads(pickle.dumps(net))) == repr(net)



def _shifted_tanh(x):
    return jnp.tanh(x) + 0.1 * x


def test_one_activation_object_shares_its_kernels_and_equality():
    """A callable gives a new object per ``ngp.activation`` call (it may read globals that change between calls:
    ``tests/test_criticality.py``), so networks given the callable itself compare unequal; the documented way to
    share is one object (a pickled or copied network gets a new one, with the same function)."""
    import copy
    import pickle

    a = ngp.activation(_shifted_tanh)
    assert ngp.activation(_shifted_tanh) is not a and ngp.MLP(2, 8, activation=_shifted_tanh) != ngp.MLP(
        2, 8, activation=_shifted_tanh)
    net = ngp.MLP(2, 8, activation=a)
    assert net == ngp.MLP(2, 8, activation=a) and net.activation is a
    assert pickle.loads(pickle.dumps(net)).activation.fn is _shifted_tanh is copy.deepcopy(net).activation.fn
