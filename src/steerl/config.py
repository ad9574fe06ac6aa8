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
from pydantic import (
    BaseModel,
    Field,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)

from steerl.config_base import ConfigError, Section  # ConfigError is re-exported
from steerl.tuning.spec import TuneConfig


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


class LoraConfig(Section):
    """LoRA adapters via ``peft`` (extra ``steerl[lora]``): only the adapters train.

    Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models" (arXiv:2106.09685):
    each targeted linear layer ``W`` becomes ``W + (alpha / r) B A``, ``A``: (r, in),
    ``B``: (out, r), ``B`` starting at zero.
    """

    enabled: bool = False  # wrap the policy with LoRA adapters (base weights frozen)
    r: int = Field(8, ge=1)  # rank of each adapter
    alpha: float = Field(16.0, gt=0)  # scaling numerator: the update is (alpha / r) B A
    dropout: float = Field(0.0, ge=0, lt=1)  # dropout on the adapters' input while training
    target_modules: list[str] | str = "all-linear"  # module names, or "all-linear" (no head)
    modules_to_save: list[str] = []  # further modules trained in full (e.g. ["lm_head"])

    @field_validator("target_modules")
    @classmethod
    def _targets(cls, v: list[str] | str) -> list[str] | str:
        if isinstance(v, str) and v != "all-linear":
            raise ValueError(
                f"model.lora.target_modules={v!r}: allowed are a list of module names "
                "(e.g. [q_proj, v_proj]) or the string 'all-linear'"
            )
        if isinstance(v, list) and (not v or not all(s.strip() for s in v)):
            raise ValueError(
                f"model.lora.target_modules={v!r}: allowed are a non-empty list of module "
                "names (e.g. [q_proj, v_proj]) or the string 'all-linear'"
            )
        return v


class ModelConfig(Section):
    name: str = "tiny"  # "tiny" (built-in), a Hugging Face hub id, or a local directory
    tiny: TinyModelConfig = TinyModelConfig()  # shape of the built-in model
    device: str = "auto"  # "auto" (CUDA if present, else CPU), "cpu", "cuda", "cuda:1", ...
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"  # auto: bf16 on CUDA
    reference: Literal["auto", "copy", "none"] = "auto"  # frozen copy for KL; auto: if kl>0
    trust_remote_code: bool = False  # passed to from_pretrained
    chat_template: bool = False  # wrap prompts with the tokenizer's chat template
    gradient_checkpointing: bool = False  # recompute activations in backward
    lora: LoraConfig = LoraConfig()  # train LoRA adapters instead of the full weights


# --------------------------------------------------------------------------- task / data
class ArithmeticTaskConfig(Section):
    """Addition with operands and answer written least-significant digit first."""

    levels: list[int] = [1, 2, 3]  # difficulty levels = number of digits per operand
    train_per_level: int = Field(4000, ge=1)  # training prompts drawn per level
    train_counts: dict[int, int] = {}  # per-level override of train_per_level, e.g. {3: 200}
    eval_per_level: int = Field(200, ge=1)  # held-out prompts per level (never trained on)
    pad: bool = True  # zero-pad operands to the level's width (fixed digit positions)

    @field_validator("levels")
    @classmethod
    def _levels(cls, v: list[int]) -> list[int]:
        if not v or any(lv < 1 or lv > 9 for lv in v):
            raise ValueError(f"levels must be a non-empty list of integers in 1..9, got {v}")
        return sorted(set(v))

    @model_validator(mode="after")
    def _counts(self) -> ArithmeticTaskConfig:
        bad = {k: v for k, v in self.train_counts.items() if k not in self.levels or v < 1}
        if bad:
            raise ValueError(
                f"train_counts={self.train_counts}: {bad} must name levels of {self.levels} "
                "with counts >= 1"
            )
        return self

    def train_count(self, level: int) -> int:
        return self.train_counts.get(level, self.train_per_level)


class FieldNames(Section):
    prompt: str = "prompt"  # column holding the prompt text
    answer: str = "answer"  # column holding the reference answer
    difficulty: str = "difficulty"  # optional column: numeric difficulty / level
    category: str = "category"  # optional column: category label
    id: str = "id"  # optional column: stable prompt id


class TaskConfig(Section):
    kind: Literal["arithmetic", "file", "hf"] = "arithmetic"  # synthetic, a data file, datasets
    arithmetic: ArithmeticTaskConfig = ArithmeticTaskConfig()
    path: str | None = None  # kind=file: JSONL or Parquet training prompts
    eval_path: str | None = None  # kind=file: held-out prompts (else split from path)
    dataset: str | None = None  # kind=hf: hub id ("openai/gsm8k") or local dataset folder
    dataset_config: str | None = None  # kind=hf: configuration name ("main")
    split: str = "train"  # kind=hf: training split
    eval_split: str | None = "test"  # kind=hf: held-out split (null: split off eval_fraction)
    max_train: int | None = Field(None, ge=1)  # keep at most this many training rows
    max_eval: int | None = Field(None, ge=1)  # keep at most this many held-out rows
    eval_fraction: float = Field(0.1, gt=0, lt=1)  # no held-out file/split: share split off
    fields: FieldNames = FieldNames()  # column names in the data
    answer_pattern: str | None = None  # regex; group 1 of its last match is the answer
    prompt_template: str = "{prompt}"  # str.format over the row; {prompt} is the prompt field
    seed: int = 1234  # seed of the data generation / split (separate from train.seed)

    @model_validator(mode="after")
    def _source_needed(self) -> TaskConfig:
        if self.kind == "file" and not self.path:
            raise ValueError("task.kind=file needs task.path (a .jsonl or .parquet file)")
        if self.kind == "hf" and not self.dataset:
            raise ValueError("task.kind=hf needs task.dataset (a hub id or a local folder)")
        if self.answer_pattern is not None:
            import re

            try:
                if re.compile(self.answer_pattern).groups < 1:
                    raise ValueError(
                        f"task.answer_pattern={self.answer_pattern!r} needs one capture group"
                    )
            except re.error as e:
                raise ValueError(
                    f"task.answer_pattern={self.answer_pattern!r} is not a regex: {e}"
                ) from None
        if "{prompt}" not in self.prompt_template:
            raise ValueError(
                f"task.prompt_template={self.prompt_template!r} must contain {{prompt}}"
            )
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
    backend: Literal["auto", "eager", "static"] = "auto"  # sampler; auto: static on CUDA
    compile: bool = False  # static on CUDA: torch.compile each layer's pure parts (~10% faster)
    ignore_eos: bool = False  # sample past EOS: full-length completions (benchmarks)


