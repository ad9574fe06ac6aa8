"""The ``tune:`` section of a recipe: search space, objectives, sampler, pruner, storage, PBT.

A search space maps dotted config keys (the same keys as command-line overrides) to a
distribution::

    tune:
      objectives: [{metric: eval/accuracy/level_2, direction: maximize}]
      space:
        optim.lr: {type: float, low: 1.0e-5, high: 1.0e-3, log: true}
        loss.clip_low: {type: float, low: 0.1, high: 0.3}
        loss.preset: {type: categorical, choices: [grpo, dapo]}
        loss.clip_high: {type: float, low: 0.2, high: 0.4, when: {loss.preset: dapo}}

``when`` makes a parameter conditional: it is only sampled (and only overrides the recipe)
when every named space key took the given value (or one of a list of values). Whether each
key exists in the recipe and accepts the bounds is checked before any trial starts
(``steerl.tuning.space.check_space``).
"""

from __future__ import annotations

import math
import re
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from steerl.config_base import Section

# eval/accuracy/level_<k>, eval/accuracy/mean, eval/reward/<label>, eval/mean_length,
# train/wall_seconds and train/<any metric logged during RL> (its last value)
METRIC_PATTERN = re.compile(
    r"^(eval/accuracy/(level_\w+|mean)|eval/reward/.+|eval/mean_length|train/.+)$"
)


class ParamSpec(Section):
    """One searched hyperparameter."""

    type: Literal["float", "int", "categorical"]  # distribution of the key's values
    low: float | None = None  # lower bound (float, int)
    high: float | None = None  # upper bound, inclusive (float, int)
    log: bool = False  # sample uniformly in log space (bounds must be > 0)
    step: float | None = None  # discretisation step (float, int); not with log
    choices: list[Any] | None = None  # the values of a categorical parameter
    when: dict[str, Any] = {}  # sample only if these space keys took these values (or lists)

    @model_validator(mode="after")
    def _shape(self) -> ParamSpec:
        if self.type == "categorical":
            if not self.choices:
                raise ValueError("type=categorical needs a non-empty choices list")
            if self.low is not None or self.high is not None or self.log or self.step:
                raise ValueError("type=categorical takes choices, not low/high/log/step")
            return self
        if self.choices is not None:
            raise ValueError(f"type={self.type} takes low/high, not choices")
        if self.low is None or self.high is None:
            raise ValueError(f"type={self.type} needs both low and high")
        if not (math.isfinite(self.low) and math.isfinite(self.high)):
            raise ValueError(f"low={self.low} and high={self.high} must be finite")
        if self.low > self.high:
            raise ValueError(f"low={self.low} is above high={self.high}")
        if self.log and self.low <= 0:
            raise ValueError(
                f"log=true needs positive bounds, got low={self.low} (use log=false or low > 0)"
            )
        if self.log and self.step:
            raise ValueError("log=true cannot be combined with step")
        if self.step is not None and self.step <= 0:
            raise ValueError(f"step={self.step} must be > 0")
        if self.type == "int":
            for name in ("low", "high", "step"):
                v = getattr(self, name)
                if v is not None and float(v) != int(v):
                    raise ValueError(f"type=int needs integer {name}, got {v}")
        return self


class TuneObjective(Section):
    metric: str  # eval/accuracy/level_<k>|mean, eval/reward/<label>, eval/mean_length, train/...
    direction: Literal["maximize", "minimize"] = "maximize"  # what "better" means

    @field_validator("metric")
    @classmethod
    def _metric(cls, v: str) -> str:
        if not METRIC_PATTERN.match(v):
            raise ValueError(
                f"metric {v!r} is not one steerl reports; use eval/accuracy/level_<k>, "
                "eval/accuracy/mean, eval/reward/<reward label>, eval/mean_length, "
                "train/wall_seconds or train/<metric logged during RL, e.g. reward>"
            )
        return v


class Bound(Section):
    """A bound on one metric: ``min <= value <= max`` (either side optional)."""

    metric: str  # a metric as in tune.objectives
    min: float | None = None  # the value must be at least this
    max: float | None = None  # the value must be at most this
    after_step: int = Field(0, ge=0)  # thresholds: checked from this RL step on

    @model_validator(mode="after")
    def _some_bound(self) -> Bound:
        TuneObjective(metric=self.metric)  # same metric names
        if self.min is None and self.max is None:
            raise ValueError(f"bound on {self.metric!r} needs min or max")
        return self

    def violation(self, value: float) -> float:
        """How far ``value`` is outside the bound (<= 0: inside), Optuna's constraint form."""
        over = [] if self.max is None else [value - self.max]
        under = [] if self.min is None else [self.min - value]
        return max(over + under)


