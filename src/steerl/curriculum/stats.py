"""The per-prompt statistics store that adaptive selectors read.

After every rollout the trainer hands the curriculum each sampled prompt's G rewards (the
first reward's scores: the eval metric, clipped to [0, 1] as a pass indicator) and the
advantages. Per prompt the store keeps

    ema        pass rate as an exponential moving average (weight ``stats.ema`` on the newest)
    alpha,beta Beta posterior of the pass rate: prior (alpha0, beta0) + successes / failures,
               optionally discounted toward the prior on every visit (``stats.discount``)
    count      scored samples seen
    last_seen  RL step of the latest visit (-1: never)
    abs_adv    mean |advantage| of the prompt's samples at its latest visit (as PLR's score)

and per level the EMA of the pass rate of that level's groups. With ``stats.prior_from:
level`` an unseen prompt's estimate is its level's pass rate (empirical Bayes), and the Beta
prior of a seen prompt is centred there with strength alpha0 + beta0; a level nothing is
known about falls back to alpha0 / (alpha0 + beta0).

Arrays are aligned with the curriculum's pool; ``state_dict()`` holds only seen prompts.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import numpy as np
import torch

from steerl.config import CurriculumStatsConfig
from steerl.tasks.base import Prompt

logger = logging.getLogger("steerl.curriculum")


class PromptStats:
    """Pass-rate EMA, Beta posterior, sample count, last visit and mean |A| per prompt."""

    def __init__(
        self,
        prompts: Sequence[Prompt],
        cfg: CurriculumStatsConfig | None = None,
        levels: np.ndarray | None = None,
    ):
        self.cfg = cfg or CurriculumStatsConfig()
        n = len(prompts)
        self.ids = [p.id for p in prompts]
        self.index: dict[str, int] = {}
        for i, pid in enumerate(self.ids):
            self.index.setdefault(pid, i)
        dup = n - len(self.index)
        if dup:
            logger.warning(
                "%d training prompts repeat another prompt's id; the curriculum keeps one set "
                "of statistics per id (the first prompt with it)",
                dup,
            )
        # levels: (N,) from the curriculum (steerl.curriculum.difficulty.prompt_levels)
        if levels is None:
            levels = np.array([p.level for p in prompts], dtype=np.int64)
        self.level = np.asarray(levels, dtype=np.int64)
        a0, b0 = self.cfg.prior
        self.ema = np.full(n, np.nan)
        self.alpha = np.full(n, float(a0))
        self.beta = np.full(n, float(b0))
        self.count = np.zeros(n, dtype=np.int64)
        self.last_seen = np.full(n, -1, dtype=np.int64)
        self.abs_adv = np.full(n, np.nan)
        self.level_ema: dict[int, float] = {}
        self.batch_mean: float | None = None  # mean scored reward of the latest update

    def __len__(self) -> int:
        return len(self.ids)

    # ------------------------------------------------------------------ update
    def indices(self, prompt_ids: Sequence[str]) -> list[int | None]:
        return [self.index.get(pid) for pid in prompt_ids]

    def update(
        self,
        prompt_ids: Sequence[str],
        rewards: torch.Tensor,
        step: int,
        advantages: torch.Tensor | None = None,
    ) -> dict[int, float]:
        """Fold one batch in: ``rewards`` and ``advantages`` are (groups, G), NaN unscored.

        Returns each level's mean pass rate in this batch (levels with a scored sample).
        """
        r = torch.as_tensor(rewards, dtype=torch.float64).detach().cpu().numpy()
        r = r.reshape(len(prompt_ids), -1)
        adv = None
        if advantages is not None:
            adv = torch.as_tensor(advantages, dtype=torch.float64).detach().cpu().numpy()
            adv = np.abs(adv.reshape(r.shape))
        a, (a0, b0), gamma = self.cfg.ema, self.cfg.prior, self.cfg.discount
        per_level: dict[int, list[float]] = {}
        all_scored: list[np.ndarray] = []
        for g, j in enumerate(self.indices(prompt_ids)):
            if j is None:
                continue
            row = r[g]
            ok = ~np.isnan(row)
            if not ok.any():
                continue
            x = np.clip(row[ok], 0.0, 1.0)
            all_scored.append(x)
            s, k = float(x.sum()), int(ok.sum())
            m = s / k
            self.ema[j] = m if math.isnan(self.ema[j]) else (1 - a) * self.ema[j] + a * m
            self.alpha[j] = a0 + gamma * (self.alpha[j] - a0) + s
            self.beta[j] = b0 + gamma * (self.beta[j] - b0) + (k - s)
            self.count[j] += k
            self.last_seen[j] = step
            if adv is not None:
                self.abs_adv[j] = float(adv[g][ok].mean())
            per_level.setdefault(int(self.level[j]), []).extend(x.tolist())
        batch = {lv: float(np.mean(v)) for lv, v in per_level.items()}
        for lv, m in batch.items():
            old = self.level_ema.get(lv)
            self.level_ema[lv] = m if old is None else (1 - a) * old + a * m
        self.batch_mean = float(np.concatenate(all_scored).mean()) if all_scored else None
        return batch

    # ------------------------------------------------------------------ estimates
    @property
    def seen(self) -> np.ndarray:
        return self.count > 0

    def prior_mean(self) -> np.ndarray:
        """(N,) the pass rate assumed before a prompt is seen."""
        a0, b0 = self.cfg.prior
        base = a0 / (a0 + b0)
        if self.cfg.prior_from != "level" or not self.level_ema:
            return np.full(len(self), base)
        lut = {lv: self.level_ema.get(lv, base) for lv in np.unique(self.level).tolist()}
        return np.array([lut[lv] for lv in self.level.tolist()], dtype=np.float64)

    def posterior_mean(self) -> np.ndarray:
        """(N,) the Beta posterior mean of each prompt's pass rate (its prior when unseen)."""
        a0, b0 = self.cfg.prior
        k = a0 + b0
        m = self.prior_mean()
        succ, fail = self.alpha - a0, self.beta - b0
        return (k * m + succ) / (k + succ + fail)

    def ema_estimate(self) -> np.ndarray:
        """(N,) the EMA pass rate, the prior mean where a prompt is unseen."""
        return np.where(np.isnan(self.ema), self.prior_mean(), self.ema)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        """Only prompts seen so far: ``{id: [ema, alpha, beta, count, last_seen, abs_adv]}``."""
        prompts = {}
        for j in np.flatnonzero(self.seen).tolist():
            adv = self.abs_adv[j]
            prompts[self.ids[j]] = [
                float(self.ema[j]),
                float(self.alpha[j]),
                float(self.beta[j]),
                int(self.count[j]),
                int(self.last_seen[j]),
                None if math.isnan(adv) else float(adv),
            ]
        return {
            "prompts": prompts,
            "levels": {str(k): v for k, v in self.level_ema.items()},
            "batch_mean": self.batch_mean,
        }

    def load_state_dict(self, state: dict) -> None:
        a0, b0 = self.cfg.prior
        self.ema[:] = np.nan
        self.alpha[:] = a0
        self.beta[:] = b0
        self.count[:] = 0
        self.last_seen[:] = -1
        self.abs_adv[:] = np.nan
        for pid, (ema, alpha, beta, count, last, adv) in state.get("prompts", {}).items():
            j = self.index.get(pid)
            if j is None:
                continue
            self.ema[j], self.alpha[j], self.beta[j] = ema, alpha, beta
            self.count[j], self.last_seen[j] = count, last
            self.abs_adv[j] = np.nan if adv is None else adv
        self.level_ema = {int(k): float(v) for k, v in state.get("levels", {}).items()}
        self.batch_mean = state.get("batch_mean")
