"""Choosing width, depth and initialisation by the finite-width Bayesian evidence."""

from __future__ import annotations

import dataclasses
import itertools
import math
import numbers
from typing import Sequence

import numpy as np

from ._mlp import MLP
from ._condition import condition
from ._conditioned_mf import MatrixFreeConditioned
from ._validity import EXPANSION_WARN
from ._validate import as_inputs, as_targets, count, nonneg_float, positive_float, warn
from ._warnings import ExpansionWarning
from ._validity import ETA_WARN, EVIDENCE_MAX, evidence_validity

__all__ = ["EvidenceGrid", "evidence_grid"]


@dataclasses.dataclass(frozen=True)
class EvidenceGrid:
    """Log evidence over a grid of architectures.

    Attributes:
        rows: one dict per grid point with keys ``depth``, ``width``, ``C_W``, ``C_b``,
            ``log_evidence`` (finite width, O(1/n)), ``log_evidence_gp`` (infinite width) and
            ``expansion_parameter`` (``max|V|/(n K^2)``), ``evidence_correction``
            (``|log_evidence - log_evidence_gp|``, nats), ``log_evidence_se`` (the Monte-Carlo standard error of
            a matrix-free evidence, ``docs/matrix-free.md``; 0 on the exact path), ``eta`` (``Var[log p(y |
            network)]`` at first order: exact on the exact path, estimated on the matrix-free one; ``None`` where
            the evidence is not finite or the network is Gaussian) and ``trusted``: the expansion parameter is at
            most 0.3, the first-order evidence correction at most 1 nat (``ngp._validity.EVIDENCE_MAX``; the
            neglected second-order terms grow like its square; ``docs/validity.md``) and the path's own verdict
            (``eta`` at most ``ngp.Validity.ETA_WARN`` = 1, :attr:`ngp.Conditioned.validity`) is trusted too.
    """

    rows: tuple

    def best(self, *, trusted_only: bool = True, threshold: float = EXPANSION_WARN,
             max_correction: float = EVIDENCE_MAX) -> dict:
        """The grid point with the largest finite-width evidence (by default among trusted ones: expansion
        parameter at most ``threshold``, evidence correction at most ``max_correction`` nats and ``eta`` at most
        ``ngp.Validity.ETA_WARN``)."""
        finite = [r for r in self.rows if math.isfinite(r["log_evidence"])]
        if not finite:
            raise ValueError("evidence_grid: no grid point has a finite log evidence (K + K1/n is not positive "
                             "definite at every one); widen the networks or add noise")
        rows = [r for r in finite if not trusted_only or (
            r["expansion_parameter"] <= threshold and r["evidence_correction"] <= max_correction
            and (r.get("eta") is None or r["eta"] <= ETA_WARN))]
        if not rows:
            raise ValueError(
                "evidence_grid: no grid point has a trustworthy 1/n expansion; widen the networks, add noise, "
                "or rescale the targets to the prior's output variance"
            )
        return max(rows, key=lambda r: r["log_evidence"])

    def table(self) -> str:
        """A plain-text table of the grid (columns as wide as their widest entry); ``+-`` is the Monte-Carlo standard
        error of a matrix-free evidence, ``corr`` the evidence correction (nats), ``eps`` the expansion
        parameter and ``eta`` the first-order variance of ``log p(y | network)``."""
        mc = any(r.get("log_evidence_se") for r in self.rows)
        head = ["depth", "width", "C_W", "C_b", "logZ (1/n)"] + (["+-"] if mc else []) + [
            "logZ (GP)", "corr", "eps"] + (["eta"] if any(r.get("eta") is not None for r in self.rows) else []) + [
            "trusted"]
        body = []
        for r in self.rows:
            eta = ([] if "eta" not in head else ["-" if r.get("eta") is None else f"{r['eta']:.3g}"])
            body.append([str(r["depth"]), str(r["width"]), f"{r['C_W']:.3g}", f"{r['C_b']:.3g}",
                         f"{r['log_evidence']:.3f}"] + ([f"{r.get('log_evidence_se', 0.0):.2g}"] if mc else []) + [
                f"{r['log_evidence_gp']:.3f}", f"{r['evidence_correction']:.3g}", f"{r['expansion_parameter']:.3f}"]
                + eta + ["yes" if r["trusted"] else "NO"])
        size = [max(len(c) for c in col) for col in zip(head, *body)]
        line = lambda cells: " ".join(c.rjust(k) for c, k in zip(cells, size))  # noqa: E731
        return "\n".join([line(head), "-" * len(line(head))] + [line(b) for b in body])


