"""The curriculum protocol, the shared base of the built-in selectors, and uniform sampling.

A curriculum: ``sample(n, step) -> list[Prompt]``, ``update(prompt_ids, rewards, step,
advantages=None)`` with ``rewards`` and ``advantages`` of shape (groups, G), and
``state_dict()`` / ``load_state_dict()``. ``sample`` may be called more than once per step
(DAPO refill rounds); ``update`` then gets every group sampled in the step, in order.

:class:`Curriculum` gives a selector the pool, a seeded generator, the statistics store
(:class:`~steerl.curriculum.stats.PromptStats`), sampling without repeats within a step, a
logged fallback to uniform sampling when the selector leaves no prompt eligible, and the
per-step metrics (``curriculum/level_<k>/share``, ``curriculum/level_<k>/pass_rate``, ...).
A selector implements ``weights(step)`` (or ``select(n, step)``) and, if it keeps state,
``observe`` / ``extra_state`` / ``load_extra_state``; its own state goes in ``setup()``, which
the base ``__init__`` calls last, so a selector does not restate the constructor.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from steerl.checkpoint import rng_from_json, rng_to_json
from steerl.config import CURRICULUM_NAMES, CurriculumConfig
from steerl.curriculum.difficulty import prompt_levels
from steerl.curriculum.stats import PromptStats
from steerl.registry import Registry
from steerl.tasks.base import Prompt

CURRICULA: Registry = Registry("curriculum")

logger = logging.getLogger("steerl.curriculum")

#: Per-level metrics are logged when the pool has at most this many levels.
MAX_LOGGED_LEVELS = 32


class Curriculum:
    """Base of the built-in curricula; see the module docstring."""

    name = "base"
    needs_difficulty = False  # True: built with the pool's difficulties (pacing, adarft)

    def __init__(
        self,
        prompts: Sequence[Prompt],
        seed: int,
        cfg: CurriculumConfig | None = None,
        difficulty: np.ndarray | None = None,
        total_steps: int = 0,
    ):
        if not prompts:
            raise ValueError("the curriculum has no prompts to sample from")
        self.prompts = list(prompts)
        if cfg is None:
            cfg = CurriculumConfig(name=self.name if self.name in CURRICULUM_NAMES else "uniform")
        self.cfg = cfg
        self.seed = seed
        self.total_steps = total_steps
        if difficulty is None and self.needs_difficulty:  # the prompts' own difficulty
            difficulty = np.array([p.difficulty for p in self.prompts], dtype=np.float64)
        self.difficulty = difficulty
        self.gen = np.random.Generator(np.random.PCG64(seed))
        level = prompt_levels(self.prompts, difficulty, self.cfg.levels_from_difficulty)
        self.stats = PromptStats(self.prompts, self.cfg.stats, levels=level)
        levels = sorted(set(self.stats.level.tolist()))
        self.levels = levels if len(levels) <= MAX_LOGGED_LEVELS else []
        self.fallbacks = 0  # steps on which the selector left no prompt eligible
        self._step: int | None = None
        self._taken = np.zeros(len(self.prompts), dtype=bool)
        self._drawn: list[int] = []
        self._fell_back = False
        self.setup()

    # ------------------------------------------------------------------ selector hooks
    def setup(self) -> None:
        """A selector's own state, set up at the end of ``__init__`` (pool, ``cfg``, ``seed``,
        ``difficulty``, ``total_steps`` and ``stats`` are in place); nothing by default."""

    def weights(self, step: int) -> np.ndarray | None:
        """(N,) non-negative sampling weights over the pool; ``None``: uniform."""
        return None

    def select(self, n: int, step: int) -> list[int]:
        """Pool indices of ``n`` prompts (without repeats within the step where possible)."""
        return self.draw(self.weights(step), n)

    def observe(self, idx: list[int], rewards: np.ndarray, level_means: dict[int, float]) -> None:
        """A selector's own update after the statistics store's (``rewards``: (groups, G))."""

    def extra_metrics(self) -> dict[str, float]:
        return {}

    def extra_state(self) -> dict[str, Any]:
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        pass

    # ------------------------------------------------------------------ protocol
    def sample(self, n: int, step: int) -> list[Prompt]:
        self._begin(step)
        idx = self.select(n, step)
        self._taken[idx] = True
        self._drawn.extend(idx)
        return [self.prompts[i] for i in idx]

    def update(
        self,
        prompt_ids: list[str],
        rewards: torch.Tensor,
        step: int,
        advantages: torch.Tensor | None = None,
    ) -> None:
        """Fold a batch into the statistics, then let the selector react."""
        level_means = self.stats.update(prompt_ids, rewards, step, advantages)
        idx = self.stats.indices(prompt_ids)
        r = torch.as_tensor(rewards, dtype=torch.float64).detach().cpu().numpy()
        r = r.reshape(len(prompt_ids), -1)
        keep = [g for g, j in enumerate(idx) if j is not None]
        self.observe([idx[g] for g in keep], r[keep], level_means)  # type: ignore[misc]

    def reshuffle(self, salt: int) -> None:
        """A new data order (after a rollback): reseed from the current state and ``salt``."""
        self.gen = np.random.Generator(np.random.PCG64([int(self.gen.integers(2**63)), int(salt)]))

    def metrics(self) -> dict[str, float]:
        """What the latest step sampled, per-level pass rates and the selector's state."""
        out: dict[str, float] = {}
        drawn = self.stats.level[self._drawn] if self._drawn else np.zeros(0, dtype=np.int64)
        for lv in self.levels:
            if drawn.size:
                out[f"curriculum/level_{lv}/share"] = float((drawn == lv).mean())
            if lv in self.stats.level_ema:
                out[f"curriculum/level_{lv}/pass_rate"] = self.stats.level_ema[lv]
        out["curriculum/seen_prompts"] = float(self.stats.seen.sum())
        out["curriculum/fallback"] = float(self._fell_back)
        out["curriculum/fallbacks"] = float(self.fallbacks)
        out.update(self.extra_metrics())
        return out

    @property
    def last_sampled_ids(self) -> list[str]:
        """Ids of every prompt sampled in the latest step, in order."""
        return [self.prompts[i].id for i in self._drawn]

    def state_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "rng": self.gen.bit_generator.state,
            "stats": self.stats.state_dict(),
            "fallbacks": self.fallbacks,
            "selector": self.extra_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not _same_kind(state, self):
            return
        self.gen.bit_generator.state = state["rng"]
        self.stats.load_state_dict(state.get("stats", {}))
        self.fallbacks = int(state.get("fallbacks", 0))
        self.load_extra_state(state.get("selector", {}))
        self._step = None

    # ------------------------------------------------------------------ helpers
    def _begin(self, step: int) -> None:
        if step != self._step:
            self._step = step
            self._taken[:] = False
            self._drawn = []
            self._fell_back = False

    def draw(self, weights: np.ndarray | None, n: int) -> list[int]:
        """``n`` pool indices drawn with probability proportional to ``weights``.

        Prompts already drawn this step are skipped while enough others have weight; the
        rest is drawn with repeats. No prompt with positive weight at all: this step falls
        back to uniform sampling, counted in ``curriculum/fallbacks`` (a warning the first
        time), never an empty batch.
        """
        size = len(self.prompts)
        if weights is None:
            w = np.ones(size)
        else:
            w = np.asarray(weights, dtype=np.float64)
            w = np.where(np.isfinite(w) & (w > 0), w, 0.0)
            if not w.any():
                self._fallback()
                w = np.ones(size)
        return self._draw_weighted(w, n)

    def _draw_weighted(self, w: np.ndarray, n: int) -> list[int]:
        free = np.where(self._taken, 0.0, w)
        k = int(np.count_nonzero(free))
        if k >= n:
            return self.gen.choice(len(w), size=n, replace=False, p=free / free.sum()).tolist()
        first = np.flatnonzero(free).tolist()
        rest = self.gen.choice(len(w), size=n - k, replace=True, p=w / w.sum()).tolist()
        return first + rest

    def _fallback(self) -> None:
        if not self._fell_back:
            self.fallbacks += 1
            if self.fallbacks == 1:
                logger.warning(
                    "curriculum %s left no prompt eligible at step %s; sampling uniformly for "
                    "that step (counted in curriculum/fallbacks)",
                    self.cfg.name,
                    self._step,
                )
        self._fell_back = True


