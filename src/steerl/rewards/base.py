"""The reward protocol and the reward registry.

A reward is a plain function::

    def my_reward(prompts: list[str], completions: list[str], **fields) -> list[float | None]

- ``prompts`` / ``completions``: N decoded strings, one per sample (a completion is already cut
  at EOS).
- ``fields``: the dataset columns as lists aligned with the samples (``answer``,
  ``difficulty``, ``category``, ``prompt_id``, ...), plus ``step`` (an ``int``, not a list),
  plus the recipe's ``args`` for this reward (which take precedence over a column of the same
  name). A function without ``**fields`` only receives the keywords it names.
- Return one score per sample; ``None`` (or NaN) means "could not score this sample". To report
  extra metrics, return ``RewardOutput(scores, metrics)``; they are logged as
  ``reward/<label>/<metric>``.

Register with ``@reward("name")``, or name it in a recipe as ``package.module:function``.
A reward may carry ``validate_args(args: dict) -> dict``: called once when the recipe's
``args`` are bound, it raises ``ValueError`` on a bad value (naming the reward, the arg and
the value) and returns the (possibly normalised) args.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from steerl.registry import Registry


class RewardFn(Protocol):
    """``fn(prompts, completions, **fields) -> list[float | None] | RewardOutput``."""

    def __call__(
        self, prompts: list[str], completions: list[str], **fields: Any
    ) -> list[float | None] | RewardOutput: ...


@dataclass
class RewardOutput:
    """Scores (``None``: unscored) plus extra scalar metrics to log for this call."""

    scores: list[float | None]
    metrics: dict[str, float] = field(default_factory=dict)


ArgsValidator = Callable[[dict[str, Any]], dict[str, Any]]

REWARDS: Registry[Callable[..., Any]] = Registry("reward")


def reward(
    name: str, description: str | None = None, *, validate_args: ArgsValidator | None = None
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register a reward function under ``name``.

    ``description`` defaults to the first line of the docstring. ``validate_args`` (optional)
    is attached to the function as ``fn.validate_args`` and checks the recipe's args at build
    time.
    """

    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        if validate_args is not None:
            fn.validate_args = validate_args  # type: ignore[attr-defined]
        return REWARDS.register(name, description)(fn)

    return deco
