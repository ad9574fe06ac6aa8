"""Typed configuration: one pydantic model per recipe section.

A recipe is a YAML file whose top-level keys are the sections of ``Config`` below, each
defined in its own module of ``steerl.configs`` and re-exported here. Every field has one
home for its default (its section's module) and a one-line description; nothing downstream
calls ``cfg.get(key, default)``. Unknown keys and bad values are rejected before anything heavy
starts, with a message that names the dotted key, the value and what is allowed.

Command-line overrides use the same dotted keys: ``rollout.group_size=16``,
``rewards.0.weight=2``; the value is parsed as YAML (``1e-4`` is a float, ``[1, 2]`` a list).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError, field_validator, model_validator

from steerl.config_base import ConfigError, Section  # ConfigError is re-exported
from steerl.configs.curriculum import (
    CURRICULUM_NAMES,
    AdaRFTConfig,
    BanditConfig,
    CompetenceConfig,
    CurriculumConfig,
    CurriculumStatsConfig,
    LearnabilityConfig,
    PacingConfig,
    PrioritizedConfig,
)
from steerl.configs.logging import LoggingConfig
from steerl.configs.loss import (
    LOSS_PRESETS,
    PRESET_KEYS,
    AuxLossSpec,
    DPOArgs,
    LossConfig,
    preset_values,
)
from steerl.configs.model import LoraConfig, ModelConfig, TinyModelConfig
from steerl.configs.objectives import (
    AGGREGATOR_BALANCERS,
    LOSS_BALANCERS,
    CAGradConfig,
    DWAConfig,
    FAMOConfig,
    GradNormConfig,
    MGDAConfig,
    NashMTLConfig,
    ObjectivesConfig,
    PCGradConfig,
    UncertaintyConfig,
    _check_objectives,
)
from steerl.configs.optim import (
    CoefScheduleConfig,
    KLControllerConfig,
    OptimConfig,
    ParamGroupSpec,
    ScheduleConfig,
)
from steerl.configs.rewards import RewardSpec
from steerl.configs.rollout import RolloutConfig
from steerl.configs.stability import (
    AdaptiveClipConfig,
    EarlyStopConfig,
    GuardsConfig,
    LowerLRConfig,
    PlateauConfig,
    SpikeConfig,
    StabilityConfig,
    _check_schedule_and_stability,
)
from steerl.configs.task import ArithmeticTaskConfig, FieldNames, TaskConfig
from steerl.configs.train import TrainConfig
from steerl.configs.warmup import FlawConfig, WarmupConfig
from steerl.tuning.spec import TuneConfig

#: Every section and constant lives in ``steerl.configs.<section>``; they are re-exported here
#: so that ``from steerl.config import X`` is the one import the rest of steerl needs.
__all__ = [
    "AGGREGATOR_BALANCERS",
    "CURRICULUM_NAMES",
    "LOSS_BALANCERS",
    "LOSS_PRESETS",
    "PRESET_KEYS",
    "RECIPES_DIR",
    "AdaRFTConfig",
    "AdaptiveClipConfig",
    "ArithmeticTaskConfig",
    "AuxLossSpec",
    "BanditConfig",
    "CAGradConfig",
    "CoefScheduleConfig",
    "CompetenceConfig",
    "Config",
    "ConfigError",
    "CurriculumConfig",
    "CurriculumStatsConfig",
    "DPOArgs",
    "DWAConfig",
    "EarlyStopConfig",
    "FAMOConfig",
    "FieldNames",
    "FlawConfig",
    "GradNormConfig",
    "GuardsConfig",
    "KLControllerConfig",
    "LearnabilityConfig",
    "LoggingConfig",
    "LoraConfig",
    "LossConfig",
    "LowerLRConfig",
    "MGDAConfig",
    "ModelConfig",
    "NashMTLConfig",
    "ObjectivesConfig",
    "OptimConfig",
    "PCGradConfig",
    "PacingConfig",
    "ParamGroupSpec",
    "PlateauConfig",
    "PrioritizedConfig",
    "RewardSpec",
    "RolloutConfig",
    "ScheduleConfig",
    "Section",
    "SpikeConfig",
    "StabilityConfig",
    "TaskConfig",
    "TinyModelConfig",
    "TrainConfig",
    "TuneConfig",
    "UncertaintyConfig",
    "WarmupConfig",
    "apply_overrides",
    "build_config",
    "list_recipes",
    "load_config",
    "parse_override",
    "preset_values",
    "resolve_recipe_path",
]


class Config(Section):
    recipe: str = "custom"  # recipe name (used in the run directory name)
    model: ModelConfig = ModelConfig()  # the policy (and reference) model and tokenizer
    task: TaskConfig = TaskConfig()  # where prompts and reference answers come from
    warmup: WarmupConfig = WarmupConfig()  # SFT on demonstrations before RL
    rollout: RolloutConfig = RolloutConfig()  # grouped sampling from the policy
    rewards: list[RewardSpec] = [RewardSpec(name="exact_match")]  # named rewards, weighted
    loss: LossConfig = LossConfig()
    optim: OptimConfig = OptimConfig()  # the RL optimizer
    schedule: ScheduleConfig = ScheduleConfig()  # LR, coefficient schedules, KL control
    stability: StabilityConfig = StabilityConfig()  # clipping, guards, spikes, monitors
    curriculum: CurriculumConfig = CurriculumConfig()  # which prompts to train on next
    objectives: ObjectivesConfig = ObjectivesConfig()  # reward combination, balancing
    train: TrainConfig = TrainConfig()  # steps, seed, evaluation, checkpoints
    logging: LoggingConfig = LoggingConfig()  # metric sinks, progress bar, report
    tune: TuneConfig = TuneConfig()  # hyperparameter search (steerl tune)

    @field_validator("rewards")
    @classmethod
    def _rewards(cls, v: list[RewardSpec]) -> list[RewardSpec]:
        if not v:
            raise ValueError("at least one reward is needed")
        labels = [r.label for r in v]
        dup = {x for x in labels if labels.count(x) > 1}
        if dup:
            raise ValueError(f"reward names must be unique, {sorted(dup)} repeat (set alias)")
        return v

    @model_validator(mode="after")
    def _cross(self) -> Config:
        if self.rollout.group_size < 2 and self.curriculum.drop_zero_variance:
            raise ValueError(
                "rollout.group_size=1 with curriculum.drop_zero_variance=true drops every "
                "group; use group_size >= 2"
            )
        _check_schedule_and_stability(self)  # warm-up / spike windows vs the run, targets
        _check_objectives(self)  # preference / ideal vs the rewards, gdpo vs kl_in=reward
        return self

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


# --------------------------------------------------------------------------- loading
RECIPES_DIR = Path(__file__).parent / "recipes"


def list_recipes() -> dict[str, str]:
    """Packaged recipes: name -> first comment line of the file."""
    out = {}
    for p in sorted(RECIPES_DIR.glob("*.yaml")):
        first = p.read_text().splitlines()[0] if p.read_text() else ""
        out[p.stem] = first.lstrip("# ").strip()
    return out


def resolve_recipe_path(recipe: str | None) -> Path:
    """A path to a YAML file, or the name of a packaged recipe (default: ``default``)."""
    name = recipe or "default"
    p = Path(name)
    if p.is_file():
        return p
    packaged = RECIPES_DIR / f"{name}.yaml"
    if packaged.is_file():
        return packaged
    raise ConfigError(
        f"recipe {name!r} is neither a file nor a packaged recipe. "
        f"Packaged recipes: {', '.join(list_recipes())}. Pass a path to a YAML file, or run "
        "`steerl recipes` to list them."
    )


def parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise ConfigError(
            f"override {text!r} is not of the form key=value (e.g. rollout.group_size=16)"
        )
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r} has an empty key part")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"override {text!r}: value {raw!r} is not valid YAML ({e})") from None
    return key.split("."), value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Set dotted keys in a nested dict/list structure (lists indexed by integers)."""
    for text in overrides:
        path, value = parse_override(text)
        node: Any = data
        for i, part in enumerate(path[:-1]):
            if isinstance(node, list):
                node = _list_item(node, part, path[: i + 1])
            else:
                if part not in node or node[part] is None:
                    node[part] = {}
                node = node[part]
        last = path[-1]
        if isinstance(node, list):
            idx = _list_index(node, last, path)
            node[idx] = value
        elif isinstance(node, dict):
            node[last] = value
        else:
            raise ConfigError(f"override {text!r}: {'.'.join(path[:-1])} is not a section")
    return data


