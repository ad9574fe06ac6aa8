"""Pareto tools: fronts, hypervolume, knee points, preference grids, soups and plots.

Convention everywhere: ``points`` (n, m), one row per solution, every objective maximised
unless ``directions`` (``"max"``/``"min"``, one or per objective) says otherwise.

- ``front``: ``non_dominated``, ``fronts`` (non-dominated sorting), ``hypervolume`` and
  ``hv_contributions`` (moocore), ``crowding_distance``, ``knee_point``, ``simplex``
  (Das-Dennis preference vectors for sweeps);
- ``soups``: rewarded-soup weight interpolation of checkpoints (``soup``, ``interpolate``,
  ``check_same_base``);
- ``plots``: ``plot_front_2d``, ``plot_parallel`` (PNG, matplotlib Agg; imported lazily).
"""

from steerl.pareto.front import (
    as_maximised,
    crowding_distance,
    dominates,
    fronts,
    hv_contributions,
    hypervolume,
    knee_point,
    non_dominated,
    simplex,
)
from steerl.pareto.soups import SoupError, check_same_base, interpolate, load_checkpoint, soup


def plot_front_2d(*args, **kwargs):
    """See ``steerl.pareto.plots.plot_front_2d`` (imports matplotlib on first use)."""
    from steerl.pareto.plots import plot_front_2d as fn

    return fn(*args, **kwargs)


def plot_parallel(*args, **kwargs):
    """See ``steerl.pareto.plots.plot_parallel`` (imports matplotlib on first use)."""
    from steerl.pareto.plots import plot_parallel as fn

    return fn(*args, **kwargs)


__all__ = [
    "SoupError",
    "as_maximised",
    "check_same_base",
    "crowding_distance",
    "dominates",
    "fronts",
    "hv_contributions",
    "hypervolume",
    "interpolate",
    "knee_point",
    "load_checkpoint",
    "non_dominated",
    "plot_front_2d",
    "plot_parallel",
    "simplex",
    "soup",
]
