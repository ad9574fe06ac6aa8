"""Config section ``rewards``: one ``RewardSpec`` per named, weighted reward."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from steerl.config_base import Section


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
