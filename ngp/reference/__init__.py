"""Reference solvers for Bayesian inference with finite-width network priors.

Use them to check the perturbative finite-width posterior (and the GP) on your own problem:

* :func:`importance_posterior` -- Rao-Blackwellised importance sampling from the exact
  network prior (exact up to a reported Monte-Carlo error; fast for a few training points,
  works with ``noise = 0``).
* :func:`nuts_posterior` -- the same Bayesian neural network as a NumPyro model, sampled
  with NUTS (needs ``numpyro``, imported only when called; ``noise > 0``).
* :func:`log_likelihood` -- exact ``log p(y | G_hat)`` given sampled output metrics.

Results carry the field names of :class:`ngp.GPPosterior` (``mean``, ``var``, ``cov``,
``log_evidence`` where defined) plus Monte-Carlo standard errors and effective sample sizes.
"""

from ._importance import ESS_WARN, ImportancePosterior, importance_posterior, log_likelihood
from ._nuts import RHAT_WARN, NUTSPosterior, nuts_posterior

__all__ = [
    "ImportancePosterior",
    "importance_posterior",
    "log_likelihood",
    "NUTSPosterior",
    "nuts_posterior",
    "ESS_WARN",
    "RHAT_WARN",
]