# --------------------------------------------------------------------------- rewards
class RewardSpec(Section):
    name: str  # a registered reward ("exact_match") or "package.module:function"
    weight: float = 1.0  # weight in the combined reward
    args: dict[str, Any] = {}  # keyword arguments bound to the reward function
    alias: str | None = None  # name used in logs (default: name)
    timeout: float | None = Field(None, gt=0)  # seconds per call; slower: samples unscored
    max_failed_steps: int | None = Field(3, ge=1)  # all-unscored calls in a row before stop

    @property
    def label(self) -> str:
        return self.alias or self.name.replace(":", ".")


# --------------------------------------------------------------------------- loss
#: Values each ``loss.preset`` fills in for the keys the recipe leaves unset (explicit keys win).
#: Keys not listed keep the field defaults of ``LossConfig``, which are also what you get with
#: no preset (steerl's historical GRPO: token-mean, symmetric clip 0.2, no KL).
LOSS_PRESETS: dict[str, dict[str, Any]] = {
    # Shao et al. 2024, DeepSeekMath, arXiv:2402.03300: clipped surrogate, 1/G sum_i 1/|o_i|
    # sum_t (seq-mean-token-mean), (r - mean) / std in the group, k3 KL in the loss, beta 0.04.
    "grpo": {
        "clip_low": 0.2,
        "clip_high": 0.2,
        "clip_c": None,
        "ratio_level": "token",
        "surrogate": "clip",
        "aggregation": "seq-mean-token-mean",
        "advantage": "group_mean_std",
        "kl_coef": 0.04,
        "kl_estimator": "k3",
        "kl_in": "loss",
        "mask_truncated": False,
        "epochs": 1,
    },
    # Yu et al. 2025, DAPO, arXiv:2503.14476: clip-higher (0.2, 0.28), token-mean, no KL,
    # overlong filtering (truncated completions masked). Dynamic sampling is
    # curriculum.drop_zero_variance, not a loss key.
    "dapo": {
        "clip_low": 0.2,
        "clip_high": 0.28,
        "clip_c": None,
        "ratio_level": "token",
        "surrogate": "clip",
        "aggregation": "token-mean",
        "advantage": "group_mean_std",
        "kl_coef": 0.0,
        "kl_estimator": "k3",
        "kl_in": "loss",
        "mask_truncated": True,
        "epochs": 1,
    },
    # Liu et al. 2025, "Understanding R1-Zero-Like Training" (Dr. GRPO), arXiv:2503.20783:
    # no std in the advantage, token sums over a constant (G * max_new_tokens), no KL.
    "dr_grpo": {
        "clip_low": 0.2,
        "clip_high": 0.2,
        "clip_c": None,
        "ratio_level": "token",
        "surrogate": "clip",
        "aggregation": "seq-mean-token-sum-norm",
        "advantage": "group_mean",
        "kl_coef": 0.0,
        "kl_estimator": "k3",
        "kl_in": "loss",
        "mask_truncated": False,
        "epochs": 1,
    },
    # Zheng et al. 2025, GSPO, arXiv:2507.18071: sequence ratio exp(mean_t log r), clipped at
    # (3e-4, 4e-4) as in the paper, one term per sequence (seq-mean-token-mean), no KL.
    "gspo": {
        "clip_low": 3e-4,
        "clip_high": 4e-4,
        "clip_c": None,
        "ratio_level": "sequence",
        "surrogate": "clip",
        "aggregation": "seq-mean-token-mean",
        "advantage": "group_mean_std",
        "kl_coef": 0.0,
        "kl_estimator": "k3",
        "kl_in": "loss",
        "mask_truncated": False,
        "epochs": 1,
    },
    # MiniMax 2025, MiniMax-M1 (CISPO), arXiv:2506.13585: -sg(clip(r)) * A * log p, token-mean,
    # no KL. The paper sets no lower bound (clip_low=1: weight >= 0) and tunes only eps_high
    # without publishing it; 0.28 (DAPO's clip-higher) is our choice.
    "cispo": {
        "clip_low": 1.0,
        "clip_high": 0.28,
        "clip_c": None,
        "ratio_level": "token",
        "surrogate": "cispo",
        "aggregation": "token-mean",
        "advantage": "group_mean_std",
        "kl_coef": 0.0,
        "kl_estimator": "k3",
        "kl_in": "loss",
        "mask_truncated": False,
        "epochs": 1,
    },
    # Schulman et al. 2017, PPO, arXiv:1707.06347, without a critic: token-level clip 0.2,
    # token-mean, group-mean baseline scaled by the batch std, dual-clip c=3 (Ye et al. 2020,
    # arXiv:1912.09729), 4 epochs over each rollout batch.
    "ppo": {
        "clip_low": 0.2,
        "clip_high": 0.2,
        "clip_c": 3.0,
        "ratio_level": "token",
        "surrogate": "clip",
        "aggregation": "token-mean",
        "advantage": "batch_std",
        "kl_coef": 0.0,
        "kl_estimator": "k3",
        "kl_in": "loss",
        "mask_truncated": False,
        "epochs": 4,
    },
}

#: The keys a preset sets (every preset sets all of them).
PRESET_KEYS: tuple[str, ...] = tuple(LOSS_PRESETS["grpo"])


class AuxLossSpec(Section):
    """An auxiliary loss term added to the policy loss (``loss.aux``)."""

    name: str  # "sft", "dpo", a registered loss term, or "package.module:Class"
    coef: float = Field(0.1, ge=0)  # the term enters the summed loss as coef * term
    args: dict[str, Any] = {}  # keyword arguments (dpo: variant, beta, label_smoothing)

    @model_validator(mode="after")
    def _known_args(self) -> AuxLossSpec:
        if self.name == "dpo":
            try:
                DPOArgs.model_validate(self.args)
            except ValidationError as e:
                msgs = [
                    f"args.{'.'.join(map(str, err['loc']))}: {err['msg']}".replace("args.: ", "")
                    for err in e.errors(include_url=False)
                ]
                raise ValueError("; ".join(m.removeprefix("Value error, ") for m in msgs)) from None
        elif self.name == "sft" and self.args:
            raise ValueError(f"aux term sft takes no args, got {sorted(self.args)}")
        return self


