"""Config sections ``optim`` and ``schedule``: the RL optimizer, LR and coefficient schedules."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from steerl.config_base import Section


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
