"""Progressive curriculum: pacing functions over a difficulty-sorted pool.

Hacohen & Weinshall 2019 ("On the power of curriculum learning in training deep networks")
sort the data by difficulty and let a *pacing function* g(t) decide which easiest share of
it is open at step t; Platanios et al. 2019 (competence-based curricula) give the root form.
With s = ``start_fraction`` and T = ``pace_steps``, the open share at step t is

    linear       s + (1 - s) * t / T
    root         sqrt(s^2 + (1 - s^2) * t / T)
    step         s + (1 - s) * floor(t / (T / stages)) / stages        (a staircase)
    exponential  s * (1 / s) ** (t / T)                                 (s^(1 - t/T))

clipped to [s, 1] (all open from t = T on). Prompts of equal difficulty are ordered by a
seeded shuffle, so a level opens gradually. Within the open range sampling is uniform, or
(``sampling: newest``) weighted linearly from 1 (easiest open) to ``newest_weight``
(hardest open, the most recently opened).
"""

from __future__ import annotations

import math

import numpy as np

from steerl.config import PacingConfig
from steerl.curriculum.base import CURRICULA, Curriculum

PACING_FUNCTIONS = ("linear", "root", "step", "exponential")


def open_fraction(fn: str, step: int, start_fraction: float, pace_steps: int, stages: int = 4):
    """The share of the difficulty-sorted pool open at ``step`` (see the module docstring)."""
    s, t = float(start_fraction), min(max(step, 0) / max(pace_steps, 1), 1.0)
    if fn == "linear":
        f = s + (1 - s) * t
    elif fn == "root":
        f = math.sqrt(s * s + (1 - s * s) * t)
    elif fn == "step":
        f = s + (1 - s) * math.floor(t * stages + 1e-9) / stages
    elif fn == "exponential":
        f = s ** (1 - t)
    else:
        raise ValueError(f"unknown pacing function {fn!r}; allowed: {', '.join(PACING_FUNCTIONS)}")
    return min(max(f, s), 1.0)


@CURRICULA.register("pacing")
class PacingCurriculum(Curriculum):
    """Progressive: an easiest share of the pool, growing by a pacing function (linear, ...)."""

    name = "pacing"
    needs_difficulty = True

    def setup(self) -> None:
        self.pc: PacingConfig = self.cfg.pacing
        self.pace_steps = self.pc.pace_steps or max(1, self.total_steps // 2)
        rng = np.random.Generator(np.random.PCG64([self.seed, 7]))
        ties = rng.permutation(len(self.prompts))
        shuffled = self.difficulty[ties]
        self.order = ties[np.argsort(shuffled, kind="stable")]  # easiest first
        self._open = 0

    def fraction(self, step: int) -> float:
        pc = self.pc
        return open_fraction(pc.fn, step, pc.start_fraction, self.pace_steps, pc.stages)

    def weights(self, step: int) -> np.ndarray:
        n_open = max(1, math.ceil(self.fraction(step) * len(self.prompts) - 1e-9))
        self._open = n_open
        w = np.zeros(len(self.prompts))
        if self.pc.sampling == "newest" and n_open > 1:
            w[self.order[:n_open]] = 1 + (self.pc.newest_weight - 1) * np.arange(n_open) / (
                n_open - 1
            )
        else:
            w[self.order[:n_open]] = 1.0
        return w

    def extra_metrics(self) -> dict[str, float]:
        if not self._open:
            return {}
        hardest = self.difficulty[self.order[self._open - 1]]
        return {
            "curriculum/open_fraction": self._open / len(self.prompts),
            "curriculum/open_difficulty": float(hardest),
        }
