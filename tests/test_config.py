from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from steerl.config import RECIPES_DIR, Config, ConfigError, load_config


def _error(overrides: list[str], recipe: str | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(recipe, overrides)
    return str(info.value)


def test_default_recipe_loads() -> None:
    cfg = load_config()
    raw = yaml.safe_load((RECIPES_DIR / "default.yaml").read_text())
    assert isinstance(cfg, Config)
    assert cfg.recipe == "default"
    assert cfg.model.name == "tiny"
    assert cfg.warmup.steps == raw["warmup"]["steps"]
    assert cfg.train.steps == raw["train"]["steps"]
    assert [r.name for r in cfg.rewards] == ["exact_match"]
    assert load_config("default") == cfg


def test_dotted_overrides() -> None:
    cfg = load_config(
        None,
        [
            "rollout.group_size=16",
            "rewards.0.weight=2",
            "optim.lr=3e-4",
            "task.arithmetic.levels=[1, 2]",
            "rewards.0.args={first_line: false}",
        ],
    )
    assert cfg.rollout.group_size == 16
    assert cfg.rewards[0].weight == 2.0
    assert cfg.optim.lr == pytest.approx(3e-4)
    assert cfg.task.arithmetic.levels == [1, 2]
    assert cfg.rewards[0].args == {"first_line": False}


def test_unknown_key_names_it_and_lists_allowed() -> None:
    msg = _error(["rollout.bogus=1"])
    assert "rollout.bogus" in msg
    assert "group_size" in msg and "prompts_per_step" in msg
    msg = _error(["bogus=1"])
    assert "'bogus'" in msg and "rollout" in msg and "rewards" in msg


def test_bad_type_names_key_and_value() -> None:
    msg = _error(["rollout.group_size=abc"])
    assert "rollout.group_size" in msg and "abc" in msg


def test_bad_literal_lists_allowed_values() -> None:
    msg = _error(["loss.aggregation=foo"])
    assert "loss.aggregation" in msg and "foo" in msg and "token-mean" in msg


def test_override_without_equals() -> None:
    msg = _error(["rollout.group_size"])
    assert "rollout.group_size" in msg and "key=value" in msg


def test_list_index_out_of_range() -> None:
    msg = _error(["rewards.3.weight=2"])
    assert "rewards.3" in msg and "out of range" in msg


def test_missing_recipe_names_it_and_lists_packaged(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.yaml")
    msg = _error([], recipe=missing)
    assert missing in msg and "default" in msg


def test_section_check_message_is_clean() -> None:
    msg = _error(["model.tiny.num_heads=3"])
    assert "model.tiny" in msg and "num_heads=3" in msg
    assert "Value error" not in msg and "{...}" not in msg


def test_cross_field_check() -> None:
    msg = _error(["schedule.warmup_steps=100", "train.steps=10"])
    assert "schedule.warmup_steps=100" in msg and "train.steps=10" in msg
    assert "<root>" not in msg
    load_config(None, ["schedule.warmup_steps=100", "train.steps=0"])  # no RL: nothing to warm


def test_yaml_recipe_file_with_overrides(tmp_path: Path) -> None:
    path = tmp_path / "mine.yaml"
    path.write_text("rollout: {group_size: 4}\ntrain: {steps: 3}\n")
    cfg = load_config(path, ["train.steps=5"])
    assert cfg.recipe == "mine"
    assert (cfg.rollout.group_size, cfg.train.steps) == (4, 5)


def test_resolved_config_round_trips(tmp_path: Path) -> None:
    cfg = load_config(None, ["rewards.0.args={first_line: false}", "optim.betas=[0.8, 0.9]"])
    (tmp_path / "config.yaml").write_text(cfg.to_yaml())  # what the Trainer writes
    again = load_config(tmp_path / "config.yaml")
    assert again == cfg
    assert again.recipe == "default"


def test_optimizer_keys_of_another_optimizer_are_refused() -> None:
    msg = _error(["optim.name=adafactor", "optim.betas=[0.9, 0.95]"])
    assert "optim.betas" in msg and "adafactor" in msg
    msg = _error(["optim.beta2_decay=-0.5"])
    assert "optim.beta2_decay" in msg and "adamw" in msg
    msg = _error(["optim.name=adafactor", "optim.beta2_decay=0.5"])
    assert "beta2_decay" in msg and "0.5" in msg
    # a saved full config (every key written out) loads again
    cfg = load_config(None, ["optim.name=adafactor", "optim.clip_threshold=2"])
    again = Config.model_validate(cfg.model_dump(mode="json"))
    assert again.optim.name == "adafactor" and again.optim.clip_threshold == 2.0
