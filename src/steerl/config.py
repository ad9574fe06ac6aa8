"""Typed configuration: one pydantic model per recipe section.

A recipe is a YAML file whose top-level keys are the sections below. Every field has one
home for its default (here) and a one-line description; nothing downstream calls
``cfg.get(key, default)``. Unknown keys and bad values are rejected before anything heavy
starts, with a message that names the dotted key, the value and what is allowed.

Command-line overrides use the same dotted keys: ``rollout.group_size=16``,
``rewards.0.weight=2``; the value is parsed as YAML (``1e-4`` is a float, ``[1, 2]`` a list).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


class ConfigError(ValueError):
    """A recipe or override is invalid; the message is meant for the user as-is."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# --------------------------------------------------------------------------- model
class TinyModelConfig(Section):
    """The built-in tiny model: a randomly initialised `transformers` config."""

    arch: Literal["llama", "gpt2"] = "llama"  # architecture family of the config
    hidden_size: int = Field(64, ge=8)  # width of the residual stream
    num_layers: int = Field(4, ge=1)  # transformer blocks
    num_heads: int = Field(4, ge=1)  # attention heads (hidden_size must divide by it)
    intermediate_size: int = Field(256, ge=8)  # MLP width
    max_position_embeddings: int = Field(128, ge=16)  # longest prompt + completion

    @model_validator(mode="after")
    def _heads_divide(self) -> TinyModelConfig:
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"hidden_size={self.hidden_size} must be divisible by num_heads={self.num_heads}"
            )
        return self


class ModelConfig(Section):
    name: str = "tiny"  # "tiny" (built-in), a Hugging Face hub id, or a local directory
    tiny: TinyModelConfig = TinyModelConfig()  # shape of the built-in model
    device: str = "auto"  # "auto" (CUDA if present, else CPU), "cpu", "cuda", "cuda:1", ...
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"  # auto: bf16 on CUDA
    reference: Literal["auto", "copy", "none"] = "auto"  # frozen copy for KL; auto: if kl>0
    trust_remote_code: bool = False  # passed to from_pretrained
    chat_template: bool = False  # wrap prompts with the tokenizer's chat template
    gradient_checkpointing: bool = False  # recompute activations in backward


# --------------------------------------------------------------------------- task / data
class ArithmeticTaskConfig(Section):
    """Addition with operands and answer written least-significant digit first."""

    levels: list[int] = [1, 2, 3]  # difficulty levels = number of digits per operand
    train_per_level: int = Field(4000, ge=1)  # training prompts drawn per level
    eval_per_level: int = Field(200, ge=1)  # held-out prompts per level (never trained on)
    pad: bool = True  # zero-pad operands to the level's width (fixed digit positions)

    @field_validator("levels")
    @classmethod
    def _levels(cls, v: list[int]) -> list[int]:
        if not v or any(lv < 1 or lv > 9 for lv in v):
            raise ValueError(f"levels must be a non-empty list of integers in 1..9, got {v}")
        return sorted(set(v))


class FieldNames(Section):
    prompt: str = "prompt"  # column holding the prompt text
    answer: str = "answer"  # column holding the reference answer
    difficulty: str = "difficulty"  # optional column: numeric difficulty / level
    category: str = "category"  # optional column: category label
    id: str = "id"  # optional column: stable prompt id


class TaskConfig(Section):
    kind: Literal["arithmetic", "file"] = "arithmetic"  # synthetic task or a user data file
    arithmetic: ArithmeticTaskConfig = ArithmeticTaskConfig()
    path: str | None = None  # kind=file: JSONL or Parquet training prompts
    eval_path: str | None = None  # kind=file: held-out prompts (else split from path)
    eval_fraction: float = Field(0.1, gt=0, lt=1)  # kind=file without eval_path
    fields: FieldNames = FieldNames()  # column names in the data file
    seed: int = 1234  # seed of the data generation / split (separate from train.seed)

    @model_validator(mode="after")
    def _path_needed(self) -> TaskConfig:
        if self.kind == "file" and not self.path:
            raise ValueError("task.kind=file needs task.path (a .jsonl or .parquet file)")
        return self


# --------------------------------------------------------------------------- warm-up (SFT)
class FlawConfig(Section):
    """Deliberately imperfect demonstrations (see README: why RL, not more SFT, helps)."""

    level: int | None = 2  # level whose demonstrations are flawed; null: none
    fraction: float = Field(0.6, ge=0, le=1)  # share of that level's demonstrations flawed
    kind: Literal["drop_carry"] = "drop_carry"  # the systematic flaw: every carry dropped


class WarmupConfig(Section):
    steps: int = Field(0, ge=0)  # SFT steps before RL (0: no warm-up)
    batch_size: int = Field(64, ge=1)  # demonstrations per SFT step
    lr: float = Field(3e-3, gt=0)  # SFT peak learning rate (AdamW)
    schedule: Literal["constant", "linear", "cosine"] = "cosine"  # SFT LR shape
    min_lr_ratio: float = Field(0.1, ge=0, le=1)  # SFT LR floor as a fraction of the peak
    levels: list[int] = [1, 2]  # levels whose prompts are demonstrated
    flaw: FlawConfig = FlawConfig()


# --------------------------------------------------------------------------- rollout
class RolloutConfig(Section):
    prompts_per_step: int = Field(32, ge=1)  # B: distinct prompts per RL step
    group_size: int = Field(8, ge=1)  # G: completions sampled per prompt
    temperature: float = Field(1.0, gt=0)  # sampling temperature
    top_p: float = Field(1.0, gt=0, le=1)  # nucleus sampling mass
    max_new_tokens: int = Field(8, ge=1)  # completion length cap (truncated if reached)
    eval_max_new_tokens: int | None = None  # greedy eval cap; null: max_new_tokens


