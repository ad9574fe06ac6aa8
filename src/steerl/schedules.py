"""Schedules: pure functions of the step (``value(step) -> float``).

Learning-rate schedules return a multiplier of the peak rate: linear warm-up from 0 over
``warmup_steps``, then constant, linear or cosine decay to ``min_ratio`` at ``total_steps``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from steerl.registry import Registry

SCHEDULES: Registry = Registry("schedule")


@dataclass(frozen=True)
class WarmupDecay:
    """Warm-up then a decay shape; ``value(step)`` is the LR multiplier in [min_ratio, 1]."""

    shape: str
    total_steps: int
    warmup_steps: int = 0
    min_ratio: float = 0.0

    def value(self, step: int) -> float:
        if self.warmup_steps and step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if self.shape == "constant":
            return 1.0
        span = max(1, self.total_steps - self.warmup_steps)
        frac = min(1.0, max(0.0, (step - self.warmup_steps) / span))
        if self.shape == "linear":
            f = 1.0 - frac
        elif self.shape == "cosine":
            f = 0.5 * (1.0 + math.cos(math.pi * frac))
        else:
            raise ValueError(f"unknown schedule shape {self.shape!r}")
        return self.min_ratio + (1.0 - self.min_ratio) * f


for _shape, _doc in [
    ("constant", "Linear warm-up, then the peak value"),
    ("linear", "Linear warm-up, then linear decay to the minimum"),
    ("cosine", "Linear warm-up, then cosine decay to the minimum"),
]:
    SCHEDULES.register(_shape, _doc)(WarmupDecay)