class DPOArgs(Section):
    """Arguments of the ``dpo`` auxiliary term (see ``steerl.losses.dpo``)."""

    variant: Literal["sigmoid", "ipo", "hinge"] = "sigmoid"  # Rafailov / Azar / SLiC
    beta: float = Field(0.1, gt=0)  # scale of the implicit reward beta * log(pi / ref)
    label_smoothing: float = Field(0.0, ge=0, lt=0.5)  # cDPO: assumed label-flip rate

    @model_validator(mode="after")
    def _smoothing_is_sigmoid_only(self) -> DPOArgs:
        if self.label_smoothing and self.variant != "sigmoid":
            raise ValueError(
                f"label_smoothing={self.label_smoothing} is defined for variant=sigmoid "
                f"(cDPO) only, not variant={self.variant}"
            )
        return self


class LossConfig(Section):
    """The clipped policy-gradient family, configured key by key or through ``preset``.

    A ``preset`` fills the keys in ``PRESET_KEYS`` that the section leaves unset (explicit keys
    win); see ``LOSS_PRESETS`` for the values and papers. Presets apply when the section is
    built, not on later assignment. The saved config.yaml records the preset and only the preset
    keys that differ from it, so ``steerl train RUN_DIR loss.preset=X`` switches presets.
    """

    name: str = "pg"  # policy loss: "pg" (this family; alias "grpo"), registered, or mod:func
    preset: Literal["grpo", "dapo", "dr_grpo", "gspo", "cispo", "ppo"] | None = None  # see above
    clip_low: float = Field(0.2, gt=0, le=1)  # ratio clipped below at 1 - clip_low
    clip_high: float = Field(0.2, gt=0)  # ratio clipped above at 1 + clip_high (DAPO: 0.28)
    clip_c: float | None = Field(None, gt=1)  # dual-clip: for A < 0 the loss is at most -c*A
    ratio_level: Literal["token", "sequence"] = "token"  # sequence: GSPO exp(mean_t log r)
    surrogate: Literal["clip", "cispo"] = "clip"  # min(rA, clip(r)A), or -sg(clip(r)) A logp
    aggregation: Literal[
        "token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"
    ] = "token-mean"  # how token losses become one number (global-batch denominators)
    advantage: Literal["group_mean_std", "group_mean", "batch_std", "rloo"] = (
        "group_mean_std"  # advantage estimator: GRPO, Dr.GRPO, REINFORCE++ baseline, RLOO
    )
    kl_coef: float = Field(0.0, ge=0)  # beta of the KL against the frozen reference
    kl_estimator: Literal["k1", "k2", "k3"] = "k3"  # Schulman's estimators of KL(pi || ref)
    kl_in: Literal["loss", "reward"] = "loss"  # penalty in the loss, or subtracted from reward
    entropy_coef: float = Field(0.0, ge=0)  # entropy bonus: loss -= coef * entropy
    mask_truncated: bool = False  # DAPO overlong filtering: no loss on truncated completions
    epochs: int = Field(1, ge=1)  # optimisation passes (optimizer steps) per rollout batch
    micro_batch_size: int = Field(256, ge=1)  # sequences per forward/backward (whole groups
    #   when loss.aux is set: rounded down to a multiple of group_size, at least one group)
    aux: list[AuxLossSpec] = []  # auxiliary terms, e.g. [{name: sft, coef: 0.1}]

    @model_validator(mode="before")
    @classmethod
    def _fill_from_preset(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        base = preset_values(data.get("preset"), data.get("kl_in"))
        if base is None:  # unknown preset: the field's own check reports it
            return data
        return {**{k: v for k, v in base.items() if k not in data}, **data}

    @model_validator(mode="after")
    def _compatible(self) -> LossConfig:
        if self.ratio_level == "sequence" and self.aggregation != "seq-mean-token-mean":
            raise ValueError(
                f"ratio_level=sequence (GSPO) weighs every sequence once, so it needs "
                f"aggregation=seq-mean-token-mean, got aggregation={self.aggregation}"
            )
        if self.surrogate == "cispo" and self.clip_c is not None:
            raise ValueError(
                f"surrogate=cispo bounds the IS weight itself; dual-clip clip_c={self.clip_c} "
                "applies to surrogate=clip only (set clip_c: null)"
            )
        if self.surrogate == "cispo" and self.ratio_level == "sequence":
            raise ValueError(
                "surrogate=cispo weighs each token by its own clipped ratio; "
                "ratio_level=sequence is GSPO's (use surrogate=clip with it)"
            )
        names = [a.name for a in self.aux]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"aux terms must be unique, {sorted(dup)} repeat")
        if "policy" in names:
            raise ValueError("aux term name 'policy' is reserved for the policy loss")
        return self

    @model_serializer(mode="wrap")
    def _dump(self, handler: Any) -> dict[str, Any]:
        """Leave out the preset keys that equal the preset's (or, without one, the default)."""
        data = handler(self)
        base = preset_values(self.preset, self.kl_in) or {}
        return {k: v for k, v in data.items() if k not in base or base[k] != v}

    @property
    def needs_reference(self) -> bool:
        """True when a frozen reference model is used (KL or a DPO term)."""
        return self.kl_coef > 0 or any(a.name == "dpo" for a in self.aux)


def preset_values(preset: str | None, kl_in: str | None = None) -> dict[str, Any] | None:
    """The values a preset (``None``: the field defaults) gives to ``PRESET_KEYS``.

    With ``kl_in=reward`` the estimator defaults to k1 (the sequence sum of log-ratios).
    Returns ``None`` for an unknown preset name.
    """
    if preset is None:
        fields = LossConfig.model_fields
        base = {k: fields[k].default for k in PRESET_KEYS}
    elif preset in LOSS_PRESETS:
        base = dict(LOSS_PRESETS[preset])
    else:
        return None
    if (kl_in or base["kl_in"]) == "reward":
        base["kl_estimator"] = "k1"
    return base


