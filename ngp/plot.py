"""Plots: depth flow of the finite-width cumulants and (C_b, C_W) phase diagrams.

matplotlib is imported inside the functions only, so ``import ngp.plot`` works without it
(install the ``plots`` extra to draw). Every function accepts ``ax=`` (an existing Axes, or
a sequence of them where several panels are drawn) and returns the matplotlib ``Figure``.

* :func:`plot_flow` -- ``K``, ``K1/K`` and ``V/(n K^2)`` against the layer index for several
  initialisations (``docs/theory.md``, "Criticality": the normalised vertex grows linearly with depth at
  criticality and exponentially off it).
* :func:`show` -- write a figure to a file and, in a Jupyter kernel, display it inline.
* :func:`plot_phase_diagram` -- ``chi_perp`` (or ``K``) after many layers over a
  ``(C_b, C_W)`` grid, the ``chi_perp = 1`` line and the critical point.
"""

from __future__ import annotations

import math
import sys
from typing import Sequence

import numpy as np

from ._activations import activation as _make_activation
from ._validate import as_inputs, as_targets, count, per_layer, positive_float, warn
from ._warnings import AccuracyWarning, ExpansionWarning

__all__ = ["plot_flow", "plot_phase_diagram", "plot_posterior", "show"]

#: Quantities :func:`plot_flow` can draw.
FLOW_QUANTITIES = ("K", "K1/K", "V/(nK^2)")


def _pyplot():
    try:
        import matplotlib.pyplot as plt
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("ngp.plot needs matplotlib: pip install 'ngp[plots]'") from exc
    return plt


def _axes(ax, count: int, *, figsize):
    """``(fig, [ax...])``: new axes, or the given ones (one Axes or a sequence of ``count``)."""
    plt = _pyplot()
    from matplotlib.axes import Axes

    if ax is None:
        fig, axes = plt.subplots(1, count, figsize=figsize, squeeze=False)
        return fig, list(axes[0])
    axes = list(ax) if isinstance(ax, (list, tuple, np.ndarray)) else [ax]
    if len(axes) != count:
        raise ValueError(f"ax: expected {count} Axes (one per panel), got {len(axes)}")
    for i, a in enumerate(axes):
        if not isinstance(a, Axes):
            where = "ax" if a is ax else f"ax[{i}]"
            raise TypeError(f"{where}: expected a matplotlib Axes, got {type(a).__name__}")
    return axes[0].figure, axes


def _labels(labels, n: int, what: str):
    """Legend labels: ``None``, a sequence of ``n``, or one string when ``n == 1`` (not split into characters)."""
    if labels is None:
        return None
    if isinstance(labels, str):
        if n != 1:
            raise ValueError(f"labels: expected {n} labels (one per {what}), got the single string {labels!r}")
        return [labels]
    try:
        labels = list(labels)
    except TypeError:
        raise TypeError(f"labels: expected a sequence of {n} labels (one per {what}), got {labels!r}") from None
    if len(labels) != n:
        raise ValueError(f"labels: expected {n} labels (one per {what}), got {len(labels)}")
    return labels


def _figsize(value) -> tuple[float, float]:
    """``(width, height)`` in inches, both ``> 0``."""
    if isinstance(value, (str, bytes)) or not hasattr(value, "__len__") or len(value) != 2:
        raise TypeError(f"figsize: expected (width, height) in inches, two positive numbers, got {value!r}")
    return tuple(positive_float(v, f"figsize[{i}]") for i, v in enumerate(value))


def _per_layer_label(name: str, values) -> str:
    """``name=v`` when every layer has ``v``, else the per-layer values (the last one alone misled)."""
    vals = [f"{float(v):.4g}" for v in values]
    if len(set(vals)) == 1:
        return f"{name}={vals[0]}"
    if len(vals) <= 4:
        return f"{name}=({', '.join(vals)})"
    return f"{name} per layer {vals[0]}..{vals[-1]}"


