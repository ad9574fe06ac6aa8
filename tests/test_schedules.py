from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from steerl.schedules import SCHEDULES, WarmupDecay


def test_registered_shapes():
    for shape in ("constant", "linear", "cosine"):
        assert SCHEDULES.get(shape) is WarmupDecay


def test_hand_values():
    s = WarmupDecay("cosine", total_steps=12, warmup_steps=4, min_ratio=0.1)
    assert [s.value(i) for i in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert s.value(4) == 1.0
    assert s.value(8) == pytest.approx(0.1 + 0.9 * 0.5)  # half-way through the decay
    assert s.value(12) == pytest.approx(0.1)
    assert s.value(100) == pytest.approx(0.1)  # clamped after the end
    lin = WarmupDecay("linear", total_steps=10, min_ratio=0.0)
    assert [lin.value(i) for i in (0, 5, 10)] == pytest.approx([1.0, 0.5, 0.0])
    assert WarmupDecay("constant", 10, 2).value(7) == 1.0


def test_unknown_shape():
    with pytest.raises(ValueError, match="unknown schedule shape"):
        WarmupDecay("exotic", 10).value(3)


@settings(max_examples=200, deadline=None)
@given(
    shape=st.sampled_from(["constant", "linear", "cosine"]),
    warmup=st.integers(0, 50),
    decay=st.integers(1, 200),
    min_ratio=st.floats(0.0, 1.0),
)
def test_warmup_decay_properties(shape, warmup, decay, min_ratio):
    total = warmup + decay
    s = WarmupDecay(shape, total_steps=total, warmup_steps=warmup, min_ratio=min_ratio)
    values = [s.value(i) for i in range(total + 1)]
    if warmup:
        # warm-up starts at 1/warmup and climbs linearly to exactly 1
        assert values[0] == pytest.approx(1 / warmup)
        assert values[warmup - 1] == pytest.approx(1.0)
        for a, b in zip(values[:warmup], values[1:warmup]):
            assert b - a == pytest.approx(1 / warmup)
        # continuous at the boundary: the first post-warm-up step is at the peak
        assert values[warmup] == pytest.approx(1.0)
    else:
        assert values[0] == pytest.approx(1.0)
    decay_part = values[warmup:]
    lo = 1.0 if shape == "constant" else min_ratio
    assert all(lo - 1e-12 <= v <= 1.0 + 1e-12 for v in decay_part)
    assert all(b <= a + 1e-12 for a, b in zip(decay_part, decay_part[1:]))  # non-increasing
    if shape != "constant":
        assert values[total] == pytest.approx(min_ratio, abs=1e-12)
        assert s.value(total + 5) == pytest.approx(min_ratio, abs=1e-12)
    assert all(math.isfinite(v) and v >= 0 for v in values)