# --------------------------------------------------------------------------- optimiser / schedule
class OptimConfig(Section):
    """The RL phase's optimizer: a ``torch.optim`` class.

    ``adafactor`` (``torch.optim.Adafactor``) keeps no first moment and factors the second
    into a row and a column vector per matrix, so its state is a few MiB where AdamW's is
    twice the weights: the memory-lean choice. Its ``lr`` is relative: each update is at most
    ``min(lr, 1/sqrt(t)) x max(1e-3, RMS(parameter))``.
    """

    name: Literal["adamw", "adam", "sgd", "adafactor"] = "adamw"  # torch.optim class
    lr: float = Field(1e-4, gt=0)  # peak learning rate of the RL phase
    betas: tuple[float, float] = (0.9, 0.999)  # Adam moments
    weight_decay: float = Field(0.0, ge=0)  # decoupled weight decay
    eps: float = Field(1e-8, gt=0)  # Adam epsilon
    beta2_decay: float = Field(-0.8, lt=0)  # adafactor: second-moment decay 1 - t**beta2_decay
    clip_threshold: float = Field(1.0, gt=0)  # adafactor: cap on the update's RMS (its d)

    @model_validator(mode="after")
    def _keys_of_the_optimizer(self) -> OptimConfig:
        # judged against the defaults (not the keys given) so a saved full config reloads
        fields = type(self).model_fields

        def changed(keys: tuple[str, ...]) -> list[str]:
            return [k for k in keys if getattr(self, k) != fields[k].default]

        adam_only = changed(("betas", "eps"))
        if self.name in ("sgd", "adafactor") and adam_only:
            raise ValueError(
                f"optim.{adam_only[0]}={getattr(self, adam_only[0])!r} is an Adam setting; "
                f"optim.name={self.name} has no Adam moments (remove the key, or use "
                "optim.name=adam|adamw)"
            )
        adafactor_only = changed(("beta2_decay", "clip_threshold"))
        if self.name != "adafactor" and adafactor_only:
            raise ValueError(
                f"optim.{adafactor_only[0]} applies to optim.name=adafactor only "
                f"(optim.name is {self.name})"
            )
        return self


class ParamGroupSpec(Section):
    """An LR scale for the parameters whose names match ``pattern`` (first match wins)."""

    pattern: str  # regex searched in parameter names, e.g. "lm_head" or "layers\.(0|1)\."
    lr_scale: float = Field(1.0, gt=0)  # LR of these parameters = this x the scheduled LR

    @field_validator("pattern")
    @classmethod
    def _regex(cls, v: str) -> str:
        import re

        try:
            re.compile(v)
        except re.error as e:
            raise ValueError(f"pattern {v!r} is not a regex: {e}") from None
        return v


class CoefScheduleConfig(Section):
    """An absolute value over the run (``schedule.coefficients``): warm-up, then a shape."""

    shape: Literal["constant", "linear", "cosine", "wsd", "polynomial"] = "linear"  # see LR
    start: float  # value at the end of the warm-up (the start of the shape)
    end: float | None = None  # value at total_steps; null: stays at start
    warmup_steps: int = Field(0, ge=0)  # linear ramp from warmup_start to start
    warmup_start: float = 0.0  # value the warm-up starts from (absolute)
    decay_fraction: float = Field(0.2, gt=0, le=1)  # wsd: last share of the run spent moving
    decay_shape: Literal["linear", "cosine"] = "linear"  # wsd: shape of that last part
    power: float = Field(1.0, gt=0)  # polynomial: (1 - t) ** power
    total_steps: int | None = Field(None, ge=1)  # length of the schedule; null: train.steps


class KLControllerConfig(Section):
    """Adaptive KL coefficient (Ziegler et al. 2019): steers the measured KL toward target."""

    target: float = Field(gt=0)  # KL the controller aims for (train/kl)
    horizon: int = Field(ge=1)  # steps: coef *= 1 + clip(kl/target - 1, +-0.2) / horizon
    initial: float | None = Field(None, gt=0)  # starting coefficient; null: loss.kl_coef


class ScheduleConfig(Section):
    name: Literal["constant", "linear", "cosine", "wsd", "polynomial"] = "constant"  # LR shape
    warmup_steps: int = Field(0, ge=0)  # linear warm-up to the peak over these steps
    warmup_start: float = Field(0.0, ge=0)  # warm-up starts from this fraction of the peak
    min_lr_ratio: float = Field(0.0, ge=0)  # floor as a fraction of the peak (<= 1)
    decay_fraction: float = Field(0.2, gt=0, le=1)  # wsd: last share of the run spent decaying
    decay_shape: Literal["linear", "cosine"] = "linear"  # wsd: shape of that decay
    power: float = Field(1.0, gt=0)  # polynomial: LR factor (1 - t) ** power after warm-up
    param_groups: list[ParamGroupSpec] = []  # per-parameter LR scales [{pattern, lr_scale}]
    coefficients: dict[str, CoefScheduleConfig] = {}  # "loss.kl_coef", "rewards.<label>.weight"
    kl_controller: KLControllerConfig | None = None  # adaptive KL coefficient; null: off

    @field_validator("min_lr_ratio", "warmup_start")
    @classmethod
    def _fraction_of_peak(cls, v: float, info: Any) -> float:
        if v > 1:
            raise ValueError(
                f"{info.field_name}={v} is above the peak: it is a fraction of optim.lr, in [0, 1]"
            )
        return v

    @field_validator("coefficients")
    @classmethod
    def _coef_keys(cls, v: dict[str, CoefScheduleConfig]) -> dict[str, CoefScheduleConfig]:
        from steerl.schedules import parse_coef_key

        for key in v:
            parse_coef_key(key)  # raises with the allowed forms
        return v


# --------------------------------------------------------------------------- stability
class AdaptiveClipConfig(Section):
    """``clip: adaptive``: a global-norm threshold learned from recent pre-clip norms."""

    percentile: float = 90.0  # threshold = this percentile (0, 100] of the recent norms
    multiple: float | None = Field(None, gt=0)  # set: threshold = multiple x their median
    window: int = Field(100, ge=1)  # recent finite pre-clip norms kept
    min_history: int = Field(10, ge=1)  # until this many are known: max_grad_norm

    @field_validator("percentile")
    @classmethod
    def _percentile(cls, v: float) -> float:
        if not 0 < v <= 100:
            raise ValueError(f"percentile={v} must be in (0, 100]")
        return v

    @model_validator(mode="after")
    def _history(self) -> AdaptiveClipConfig:
        if self.min_history > self.window:
            raise ValueError(
                f"min_history={self.min_history} is more than window={self.window} can hold"
            )
        return self


class SpikeConfig(Section):
    """A spike detector: robust z-score of a metric against its recent accepted values."""

    metric: str = "train/loss"  # any logged key: train/loss, train/grad_norm, train/kl, ...
    window: int = Field(20, ge=2)  # accepted values the median / MAD are taken over
    threshold: float = Field(6.0, gt=0)  # |robust z| above this is a spike
    min_history: int = Field(5, ge=2)  # no verdict before this many accepted values
    direction: Literal["both", "up", "down"] = "both"  # which side counts (reward: down)
    action: Literal["skip", "lower_lr", "rollback"] = "skip"  # what a spike does

    @model_validator(mode="after")
    def _history(self) -> SpikeConfig:
        if self.min_history > self.window:
            raise ValueError(
                f"min_history={self.min_history} is more than window={self.window} can hold"
            )
        return self


