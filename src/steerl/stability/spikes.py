"""Spike detection on a logged metric with a robust z-score.

``z = (x - median) / (1.4826 * MAD)`` over the last ``window`` *accepted* values (the MAD
scaled to a standard deviation for normal data). A value is a spike when ``|z| > threshold``
(``direction="up"``: ``z > threshold``; ``"down"``: ``z < -threshold``). Spikes are not added to
the history, so one outlier does not widen the band that judges the next values; nothing is
flagged before ``min_history`` values were accepted. Non-finite values are neither flagged nor
recorded (the non-finite guard owns those).

The scale has a floor of ``1e-3 * |median|`` (and 1e-12) so a perfectly flat history does not
turn every tiny change into an infinite z-score.

A sustained level shift is flagged on every step (the new level never enters the history);
the manager bounds that: consecutive skips stop the run, rollbacks are capped.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from collections.abc import Mapping
from typing import Any

MAD_TO_STD = 1.4826
REL_SCALE_FLOOR = 1e-3
ABS_SCALE_FLOOR = 1e-12


class SpikeDetector:
    """``observe(value) -> bool``: True when ``value`` is a spike of ``metric``."""

    def __init__(
        self,
        metric: str,
        window: int = 20,
        threshold: float = 6.0,
        min_history: int = 5,
        direction: str = "both",
    ):
        if window < 1 or min_history < 1 or min_history > window:
            raise ValueError(
                f"spike detector {metric}: need 1 <= min_history ({min_history}) <= window "
                f"({window})"
            )
        if not threshold > 0:
            raise ValueError(f"spike detector {metric}: threshold={threshold} must be > 0")
        if direction not in ("both", "up", "down"):
            raise ValueError(f"spike detector {metric}: direction={direction!r}")
        self.metric = metric
        self.window = window
        self.threshold = threshold
        self.min_history = min_history
        self.direction = direction
        self.history: deque[float] = deque(maxlen=window)
        self.spikes = 0  # values flagged so far
        self.last_z: float | None = None  # z-score of the last observed value (None: too early)

    def stats(self) -> tuple[float, float] | None:
        """``(median, scale)`` of the history, or None before ``min_history`` values."""
        if len(self.history) < self.min_history:
            return None
        med = statistics.median(self.history)
        mad = statistics.median(abs(x - med) for x in self.history)
        scale = max(MAD_TO_STD * mad, REL_SCALE_FLOOR * abs(med), ABS_SCALE_FLOOR)
        return med, scale

    def zscore(self, value: float) -> float | None:
        st = self.stats()
        if st is None:
            return None
        med, scale = st
        return (value - med) / scale

    def observe(self, value: float) -> bool:
        value = float(value)
        if not math.isfinite(value):
            self.last_z = None
            return False
        z = self.zscore(value)
        self.last_z = z
        if z is None:
            spike = False
        elif self.direction == "up":
            spike = z > self.threshold
        elif self.direction == "down":
            spike = z < -self.threshold
        else:
            spike = abs(z) > self.threshold
        if spike:
            self.spikes += 1
        else:
            self.history.append(value)
        return spike

    def describe(self, value: float) -> str:
        """A one-line reason for a flagged value (for logs and the decision)."""
        st = self.stats()
        if st is None:
            return f"{self.metric}={value:.6g}"
        z = (value - st[0]) / st[1]
        return (
            f"spike in {self.metric}: {value:.6g} (robust z={z:.1f}, threshold {self.threshold}; "
            f"median {st[0]:.6g} of the last {len(self.history)} values)"
        )

    def state_dict(self) -> dict[str, Any]:
        return {"history": list(self.history), "spikes": self.spikes}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.history.clear()
        self.history.extend(float(x) for x in state["history"])
        self.spikes = int(state.get("spikes", 0))