# --------------------------------------------------------------------------- rewards
class RewardSpec(Section):
    name: str  # a registered reward ("exact_match") or "package.module:function"
    weight: float = 1.0  # weight in the combined reward
    args: dict[str, Any] = {}  # keyword arguments bound to the reward function
    alias: str | None = None  # name used in logs (default: name)

    @property
    def label(self) -> str:
        return self.alias or self.name.replace(":", ".")


# --------------------------------------------------------------------------- loss
class LossConfig(Section):
    name: str = "grpo"  # registered policy loss
    clip_low: float = Field(0.2, gt=0, lt=1)  # ratio clipped below at 1 - clip_low
    clip_high: float = Field(0.2, gt=0)  # ratio clipped above at 1 + clip_high (DAPO: 0.28)
    aggregation: Literal["token-mean"] = "token-mean"  # how token losses become one number
    kl_coef: float = Field(0.0, ge=0)  # beta of the KL penalty against the reference
    kl_estimator: Literal["k3"] = "k3"  # Schulman's estimator of KL(pi || ref)
    epochs: int = Field(1, ge=1)  # optimisation passes over each rollout batch
    advantage: Literal["group_mean_std", "group_mean"] = "group_mean_std"  # normalisation
    micro_batch_size: int = Field(256, ge=1)  # sequences per forward/backward


# --------------------------------------------------------------------------- optimiser / schedule
class OptimConfig(Section):
    name: Literal["adamw", "adam", "sgd"] = "adamw"  # torch.optim class
    lr: float = Field(1e-4, gt=0)  # peak learning rate of the RL phase
    betas: tuple[float, float] = (0.9, 0.999)  # Adam moments
    weight_decay: float = Field(0.0, ge=0)  # decoupled weight decay
    eps: float = Field(1e-8, gt=0)  # Adam epsilon


class ScheduleConfig(Section):
    name: Literal["constant", "linear", "cosine"] = "constant"  # LR shape after warm-up
    warmup_steps: int = Field(0, ge=0)  # linear warm-up from 0 to the peak
    min_lr_ratio: float = Field(0.0, ge=0, le=1)  # floor as a fraction of the peak


# --------------------------------------------------------------------------- stability
class StabilityConfig(Section):
    max_grad_norm: float | None = Field(1.0, gt=0)  # clip by global norm; null: off
    skip_nonfinite: bool = True  # skip a step whose loss or gradient is NaN/inf
    max_consecutive_skips: int = Field(5, ge=1)  # then stop with a diagnosis


# --------------------------------------------------------------------------- curriculum
class CurriculumConfig(Section):
    name: Literal["uniform"] = "uniform"  # prompt selector
    levels: list[int] | None = None  # restrict RL prompts to these levels; null: all
    drop_zero_variance: bool = True  # DAPO: groups with identical rewards carry no signal
    zero_variance_tol: float = Field(1e-6, ge=0)  # std below this counts as zero


# --------------------------------------------------------------------------- objectives
class ObjectivesConfig(Section):
    combine: Literal["weighted_sum"] = "weighted_sum"  # rewards -> one scalar, then normalise
    balancer: Literal["static"] = "static"  # how loss terms become one gradient


# --------------------------------------------------------------------------- train / logging
class TrainConfig(Section):
    steps: int = Field(40, ge=0)  # RL steps
    seed: int = 0  # seeds torch, numpy, random and the samplers
    eval_every: int = Field(0, ge=0)  # greedy eval every N RL steps (0: only at the end)
    save_every: int = Field(0, ge=0)  # checkpoint every N steps (0: only at the end)
    keep_checkpoints: int = Field(2, ge=1)  # newest complete checkpoints kept on disk
    out_dir: str | None = None  # run directory; default runs/<recipe>-<timestamp>
    threads: int | None = Field(None, ge=1)  # torch CPU threads; null: min(cores, 4)
    stop_after: int | None = Field(None, ge=0)  # stop (as if killed) after this global step


class LoggingConfig(Section):
    tensorboard: bool = True  # write tb/ event files
    wandb: bool = False  # log to Weights & Biases (pip install steerl[wandb])
    wandb_project: str = "steerl"  # W&B project
    mlflow: bool = False  # log to MLflow (pip install steerl[mlflow])
    progress: bool = True  # rich progress bar on the console
    samples_every: int = Field(10, ge=0)  # write a few completions to samples.jsonl (0: off)
    report: bool = True  # write PNG plots and report.html at the end


class Config(Section):
    recipe: str = "custom"  # recipe name (used in the run directory name)
    model: ModelConfig = ModelConfig()
    task: TaskConfig = TaskConfig()
    warmup: WarmupConfig = WarmupConfig()
    rollout: RolloutConfig = RolloutConfig()
    rewards: list[RewardSpec] = [RewardSpec(name="exact_match")]
    loss: LossConfig = LossConfig()
    optim: OptimConfig = OptimConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    stability: StabilityConfig = StabilityConfig()
    curriculum: CurriculumConfig = CurriculumConfig()
    objectives: ObjectivesConfig = ObjectivesConfig()
    train: TrainConfig = TrainConfig()
    logging: LoggingConfig = LoggingConfig()

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
        if self.schedule.warmup_steps > self.train.steps > 0:
            raise ValueError(
                f"schedule.warmup_steps={self.schedule.warmup_steps} is longer than "
                f"train.steps={self.train.steps}"
            )
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