class LowerLRConfig(Section):
    factor: float = Field(0.5, gt=0, le=1)  # LR multiplier while a lower_lr action is active
    steps: int = Field(10, ge=1)  # steps it stays active (from the step that triggered it)


class GuardsConfig(Section):
    """Hard limits on step metrics (null: off)."""

    kl_max: float | None = Field(None, gt=0)  # train/kl above this trips
    entropy_min: float | None = Field(None, ge=0)  # train/entropy below this trips
    clip_fraction_max: float | None = Field(None, gt=0, le=1)  # train/clip_fraction above
    action: Literal["skip", "lower_lr", "rollback", "stop"] = "skip"  # what a trip does


class PlateauConfig(Section):
    """Plateau: the EMA of a metric improves by less than min_slope per step over window."""

    metric: str = "train/reward"  # logged key watched
    mode: Literal["max", "min"] = "max"  # direction of improvement
    ema: float = Field(0.9, ge=0, lt=1)  # EMA decay (ema = d * ema + (1 - d) * value)
    window: int = Field(20, ge=1)  # steps the EMA slope is measured over
    min_slope: float = Field(1e-3, ge=0)  # improvement per step below this is a plateau
    action: Literal["none", "reduce_lr", "stop"] = "reduce_lr"  # what a plateau does
    factor: float = Field(0.5, gt=0, lt=1)  # reduce_lr: LR scale multiplied by this
    min_scale: float = Field(0.01, gt=0, le=1)  # reduce_lr: never below this scale
    cooldown: int = Field(10, ge=0)  # steps after an event with no new event


class EarlyStopConfig(Section):
    """Stop when the eval metric has not improved for ``patience`` evaluations."""

    metric: str = "eval/accuracy/mean"  # eval key (<prefix>/mean: mean of <prefix>/*)
    mode: Literal["max", "min"] = "max"  # direction of improvement
    patience: int = Field(3, ge=1)  # evaluations without improvement before stopping
    min_delta: float = Field(0.0, ge=0)  # smaller changes do not count as improvement


class StabilityConfig(Section):
    clip: Literal["norm", "value", "adaptive", "agc", "none"] = "norm"  # gradient clipping
    max_grad_norm: float | None = Field(1.0, gt=0)  # norm: global-norm threshold; null: off
    clip_value: float = Field(1.0, gt=0)  # value: clamp each gradient element to +-this
    adaptive: AdaptiveClipConfig = AdaptiveClipConfig()  # adaptive: learned threshold
    agc_clip: float = Field(0.01, gt=0)  # agc: max unit-wise ||g|| / ||w||
    agc_eps: float = Field(1e-3, gt=0)  # agc: floor of ||w|| (zero-initialised units)
    skip_nonfinite: bool = True  # skip a step whose loss or gradient is NaN/inf
    max_consecutive_skips: int = Field(5, ge=1)  # skipped steps in a row, then stop
    spikes: list[SpikeConfig] = []  # spike detectors, e.g. [{metric: train/loss}]
    lower_lr: LowerLRConfig = LowerLRConfig()  # what action=lower_lr does
    max_rollbacks: int = Field(3, ge=0)  # more rollbacks than this stop the run
    guards: GuardsConfig = GuardsConfig()  # kl_max / entropy_min / clip_fraction_max
    plateau: PlateauConfig | None = None  # plateau monitor; null: off
    early_stop: EarlyStopConfig | None = None  # early stopping on an eval metric; null: off


def _check_schedule_and_stability(cfg: Config) -> None:
    """Cross-checks of ``schedule`` and ``stability`` against the run (``Config._cross``)."""
    steps = cfg.train.steps
    s = cfg.schedule
    if s.warmup_steps > steps > 0:
        raise ValueError(
            f"schedule.warmup_steps={s.warmup_steps} is longer than train.steps={steps}"
        )
    from steerl.schedules import parse_coef_key, wsd_decay_steps

    if s.name == "wsd" and steps > 0:
        decay = wsd_decay_steps(steps, s.decay_fraction)
        if s.warmup_steps + decay > steps:
            raise ValueError(
                f"schedule.warmup_steps={s.warmup_steps} plus the wsd decay "
                f"(schedule.decay_fraction={s.decay_fraction} of train.steps={steps}: {decay} "
                "steps) is longer than the run"
            )
    for key, c in s.coefficients.items():
        total = c.total_steps or steps
        if c.warmup_steps > total > 0:
            raise ValueError(
                f"schedule.coefficients[{key!r}].warmup_steps={c.warmup_steps} is longer than "
                f"the schedule ({total} steps)"
            )
        target, name = parse_coef_key(key)
        if target == "loss":
            value = getattr(cfg.loss, name, None)
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                numeric = [
                    k
                    for k in type(cfg.loss).model_fields
                    if isinstance(getattr(cfg.loss, k), float)
                ]
                raise ValueError(
                    f"schedule.coefficients key {key!r}: the loss section has no numeric key "
                    f"{name!r} (numeric loss keys: {', '.join(numeric)})"
                )
            vals = [c.start, c.warmup_start] + ([c.end] if c.end is not None else [])
            if min(vals) < 0:
                raise ValueError(
                    f"schedule.coefficients[{key!r}]: a loss coefficient cannot go below 0 "
                    f"(start={c.start}, end={c.end}, warmup_start={c.warmup_start})"
                )
            if name == "kl_coef" and cfg.loss.kl_coef <= 0:
                raise ValueError(
                    f"schedule.coefficients[{key!r}] needs loss.kl_coef > 0 (the reference "
                    "model is only loaded with a KL term)"
                )
        else:
            labels = [r.label for r in cfg.rewards]
            if name not in labels:
                raise ValueError(
                    f"schedule.coefficients key {key!r}: no reward labelled {name!r} "
                    f"(rewards: {', '.join(labels)})"
                )
    kc = s.kl_controller
    if kc is not None:
        if "loss.kl_coef" in s.coefficients:
            raise ValueError(
                "schedule.kl_controller and schedule.coefficients['loss.kl_coef'] both set the "
                "KL coefficient; keep one"
            )
        if cfg.loss.kl_coef <= 0:
            raise ValueError(
                f"schedule.kl_controller needs loss.kl_coef > 0, got {cfg.loss.kl_coef} (the "
                "reference model is only loaded with a KL term; kl_controller.initial may "
                "still set the starting value)"
            )
    st = cfg.stability
    no_ckpt = cfg.train.save_every == 0
    for i, sp in enumerate(st.spikes):
        if sp.window > steps > 0:
            raise ValueError(
                f"stability.spikes.{i}.window={sp.window} is longer than train.steps={steps}"
            )
        if sp.action == "rollback" and no_ckpt:
            raise ValueError(
                f"stability.spikes.{i}.action=rollback needs checkpoints to roll back to; "
                "set train.save_every"
            )
    g = st.guards
    any_guard = any(x is not None for x in (g.kl_max, g.entropy_min, g.clip_fraction_max))
    if any_guard and g.action == "rollback" and no_ckpt:
        raise ValueError(
            "stability.guards.action=rollback needs checkpoints to roll back to; "
            "set train.save_every"
        )
    if st.plateau is not None and st.plateau.window > steps > 0:
        raise ValueError(
            f"stability.plateau.window={st.plateau.window} is longer than train.steps={steps}"
        )


