"""Synthetic addition with digits written least-significant first (a learnable formulation).

Both operands and the answer are reversed: 47 + 85 = 132 is shown as ``74+58=`` with answer
``231``. Written this way, each answer digit depends only on digits already seen (the carry
flows left to right), which a tiny transformer learns; the usual order does not.

Levels (difficulty):
  1: a number below 100 plus a single digit (1,900 distinct problems)
  L >= 2: two L-digit numbers (no leading zeros)
"""

from __future__ import annotations

import random

from steerl.config import ArithmeticTaskConfig, FlawConfig
from steerl.tasks.base import Prompt, Task


def _rev(n: int, width: int = 0) -> str:
    return str(n).zfill(width)[::-1]


def level_width(level: int) -> int:
    return 2 if level == 1 else level


def format_problem(a: int, b: int, width: int = 0) -> tuple[str, str]:
    """The prompt text and the reference answer for ``a + b``.

    ``width`` zero-pads both operands (written reversed, so the zeros trail).
    """
    return f"{_rev(a, width)}+{_rev(b, width)}=", _rev(a + b)


def add_without_carry(a: int, b: int) -> int:
    """Digit-wise sum modulo 10: the answer with every carry dropped."""
    out, place = 0, 1
    while a or b:
        out += ((a % 10 + b % 10) % 10) * place
        a, b, place = a // 10, b // 10, place * 10
    return out


def sample_operands(level: int, rng: random.Random) -> tuple[int, int]:
    if level == 1:
        a, b = rng.randrange(100), rng.randrange(10)
        return (a, b) if rng.random() < 0.5 else (b, a)
    lo, hi = 10 ** (level - 1), 10**level
    return rng.randrange(lo, hi), rng.randrange(lo, hi)


def _distinct_count(level: int) -> int:
    return 1900 if level == 1 else (9 * 10 ** (level - 1)) ** 2


class ArithmeticTask(Task):
    """Reversed-digit addition at several difficulty levels, train and eval disjoint."""

    name = "arithmetic"

    def __init__(self, cfg: ArithmeticTaskConfig, seed: int, flaw: FlawConfig | None = None):
        rng = random.Random(seed)
        train: list[Prompt] = []
        evals: list[Prompt] = []
        for level in cfg.levels:
            need = cfg.train_count(level) + cfg.eval_per_level
            cap = _distinct_count(level)
            if cfg.eval_per_level > cap // 2:
                raise ValueError(
                    f"task.arithmetic.eval_per_level={cfg.eval_per_level} leaves too few "
                    f"training problems at level {level} ({cap} distinct)"
                )
            n_train = min(cfg.train_count(level), cap - cfg.eval_per_level)
            seen: set[tuple[int, int]] = set()
            pairs: list[tuple[int, int]] = []
            while len(pairs) < min(need, cfg.eval_per_level + n_train):
                a, b = sample_operands(level, rng)
                if (a, b) in seen:
                    continue
                seen.add((a, b))
                pairs.append((a, b))
            for i, (a, b) in enumerate(pairs):
                text, answer = format_problem(a, b, level_width(level) if cfg.pad else 0)
                p = Prompt(
                    id=f"L{level}-{a}+{b}",
                    text=text,
                    answer=answer,
                    difficulty=float(level),
                    category=f"level_{level}",
                    meta={"a": a, "b": b},
                )
                (evals if i < cfg.eval_per_level else train).append(p)
        super().__init__(train, evals)
        self.flaw = flaw

    def demonstration(self, prompt: Prompt, rng: random.Random) -> str:
        """The true answer, or (for the flawed level and share) the answer without carries."""
        f = self.flaw
        if f is not None and f.level is not None and prompt.level == f.level:
            if rng.random() < f.fraction:
                return _rev(add_without_carry(prompt.meta["a"], prompt.meta["b"]))
        return super().demonstration(prompt, rng)
