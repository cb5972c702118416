"""ngp: Bayesian inference with finite-width neural-network priors.

Public API (see the docs for the conventions, THEORY sections 0-1):

* :class:`MLP` -- network description; ``net.prior(X)`` gives the output cumulants.
* :func:`gp_posterior` -- exact infinite-width (NNGP) regression.
* :func:`activation`, :class:`Activation`, :data:`ACTIVATIONS` -- activations.
"""

from ._activations import ACTIVATIONS, Activation, activation
from ._gp import GPPosterior, gp_posterior
from ._mlp import MLP
from ._prior import Prior
from ._sampling import NetworkSamples, sample_networks

__version__ = "0.1.0"

__all__ = [
    "ACTIVATIONS",
    "Activation",
    "activation",
    "MLP",
    "Prior",
    "GPPosterior",
    "NetworkSamples",
    "sample_networks",
    "gp_posterior",
    "__version__",
]