# --------------------------------------------------------------------------- curriculum
#: Built-in ``curriculum.name`` values (``steerl list curricula``); ``package.module:Class``
#: names a user's curriculum.
CURRICULUM_NAMES = (
    "uniform",
    "pacing",
    "competence",
    "adarft",
    "learnability",
    "bandit",
    "prioritized",
)


class CurriculumStatsConfig(Section):
    """The per-prompt statistics store every adaptive selector reads."""

    ema: float = Field(0.3, gt=0, le=1)  # weight of the newest batch in pass-rate EMAs
    prior: tuple[float, float] = (1.0, 1.0)  # Beta prior (alpha0, beta0) of a pass rate
    prior_from: Literal["level", "fixed"] = "level"  # centre the prior on the level's pass rate
    discount: float = Field(1.0, gt=0, le=1)  # Beta forgetting per visit (1: none)

    @field_validator("prior")
    @classmethod
    def _positive_prior(cls, v: tuple[float, float]) -> tuple[float, float]:
        if min(v) <= 0:
            raise ValueError(f"prior pseudo-counts (alpha0, beta0) must be > 0, got {list(v)}")
        return v


class PacingConfig(Section):
    """curriculum.name=pacing: an open share of the difficulty-sorted pool that grows."""

    fn: Literal["linear", "root", "step", "exponential"] = "linear"  # Hacohen & Weinshall 2019
    start_fraction: float = Field(0.2, gt=0, le=1)  # share of the pool open at step 0
    pace_steps: int | None = Field(None, ge=1)  # steps until all is open; null: train.steps / 2
    stages: int = Field(4, ge=1)  # fn=step: equal increments until pace_steps
    sampling: Literal["uniform", "newest"] = "uniform"  # within the open range
    newest_weight: float = Field(3.0, ge=1)  # sampling=newest: hardest open vs easiest weight


class CompetenceConfig(Section):
    """curriculum.name=competence: prompts whose estimated pass rate lies in a band."""

    band: tuple[float, float] = (0.2, 0.8)  # target pass-rate band [low, high]
    outside_weight: float = Field(0.05, ge=0)  # weight of prompts outside the band (vs 1)
    estimate: Literal["posterior", "ema"] = "posterior"  # Beta posterior mean or the EMA

    @field_validator("band")
    @classmethod
    def _band(cls, v: tuple[float, float]) -> tuple[float, float]:
        lo, hi = v
        if not (0 <= lo <= 1 and 0 <= hi <= 1):
            raise ValueError(f"band {list(v)} must lie within [0, 1] (pass rates)")
        if lo > hi:
            raise ValueError(f"band {list(v)}: low {lo} is above high {hi}")
        return v


class AdaRFTConfig(Section):
    """curriculum.name=adarft: T' = clip(T + eta * tanh(alpha * (mean reward - beta)))."""

    initial: float = Field(0.0, ge=0, le=1)  # starting target difficulty (normalised 0..1)
    eta: float = Field(0.5, gt=0)  # step size of the target
    alpha: float = Field(2.0, gt=0)  # sensitivity to the reward gap
    beta: float = Field(0.5, ge=0, le=1)  # the batch mean reward that keeps the target still
    min: float = Field(0.0, ge=0, le=1)  # lowest target
    max: float = Field(1.0, ge=0, le=1)  # highest target
    neighbourhood: float = Field(0.0, ge=0, le=1)  # draw from this share of the pool nearest T

    @model_validator(mode="after")
    def _range(self) -> AdaRFTConfig:
        if self.min > self.max:
            raise ValueError(f"adarft min={self.min} is above max={self.max}")
        return self


class LearnabilityConfig(Section):
    """curriculum.name=learnability: weight p(1 - p) of the posterior pass rate p."""

    floor: float = Field(0.02, ge=0, le=0.25)  # least weight, so every prompt can be tried


class BanditConfig(Section):
    """curriculum.name=bandit: arms (levels or categories) chosen by their learning signal."""

    arms: Literal["level", "category"] = "level"  # what an arm is; uniform within an arm
    signal: Literal["progress", "advantage"] = "progress"  # |fast - slow EMA| or mean |A|
    algorithm: Literal["softmax", "exp3"] = "softmax"  # how signals become arm probabilities
    temperature: float = Field(0.2, gt=0)  # softmax over signals scaled to max 1
    epsilon: float = Field(0.1, ge=0, le=1)  # uniform share mixed into the arm probabilities
    fast: float = Field(0.5, gt=0, le=1)  # weight of the newest batch in the fast EMA
    slow: float = Field(0.1, gt=0, le=1)  # ... in the slow EMA (and the |A| recency weight)
    exp3_eta: float = Field(1.0, gt=0)  # exp3: step size on importance-weighted signals
    exp3_decay: float = Field(0.1, ge=0, lt=1)  # exp3: forgetting of log-weights per step

    @model_validator(mode="after")
    def _fast_above_slow(self) -> BanditConfig:
        if self.signal == "progress" and self.fast <= self.slow:
            raise ValueError(
                f"bandit fast={self.fast} must be above slow={self.slow} (learning progress "
                "is the gap between a fast and a slow EMA of the pass rate)"
            )
        return self


