"""Loss-level balancers: the step protocol, each method's rule, finiteness, resume."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from steerl.config import CoefScheduleConfig, ObjectivesConfig
from steerl.objectives import (
    BalancerProtocolError,
    DWABalancer,
    FAMOBalancer,
    ScheduledBalancer,
    StaticBalancer,
    UncertaintyBalancer,
    build_balancer,
)
from steerl.schedules import CoefSchedule


def _run_step(bal, step, values, micro_batches=2):
    """One optimizer step: the term values are split evenly over the micro-batches."""
    w = torch.ones(1, requires_grad=True)
    bal.begin_step(step)
    for _ in range(micro_batches):
        terms = {k: w.sum() * (v / micro_batches) for k, v in values.items()}
        used = bal.combine(terms, [w])
    out = bal.end_step()
    assert out == used  # end_step reports the weights used during the step
    return out, w.grad


def test_static_keeps_working_without_hooks():
    bal = StaticBalancer({"aux": 0.5})
    w = torch.tensor([1.0, 2.0], requires_grad=True)
    assert bal.combine({"policy": w.sum(), "aux": (w**2).sum()}, [w]) == {
        "policy": 1.0,
        "aux": 0.5,
    }
    torch.testing.assert_close(w.grad, torch.tensor([2.0, 3.0]))
    assert bal.end_step() == {"policy": 1.0, "aux": 0.5}


@pytest.mark.parametrize("name", ["scheduled", "uncertainty", "dwa", "famo"])
def test_adaptive_balancers_need_the_hooks(name):
    cfg = ObjectivesConfig(
        balancer=name,
        schedules={"policy": CoefScheduleConfig(start=1.0)} if name == "scheduled" else {},
    )
    bal = build_balancer(cfg)
    w = torch.ones(1, requires_grad=True)
    with pytest.raises(BalancerProtocolError, match="begin_step"):
        bal.combine({"policy": w.sum()}, [w])
    bal.begin_step(0)
    with pytest.raises(BalancerProtocolError, match="still open"):
        bal.begin_step(1)
    bal.combine({"policy": w.sum()}, [w])
    with pytest.raises(ValueError, match="tracks the terms"):
        bal.combine({"policy": w.sum(), "other": w.sum()}, [w])
    bal.end_step()
    with pytest.raises(BalancerProtocolError, match="without begin_step"):
        bal.end_step()


def test_scheduled_follows_the_coefficient_schedule():
    sched = CoefSchedule("linear", start=1.0, end=0.0, total_steps=10)
    bal = ScheduledBalancer({"aux": sched}, weights={"policy": 2.0})
    for step in (0, 5, 10):
        used, _ = _run_step(bal, step, {"policy": 1.0, "aux": 1.0})
        assert used == {"policy": 2.0, "aux": pytest.approx(sched.value(step))}


def test_dwa_follows_the_paper():
    bal = DWABalancer(temperature=2.0)
    losses = [{"a": 1.0, "b": 1.0}, {"a": 0.5, "b": 1.0}, {"a": 0.5, "b": 1.0}]
    for step, values in enumerate(losses[:2]):
        used, _ = _run_step(bal, step, values)
        assert used == {"a": 1.0, "b": 1.0}  # the first two steps: weight 1
    used, _ = _run_step(bal, 2, losses[2])
    r = np.array([0.5 / 1.0, 1.0 / 1.0])  # L(t-1) / L(t-2)
    want = 2 * np.exp(r / 2) / np.exp(r / 2).sum()
    assert [used["a"], used["b"]] == pytest.approx(want.tolist())
    assert used["b"] > used["a"]  # the slower-improving loss gets more weight


def test_uncertainty_weight_tends_to_one_over_the_loss():
    bal = UncertaintyBalancer(lr=0.05)
    for step in range(600):
        used, _ = _run_step(bal, step, {"a": 4.0, "b": 0.25}, micro_batches=1)
    # argmin_s exp(-s) L + s is s = log L: weight exp(-s) = 1 / L
    assert used["a"] == pytest.approx(0.25, rel=0.05)
    assert used["b"] == pytest.approx(4.0, rel=0.05)


def test_famo_favours_the_loss_that_improves_slowly():
    bal = FAMOBalancer(lr=0.05)
    a, b = 1.0, 1.0
    for step in range(60):
        used, _ = _run_step(bal, step, {"a": a, "b": b})
        a *= 0.9  # a improves fast, b not at all
    z = bal.z()
    assert z[1] > z[0]
    assert sum(used.values()) == pytest.approx(2.0)


extreme = st.one_of(
    st.floats(-1e30, 1e30, allow_nan=False),
    st.sampled_from([0.0, 1e-30, -1e-30, 1e30, -1e30, float("inf"), float("nan")]),
)


@settings(max_examples=40, deadline=None, derandomize=True)
@given(values=st.lists(st.tuples(extreme, extreme), min_size=1, max_size=12))
@pytest.mark.parametrize("name", ["uncertainty", "famo", "dwa"])
def test_weights_stay_finite_on_any_losses(name, values):
    bal = build_balancer(ObjectivesConfig(balancer=name))
    for step, (a, b) in enumerate(values):
        bal.begin_step(step)
        w = torch.ones(1, requires_grad=True)
        used = bal.combine(
            {"a": torch.tensor(a) + 0 * w.sum(), "b": torch.tensor(b) + 0 * w.sum()}, [w]
        )
        bal.end_step()
        assert all(math.isfinite(x) and x >= 0 for x in used.values()), used
    nxt = bal.current_weights()
    assert all(math.isfinite(x) and x >= 0 for x in nxt.values())
    json.dumps(bal.state_dict())  # checkpoints are JSON


@pytest.mark.parametrize("name", ["uncertainty", "dwa", "famo", "static"])
def test_resume_reproduces_the_weights(name):
    rng = np.random.default_rng(0)
    seq = [{"a": float(x), "b": float(y)} for x, y in rng.uniform(0.1, 2.0, (12, 2))]
    full = build_balancer(ObjectivesConfig(balancer=name))
    ref = [_run_step(full, s, v)[0] for s, v in enumerate(seq)]
    first = build_balancer(ObjectivesConfig(balancer=name))
    for s, v in enumerate(seq[:6]):
        _run_step(first, s, v)
    state = json.loads(json.dumps(first.state_dict()))
    resumed = build_balancer(ObjectivesConfig(balancer=name))
    resumed.load_state_dict(state)
    got = [_run_step(resumed, s, v)[0] for s, v in enumerate(seq[6:], 6)]
    assert got == ref[6:]


def test_min_losses_shift_the_levels():
    bal = UncertaintyBalancer(min_losses={"a": -1.0})
    assert bal.level("a", -0.5) == pytest.approx(0.5)  # L - b
    assert bal.level("b", -0.5) == bal.loss_floor  # floored


def test_reprs_are_readable():
    assert repr(DWABalancer(temperature=2.0)) == "DWABalancer(temperature=2.0)"
    assert repr(FAMOBalancer(weights={"a": 2.0})) == (
        "FAMOBalancer(lr=0.025, weight_decay=0.001, weights={'a': 2})"
    )
    assert "max_log_var=5.0" in repr(UncertaintyBalancer())


def test_abort_step_discards_an_open_step():
    bal = DWABalancer()
    w = torch.ones(1, requires_grad=True)
    bal.begin_step(0)
    bal.combine({"a": w.sum() * 5.0}, [w])
    bal.abort_step()
    assert bal.history == []  # the aborted step's losses were not recorded
    bal.begin_step(0)  # no "still open" error
    bal.combine({"a": w.sum()}, [w])
    bal.end_step()
    assert bal.history == [[1.0]]
