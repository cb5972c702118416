"""Result records (``ngp._results.result``): identity equality, hashable, a short ``repr``, pickled by value.

A frozen dataclass's generated ``==`` raised ``ValueError`` (the truth value of an array) on every result that holds
arrays, ``hash()`` raised ``TypeError``, and ``repr`` printed arrays in full (79,062 characters for a depth flow
of 1000 layers)."""

import copy
import pickle

import numpy as np
import pytest

import ngp
import ngp.criticality as cr
import ngp.reference as ref
import ngp.scaling as sc
from ngp._results import SHOWN, result, short_repr

#: every public record that holds arrays (``HyperFit`` and ``EvidenceGrid`` hold none: they compare by value)
RECORDS = (ngp.GPPosterior, ngp.FiniteWidthPosterior, ngp.TrainedEnsemble,
           ngp.NetworkSamples, ref.ImportancePosterior, ref.NUTSPosterior, cr.DepthFlow, cr.ResidualDepthFlow,
           cr.AsymptoticLaw, cr.PhaseDiagram, sc.CoordinateCheck)


@pytest.mark.parametrize("cls", RECORDS, ids=lambda c: c.__name__)
def test_records_compare_by_identity(cls):
    assert cls.__eq__ is object.__eq__ and cls.__hash__ is object.__hash__


@pytest.fixture(scope="module")
def records():
    X = np.random.default_rng(0).normal(size=(5, 2))
    Y = np.sin(X[:, 0])
    net = ngp.MLP(2, 16)
    return {"gp": ngp.gp_posterior(net, X[:3], Y[:3], X[3:], noise=0.1),
            "posterior": ngp.posterior(net, X[:3], Y[:3], X[3:], noise=0.1),
            "samples": ngp.sample_networks(net, X, 200, seed=0),
            "flow": cr.depth_flow("tanh", depth=1000, C_W=1.0, C_b=0.0, K0=1.0)}


def test_records_are_usable_as_values(records):
    for name, r in records.items():
        twin = pickle.loads(pickle.dumps(r))
        assert r == r and r != copy.deepcopy(r) and r != twin, name  # identity, no exception
        assert len({r, twin}) == 2, name  # hashable
        for f in ("mean", "outputs", "K"):
            if hasattr(r, f):
                np.testing.assert_array_equal(getattr(twin, f), getattr(r, f))
    assert len(repr(records["flow"])) < 400 and "shape=(1000,)" in repr(records["flow"])
    assert "array(shape=(200, 5, 1), dtype=float64)" in repr(records["samples"])
    text = repr(records["posterior"])
    assert "\n" not in text and "gp=GPPosterior(mean=array([[" in text  # small arrays in full, on one line
    np.testing.assert_allclose(float(text.split("log_evidence=")[1].split(",")[0]), records["posterior"].log_evidence)


def test_short_repr_and_a_records_own_repr():
    assert short_repr(np.arange(SHOWN)) == "array([0, 1, 2, 3, 4, 5, 6, 7])"
    assert short_repr(np.zeros((3, 3))) == "array(shape=(3, 3), dtype=float64)"
    assert short_repr(list(range(SHOWN + 1))) == f"list(len={SHOWN + 1})" and short_repr((1, "a")) == "(1, 'a')"
    assert short_repr({"a": np.ones(20)}) == "{'a': array(shape=(20,), dtype=float64)}"

    @result
    class Own:
        x: np.ndarray

        def __repr__(self):
            return "own"

    assert repr(Own(np.ones(50))) == "own"