class PrioritizedConfig(Section):
    """curriculum.name=prioritized: prioritized level replay (Jiang et al. 2021)."""

    score: Literal["advantage", "fail_rate"] = "advantage"  # mean |A| or 1 - pass rate
    temperature: float = Field(1.0, gt=0)  # h = (1 / rank)^(1 / T); PLR used 0.1 (one draw)
    staleness: float = Field(0.1, ge=0, le=1)  # rho: share of the staleness distribution
    replay_prob: float = Field(0.5, ge=0, le=1)  # share of each batch replayed from seen ones


class CurriculumConfig(Section):
    name: str = "uniform"  # selector: uniform, pacing, competence, adarft, learnability, ...
    levels: list[int] | None = None  # restrict RL prompts to these levels; null: all
    levels_from_difficulty: int = Field(4, ge=0)  # non-integer difficulty: N quantile levels
    difficulty_file: str | None = None  # JSONL of {id, difficulty} (steerl curriculum profile)
    difficulty_fn: str | None = None  # "module:function" mapping a Prompt to a float
    missing_difficulty: Literal["error", "mean"] = "error"  # prompts without one: stop / mean
    drop_zero_variance: bool = True  # DAPO: groups with identical rewards carry no signal
    zero_variance_tol: float = Field(1e-6, ge=0)  # std below this counts as zero
    max_refill_rounds: int = Field(0, ge=0)  # DAPO refill: extra sampling rounds (0: filter)
    stats: CurriculumStatsConfig = CurriculumStatsConfig()  # per-prompt statistics store
    pacing: PacingConfig = PacingConfig()  # name=pacing
    competence: CompetenceConfig = CompetenceConfig()  # name=competence
    adarft: AdaRFTConfig = AdaRFTConfig()  # name=adarft
    learnability: LearnabilityConfig = LearnabilityConfig()  # name=learnability
    bandit: BanditConfig = BanditConfig()  # name=bandit
    prioritized: PrioritizedConfig = PrioritizedConfig()  # name=prioritized

    @field_validator("name")
    @classmethod
    def _known_name(cls, v: str) -> str:
        if v not in CURRICULUM_NAMES and ":" not in v:
            raise ValueError(
                f"allowed values are {', '.join(CURRICULUM_NAMES)}, or 'package.module:Class' "
                "for your own curriculum"
            )
        return v

    @model_validator(mode="after")
    def _one_difficulty_source(self) -> CurriculumConfig:
        if self.difficulty_file and self.difficulty_fn:
            raise ValueError(
                f"curriculum.difficulty_file={self.difficulty_file!r} and "
                f"curriculum.difficulty_fn={self.difficulty_fn!r} both set the difficulty; "
                "keep one"
            )
        if self.difficulty_fn is not None and ":" not in self.difficulty_fn:
            raise ValueError(
                f"curriculum.difficulty_fn={self.difficulty_fn!r} must look like "
                "'package.module:function'"
            )
        if self.max_refill_rounds and not self.drop_zero_variance:
            raise ValueError(
                f"curriculum.max_refill_rounds={self.max_refill_rounds} refills groups dropped by "
                "curriculum.drop_zero_variance, which is false"
            )
        return self


# --------------------------------------------------------------------------- objectives
#: ``objectives.balancer`` values: loss-level balancers, then gradient-level aggregators.
LOSS_BALANCERS = ("static", "scheduled", "uncertainty", "dwa", "gradnorm", "famo")
AGGREGATOR_BALANCERS = ("pcgrad", "mgda", "mgda_ub", "upgrad", "cagrad", "nash_mtl", "imtl_g")


class UncertaintyConfig(Section):
    """balancer=uncertainty (Kendall et al. 2018): learnable log-variances s_i."""

    lr: float = Field(0.01, gt=0)  # Adam step size of s (the balancer's own optimizer)
    max_log_var: float = Field(5.0, gt=0)  # s kept in [-this, this]: weights in exp(+-this)


class DWAConfig(Section):
    """balancer=dwa (Liu et al. 2019): softmax of loss ratios of the last two steps."""

    temperature: float = Field(2.0, gt=0)  # T; larger is closer to equal weights (paper: 2)


class GradNormConfig(Section):
    """balancer=gradnorm (Chen et al. 2018) on objectives.aggregate_params."""

    alpha: float = Field(1.5, ge=0)  # restoring force toward equal training rates (paper: 1.5)
    lr: float = Field(0.025, gt=0)  # Adam step size of the weights


class FAMOConfig(Section):
    """balancer=famo (Liu et al. 2023): logits updated from the change in log-losses."""

    lr: float = Field(0.025, gt=0)  # Adam step size of the logits (paper: 0.025)
    weight_decay: float = Field(1e-3, ge=0)  # L2 on the logits (paper's gamma: 1e-3)


class PCGradConfig(Section):
    """balancer=pcgrad (Yu et al. 2020)."""

    order: Literal["expected", "random"] = "expected"  # all orders averaged, or one shuffle
    seed: int = 0  # order=random: seed of the shuffles (saved in checkpoints)


class MGDAConfig(Section):
    """balancer=mgda / mgda_ub (Désidéri 2012; Sener & Koltun 2018)."""

    normalize: Literal["none", "l2"] = "none"  # l2: on unit gradients (direction scale-free)


class CAGradConfig(Section):
    """balancer=cagrad (Liu et al. 2021)."""

    c: float = Field(0.4, ge=0)  # radius of the ball around the mean gradient, x ||g0||


class NashMTLConfig(Section):
    """balancer=nash_mtl (Navon et al. 2022)."""

    iterations: int = Field(50, ge=1)  # at most this many damped Newton steps (K x K problem)