# ----------------------------------------------------------------------------- flow
def _pick(arr, index: int, name: str = "flows") -> np.ndarray:
    """Per-layer scalars from per-layer scalars, ``(L, N, N)`` or ``(L, N, N, N, N)`` arrays."""
    try:
        a = np.asarray(arr, dtype=float)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{name}: expected per-layer numbers or (L, N, N[, N, N]) arrays, got {arr!r}") from exc
    if a.ndim == 1:
        return a
    if a.ndim not in (3, 5):
        raise ValueError(f"{name}: expected per-layer numbers or (L, N, N[, N, N]) arrays, got shape {a.shape}")
    if not 0 <= index < a.shape[1]:
        raise ValueError(f"input_index: {index} is not an input of {name} ({a.shape[1]} inputs)")
    return a[(slice(None),) + (index,) * (a.ndim - 1)]


def _flow_entry(item, index: int) -> dict:
    """Normalise a Prior, a DepthFlow or a dict to per-layer arrays K, K1, V, n and a label."""
    if isinstance(item, dict):
        if "K" not in item:
            raise ValueError("flows: a dict entry needs at least 'K' (per-layer values)")
        K = _pick(item["K"], index, "flows['K']")
        out = {"K": K, "label": item.get("label")}
        for key in ("K1", "V"):
            out[key] = None if item.get(key) is None else _pick(item[key], index, f"flows[{key!r}]")
            if out[key] is not None and out[key].shape != K.shape:
                raise ValueError(f"flows[{key!r}]: expected one value per layer like 'K' ({K.shape[0]}), got "
                                 f"{out[key].shape[0]}")
        n = item.get("n")
        out["n"] = None if n is None else np.array(per_layer(n, K.shape[0], "flows['n']", positive_float,
                                                             what="layer like 'K'"))
        return out
    from .criticality import DepthFlow

    if isinstance(item, DepthFlow):
        return {"K": np.asarray(item.K), "K1": np.asarray(item.K1), "V": np.asarray(item.V), "n": None,
                "label": f"C_W={item.C_W:.4g}, C_b={item.C_b:.4g}"}
    try:
        layers = item.layers
    except AttributeError:
        layers = None
    except NotImplementedError as exc:
        raise ValueError(f"flows: {type(item).__name__} has no finite-width layers: {exc}") from exc
    if layers is not None:
        if not 0 <= index < np.shape(layers[0].K)[0]:
            raise ValueError(f"input_index: {index} is not an input of the prior ({np.shape(layers[0].K)[0]} inputs)")
        K = np.array([np.asarray(L.K)[index, index] for L in layers], dtype=float)
        K1 = np.array([np.asarray(L.K1)[index, index] for L in layers], dtype=float)
        V = np.array([np.asarray(L.V)[index, index, index, index] for L in layers], dtype=float)
        n = np.array([np.nan if L.n is None else float(L.n) for L in layers])
        net = getattr(item, "net", None)
        label = None
        if net is not None:
            label = f"{net.activation.name}, {_per_layer_label('C_W', net.C_W)}, {_per_layer_label('C_b', net.C_b)}"
        return {"K": K, "K1": K1, "V": V, "n": n, "label": label}
    raise TypeError(
        f"flows: expected ngp Prior objects (with .layers), DepthFlow results or dicts of per-layer arrays, "
        f"got {type(item).__name__}"
    )


