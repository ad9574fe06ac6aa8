"""Config section ``warmup``: SFT on (deliberately flawed) demonstrations before RL."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from steerl.config_base import Section


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
