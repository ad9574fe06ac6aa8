"""Adaptive selectors: which prompts to train on next, from what the policy just did.

Each reads the statistics store (:mod:`steerl.curriculum.stats`) and has its own config
section under ``curriculum``:

competence    weight 1 for prompts whose estimated pass rate lies in ``band`` (default
              0.2-0.8), ``outside_weight`` elsewhere; unseen prompts get the prior (their
              level's pass rate) and are eligible when it lies in the band.
adarft        AdaRFT (Shi et al. 2025): a target difficulty T in [0, 1], moved after every
              step by T' = clip(T + eta * tanh(alpha * (R - beta)), min, max) with R the batch
              mean reward; the prompts whose normalised difficulty is nearest T are sampled.
learnability  weight p (1 - p) with p the posterior mean pass rate, at least ``floor``: the
              variance of a Bernoulli reward, i.e. the expected GRPO signal (online difficulty
              filtering, Bae et al. 2025; learnability, Tzannetos et al. / LILO 2025).
bandit        a non-stationary bandit over arms (levels or categories), uniform within an
              arm. The signal of an arm is its learning progress |fast EMA - slow EMA| of the
              pass rate (Matiisen et al. 2017, TSCL; Kanitscheider et al. 2021) or the
              recency-weighted mean |advantage|, scaled to max 1 over the arms. ``softmax``:
              P(a) ~ exp(signal / temperature); ``exp3`` (Auer et al. 2002, with forgetting
              for non-stationarity): log w_a <- (1 - decay) log w_a + eta * (signal_a / P(a))
              / K for the arms sampled this step, P ~ w. Both mixed with ``epsilon`` uniform.
              Arms never tried get the largest signal.
prioritized   prioritized level replay (Jiang et al. 2021): with probability ``replay_prob``
              a seen prompt, drawn from (1 - rho) P_score + rho P_staleness where P_score is
              rank-based ((1 / rank)^(1 / temperature)) on mean |advantage| or 1 - pass rate
              and P_staleness proportional to steps since the last visit; otherwise an unseen
              prompt, uniformly. Temperature 1 by default: PLR's 0.1 suits one draw at a
              time with repeats, but a batch drawn without repeats then gets rank 1 from the
              score term and the rest from staleness (about uniform).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from steerl.curriculum.base import CURRICULA, Curriculum
from steerl.curriculum.difficulty import normalise


@CURRICULA.register("competence")
class CompetenceCurriculum(Curriculum):
    """Prompts whose estimated pass rate lies in a target band (default 0.2-0.8)."""

    name = "competence"

    def estimate(self) -> np.ndarray:
        c = self.cfg.competence
        if c.estimate == "posterior":
            return self.stats.posterior_mean()
        return self.stats.ema_estimate()

    def weights(self, step: int) -> np.ndarray:
        c = self.cfg.competence
        lo, hi = c.band
        p = self.estimate()
        inside = (p >= lo) & (p <= hi)
        self._in_band = float(inside.mean())
        return np.where(inside, 1.0, c.outside_weight)

    def extra_metrics(self) -> dict[str, float]:
        v = getattr(self, "_in_band", None)
        return {} if v is None else {"curriculum/in_band": v}


@CURRICULA.register("adarft")
class AdaRFTCurriculum(Curriculum):
    """AdaRFT: a target difficulty moved by the batch reward; the nearest prompts are drawn."""

    name = "adarft"
    needs_difficulty = True

    def setup(self) -> None:
        self.norm = normalise(self.difficulty)
        self.target = float(self.cfg.adarft.initial)

    def select(self, n: int, step: int) -> list[int]:
        a = self.cfg.adarft
        size = len(self.prompts)
        dist = np.abs(self.norm - self.target)
        free = np.flatnonzero(~self._taken)
        if len(free) < n:  # the pool is used up within this step: repeats allowed
            free = np.arange(size)
        # nearest first; ties (e.g. a whole level) in random order
        order = free[np.lexsort((self.gen.random(len(free)), dist[free]))]
        width = max(n, math.ceil(a.neighbourhood * size))
        near = order[:width]
        if len(near) >= n and width > n:
            return self.gen.choice(near, size=n, replace=False).tolist()
        if len(near) >= n:
            return near[:n].tolist()
        return near.tolist() + self.gen.choice(order, size=n - len(near)).tolist()

    def observe(self, idx: list[int], rewards: np.ndarray, level_means: dict[int, float]) -> None:
        r = self.stats.batch_mean
        if r is None:
            return
        a = self.cfg.adarft
        t = self.target + a.eta * math.tanh(a.alpha * (r - a.beta))
        self.target = float(min(max(t, a.min), a.max))

    def extra_metrics(self) -> dict[str, float]:
        return {"curriculum/target_difficulty": self.target}

    def extra_state(self) -> dict[str, Any]:
        return {"target": self.target}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.target = float(state.get("target", self.cfg.adarft.initial))


@CURRICULA.register("learnability")
class LearnabilityCurriculum(Curriculum):
    """Weight p(1-p) of the posterior pass rate, with a floor: prompts sometimes solved."""

    name = "learnability"

    def weights(self, step: int) -> np.ndarray:
        p = self.stats.posterior_mean()
        w = np.maximum(p * (1 - p), self.cfg.learnability.floor)
        self._mean_w = float(w.mean())
        return w

    def extra_metrics(self) -> dict[str, float]:
        v = getattr(self, "_mean_w", None)
        return {} if v is None else {"curriculum/mean_learnability": v}


@CURRICULA.register("bandit")
class BanditCurriculum(Curriculum):
    """A non-stationary bandit over levels or categories, driven by learning progress or |A|."""

    name = "bandit"

    def setup(self) -> None:
        b = self.cfg.bandit
        if b.arms == "level":
            keys = [str(lv) for lv in self.stats.level.tolist()]
        else:
            keys = [p.category for p in self.prompts]
        self.arms = sorted(set(keys), key=_arm_sort)
        pos = {a: i for i, a in enumerate(self.arms)}
        self.arm_of = np.array([pos[k] for k in keys], dtype=np.int64)
        self.arm_size = np.bincount(self.arm_of, minlength=len(self.arms)).astype(np.float64)
        k = len(self.arms)
        self.fast = np.full(k, np.nan)
        self.slow = np.full(k, np.nan)
        self.adv = np.full(k, np.nan)
        self.logw = np.zeros(k)
        self.probs = np.full(k, 1.0 / k)

    def signals(self) -> np.ndarray:
        """(K,) each arm's signal; arms without one get the largest (optimism)."""
        if self.cfg.bandit.signal == "progress":
            s = np.abs(self.fast - self.slow)
        else:
            s = self.adv.copy()
        known = ~np.isnan(s)
        top = float(s[known].max()) if known.any() else 1.0
        return np.where(known, s, top)

    def arm_probs(self) -> np.ndarray:
        b = self.cfg.bandit
        k = len(self.arms)
        if b.algorithm == "softmax":
            s = self.signals()
            top = s.max()
            q = s / top if top > 0 else np.zeros(k)
            z = np.exp((q - q.max()) / b.temperature)
            soft = z / z.sum()
        else:
            z = np.exp(self.logw - self.logw.max())
            soft = z / z.sum()
        return (1 - b.epsilon) * soft + b.epsilon / k

    def weights(self, step: int) -> np.ndarray:
        self.probs = self.arm_probs()
        return self.probs[self.arm_of] / self.arm_size[self.arm_of]

    def observe(self, idx: list[int], rewards: np.ndarray, level_means: dict[int, float]) -> None:
        b = self.cfg.bandit
        if not idx:
            return
        arm = self.arm_of[np.asarray(idx)]
        observed = np.zeros(len(self.arms), dtype=bool)
        adv = self.stats.abs_adv[np.asarray(idx)]
        for a in np.unique(arm).tolist():
            r = rewards[arm == a]
            r = np.clip(r[~np.isnan(r)], 0, 1)
            if not r.size:
                continue
            observed[a] = True
            m = float(r.mean())
            if math.isnan(self.fast[a]):
                self.fast[a] = self.slow[a] = m
            else:
                self.fast[a] += b.fast * (m - self.fast[a])
                self.slow[a] += b.slow * (m - self.slow[a])
            v = adv[arm == a]
            v = v[~np.isnan(v)]
            if v.size:
                x, old = float(v.mean()), self.adv[a]
                self.adv[a] = x if math.isnan(old) else old + b.slow * (x - old)
        if b.algorithm == "exp3":
            s = self.signals()
            top = s.max()
            q = s / top if top > 0 else np.zeros_like(s)
            k = len(self.arms)
            gain = np.where(observed, q / np.maximum(self.probs, 1e-12), 0.0)
            self.logw = (1 - b.exp3_decay) * self.logw + b.exp3_eta * gain / k

    def extra_metrics(self) -> dict[str, float]:
        out = {}
        s = self.signals()
        for i, a in enumerate(self.arms):
            out[f"curriculum/arm_{a}/prob"] = float(self.probs[i])
            out[f"curriculum/arm_{a}/signal"] = float(s[i])
        return out

    def extra_state(self) -> dict[str, Any]:
        return {
            "arms": self.arms,
            "fast": _nan_list(self.fast),
            "slow": _nan_list(self.slow),
            "adv": _nan_list(self.adv),
            "logw": self.logw.tolist(),
            "probs": self.probs.tolist(),
        }

    def load_extra_state(self, state: dict[str, Any]) -> None:
        if not state:
            return
        if list(state["arms"]) != self.arms:
            raise ValueError(
                f"the checkpoint's bandit arms {state['arms']} differ from this run's {self.arms}"
            )
        self.fast = _from_nan_list(state["fast"])
        self.slow = _from_nan_list(state["slow"])
        self.adv = _from_nan_list(state["adv"])
        self.logw = np.asarray(state["logw"], dtype=np.float64)
        self.probs = np.asarray(state["probs"], dtype=np.float64)