def plot_flow(flows, *, labels: str | Sequence[str] | None = None, width: int | None = None, input_index: int = 0,
              quantities: str | Sequence[str] = FLOW_QUANTITIES, logy: bool = False, ax=None):
    """Flow of ``K``, ``K1/K`` and ``V/(n K^2)`` with depth for several initialisations.

    Args:
        flows: a sequence of (or a single) ngp ``Prior`` objects with per-layer cumulants
            (``prior.layers``; each layer has ``.K``, ``.K1``, ``.V`` and the feeding width
            ``.n``), :class:`ngp.criticality.DepthFlow` results, or dicts with per-layer arrays
            ``"K"`` and optionally ``"K1"``, ``"V"``, ``"n"`` (a width ``> 0``, or one per layer), ``"label"``.
            Arrays may be per-layer scalars ``(L,)`` (one input) or ``(L, N, N)`` /
            ``(L, N, N, N, N)``, from which input ``input_index`` is taken.
        labels: legend labels, one per flow (a single string for a single flow); default: from the objects
            (a prior's ``C_W``, ``C_b``: one value, or the per-layer values where they differ).
        width: ``n`` for entries that do not carry their widths (DepthFlow, dicts without
            ``"n"``). If some entry has no width at all the third panel shows ``V/K^2``.
        input_index: which input's diagonal entry to draw.
        quantities: a subset of ``("K", "K1/K", "V/(nK^2)")`` (one panel each), or one of them as a string.
        logy: logarithmic y axes.
        ax: one Axes per quantity (a single Axes when one quantity is drawn), or ``None``.

    Returns:
        matplotlib ``Figure``.
    """
    if not isinstance(flows, (list, tuple)):
        flows = [flows]
    flows = list(flows)
    if not flows:
        raise ValueError("flows: expected at least one flow")
    quantities = (quantities,) if isinstance(quantities, str) else tuple(quantities)
    bad = [q for q in quantities if q not in FLOW_QUANTITIES]
    if bad or not quantities:
        raise ValueError(f"quantities: expected a non-empty subset of {FLOW_QUANTITIES}, got {quantities}")
    labels = _labels(labels, len(flows), "flow")
    if width is not None:
        width = count(width, "width")
    input_index = count(input_index, "input_index", minimum=0, what="a non-negative integer")
    entries = [_flow_entry(f, input_index) for f in flows]
    for e in entries:
        if e["n"] is None and width is not None:
            e["n"] = np.full(e["K"].shape, float(width))
        if e["n"] is not None:
            e["n"] = np.where(np.arange(len(e["K"])) == 0, np.nan, e["n"])  # layer 1 carries no 1/n
    per_n = all(e["n"] is not None for e in entries)
    fig, axes = _axes(ax, len(quantities), figsize=(4.2 * len(quantities), 3.4))
    for i, e in enumerate(entries):
        label = labels[i] if labels is not None else (e["label"] or f"flow {i + 1}")
        layers = np.arange(1, len(e["K"]) + 1)
        for axis, q in zip(axes, quantities):
            if q == "K":
                y = e["K"]
            elif q == "K1/K":
                if e["K1"] is None:
                    continue
                y = e["K1"] / e["K"]
            else:
                if e["V"] is None:
                    continue
                y = e["V"] / e["K"] ** 2
                if per_n:
                    with np.errstate(invalid="ignore"):
                        y = np.where(np.isnan(e["n"]), 0.0, y / e["n"])
            axis.plot(layers, y, marker="o" if len(layers) <= 30 else None, ms=3, label=label)
    titles = {"K": "kernel $K^{(\\ell)}$", "K1/K": "$K_1/K$ (coefficient of $1/n$)",
              "V/(nK^2)": "$V/(nK^2)$" if per_n else "$V/K^2$ (times $1/n$)"}
    for axis, q in zip(axes, quantities):
        axis.set_xlabel("layer $\\ell$")
        axis.set_title(titles[q])
        if logy:
            axis.set_yscale("log" if q != "K1/K" else "symlog")
        axis.grid(alpha=0.3)
    axes[0].legend(fontsize="small")
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------- phase diagram


