from __future__ import annotations

import json
import math
import random

import pytest
import torch

from steerl.config import StabilityConfig
from steerl.stability import NonFiniteError, StabilityError, StabilityManager


def _mgr(total_steps: int = 100, **kw) -> StabilityManager:
    return StabilityManager(StabilityConfig(**kw), total_steps)


def _warm(m: StabilityManager, n: int = 10, start: int = 0, **metrics) -> int:
    """Feed ``n`` ordinary updates (noisy loss around 1, grad norm around 0.5)."""
    for i in range(n):
        step = start + i
        d = m.check_update(
            1.0 + 0.05 * math.sin(step), 0.5 + 0.02 * math.cos(step), metrics, step=step
        )
        assert d.action == "apply", d
    return start + n


def test_plain_updates_apply():
    m = _mgr()
    assert _warm(m, 5) == 5
    h = m.health()
    assert h["skipped_steps"] == 0 and h["rollbacks"] == 0 and h["spikes"] == {}
    assert m.lr_scale(3) == 1.0


def test_nonfinite_update_is_skipped_with_diagnosis_then_stops():
    m = _mgr(max_consecutive_skips=2)
    net = torch.nn.Linear(2, 2)
    net.weight.grad = torch.full((2, 2), math.nan)
    d = m.check_update(
        math.nan, math.nan, {}, step=0, terms={"kl": math.nan}, named_params=net.named_parameters()
    )
    assert d.action == "skip" and "kl" in d.reason and "weight" in d.reason
    assert m.health()["skips"]["nonfinite"] == 1
    with pytest.raises(NonFiniteError, match="2 consecutive steps"):
        m.check_update(math.nan, 1.0, {}, step=1)


def test_spike_skip_and_history():
    m = _mgr(spikes=[{"metric": "train/loss", "action": "skip"}])
    step = _warm(m)
    d = m.check_update(1000.0, 0.5, {}, step=step)
    assert d.action == "skip" and "spike in train/loss" in d.reason
    assert m.health()["spikes"] == {"train/loss": 1}
    assert m.health()["events"][-1]["kind"] == "spike"
    assert m.check_update(1.0, 0.5, {}, step=step + 1).action == "apply"


def test_consecutive_spike_skips_stop_the_run():
    m = _mgr(spikes=[{"metric": "train/grad_norm"}], max_consecutive_skips=3)
    step = _warm(m)
    for k in range(2):
        assert m.check_update(1.0, 500.0, {}, step=step + k).action == "skip"
    with pytest.raises(StabilityError, match="3 consecutive steps were skipped"):
        m.check_update(1.0, 500.0, {}, step=step + 2)


def test_lower_lr_window():
    m = _mgr(
        spikes=[{"metric": "train/reward", "action": "lower_lr", "direction": "down"}],
        lower_lr={"factor": 0.25, "steps": 3},
    )
    step = 0
    for i in range(10):
        m.check_update(1.0, 0.5, {"train/reward": 0.5 + 0.01 * (i % 3)}, step=step)
        step += 1
    d = m.check_update(1.0, 0.5, {"train/reward": -5.0}, step=10)
    assert d.action == "apply" and d.lr_scale == 0.25 and "train/reward" in d.reason
    assert [m.lr_scale(s) for s in range(9, 15)] == [1.0, 0.25, 0.25, 0.25, 1.0, 1.0]
    assert m.health()["lr_reductions"] == 1


def test_guards_and_precedence():
    m = _mgr(
        guards={"kl_max": 0.1, "action": "rollback"},
        spikes=[{"metric": "train/loss", "action": "skip"}],
    )
    step = _warm(m, **{"train/kl": 0.01})
    d = m.check_update(1.0, 0.5, {"train/kl": 0.5}, step=step)
    assert d.action == "rollback" and "train/kl" in d.reason
    # a spike (skip) and a guard (rollback) at once: rollback wins, both are reported
    d = m.check_update(500.0, 0.5, {"train/kl": 0.5}, step=step + 1)
    assert d.action == "rollback" and "spike in train/loss" in d.reason and "guard" in d.reason
    assert m.health()["guard_hits"] == {"train/kl": 2}
    stop = _mgr(guards={"entropy_min": 0.2, "action": "stop"})
    d = stop.check_update(1.0, 0.5, {"train/entropy": 0.1}, step=0)
    assert d.action == "stop" and stop.health()["stop_reason"] == d.reason


def test_rollback_cap():
    m = _mgr(max_rollbacks=2)
    m.on_rollback()
    m.on_rollback()
    with pytest.raises(StabilityError, match="max_rollbacks=2"):
        m.on_rollback()
    with pytest.raises(StabilityError, match="max_rollbacks=0"):
        _mgr(max_rollbacks=0).on_rollback()


def test_late_metrics_are_judged_in_observe_train():
    m = _mgr(
        spikes=[
            {"metric": "time/update_s", "action": "rollback"},
            {"metric": "train/completion_length", "action": "lower_lr"},
        ],
        lower_lr={"factor": 0.5, "steps": 2},
    )
    for s in range(8):
        assert m.check_update(1.0, 0.5, {}, step=s).apply
        assert not m.observe_train(
            {"time/update_s": 1.0 + 0.01 * (s % 3), "train/completion_length": 5.0 + 0.1 * (s % 2)},
            s,
        )
    assert not m.observe_train({"time/update_s": 99.0, "train/completion_length": 80.0}, 8)
    assert m.lr_scale(8) == 1.0 and m.lr_scale(9) == 0.5 and m.lr_scale(11) == 1.0
    d = m.check_update(1.0, 0.5, {}, step=9)  # the pending rollback comes with the next update
    assert d.action == "rollback" and "time/update_s" in d.reason
    m.on_rollback()
    assert m.check_update(1.0, 0.5, {}, step=9).apply


