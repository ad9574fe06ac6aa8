from __future__ import annotations

import math

import pytest

from steerl.stability import EarlyStopping, PlateauDetector


def test_plateau_on_a_flat_metric():
    p = PlateauDetector("train/reward", "max", ema=0.5, window=5, min_slope=1e-3, cooldown=0)
    events = [p.observe(0.5, step) for step in range(6)]
    assert events == [False] * 5 + [True]  # the first full window of window+1 EMA values
    assert p.events == 1 and p.scale == 0.5
    # the slope history restarts after an event (from the event's EMA value)
    assert [p.observe(0.5, step) for step in range(6, 10)] == [False] * 4
    assert p.observe(0.5, 10)
    assert p.scale == 0.25


def test_no_plateau_while_improving_and_mode_min():
    up = PlateauDetector("r", "max", ema=0.0, window=5, min_slope=0.01)
    assert not any(up.observe(0.05 * s, s) for s in range(30))
    down = PlateauDetector("loss", "min", ema=0.0, window=5, min_slope=0.01)
    assert not any(down.observe(10 - 0.05 * s, s) for s in range(30))
    # getting worse is not improving either
    worse = PlateauDetector("loss", "min", ema=0.0, window=5, min_slope=0.01)
    assert any(worse.observe(1 + 0.05 * s, s) for s in range(30))
    assert not PlateauDetector("r").observe(math.nan, 0)


def test_plateau_cooldown_min_scale_and_actions():
    p = PlateauDetector(
        "r", ema=0.0, window=2, min_slope=0.1, factor=0.5, min_scale=0.3, cooldown=5
    )
    steps = [s for s in range(30) if p.observe(1.0, s)]
    assert steps[0] == 2
    assert all(b - a >= 5 for a, b in zip(steps, steps[1:]))
    assert p.scale == 0.3  # 0.5, then 0.25 floored at min_scale
    none = PlateauDetector("r", ema=0.0, window=2, action="none")
    assert [none.observe(1.0, s) for s in range(3)][-1] and none.scale == 1.0


def test_plateau_state_round_trip():
    a = PlateauDetector("r", ema=0.7, window=4, min_slope=0.01, cooldown=2)
    vals = [0.1, 0.3, 0.35, 0.36, 0.36, 0.37, 0.36, 0.36, 0.36, 0.36, 0.36, 0.36, 0.36]
    for s, v in enumerate(vals[:5]):
        a.observe(v, s)
    b = PlateauDetector("r", ema=0.7, window=4, min_slope=0.01, cooldown=2)
    b.load_state_dict(a.state_dict())
    rest = list(enumerate(vals))[5:]
    assert [a.observe(v, s) for s, v in rest] == [b.observe(v, s) for s, v in rest]
    assert a.state_dict() == b.state_dict()


def test_early_stopping_patience_and_min_delta():
    es = EarlyStopping("max", patience=2, min_delta=0.01)
    assert not es.observe(0.5, 10)
    assert not es.observe(0.505, 20)  # within min_delta: not an improvement (1 bad)
    assert not es.observe(0.6, 30)  # improvement resets the count
    assert not es.observe(0.59, 40)
    assert es.observe(0.6, 50)  # second evaluation in a row without improvement
    assert es.best == 0.6 and es.best_step == 30 and es.stopped_at == 50


def test_early_stopping_mode_min_and_nan():
    es = EarlyStopping("min", patience=1)
    assert not es.observe(2.0, 1)
    assert not es.observe(1.5, 2)
    assert es.observe(math.nan, 3)  # a NaN eval is no improvement
    with pytest.raises(ValueError, match="patience"):
        EarlyStopping(patience=0)


def test_early_stopping_state_round_trip():
    a = EarlyStopping("max", 3, 0.0)
    for s, v in enumerate([0.1, 0.2, 0.15]):
        a.observe(v, s)
    b = EarlyStopping("max", 3, 0.0)
    b.load_state_dict(a.state_dict())
    seq = [0.1, 0.2, 0.19, 0.3]
    assert [a.observe(v, s) for s, v in enumerate(seq, 10)] == [
        b.observe(v, s) for s, v in enumerate(seq, 10)
    ]
