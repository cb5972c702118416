"""ngp: Bayesian inference with finite-width neural-network priors.

Public API (conventions and formulas: ``docs/theory.md``):

* :func:`serial`, :class:`Dense`, :class:`Elementwise`, :class:`Residual`, :class:`Scale` -- layer steps; a
  composition is a :class:`Network` whose ``net.prior(X)`` gives the output cumulants.
* :class:`MLP`, :class:`ResMLP` -- ready-made networks (thin constructors of step compositions).
* :func:`gp_posterior` -- exact infinite-width (NNGP) regression.
* :func:`condition` -- finite-width conditioning on training data; ``.predict(X_test)``.
* :func:`posterior` -- finite-width regression to first order in 1/n (one call); ``.validity`` (:class:`Validity`)
  says whether its first-order terms are small enough to trust.
* :func:`trained_ensemble` -- networks trained by gradient descent on the squared error (NTK): the
  infinite-width ensemble at any training time and its 1/n mean at convergence (:class:`TrainedEnsemble`).
* :func:`sample_networks` -- draws of actual random networks (brute-force checks).
* :func:`evidence_grid` -- architecture choice by the finite-width evidence.
* :func:`log_evidence`, :func:`fit_hyperparameters` -- the evidence as a JAX function of (C_W, C_b,
  noise) and its maximisation (ML-II).
* :mod:`ngp.criticality` -- susceptibilities, critical points, universality classes.
* :mod:`ngp.scaling` -- width scaling from neural-tangent to maximal-update (muP) parameterisation.
* :mod:`ngp.plot` -- figures (matplotlib imported lazily).
* :mod:`ngp.reference` -- NUTS and importance-sampling reference posteriors.
* :mod:`ngp.train` -- training-time tools: Jacobian regulariser, fluctuation-dissipation SGD (optax).
* :func:`activation`, :class:`Activation`, :data:`ACTIVATIONS` -- activations.
* :class:`NgpWarning` and its kinds :class:`ExpansionWarning`, :class:`AccuracyWarning`, :class:`SamplingWarning`,
  :class:`ConvergenceWarning`, :class:`CostWarning` -- the categories of every warning ngp raises (``docs/api.md``,
  "Warnings").
"""

from ._activations import ACTIVATIONS, Activation, activation
from ._gp import GPPosterior, gp_posterior
from ._steps import Dense, Elementwise, Residual, Scale, Step
from ._network import Network, serial
from ._mlp import MLP
from ._resmlp import ResMLP
from ._prior import Layer, Prior
from ._posterior import Conditioned, FiniteWidthPosterior
from ._condition import condition, posterior
from ._validity import Validity
from ._conditioned_mf import MatrixFreeConditioned
from ._model_selection import EvidenceGrid, evidence_grid
from ._hyper import HyperFit, fit_hyperparameters, log_evidence
from ._sampling import NetworkSamples, sample_networks
from ._trained import TrainedEnsemble, trained_ensemble
from ._warnings import AccuracyWarning, ConvergenceWarning, CostWarning, ExpansionWarning, NgpWarning, SamplingWarning
from . import criticality, datasets, plot, reference, scaling, train

#: Residual networks return an :class:`ngp.Prior` like every network (kept as an alias).
ResPrior = Prior

__version__ = "0.2.0"

__all__ = [
    "NgpWarning",
    "ExpansionWarning",
    "AccuracyWarning",
    "SamplingWarning",
    "ConvergenceWarning",
    "CostWarning",
    "ACTIVATIONS",
    "Activation",
    "activation",
    "serial",
    "Network",
    "Step",
    "Dense",
    "Elementwise",
    "Residual",
    "Scale",
    "MLP",
    "ResMLP",
    "ResPrior",
    "Prior",
    "Layer",
    "gp_posterior",
    "GPPosterior",
    "condition",
    "MatrixFreeConditioned",
    "Conditioned",
    "posterior",
    "FiniteWidthPosterior",
    "Validity",
    "evidence_grid",
    "EvidenceGrid",
    "log_evidence",
    "fit_hyperparameters",
    "HyperFit",
    "trained_ensemble",
    "TrainedEnsemble",
    "sample_networks",
    "NetworkSamples",
    "criticality",
    "scaling",
    "plot",
    "reference",
    "datasets",
    "train",
    "__version__",
]
