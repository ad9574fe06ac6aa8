"""Curricula: which prompts to train on next.

``curriculum.name`` picks one (``steerl list curricula``): ``uniform``; the progressive
``pacing``; the adaptive ``competence``, ``adarft``, ``learnability``, ``bandit`` and
``prioritized``; or ``package.module:Class`` (a class taking ``(prompts, seed)`` with the
protocol of :mod:`steerl.curriculum.base`). DAPO dynamic sampling with refill is
:func:`sample_groups`.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

from steerl.curriculum.base import CURRICULA, Curriculum, UniformCurriculum
from steerl.curriculum.difficulty import read_difficulty_file, resolve_difficulty
from steerl.curriculum.filters import (
    CurriculumWarning,
    SampledGroups,
    informative_groups,
    sample_groups,
)
from steerl.curriculum.pacing import PacingCurriculum, open_fraction
from steerl.curriculum.selectors import (
    AdaRFTCurriculum,
    BanditCurriculum,
    CompetenceCurriculum,
    LearnabilityCurriculum,
    PrioritizedCurriculum,
)
from steerl.curriculum.stats import PromptStats
from steerl.tasks.base import Prompt


def build_curriculum(cfg, prompts: Sequence[Prompt], seed: int, total_steps: int = 0):
    """The curriculum ``cfg.name`` over the training prompts (``cfg.levels`` of them)."""
    from steerl.config import ConfigError

    pool = list(prompts)
    if cfg.levels is not None:
        pool = [p for p in prompts if p.level in set(cfg.levels)]
        if not pool:
            raise ConfigError(
                f"key 'curriculum.levels': got {cfg.levels}; no training prompt has those levels"
            )
    cls = CURRICULA.get(cfg.name)
    if not (isinstance(cls, type) and issubclass(cls, Curriculum)):
        return _UserCurriculum(_construct(cls, pool, seed, cfg))
    difficulty = None
    if cls.needs_difficulty or cfg.difficulty_file or cfg.difficulty_fn:
        difficulty = resolve_difficulty(pool, cfg)
    return cls(pool, seed, cfg=cfg, difficulty=difficulty, total_steps=total_steps)


def curriculum_metrics(curriculum: Any) -> dict[str, float]:
    """The curriculum's per-step metrics (``{}`` for one that has none)."""
    fn = getattr(curriculum, "metrics", None)
    return dict(fn()) if callable(fn) else {}


def _construct(cls: Any, pool: list[Prompt], seed: int, cfg) -> Any:
    try:
        params = inspect.signature(cls).parameters
    except (TypeError, ValueError):
        params = {}
    return cls(pool, seed, cfg=cfg) if "cfg" in params else cls(pool, seed)


class _UserCurriculum:
    """A user's curriculum; ``update`` gets ``advantages`` only if it takes them."""

    def __init__(self, inner: Any):
        self.inner = inner
        try:
            params = inspect.signature(inner.update).parameters
        except (TypeError, ValueError, AttributeError):
            params = {}
        self._takes_adv = "advantages" in params or any(
            p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()
        )

    def update(self, prompt_ids, rewards, step, advantages=None) -> None:
        if self._takes_adv:
            self.inner.update(prompt_ids, rewards, step, advantages=advantages)
        else:
            self.inner.update(prompt_ids, rewards, step)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


__all__ = [
    "CURRICULA",
    "AdaRFTCurriculum",
    "BanditCurriculum",
    "CompetenceCurriculum",
    "Curriculum",
    "CurriculumWarning",
    "LearnabilityCurriculum",
    "PacingCurriculum",
    "PrioritizedCurriculum",
    "PromptStats",
    "SampledGroups",
    "UniformCurriculum",
    "build_curriculum",
    "curriculum_metrics",
    "informative_groups",
    "open_fraction",
    "read_difficulty_file",
    "resolve_difficulty",
    "sample_groups",
]
