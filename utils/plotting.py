"""Plotting helpers: each takes ``ax=None``, draws, and returns the axes (never ``plt.show()``)."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.colors import LinearSegmentedColormap

# A density drawn under arrows: matplotlib's "Greys" stopped at 45% of its range, so the peaks are
# mid-grey and dark arrows on them stay visible (plain "Greys" is black where the density peaks).
DENSITY_UNDER_ARROWS = LinearSegmentedColormap.from_list(
    "greys_light", plt.get_cmap("Greys")(np.linspace(0.0, 0.45, 64)))
# Widest figure, in inches, that JupyterLab shows at full size in a typical cell (about 1000 px at
# matplotlib's 100 dpi): a wider figure is scaled down and its labels shrink with it.
MAX_FIG_WIDTH = 10.0


def _ax(ax):
    return plt.gca() if ax is None else ax


def _np(x):
    return x.detach().cpu().double().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def grid_points(lim=3.0, n: int = 100):
    """(n*n, 2) float64 points of the square [-lim, lim]^2 and the (n, n) meshes X, Y."""
    u = torch.linspace(-lim, lim, n, dtype=torch.float64)
    X, Y = torch.meshgrid(u, u, indexing="xy")
    return torch.stack([X.reshape(-1), Y.reshape(-1)], 1), X, Y


def _frame(ax, lim, title):
    """Square axes on [-lim, lim]^2 (no limits for lim=None) with an optional title."""
    if lim is not None:
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-lim, lim)
    ax.set_aspect("equal")
    if title:
        ax.set_title(title)
    return ax


def panels(n: int, ncols: int | None = None, size: float = 3.3, squeeze: bool = True, **subplot_kw):
    """A figure of ``n`` square panels, at most ``ncols`` (default 3) per row, each ``size`` inches,
    no wider than MAX_FIG_WIDTH: the grid wraps into rows instead of shrinking its labels.
    Returns ``(fig, axes)`` with ``axes`` a flat array of ``n`` axes (unused grid cells removed),
    or the single axes when ``n == 1`` and ``squeeze``."""
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n={n!r} is not valid; expected a positive int")
    ncols = min(n, 3) if ncols is None else ncols
    if not isinstance(ncols, int) or ncols < 1:
        raise ValueError(f"ncols={ncols!r} is not valid; expected a positive int")
    if not size > 0:
        raise ValueError(f"size={size!r} is not valid; expected a positive number of inches")
    ncols = min(ncols, n)
    nrows = -(-n // ncols)
    width = min(size * ncols, MAX_FIG_WIDTH)
    height = width / ncols * nrows
    fig, axes = plt.subplots(nrows, ncols, figsize=(width, height), squeeze=False, **subplot_kw)
    axes = axes.reshape(-1)
    for ax in axes[n:]:
        ax.remove()
    axes = axes[:n]
    return fig, (axes[0] if n == 1 and squeeze else axes)


def plot_samples(x, ax=None, labels=None, lim=3.0, s=2, alpha=0.5, title=None, **scatter_kw):
    """Scatter of 2D samples x: (N, 2), coloured by ``labels`` if given."""
    ax = _ax(ax)
    x = _np(x)
    c = None if labels is None else _np(labels)
    ax.scatter(x[:, 0], x[:, 1], s=s, alpha=alpha, c=c, cmap="tab10" if c is not None else None,
               **scatter_kw)
    return _frame(ax, lim, title)


def plot_density(log_prob, ax=None, lim=3.0, n: int = 150, title=None, log=False, cmap="viridis"):
    """Image of p(x) = exp(log_prob(x)) (or log p with ``log=True``) on [-lim, lim]^2.
    ``log_prob``: callable (M, 2) float64 -> (M,)."""
    ax = _ax(ax)
    pts, X, Y = grid_points(lim, n)
    with torch.no_grad():
        lp = _np(log_prob(pts)).reshape(n, n)
    ax.imshow(lp if log else np.exp(lp), origin="lower", extent=(-lim, lim, -lim, lim), cmap=cmap)
    ax.set_aspect("equal")
    if title:
        ax.set_title(title)
    return ax


def plot_vector_field(field, ax=None, lim=3.0, n: int = 21, kind="quiver", color="k", title=None,
                      normalize=False):
    """Arrows (``kind="quiver"``) or streamlines (``"stream"``) of field: (M, 2) -> (M, 2).

    Arrows have a thin white edge so they stay visible over a dark density drawn underneath."""
    ax = _ax(ax)
    if kind not in ("quiver", "stream"):
        raise ValueError(f"kind={kind!r} is not valid; expected 'quiver' or 'stream'")
    pts, X, Y = grid_points(lim, n)
    with torch.no_grad():
        v = _np(field(pts)).reshape(n, n, 2)
    U, V = v[..., 0], v[..., 1]
    if normalize:
        norm = np.sqrt(U ** 2 + V ** 2) + 1e-12
        U, V = U / norm, V / norm
    if kind == "quiver":
        ax.quiver(_np(X), _np(Y), U, V, color=color, angles="xy", width=0.005, edgecolor="white", linewidth=0.3)
    else:
        ax.streamplot(_np(X), _np(Y), U, V, color=color, density=1.0, linewidth=0.7)
    return _frame(ax, lim, title)


def plot_trajectories(xs, ax=None, n_paths: int = 50, lim=3.0, color="C1", alpha=0.5, title=None):
    """Paths of a sampler: xs (steps + 1, B, 2) as recorded by :class:`utils.samplers.Recorder`;
    start points hollow, end points filled."""
    ax = _ax(ax)
    xs = _np(xs)[:, :n_paths]
    ax.plot(xs[:, :, 0], xs[:, :, 1], color=color, alpha=alpha, lw=0.8)
    ax.scatter(xs[0, :, 0], xs[0, :, 1], s=8, facecolors="none", edgecolors="gray")
    ax.scatter(xs[-1, :, 0], xs[-1, :, 1], s=8, color=color)
    return _frame(ax, lim, title)


def plot_loss(history, ax=None, window: int = 50, title="training loss", logy=True):
    """Raw and smoothed losses of a :class:`utils.training.History` (or a list of floats)."""
    ax = _ax(ax)
    losses = history.losses if hasattr(history, "losses") else list(history)
    ax.plot(losses, alpha=0.3, lw=0.7, label="per step")
    if hasattr(history, "smoothed"):
        ax.plot(history.smoothed(window), lw=1.5, label=f"mean of {window}")
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.legend()
    if title:
        ax.set_title(title)
    return ax
