"""Pareto plots written to PNG with matplotlib's Agg canvas (no display, no pyplot state).

- ``plot_front_2d``: scatter of all points, the non-dominated ones highlighted and joined
  by a line, the knee point circled; optional labels per point.
- ``plot_parallel``: parallel coordinates for 3+ objectives, each axis scaled to [0, 1]
  (1 = best, after ``directions``), the front drawn on top.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from steerl.pareto.front import Directions, _points, as_maximised, knee_point, non_dominated


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110)
    FigureCanvasAgg(fig)
    return fig


def _names(names: Sequence[str] | None, m: int) -> list[str]:
    if names is None:
        return [f"objective {j + 1}" for j in range(m)]
    if len(names) != m:
        raise ValueError(f"{len(names)} names for {m} objectives")
    return list(names)


def plot_front_2d(
    points: object,
    path: str | Path,
    directions: Directions = None,
    names: Sequence[str] | None = None,
    labels: Sequence[str] | None = None,
    title: str | None = None,
) -> Path:
    """Scatter two objectives with the Pareto front highlighted; returns the PNG path."""
    p = _points(points)
    if p.shape[1] != 2:
        raise ValueError(f"plot_front_2d needs 2 objectives, got {p.shape[1]}")
    x_name, y_name = _names(names, 2)
    mask = non_dominated(p, directions) if len(p) else np.zeros(0, bool)
    fig = _figure(5.5, 4.2)
    ax = fig.add_subplot(1, 1, 1)
    ax.scatter(p[~mask, 0], p[~mask, 1], s=22, c="#9aa5b1", label="dominated")
    front = p[mask]
    if len(front):
        ax.scatter(front[:, 0], front[:, 1], s=34, c="#d1495b", label="Pareto front", zorder=3)
        order = np.argsort(front[:, 0])
        ax.plot(front[order, 0], front[order, 1], c="#d1495b", lw=1, alpha=0.6, zorder=2)
        k = knee_point(p, directions)
        ax.scatter([p[k, 0]], [p[k, 1]], s=140, facecolors="none", edgecolors="black", label="knee")
    if labels is not None:
        for (x, y), text in zip(p, labels):
            ax.annotate(str(text), (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    dirs = ["max", "max"] if directions is None else directions
    dirs = [dirs] * 2 if isinstance(dirs, str) else list(dirs)
    ax.set_xlabel(f"{x_name} ({'higher' if dirs[0] == 'max' else 'lower'} is better)")
    ax.set_ylabel(f"{y_name} ({'higher' if dirs[1] == 'max' else 'lower'} is better)")
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    return out


def plot_parallel(
    points: object,
    path: str | Path,
    directions: Directions = None,
    names: Sequence[str] | None = None,
    title: str | None = None,
) -> Path:
    """Parallel coordinates (one polyline per point, axes scaled so 1 is best)."""
    p = _points(points)
    m = p.shape[1]
    if m < 2:
        raise ValueError(f"plot_parallel needs at least 2 objectives, got {m}")
    axis_names = _names(names, m)
    q = as_maximised(p, directions)
    lo, hi = q.min(0), q.max(0)
    x = (q - lo) / np.where(hi > lo, hi - lo, 1.0)
    mask = non_dominated(p, directions)
    fig = _figure(1.6 * m + 2, 4.0)
    ax = fig.add_subplot(1, 1, 1)
    cols = np.arange(m)
    for row in x[~mask]:
        ax.plot(cols, row, c="#9aa5b1", lw=0.8, alpha=0.6)
    for row in x[mask]:
        ax.plot(cols, row, c="#d1495b", lw=1.5, alpha=0.9)
    for j in cols:
        ax.axvline(j, c="black", lw=0.6)
    ax.set_xticks(cols, axis_names, rotation=15)
    ax.set_ylabel("scaled objective (1 = best)")
    ax.set_ylim(-0.05, 1.05)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    return out
