"""DAPO dynamic sampling: groups whose rewards do not vary carry no gradient signal."""

from __future__ import annotations

import torch

from steerl.objectives.advantages import group_std


def informative_groups(rewards: torch.Tensor, group_size: int, tol: float) -> torch.Tensor:
    """(B*G,) rewards -> (B,) bool: true where the group's reward std exceeds ``tol``.

    A tolerance, not ``!= 0``, so float noise does not let a constant group through.
    """
    return group_std(rewards, group_size) > tol
