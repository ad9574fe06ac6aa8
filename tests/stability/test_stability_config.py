"""Config keys of ``schedule`` and ``stability``: defaults, overrides and clear errors."""

from __future__ import annotations

import pytest
import yaml

from steerl.config import ConfigError, build_config, load_config


def _error(*overrides: str) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(None, list(overrides))
    return str(info.value)


def test_defaults_keep_old_behaviour():
    cfg = load_config(None, [])
    st, sc = cfg.stability, cfg.schedule
    assert st.clip == "norm" and st.max_grad_norm == 1.0
    assert st.spikes == [] and st.plateau is None and st.early_stop is None
    assert st.guards.kl_max is None and st.max_rollbacks == 3
    assert st.lower_lr.factor == 0.5 and st.lower_lr.steps == 10
    assert sc.name == "constant" and sc.warmup_start == 0.0 and sc.param_groups == []
    assert sc.coefficients == {} and sc.kl_controller is None


def test_everything_set_through_overrides_and_yaml_round_trip():
    cfg = load_config(
        None,
        [
            "train.steps=100",
            "train.save_every=10",
            "loss.kl_coef=0.05",
            "schedule.name=wsd",
            "schedule.warmup_steps=10",
            "schedule.decay_fraction=0.3",
            "schedule.decay_shape=cosine",
            "schedule.param_groups=[{pattern: lm_head, lr_scale: 0.1}]",
            "schedule.kl_controller={target: 0.02, horizon: 50}",
            "schedule.coefficients={rewards.exact_match.weight: {start: 1.0, end: 2.0}}",
            "stability.clip=agc",
            "stability.agc_clip=0.05",
            "stability.spikes=[{metric: train/loss}, {metric: train/reward, direction: down, "
            "action: rollback}]",
            "stability.guards.kl_max=0.5",
            "stability.guards.action=stop",
            "stability.plateau.window=10",
            "stability.early_stop.patience=4",
        ],
    )
    assert cfg.stability.plateau.window == 10 and cfg.stability.plateau.action == "reduce_lr"
    assert cfg.stability.early_stop.patience == 4
    assert cfg.stability.spikes[1].action == "rollback"
    assert cfg.schedule.kl_controller.horizon == 50
    again = build_config(yaml.safe_load(cfg.to_yaml()))
    assert again == cfg


@pytest.mark.parametrize(
    "overrides, expected",
    [
        # warm-up longer than the run
        (["schedule.warmup_steps=100", "train.steps=10"], "schedule.warmup_steps=100"),
        (
            ["schedule.name=wsd", "schedule.warmup_steps=9", "train.steps=10"],
            "plus the wsd decay",
        ),
        (
            [
                "train.steps=10",
                "schedule.coefficients={rewards.exact_match.weight: {start: 1, warmup_steps: 20}}",
            ],
            "warmup_steps=20 is longer than",
        ),
        # min LR ratio / warm-up start above the peak
        (["schedule.min_lr_ratio=1.5"], "min_lr_ratio"),
        (["schedule.warmup_start=1.2"], "warmup_start"),
        (["schedule.min_lr_ratio=-0.1"], "schedule.min_lr_ratio"),
        # clip thresholds
        (["stability.max_grad_norm=0"], "stability.max_grad_norm"),
        (["stability.max_grad_norm=-1"], "stability.max_grad_norm"),
        (["stability.clip_value=0"], "stability.clip_value"),
        (["stability.agc_clip=0"], "stability.agc_clip"),
        (["stability.agc_clip=-0.01"], "stability.agc_clip"),
        (["stability.clip=median"], "stability.clip"),
        # percentile outside (0, 100]
        (["stability.adaptive.percentile=0"], "stability.adaptive.percentile"),
        (["stability.adaptive.percentile=100.5"], "stability.adaptive.percentile"),
        (["stability.adaptive.window=5", "stability.adaptive.min_history=6"], "min_history=6"),
        # spike windows
        (["train.steps=10", "stability.spikes=[{window: 20}]"], "stability.spikes.0.window=20"),
        (["stability.spikes=[{window: 4, min_history: 5}]"], "min_history=5"),
        (["stability.spikes=[{threshold: 0}]"], "stability.spikes.0.threshold"),
        (["stability.spikes=[{action: stop}]"], "stability.spikes.0.action"),
        (["stability.spikes=[{action: rollback}]"], "needs checkpoints"),
        (["stability.guards.kl_max=0.1", "stability.guards.action=rollback"], "needs checkpoints"),
        (["train.steps=10", "stability.plateau.window=20"], "stability.plateau.window=20"),
        (["stability.lower_lr.factor=0"], "stability.lower_lr.factor"),
        # schedule targets
        (["schedule.name=step"], "schedule.name"),
        (["schedule.coefficients={kl: {start: 0.1}}"], "coefficient key 'kl'"),
        (["schedule.coefficients={loss.nope: {start: 0.1}}"], "no numeric key 'nope'"),
        (["schedule.coefficients={rewards.nope.weight: {start: 1}}"], "no reward labelled"),
        (
            ["loss.kl_coef=0.1", "schedule.coefficients={loss.kl_coef: {start: -0.1}}"],
            "cannot go below 0",
        ),
        (["schedule.coefficients={loss.kl_coef: {start: 0.1}}"], "needs loss.kl_coef > 0"),
        (["schedule.kl_controller={target: 0.1, horizon: 10}"], "needs loss.kl_coef > 0"),
        (["loss.kl_coef=0.1", "schedule.kl_controller={target: 0, horizon: 10}"], "target"),
        (["loss.kl_coef=0.1", "schedule.kl_controller={target: 0.1}"], "horizon"),
        (
            [
                "loss.kl_coef=0.1",
                "schedule.kl_controller={target: 0.1, horizon: 10}",
                "schedule.coefficients={loss.kl_coef: {start: 0.1}}",
            ],
            "keep one",
        ),
        (["schedule.param_groups=[{pattern: '[', lr_scale: 2}]"], "is not a regex"),
        (["schedule.param_groups=[{pattern: x, lr_scale: 0}]"], "lr_scale"),
    ],
)
def test_bad_input_is_a_clear_error(overrides, expected):
    msg = _error(*overrides)
    assert expected in msg


def test_error_messages_name_key_and_value():
    msg = _error("stability.agc_clip=-0.5")
    assert "stability.agc_clip" in msg and "-0.5" in msg
    msg = _error("stability.adaptive.percentile=150")
    assert "stability.adaptive.percentile" in msg and "150" in msg
    msg = _error("schedule.min_lr_ratio=2")
    assert "schedule.min_lr_ratio" in msg and "2" in msg and "above the peak" in msg
    msg = _error("train.steps=10", "stability.spikes=[{metric: train/kl, window: 30}]")
    assert "stability.spikes.0.window=30" in msg and "train.steps=10" in msg
