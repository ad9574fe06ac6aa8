from __future__ import annotations

import math

import pytest

from steerl.stability import SpikeDetector

STABLE = [1.0, 1.1, 0.9, 1.05, 0.95, 1.02, 0.98, 1.0, 1.07, 0.93]


def test_flags_a_1000x_value_after_stable_history():
    d = SpikeDetector("train/loss", window=20, threshold=6.0, min_history=5)
    assert not any(d.observe(v) for v in STABLE)
    before = list(d.history)
    assert d.observe(1000.0)
    assert d.last_z is not None and d.last_z > 6
    assert list(d.history) == before  # the spike is not added to the history
    assert d.spikes == 1
    assert not d.observe(1.01)  # and the next normal value is judged as before
    assert "spike in train/loss" in d.describe(1000.0)


def test_nothing_flagged_before_min_history():
    d = SpikeDetector("m", window=20, threshold=6.0, min_history=5)
    assert not any(d.observe(v) for v in [1.0, 1.0, 1000.0, 1.0])
    assert len(d.history) == 4 and d.last_z is None
    # the fifth value completes the history; from then on values are judged
    assert not d.observe(1.0)
    assert d.observe(5000.0)


def test_window_and_robustness():
    d = SpikeDetector("m", window=5, threshold=6.0, min_history=3)
    for v in [1.0, 1.1, 50.0, 0.9, 1.05]:  # one outlier early in the history (not yet judged)
        d.observe(v)
    assert not d.observe(1.2)  # the median/MAD ignore the outlier
    for v in [1.0, 1.1, 0.9, 1.0, 1.05]:
        d.observe(v)
    assert 50.0 not in d.history and len(d.history) == 5


def test_flat_history_uses_a_scale_floor():
    d = SpikeDetector("m", window=10, threshold=6.0, min_history=3)
    for _ in range(5):
        d.observe(2.0)
    assert not d.observe(2.004)  # 0.2% off a perfectly flat history is not a spike
    assert d.observe(3.0)


def test_direction():
    up = SpikeDetector("loss", 10, 6.0, 3, direction="up")
    down = SpikeDetector("reward", 10, 6.0, 3, direction="down")
    for v in STABLE:
        up.observe(v)
        down.observe(v)
    assert not up.observe(-100.0) and up.observe(100.0)
    assert down.observe(-100.0) and not down.observe(100.0)


def test_non_finite_values_are_ignored():
    d = SpikeDetector("m", 10, 6.0, 3)
    for v in STABLE:
        d.observe(v)
    n = len(d.history)
    assert not d.observe(math.nan) and not d.observe(math.inf)
    assert len(d.history) == n


def test_state_round_trip_gives_identical_verdicts():
    a = SpikeDetector("m", 8, 4.0, 3)
    for v in STABLE:
        a.observe(v)
    b = SpikeDetector("m", 8, 4.0, 3)
    b.load_state_dict(a.state_dict())
    seq = [1.0, 30.0, 1.2, 0.7, -20.0, 1.0]
    assert [a.observe(v) for v in seq] == [b.observe(v) for v in seq]
    assert a.state_dict() == b.state_dict()


def test_bad_arguments():
    with pytest.raises(ValueError, match="min_history"):
        SpikeDetector("m", window=3, min_history=5)
    with pytest.raises(ValueError, match="threshold"):
        SpikeDetector("m", threshold=0)
