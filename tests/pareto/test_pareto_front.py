"""Fronts, hypervolume, crowding distance, knee points and the preference simplex."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from steerl.pareto import (
    crowding_distance,
    dominates,
    fronts,
    hv_contributions,
    hypervolume,
    knee_point,
    non_dominated,
    simplex,
)

PROPS = settings(max_examples=50, deadline=None, derandomize=True)


@st.composite
def point_sets(draw, m_min=2, m_max=4):
    m = draw(st.integers(m_min, m_max))
    n = draw(st.integers(1, 25))
    # a coarse grid makes ties and duplicates common
    vals = st.integers(0, 6).map(float) | st.floats(0, 6, allow_nan=False)
    return draw(arrays(np.float64, (n, m), elements=vals))


directions_for = {2: ["max", "min"], 3: ["min", "max", "max"], 4: ["max"] * 4}


def brute_force(points: np.ndarray, dirs) -> np.ndarray:
    s = np.where(np.array([d == "max" for d in dirs]), points, -points)
    return np.array([not any(np.all(q >= p) and np.any(q > p) for q in s) for p in s], dtype=bool)


@PROPS
@given(P=point_sets(), flip=st.booleans())
def test_non_dominated_matches_a_brute_force_filter(P, flip):
    m = P.shape[1]
    dirs = directions_for[m] if flip else ["max"] * m
    np.testing.assert_array_equal(non_dominated(P, dirs), brute_force(P, dirs))


@PROPS
@given(P=point_sets())
def test_fronts_partition_the_points_and_peel_off(P):
    fs = fronts(P)
    assert sorted(np.concatenate(fs).tolist()) == list(range(len(P)))
    left = np.arange(len(P))
    for f in fs:
        mask = non_dominated(P[left])
        np.testing.assert_array_equal(np.sort(left[mask]), np.sort(f))
        left = np.setdiff1d(left, f)


@PROPS
@given(p=arrays(np.float64, st.integers(1, 5), elements=st.floats(0.01, 10)))
def test_hypervolume_of_one_point_is_its_box(p):
    ref = np.zeros_like(p)
    assert hypervolume(p[None], ref) == pytest.approx(float(np.prod(p)))
    # minimisation: the box between the point and a reference above it
    ref_min = p + 1.0
    assert hypervolume(p[None], ref_min, "min") == pytest.approx(1.0)


@PROPS
@given(P=point_sets())
def test_contributions_sum_to_at_most_the_total(P):
    ref = np.full(P.shape[1], -1.0)
    total = hypervolume(P, ref)
    c = hv_contributions(P, ref)
    assert c.min() >= 0 and c.sum() <= total * (1 + 1e-9) + 1e-9
    assert np.all(c[~non_dominated(P)] == 0)
    # the hypervolume only depends on the front
    assert hypervolume(P[non_dominated(P)], ref) == pytest.approx(total)


@PROPS
@given(P=point_sets(), flip=st.booleans())
def test_knee_point_is_on_the_front(P, flip):
    dirs = directions_for[P.shape[1]] if flip else None
    k = knee_point(P, dirs)
    assert non_dominated(P, dirs)[k]


def test_knee_point_by_hand():
    P = np.array([[0.0, 1.0], [0.5, 0.8], [1.0, 0.0], [0.3, 0.3], [0.9, 0.2]])
    assert knee_point(P) == 1  # farthest beyond the line through (0, 1) and (1, 0)
    # minimising both (costs): mirror image
    assert knee_point(1 - P, "min") == 1
    assert knee_point(np.array([[1.0, 2.0]])) == 0
    with pytest.raises(ValueError, match="empty"):
        knee_point(np.zeros((0, 2)))


def test_crowding_distance():
    P = np.array([[0.0, 4.0], [1.0, 3.0], [2.0, 1.0], [4.0, 0.0]])
    d = crowding_distance(P)
    assert math.isinf(d[0]) and math.isinf(d[3])
    assert d[1] == pytest.approx(2 / 4 + 3 / 4)
    assert d[2] == pytest.approx(3 / 4 + 3 / 4)
    assert np.all(np.isinf(crowding_distance(P[:2])))


def test_dominates_and_bad_input():
    assert dominates([1, 2], [1, 1]) and not dominates([1, 1], [1, 1])
    assert dominates([0, 2], [1, 2], ["min", "max"])
    with pytest.raises(ValueError, match="directions"):
        non_dominated(np.ones((2, 2)), ["max", "up"])
    with pytest.raises(ValueError, match="finite"):
        non_dominated(np.array([[1.0, np.nan]]))
    with pytest.raises(ValueError, match="ref has 3 entries"):
        hypervolume(np.ones((2, 2)), [0, 0, 0])
    assert hypervolume(np.zeros((0, 2)), [0, 0]) == 0.0
    assert fronts(np.zeros((0, 2))) == []


@pytest.mark.parametrize("m,h", [(2, 4), (3, 3), (4, 2), (1, 5)])
def test_simplex_das_dennis(m, h):
    W = simplex(m, h)
    assert len(W) == math.comb(h + m - 1, m - 1)
    np.testing.assert_allclose(W.sum(1), 1.0)
    assert np.all(W >= 0)
    assert np.allclose(W * h, np.round(W * h))  # a grid of step 1/h
    assert len({tuple(w) for w in W}) == len(W)
    with pytest.raises(ValueError):
        simplex(0, 3)
