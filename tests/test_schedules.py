from __future__ import annotations

import json
import math
from dataclasses import asdict

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from steerl.config import ScheduleConfig, load_config
from steerl.schedules import (
    SCHEDULES,
    AdaptiveKLController,
    CoefSchedule,
    WarmupDecay,
    coef_schedules,
    lr_schedule,
    param_groups,
    parse_coef_key,
)


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


# --------------------------------------------------------------------------- new shapes
SHAPES = ["constant", "linear", "cosine", "wsd", "polynomial"]


def test_new_shapes_registered_with_descriptions():
    entries = {e.name: e for e in SCHEDULES.entries()}
    for shape in SHAPES:
        assert SCHEDULES.get(shape) is WarmupDecay
        assert entries[shape].description
    assert "decay_fraction" in entries["wsd"].description
    assert "power" in entries["polynomial"].description


def test_wsd_hand_values():
    # 20 steps, warm-up 4, decay over the last 25% (5 steps): stable on steps 4..14
    s = WarmupDecay("wsd", 20, 4, 0.1, decay_fraction=0.25)
    assert s.decay_start == 15
    assert [s.value(i) for i in range(4)] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert all(s.value(i) == 1.0 for i in range(4, 16))
    assert s.value(16) == pytest.approx(0.1 + 0.9 * 0.8)
    assert s.value(20) == pytest.approx(0.1)
    cos = WarmupDecay("wsd", 20, 0, 0.0, decay_fraction=0.5, decay_shape="cosine")
    assert cos.value(9) == 1.0 and cos.value(15) == pytest.approx(0.5)


def test_polynomial_and_warmup_start_hand_values():
    p = WarmupDecay("polynomial", 10, 0, 0.0, power=2.0)
    assert [p.value(i) for i in (0, 5, 10)] == pytest.approx([1.0, 0.25, 0.0])
    w = WarmupDecay("constant", 10, 4, warmup_start=0.2)
    assert [w.value(i) for i in range(5)] == pytest.approx([0.4, 0.6, 0.8, 1.0, 1.0])


def test_bad_arguments():
    with pytest.raises(ValueError, match="min_ratio=1.5"):
        WarmupDecay("linear", 10, 0, 1.5)
    with pytest.raises(ValueError, match="power"):
        WarmupDecay("polynomial", 10, power=0)
    with pytest.raises(ValueError, match="decay_shape"):
        WarmupDecay("wsd", 10, decay_shape="step")


def _max_decay_jump(shape: str, decay_shape: str, power: float, span: int) -> float:
    """Largest change between neighbouring steps of the decay factor over ``span`` steps."""
    eff = decay_shape if shape == "wsd" else shape
    if eff == "linear":
        return 1 / span
    if eff == "cosine":
        return math.pi / 2 / span
    return max(power / span, (1 / span) ** power)


@settings(max_examples=300, deadline=None)
@given(
    shape=st.sampled_from(SHAPES),
    warmup=st.integers(0, 30),
    decay=st.integers(1, 150),
    min_ratio=st.floats(0.0, 1.0),
    warmup_start=st.floats(0.0, 1.0),
    decay_fraction=st.floats(0.01, 1.0),
    decay_shape=st.sampled_from(["linear", "cosine"]),
    power=st.floats(0.3, 4.0),
)
def test_all_shapes_properties(
    shape, warmup, decay, min_ratio, warmup_start, decay_fraction, decay_shape, power
):
    total = warmup + decay
    kw = dict(
        warmup_start=warmup_start,
        decay_fraction=decay_fraction,
        decay_shape=decay_shape,
        power=power,
    )
    s = WarmupDecay(shape, total, warmup, min_ratio, **kw)
    v = [s.value(i) for i in range(total + 3)]
    tol = 1e-9
    if warmup:
        # the warm-up starts from warmup_start: equal increments of (1 - start) / warmup, the
        # first one taken at step 0, the peak reached at step warmup - 1
        inc = (1 - warmup_start) / warmup
        assert v[0] == pytest.approx(warmup_start + inc)
        assert all(b - a == pytest.approx(inc, abs=1e-12) for a, b in zip(v[:warmup], v[1:warmup]))
        assert v[warmup - 1] == pytest.approx(1.0)
        assert all(warmup_start - tol <= x <= 1 + tol for x in v[:warmup])
    post = v[warmup:]
    assert post[0] == pytest.approx(1.0)  # continuous at the warm-up boundary
    # the minimum is respected, and decaying shapes never go back up
    assert all(min_ratio - tol <= x <= 1 + tol for x in post)
    assert all(b <= a + tol for a, b in zip(post, post[1:]))
    # continuity: neighbouring steps differ by at most the steepest slope of the phase
    start = s.decay_start
    span = max(1, total - start)
    jump = (1 - min_ratio) * _max_decay_jump(shape, decay_shape, power, span)
    for k in range(warmup, total + 2):
        assert abs(v[k + 1] - v[k]) <= jump + 1e-9
    if shape == "constant":
        assert all(x == 1.0 for x in post)
    else:
        assert v[total] == pytest.approx(min_ratio, abs=1e-9)
        assert v[total + 2] == pytest.approx(min_ratio, abs=1e-9)
    if shape == "wsd":
        assert all(x == 1.0 for x in v[warmup:start])
    # pure: a "resumed" schedule (rebuilt from its arguments, asked from step k on, in any
    # order) gives exactly the values of the uninterrupted one
    k = total // 2
    resumed = WarmupDecay(**asdict(s))
    assert [resumed.value(i) for i in reversed(range(k, total + 3))] == v[k:][::-1]


