"""Prompt sources: what a task yields and how demonstrations are written."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Prompt:
    """One prompt with its reference answer.

    ``difficulty`` orders prompts for curricula (for the arithmetic task it is the level);
    ``category`` groups them; ``meta`` carries any further dataset columns, which reach the
    rewards as keyword fields. ``has_difficulty`` is false where a data row had no
    difficulty value (curricula that order by difficulty refuse or fill those).
    """

    id: str
    text: str
    answer: str | None
    difficulty: float = 0.0
    category: str = "default"
    meta: dict[str, Any] = field(default_factory=dict)
    has_difficulty: bool = True  # false: the data row had no difficulty (0.0 stands in)

    @property
    def level(self) -> int:
        return int(self.difficulty)


class Task:
    """A training pool and a disjoint held-out pool of prompts."""

    name = "task"

    def __init__(self, train: list[Prompt], eval: list[Prompt]):
        overlap = {p.text for p in train} & {p.text for p in eval}
        if overlap:
            raise ValueError(f"{len(overlap)} evaluation prompts also appear in training data")
        self.train = train
        self.eval = eval

    def demonstration(self, prompt: Prompt, rng: random.Random) -> str:
        """The completion shown for ``prompt`` during the SFT warm-up."""
        if prompt.answer is None:
            raise ValueError(f"prompt {prompt.id} has no answer to demonstrate")
        return prompt.answer

    def levels(self) -> list[int]:
        return sorted({p.level for p in self.eval} | {p.level for p in self.train})
