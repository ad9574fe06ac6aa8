"""From rewards to advantages: combine named rewards, then normalise within each group."""

from __future__ import annotations

import torch


def weighted_sum(scores: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """(N, K) rewards, (K,) weights -> (N,); NaN (unscored) where a weighted column is NaN."""
    used = weights != 0
    s = scores[:, used]
    out = (s.nan_to_num(0.0) * weights[used]).sum(-1)
    return out.masked_fill(s.isnan().any(-1), float("nan"))


def group_advantages(
    rewards: torch.Tensor, group_size: int, scale: bool = True, eps: float = 1e-4
) -> torch.Tensor:
    """GRPO advantages: ``(r - mean_group) / (std_group + eps)`` (or without the std).

    rewards: (B*G,) with consecutive groups of ``group_size``; NaN marks unscored samples,
    which are left out of their group's statistics and get advantage 0.
    """
    r = rewards.view(-1, group_size)
    valid = ~r.isnan()
    n = valid.sum(-1, keepdim=True).clamp_min(1)
    r0 = r.nan_to_num(0.0)
    mean = r0.sum(-1, keepdim=True) / n
    adv = r0 - mean
    if scale:
        var = ((adv * valid) ** 2).sum(-1, keepdim=True) / (n - 1).clamp_min(1)
        adv = adv / (var.sqrt() + eps)
    return (adv * valid).view(-1)


def group_std(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """Per-group standard deviation over scored samples: (B*G,) -> (B,)."""
    r = rewards.view(-1, group_size)
    valid = ~r.isnan()
    n = valid.sum(-1).clamp_min(1)
    mean = r.nan_to_num(0.0).sum(-1) / n
    dev = (r.nan_to_num(0.0) - mean[:, None]) * valid
    return ((dev**2).sum(-1) / n).sqrt()