def plot_phase_diagram(activation, *, C_b: tuple[float, float] = (0.0, 1.0), C_W: tuple[float, float] = (0.5, 3.0),
                       resolution: int = 41, depth: int = 64, K0: float = 1.0, quantity: str = "chi_perp",
                       ax=None):
    """``(C_b, C_W)`` phase diagram of a single-input network, with the critical point marked.

    Each grid point iterates ``K^(l+1) = C_b + C_W g(K^(l))`` from ``K^(1) = K0`` for ``depth``
    layers (kernels are clipped at 100; 400 Gauss-Hermite nodes: picture accuracy) and colours
    the result by ``chi_perp`` at the final kernel (``quantity="chi_perp"``, diverging colours
    centred on 1: ordered < 1 < chaotic) or by ``log10 K`` (``quantity="K"``). The
    ``chi_perp = 1`` contour is drawn, and the critical point from
    :func:`ngp.criticality.critical_point` is marked (a star) when it exists.

    Args:
        activation: name, :class:`ngp.Activation` or callable.
        C_b: ``(min, max)`` bias-variance range, ``0 <= min < max``.
        C_W: ``(min, max)`` weight-variance range, ``0 < min < max``.
        resolution: grid points per axis (``>= 2``).
        depth: number of layers iterated (``>= 1``).
        K0: first-layer kernel ``> 0``.
        quantity: ``"chi_perp"`` or ``"K"``.
        ax: an Axes or ``None``.

    Returns:
        matplotlib ``Figure``.
    """
    from . import criticality as cr

    cb_lo, cb_hi = _range(C_b, "C_b", lower=0.0, strict=False)
    cw_lo, cw_hi = _range(C_W, "C_W", lower=0.0, strict=True)
    resolution = count(resolution, "resolution", minimum=2, what="an integer >= 2")
    if quantity not in ("chi_perp", "K"):
        raise ValueError(f"quantity: expected 'chi_perp' or 'K', got {quantity!r}")
    cbs = np.linspace(cb_lo, cb_hi, int(resolution))
    cws = np.linspace(cw_lo, cw_hi, int(resolution))
    CB, CW = np.meshgrid(cbs, cws)  # rows: C_W, columns: C_b
    pd = cr.phase_diagram(activation, C_b=CB, C_W=CW, depth=depth, K0=K0)  # validates activation, depth, K0
    act = _make_activation(activation)
    K, chi_perp, diverged = pd.K, pd.chi_perp, pd.diverged
    _pyplot()
    from matplotlib.colors import TwoSlopeNorm

    fig, (ax,) = _axes(ax, 1, figsize=(5.2, 4.2))
    if quantity == "chi_perp":
        vals = np.clip(chi_perp, 1e-3, None)
        vmin, vmax = float(np.min(vals)), float(np.max(vals))
        norm = TwoSlopeNorm(vcenter=1.0, vmin=min(vmin, 0.999), vmax=max(vmax, 1.001))
        mesh = ax.pcolormesh(CB, CW, vals, cmap="RdBu_r", norm=norm, shading="auto")
        label = f"$\\chi_\\perp$ after {depth} layers"
    else:
        mesh = ax.pcolormesh(CB, CW, np.log10(K), cmap="viridis", shading="auto")
        label = f"$\\log_{{10}} K$ after {depth} layers"
    fig.colorbar(mesh, ax=ax, label=label)
    if np.nanmin(chi_perp) < 1 < np.nanmax(chi_perp):
        ax.contour(CB, CW, chi_perp, levels=[1.0], colors="k", linewidths=1.0)
    if np.any(diverged):
        ax.contourf(CB, CW, diverged.astype(float), levels=[0.5, 1.5], colors="none", hatches=["//"])
    point = cr.critical_point(act)
    title = f"{act.name}: "
    if point.exists:
        inside = cb_lo <= point.C_b <= cb_hi and cw_lo <= point.C_W <= cw_hi
        if inside:  # outside the ranges the star was drawn off the axes while the legend still named it
            ax.plot([point.C_b], [point.C_W], marker="*", ms=14, color="gold", mec="k",
                    label=f"critical ({point.universality_class})", linestyle="none")
            ax.legend(loc="upper right", fontsize="small")
        title += f"critical $(C_b, C_W) = ({point.C_b:.4g}, {point.C_W:.4g})$" + ("" if inside else ", outside")
    else:
        title += "no critical point"
    ax.set_xlim(cb_lo, cb_hi)
    ax.set_ylim(cw_lo, cw_hi)
    ax.set_xlabel("$C_b$")
    ax.set_ylabel("$C_W$")
    ax.set_title(title, fontsize="medium")
    return fig


def _range(value, name: str, *, lower: float, strict: bool) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{name}: expected a (min, max) pair, got {value!r}") from exc
    ok = math.isfinite(lo) and math.isfinite(hi) and lo < hi and (lo > lower if strict else lo >= lower)
    if not ok:
        rel = ">" if strict else ">="
        raise ValueError(f"{name}: expected finite (min, max) with min < max and min {rel} {lower}, got {value!r}")
    return lo, hi


# ----------------------------------------------------------------------------- posterior bands
def _x_axis(X, name: str) -> np.ndarray:
    """1-D inputs, ``(N, 1)`` or ``(N,)``, as an ``(N,)`` float array (else an error naming ``name``)."""
    try:
        one_d = not isinstance(X, (str, bytes)) and np.ndim(X) == 1
    except ValueError:  # ragged lists: as_inputs says so
        one_d = False
    arr = as_inputs(np.reshape(X, (-1, 1)) if one_d else X, name)
    if arr.shape[1] != 1:
        raise ValueError(f"{name}: expected 1-D inputs of shape (N, 1) or (N,), got shape {arr.shape}")
    return arr[:, 0]


