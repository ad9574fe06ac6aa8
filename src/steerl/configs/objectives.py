"""Config section ``objectives`` (reward combination, loss-term balancing) and its cross-checks."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, field_validator, model_validator

from steerl.config_base import Section
from steerl.configs.optim import CoefScheduleConfig

if TYPE_CHECKING:
    from steerl.config import Config


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
