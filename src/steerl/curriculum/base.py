"""The curriculum protocol and the uniform sampler.

A curriculum: ``sample(n, step) -> list[Prompt]``, ``update(prompt_ids, rewards, step)``,
``state_dict()`` / ``load_state_dict()``.
"""

from __future__ import annotations

import random

import torch

from steerl.registry import Registry
from steerl.tasks.base import Prompt

CURRICULA: Registry = Registry("curriculum")


@CURRICULA.register("uniform")
class UniformCurriculum:
    """Prompts drawn uniformly without replacement, reshuffled every epoch."""

    def __init__(self, prompts: list[Prompt], seed: int):
        if not prompts:
            raise ValueError("the curriculum has no prompts to sample from")
        self.prompts = prompts
        self.rng = random.Random(seed)
        self.order: list[int] = []
        self.cursor = 0

    def sample(self, n: int, step: int) -> list[Prompt]:
        out = []
        while len(out) < n:
            if self.cursor >= len(self.order):
                self.order = list(range(len(self.prompts)))
                self.rng.shuffle(self.order)
                self.cursor = 0
            out.append(self.prompts[self.order[self.cursor]])
            self.cursor += 1
        return out

    def update(self, prompt_ids: list[str], rewards: torch.Tensor, step: int) -> None:
        """Uniform sampling ignores the statistics."""

    def reshuffle(self, salt: int) -> None:
        """A new data order (after a rollback): reseed from the current state and ``salt``."""
        self.rng.seed(f"{self.rng.random()}-{salt}")
        self.order, self.cursor = [], 0

    def state_dict(self) -> dict:
        return {"rng": _rng_to_json(self.rng), "order": self.order, "cursor": self.cursor}

    def load_state_dict(self, state: dict) -> None:
        self.rng.setstate(_rng_from_json(state["rng"]))
        self.order = list(state["order"])
        self.cursor = int(state["cursor"])


def _rng_to_json(rng: random.Random) -> list:
    v, s, g = rng.getstate()
    return [v, list(s), g]


def _rng_from_json(x: list) -> tuple:
    return (x[0], tuple(x[1]), x[2])
