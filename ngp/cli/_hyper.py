"""The command line's one place for hyperparameters: :func:`fit_hyperparameters`.

``ngp regress`` calls it once per training set (per fold), on the standardised training rows,
before any posterior is computed, and prints what it returns; every row of the table then uses
those values. By default the CLI asks for evidence-fitted values (ML-II); ``--fixed`` keeps the
values given on the command line.
"""

from __future__ import annotations

import dataclasses

__all__ = ["Hyperparameters", "fit_hyperparameters", "FITTING_AVAILABLE"]

#: Whether this version fits hyperparameters (False: the given values are used and the help says so).
FITTING_AVAILABLE = False


@dataclasses.dataclass(frozen=True)
class Hyperparameters:
    """Hyperparameters a posterior is computed with.

    Attributes:
        C_W, C_b: weight and bias variances (``Var(W) = C_W / fan_in``, ``Var(b) = C_b``); a number
            or one value per weight layer.
        noise: observation-noise variance in standardised target units (the training targets
            have variance 1).
        source: ``"fitted"`` or ``"given"``; note: how they were obtained, for the report.
        log_evidence: the maximised log evidence when fitted (``None`` otherwise).
    """

    C_W: float | tuple
    C_b: float | tuple
    noise: float
    source: str
    note: str
    log_evidence: float | None = None

    def describe(self) -> str:
        f = lambda v: ", ".join(f"{x:.4g}" for x in v) if isinstance(v, tuple) else f"{v:.4g}"  # noqa: E731
        return f"C_W={f(self.C_W)}, C_b={f(self.C_b)}, noise={self.noise:.4g}"


def fit_hyperparameters(net, X_train, Y_train, *, noise: float, fixed: bool, seed: int = 0):
    """Hyperparameters for ``net`` on standardised training data.

    Args:
        net: the network with the given ``C_W``, ``C_b`` (:class:`ngp.MLP`).
        X_train: ``(N, n0)`` standardised inputs; Y_train: ``(N, 1)`` standardised targets.
        noise: the given observation-noise variance.
        fixed: keep the given values (``--fixed``).
        seed: seed of any random starts.

    Returns:
        :class:`Hyperparameters` (the CLI builds its networks, one per ``--width``, from them).
    """
    dense = net.dense_steps()
    cw = tuple(float(d.C_W) for d in dense)
    cb = tuple(float(d.C_b) for d in dense)
    cw = cw[0] if len(set(cw)) == 1 else cw
    cb = cb[0] if len(set(cb)) == 1 else cb
    if fixed:
        return Hyperparameters(cw, cb, float(noise), "given", "given values (--fixed)")
    # Evidence fitting (ML-II) is connected here once ngp.fit_hyperparameters is available:
    #     fit = ngp.fit_hyperparameters(net, X_train, Y_train, noise=noise, seed=seed)
    #     return Hyperparameters(fit.C_W, fit.C_b, fit.noise, "fitted", "...", fit.log_evidence)
    return Hyperparameters(cw, cb, float(noise), "given",
                                "given values (evidence fitting is not available in this version)")
