"""Convergence monitors: plateau detection on a training metric, early stopping on an eval one.

``PlateauDetector``: an EMA of the metric; once ``window + 1`` EMA values are known, the
improvement per step ``(ema_now - ema_window_ago) / window`` (sign-flipped for ``mode=min``)
below ``min_slope`` is a plateau event. After an event the slope history restarts and no new
event comes for ``cooldown`` steps. With ``action=reduce_lr`` each event multiplies ``scale``
by ``factor`` (never below ``min_scale``); with ``action=stop`` the event asks to stop.

``EarlyStopping``: stop when the eval metric has not improved by more than ``min_delta`` over
the best so far for ``patience`` evaluations in a row.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping
from typing import Any

PLATEAU_ACTIONS = ("none", "reduce_lr", "stop")


class PlateauDetector:
    """``observe(value, step) -> bool``: True on a plateau event."""

    def __init__(
        self,
        metric: str = "train/reward",
        mode: str = "max",
        ema: float = 0.9,
        window: int = 20,
        min_slope: float = 1e-3,
        action: str = "reduce_lr",
        factor: float = 0.5,
        min_scale: float = 0.01,
        cooldown: int = 10,
    ):
        if mode not in ("max", "min"):
            raise ValueError(f"plateau mode={mode!r}; allowed: max, min")
        if action not in PLATEAU_ACTIONS:
            raise ValueError(f"plateau action={action!r}; allowed: {', '.join(PLATEAU_ACTIONS)}")
        if not 0 <= ema < 1:
            raise ValueError(f"plateau ema={ema} must be in [0, 1)")
        if window < 1:
            raise ValueError(f"plateau window={window} must be >= 1")
        self.metric, self.mode, self.beta, self.window = metric, mode, ema, window
        self.min_slope, self.action = min_slope, action
        self.factor, self.min_scale, self.cooldown = factor, min_scale, cooldown
        self.ema: float | None = None
        self.emas: deque[float] = deque(maxlen=window + 1)
        self.scale = 1.0
        self.events = 0
        self.last_event_step: int | None = None
        self.last_slope: float | None = None

    def observe(self, value: float, step: int) -> bool:
        value = float(value)
        if not math.isfinite(value):
            return False
        self.ema = value if self.ema is None else self.beta * self.ema + (1 - self.beta) * value
        self.emas.append(self.ema)
        if len(self.emas) <= self.window:
            return False
        slope = (self.emas[-1] - self.emas[0]) / self.window
        self.last_slope = slope
        improvement = slope if self.mode == "max" else -slope
        cooling = self.last_event_step is not None and step < self.last_event_step + self.cooldown
        if improvement >= self.min_slope or cooling:
            return False
        self.events += 1
        self.last_event_step = step
        self.emas.clear()
        self.emas.append(self.ema)
        if self.action == "reduce_lr":
            self.scale = max(self.min_scale, self.scale * self.factor)
        return True

    def state_dict(self) -> dict[str, Any]:
        return {
            "ema": self.ema,
            "emas": list(self.emas),
            "scale": self.scale,
            "events": self.events,
            "last_event_step": self.last_event_step,
            "last_slope": self.last_slope,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.ema = state["ema"]
        self.emas.clear()
        self.emas.extend(state["emas"])
        self.scale = float(state["scale"])
        self.events = int(state["events"])
        self.last_event_step = state["last_event_step"]
        self.last_slope = state.get("last_slope")


class EarlyStopping:
    """``observe(value, step) -> bool``: True once ``patience`` evals in a row did not improve."""

    def __init__(self, mode: str = "max", patience: int = 3, min_delta: float = 0.0):
        if mode not in ("max", "min"):
            raise ValueError(f"early_stop mode={mode!r}; allowed: max, min")
        if patience < 1:
            raise ValueError(f"early_stop patience={patience} must be >= 1")
        self.mode, self.patience, self.min_delta = mode, patience, min_delta
        self.best: float | None = None
        self.best_step: int | None = None
        self.bad_evals = 0
        self.stopped_at: int | None = None

    def improved(self, value: float) -> bool:
        if not math.isfinite(value):
            return False
        if self.best is None:
            return True
        if self.mode == "max":
            return value > self.best + self.min_delta
        return value < self.best - self.min_delta

    def observe(self, value: float, step: int) -> bool:
        value = float(value)
        if self.improved(value):
            self.best, self.best_step, self.bad_evals = value, step, 0
        else:
            self.bad_evals += 1
        if self.bad_evals >= self.patience:
            if self.stopped_at is None:
                self.stopped_at = step
            return True
        return False

    def state_dict(self) -> dict[str, Any]:
        return {
            "best": self.best,
            "best_step": self.best_step,
            "bad_evals": self.bad_evals,
            "stopped_at": self.stopped_at,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.best = state["best"]
        self.best_step = state["best_step"]
        self.bad_evals = int(state["bad_evals"])
        self.stopped_at = state["stopped_at"]