class PBTConfig(Section):
    population: int = Field(4, ge=2)  # members trained side by side
    rounds: int = Field(4, ge=1)  # train / evaluate / exploit+explore cycles
    steps_per_round: int = Field(10, ge=1)  # RL steps each member trains per round
    quantile: float = Field(0.25, gt=0, le=0.5)  # bottom share replaced by a top member's copy
    perturb: list[float] = [0.8, 1.2]  # factors a copied float/int hyperparameter is moved by
    resample_probability: float = Field(0.25, ge=0, le=1)  # resample instead of perturbing

    @field_validator("perturb")
    @classmethod
    def _perturb(cls, v: list[float]) -> list[float]:
        if not v or any(not (f > 0) for f in v):
            raise ValueError(f"perturb={v} must be a non-empty list of positive factors")
        return v


class TuneConfig(Section):
    method: Literal["optuna", "pbt"] = "optuna"  # Bayesian/evolutionary search or PBT
    study: str | None = None  # study name; null: the recipe name
    storage: str | None = None  # SQLAlchemy URL; null: sqlite:///<out_dir>/study.db
    out_dir: str | None = None  # where trials, results and plots go; null: runs/tune-<recipe>
    trials: int = Field(20, ge=1)  # finished trials of the study, all workers together
    sampler: Literal["tpe", "gp", "random", "nsga2"] = "tpe"  # Optuna sampler
    sampler_options: dict[str, Any] = {}  # keyword arguments, e.g. {n_startup_trials: 5}
    pruner: Literal["auto", "none", "median", "percentile", "successive_halving", "hyperband"] = (
        "auto"  # auto: median for one objective, none for several (Optuna cannot prune those)
    )
    pruner_options: dict[str, Any] = {}  # keyword arguments of the pruner
    seed: int | None = None  # sampler seed (reproducible suggestions)
    objectives: list[TuneObjective] = [TuneObjective(metric="eval/accuracy/mean")]  # 1+ metrics
    space: dict[str, ParamSpec] = {}  # dotted config key -> distribution
    threshold: Bound | None = None  # stop a trial early (pruned) when this bound is violated
    constraints: list[Bound] = []  # final-metric bounds; violating trials are infeasible
    from_warmup: str | None = None  # a finished warm-up run dir every trial starts from
    heartbeat_s: int = Field(30, ge=1)  # a worker silent 2x this long has its trial retried
    retries: int = Field(1, ge=0)  # retries of a trial whose worker died
    pbt: PBTConfig = PBTConfig()  # population-based training (method: pbt)

    @field_validator("objectives")
    @classmethod
    def _objectives(cls, v: list[TuneObjective]) -> list[TuneObjective]:
        if not v:
            raise ValueError("at least one objective is needed")
        names = [o.metric for o in v]
        if len(set(names)) != len(names):
            raise ValueError(f"objective metrics repeat: {names}")
        return v

    @model_validator(mode="after")
    def _pruning(self) -> TuneConfig:
        if len(self.objectives) > 1 and self.pruner not in ("auto", "none"):
            raise ValueError(
                f"pruner={self.pruner!r} with {len(self.objectives)} objectives: Optuna does "
                "not prune multi-objective studies; use pruner: none and tune.threshold "
                "(stop a trial whose metric crosses a bound) instead"
            )
        for key, p in self.space.items():
            for other in p.when:
                if other not in self.space:
                    raise ValueError(
                        f"space.{key}.when names {other!r}, which is not a key of tune.space"
                    )
                if list(self.space).index(other) > list(self.space).index(key):
                    raise ValueError(
                        f"space.{key}.when names {other!r}, which must come before {key!r}"
                    )
        return self

    @property
    def directions(self) -> list[str]:
        return [o.direction for o in self.objectives]

    @property
    def effective_pruner(self) -> str:
        if self.pruner == "auto":
            return "median" if len(self.objectives) == 1 else "none"
        return self.pruner
