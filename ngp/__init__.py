"""ngp: Bayesian inference with finite-width neural-network priors.

Public API (see the docs for the conventions, THEORY sections 0-1):

* :class:`MLP` -- network description; ``net.prior(X)`` gives the output cumulants.
* :func:`gp_posterior` -- exact infinite-width (NNGP) regression.
* :func:`posterior` -- finite-width regression to first order in 1/n.
* :func:`sample_networks` -- draws of actual random networks (brute-force checks).
* :class:`ResMLP` -- residual MLP priors (infinite width).
* :mod:`ngp.criticality` -- susceptibilities, critical points, universality classes.
* :mod:`ngp.scaling` -- width scaling from neural-tangent to maximal-update (muP) parameterisation.
* :mod:`ngp.plot` -- figures (matplotlib imported lazily).
* :mod:`ngp.reference` -- NUTS and importance-sampling reference posteriors.
* :func:`activation`, :class:`Activation`, :data:`ACTIVATIONS` -- activations.
"""

from ._activations import ACTIVATIONS, Activation, activation
from ._gp import GPPosterior, gp_posterior
from ._mlp import MLP
from ._model_selection import EvidenceGrid, evidence_grid
from . import criticality, datasets, plot, reference, scaling
from ._posterior import FiniteWidthPosterior, posterior
from ._prior import Layer, Prior
from ._resmlp import ResMLP, ResPrior
from ._sampling import NetworkSamples, sample_networks

__version__ = "0.1.0"

__all__ = [
    "ACTIVATIONS",
    "Activation",
    "activation",
    "MLP",
    "ResMLP",
    "ResPrior",
    "criticality",
    "scaling",
    "plot",
    "reference",
    "datasets",
    "Prior",
    "Layer",
    "posterior",
    "evidence_grid",
    "EvidenceGrid",
    "FiniteWidthPosterior",
    "GPPosterior",
    "NetworkSamples",
    "sample_networks",
    "gp_posterior",
    "__version__",
]
