"""Training-time tools: Jacobian regularisation and the fluctuation-dissipation SGD scheduler.

* :func:`jacobian_penalty`, :func:`jacobian_regularized` -- half the batch-mean ``||df/dx||_F^2``
  by random projections (Hoffman, Roberts & Yaida 2019).
* :func:`fdr_observables`, :func:`fdr_sgd`, :func:`fdr_monitor` -- the first
  fluctuation-dissipation relation of SGD and the learning-rate scheduler built on it (Yaida 2018).

The optimisers are ``optax.GradientTransformation`` objects; optax (the ``train`` extra) is
imported only when one is built, so ``import ngp`` does not need it.
"""

from ._fdr import FDRMonitorState, FDRSGDState, fdr_monitor, fdr_observables, fdr_sgd
from ._jacobian import jacobian_penalty, jacobian_regularized

__all__ = [
    "jacobian_penalty",
    "jacobian_regularized",
    "fdr_observables",
    "fdr_sgd",
    "fdr_monitor",
    "FDRSGDState",
    "FDRMonitorState",
]
