"""Curricula: which prompts to train on next."""

from steerl.curriculum.base import CURRICULA, UniformCurriculum
from steerl.curriculum.filters import informative_groups


def build_curriculum(cfg, prompts, seed: int):
    pool = prompts
    if cfg.levels is not None:
        pool = [p for p in prompts if p.level in set(cfg.levels)]
        if not pool:
            from steerl.config import ConfigError

            raise ConfigError(
                f"key 'curriculum.levels': got {cfg.levels}; no training prompt has those levels"
            )
    return CURRICULA.get(cfg.name)(pool, seed)


__all__ = ["CURRICULA", "UniformCurriculum", "build_curriculum", "informative_groups"]
