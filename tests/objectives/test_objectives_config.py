"""objectives.* keys: validation with clear messages, cross-checks, building every balancer."""

from __future__ import annotations

import pytest
import torch

from steerl.config import ConfigError, ObjectivesConfig, load_config
from steerl.objectives import BALANCERS, ObjectivesError, build_balancer, validate_terms

TWO_REWARDS = ["rewards=[{name: exact_match}, {name: format, args: {pattern: '.*'}}]"]


def _err(*overrides: str) -> str:
    with pytest.raises(ConfigError) as e:
        load_config("default", list(overrides))
    return str(e.value)


def test_defaults_are_the_old_behaviour():
    o = load_config("default").objectives
    assert (o.combine, o.balancer, o.weights, o.preference) == ("weighted_sum", "static", {}, None)


def test_preference_must_match_the_rewards():
    msg = _err(*TWO_REWARDS, "objectives.preference=[1.0]")
    assert "objectives.preference has 1 entries for 2 rewards (exact_match, format)" in msg
    msg = _err(*TWO_REWARDS, "objectives.preference=[1.0, -0.5]")
    assert "objectives.preference" in msg and "non-negative" in msg
    msg = _err(*TWO_REWARDS, "objectives.preference=[0, 0]")
    assert "not all zero" in msg
    ok = load_config("default", [*TWO_REWARDS, "objectives.preference=[0.2, 0.8]"])
    assert ok.objectives.preference == [0.2, 0.8]


def test_ideal_and_tchebycheff_checks():
    msg = _err("objectives.ideal=[1.0]")
    assert "ideal" in msg and "combine=weighted_sum does not use it" in msg
    msg = _err(*TWO_REWARDS, "objectives.combine=tchebycheff", "objectives.ideal=[1.0]")
    assert "objectives.ideal has 1 entries for 2 rewards" in msg
    msg = _err(
        "rewards=[{name: exact_match}, {name: length_penalty, weight: -1}]",
        "objectives.combine=tchebycheff",
    )
    assert "length_penalty=-1.0" in msg and "set objectives.preference" in msg


def test_preference_and_scheduled_reward_weights_conflict():
    msg = _err(
        *TWO_REWARDS,
        "objectives.preference=[1, 1]",
        "schedule.coefficients={rewards.format.weight: {start: 1.0}}",
    )
    assert "objectives.preference replaces the reward weights" in msg
    assert "rewards.format.weight" in msg


def test_gdpo_refuses_kl_in_reward():
    msg = _err("objectives.combine=gdpo", "loss.kl_in=reward", "loss.kl_coef=0.1")
    assert "objectives.combine=gdpo" in msg and "loss.kl_in=loss" in msg


def test_balancer_specific_keys():
    msg = _err("objectives.balancer=mgda_ub", "objectives.aggregate_params=last_blocks:2")
    assert "mgda_ub" in msg and "balancer=mgda" in msg
    msg = _err("objectives.balancer=gradnorm", "objectives.aggregate_params=hidden_state")
    assert "gradnorm needs parameters" in msg
    msg = _err("objectives.aggregate_params=lora")  # static does not read it
    assert "not balancer=static" in msg
    msg = _err("objectives.balancer=upgrad", "objectives.aggregate_params=layers:2")
    assert "last_blocks:N, lora, hidden_state, regex:<pattern>" in msg
    msg = _err("objectives.balancer=upgrad", "objectives.aggregate_params=regex:(")
    assert "is not a regex" in msg
    msg = _err("objectives.balancer=scheduled")
    assert "needs schedules" in msg
    msg = _err("objectives.weights={policy: -1}")
    assert "weights['policy']=-1.0 must be a finite number >= 0" in msg
    msg = _err("objectives.balancer=nope")
    assert "objectives.balancer" in msg and "upgrad" in msg
    msg = _err("objectives.dwa.temperature=0")
    assert "objectives.dwa.temperature" in msg


def test_validate_terms_lists_the_declared_terms():
    cfg = ObjectivesConfig(weights={"policy": 1.0, "dpo": 0.5})
    with pytest.raises(ObjectivesError) as e:
        validate_terms(cfg, ["policy", "sft"])
    assert "objectives.weights names unknown term(s) 'dpo'" in str(e.value)
    assert "declared terms: policy, sft" in str(e.value)
    validate_terms(ObjectivesConfig(weights={"sft": 2.0}), ["policy", "sft"])
    with pytest.raises(ObjectivesError, match="min_losses"):
        build_balancer(ObjectivesConfig(min_losses={"x": 0.0}), term_names=["policy"])


@pytest.mark.parametrize("name", sorted(e.name for e in BALANCERS.entries()))
def test_every_registered_balancer_builds_from_config_and_runs(name, tiny_policy):
    from steerl.config import CoefScheduleConfig

    model = tiny_policy(scale=0.3).model
    model.train()
    extra = {"schedules": {"sft": CoefScheduleConfig(start=0.5)}} if name == "scheduled" else {}
    cfg = ObjectivesConfig(balancer=name, weights={"sft": 0.5}, **extra)
    bal = build_balancer(cfg, model=model, total_steps=10, term_names=["policy", "sft"])
    ids = torch.randint(0, 20, (2, 6))
    for step in range(2):
        model.zero_grad(set_to_none=True)
        bal.begin_step(step)
        lp = model(input_ids=ids).logits.log_softmax(-1)
        bal.combine({"policy": -lp[..., 3].mean(), "sft": -lp[..., 5].mean()}, model.parameters())
        weights = bal.end_step()
    assert set(weights) == {"policy", "sft"}
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    assert name in repr(bal).lower() or type(bal).__name__.lower().startswith(name[:3])