def _bands(post, index: int, n: int, output: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean and variance of output neuron ``output`` of ``posteriors[index]``, checked against ``n`` test inputs."""
    name = f"posteriors[{index}]"
    try:
        mean, var = np.asarray(post.mean, dtype=float), np.asarray(post.var, dtype=float)
    except AttributeError:
        raise TypeError(f"{name}: expected a posterior with .mean and .var, got {type(post).__name__}") from None
    except (TypeError, ValueError):
        raise TypeError(f"{name}: .mean and .var must be numeric arrays of shape (N_test, out_dim)") from None
    if mean.ndim != 2 or mean.shape[0] != n or var.shape != mean.shape:
        raise ValueError(f"{name}: .mean and .var must have shape (N_test, out_dim) with N_test = {n} (the rows of "
                         f"X_test), got {mean.shape} and {var.shape}")
    if output >= mean.shape[1]:
        raise ValueError(f"output: {output} is out of range for {name} with out_dim = {mean.shape[1]}")
    return mean[:, output], var[:, output]


def _curve(a, name: str) -> np.ndarray:
    """A reference curve's coordinate, ``(M,)`` or ``(M, 1)`` real numbers, as ``(M,)`` floats; NaN allowed (a gap
    in the drawn curve, as matplotlib draws it)."""
    try:
        arr = np.asarray(a, dtype=float)
    except (TypeError, ValueError):
        raise TypeError(f"{name}: expected real numbers, got {type(a).__name__}") from None
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 1:
        raise ValueError(f"{name}: expected shape (M,) or (M, 1), got {arr.shape}")
    return arr


def _truth(truth) -> tuple[np.ndarray, np.ndarray]:
    """``plot_posterior``'s reference curve ``(x, y)``: two arrays of one length (NaN: a gap), sorted by ``x``."""
    if isinstance(truth, (str, bytes)) or not hasattr(truth, "__len__") or len(truth) != 2:
        raise ValueError(f"truth: expected a pair (x, y) of a reference curve, got {type(truth).__name__}"
                         + (f" of {len(truth)}" if hasattr(truth, "__len__") else ""))
    tx, ty = (_curve(a, f"truth[{i}]") for i, a in enumerate(truth))
    if tx.size != ty.size:
        raise ValueError(f"truth: expected x and y of one length, got shapes {np.shape(truth[0])} and "
                         f"{np.shape(truth[1])}")
    order = np.argsort(tx, kind="stable")
    return tx[order], ty[order]