@settings(max_examples=200, deadline=None)
@given(
    shape=st.sampled_from(SHAPES),
    start=st.floats(-5, 5),
    end=st.floats(-5, 5),
    warmup=st.integers(0, 20),
    decay=st.integers(1, 100),
    warmup_start=st.floats(-5, 5),
)
def test_coef_schedule_properties(shape, start, end, warmup, decay, warmup_start):
    total = warmup + decay
    s = CoefSchedule(shape, start, end, total, warmup, warmup_start, decay_fraction=0.3)
    v = [s.value(i) for i in range(total + 2)]
    if warmup:
        assert v[0] == pytest.approx(warmup_start + (start - warmup_start) / warmup)
        assert v[warmup - 1] == pytest.approx(start)
    lo, hi = min(start, end), max(start, end)
    post = v[warmup:]
    assert post[0] == pytest.approx(start)
    assert all(lo - 1e-9 <= x <= hi + 1e-9 for x in post)
    sign = 1 if end >= start else -1  # moves monotonically from start toward end
    assert all(sign * (b - a) >= -1e-9 for a, b in zip(post, post[1:]))
    if shape == "constant":
        assert all(x == pytest.approx(start) for x in post)
    else:
        assert v[total] == pytest.approx(end, abs=1e-9)
    assert CoefSchedule(shape, start, None, total, warmup).value(total) == pytest.approx(start)


def test_coef_schedule_hand_values_and_config():
    s = CoefSchedule("linear", start=0.1, end=0.0, total_steps=10, warmup_steps=2)
    assert [s.value(i) for i in (0, 1, 2, 7, 12)] == pytest.approx([0.05, 0.1, 0.1, 0.0375, 0.0])
    cfg = load_config(
        None,
        [
            "loss.kl_coef=0.05",
            "train.steps=20",
            "schedule.coefficients={loss.kl_coef: {shape: cosine, start: 0.1, end: 0.01}, "
            "rewards.exact_match.weight: {shape: constant, start: 2.0}}",
        ],
    )
    scheds = coef_schedules(cfg.schedule, cfg.train.steps)
    assert set(scheds) == {"loss.kl_coef", "rewards.exact_match.weight"}
    assert scheds["loss.kl_coef"].value(0) == pytest.approx(0.1)
    assert scheds["loss.kl_coef"].value(20) == pytest.approx(0.01)
    assert scheds["rewards.exact_match.weight"].value(13) == 2.0


def test_parse_coef_key():
    assert parse_coef_key("loss.kl_coef") == ("loss", "kl_coef")
    assert parse_coef_key("rewards.my.mod.fn.weight") == ("rewards", "my.mod.fn")
    for bad in ("kl_coef", "loss.", "rewards.x", "rewards.weight", "optim.lr"):
        with pytest.raises(ValueError, match="must be 'loss.<field>'"):
            parse_coef_key(bad)


