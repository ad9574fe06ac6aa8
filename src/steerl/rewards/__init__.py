"""Rewards: the protocol (:mod:`steerl.rewards.base`), built-ins and the combined reward set.

A reward is ``fn(prompts, completions, **fields) -> list[float | None]`` (or a
:class:`RewardOutput` with extra metrics); ``None`` means "could not score". Register one with
``@reward("name")`` or name it in a recipe as ``package.module:function``.
"""

# registers the built-in rewards
from steerl.rewards import builtins, code_exec, math_answer, reward_model  # noqa: F401
from steerl.rewards.base import REWARDS, RewardFn, RewardOutput, reward
from steerl.rewards.binding import BoundReward, bind_reward
from steerl.rewards.combine import RewardFailure, RewardResult, RewardSet, build_rewards

__all__ = [
    "REWARDS",
    "BoundReward",
    "RewardFailure",
    "RewardFn",
    "RewardOutput",
    "RewardResult",
    "RewardSet",
    "bind_reward",
    "build_rewards",
    "reward",
]