class ObjectivesConfig(Section):
    """How rewards become one signal and how loss terms become one gradient.

    See ``steerl.objectives`` (scalarize, balancers, aggregators) for formulas and papers.
    Term names are ``policy`` and the ``loss.aux`` names; ``validate_terms`` checks them.
    """

    combine: Literal["weighted_sum", "gdpo", "tchebycheff", "smooth_tchebycheff"] = (
        "weighted_sum"  # rewards -> one reward (or gdpo: advantages); see scalarize.py
    )
    preference: list[float] | None = None  # lambda per reward (>= 0); replaces reward weights
    ideal: list[float] | None = None  # tchebycheff z* per reward; null: batch column maxima
    mu: float = Field(0.1, gt=0)  # smooth_tchebycheff temperature (Lin et al. 2024)
    balancer: Literal[
        "static", "scheduled", "uncertainty", "dwa", "gradnorm", "famo",
        "pcgrad", "mgda", "mgda_ub", "upgrad", "cagrad", "nash_mtl", "imtl_g",
    ] = "static"  # how loss terms become one gradient  # fmt: skip
    weights: dict[str, float] = {}  # base/initial weight per term name (default 1)
    schedules: dict[str, CoefScheduleConfig] = {}  # balancer=scheduled: weight per term
    min_losses: dict[str, float] = {}  # lower bound b_i per term: adaptive ones read L_i - b_i
    loss_floor: float = Field(1e-8, gt=0)  # adaptive balancers read max(L_i - b_i, this)
    aggregate_params: str | None = None  # last_blocks:N | lora | hidden_state | regex:<pat>
    #   null: last_blocks:1 (gradnorm, aggregators), hidden_state (mgda_ub)
    backend: Literal["auto", "builtin", "torchjd"] = "auto"  # torchjd: pip install steerl[mo]
    jacobian: Literal["auto", "autograd"] = "auto"  # auto: one LM-head backward for all terms
    #   per-term gradients of the aggregators and gradnorm: auto factorises them through the
    #   tapped log-probs when exact (objectives/factored.py), else one backward per term;
    #   autograd: always one backward per term through the LM head (the slow reference)
    uncertainty: UncertaintyConfig = UncertaintyConfig()
    dwa: DWAConfig = DWAConfig()
    gradnorm: GradNormConfig = GradNormConfig()
    famo: FAMOConfig = FAMOConfig()
    pcgrad: PCGradConfig = PCGradConfig()
    mgda: MGDAConfig = MGDAConfig()
    cagrad: CAGradConfig = CAGradConfig()
    nash_mtl: NashMTLConfig = NashMTLConfig()

    @field_validator("preference")
    @classmethod
    def _preference(cls, v: list[float] | None) -> list[float] | None:
        if v is None:
            return v
        import math

        if not v or any(not math.isfinite(x) or x < 0 for x in v) or sum(v) <= 0:
            raise ValueError(
                f"preference {v} must be non-negative finite numbers, not all zero (one per reward)"
            )
        return v

    @field_validator("weights", "min_losses")
    @classmethod
    def _finite(cls, v: dict[str, float], info: Any) -> dict[str, float]:
        import math

        for k, x in v.items():
            if not math.isfinite(x) or (info.field_name == "weights" and x < 0):
                raise ValueError(
                    f"{info.field_name}[{k!r}]={x} must be "
                    + ("a finite number >= 0" if info.field_name == "weights" else "finite")
                )
        return v

    @field_validator("aggregate_params")
    @classmethod
    def _spec(cls, v: str | None) -> str | None:
        if v is not None:
            from steerl.objectives.restrict import parse_spec

            parse_spec(v)
        return v

    @model_validator(mode="after")
    def _compatible(self) -> ObjectivesConfig:
        b = self.balancer
        if self.ideal is not None and self.combine not in ("tchebycheff", "smooth_tchebycheff"):
            raise ValueError(
                f"ideal is the Tchebycheff ideal point; combine={self.combine} does not use it "
                "(set combine=tchebycheff or smooth_tchebycheff, or ideal: null)"
            )
        if self.schedules and b != "scheduled":
            raise ValueError(
                f"schedules ({', '.join(self.schedules)}) are read by balancer=scheduled only, "
                f"not balancer={b}"
            )
        if b == "scheduled" and not self.schedules:
            raise ValueError("balancer=scheduled needs schedules: {<term>: {start, end, ...}}")
        if self.jacobian != "auto" and b not in ("gradnorm", *AGGREGATOR_BALANCERS):
            raise ValueError(
                f"jacobian={self.jacobian!r} is read by gradnorm and the gradient aggregators "
                f"({', '.join(AGGREGATOR_BALANCERS)}), not balancer={b}"
            )
        spec = self.aggregate_params
        if spec is not None:
            if b not in ("gradnorm", *AGGREGATOR_BALANCERS):
                raise ValueError(
                    f"aggregate_params={spec!r} is read by gradnorm and the gradient "
                    f"aggregators ({', '.join(AGGREGATOR_BALANCERS)}), not balancer={b}"
                )
            if b == "mgda_ub" and spec != "hidden_state":
                raise ValueError(
                    f"balancer=mgda_ub works on the final hidden state; aggregate_params="
                    f"{spec!r} contradicts it (use balancer=mgda for parameters)"
                )
            if b == "gradnorm" and spec == "hidden_state":
                raise ValueError(
                    "balancer=gradnorm needs parameters (aggregate_params=last_blocks:N, lora "
                    "or regex:<pattern>), not hidden_state"
                )
        return self


def _check_objectives(cfg: Config) -> None:
    """Cross-checks of ``objectives`` against the rewards and the loss (``Config._cross``)."""
    o = cfg.objectives
    if o.aggregate_params == "lora" and not cfg.model.lora.enabled:
        raise ValueError(
            "objectives.aggregate_params='lora' needs model.lora.enabled=true (there are no "
            "adapter parameters to aggregate on); enable LoRA or use last_blocks:N, "
            "hidden_state or regex:<pattern>"
        )
    labels = [r.label for r in cfg.rewards]
    for key in ("preference", "ideal"):
        v = getattr(o, key)
        if v is not None and len(v) != len(labels):
            raise ValueError(
                f"objectives.{key} has {len(v)} entries for {len(labels)} rewards "
                f"({', '.join(labels)}); give one per reward, in that order"
            )
    if o.preference is not None:
        scheduled = [k for k in cfg.schedule.coefficients if k.startswith("rewards.")]
        if scheduled:
            raise ValueError(
                f"objectives.preference replaces the reward weights, which "
                f"schedule.coefficients also sets ({', '.join(scheduled)}); keep one"
            )
    elif o.combine in ("tchebycheff", "smooth_tchebycheff"):
        neg = [f"{r.label}={r.weight}" for r in cfg.rewards if r.weight < 0]
        if neg:
            raise ValueError(
                f"objectives.combine={o.combine} uses the reward weights as its preference "
                f"vector, which must be >= 0 (got {', '.join(neg)}); set objectives.preference"
            )
    if o.combine == "gdpo" and cfg.loss.kl_in == "reward" and cfg.loss.kl_coef > 0:
        raise ValueError(
            "objectives.combine=gdpo normalises each reward in its group and returns "
            "advantages, so loss.kl_in=reward has no reward to subtract the KL from; "
            "use loss.kl_in=loss"
        )


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
    distributed: Literal["auto", "off"] = "auto"  # auto: data-parallel when run by torchrun


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
