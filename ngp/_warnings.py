"""The categories of ngp's warnings (``docs/api.md``, "Warnings").

Every warning the library raises is an :class:`NgpWarning`, itself a ``RuntimeWarning`` (so filters on
``RuntimeWarning`` keep working), in one of five kinds that a user may filter apart with
``warnings.filterwarnings("ignore", category=ngp.ExpansionWarning)`` and the like.
"""

from __future__ import annotations

__all__ = ["NgpWarning", "ExpansionWarning", "AccuracyWarning", "SamplingWarning", "ConvergenceWarning",
           "CostWarning", "duration"]


class NgpWarning(RuntimeWarning):
    """Base class of every warning ngp raises (a ``RuntimeWarning``)."""


class ExpansionWarning(NgpWarning):
    """The first-order ``1/n`` expansion may not hold here: a large expansion parameter, first-order terms
    that are not small against the GP's (``docs/validity.md``), a negative first-order variance, or a correction
    known to be incomplete. The numbers are computed as asked; the theory behind them is in doubt."""


class AccuracyWarning(NgpWarning):
    """A deterministic numerical result may have lost digits: the quadrature at large pre-activation variances,
    a numerical error bound large against the ``1/n`` correction, float32, nearly collinear inputs of a kinked
    activation, or a kernel that left the finite range (``docs/accuracy.md``)."""


class SamplingWarning(NgpWarning):
    """A Monte Carlo estimate is unreliable (e.g. few effective importance samples); its standard errors
    are unreliable too."""


class ConvergenceWarning(NgpWarning):
    """An optimisation or a training run did not converge: the optimiser stopped without reporting
    convergence, a fitted value ended at a bound, or gradient descent diverges."""


class CostWarning(NgpWarning):
    """A computation asked for will take long (many minutes): the warning gives the measured time it is
    extrapolated from and a cheaper way to the same kind of answer."""


def duration(seconds: float) -> str:
    """``seconds`` in the largest whole unit (minutes, hours, days) for a :class:`CostWarning`'s text."""
    for unit, size in (("days", 86400.0), ("hours", 3600.0), ("minutes", 60.0)):
        if seconds >= 2 * size:
            return f"{seconds / size:.0f} {unit}"
    return f"{seconds:.0f} s"