def test_lr_schedule_from_config():
    cfg = ScheduleConfig(
        name="wsd", warmup_steps=3, warmup_start=0.1, min_lr_ratio=0.05, decay_fraction=0.5
    )
    s = lr_schedule(cfg, 20)
    assert s == WarmupDecay("wsd", 20, 3, 0.05, warmup_start=0.1, decay_fraction=0.5)
    assert s.value(0) == pytest.approx(0.1 + 0.9 / 3)


# --------------------------------------------------------------------------- KL controller
def test_kl_controller_update_rule():
    c = AdaptiveKLController(0.1, target=0.02, horizon=10)
    assert c.update(0.04) == pytest.approx(0.1 * (1 + 0.2 / 10))  # error clipped to +0.2
    c = AdaptiveKLController(0.1, target=0.02, horizon=10)
    assert c.update(0.021, n_steps=2) == pytest.approx(0.1 * (1 + 0.05 * 2 / 10))
    assert c.update(float("nan")) == c.coef  # a NaN KL changes nothing
    c = AdaptiveKLController(0.1, target=0.02, horizon=10)
    assert c.update(0.0) == pytest.approx(0.1 * (1 - 0.2 / 10))
    with pytest.raises(ValueError, match="must be > 0"):
        AdaptiveKLController(0.0, 0.02, 10)


@settings(max_examples=100, deadline=None)
@given(
    kls=st.lists(st.floats(0.0, 1.0), min_size=2, max_size=40),
    cut=st.integers(0, 39),
    horizon=st.integers(1, 50),
)
def test_kl_controller_resumes_exactly(kls, cut, horizon):
    cut = min(cut, len(kls))
    full = AdaptiveKLController(0.05, 0.1, horizon)
    ref = [full.update(k) for k in kls]
    first = AdaptiveKLController(0.05, 0.1, horizon)
    for k in kls[:cut]:
        first.update(k)
    resumed = AdaptiveKLController(0.05, 0.1, horizon)
    resumed.load_state_dict(json.loads(json.dumps(first.state_dict())))  # via the checkpoint
    assert [resumed.update(k) for k in kls[cut:]] == ref[cut:]  # bit-identical


# --------------------------------------------------------------------------- param groups
class _Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(5, 4)
        self.layers = torch.nn.ModuleList([torch.nn.Linear(4, 4) for _ in range(2)])
        self.head = torch.nn.Linear(4, 5)
        self.frozen = torch.nn.Linear(4, 4)
        self.frozen.requires_grad_(False)


def test_param_groups_first_match_wins_and_default_group():
    net = _Net()
    cfg = ScheduleConfig(
        param_groups=[
            {"pattern": r"^head\.", "lr_scale": 0.1},
            {"pattern": r"layers\.0\.", "lr_scale": 2.0},
            {"pattern": r"layers\.", "lr_scale": 0.5},
        ]
    )
    groups = param_groups(net, cfg, base_lr=1e-3)
    by = {g["name"]: g for g in groups}
    assert list(by) == [r"^head\.", r"layers\.0\.", r"layers\.", "default"]
    assert by[r"^head\."]["param_names"] == ["head.weight", "head.bias"]
    assert by[r"layers\.0\."]["param_names"] == ["layers.0.weight", "layers.0.bias"]
    assert by[r"layers\."]["param_names"] == ["layers.1.weight", "layers.1.bias"]
    assert by["default"]["param_names"] == ["embed.weight"]  # frozen params are left out
    assert by[r"layers\.0\."]["lr"] == pytest.approx(2e-3)
    assert by["default"]["lr_scale"] == 1.0
    opt = torch.optim.AdamW(groups, lr=1e-3)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([1e-4, 2e-3, 5e-4, 1e-3])
    # no pattern: one default group; plain dict specs work too
    assert [g["name"] for g in param_groups(net, [], 1.0)] == ["default"]
    assert param_groups(net, [{"pattern": "embed", "lr_scale": 3}], 1.0)[0]["lr"] == 3.0


def test_param_groups_errors():
    net = _Net()
    with pytest.raises(ValueError, match="'nothing' matches no trainable parameter"):
        param_groups(net, [{"pattern": "nothing"}], 1e-3)
    with pytest.raises(ValueError, match="matches no trainable parameter"):
        param_groups(net, [{"pattern": "frozen"}], 1e-3)
    with pytest.raises(ValueError, match="earlier pattern already took"):
        param_groups(net, [{"pattern": "layers"}, {"pattern": r"layers\.1"}], 1e-3)
