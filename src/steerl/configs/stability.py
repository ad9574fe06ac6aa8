"""Config section ``stability`` (clipping, guards, spikes, monitors) and its run cross-checks."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import Field, field_validator, model_validator

from steerl.config_base import Section

if TYPE_CHECKING:
    from steerl.config import Config


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