def _as_list(values, name, check):
    if isinstance(values, (str, bytes)):
        raise TypeError(f"{name}: expected a number or a sequence of numbers, got {values!r}")
    if isinstance(values, (numbers.Number, np.number)):
        values = [values]
    try:
        out = list(values)
    except TypeError as exc:
        raise TypeError(f"{name}: expected a number or a sequence of numbers, got {values!r}") from exc
    if not out:
        raise ValueError(f"{name}: expected at least one value")
    return [check(v, f"{name}[{i}]") for i, v in enumerate(out)]


def evidence_grid(X_train, Y_train, *, widths: Sequence[int], depths: Sequence[int], activation="tanh",
                  C_W: float | Sequence[float] = 1.0, C_b: float | Sequence[float] = 0.0, noise: float,
                  **options) -> EvidenceGrid:
    """Finite-width log evidence of the data for every (depth, width, C_W, C_b) in a grid.

    Equal hidden widths; for each (depth, C_W, C_b) the cumulants ``K``, ``K1``, ``V`` do not
    depend on the width, so one conditioning (:func:`ngp.condition`) serves every width
    (:meth:`ngp.Conditioned.with_width`).

    Args:
        X_train: ``(N, n0)`` inputs.
        Y_train: ``(N, out_dim)`` targets (``out_dim`` is taken from their shape).
        widths: grid of hidden widths.
        depths: grid of depths (depth >= 2 for a finite-width effect).
        activation: as in :class:`ngp.MLP`.
        C_W: weight variance, a value or a grid of values.
        C_b: bias variance, a value or a grid of values.
        noise: observation-noise variance.
        **options: passed to ``net.prior``.

    Returns:
        :class:`EvidenceGrid`; ``grid.best()`` is the most probable trusted architecture.

    Raises:
        numpy.linalg.LinAlgError: a grid point's training kernel (with the noise) is singular (e.g. duplicate
            training inputs with ``noise=0``): the message of :func:`ngp.condition`. A finite-width evidence whose
            ``K + K1/n + noise`` is not positive definite is kept as a NaN row instead (``trusted = False``).

    With more than 64 training inputs :func:`ngp.condition` takes the matrix-free (Monte-Carlo) path by default
    (``method="auto"``, ``docs/matrix-free.md``): the rows then carry the evidence's standard error and that
    path's own validity.
    """
    noise = nonneg_float(noise, "noise")
    X = as_inputs(X_train, "X_train")
    shape = np.shape(Y_train)
    Y = as_targets(Y_train, X.shape[0], shape[1] if len(shape) == 2 else 1)
    widths = _as_list(widths, "widths", count)
    depths = _as_list(depths, "depths", count)
    rows = []
    opts = dict(options)
    opts.setdefault("warn", False)
    for depth, cw, cb in itertools.product(depths, _as_list(C_W, "C_W", positive_float),
                                           _as_list(C_b, "C_b", nonneg_float)):
        net = MLP(depth, widths[0], activation=activation, C_W=cw, C_b=cb, out_dim=Y.shape[1])
        cond = condition(net, X, Y, noise=noise, **opts)
        for w in widths:
            cw_ = cond.with_width(w)
            try:
                logz = cw_.log_evidence
            except np.linalg.LinAlgError:
                logz = math.nan
            try:  # the matrix-free path's eps comes from the same run
                eps = cw_.expansion_parameter
            except np.linalg.LinAlgError:
                eps = math.nan
            validity = evidence_validity(logz, cw_.gp.log_evidence)
            # each path's own verdict: eps and eta on both (exact on the exact path), the evidence correction on the
            # exact path
            own = cw_.validity if math.isfinite(logz) else None
            mf = isinstance(cw_, MatrixFreeConditioned) and own is not None
            se = float(cw_.log_evidence_se) if mf else 0.0
            rows.append(dict(depth=depth, width=w, C_W=float(cw), C_b=float(cb), log_evidence=float(logz),
                             log_evidence_se=se, log_evidence_gp=cw_.gp.log_evidence, expansion_parameter=eps,
                             evidence_correction=validity.evidence_correction,
                             eta=None if own is None or own.eta is None else float(own.eta),
                             trusted=bool(validity.trusted and eps <= EXPANSION_WARN and (own is None or own.trusted))))
    untrusted = sum(not r["trusted"] for r in rows)
    if untrusted and options.get("warn", True):
        warn(f"evidence_grid: {untrusted} of {len(rows)} grid points have first-order terms that are not small "
             "(trusted = False); best() skips them (docs/validity.md)", ExpansionWarning)
    return EvidenceGrid(tuple(rows))