def test_a_value_is_judged_once_per_step():
    # with loss.epochs > 1 every update of a step sees the same reward: count it once
    m = _mgr(spikes=[{"metric": "train/reward", "min_history": 3}])
    for s in range(3):
        for _ in range(3):
            m.check_update(1.0, 0.5, {"train/reward": 0.1 * s}, step=s)
    assert len(m.spikes[0].history) == 3
    m.observe_train({"train/reward": 0.2}, 2)  # already judged at this step
    assert len(m.spikes[0].history) == 3


def test_plateau_reduces_lr_and_can_stop():
    m = _mgr(plateau={"metric": "train/reward", "window": 3, "ema": 0.0, "cooldown": 0})
    stops = [m.observe_train({"train/reward": 0.5}, s) for s in range(4)]
    assert stops == [False] * 4
    assert m.lr_scale(4) == 0.5 and m.health()["plateau_events"] == 1
    # plateau and lower_lr multiply
    m.cfg.lower_lr.steps = 5
    m._lower_lr(4)
    assert m.lr_scale(4) == 0.25
    s = _mgr(plateau={"window": 2, "ema": 0.0, "action": "stop"})
    assert [s.observe_train({"train/reward": 1.0}, k) for k in range(3)] == [False, False, True]
    assert "plateau" in s.health()["stop_reason"]


def test_early_stop_through_the_manager():
    m = _mgr(early_stop={"patience": 2})
    evals = [
        {"eval/accuracy/level_1": 0.5, "eval/accuracy/level_2": 0.3},  # mean 0.4
        {"eval/accuracy/level_1": 0.6, "eval/accuracy/level_2": 0.4},  # 0.5: better
        {"eval/accuracy/level_1": 0.5, "eval/accuracy/level_2": 0.5},  # 0.5: not better
        {"eval/accuracy/level_1": 0.4, "eval/accuracy/level_2": 0.5},
    ]
    assert [m.observe_eval(e, 10 * i) for i, e in enumerate(evals)] == [False, False, False, True]
    h = m.health()
    assert h["early_stop"]["best"] == pytest.approx(0.5) and h["early_stop"]["stopped_at"] == 30
    assert "early stop" in h["stop_reason"]
    assert not _mgr().observe_eval(0.1, 0)  # off by default
    with pytest.raises(KeyError, match="eval/loss"):
        _mgr(early_stop={"metric": "eval/loss"}).observe_eval({"eval/acc": 1.0}, 0)
    num = _mgr(early_stop={"patience": 1, "mode": "min", "metric": "eval/loss"})
    assert [num.observe_eval(v, i) for i, v in enumerate([2.0, 1.0, 1.5])] == [False, False, True]


def test_clip_through_the_manager():
    m = _mgr(clip="value", clip_value=0.1)
    p = torch.nn.Parameter(torch.zeros(2))
    p.grad = torch.tensor([1.0, -1.0])
    res = m.clip([p])
    assert res.clipped and p.grad.tolist() == pytest.approx([0.1, -0.1])
    assert m.health()["clip"] == {"mode": "value", "updates": 1, "clipped": 1}


FULL = dict(
    clip="adaptive",
    adaptive={"window": 8, "min_history": 3},
    spikes=[
        {"metric": "train/loss", "window": 10, "threshold": 4.0, "action": "skip"},
        {"metric": "train/reward", "window": 6, "threshold": 4.0, "action": "lower_lr"},
        {"metric": "time/x", "window": 6, "threshold": 4.0, "action": "rollback"},
    ],
    guards={"kl_max": 0.3, "action": "lower_lr"},
    lower_lr={"factor": 0.5, "steps": 3},
    plateau={"window": 4, "ema": 0.5, "min_slope": 0.01, "cooldown": 2},
    early_stop={"patience": 3},
    max_consecutive_skips=50,
    max_rollbacks=50,
)


def _drive(m: StabilityManager, rng: random.Random, steps: range) -> list:
    """A noisy run with occasional spikes; returns everything the trainer would see."""
    out = []
    for s in steps:
        loss = 1 + rng.gauss(0, 0.1) + (50 if rng.random() < 0.1 else 0)
        gn = abs(rng.gauss(1, 0.3)) + (20 if rng.random() < 0.1 else 0)
        met = {"train/reward": rng.random(), "train/kl": rng.random() * 0.4}
        p = torch.nn.Parameter(torch.zeros(1))
        p.grad = torch.tensor([gn])
        clip = m.clip([p])
        d = m.check_update(loss, clip.pre_norm, met, step=s)
        if d.action == "rollback":
            m.on_rollback()
        stop = m.observe_train(
            {**met, "time/x": rng.gauss(1, 0.1) + (9 if rng.random() < 0.1 else 0)}, s
        )
        ev = m.observe_eval(rng.random(), s) if s % 5 == 4 else None
        out.append((clip, d, stop, ev, m.lr_scale(s + 1)))
    return out


def test_state_dict_round_trip_gives_identical_decisions():
    a = _mgr(total_steps=60, **FULL)
    rng = random.Random(0)
    _drive(a, rng, range(30))
    saved = json.loads(json.dumps(a.state_dict()))  # as the checkpoint stores it
    rng_state = rng.getstate()
    ref = _drive(a, rng, range(30, 60))
    b = _mgr(total_steps=60, **FULL)
    b.load_state_dict(saved)
    rng.setstate(rng_state)
    got = _drive(b, rng, range(30, 60))
    assert got == ref
    assert a.health() == b.health()
    h = a.health()
    assert h["spikes"]["train/loss"] > 0 and h["skips"]["spike"] > 0 and h["rollbacks"] > 0
    assert h["guard_hits"]["train/kl"] > 0 and h["lr_reductions"] > 0
