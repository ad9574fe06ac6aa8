"""The tune: section and search spaces: parsing, checking against the recipe, sampling."""

from __future__ import annotations

import optuna
import pytest

from steerl.config import ConfigError, load_config
from steerl.tuning.space import as_overrides, check_space, suggest
from steerl.tuning.spec import Bound, ParamSpec, TuneConfig


def test_default_recipe_carries_a_tune_section():
    tc = load_config("default").tune
    assert tc.method == "optuna" and tc.sampler == "tpe" and tc.effective_pruner == "median"


@pytest.mark.parametrize(
    "spec, message",
    [
        ({"type": "float", "low": 1.0}, "needs both low and high"),
        ({"type": "float", "low": 2.0, "high": 1.0}, "is above high"),
        ({"type": "float", "low": 0.0, "high": 1.0, "log": True}, "log=true needs positive"),
        ({"type": "float", "low": -1.0, "high": 1.0, "log": True}, "low=-1.0"),
        ({"type": "int", "low": 1.5, "high": 4}, "integer low"),
        ({"type": "categorical"}, "non-empty choices"),
        ({"type": "categorical", "choices": [1, 2], "low": 0}, "takes choices"),
        ({"type": "float", "low": 0.1, "high": 1.0, "log": True, "step": 0.1}, "step"),
        ({"type": "beta", "low": 0, "high": 1}, "type"),
    ],
)
def test_bad_distributions_are_rejected_with_the_reason(spec, message):
    with pytest.raises(ConfigError, match=message):
        load_config("default", [f"tune.space={{optim.lr: {spec}}}".replace("'", "")])


def test_unknown_key_names_the_key_and_what_is_allowed():
    cfg = load_config("default")
    space = {"loss.clip_eps": ParamSpec(type="float", low=0.1, high=0.3)}
    with pytest.raises(ConfigError, match=r"(?s)tune.space.loss.clip_eps.*unknown key.*clip_low"):
        check_space(cfg.model_dump(mode="json"), space)


def test_bound_outside_what_the_recipe_accepts_is_rejected():
    cfg = load_config("default")
    space = {"rollout.group_size": ParamSpec(type="int", low=0, high=8)}
    with pytest.raises(ConfigError, match=r"rollout.group_size=0"):
        check_space(cfg.model_dump(mode="json"), space)


def test_tune_keys_cannot_be_searched():
    cfg = load_config("default")
    with pytest.raises(ConfigError, match="tune section itself"):
        check_space(
            cfg.model_dump(mode="json"), {"tune.trials": ParamSpec(type="int", low=1, high=2)}
        )


def test_conditions_must_name_an_earlier_space_key():
    with pytest.raises(ConfigError, match="not a key of tune.space"):
        load_config(
            "default",
            ["tune.space={optim.lr: {type: float, low: 0.1, high: 1, when: {loss.preset: dapo}}}"],
        )


def test_metric_names_and_multi_objective_pruning_are_checked():
    with pytest.raises(ConfigError, match="not one steerl reports"):
        load_config("default", ["tune.objectives=[{metric: accuracy}]"])
    with pytest.raises(ConfigError, match="does not prune multi-objective"):
        load_config(
            "default",
            [
                "tune.objectives=[{metric: eval/accuracy/mean},"
                " {metric: train/wall_seconds, direction: minimize}]",
                "tune.pruner=median",
            ],
        )
    tc = TuneConfig(objectives=[{"metric": "eval/accuracy/mean"}, {"metric": "eval/mean_length"}])
    assert tc.effective_pruner == "none"


def test_bound_violation_is_optunas_constraint_form():
    b = Bound(metric="eval/accuracy/mean", min=0.5, max=0.9)
    assert b.violation(0.7) < 0 and b.violation(0.4) == pytest.approx(0.1)
    assert b.violation(1.0) == pytest.approx(0.1)
    with pytest.raises(ValueError, match="needs min or max"):
        Bound(metric="eval/accuracy/mean")


def test_suggest_samples_conditional_parameters_only_when_their_condition_holds():
    space = {
        "loss.preset": ParamSpec(type="categorical", choices=["grpo", "dapo"]),
        "loss.clip_high": ParamSpec(type="float", low=0.2, high=0.4, when={"loss.preset": "dapo"}),
        "rollout.group_size": ParamSpec(type="int", low=2, high=8, step=2),
        "optim.lr": ParamSpec(type="float", low=1e-5, high=1e-3, log=True),
    }
    seen = set()
    for preset in ("grpo", "dapo"):
        trial = optuna.trial.FixedTrial(
            {
                "loss.preset": preset,
                "loss.clip_high": 0.3,
                "rollout.group_size": 4,
                "optim.lr": 1e-4,
            }
        )
        got = suggest(trial, space)
        seen.add(("loss.clip_high" in got, preset))
        assert got["rollout.group_size"] == 4 and got["optim.lr"] == pytest.approx(1e-4)
    assert seen == {(False, "grpo"), (True, "dapo")}
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(20):
        got = suggest(study.ask(), space)
        assert 1e-5 <= got["optim.lr"] <= 1e-3 and got["rollout.group_size"] in (2, 4, 6, 8)
        assert ("loss.clip_high" in got) == (got["loss.preset"] == "dapo")
    # overrides are YAML: a float stays a float, a string a string
    cfg = load_config("default", as_overrides({"optim.lr": 3e-4, "loss.preset": "dapo"}))
    assert cfg.optim.lr == pytest.approx(3e-4) and cfg.loss.preset == "dapo"
