"""Gradient clipping and the non-finite guard."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch


class NonFiniteError(RuntimeError):
    """Too many consecutive non-finite steps."""


def grad_norm_and_clip(
    params: Iterable[torch.nn.Parameter], max_norm: float | None
) -> tuple[float, float]:
    """Global L2 norm of the gradients before and after clipping to ``max_norm``."""
    params = [p for p in params if p.grad is not None]
    if not params:
        return 0.0, 0.0
    pre = torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm else float("inf"))
    pre_f = float(pre)
    post = min(pre_f, max_norm) if max_norm and math.isfinite(pre_f) else pre_f
    return pre_f, post


class NonFiniteGuard:
    """Skips steps whose loss or gradient norm is NaN/inf; stops after N in a row."""

    def __init__(self, enabled: bool, max_consecutive: int):
        self.enabled = enabled
        self.max_consecutive = max_consecutive
        self.skipped = 0
        self.consecutive = 0

    def check(self, loss: float, grad_norm: float) -> bool:
        """True if the step may be applied."""
        ok = math.isfinite(loss) and math.isfinite(grad_norm)
        if ok or not self.enabled:
            self.consecutive = 0
            return True
        self.skipped += 1
        self.consecutive += 1
        if self.consecutive >= self.max_consecutive:
            raise NonFiniteError(
                f"{self.consecutive} consecutive steps had a non-finite loss ({loss}) or "
                f"gradient norm ({grad_norm}); stopping. Lower optim.lr, set "
                "stability.max_grad_norm, or check rewards for inf values."
            )
        return False

    def state_dict(self) -> dict:
        return {"skipped": self.skipped, "consecutive": self.consecutive}

    def load_state_dict(self, state: dict) -> None:
        self.skipped, self.consecutive = int(state["skipped"]), int(state["consecutive"])
