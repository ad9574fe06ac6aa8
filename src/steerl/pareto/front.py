r"""Non-dominated fronts, hypervolume, crowding distance and knee points.

Convention: ``points`` is an (n, m) array, one row per solution (a run, a checkpoint, a
trial), one column per objective. Every objective is **maximised** unless ``directions`` says
otherwise: a string (``"max"`` / ``"min"``, for all objectives) or one per objective. A
reference point ``ref`` for the hypervolume is a point that every counted solution beats
(for a maximised objective: *below* the values, e.g. 0 for accuracies).

Point a *dominates* b when a is at least as good in every objective and better in one.
Duplicates do not dominate each other: both copies of a non-dominated point are on the front.

Hypervolume and its per-point contributions come from ``moocore`` (exact algorithms:
O(n log n) in 2-D and 3-D; see its documentation); everything else is a few lines of numpy.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

Directions = str | Sequence[str] | None


def _points(points: object) -> np.ndarray:
    p = np.asarray(points, dtype=np.float64)
    if p.ndim == 1:
        p = p[None, :] if p.size else p.reshape(0, 0)
    if p.ndim != 2:
        raise ValueError(f"points must be (n, m): one row per solution; got shape {p.shape}")
    if p.size and not np.all(np.isfinite(p)):
        raise ValueError("points must be finite (drop runs with missing objectives first)")
    return p


def maximise_flags(directions: Directions, m: int) -> np.ndarray:
    """``directions`` -> a boolean array (m,): True where the objective is maximised."""
    if directions is None:
        return np.ones(m, dtype=bool)
    dirs = [directions] * m if isinstance(directions, str) else list(directions)
    if len(dirs) != m:
        raise ValueError(f"directions has {len(dirs)} entries for {m} objectives")
    bad = [d for d in dirs if d not in ("max", "min")]
    if bad:
        raise ValueError(f"directions must be 'max' or 'min', got {bad}")
    return np.array([d == "max" for d in dirs])


def as_maximised(points: object, directions: Directions = None) -> np.ndarray:
    """The points with minimised objectives negated, so that larger is better everywhere."""
    p = _points(points)
    return np.where(maximise_flags(directions, p.shape[1]), p, -p)


def dominates(a: object, b: object, directions: Directions = None) -> bool:
    """True when ``a`` dominates ``b`` (>= everywhere, > somewhere, after directions)."""
    pa, pb = as_maximised(np.stack([np.asarray(a, float), np.asarray(b, float)]), directions)
    return bool(np.all(pa >= pb) and np.any(pa > pb))


def non_dominated(points: object, directions: Directions = None) -> np.ndarray:
    """Boolean mask (n,): True for the points no other point dominates."""
    import moocore

    p = _points(points)
    if len(p) == 0:
        return np.zeros(0, dtype=bool)
    flags = maximise_flags(directions, p.shape[1])
    return np.asarray(moocore.is_nondominated(p, maximise=flags, keep_weakly=True), dtype=bool)


def fronts(points: object, directions: Directions = None) -> list[np.ndarray]:
    """Non-dominated sorting (NSGA-II's fronts): index arrays, the first is the Pareto front,
    each next one is non-dominated once the earlier fronts are removed."""
    import moocore

    p = _points(points)
    if len(p) == 0:
        return []
    rank = np.asarray(moocore.pareto_rank(p, maximise=maximise_flags(directions, p.shape[1])))
    return [np.flatnonzero(rank == r) for r in range(int(rank.max()) + 1)]


def hypervolume(points: object, ref: Sequence[float], directions: Directions = None) -> float:
    """Volume dominated by ``points`` and bounded by ``ref`` (moocore; 0 for no points).

    A point that does not beat ``ref`` in every objective adds nothing.
    """
    import moocore

    p = _points(points)
    ref_a = np.asarray(ref, dtype=np.float64)
    if len(p) == 0:
        return 0.0
    if ref_a.shape != (p.shape[1],):
        raise ValueError(f"ref has {ref_a.size} entries for {p.shape[1]} objectives")
    flags = maximise_flags(directions, p.shape[1])
    return float(moocore.hypervolume(p, ref=ref_a, maximise=flags))


def hv_contributions(
    points: object, ref: Sequence[float], directions: Directions = None
) -> np.ndarray:
    """Exclusive hypervolume contribution of each point, HV(P) - HV(P without it) (moocore;
    dominated and duplicated points contribute 0). Their sum is at most ``hypervolume``."""
    import moocore

    p = _points(points)
    ref_a = np.asarray(ref, dtype=np.float64)
    if len(p) == 0:
        return np.zeros(0)
    if ref_a.shape != (p.shape[1],):
        raise ValueError(f"ref has {ref_a.size} entries for {p.shape[1]} objectives")
    flags = maximise_flags(directions, p.shape[1])
    return np.asarray(moocore.hv_contributions(p, ref=ref_a, maximise=flags), dtype=np.float64)


def crowding_distance(points: object) -> np.ndarray:
    """NSGA-II crowding distance (Deb et al. 2002) of each point within ``points`` (a front):
    per objective, the gap between its two neighbours divided by the objective's range,
    summed; the extremes of each objective get ``inf``. Independent of the directions."""
    p = _points(points)
    n, m = p.shape if p.size else (len(p), 0)
    dist = np.zeros(n)
    if n <= 2:
        return np.full(n, np.inf)
    for j in range(m):
        order = np.argsort(p[:, j], kind="stable")
        col = p[order, j]
        span = col[-1] - col[0]
        dist[order[0]] = dist[order[-1]] = np.inf
        if span > 0:
            dist[order[1:-1]] += (col[2:] - col[:-2]) / span
    return dist


def knee_point(points: object, directions: Directions = None) -> int:
    """Index (into ``points``) of the knee of the Pareto front.

    The front is normalised to [0, 1] per objective (larger is better). Through its m
    extreme points (the best in each objective) passes a hyperplane (in 2-D: the line
    through the two ends); the knee is the front point farthest beyond it, toward the ideal
    corner: the trade-off that gives up the least of all objectives at once (Das 1999;
    Deb & Gupta 2011). When the extremes do not span a hyperplane (fewer distinct extremes
    than objectives), the plane sum_j x_j = const is used, i.e. the point with the largest
    normalised sum. Ties go to the larger normalised sum, then the lower index. The result
    is always a non-dominated point.
    """
    p = as_maximised(points, directions)
    if len(p) == 0:
        raise ValueError("knee_point of an empty set of points")
    front = np.flatnonzero(non_dominated(p))
    f = p[front]
    lo, hi = f.min(0), f.max(0)
    span = np.where(hi > lo, hi - lo, 1.0)
    x = (f - lo) / span
    m = x.shape[1]
    extremes = np.array([np.lexsort((x.sum(1), x[:, j]))[-1] for j in range(m)])
    normal = np.ones(m)
    if len(set(extremes.tolist())) == m:
        E = x[extremes]
        try:
            sol = np.linalg.solve(E, np.ones(m))
            if np.all(np.isfinite(sol)) and np.linalg.cond(E) < 1e12:
                normal = sol
        except np.linalg.LinAlgError:
            pass
    dist = (x @ normal) / np.linalg.norm(normal)
    best = np.lexsort((-np.arange(len(front)), x.sum(1), np.round(dist, 12)))[-1]
    return int(front[best])


def simplex(n_obj: int, divisions: int) -> np.ndarray:
    """Das & Dennis (1998) uniform preference vectors: every vector with entries k/divisions
    (k = 0..divisions) summing to 1. Returns (C(divisions + n_obj - 1, n_obj - 1), n_obj),
    rows in lexicographically decreasing order (the first row is (1, 0, ..., 0))."""
    if n_obj < 1 or divisions < 0:
        raise ValueError(f"simplex needs n_obj >= 1 and divisions >= 0, got {n_obj}, {divisions}")
    if n_obj == 1:
        return np.ones((1, 1))
    if divisions == 0:
        raise ValueError("simplex with divisions=0 has no points for n_obj > 1")
    rows: list[list[int]] = []

    def rec(prefix: list[int], left: int, k: int) -> None:
        if k == 1:
            rows.append([*prefix, left])
            return
        for i in range(left, -1, -1):
            rec([*prefix, i], left - i, k - 1)

    rec([], divisions, n_obj)
    return np.asarray(rows, dtype=np.float64) / divisions