def plot_posterior(X_test, posteriors, *, labels: str | Sequence[str] | None = None, output: int = 0,
                   X_train=None, Y_train=None, truth=None, ax=None, figsize=(6.5, 4.0)):
    """Posterior bands (mean ± 2 sd) of one output neuron over 1-D test inputs.

    Args:
        X_test: ``(N_test, 1)`` or ``(N_test,)`` finite test inputs (the x axis).
        posteriors: a posterior (``.mean``, ``.var`` of shape ``(N_test, out_dim)``; e.g.
            :func:`ngp.gp_posterior`, :func:`ngp.posterior`, the reference solvers) or a list of them.
        labels: legend labels, one per posterior (a single string for a single posterior).
        output: which output neuron to draw, ``0 <= output < out_dim``.
        X_train: training inputs to overlay, ``(N_train, 1)`` or ``(N_train,)`` (with ``Y_train``).
        Y_train: training targets to overlay, ``(N_train, out_dim)``, or ``(N_train,)`` / ``(N_train, 1)``: those of
            the output drawn (with ``X_train``).
        truth: optional ``(x, y)`` of a reference curve (e.g. importance-sampling means): ``(M,)`` or ``(M, 1)``
            arrays of one length, drawn in the order of ``x`` (NaN: a gap).
        ax: an existing Axes.
        figsize: ``(width, height)`` in inches of a new figure.

    Returns:
        The matplotlib Figure.

    A negative variance (the first-order expansion broke down, ``docs/validity.md``) is drawn as a band of zero
    width, with an :class:`ngp.ExpansionWarning` naming the posterior; a non-finite mean or variance as a gap, with
    an :class:`ngp.AccuracyWarning`.
    """
    x = _x_axis(X_test, "X_test")
    output = count(output, "output", minimum=0, what="a non-negative integer (an output neuron)")
    if truth is not None:
        truth = _truth(truth)
    figsize = _figsize(figsize)
    posts = posteriors if isinstance(posteriors, (list, tuple)) else [posteriors]
    if not posts:
        raise ValueError("posteriors: expected a posterior or a non-empty list of them")
    labels = _labels(labels, len(posts), "posterior")
    if labels is None:
        labels = [type(p).__name__ for p in posts]
    bands = [_bands(post, i, x.size, output) for i, post in enumerate(posts)]
    if (X_train is None) != (Y_train is None):
        raise ValueError("X_train, Y_train: give both (to overlay the data) or neither")
    if X_train is not None:
        xt = _x_axis(X_train, "X_train")
        # (N_train, out_dim): the drawn output's column; (N_train,) or (N_train, 1): the drawn output's targets
        two_d = np.ndim(Y_train) == 2 and np.shape(Y_train)[1] > 1
        out_dim = np.shape(posts[0].mean)[1]
        yt = as_targets(Y_train, xt.size, out_dim if two_d else 1, "Y_train")[:, output if two_d else 0]
    fig, (axis,) = _axes(ax, 1, figsize=figsize)
    order = np.argsort(x)
    for i, (mean, var) in enumerate(bands):
        bad = ~(np.isfinite(mean) & np.isfinite(var))
        if np.any(bad):  # matplotlib leaves gaps there without a word
            warn(f"plot_posterior: posteriors[{i}] has a non-finite mean or variance at {int(bad.sum())} of {bad.size} "
                 "test inputs, drawn as gaps in its line and band", AccuracyWarning)
        if np.any(var < 0):
            warn(f"plot_posterior: posteriors[{i}] has a negative variance at {int(np.sum(var < 0))} of {var.size} "
                 f"test inputs (min {float(np.min(var)):.3g}), drawn as a band of zero width there (a first-order "
                 "variance: the 1/n expansion has broken down, docs/validity.md)", ExpansionWarning)
    for (mean, var), label in zip(bands, labels):
        m = mean[order]
        s = np.sqrt(np.clip(var[order], 0.0, None))
        (line,) = axis.plot(x[order], m, label=f"{label} mean")
        axis.fill_between(x[order], m - 2 * s, m + 2 * s, color=line.get_color(), alpha=0.18, label=f"{label} ±2σ")
    if truth is not None:
        axis.plot(*truth, "k--", lw=1, label="reference")
    if X_train is not None:
        axis.plot(xt, yt, "ko", ms=5, label="data")
    axis.set_xlabel("x")
    axis.set_ylabel(f"output {output}")
    axis.legend(loc="best", fontsize=8)
    fig.tight_layout()
    return fig


def show(fig, path: str | None = None, *, dpi: int = 110):
    """Write ``fig`` to ``path`` and, when running in a Jupyter kernel, display it inline; then close it.

    One call that works in both places a tutorial runs: as a script (or in CI) the figure is
    written to the file and nothing is shown; in Jupyter it is also shown in the cell's output,
    whatever matplotlib backend is active. The figure is closed afterwards (no second display,
    no accumulation of open figures).

    Args:
        fig: a matplotlib Figure.
        path: file to write (``None``: display only).
        dpi: resolution of the file.

    Returns:
        ``path``.
    """
    plt = _pyplot()
    from matplotlib.figure import Figure

    if not isinstance(fig, Figure):
        raise TypeError(f"fig: expected a matplotlib Figure, got {type(fig).__name__}")
    if path is not None:
        fig.savefig(path, dpi=dpi)
    shell = None
    if "ipykernel" in sys.modules:
        try:
            from IPython import get_ipython

            shell = get_ipython()
        except ImportError:  # pragma: no cover - ipykernel always brings IPython
            shell = None
    if shell is not None and getattr(shell, "kernel", None) is not None:
        from IPython.display import display

        display(fig)
    plt.close(fig)
    return path
