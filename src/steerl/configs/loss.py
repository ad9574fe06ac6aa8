"""Config section ``loss``: the policy loss, its presets and auxiliary terms."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, ValidationError, model_serializer, model_validator

from steerl.config_base import Section

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