def _list_index(node: list, part: str, path: list[str]) -> int:
    try:
        idx = int(part)
    except ValueError:
        raise ConfigError(f"key {'.'.join(path)}: {part!r} must be a list index") from None
    if not -len(node) <= idx < len(node):
        raise ConfigError(f"key {'.'.join(path)}: index {idx} out of range (len {len(node)})")
    return idx


def _list_item(node: list, part: str, path: list[str]) -> Any:
    return node[_list_index(node, part, path)]


def _describe_error(err: dict[str, Any], data: dict[str, Any]) -> str:
    loc = [str(x) for x in err["loc"]]
    key = ".".join(loc) or "<root>"
    if err["type"] == "extra_forbidden":
        parent = _model_at(loc[:-1])
        allowed = ", ".join(parent.model_fields) if parent else "?"
        return f"unknown key '{key}' (allowed in this section: {allowed})"
    value = err.get("input")
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "value_error" and isinstance(value, dict):
        # a section's own check (model validator): its message already names the keys
        return msg if not loc else f"{key}: {msg}"
    shown = repr(value) if not isinstance(value, dict) else "{...}"
    if err["type"] == "literal_error":
        msg = msg.replace("Input should be", "allowed values are")
    return f"key '{key}': got {shown}; {msg}"


def _model_at(loc: list[str]) -> type[BaseModel] | None:
    model: Any = Config
    for part in loc:
        if part.isdigit():
            continue
        field = model.model_fields.get(part) if isinstance(model, type) else None
        if field is None:
            return None
        ann = field.annotation
        args = getattr(ann, "__args__", ())
        cand = [a for a in (ann, *args) if isinstance(a, type) and issubclass(a, BaseModel)]
        if not cand:
            return None
        model = cand[0]
    return model


def build_config(data: dict[str, Any]) -> Config:
    try:
        return Config.model_validate(data)
    except ValidationError as e:
        lines = [_describe_error(err, data) for err in e.errors(include_url=False)]
        raise ConfigError("invalid configuration:\n  - " + "\n  - ".join(lines)) from None


def load_config(recipe: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Read a recipe (file or packaged name), apply dotted overrides and validate."""
    path = resolve_recipe_path(str(recipe) if recipe is not None else None)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"recipe {path} is not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"recipe {path} must be a mapping of sections, got {type(data).__name__}")
    data.setdefault("recipe", path.stem)
    apply_overrides(data, list(overrides or []))
    return build_config(data)
