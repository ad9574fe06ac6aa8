"""Config section ``curriculum``: which prompts to train on next."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from steerl.config_base import Section

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