@CURRICULA.register("prioritized")
class PrioritizedCurriculum(Curriculum):
    """Prioritized level replay: rank-based score with staleness, new prompts mixed in."""

    name = "prioritized"

    def scores(self) -> np.ndarray:
        if self.cfg.prioritized.score == "advantage":
            return np.nan_to_num(self.stats.abs_adv, nan=0.0)
        return 1.0 - self.stats.ema_estimate()

    def replay_weights(self, step: int) -> np.ndarray:
        """(N,) P_replay over the seen prompts (zeros elsewhere)."""
        pc = self.cfg.prioritized
        seen = np.flatnonzero(self.stats.seen)
        w = np.zeros(len(self.prompts))
        if not len(seen):
            return w
        s = self.scores()[seen]
        # rank 1 = highest score; ties broken by pool order (stable)
        rank = np.empty(len(seen))
        rank[np.argsort(-s, kind="stable")] = np.arange(1, len(seen) + 1)
        h = (1.0 / rank) ** (1.0 / pc.temperature)
        p_score = h / h.sum()
        stale = (step - self.stats.last_seen[seen]).astype(np.float64).clip(min=0)
        p_stale = stale / stale.sum() if stale.sum() > 0 else np.full(len(seen), 1 / len(seen))
        w[seen] = (1 - pc.staleness) * p_score + pc.staleness * p_stale
        return w

    def select(self, n: int, step: int) -> list[int]:
        seen = self.stats.seen
        if not seen.any():
            self._replayed = 0.0
            return self.draw(None, n)
        seen_free = int((seen & ~self._taken).sum())
        new_free = int((~seen & ~self._taken).sum())
        n_replay = int(self.gen.binomial(n, self.cfg.prioritized.replay_prob))
        n_new = n - n_replay
        if n_new > new_free:  # too few unseen prompts left: replay instead
            n_replay, n_new = n - new_free, new_free
        elif n_replay > seen_free:  # too few seen prompts left: new ones instead
            shift = min(n_replay - seen_free, new_free - n_new)
            n_replay, n_new = n_replay - shift, n_new + shift
        out: list[int] = []
        if n_replay:
            out += self._draw_weighted(self.replay_weights(step), n_replay)
            self._taken[out] = True
        if n_new:
            out += self._draw_weighted(np.where(seen, 0.0, 1.0), n_new)
        self._replayed = n_replay / max(n, 1)
        return out

    def extra_metrics(self) -> dict[str, float]:
        v = getattr(self, "_replayed", None)
        return {} if v is None else {"curriculum/replay_share": v}


def _arm_sort(a: str) -> tuple[int, float, str]:
    try:
        return (0, float(a), a)
    except ValueError:
        return (1, 0.0, a)


def _nan_list(x: np.ndarray) -> list[float | None]:
    return [None if math.isnan(v) else float(v) for v in x.tolist()]


def _from_nan_list(x: list[float | None]) -> np.ndarray:
    return np.array([np.nan if v is None else v for v in x], dtype=np.float64)