@CURRICULA.register("uniform")
class UniformCurriculum(Curriculum):
    """Prompts drawn uniformly without replacement, reshuffled every epoch."""

    name = "uniform"

    def setup(self) -> None:
        self.rng = random.Random(self.seed)
        self.order: list[int] = []
        self.cursor = 0

    def select(self, n: int, step: int) -> list[int]:
        out = []
        while len(out) < n:
            if self.cursor >= len(self.order):
                self.order = list(range(len(self.prompts)))
                self.rng.shuffle(self.order)
                self.cursor = 0
            out.append(self.order[self.cursor])
            self.cursor += 1
        return out

    def reshuffle(self, salt: int) -> None:
        self.rng.seed(f"{self.rng.random()}-{salt}")
        self.order, self.cursor = [], 0

    def state_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "rng": rng_to_json(self.rng),
            "order": self.order,
            "cursor": self.cursor,
            "stats": self.stats.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not _same_kind(state, self):
            return
        self.rng.setstate(rng_from_json(state["rng"]))
        self.order = list(state["order"])
        self.cursor = int(state["cursor"])
        self.stats.load_state_dict(state.get("stats", {}))
        self._step = None


def _same_kind(state: dict[str, Any], cur: Curriculum) -> bool:
    """Whether ``state`` was saved by this kind of curriculum (older uniform states have no
    name). Otherwise (``curriculum.name`` changed on resume) the selector starts afresh and
    only the statistics carry over."""
    name = state.get("name", "uniform" if "order" in state else None)
    if name == cur.name:
        return True
    logger.info(
        "the checkpoint's curriculum state is from %r, not %r: the selector starts afresh "
        "(the per-prompt statistics carry over)",
        name,
        cur.name,
    )
    cur.stats.load_state_dict(state.get("stats", {}))
    cur._step = None
    return False
